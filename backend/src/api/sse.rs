//! The SSE transport: frames log events as `id: <stream_id>:<seq>`, `event: <type>`,
//! `data: <json>`, with a `retry:` hint first and keep-alive comments while idle.
//!
//! Each response is fed by a small pump task through a bounded channel: a client
//! that stops reading blocks only its own pump, which gives up after the send
//! timeout and detaches, so it never slows other readers nor grows memory. The
//! pump also detaches as soon as the client goes away, even while the stream is
//! idle, so the resume grace period starts on time. The bytes themselves come
//! from `sse_wire`.

use std::convert::Infallible;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{stream, FutureExt, StreamExt};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::{SendTimeoutError, TrySendError};
use tokio_stream::wrappers::ReceiverStream;

use super::error::ApiError;
use super::{sse_wire, AppState};
use crate::ai::streaming::events::{ErrorCode, EventBody, EventType, LoggedEvent, StreamId};
use crate::ai::streaming::stream_manager::{EventReader, Opened};

/// Writes buffered per SSE response between the log and the socket (each holds
/// every event that was ready at once).
const PUMP_BUFFER: usize = 8;

/// Parses `Last-Event-ID: <stream_id>:<seq>`; `seq` is decimal digits only (no
/// sign), as the server writes it.
pub fn parse_last_event_id(raw: &str) -> Option<(StreamId, u64)> {
    let (id, seq) = raw.trim().rsplit_once(':')?;
    if seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((StreamId::parse(id)?, seq.parse().ok()?))
}

/// The `Last-Event-ID` header, if present; a malformed one is an error naming it.
pub fn last_event_id(headers: &HeaderMap) -> Result<Option<(StreamId, u64)>, ApiError> {
    let Some(value) = headers.get("last-event-id") else { return Ok(None) };
    value
        .to_str()
        .ok()
        .and_then(parse_last_event_id)
        .map(Some)
        .ok_or_else(|| ApiError::bad_request("Last-Event-ID", "Last-Event-ID must be `<stream_id>:<seq>` as sent in an event's id"))
}

/// The response for an opened stream: 204 when the client is up to date, else SSE.
pub fn respond(state: &AppState, stream_id: StreamId, opened: Opened) -> Response {
    match opened {
        Opened::UpToDate => StatusCode::NO_CONTENT.into_response(),
        Opened::Events(reader) => events_response(state, pump(state, stream_id, reader)),
    }
}

/// An SSE response holding one `stream_not_found` error event at `seq`.
pub fn not_found(state: &AppState, stream_id: StreamId, seq: u64) -> Response {
    let body = EventBody::error(ErrorCode::StreamNotFound, format!("no stream {stream_id}; it may have expired: start again"), true);
    let (tx, rx) = mpsc::channel(1);
    let _ = tx.try_send(sse_wire::frames(&stream_id, &[LoggedEvent::new(seq, &body)]));
    events_response(state, rx)
}

/// Frames the reader's batches in a task of its own: a client that stops reading
/// blocks only this task, which gives up after the send timeout and detaches.
/// While the stream is idle it sends keep-alive comments, and it notices a client
/// that went away, so the resume grace period starts on time.
fn pump(state: &AppState, stream_id: StreamId, mut reader: EventReader) -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel(PUMP_BUFFER);
    let send_timeout = state.settings.client_send_timeout;
    let keep_alive = state.settings.sse_keepalive;
    let dropped = state.metrics.readers_dropped.with_label_values(&["send_timeout"]);
    let (sent, delivery) = (state.metrics.events_sent_sse.clone(), state.metrics.chunk_delivery.clone());
    tokio::spawn(async move {
        loop {
            // A batch that is ready needs no keep-alive timer, and a channel with room
            // no send timer: timers are armed only when the pump would wait.
            let next = match reader.next().now_or_never() {
                Some(next) => Ok(next),
                None => tokio::select! {
                    _ = tx.closed() => return,
                    next = tokio::time::timeout(keep_alive, reader.next()) => next,
                },
            };
            let bytes = match next {
                Ok(Some(batch)) => {
                    sent.inc_by(batch.events.len() as u64);
                    if let (Some(since), Some(EventType::Chunk)) = (batch.tail_since, batch.events.last().map(|e| e.event_type)) {
                        delivery.observe(since.elapsed().as_secs_f64());
                    }
                    sse_wire::frames(&stream_id, &batch.events)
                }
                Ok(None) => return,
                Err(_) => Bytes::from_static(sse_wire::KEEP_ALIVE),
            };
            let bytes = match tx.try_send(bytes) {
                Ok(()) => continue,
                Err(TrySendError::Closed(_)) => return,
                Err(TrySendError::Full(bytes)) => bytes,
            };
            match tx.send_timeout(bytes, send_timeout).await {
                Ok(()) => {}
                Err(SendTimeoutError::Timeout(_)) => {
                    dropped.inc();
                    tracing::info!(%stream_id, "dropping an SSE reader that stopped reading");
                    return;
                }
                Err(SendTimeoutError::Closed(_)) => return,
            }
        }
    });
    rx
}

fn events_response(state: &AppState, frames: mpsc::Receiver<Bytes>) -> Response {
    let preamble = sse_wire::preamble(state.settings.sse_retry);
    let body = stream::once(async move { preamble }).chain(ReceiverStream::new(frames)).map(Ok::<_, Infallible>);
    let mut response = Body::from_stream(body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_event_ids_parse_only_in_their_own_shape() {
        let (id, seq) = parse_last_event_id("abc123:17").unwrap();
        assert_eq!((id.as_str(), seq), ("abc123", 17));
        assert_eq!(parse_last_event_id("abc:18446744073709551615").unwrap().1, u64::MAX);
        for bad in ["", "abc", "abc:", ":3", "abc:-1", "abc:+1", "abc:x", "a b:1", "abc:1:2x", "abc:18446744073709551616"] {
            assert!(parse_last_event_id(bad).is_none(), "{bad:?}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(2000))]

        #[test]
        fn any_header_value_parses_or_is_refused_without_panicking(raw in "\\PC{0,120}") {
            if let Some((id, seq)) = parse_last_event_id(&raw) {
                // Whatever is accepted is a stream id and a decimal seq, nothing else.
                let (raw_id, raw_seq) = raw.trim().rsplit_once(':').unwrap();
                proptest::prop_assert_eq!(id.as_str(), raw_id);
                proptest::prop_assert!(raw_seq.bytes().all(|b| b.is_ascii_digit()));
                proptest::prop_assert_eq!(raw_seq.parse::<u64>().ok(), Some(seq));
            }
        }

        #[test]
        fn every_id_the_server_sends_parses_back(id in "[A-Za-z0-9_-]{1,64}", seq in proptest::prelude::any::<u64>()) {
            let parsed = parse_last_event_id(&format!("{id}:{seq}"));
            proptest::prop_assert_eq!(parsed, Some((StreamId::parse(&id).unwrap(), seq)));
        }
    }
}
