//! Connections that hold nothing: every socket the server keeps open is one it
//! uses. Raw TCP clients on loopback; closure is proven by awaiting EOF (or a
//! reset) within a bound, never by sleeping.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

/// Reads until the server closes the connection; what it sent, or `None` if it
/// was still open after `bound`.
async fn closed_within(stream: &mut TcpStream, bound: Duration) -> Option<String> {
    let mut received = Vec::new();
    let read_to_end = async {
        let mut buffer = [0u8; 16 * 1024];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    };
    tokio::time::timeout(bound, read_to_end).await.ok()?;
    Some(String::from_utf8_lossy(&received).into_owned())
}

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.addr).await.unwrap()
}

/// One response read off a kept-alive connection (headers and a `content-length` body).
async fn read_response(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&received).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|line| line.to_ascii_lowercase().strip_prefix("content-length: ").map(|n| n.trim().parse::<usize>().unwrap()))
                .unwrap_or(0);
            if body.len() >= length {
                return text;
            }
        }
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut buffer)).await.expect("a response in time").unwrap();
        assert!(n > 0, "the connection closed mid-response: {text}");
        received.extend_from_slice(&buffer[..n]);
    }
}

#[tokio::test]
async fn an_sse_client_that_stops_reading_loses_its_connection_and_task_within_the_send_timeout() {
    // Header timeout far off: only the stuck client's closing can end the connection in time.
    let app = spawn_app(&[("CLIENT_SEND_TIMEOUT_SECONDS", "0.5"), ("HTTP_HEADER_TIMEOUT_SECONDS", "60")]).await;
    let id = app.create_stream("quiz", json!({"topic": "rivers", "count": 10})).await;
    let replay = app.events_of(&id).await.until_terminal().await;
    // Pipelined replays, several MB, more than the kernel's buffers hold: the
    // server's writes stop making progress, as this client never reads.
    let mut stuck = connect(&app).await;
    let request = format!("GET /api/streams/{id}/events HTTP/1.1\r\nhost: x\r\n\r\n");
    let _ = stuck.write_all(request.repeat(60).as_bytes()).await;
    app.wait_for_metric("live_ai_connections_closed_total", &["reason=\"send_timeout\""], |n| n >= 1.0).await;
    let received = closed_within(&mut stuck, PATIENCE).await.expect("the server closed the stuck client's connection");
    let responses = received.matches("HTTP/1.1 200").count();
    assert!((1..60).contains(&responses), "the connection ended where it stalled ({responses} of 60 responses began)");
    assert!(received.contains(&format!("id: {id}:{}", replay.len() - 1)), "what was written before is intact");
    // The connection's task ended with it: the server answers others as before.
    assert_eq!(app.get("/healthz").await.status(), 200);
}

#[tokio::test]
async fn a_connection_that_sends_no_byte_is_closed_within_the_header_timeout_and_so_is_a_quiet_kept_alive_one() {
    let app = spawn_app(&[("HTTP_HEADER_TIMEOUT_SECONDS", "0.5")]).await;
    let mut silent = connect(&app).await;
    assert_eq!(closed_within(&mut silent, PATIENCE).await.as_deref(), Some(""), "closed without a byte either way");
    let mut kept_alive = connect(&app).await;
    kept_alive.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    assert!(read_response(&mut kept_alive).await.starts_with("HTTP/1.1 200"));
    assert_eq!(closed_within(&mut kept_alive, PATIENCE).await.as_deref(), Some(""), "no second request head: closed");
    assert!(app.metric("live_ai_connections_closed_total", &["reason=\"header_timeout\""]).await >= 1.0);
}

#[tokio::test]
async fn connections_over_max_connections_get_503_and_connection_close_and_a_closed_one_frees_its_place() {
    let app = spawn_app(&[("MAX_CONNECTIONS", "2"), ("HTTP_HEADER_TIMEOUT_SECONDS", "60")]).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut connection = connect(&app).await;
        connection.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        assert!(read_response(&mut connection).await.starts_with("HTTP/1.1 200"));
        held.push(connection);
    }
    let mut over = connect(&app).await;
    over.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let refused = closed_within(&mut over, PATIENCE).await.expect("the refused connection is closed");
    let (head, body) = refused.split_once("\r\n\r\n").expect("a whole response");
    assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
    let head = head.to_ascii_lowercase();
    assert!(head.contains("connection: close") && head.contains("content-type: application/problem+json"), "{head}");
    let problem: Value = serde_json::from_str(body).unwrap();
    assert_eq!((problem["status"].as_u64(), problem["code"].as_str()), (Some(503), Some("at_capacity")));
    assert!(problem["detail"].as_str().unwrap().contains("MAX_CONNECTIONS"), "{problem}");
    // One held connection goes: its place is free for the next client.
    drop(held.pop());
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let mut next = connect(&app).await;
        next.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.unwrap();
        let answer = closed_within(&mut next, PATIENCE).await.unwrap();
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(answer.starts_with("HTTP/1.1 503") && tokio::time::Instant::now() < deadline, "{answer}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `head` and `body` (concurrently with reading, as a client uploading does)
/// and returns the response's head, lower-cased, and the connection.
async fn exchange(app: &TestApp, head: String, body: Vec<u8>) -> (String, TcpStream) {
    let stream = connect(app).await;
    let (mut read, mut write) = stream.into_split();
    let upload = tokio::spawn(async move {
        // The server may stop reading an upload it refused: the rest may not go out.
        let _ = write.write_all(head.as_bytes()).await;
        let _ = write.write_all(&body).await;
        write
    });
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&received).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let head = head.to_ascii_lowercase();
            let length = head.lines().find_map(|line| line.strip_prefix("content-length: ")?.trim().parse::<usize>().ok());
            if body.len() >= length.unwrap_or(0) {
                let write = upload.await.unwrap();
                return (head, read.reunite(write).unwrap());
            }
        }
        let n = tokio::time::timeout(PATIENCE, read.read(&mut buffer))
            .await
            .expect("an answer in time")
            .expect("the answer arrives, not a reset");
        assert!(n > 0, "the connection closed before the whole answer: {text}");
        received.extend_from_slice(&buffer[..n]);
    }
}

#[tokio::test]
async fn a_request_refused_before_its_body_was_read_says_connection_close_and_one_read_whole_does_not() {
    let app = spawn_app(&[]).await;
    let big = vec![b'x'; 2 * 1024 * 1024];
    let head = format!("POST /api/streams HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", big.len());
    let (answer, mut connection) = exchange(&app, head, big).await;
    assert!(answer.starts_with("http/1.1 413"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    assert!(closed_within(&mut connection, PATIENCE).await.is_some(), "and the connection closes");
    // Another early refusal: the wrong content type, refused before the body is read.
    let body = br#"{"block_type":"quiz","input":{"topic":"x"}}"#.to_vec();
    let head = format!("POST /api/streams HTTP/1.1\r\nhost: x\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n", body.len());
    let (answer, _) = exchange(&app, head, body.clone()).await;
    assert!(answer.starts_with("http/1.1 415") && answer.contains("connection: close"), "{answer}");
    // A body read to its end leaves the connection reusable, and says nothing of closing.
    let head = format!("POST /api/streams HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", body.len());
    let (answer, mut connection) = exchange(&app, head, body).await;
    assert!(answer.starts_with("http/1.1 201") && !answer.contains("connection: close"), "{answer}");
    connection.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    assert!(read_response(&mut connection).await.starts_with("HTTP/1.1 200"));
}
