//! A fake model API for tests: a raw HTTP/1.1 server on 127.0.0.1:0 that replays
//! byte-exact transcripts from `tests/fixtures/providers/`, answers with error
//! statuses, cuts or stalls streams, records each request, and notes when the
//! client closes its connection — which is how tests see that a cancel closed the
//! upstream request.
//!
//! Streams are sent as HTTP chunks cut at awkward places on purpose: inside every
//! `data:` field name, inside every multi-byte UTF-8 character and between the two
//! newlines that end an event, with a pause between chunks so the client reads
//! them one by one.
//!
//! Raw TCP rather than axum so a test controls every byte and every close. This
//! file is also compiled into the integration tests (`#[path]`), so it uses only
//! std, tokio and serde_json, never `crate::`.
#![allow(dead_code)] // each of the two test crates uses a different part of it

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;

/// A transcript from `tests/fixtures/providers/`.
pub fn fixture(name: &str) -> Vec<u8> {
    fixture_in("providers", name)
}

/// A transcript from `tests/fixtures/<dir>/`.
pub fn fixture_in(dir: &str, name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(dir).join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {dir}/{name}: {e}"))
}

/// Picks the reply to a request once it has been read (by what it asks, say).
pub type Responder = Arc<dyn Fn(&RecordedRequest) -> Reply + Send + Sync>;

/// How one connection is answered.
#[derive(Debug, Clone)]
pub enum Reply {
    /// `200 text/event-stream`, chunked.
    Stream { body: Vec<u8>, ending: Ending },
    /// A plain response, as a model API sends its errors. With `sent`, only
    /// that many bytes of the body follow its full `content-length` before the
    /// socket closes: a server gone mid-reply.
    Status { status: u16, headers: Vec<(String, String)>, body: String, sent: Option<usize> },
    /// `reply`, after a pause (a moderator that takes its time).
    Delayed { delay: Duration, reply: Box<Reply> },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Ending {
    /// The whole body, the terminating chunk, then close.
    Complete,
    /// The whole body, then the socket closes without the terminating chunk.
    Cut,
    /// The first this-many events, then nothing, with the connection held open
    /// until the client closes it.
    StallAfter(usize),
}

impl Reply {
    pub fn sse(body: Vec<u8>) -> Self {
        Self::Stream { body, ending: Ending::Complete }
    }

    pub fn status(status: u16, headers: &[(&str, &str)], body: String) -> Self {
        let headers = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Self::Status { status, headers, body, sent: None }
    }

    /// This plain reply, its body cut off after `bytes` (a stream reply is unchanged).
    pub fn cut_after(self, bytes: usize) -> Self {
        match self {
            Self::Status { status, headers, body, .. } => Self::Status { status, headers, body, sent: Some(bytes) },
            other => other,
        }
    }

    pub fn after(self, delay: Duration) -> Self {
        Self::Delayed { delay, reply: Box::new(self) }
    }

    pub fn cut(self) -> Self {
        self.ending(Ending::Cut)
    }

    pub fn stall_after(self, events: usize) -> Self {
        self.ending(Ending::StallAfter(events))
    }

    fn ending(self, ending: Ending) -> Self {
        match self {
            Self::Stream { body, .. } => Self::Stream { body, ending },
            status => status,
        }
    }
}

/// One request as the server read it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    headers: HashMap<String, String>,
    pub body: Vec<u8>,
    /// When the whole request had been read.
    pub at: Instant,
}

impl RecordedRequest {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(&name.to_ascii_lowercase()).cloned()
    }
}

#[derive(Default)]
struct Connection {
    request: Option<RecordedRequest>,
    closed_at: Option<Instant>,
}

#[derive(Default)]
struct Shared {
    connections: Mutex<Vec<Connection>>,
    changed: Notify,
}

impl Shared {
    fn update(&self, index: usize, f: impl FnOnce(&mut Connection)) {
        f(&mut self.connections.lock().unwrap()[index]);
        self.changed.notify_waiters();
    }

    async fn wait_for<T>(&self, check: impl Fn(&[Connection]) -> Option<T>) -> T {
        loop {
            // Registered before the check, so a change in between is not missed.
            let changed = self.changed.notified();
            if let Some(found) = check(&self.connections.lock().unwrap()) {
                return found;
            }
            changed.await;
        }
    }
}

pub struct FakeUpstream {
    port: u16,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl FakeUpstream {
    /// Connection n is answered with `replies[n]`, or the last reply once they run out.
    pub async fn start(replies: Vec<Reply>) -> Self {
        assert!(!replies.is_empty(), "a fake upstream needs at least one reply");
        let replies = Arc::new(replies);
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        Self::start_with(Arc::new(move |_request| {
            let index = connections.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            replies[index.min(replies.len() - 1)].clone()
        }))
        .await
    }

    /// Each request is answered with what `respond` picks for it.
    pub async fn start_with(respond: Responder) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared::default());
        let accept = tokio::spawn({
            let shared = shared.clone();
            async move {
                while let Ok((socket, _)) = listener.accept().await {
                    let index = {
                        let mut connections = shared.connections.lock().unwrap();
                        connections.push(Connection::default());
                        connections.len() - 1
                    };
                    tokio::spawn(serve(socket, respond.clone(), index, shared.clone()));
                }
            }
        });
        Self { port, shared, accept }
    }

    /// A port on which nothing listens: connecting is refused.
    pub async fn refused_port() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        listener.local_addr().unwrap().port()
    }

    /// `http://127.0.0.1:<port>`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn connections(&self) -> usize {
        self.shared.connections.lock().unwrap().len()
    }

    /// The request of connection `index`, once it has been read.
    pub async fn request(&self, index: usize) -> RecordedRequest {
        self.shared.wait_for(|c| c.get(index).and_then(|c| c.request.clone())).await
    }

    /// When connection `index` was closed (by the client, for streams that stall).
    pub async fn closed(&self, index: usize) -> Instant {
        self.shared.wait_for(|c| c.get(index).and_then(|c| c.closed_at)).await
    }
}

async fn serve(mut socket: TcpStream, respond: Responder, index: usize, shared: Arc<Shared>) {
    let _ = socket.set_nodelay(true);
    let Some(request) = read_request(&mut socket).await else {
        shared.update(index, |c| c.closed_at = Some(Instant::now()));
        return;
    };
    let mut reply = respond(&request);
    shared.update(index, |c| c.request = Some(request));
    while let Reply::Delayed { delay, reply: inner } = reply {
        tokio::time::sleep(delay).await;
        reply = *inner;
    }
    let client_closed = match reply {
        Reply::Delayed { .. } => unreachable!("unwrapped above"),
        Reply::Status { status, headers, body, sent } => {
            let mut head = format!(
                "HTTP/1.1 {status} Fake\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
                body.len()
            );
            for (name, value) in headers {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            head.push_str("\r\n");
            let _ = socket.write_all(head.as_bytes()).await;
            let sent = sent.unwrap_or(body.len()).min(body.len());
            let _ = socket.write_all(&body.as_bytes()[..sent]).await;
            false
        }
        Reply::Stream { body, ending } => send_stream(&mut socket, &body, ending).await,
    };
    if !client_closed {
        // Nothing left to send (a stalled stream returns only once the client left).
        let _ = socket.shutdown().await;
    }
    shared.update(index, |c| c.closed_at = Some(Instant::now()));
}

/// Sends a stream reply; returns whether the client closed the connection.
async fn send_stream(socket: &mut TcpStream, body: &[u8], ending: Ending) -> bool {
    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
    if socket.write_all(head.as_bytes()).await.is_err() {
        return true;
    }
    let end = match ending {
        Ending::StallAfter(events) => end_of_event(body, events),
        Ending::Complete | Ending::Cut => body.len(),
    };
    let mut start = 0;
    for cut in cut_points(&body[..end]).into_iter().chain([end]) {
        if cut <= start {
            continue;
        }
        let piece = &body[start..cut];
        let mut chunk = format!("{:x}\r\n", piece.len()).into_bytes();
        chunk.extend_from_slice(piece);
        chunk.extend_from_slice(b"\r\n");
        if socket.write_all(&chunk).await.is_err() || socket.flush().await.is_err() {
            return true;
        }
        start = cut;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    match ending {
        Ending::Complete => {
            let _ = socket.write_all(b"0\r\n\r\n").await;
            false
        }
        Ending::Cut => false,
        Ending::StallAfter(_) => {
            // Hold the connection open, reading until the client closes it.
            let mut buf = [0u8; 1024];
            loop {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => return true,
                    Ok(_) => {}
                }
            }
        }
    }
}

/// Byte offset just after the `events`-th blank line (the end of that event).
fn end_of_event(body: &[u8], events: usize) -> usize {
    let mut seen = 0;
    for i in 1..body.len() {
        if body[i - 1] == b'\n' && body[i] == b'\n' {
            seen += 1;
            if seen == events {
                return i + 1;
            }
        }
    }
    body.len()
}

/// Where to cut a transcript into chunks: inside each `data:` name, inside each
/// multi-byte UTF-8 character, between the newlines ending an event, and every
/// 40 bytes in between.
fn cut_points(body: &[u8]) -> Vec<usize> {
    let mut cuts = Vec::new();
    for i in 0..body.len() {
        if body[i..].starts_with(b"data:") {
            cuts.push(i + 2);
        }
        // A UTF-8 lead byte of a multi-byte character: cut after it.
        if body[i] >= 0xC0 {
            cuts.push(i + 1);
        }
        if i > 0 && body[i - 1] == b'\n' && body[i] == b'\n' {
            cuts.push(i);
        }
        if i % 40 == 39 {
            cuts.push(i + 1);
        }
    }
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}

/// Reads one request: head up to the blank line, then `content-length` bytes.
async fn read_request(socket: &mut TcpStream) -> Option<RecordedRequest> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_owned();
    let path = request_line.next()?.to_owned();
    let headers: HashMap<String, String> =
        lines.filter_map(|line| line.split_once(':')).map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned())).collect();
    let length: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    Some(RecordedRequest { method, path, headers, body, at: Instant::now() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_fall_inside_data_names_utf8_characters_and_event_ends() {
        let body = "data: é\n\ndata: x\n\n".as_bytes();
        let cuts = cut_points(body);
        assert!(cuts.contains(&2), "inside the first `data:`");
        assert!(cuts.contains(&7), "inside `é`");
        assert!(cuts.contains(&9), "between the two newlines");
        for cut in cuts {
            assert!(cut <= body.len());
        }
    }

    #[test]
    fn a_stall_stops_after_the_given_event() {
        let body = b"data: 1\n\ndata: 2\n\ndata: 3\n\n";
        assert_eq!(&body[..end_of_event(body, 2)], b"data: 1\n\ndata: 2\n\n");
        assert_eq!(end_of_event(body, 9), body.len());
    }
}
