//! The HTTP edge: one router per resource, merged here, over one shared state.

pub mod blocks;
pub mod config;
pub mod error;
pub mod openapi;
pub mod ops;
pub mod origin;
pub mod security;
pub mod sse;
pub mod sse_body;
pub mod sse_wire;
pub mod streaming;
pub mod usage;
pub mod ws;
pub mod ws_messages;
pub mod ws_session;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::any;
use axum::Router;
use tokio_util::sync::CancellationToken;
use tower_http::services::{ServeDir, ServeFile};

use crate::ai::streaming::stream_manager::StreamManager;
use crate::auth::Authenticator;
use crate::config::settings::Settings;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::telemetry;

/// Largest request body accepted: the longest valid block input (20,000
/// characters), even with every character JSON-escaped as a surrogate pair.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub manager: StreamManager,
    pub auth: Arc<Authenticator>,
    pub limits: Limits,
    pub metrics: Metrics,
    /// The SSE responses being streamed, and the reaper of stuck ones.
    pub sse_readers: Arc<sse_body::Readers>,
    /// The WebSocket sessions (upgraded connections, which the HTTP server's
    /// graceful shutdown no longer tracks): shutdown waits for their close frames.
    pub ws_sessions: tokio_util::task::TaskTracker,
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
        .merge(usage::router())
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
    let cors = security::cors(&state.settings.cors_allowed_origins);
    let routes = security::harden(routes.layer(DefaultBodyLimit::max(MAX_BODY_BYTES)));
    // Spans name the path only: a query may carry a read token, which no log shows.
    let routes = routes.layer(axum::middleware::from_fn(telemetry::http::traced));
    match cors {
        Some(cors) => routes.layer(cors).with_state(state),
        None => routes.with_state(state),
    }
}
