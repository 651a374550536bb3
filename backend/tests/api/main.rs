//! Integration tests: a real `live-ai` server on a loopback port, driven by real
//! HTTP, SSE and WebSocket clients. Every event received is validated against the
//! AsyncAPI contract in `specs/`.

mod helpers;
// The fake model and moderation APIs, shared by path with the library's tests.
#[path = "../../src/ai/providers/fake_upstream.rs"]
mod fake_upstream;
// The library's private `redis-server` for tests, shared by path; some of it
// serves only the library's unit tests.
mod proxy;
#[allow(dead_code)]
#[path = "../../src/ai/streaming/store/redis/test_server.rs"]
mod test_server;

mod auth;
mod cluster;
mod coalesce;
mod connections;
mod contract;
mod errors;
mod hardening;
mod lifecycle;
mod limits;
mod moderation;
mod ownership;
mod providers;
pub mod scale_out;
mod sse;
mod websocket;
