//! Cross-site start refusal: a request that would start a generation (and spend
//! the model budget) must come from our own site or from an origin listed in
//! `CORS_ALLOWED_ORIGINS`. Browsers say where a request comes from: `Origin` on
//! every POST, fetch and WebSocket upgrade, `Sec-Fetch-Site` on everything
//! (an `<img src>` pointing here arrives as `cross-site` without `Origin`).
//! Non-browser clients (curl, servers) send neither and are judged by their
//! credential alone.

use axum::extract::FromRequestParts;
use axum::http::header::{HOST, ORIGIN};
use axum::http::request::Parts;
use axum::http::HeaderMap;

use super::error::ApiError;
use super::AppState;
use crate::config::settings::normalize_origin;

/// Proof that a generation-starting request is not cross-site; take it first in
/// the handler's arguments.
pub struct SameSiteStart;

impl FromRequestParts<AppState> for SameSiteStart {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let host = parts.headers.get(HOST).and_then(|h| h.to_str().ok()).or_else(|| parts.uri.authority().map(|a| a.as_str()));
        if may_start(&parts.headers, host, &state.settings.cors_allowed_origins) {
            Ok(Self)
        } else {
            Err(ApiError::ForbiddenOrigin)
        }
    }
}

/// Whether a request with these headers, to `host`, may start a generation.
pub fn may_start(headers: &HeaderMap, host: Option<&str>, allowed: &[String]) -> bool {
    if let Some(origin) = headers.get(ORIGIN) {
        // `null` (sandboxed frames, file: pages) and garbage are no site of ours.
        let Some(origin) = origin.to_str().ok().and_then(normalize_origin) else { return false };
        let scheme = origin.split_once("://").map_or("http", |(scheme, _)| scheme);
        let ours = host.and_then(|host| normalize_origin(&format!("{scheme}://{host}")));
        return ours.as_deref() == Some(origin.as_str()) || allowed.contains(&origin);
    }
    match headers.get("sec-fetch-site").map(|v| v.to_str().unwrap_or_default()) {
        None | Some("same-origin") | Some("none") => true,
        Some(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, value.parse().unwrap());
        }
        headers
    }

    const HOST_HERE: Option<&str> = Some("ai.example.com");

    #[test]
    fn same_origin_allowed_and_headerless_requests_may_start() {
        let allowed = vec!["https://learn.example.org".to_owned()];
        for ok in [
            headers(&[]),
            headers(&[("origin", "https://ai.example.com")]),
            headers(&[("origin", "http://AI.example.com:80")]),
            headers(&[("origin", "https://learn.example.org"), ("sec-fetch-site", "cross-site")]),
            headers(&[("sec-fetch-site", "same-origin")]),
            headers(&[("sec-fetch-site", "none")]),
        ] {
            assert!(may_start(&ok, HOST_HERE, &allowed), "{ok:?}");
        }
    }

    #[test]
    fn other_sites_may_not_start() {
        let allowed = vec!["https://learn.example.org".to_owned()];
        for refused in [
            headers(&[("origin", "https://evil.example.net")]),
            headers(&[("origin", "null")]),
            headers(&[("origin", "https://ai.example.com:8443")]),
            headers(&[("sec-fetch-site", "cross-site")]),
            headers(&[("sec-fetch-site", "same-site")]),
        ] {
            assert!(!may_start(&refused, HOST_HERE, &allowed), "{refused:?}");
        }
    }
}
