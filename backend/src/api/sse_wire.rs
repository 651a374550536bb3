//! The SSE wire format of the contract, byte for byte: each event is
//! `id: <stream_id>:<seq>`, `event: <type>`, `data: <json>` and a blank line
//! (an event in no log, a reader's own closing event, has no `id:` line, so a
//! client's `Last-Event-ID` stays on the last logged event it got); a
//! response opens with a `retry:` hint; comments keep an idle connection alive.
//! Events that are ready together are framed into one buffer, so a burst costs
//! one write, not one per event.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};

use crate::ai::streaming::events::{LoggedEvent, StreamId};

pub const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";

/// The first bytes of every event stream.
pub fn preamble(retry: Duration) -> Bytes {
    Bytes::from(format!("retry: {}\n: connected\n\n", retry.as_millis()))
}

pub fn write_event(out: &mut BytesMut, stream_id: &StreamId, event: &LoggedEvent) {
    out.reserve(64 + 2 * stream_id.as_str().len() + event.fields.len());
    out.put_slice(b"id: ");
    out.put_slice(stream_id.as_str().as_bytes());
    out.put_u8(b':');
    out.put_slice(itoa::Buffer::new().format(event.seq).as_bytes());
    out.put_u8(b'\n');
    write_body(out, stream_id, event);
}

/// `event:` and `data:` lines and the blank line.
fn write_body(out: &mut BytesMut, stream_id: &StreamId, event: &LoggedEvent) {
    out.reserve(32 + stream_id.as_str().len() + event.fields.len());
    out.put_slice(b"event: ");
    out.put_slice(event.event_type.as_str().as_bytes());
    out.put_slice(b"\ndata: ");
    event.write_json(stream_id, out);
    out.put_slice(b"\n\n");
}

/// Events in no log, framed back to back without `id:` lines.
pub fn frames_without_id(stream_id: &StreamId, events: &[LoggedEvent]) -> Bytes {
    let mut out = BytesMut::new();
    for event in events {
        write_body(&mut out, stream_id, event);
    }
    out.freeze()
}

/// Events framed back to back.
pub fn frames(stream_id: &StreamId, events: &[LoggedEvent]) -> Bytes {
    let mut out = BytesMut::new();
    for event in events {
        write_event(&mut out, stream_id, event);
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ai::streaming::events::{CancelReason, EventBody};

    #[test]
    fn events_are_framed_as_the_contract_says() {
        let id = StreamId::parse("s1").unwrap();
        let cases: [(LoggedEvent, &str); 2] = [
            (
                LoggedEvent::new(0, &EventBody::Chunk { token: "line\nbreak".into() }),
                "id: s1:0\nevent: chunk\ndata: {\"stream_id\":\"s1\",\"seq\":0,\"type\":\"chunk\",\"token\":\"line\\nbreak\"}\n\n",
            ),
            (
                LoggedEvent::new(12, &EventBody::Cancelled { reason: CancelReason::Requested }),
                "id: s1:12\nevent: cancelled\ndata: {\"stream_id\":\"s1\",\"seq\":12,\"type\":\"cancelled\",\"reason\":\"requested\"}\n\n",
            ),
        ];
        for (event, expected) in &cases {
            assert_eq!(frames(&id, std::slice::from_ref(event)), expected.as_bytes());
        }
        let both: Vec<LoggedEvent> = cases.iter().map(|(e, _)| e.clone()).collect();
        assert_eq!(frames(&id, &both), format!("{}{}", cases[0].1, cases[1].1).as_bytes());
    }

    #[test]
    fn an_event_in_no_log_has_no_id_line() {
        let id = StreamId::parse("s1").unwrap();
        let lost = LoggedEvent::new(4, &EventBody::Cancelled { reason: CancelReason::Requested });
        assert_eq!(
            frames_without_id(&id, &[lost]),
            &b"event: cancelled\ndata: {\"stream_id\":\"s1\",\"seq\":4,\"type\":\"cancelled\",\"reason\":\"requested\"}\n\n"[..]
        );
    }

    #[test]
    fn a_stream_opens_with_the_retry_hint() {
        assert_eq!(preamble(Duration::from_millis(1500)), &b"retry: 1500\n: connected\n\n"[..]);
    }
}
