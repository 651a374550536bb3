//! Response hardening for every route: the demo page may load only its own
//! assets and may be framed only by itself; nothing is MIME-sniffed; no URL (a
//! read token travels in one) leaks through `Referer`. And the CORS allowlist of
//! `CORS_ALLOWED_ORIGINS`: without it, browsers on other sites cannot read our
//! answers (same-origin only).
//!
//! One deliberate allowance, for the demo page's own code, never other sites':
//! `style-src 'unsafe-inline'`, because Mermaid writes its diagram styles into the
//! SVG it renders. Scripts are the page's own files only: the client's contract
//! validators are compiled ahead of time, so nothing is evaluated at run time.

use std::time::Duration;

use axum::http::{header, HeaderName, HeaderValue, Method};
use axum::Router;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::set_header::SetResponseHeaderLayer;

pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
img-src 'self' data:; font-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
form-action 'self'; frame-ancestors 'self'";

/// Adds the security headers (unless a handler set its own).
pub fn harden<S: Clone + Send + Sync + 'static>(router: Router<S>) -> Router<S> {
    router
        .layer(SetResponseHeaderLayer::if_not_present(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY)))
        .layer(SetResponseHeaderLayer::if_not_present(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")))
        .layer(SetResponseHeaderLayer::if_not_present(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")))
}

/// CORS for the listed origins; `None` when there are none (same-origin only).
pub fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let origins: Vec<HeaderValue> = origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect();
    let ratelimit = ["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"].map(HeaderName::from_static);
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([Method::GET, Method::POST, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("idempotency-key"),
                HeaderName::from_static("last-event-id"),
            ])
            .expose_headers([
                header::RETRY_AFTER,
                header::WWW_AUTHENTICATE,
                ratelimit[0].clone(),
                ratelimit[1].clone(),
                ratelimit[2].clone(),
            ])
            .max_age(Duration::from_secs(600)),
    )
}
