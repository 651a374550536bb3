//! `GET /api/usage`: a principal's own standing against its limits — streams
//! running now, output tokens used and left today. Reading it counts as nothing.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use super::error::ApiError;
use super::AppState;
use crate::auth::Principal;
use crate::limits::until_midnight_utc;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/usage", get(usage))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Usage {
    /// Who the server thinks is asking (`jwt:<sub>`, `key:<name>` or `ip:<address>`).
    principal: String,
    /// Generations running now (each holds one of `concurrent_streams_limit`).
    active_streams: u64,
    /// `LIMIT_CONCURRENT_STREAMS`; absent when unlimited.
    #[serde(skip_serializing_if = "Option::is_none")]
    concurrent_streams_limit: Option<u32>,
    /// `LIMIT_STARTS_PER_MINUTE`; absent when unlimited.
    #[serde(skip_serializing_if = "Option::is_none")]
    starts_per_minute_limit: Option<u32>,
    /// Output tokens of finished generations today (UTC).
    tokens_used_today: u64,
    /// Output tokens reserved by generations still running.
    tokens_reserved: u64,
    /// `LIMIT_TOKENS_PER_DAY`; absent when unlimited.
    #[serde(skip_serializing_if = "Option::is_none")]
    tokens_per_day_limit: Option<u64>,
    /// What is left today; absent when unlimited.
    #[serde(skip_serializing_if = "Option::is_none")]
    tokens_left_today: Option<u64>,
    /// When today's token budget starts afresh (RFC 3339, midnight UTC).
    tokens_reset_at: String,
}

#[utoipa::path(
    get, path = "/api/usage",
    security(("bearer" = [])),
    responses(
        (status = 200, body = Usage),
        (status = 401, body = super::error::Problem, content_type = "application/problem+json", description = "Missing or refused credential"),
        (status = 503, body = super::error::Problem, content_type = "application/problem+json", description = "The limit store is unavailable"),
    )
)]
pub async fn usage(State(state): State<AppState>, principal: Principal) -> Result<Json<Usage>, ApiError> {
    let standing = state.limits.standing(&principal).await?;
    let quotas = state.limits.quotas();
    let now = std::time::SystemTime::now();
    let reset = chrono::DateTime::<chrono::Utc>::from(now + until_midnight_utc(now));
    Ok(Json(Usage {
        principal: principal.id().to_owned(),
        active_streams: standing.active_streams,
        concurrent_streams_limit: quotas.concurrent_streams,
        starts_per_minute_limit: quotas.starts_per_minute,
        tokens_used_today: standing.tokens_used_today,
        tokens_reserved: standing.tokens_reserved,
        tokens_per_day_limit: quotas.tokens_per_day,
        tokens_left_today: quotas.tokens_per_day.map(|limit| limit.saturating_sub(standing.tokens_used_today + standing.tokens_reserved)),
        tokens_reset_at: reset.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    }))
}
