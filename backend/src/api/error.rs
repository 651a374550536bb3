//! The one error type at the HTTP edge: every failure becomes a JSON problem body
//! (RFC 9457) with a stable `code` and, where one field is at fault, its name.
//! Internals never reach the body.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{FromRequest, FromRequestParts};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::ai::blocks::InputError;
use crate::ai::runtime::engine::GenerationFailed;
use crate::ai::streaming::events::{ErrorCode, StreamId};
use crate::ai::streaming::stream_manager::ManagerError;
use crate::auth::AuthError;
use crate::limits::{LimitError, Refusal};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("unknown block type `{0}`; expected one of ask-question, explain-eli10, quiz, diagram")]
    UnknownBlock(String),
    #[error("{0}")]
    Input(#[from] InputError),
    #[error("{message}")]
    BadRequest { message: String, field: Option<&'static str> },
    #[error("{message}")]
    Rejected { status: StatusCode, message: String },
    #[error("no stream {0}; it may have expired")]
    StreamNotFound(StreamId),
    #[error("streaming is disabled on this server (AI_STREAMING_ENABLED=false); use POST /api/ai-block/{{block_type}}")]
    StreamingDisabled,
    #[error(transparent)]
    Manager(ManagerError),
    #[error("{0}")]
    Generation(GenerationFailed),
    #[error("no route for this path")]
    NoRoute,
    #[error("{0}")]
    Unauthorized(AuthError),
    #[error("requests that start a generation must come from this site or an origin in CORS_ALLOWED_ORIGINS")]
    ForbiddenOrigin,
    #[error(transparent)]
    Limited(LimitError),
}

/// The problem body.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// Always `about:blank`: `code` is the machine-readable kind.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    /// Stable error code, e.g. `invalid_input`, `unknown_block_type`, `rate_limited`.
    pub code: &'static str,
    /// The input field, header or parameter at fault, when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retryable: Option<bool>,
    /// How long to wait before trying again, when the server knows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// `input_flagged` / `output_flagged`: the moderation categories.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub categories: Option<Vec<String>>,
}

impl ApiError {
    pub fn bad_request(field: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest { message: message.into(), field: Some(field) }
    }

    fn status_code(&self) -> StatusCode {
        match self {
            Self::UnknownBlock(_) | Self::StreamNotFound(_) | Self::NoRoute => StatusCode::NOT_FOUND,
            Self::Input(e) if e.is_too_large() => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Input(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Rejected { status, .. } => *status,
            Self::StreamingDisabled => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::ForbiddenOrigin => StatusCode::FORBIDDEN,
            Self::Limited(LimitError::Refused(_)) => StatusCode::TOO_MANY_REQUESTS,
            Self::Limited(LimitError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Manager(e) => match e {
                ManagerError::AtCapacity | ManagerError::ShuttingDown | ManagerError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
                ManagerError::IdempotencyConflict => StatusCode::UNPROCESSABLE_ENTITY,
                ManagerError::NotFound { .. } => StatusCode::NOT_FOUND,
                ManagerError::AfterBeyondLog { .. } => StatusCode::BAD_REQUEST,
            },
            Self::Generation(failed) => match failed.code {
                ErrorCode::InputFlagged => StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::ProviderUnavailable | ErrorCode::GenerationLost | ErrorCode::ModerationUnavailable => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
                _ => StatusCode::BAD_GATEWAY,
            },
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::UnknownBlock(_) => "unknown_block_type",
            Self::Input(e) if e.is_too_large() => "field_too_large",
            Self::Input(_) => "invalid_input",
            Self::BadRequest { .. } | Self::Rejected { .. } => "bad_request",
            Self::StreamNotFound(_) => "stream_not_found",
            Self::StreamingDisabled => "streaming_disabled",
            Self::NoRoute => "not_found",
            Self::Unauthorized(_) => "unauthorized",
            Self::ForbiddenOrigin => "forbidden_origin",
            Self::Limited(LimitError::Refused(refusal)) => refusal.code(),
            Self::Limited(LimitError::Unavailable(_)) => "store_unavailable",
            Self::Manager(e) => match e {
                ManagerError::AtCapacity => "at_capacity",
                ManagerError::ShuttingDown => "shutting_down",
                ManagerError::IdempotencyConflict => "idempotency_conflict",
                ManagerError::NotFound { .. } => "stream_not_found",
                ManagerError::AfterBeyondLog { .. } => "bad_request",
                ManagerError::Store(_) => "store_unavailable",
            },
            Self::Generation(failed) => failed.code.as_str(),
        }
    }

    fn field(&self) -> Option<String> {
        match self {
            Self::Input(e) => Some(e.field.clone()),
            Self::BadRequest { field, .. } => field.map(str::to_owned),
            Self::Manager(ManagerError::IdempotencyConflict) => Some("Idempotency-Key".into()),
            _ => None,
        }
    }

    fn retryable(&self) -> Option<bool> {
        match self {
            Self::Generation(failed) => Some(failed.retryable),
            Self::Manager(ManagerError::AtCapacity | ManagerError::ShuttingDown | ManagerError::Store(_)) => Some(true),
            Self::Limited(_) => Some(true),
            _ => None,
        }
    }

    fn retry_after_ms(&self) -> Option<u64> {
        match self {
            Self::Manager(ManagerError::AtCapacity) => Some(1000),
            Self::Generation(GenerationFailed { retry_after_ms: Some(ms), .. }) => Some(*ms),
            Self::Limited(LimitError::Refused(refusal)) => Some(refusal.retry_after_ms()),
            _ => None,
        }
    }

    /// What the client reads: the message, except for infrastructure failures,
    /// whose text (Redis, I/O) stays in the logs.
    fn detail(&self) -> String {
        match self {
            Self::Manager(ManagerError::Store(_)) | Self::Limited(LimitError::Unavailable(_)) => {
                "the server's store is unavailable; try again shortly".into()
            }
            other => other.to_string(),
        }
    }

    fn refusal(&self) -> Option<&Refusal> {
        match self {
            Self::Limited(LimitError::Refused(refusal)) => Some(refusal),
            _ => None,
        }
    }
}

impl From<LimitError> for ApiError {
    fn from(error: LimitError) -> Self {
        Self::Limited(error)
    }
}

impl From<WebSocketUpgradeRejection> for ApiError {
    fn from(rejection: WebSocketUpgradeRejection) -> Self {
        Self::Rejected { status: rejection.status(), message: rejection.body_text() }
    }
}

impl From<ManagerError> for ApiError {
    fn from(error: ManagerError) -> Self {
        match error {
            ManagerError::NotFound { stream_id, .. } => Self::StreamNotFound(stream_id),
            other => Self::Manager(other),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        Self::Rejected { status: rejection.status(), message: rejection.body_text() }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::Rejected { status: StatusCode::BAD_REQUEST, message: rejection.body_text() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status_code();
        if status.is_server_error() {
            tracing::warn!(error = %self, %status, "request failed");
        }
        let retry_after_ms = self.retry_after_ms();
        let problem = Problem {
            kind: "about:blank",
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail: self.detail(),
            code: self.code(),
            field: self.field(),
            retryable: self.retryable(),
            retry_after_ms: retry_after_ms.filter(|_| self.refusal().is_some()),
            categories: match &self {
                Self::Generation(failed) => failed.categories.clone(),
                _ => None,
            },
        };
        let mut response = (status, axum::Json(problem)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if let Some(ms) = retry_after_ms {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(ms.div_ceil(1000)));
        }
        if let Some(refusal) = self.refusal() {
            // draft-ietf-httpapi-ratelimit-headers: the limit that refused, what is
            // left of it, and seconds until it allows again.
            headers.insert("ratelimit-limit", HeaderValue::from(refusal.limit));
            headers.insert("ratelimit-remaining", HeaderValue::from(refusal.remaining));
            headers.insert("ratelimit-reset", HeaderValue::from(refusal.retry_after_ms().div_ceil(1000)));
        }
        if let Self::Unauthorized(error) = &self {
            let challenge = match error {
                AuthError::Missing => "Bearer",
                AuthError::Invalid(_) => "Bearer error=\"invalid_token\"",
            };
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        response
    }
}

/// `Json` whose rejections are problem bodies.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct JsonBody<T>(pub T);

/// `Query` whose rejections are problem bodies.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct QueryParams<T>(pub T);
