//! Hostile clients: cross-site starts, slow headers, oversized and idle
//! WebSockets, spoofed `X-Forwarded-For`, framing of the demo page, and internal
//! error text that must never reach a client.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;

#[tokio::test]
async fn a_start_from_another_site_is_refused_with_403_and_an_allowed_origin_gets_cors() {
    let app = spawn_app(&[("CORS_ALLOWED_ORIGINS", "https://learn.example.org")]).await;
    let body = json!({"block_type": "explain-eli10", "input": {"topic": "x"}});
    let post = |headers: &'static [(&'static str, &'static str)]| {
        let mut request = app.http.post(app.url("/api/streams")).json(&body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send()
    };
    assert_problem(post(&[("origin", "https://evil.example.net")]).await.unwrap(), 403, "forbidden_origin").await;
    assert_problem(post(&[("origin", "null")]).await.unwrap(), 403, "forbidden_origin").await;
    // What an <img src> on another site sends: no Origin, Sec-Fetch-Site: cross-site.
    let img = app.http.get(app.url("/api/stream/ai-block/quiz?topic=x")).header("sec-fetch-site", "cross-site").send().await.unwrap();
    assert_problem(img, 403, "forbidden_origin").await;
    let whole = app.http.post(app.url("/api/ai-block/quiz")).header("origin", "https://evil.example.net").json(&json!({"topic": "x"}));
    assert_problem(whole.send().await.unwrap(), 403, "forbidden_origin").await;
    let refused = app.ws_with(&[("origin", "https://evil.example.net")]).await;
    assert!(matches!(refused, Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 403), "the upgrade checks Origin");

    let same_origin = format!("http://{}", app.addr);
    let ours = app.http.post(app.url("/api/streams")).header("origin", &same_origin).header("sec-fetch-site", "same-origin").json(&body);
    assert_eq!(ours.send().await.unwrap().status(), 201);
    assert!(app.ws_with(&[("origin", &same_origin)]).await.is_ok());
    let allowed = post(&[("origin", "https://learn.example.org"), ("sec-fetch-site", "cross-site")]).await.unwrap();
    assert_eq!(allowed.status(), 201);
    assert_eq!(allowed.headers()["access-control-allow-origin"], "https://learn.example.org");
    let preflight = app
        .http
        .request(reqwest::Method::OPTIONS, app.url("/api/streams"))
        .header("origin", "https://learn.example.org")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization, content-type")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.headers()["access-control-allow-origin"], "https://learn.example.org");
    let foreign = app.http.get(app.url("/api/ai/config")).header("origin", "https://evil.example.net").send().await.unwrap();
    assert!(foreign.headers().get("access-control-allow-origin").is_none(), "other sites cannot read answers");
    assert!(app.ws_with(&[("origin", "https://learn.example.org")]).await.is_ok());
}

#[tokio::test]
async fn a_connection_that_dribbles_its_headers_is_closed() {
    let process = LiveAiProcess::spawn(&[("HTTP_HEADER_TIMEOUT_SECONDS", "0.5")]).await;
    let mut slow = tokio::net::TcpStream::connect(("127.0.0.1", process.port)).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ").await.unwrap();
    // Keep sending a byte now and then, as slowloris does, until the server hangs up.
    let closed = tokio::time::timeout(PATIENCE, async {
        let mut buffer = [0u8; 1024];
        loop {
            tokio::select! {
                read = slow.read(&mut buffer) => match read {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                },
                _ = tokio::time::sleep(Duration::from_millis(100)) => {
                    if slow.write_all(b"a").await.is_err() {
                        return;
                    }
                }
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the server closed the slow-header connection");
    let healthy = reqwest::get(format!("{}/healthz", process.base)).await.unwrap();
    assert_eq!(healthy.status(), 200, "prompt clients are served");
}

#[tokio::test]
async fn an_oversized_websocket_frame_is_refused_and_the_sockets_streams_resume_elsewhere() {
    let app = spawn_app(&[("DEMO_TOKENS_PER_SECOND", "100")]).await;
    let mut other_socket = app.ws().await;
    other_socket.send(json!({"type": "start", "block_type": "explain-eli10", "input": {"topic": "bystander"}})).await;
    let bystander = other_socket.next().await["stream_id"].as_str().unwrap().to_owned();

    let mut ws = app.ws().await;
    ws.send(json!({"type": "start", "block_type": "ask-question", "input": {"question": "Why is the sea salty?"}})).await;
    let mut events: Vec<Received> = Vec::new();
    while events.len() < 3 {
        events.push(Received { id: String::new(), data: ws.next().await });
    }
    let id = events[0].data["stream_id"].as_str().unwrap().to_owned();
    let huge = format!("{{\"type\":\"start\",\"block_type\":\"quiz\",\"input\":{{\"topic\":\"{}\"}}}}", "x".repeat(40_000));
    let _ = ws.socket.send(Message::text(huge)).await;
    let ended = tokio::time::timeout(PATIENCE, async {
        loop {
            match ws.socket.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
                Some(Ok(_)) => continue,
                None | Some(Err(_)) => return None,
            }
        }
    })
    .await
    .expect("the socket ends");
    assert!(matches!(ended, None | Some(CloseCode::Size)), "{ended:?}");

    let mut fresh = app.ws().await;
    fresh.send(json!({"type": "resume", "stream_id": id, "after": events.last().unwrap().seq()})).await;
    events.extend(fresh.until_terminal(&id, &mut Vec::new()).await);
    assert_contiguous(&events, 0);
    assert_eq!(events.last().unwrap().kind(), "complete", "the generation outlived its socket");
    let others = other_socket.until_terminal(&bystander, &mut Vec::new()).await;
    assert_eq!(others.last().unwrap().kind(), "complete", "other sockets are unaffected");
}

#[tokio::test]
async fn an_idle_socket_is_closed_but_one_reading_a_stream_is_not() {
    let app = spawn_app(&[("WS_IDLE_TIMEOUT_SECONDS", "0.4"), ("DEMO_TOKENS_PER_SECOND", "60")]).await;
    let mut reading = app.ws().await;
    reading.send(json!({"type": "start", "block_type": "explain-eli10", "input": {"topic": "long enough"}})).await;
    let mut idle = app.ws().await;
    let closed = tokio::time::timeout(PATIENCE, async {
        loop {
            match idle.socket.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
                Some(Ok(_)) => continue,
                other => panic!("{other:?}"),
            }
        }
    })
    .await
    .expect("the idle socket is closed");
    assert_eq!(closed, Some(CloseCode::Normal));
    let start = reading.next().await;
    let events = reading.until_terminal(start["stream_id"].as_str().unwrap(), &mut Vec::new()).await;
    assert_eq!(events.last().unwrap().kind(), "complete", "a socket reading a stream outlives the idle timeout");
}

#[tokio::test]
async fn x_forwarded_for_is_believed_only_from_trusted_proxies() {
    let direct = spawn_app(&[]).await;
    let spoofed: Value =
        direct.http.get(direct.url("/api/usage")).header("x-forwarded-for", "203.0.113.5").send().await.unwrap().json().await.unwrap();
    assert_eq!(spoofed["principal"], "ip:127.0.0.1");
    let proxied = spawn_app(&[("TRUSTED_PROXIES", "127.0.0.1/32")]).await;
    let forwarded: Value = proxied
        .http
        .get(proxied.url("/api/usage"))
        .header("x-forwarded-for", "198.51.100.1, 203.0.113.5")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(forwarded["principal"], "ip:203.0.113.5", "the address our proxy saw, not what the client claims");
}

#[tokio::test]
async fn the_demo_page_allows_only_its_own_assets_and_framing_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("index.html"), "<!doctype html><title>demo</title>").unwrap();
    let app = spawn_app(&[("STATIC_DIR", dir.path().to_str().unwrap())]).await;
    for path in ["/", "/index.html", "/some/client/route"] {
        let page = app.get(path).await;
        assert_eq!(page.status(), 200);
        let csp = page.headers()["content-security-policy"].to_str().unwrap().to_owned();
        for directive in ["default-src 'self'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'self'", "object-src 'none'"] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        assert_eq!(page.headers()["x-content-type-options"], "nosniff");
    }
    assert_eq!(app.get("/api/ai/config").await.headers()["x-content-type-options"], "nosniff");
}

/// A TCP relay to the tests' Redis that can be cut, to make Redis unreachable.
struct RedisRelay {
    addr: std::net::SocketAddr,
    cut: tokio_util::sync::CancellationToken,
}

impl RedisRelay {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = tokio_util::sync::CancellationToken::new();
        let stop = cut.clone();
        tokio::spawn(async move {
            loop {
                let (mut client, _) = tokio::select! {
                    _ = stop.cancelled() => return,
                    accepted = listener.accept() => accepted.unwrap(),
                };
                let stop = stop.clone();
                tokio::spawn(async move {
                    let mut redis = tokio::net::TcpStream::connect("127.0.0.1:6379").await.unwrap();
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut client, &mut redis) => {}
                    }
                });
            }
        });
        Self { addr, cut }
    }
}

#[tokio::test]
async fn redis_failures_reach_clients_as_a_plain_retryable_problem_without_internals() {
    let relay = RedisRelay::start().await;
    let url = format!("redis://{}", relay.addr);
    let prefix = fresh_prefix();
    let app = spawn_app(&[("STREAM_STORE", "redis"), ("REDIS_URL", &url), ("REDIS_KEY_PREFIX", &prefix)]).await;
    assert_eq!(app.post_json("/api/streams", &json!({"block_type": "quiz", "input": {"topic": "x"}})).await.status(), 201);
    relay.cut.cancel();
    for response in [
        app.post_json("/api/streams", &json!({"block_type": "quiz", "input": {"topic": "x"}})).await,
        app.get("/api/usage").await,
        app.delete("/api/streams/somestream").await,
    ] {
        let body = assert_problem(response, 503, "store_unavailable").await;
        let detail = body["detail"].as_str().unwrap().to_lowercase();
        for internal in ["redis", "os error", "connection", "127.0.0.1", "refused", "broken pipe"] {
            assert!(!detail.contains(internal), "{detail}");
        }
    }
    let mut ws = app.ws().await;
    ws.send(json!({"type": "start", "block_type": "quiz", "input": {"topic": "x"}, "ref": "r"})).await;
    let refused = ws.next().await;
    assert_eq!((refused["code"].as_str(), refused["retryable"].as_bool()), (Some("store_unavailable"), Some(true)));
    assert!(!refused["message"].as_str().unwrap().to_lowercase().contains("redis"));
}
