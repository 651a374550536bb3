//! Operations endpoints: liveness (`/healthz`: the process answers), readiness
//! (`/readyz`: it can serve streams, its store answers) and Prometheus metrics.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use super::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz)).route("/metrics", get(metrics))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok`, or `shutting_down` once a shutdown began.
    status: &'static str,
    active_streams: usize,
}

#[utoipa::path(get, path = "/healthz", responses((status = 200, body = Health)))]
pub async fn healthz(State(state): State<AppState>) -> Json<Health> {
    let status = if state.shutdown.is_cancelled() { "shutting_down" } else { "ok" };
    Json(Health { status, active_streams: state.manager.live_count() })
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// `ready`, `store_unavailable` or `shutting_down`.
    status: &'static str,
    /// `memory` or `redis`.
    store: &'static str,
}

#[utoipa::path(get, path = "/readyz", responses(
    (status = 200, body = Readiness, description = "Ready to serve streams"),
    (status = 503, body = Readiness, description = "The stream store does not answer, or the server is shutting down"),
))]
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let store = state.settings.store.as_str();
    let status = if state.shutdown.is_cancelled() {
        "shutting_down"
    } else if state.manager.ready().await.is_err() || state.limits.ready().await.is_err() {
        "store_unavailable"
    } else {
        "ready"
    };
    let code = if status == "ready" { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(Readiness { status, store }))
}

#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}
