//! A lean SSE reader for the load generator: it splits a response body into frames
//! and hands over the `event:`, `id:` and `data:` fields as byte slices, without
//! allocating per event. The client shares the two cores with the server it
//! measures, so the less it spends per event, the more the numbers say about the
//! server (and the same reader measures `live-ai` and the floor alike).

use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use super::http::Connection;

/// One SSE frame's fields (empty when absent: comments, the `retry:` hint).
#[derive(Debug, Default, PartialEq)]
pub struct Frame<'a> {
    pub event: &'a [u8],
    pub id: &'a [u8],
    pub data: &'a [u8],
}

#[derive(Default)]
pub struct Scanner {
    pending: Vec<u8>,
}

impl Scanner {
    /// Feeds a piece of the body; calls `on_frame` for every frame it completes.
    pub fn push(&mut self, bytes: &[u8], mut on_frame: impl FnMut(Frame<'_>)) {
        self.pending.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(end) = find_blank_line(&self.pending[start..]) {
            on_frame(parse_frame(&self.pending[start..start + end]));
            start += end + 2;
        }
        self.pending.drain(..start);
    }
}

/// Offset of the first `\n\n` (axum frames with `\n` only).
fn find_blank_line(bytes: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(n) = bytes[from..].iter().position(|&b| b == b'\n') {
        let at = from + n;
        if bytes.get(at + 1) == Some(&b'\n') {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

fn parse_frame(frame: &[u8]) -> Frame<'_> {
    let mut parsed = Frame::default();
    for line in frame.split(|&b| b == b'\n') {
        if let Some(value) = line.strip_prefix(b"data: ") {
            parsed.data = value;
        } else if let Some(value) = line.strip_prefix(b"event: ") {
            parsed.event = value;
        } else if let Some(value) = line.strip_prefix(b"id: ") {
            parsed.id = value;
        }
    }
    parsed
}

pub fn is_terminal(event: &[u8]) -> bool {
    matches!(event, b"complete" | b"error" | b"cancelled")
}

/// The decoded length of a chunk event's token, read from the end of its JSON
/// (`…,"token":"<text>"}`), for the log overhead per chunk.
pub fn token_len(data: &[u8]) -> Option<usize> {
    const KEY: &[u8] = b"\"token\":";
    let at = data.windows(KEY.len()).rposition(|w| w == KEY)?;
    let rest = data[at + KEY.len()..].strip_suffix(b"}")?;
    serde_json::from_slice::<String>(rest).ok().map(|s| s.len())
}

/// A general HTTP client for the few requests outside the measured streams
/// (`POST /api/streams`, `/metrics`): loopback only, no proxy.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client builds")
}

/// Panics unless `base` is a loopback URL: load never leaves the machine.
pub fn require_loopback(base: &str) {
    assert!(base.starts_with("http://127.0.0.1:") || base.starts_with("http://[::1]:"), "load goes to loopback only, not {base}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_across_pieces_are_put_back_together() {
        let body = b"retry: 1000\n: connected\n\nid: s:0\nevent: start\ndata: {\"a\":1}\n\nid: s:1\nevent: chunk\ndata: {\"token\":\"hi\\n\"}\n\n: keep-alive\n\n";
        for cut in 1..body.len() {
            let mut scanner = Scanner::default();
            let mut seen = Vec::new();
            for piece in [&body[..cut], &body[cut..]] {
                scanner.push(piece, |f| seen.push((f.event.to_vec(), f.id.to_vec(), f.data.to_vec())));
            }
            let events: Vec<_> = seen.iter().filter(|(e, _, _)| !e.is_empty()).collect();
            assert_eq!(seen.len(), 4, "cut at {cut}");
            assert_eq!(events[0].0, b"start");
            assert_eq!((events[1].1.as_slice(), events[1].2.as_slice()), (&b"s:1"[..], &b"{\"token\":\"hi\\n\"}"[..]));
        }
    }

    #[test]
    fn token_lengths_are_decoded_lengths() {
        assert_eq!(token_len(br#"{"stream_id":"x","seq":1,"type":"chunk","token":"ab\ncd"}"#), Some(5));
        assert_eq!(token_len(br#"{"type":"chunk","token":"\"token\":"}"#), Some(8));
        assert_eq!(token_len(br#"{"type":"start"}"#), None);
    }
}

/// What one stream showed its reader, read to its end by [`watch`].
pub struct Watched {
    /// From the request being sent to the first `chunk`.
    pub first_chunk_ms: f64,
    /// Frames that named an event.
    pub events: u64,
    pub complete: bool,
}

/// Opens the SSE stream at `path` on a connection of its own and reads it to its end.
pub async fn watch(address: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Result<Watched, String> {
    let sent = Instant::now();
    let mut connection = Connection::connect(address).await.map_err(|e| format!("connect: {e}"))?;
    let response = connection.get(path, headers).await.map_err(|e| format!("request: {e}"))?;
    if response.status != 200 {
        return Err(format!("status {}", response.status));
    }
    let (mut scanner, mut first, mut events, mut complete) = (Scanner::default(), None, 0u64, false);
    connection
        .read_body(&response, |bytes, now| {
            scanner.push(bytes, |frame| {
                if frame.event.is_empty() {
                    return;
                }
                events += 1;
                if frame.event == b"chunk" && first.is_none() {
                    first = Some((now - sent).as_secs_f64() * 1000.0);
                }
                if is_terminal(frame.event) {
                    complete = frame.event == b"complete";
                }
            });
            ControlFlow::Continue(())
        })
        .await
        .map_err(|e| format!("read: {e}"))?;
    Ok(Watched { first_chunk_ms: first.ok_or("no chunk")?, events, complete })
}
