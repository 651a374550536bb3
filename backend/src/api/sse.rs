//! The SSE transport: frames log events as `id: <stream_id>:<seq>`, `event: <type>`,
//! `data: <json>`, with a `retry:` hint first and keep-alive comments while idle.
//!
//! Each response is fed by a small pump task through a bounded channel: a client
//! that stops reading blocks only its own pump, which gives up after the send
//! timeout and detaches, so it never slows other readers nor grows memory. The
//! pump also detaches as soon as the client goes away, even while the stream is
//! idle, so the resume grace period starts on time.

use std::convert::Infallible;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{stream, StreamExt};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::SendTimeoutError;
use tokio_stream::wrappers::ReceiverStream;

use super::error::ApiError;
use super::AppState;
use crate::ai::streaming::events::{ErrorCode, EventBody, EventType, LoggedEvent, StreamId};
use crate::ai::streaming::stream_manager::{EventReader, Opened};

/// Events buffered per SSE response between the log and the socket.
const PUMP_BUFFER: usize = 64;

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

pub fn frame(event: &LoggedEvent, stream_id: &StreamId) -> SseEvent {
    SseEvent::default().id(format!("{stream_id}:{}", event.seq)).event(event.event_type.as_str()).data(&*event.json)
}

/// The response for an opened stream: 204 when the client is up to date, else SSE.
pub fn respond(state: &AppState, stream_id: StreamId, opened: Opened) -> Response {
    match opened {
        Opened::UpToDate => StatusCode::NO_CONTENT.into_response(),
        Opened::Events(reader) => {
            let events = pump(state, stream_id.clone(), reader);
            events_response(state, stream_id, events)
        }
    }
}

/// An SSE response holding one `stream_not_found` error event.
pub fn not_found(state: &AppState, stream_id: StreamId, after: Option<u64>) -> Response {
    let body = EventBody::error(ErrorCode::StreamNotFound, format!("no stream {stream_id}; it may have expired: start again"), true);
    let event = LoggedEvent::new(&stream_id, after.map_or(0, |seq| seq.saturating_add(1)), body);
    let (tx, rx) = mpsc::channel(1);
    let _ = tx.try_send(event);
    events_response(state, stream_id, rx)
}

fn pump(state: &AppState, stream_id: StreamId, mut reader: EventReader) -> mpsc::Receiver<LoggedEvent> {
    let (tx, rx) = mpsc::channel(PUMP_BUFFER);
    let send_timeout = state.settings.client_send_timeout;
    let dropped = state.metrics.readers_dropped.with_label_values(&["send_timeout"]);
    tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                _ = tx.closed() => return,
                event = reader.next() => match event { Some(event) => event, None => return },
            };
            match tx.send_timeout(event, send_timeout).await {
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

fn events_response(state: &AppState, stream_id: StreamId, events: mpsc::Receiver<LoggedEvent>) -> Response {
    let sent = state.metrics.events_sent_sse.clone();
    let delivery = state.metrics.chunk_delivery.clone();
    let retry = SseEvent::default().retry(state.settings.sse_retry).comment("connected");
    let frames = ReceiverStream::new(events).map(move |event| {
        sent.inc();
        if event.event_type == EventType::Chunk {
            delivery.observe(event.created.elapsed().as_secs_f64());
        }
        Ok::<_, Infallible>(frame(&event, &stream_id))
    });
    let body = stream::once(async move { Ok(retry) }).chain(frames);
    let keep_alive = KeepAlive::new().interval(state.settings.sse_keepalive).text("keep-alive");
    let mut response = Sse::new(body).keep_alive(keep_alive).into_response();
    let headers = response.headers_mut();
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
        for bad in ["", "abc", "abc:", ":3", "abc:-1", "abc:+1", "abc:x", "a b:1", "abc:1:2x", "abc:99999999999999999999"] {
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
