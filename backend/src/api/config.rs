//! `GET /api/ai/config`: what the frontend needs to pick its mode and transport.
//! Never carries secrets.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use super::AppState;
use crate::ai::blocks::BlockType;
use crate::ai::moderation::ModerationInfo;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/ai/config", get(ai_config))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct AiConfig {
    /// When false, use `POST /api/ai-block/{block_type}` (whole responses).
    streaming_enabled: bool,
    /// `sse` or `websocket`: the transport clients should use by default.
    streaming_backend: &'static str,
    provider: String,
    model: String,
    /// True when the offline demo model answers.
    demo: bool,
    resume_grace_seconds: f64,
    keepalive_seconds: f64,
    blocks: Vec<BlockType>,
    /// `none`, `jwt` or `api_key`: whether requests must carry `Authorization: Bearer`.
    auth_mode: &'static str,
    /// What moderation checks, with what, and how streamed output meets it.
    moderation: ModerationInfo,
}

#[utoipa::path(get, path = "/api/ai/config", responses((status = 200, body = AiConfig)))]
pub async fn ai_config(State(state): State<AppState>) -> Json<AiConfig> {
    let provider = state.manager.engine().provider();
    Json(AiConfig {
        streaming_enabled: state.settings.streaming_enabled,
        streaming_backend: state.settings.streaming_backend.as_str(),
        provider: provider.name().to_owned(),
        model: provider.model().to_owned(),
        demo: provider.name() == "demo",
        resume_grace_seconds: state.settings.resume_grace.as_secs_f64(),
        keepalive_seconds: state.settings.sse_keepalive.as_secs_f64(),
        blocks: BlockType::ALL.to_vec(),
        auth_mode: state.auth.mode().as_str(),
        moderation: state.manager.moderation().info(),
    })
}
