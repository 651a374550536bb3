//! The principal: whoever a request acts for. Handlers take it as an argument; the
//! extractor reads the credential, so no handler ever parses headers for it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;

use super::{AuthError, Credential};
use crate::api::error::ApiError;
use crate::api::AppState;

/// Longest principal name accepted from a credential (a JWT `sub`).
pub const MAX_NAME_LEN: usize = 256;

/// A principal id, namespaced by how it was proven: `jwt:<sub>`, `key:<name>` or
/// `ip:<address>` (`ip:<network>/64` for IPv6). Streams, idempotency keys and limits belong to it.
///
/// It may also carry a sharing scope (the `COALESCE_SCOPE_CLAIM` of its JWT, a
/// class say): identical requests within one scope may share a generation. The
/// scope is not part of who the principal is: equality and hashing go by the id
/// alone, so a refreshed token naming another class is the same learner.
#[derive(Debug, Clone)]
pub struct Principal(Arc<str>, Option<Arc<str>>);

impl PartialEq for Principal {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Eq for Principal {}

impl std::hash::Hash for Principal {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl Principal {
    /// The anonymous principal of a client address (`AUTH_MODE=none`): an IPv4
    /// address, or an IPv6 address's /64 network. One IPv6 client commonly holds a
    /// whole /64 (privacy addresses rotate within it), so the address alone would
    /// let it multiply every limit by picking new ones.
    pub fn anonymous(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self(format!("ip:{v4}").into(), None),
            IpAddr::V6(v6) => {
                let network = Ipv6Addr::from(u128::from(v6) & !(u128::MAX >> 64));
                Self(format!("ip:{network}/64").into(), None)
            }
        }
    }

    /// A learner, by the `sub` of the host app's JWT.
    pub fn learner(sub: &str) -> Self {
        Self(format!("jwt:{sub}").into(), None)
    }

    /// A server-to-server caller, by its name in the API key file.
    pub fn api_client(name: &str) -> Self {
        Self(format!("key:{name}").into(), None)
    }

    /// A principal as carried by a token this server signed.
    pub(crate) fn from_id(id: &str) -> Option<Self> {
        let known = ["jwt:", "key:", "ip:"].iter().any(|kind| id.starts_with(kind));
        (known && id.len() <= MAX_NAME_LEN + 4).then(|| Self(id.into(), None))
    }

    pub fn id(&self) -> &str {
        &self.0
    }

    /// The same principal in a sharing scope (the value of its token's scope claim).
    pub fn in_scope(self, scope: Option<&str>) -> Self {
        Self(self.0, scope.map(Arc::from))
    }

    /// Whom this principal's identical requests may be shared with: its scope,
    /// or, without one, itself alone. Both kinds are tagged, so no scope value
    /// can be mistaken for a principal.
    pub fn sharing_scope(&self) -> String {
        match &self.1 {
            Some(scope) => format!("scope:{scope}"),
            None => format!("principal:{}", self.0),
        }
    }
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The peer's address, as the server recorded it for the connection.
pub fn peer_ip(parts: &Parts) -> IpAddr {
    // Routers served without connection info (unit tests) are one anonymous peer.
    parts.extensions.get::<ConnectInfo<SocketAddr>>().map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |info| info.0.ip())
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let auth = &state.auth;
        let client_ip = auth.client_ip(peer_ip(parts), &parts.headers);
        let bearer = match super::bearer(&parts.headers) {
            // Anonymous mode ignores credentials, whatever their shape.
            Err(_) if auth.mode() == crate::config::settings::AuthMode::None => None,
            other => other.map_err(ApiError::Unauthorized)?,
        };
        auth.authenticate(bearer, client_ip).map_err(ApiError::Unauthorized)
    }
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        Self::Unauthorized(error)
    }
}

/// Who reads a stream: the principal of the request's credential, or the holder
/// of a `?read_token=` (which may read only the one stream it names). A header
/// credential wins over a token.
pub struct Reader {
    principal: Principal,
    only: Option<crate::ai::streaming::events::StreamId>,
}

#[derive(serde::Deserialize)]
struct ReadTokenParam {
    read_token: Option<String>,
}

impl Reader {
    /// The principal reading `stream_id`; a read token for another stream is refused.
    pub fn principal_for(&self, stream_id: &crate::ai::streaming::events::StreamId) -> Result<&Principal, ApiError> {
        match &self.only {
            Some(granted) if granted != stream_id => {
                Err(ApiError::Unauthorized(AuthError::Invalid("this read token is for another stream")))
            }
            _ => Ok(&self.principal),
        }
    }
}

impl FromRequestParts<AppState> for Reader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let anonymous = state.auth.mode() == crate::config::settings::AuthMode::None;
        let has_header = parts.headers.contains_key(axum::http::header::AUTHORIZATION);
        let token = axum::extract::Query::<ReadTokenParam>::try_from_uri(&parts.uri).ok().and_then(|q| q.0.read_token);
        match token {
            Some(token) if !has_header || anonymous => match state.auth.read_tokens().verify(&token) {
                Ok((principal, stream_id)) => Ok(Self { principal, only: Some(stream_id) }),
                // Anonymous mode checks no credential: a token it cannot verify (one
                // from another process) leaves the client its address's principal.
                Err(_) if anonymous => Ok(Self { principal: Principal::from_request_parts(parts, state).await?, only: None }),
                Err(error) => Err(ApiError::Unauthorized(error)),
            },
            _ => Ok(Self { principal: Principal::from_request_parts(parts, state).await?, only: None }),
        }
    }
}

/// Who a WebSocket acts for, as far as its upgrade request tells.
pub enum SocketAuth {
    Known(Credential),
    /// No header credential: the socket's first message must authenticate.
    Pending {
        client_ip: IpAddr,
    },
}

/// The [`SocketAuth`] of an upgrade: anonymous mode knows the principal at once;
/// an `Authorization` header is verified now (401 before upgrading when bad);
/// without one, the socket authenticates in its first message.
pub struct SocketPrincipal(pub SocketAuth);

impl FromRequestParts<AppState> for SocketPrincipal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let auth = &state.auth;
        let client_ip = auth.client_ip(peer_ip(parts), &parts.headers);
        if auth.mode() == crate::config::settings::AuthMode::None {
            return Ok(Self(SocketAuth::Known(auth.verify(None, client_ip)?)));
        }
        match super::bearer(&parts.headers)? {
            Some(token) => Ok(Self(SocketAuth::Known(auth.verify(Some(token), client_ip)?))),
            None => Ok(Self(SocketAuth::Pending { client_ip })),
        }
    }
}
