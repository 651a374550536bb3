//! Integration tests: a real `live-ai` server on a loopback port, driven by real
//! HTTP, SSE and WebSocket clients. Every event received is validated against the
//! AsyncAPI contract in `specs/`.

mod helpers;
mod private_redis;
mod proxy;

mod auth;
mod contract;
mod errors;
mod hardening;
mod lifecycle;
mod limits;
mod ownership;
mod providers;
mod scale_out;
mod sse;
mod websocket;
