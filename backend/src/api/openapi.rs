//! `GET /api/openapi.json`: the HTTP API, generated from the handlers' annotations.
//! Stream events themselves are described by the AsyncAPI contract in `specs/`.

use axum::routing::get;
use axum::{Json, Router};
use utoipa::OpenApi;

use super::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Live AI Blocks",
        description = "Streams AI block answers over SSE and WebSocket. Event payloads: specs/050-live-ai-interaction/contracts/stream-schema.yaml (AsyncAPI 3)."
    ),
    paths(
        super::streaming::stream_block,
        super::streaming::create_stream,
        super::streaming::stream_events,
        super::streaming::cancel_stream,
        super::ws::upgrade,
        super::blocks::whole_response,
        super::config::ai_config,
        super::ops::healthz,
        super::ops::readyz,
        super::ops::metrics,
    ),
    components(schemas(super::error::Problem))
)]
pub struct ApiDoc;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/openapi.json", get(|| async { Json(ApiDoc::openapi()) }))
}
