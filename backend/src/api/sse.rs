//! The SSE transport: frames log events as `id: <stream_id>:<seq>`, `event: <type>`,
//! `data: <json>`, with a `retry:` hint first and keep-alive comments while idle.
//!
//! The response body polls the stream's reader directly (`sse_body`, which also
//! drops the readers of clients that stopped reading); the bytes themselves come
//! from `sse_wire`.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::{sse_wire, AppState};
use crate::ai::streaming::events::{ErrorCode, EventBody, LoggedEvent, StreamId};
use crate::ai::streaming::stream_manager::Opened;

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
        Opened::Events(reader) => {
            let preamble = sse_wire::preamble(state.settings.sse_retry);
            events_response(Body::from_stream(state.sse_readers.body(stream_id, preamble, reader)))
        }
    }
}

/// An SSE response holding one `stream_not_found` error event at `seq`.
pub fn not_found(state: &AppState, stream_id: StreamId, seq: u64) -> Response {
    let body = EventBody::error(ErrorCode::StreamNotFound, format!("no stream {stream_id}; it may have expired: start again"), true);
    let bytes = [sse_wire::preamble(state.settings.sse_retry), sse_wire::frames(&stream_id, &[LoggedEvent::new(seq, &body)])].concat();
    events_response(Body::from(bytes))
}

fn events_response(body: Body) -> Response {
    let mut response = body.into_response();
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
