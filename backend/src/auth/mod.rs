//! Who is asking: turns a request's credential into a [`Principal`].
//!
//! `AUTH_MODE` picks the verifier: `none` (each client IP is one anonymous
//! principal), `jwt` (a Bearer JWT from the host learning app; principal = `sub`) or
//! `api_key` (a Bearer key from `AUTH_API_KEYS_FILE`). Whatever the mode, the
//! server also issues read tokens: short-lived, bound to one stream and its owner,
//! for clients that cannot send headers (a native `EventSource`, curl).
//!
//! Principals are namespaced by how they were proven (`jwt:…`, `key:…`, `ip:…`), so
//! streams and limits kept in a shared Redis never mix an API client with a
//! learner of the same name.

pub mod api_keys;
pub mod client_ip;
pub mod jwt;
pub mod principal;
pub mod read_token;

use std::net::IpAddr;

use axum::http::HeaderMap;

pub use principal::Principal;

use crate::config::settings::{AuthMode, Settings};
use api_keys::ApiKeys;
use client_ip::TrustedProxies;
use jwt::JwtVerifier;
use read_token::ReadTokens;

/// Why a request was not authenticated. The reasons are fixed phrases: they never
/// echo the credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no credential: send `Authorization: Bearer <token>`")]
    Missing,
    #[error("the credential was refused: {0}")]
    Invalid(&'static str),
}

/// A credential source that cannot be loaded; names its variable.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {variable}: {problem}")]
pub struct AuthSetupError {
    pub variable: &'static str,
    pub problem: String,
}

enum Verifier {
    Anonymous,
    Jwt(JwtVerifier),
    ApiKeys(ApiKeys),
}

pub struct Authenticator {
    mode: AuthMode,
    verifier: Verifier,
    read_tokens: ReadTokens,
    proxies: TrustedProxies,
}

impl Authenticator {
    /// Loads the key material the settings point at (JWKS or API key files).
    pub fn from_settings(settings: &Settings) -> Result<Self, AuthSetupError> {
        let auth = &settings.auth;
        let read_file = |variable: &'static str, path: &std::path::Path| {
            std::fs::read_to_string(path).map_err(|e| AuthSetupError { variable, problem: format!("cannot read {}: {e}", path.display()) })
        };
        let verifier = match auth.mode {
            AuthMode::None => Verifier::Anonymous,
            AuthMode::Jwt => {
                let (issuer, audience) = (auth.jwt_issuer.as_deref(), auth.jwt_audience.as_deref());
                Verifier::Jwt(
                    match (&auth.jwt_secret, &auth.jwks_file) {
                        (Some(secret), _) => JwtVerifier::hs256(secret.expose().as_bytes(), issuer, audience),
                        (None, Some(path)) => JwtVerifier::from_jwks(&read_file("AUTH_JWKS_FILE", path)?, issuer, audience)
                            .map_err(|problem| AuthSetupError { variable: "AUTH_JWKS_FILE", problem })?,
                        (None, None) => unreachable!("settings require a JWT key source with AUTH_MODE=jwt"),
                    }
                    .with_scope_claim(settings.coalesce.scope_claim.as_deref()),
                )
            }
            AuthMode::ApiKey => {
                let path = auth.api_keys_file.as_ref().expect("settings require AUTH_API_KEYS_FILE with AUTH_MODE=api_key");
                Verifier::ApiKeys(
                    ApiKeys::parse(&read_file("AUTH_API_KEYS_FILE", path)?)
                        .map_err(|problem| AuthSetupError { variable: "AUTH_API_KEYS_FILE", problem })?,
                )
            }
        };
        Ok(Self {
            mode: auth.mode,
            verifier,
            read_tokens: ReadTokens::new(auth.read_token_secret.as_ref().map(|s| s.expose().as_bytes()), auth.read_token_ttl),
            proxies: TrustedProxies::new(settings.trusted_proxies.clone()),
        })
    }

    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    pub fn read_tokens(&self) -> &ReadTokens {
        &self.read_tokens
    }

    /// The client's address: the peer, or what trusted proxies say it is.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        self.proxies.client_ip(peer, headers)
    }

    /// The principal behind a Bearer credential. With `AUTH_MODE=none` any
    /// credential is ignored and the client IP is the principal.
    pub fn authenticate(&self, bearer: Option<&str>, client_ip: IpAddr) -> Result<Principal, AuthError> {
        self.verify(bearer, client_ip).map(|credential| credential.principal)
    }

    /// As [`authenticate`](Self::authenticate), with how long the credential
    /// may be used: a WebSocket checks it again at every start and resume.
    pub fn verify(&self, bearer: Option<&str>, client_ip: IpAddr) -> Result<Credential, AuthError> {
        match &self.verifier {
            Verifier::Anonymous => Ok(Credential { principal: Principal::anonymous(client_ip), usable_until: None }),
            Verifier::Jwt(verifier) => verifier.verify(bearer.ok_or(AuthError::Missing)?).map(|token| Credential {
                principal: Principal::learner(&token.sub).in_scope(token.scope.as_deref()),
                usable_until: Some(token.usable_until),
            }),
            Verifier::ApiKeys(keys) => keys
                .verify(bearer.ok_or(AuthError::Missing)?)
                .map(|name| Credential { principal: Principal::api_client(name), usable_until: None })
                .ok_or(AuthError::Invalid("unknown API key")),
        }
    }
}

/// A verified credential: whom it proves, and until when (JWTs expire; API keys
/// and anonymous principals do not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub principal: Principal,
    pub usable_until: Option<std::time::SystemTime>,
}

impl Credential {
    /// Whether it may still be used now.
    pub fn is_current(&self) -> bool {
        self.usable_until.is_none_or(|until| std::time::SystemTime::now() < until)
    }
}

/// The token of an `Authorization: Bearer <token>` header: `Ok(None)` when there is
/// no header, an error when there is one of another shape.
pub fn bearer(headers: &HeaderMap) -> Result<Option<&str>, AuthError> {
    let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else { return Ok(None) };
    let value = value.to_str().map_err(|_| AuthError::Invalid("the Authorization header is not ASCII"))?;
    match value.trim().split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => Ok(Some(token.trim())),
        _ => Err(AuthError::Invalid("the Authorization header is not `Bearer <token>`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(authorization: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", authorization.parse().unwrap());
        headers
    }

    #[test]
    fn bearer_credentials_parse_and_other_schemes_are_refused() {
        assert_eq!(bearer(&HeaderMap::new()), Ok(None));
        assert_eq!(bearer(&headers("Bearer abc.def")), Ok(Some("abc.def")));
        assert_eq!(bearer(&headers("bearer  abc ")), Ok(Some("abc")));
        for bad in ["Basic dXNlcjpwYXNz", "Bearer", "Bearer    ", "abc"] {
            assert!(matches!(bearer(&headers(bad)), Err(AuthError::Invalid(_))), "{bad}");
        }
    }
}
