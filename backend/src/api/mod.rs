//! The HTTP edge: one router per resource, merged here, over one shared state.

pub mod blocks;
pub mod config;
pub mod error;
pub mod openapi;
pub mod ops;
pub mod sse;
pub mod sse_wire;
pub mod streaming;
pub mod ws;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::any;
use axum::Router;
use tokio_util::sync::CancellationToken;
use tower_http::services::{ServeDir, ServeFile};
use tower_http::trace::TraceLayer;

use crate::ai::streaming::stream_manager::StreamManager;
use crate::config::settings::Settings;
use crate::metrics::Metrics;

/// Largest request body accepted (a block input with its longest context).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub manager: StreamManager,
    pub metrics: Metrics,
    pub shutdown: CancellationToken,
}

pub fn router(state: AppState) -> Router {
    let static_dir = state.settings.static_dir.clone();
    let index = static_dir.join("index.html");
    let routes = Router::new()
        .merge(streaming::router())
        .merge(ws::router())
        .merge(blocks::router())
        .merge(config::router())
        .merge(ops::router())
        .merge(openapi::router())
        .route("/api/{*rest}", any(|| async { error::ApiError::NoRoute }));
    // The built demo page; unknown paths get its index so client routes work.
    let routes = if index.is_file() {
        routes.fallback_service(ServeDir::new(static_dir).fallback(ServeFile::new(index)))
    } else {
        tracing::warn!(dir = %static_dir.display(), "no built frontend found (STATIC_DIR); serving the API only");
        routes.fallback(|| async {
            axum::response::Html("<h1>Live AI Blocks</h1><p>The demo page is not built. Run <code>make demo</code>, or see <a href=\"/api/openapi.json\">the API</a>.</p>")
        })
    };
    routes.layer(DefaultBodyLimit::max(MAX_BODY_BYTES)).layer(TraceLayer::new_for_http()).with_state(state)
}
