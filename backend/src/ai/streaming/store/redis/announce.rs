//! Appended events, announced to every process: after Redis confirmed an append,
//! the event itself goes out on the `<prefix>:events` channel, so a process
//! serving readers learns of it from one message and never asks Redis for it.
//! The append pipeline (`appends.rs`) publishes whatever is ready in one
//! `PUBLISH`, sent with its next `XADD`s, so the channel costs a command per
//! batch, not per event, and no round trip of its own.
//!
//! Only confirmed events are announced, each once, in the order of their appends,
//! so a reader never sees an event the log does not hold. Pub/sub may still drop
//! messages (a subscription reconnecting): readers notice the gap, or the silence,
//! and read the log itself (`tail.rs`).
//!
//! A message is a run of records: `id_len: u8, id, seq: u64 BE, type_len: u8,
//! type, fields_len: u32 BE, fields`.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::sync::mpsc;

use crate::ai::streaming::events::{EventRecord, EventType, LoggedEvent, StreamId};

/// Records joined into one message at most; more wait for the next `PUBLISH`.
pub const MESSAGE_LIMIT: usize = 256 * 1024;

/// Hands events confirmed outside the append pipeline (a log's first and
/// terminal events) to it, to be published in their order.
#[derive(Clone)]
pub struct Announcer {
    records: mpsc::UnboundedSender<Bytes>,
}

impl Announcer {
    /// The handle and the queue the append pipeline publishes from.
    pub fn new() -> (Self, mpsc::UnboundedReceiver<Bytes>) {
        let (records, ready) = mpsc::unbounded_channel();
        (Self { records }, ready)
    }

    /// Announces `record`, confirmed at `seq` of `id`'s log.
    pub fn announce(&self, id: &StreamId, seq: u64, record: &EventRecord) {
        let mut out = BytesMut::new();
        encode(&mut out, id, seq, record);
        let _ = self.records.send(out.freeze());
    }
}

pub fn encode(out: &mut BytesMut, id: &StreamId, seq: u64, record: &EventRecord) {
    let (id, event_type) = (id.as_str().as_bytes(), record.event_type.as_str().as_bytes());
    out.reserve(1 + id.len() + 8 + 1 + event_type.len() + 4 + record.fields.len());
    // Stream ids are at most 64 bytes (`StreamId::parse`), type names a few.
    out.put_u8(id.len() as u8);
    out.put_slice(id);
    out.put_u64(seq);
    out.put_u8(event_type.len() as u8);
    out.put_slice(event_type);
    out.put_u32(record.fields.len() as u32);
    out.put_slice(&record.fields);
}

/// The records of one message, as `(stream id, event)`; `None` at the first
/// malformed record (the rest of that message is skipped).
pub fn decode(message: Bytes) -> impl Iterator<Item = Option<(Bytes, LoggedEvent)>> {
    let mut rest = message;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let record = decode_one(&mut rest);
        if record.is_none() {
            rest.clear();
        }
        Some(record)
    })
}

fn decode_one(rest: &mut Bytes) -> Option<(Bytes, LoggedEvent)> {
    let id = take(rest, usize::from(*rest.first()?), 1)?;
    if rest.remaining() < 8 {
        return None;
    }
    let seq = rest.get_u64();
    let event_type = take(rest, usize::from(*rest.first()?), 1)?;
    let event_type = EventType::parse(std::str::from_utf8(&event_type).ok()?)?;
    if rest.remaining() < 4 {
        return None;
    }
    let len = rest.get_u32() as usize;
    let fields = take(rest, len, 0)?;
    Some((id, LoggedEvent { seq, event_type, fields }))
}

/// Skips `header` bytes, then takes `len`.
fn take(rest: &mut Bytes, len: usize, header: usize) -> Option<Bytes> {
    if rest.remaining() < header + len {
        return None;
    }
    rest.advance(header);
    Some(rest.split_to(len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ai::streaming::events::{CancelReason, EventBody};

    #[test]
    fn records_of_several_streams_come_back_as_they_went() {
        let (a, b) = (StreamId::parse("a1").unwrap(), StreamId::parse("b2").unwrap());
        let chunk = EventRecord::new(&EventBody::Chunk { token: "héllo \"x\"".into() });
        let complete = EventRecord::new(&EventBody::Cancelled { reason: CancelReason::Requested });
        let mut message = BytesMut::new();
        encode(&mut message, &a, 7, &chunk);
        encode(&mut message, &b, u64::MAX - 1, &complete);
        let records: Vec<_> = decode(message.freeze()).collect::<Option<_>>().unwrap();
        assert_eq!(&records[0].0[..], b"a1");
        assert_eq!(records[0].1, chunk.clone().at(7));
        assert_eq!(&records[1].0[..], b"b2");
        assert_eq!(records[1].1, complete.at(u64::MAX - 1));
    }

    #[test]
    fn a_truncated_or_garbled_message_ends_with_none() {
        let id = StreamId::parse("a1").unwrap();
        let mut message = BytesMut::new();
        encode(&mut message, &id, 1, &EventRecord::new(&EventBody::Chunk { token: "ok".into() }));
        let whole = message.freeze();
        for cut in 1..whole.len() {
            let records: Vec<_> = decode(whole.slice(..cut)).collect();
            assert_eq!(records, vec![None], "cut at {cut}");
        }
        let mut bad_type = whole.to_vec();
        bad_type[1 + 2 + 8 + 1] = b'X';
        assert_eq!(decode(Bytes::from(bad_type)).collect::<Vec<_>>(), vec![None]);
    }
}
