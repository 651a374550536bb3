//! The floor: the least an axum server can do to stream an answer the way `live-ai`
//! does, so the benchmark can say how much the stream manager costs on top of it.
//!
//! `GET /api/stream/ai-block/{block_type}` answers with the same SSE framing as
//! `live-ai` (`retry:` hint and a `connected` comment first, then `id:
//! <stream_id>:<seq>`, `event: <type>`, `data: <json>`), the same JSON shapes and about
//! the same sizes (a `start`, ~130 `chunk`s of a few bytes, a `complete` with the whole
//! text), paced like the demo model. It only sleeps on tokio timers and writes: no
//! event log, no fan-out, no resume, no metrics, no request log. Deliberately naive
//! (one `format!` and one `serde_json` call per event), because that is what a bare
//! server does; `live-ai` should do at least as well with everything else in the path.
//!
//! Pace: `DEMO_TOKENS_PER_SECOND` (0 = unpaced) and `DEMO_FIRST_TOKEN_MS`, the demo
//! model's variables and defaults; the query parameters `tps`, `first_token_ms` and
//! `chunks` (how many chunk events, the text repeating as needed) override them per
//! request. `HOST`/`PORT` as for `live-ai`; SIGTERM or Ctrl-C stops it gracefully (so
//! a profiler sees a clean exit).
//!
//! Its sockets are `live-ai`'s: axum's defaults, so Nagle's algorithm stays on, and
//! tokio's listen backlog (128). Two knobs exist only to measure what those defaults
//! cost, never for the side-by-side numbers: `FLOOR_TCP_NODELAY=true` and
//! `FLOOR_LISTEN_BACKLOG=<n>`.
//!
//! Usage: cargo run --release --example floor (run by the bench scripts).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use async_stream::stream;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::Router;
use serde::Serialize;
use serde_json::json;
use tokio::time::{sleep_until, Instant};

#[derive(Clone, Copy)]
struct Pace {
    tokens_per_second: f64,
    first_token: Duration,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(raw) => raw.parse().unwrap_or_else(|_| panic!("{name} is not a valid value: {raw:?}")),
        Err(_) => default,
    }
}

/// About the length and the token sizes of the demo model's answer to a benchmark
/// question (~690 bytes in ~130 tokens), with the question woven in like the demo's.
fn answer(question: &str) -> String {
    format!(
        "**Put simply:** {question} comes down to how *streams* relate to *load*.\n\n## Why\n\n\
         Start from what *streams* are for. Most explanations begin with the purpose, not the parts. A good first step is to say what would be missing \
         without them. When you look at *load* the same way, the connection becomes clearer: \
         each one shapes the other.\n\n## Example\n\n\
         1. Notice where *benchmark* appears, and ask what it changes.\n\
         2. Notice where *question* appears, and ask what it changes.\n\
         3. Notice where *streams* appear, and ask what they change.\n\n\
         > Tip: explain *streams* in one sentence to a friend — if you can, you understand them.\n\n\
         *Written by the benchmark floor.*\n"
    )
}

/// Model-like tokens: a new token at each word start, and at most 8 characters each.
fn tokenize(text: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut current = String::new();
    let mut previous_space = true;
    for c in text.chars() {
        let word_starts = !c.is_whitespace() && previous_space;
        if !current.is_empty() && ((word_starts && !current.trim().is_empty()) || current.chars().count() >= 8) {
            tokens.push(std::mem::take(&mut current));
        }
        previous_space = c.is_whitespace();
        current.push(c);
    }
    if !current.is_empty() {
        tokens.push(current);
    }
    tokens
}

#[derive(Serialize)]
struct Chunk<'a> {
    stream_id: &'a str,
    seq: u64,
    #[serde(rename = "type")]
    kind: &'static str,
    token: &'a str,
}

fn sse(stream_id: &str, seq: u64, kind: &str, data: String) -> Result<Event, Infallible> {
    Ok(Event::default().id(format!("{stream_id}:{seq}")).event(kind).data(data))
}

async fn stream_block(State(pace): State<Pace>, Path(block_type): Path<String>, Query(query): Query<HashMap<String, String>>) -> Response {
    let param = |name: &str| query.get(name).and_then(|v| v.parse::<f64>().ok());
    let tps = param("tps").unwrap_or(pace.tokens_per_second);
    let first_token = param("first_token_ms").map_or(pace.first_token, |ms| Duration::from_secs_f64(ms / 1000.0));
    let question = query.get("question").cloned().unwrap_or_else(|| "How do streams scale?".into());
    let text = answer(&question);
    let mut tokens = tokenize(&text);
    if let Some(chunks) = param("chunks") {
        tokens = tokens.iter().cycle().take(chunks as usize).cloned().collect();
    }
    let text: String = tokens.concat();
    let stream_id = uuid::Uuid::new_v4().simple().to_string();
    let events = stream! {
        yield Ok(Event::default().retry(Duration::from_millis(1000)).comment("connected"));
        let started = Instant::now();
        let start = json!({"stream_id": stream_id, "seq": 0, "type": "start", "block_type": block_type, "provider": "floor", "model": "floor (bench)"});
        yield sse(&stream_id, 0, "start", start.to_string());
        let period = (tps > 0.0).then(|| Duration::from_secs_f64(1.0 / tps));
        let first = Instant::now() + first_token;
        sleep_until(first).await;
        let mut seq = 0;
        for (n, token) in tokens.iter().enumerate() {
            // Paced against the first token's time, as the demo model is.
            if let Some(period) = period {
                sleep_until(first + period * n as u32).await;
            }
            seq += 1;
            let chunk = Chunk { stream_id: &stream_id, seq, kind: "chunk", token };
            yield sse(&stream_id, seq, "chunk", serde_json::to_string(&chunk).expect("plain data serialises"));
        }
        seq += 1;
        let n = tokens.len() as u64;
        let complete = json!({
            "stream_id": stream_id, "seq": seq, "type": "complete", "finish_reason": "stop",
            "usage": {"prompt_tokens": 94, "completion_tokens": n, "total_tokens": 94 + n},
            "result": {"markdown": text},
            "ttft_ms": first_token.as_millis() as u64, "duration_ms": started.elapsed().as_millis() as u64,
        });
        yield sse(&stream_id, seq, "complete", complete.to_string());
    };
    let keep_alive = KeepAlive::new().interval(Duration::from_secs(15)).text("keep-alive");
    let mut response = Sse::new(events).keep_alive(keep_alive).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[tokio::main]
async fn main() {
    let pace = Pace {
        tokens_per_second: env_or("DEMO_TOKENS_PER_SECOND", 40.0),
        first_token: Duration::from_millis(env_or("DEMO_FIRST_TOKEN_MS", 300)),
    };
    let addr = SocketAddr::new(env_or("HOST", "127.0.0.1".parse().unwrap()), env_or("PORT", 8100));
    let app = Router::new()
        .route("/api/stream/ai-block/{block_type}", get(stream_block))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(pace);
    // By default bound the way `live-ai` binds (tokio's backlog), so a connection
    // burst meets the same accept queue.
    let listener = match std::env::var("FLOOR_LISTEN_BACKLOG").ok().and_then(|b| b.parse::<u32>().ok()) {
        None => tokio::net::TcpListener::bind(addr).await,
        Some(backlog) => {
            let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() }.expect("a socket");
            socket.set_reuseaddr(true).expect("SO_REUSEADDR");
            socket.bind(addr).and_then(|()| socket.listen(backlog))
        }
    }
    .unwrap_or_else(|e| panic!("cannot listen on {addr}: {e}"));
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    if env_or("FLOOR_TCP_NODELAY", false) {
        let listener = listener.tap_io(|socket| {
            let _ = socket.set_nodelay(true);
        });
        axum::serve(listener, app).with_graceful_shutdown(shutdown).await.expect("the floor serves");
    } else {
        axum::serve(listener, app).with_graceful_shutdown(shutdown).await.expect("the floor serves");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_concatenate_to_the_text_and_stay_short() {
        let text = answer("How do streams scale?");
        let tokens = tokenize(&text);
        assert_eq!(tokens.concat(), text);
        assert!(tokens.iter().all(|t| t.chars().count() <= 8));
        assert!((110..160).contains(&tokens.len()), "about the demo model's ~130 tokens: {}", tokens.len());
    }
}
