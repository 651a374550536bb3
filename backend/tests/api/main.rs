//! Integration tests: a real `live-ai` server on a loopback port, driven by real
//! HTTP, SSE and WebSocket clients. Every event received is validated against the
//! AsyncAPI contract in `specs/`.

mod helpers;
mod private_redis;
mod proxy;

mod contract;
mod errors;
mod lifecycle;
mod providers;
mod scale_out;
mod sse;
mod websocket;
