//! Appended events, announced to the processes that serve their readers: after
//! Redis confirmed an append, the event itself goes out on the channel of each
//! other process following its stream (`routes.rs` says which; this process's
//! own mirror takes it in place), so such a process
//! learns of it from one message and never asks Redis for it, and a process
//! without readers of the stream hears nothing of it. The append pipeline
//! (`appends.rs`) publishes whatever is ready for a process in one `PUBLISH`,
//! sent with its next `XADD`s, so announcing costs a command per batch and
//! following process, not per event, and no round trip of its own.
//!
//! Only confirmed events are announced, each once to each follower, in the
//! order of their appends, so a reader never sees an event the log does not
//! hold. Pub/sub may still drop messages (a subscription reconnecting): readers
//! notice the gap, or the silence, and read the log itself (`tail.rs`).
//!
//! A message is a run of records: `id_len: u8, id, seq: u64 BE, type_len: u8,
//! type, fields_len: u32 BE, fields`. A record of type `+nudge` (no event type
//! starts with `+`) tells a follower to read the stream's log now: its
//! generator has just learnt of it, and events confirmed before then were
//! announced to others only.

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::sync::mpsc;

use super::routes::Routes;
use super::wire;
use crate::ai::streaming::events::{EventRecord, EventType, LoggedEvent, StreamId};

/// Records joined into one round of messages at most; more wait for the next.
pub const MESSAGE_LIMIT: usize = 256 * 1024;

const NUDGE: &[u8] = b"+nudge";

/// A record for the channels of `to`.
pub struct Outgoing {
    pub to: Vec<Arc<str>>,
    pub record: Bytes,
}

/// Hands records confirmed outside the append pipeline (a log's first and
/// terminal events) and nudges to it, to be published in their order.
#[derive(Clone)]
pub struct Announcer {
    routes: Arc<Routes>,
    records: mpsc::UnboundedSender<Outgoing>,
}

impl Announcer {
    /// The handle and the queue the append pipeline publishes from.
    pub fn new(routes: Arc<Routes>) -> (Self, mpsc::UnboundedReceiver<Outgoing>) {
        let (records, ready) = mpsc::unbounded_channel();
        (Self { routes, records }, ready)
    }

    /// Announces `record`, confirmed at `seq` of `id`'s log, to the processes
    /// following `id` now: this one's mirror takes it at once (`routes.rs`).
    pub fn announce(&self, id: &StreamId, seq: u64, record: &EventRecord) {
        if self.routes.is_followed_here(id) {
            self.routes.deliver_here(vec![(id.clone(), record.clone().at(seq))]);
        }
        let to = self.routes.readers_of(id);
        if to.is_empty() {
            return;
        }
        let mut out = BytesMut::new();
        encode(&mut out, id, seq, record);
        let _ = self.records.send(Outgoing { to, record: out.freeze() });
    }

    /// Tells the process of `channel` to read `id`'s log now.
    pub fn nudge(&self, channel: Arc<str>, id: &StreamId) {
        let mut out = BytesMut::new();
        encode_record(&mut out, id, 0, NUDGE, &[]);
        let _ = self.records.send(Outgoing { to: vec![channel], record: out.freeze() });
    }
}

/// Announcements waiting to go out, per channel, each channel's in order.
#[derive(Default)]
pub struct Outbox {
    waiting: Vec<Waiting>,
    bytes: usize,
}

/// One channel's message.
struct Waiting {
    channel: Arc<str>,
    records: BytesMut,
    /// Rounds of `publish_into` it has had nothing in.
    idle: u32,
}

/// Rounds a channel's buffer is kept with nothing in it before it is dropped.
const IDLE_ROUNDS: u32 = 64;

impl Outbox {
    pub fn push(&mut self, to: &Arc<str>, record: &[u8]) {
        let at = self.slot(to);
        self.waiting[at].records.extend_from_slice(record);
        self.bytes += record.len();
    }

    /// `record`, confirmed at `seq` of `id`'s log, for each channel of `to`:
    /// encoded once, straight into the first one's message.
    pub fn push_event(&mut self, to: &[Arc<str>], id: &StreamId, seq: u64, record: &EventRecord) {
        let Some((first, rest)) = to.split_first() else { return };
        let at = self.slot(first);
        let start = self.waiting[at].records.len();
        encode(&mut self.waiting[at].records, id, seq, record);
        let len = self.waiting[at].records.len() - start;
        self.bytes += len;
        for channel in rest {
            let other = self.slot(channel);
            let (from, into) = if other < at {
                let (head, tail) = self.waiting.split_at_mut(at);
                (&tail[0].records, &mut head[other].records)
            } else {
                let (head, tail) = self.waiting.split_at_mut(other);
                (&head[at].records, &mut tail[0].records)
            };
            into.extend_from_slice(&from[start..start + len]);
            self.bytes += len;
        }
    }

    /// The index of `to`'s message, made if it has none yet.
    fn slot(&mut self, to: &Arc<str>) -> usize {
        // The routes hand out one `Arc` per channel: mostly no string compare.
        match self.waiting.iter().position(|waiting| Arc::ptr_eq(&waiting.channel, to) || waiting.channel == *to) {
            Some(at) => at,
            None => {
                self.waiting.push(Waiting { channel: to.clone(), records: BytesMut::new(), idle: 0 });
                self.waiting.len() - 1
            }
        }
    }

    pub fn push_outgoing(&mut self, outgoing: &Outgoing) {
        for to in &outgoing.to {
            self.push(to, &outgoing.record);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// Bytes waiting, over every channel.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Writes one `PUBLISH` per channel with records waiting to `out`, and
    /// empties the box but keeps its buffers, so the next rounds' messages
    /// grow into room already there (a channel's is dropped once it has had
    /// nothing for `IDLE_ROUNDS`). Returns how many `PUBLISH`es it wrote.
    pub fn publish_into(&mut self, out: &mut BytesMut) -> usize {
        self.waiting.retain(|waiting| !waiting.records.is_empty() || waiting.idle < IDLE_ROUNDS);
        let mut published = 0;
        for waiting in &mut self.waiting {
            if waiting.records.is_empty() {
                waiting.idle += 1;
                continue;
            }
            wire::command(out, &[b"PUBLISH", waiting.channel.as_bytes(), &waiting.records]);
            waiting.records.clear();
            waiting.idle = 0;
            published += 1;
        }
        self.bytes = 0;
        published
    }

    /// One message per channel, and empties the box.
    pub fn take(&mut self) -> Vec<(Arc<str>, Bytes)> {
        self.bytes = 0;
        self.waiting
            .drain(..)
            .filter(|waiting| !waiting.records.is_empty())
            .map(|waiting| (waiting.channel, waiting.records.freeze()))
            .collect()
    }
}

pub fn encode(out: &mut BytesMut, id: &StreamId, seq: u64, record: &EventRecord) {
    encode_record(out, id, seq, record.event_type.as_str().as_bytes(), &record.fields);
}

fn encode_record(out: &mut BytesMut, id: &StreamId, seq: u64, kind: &[u8], fields: &[u8]) {
    let id = id.as_str().as_bytes();
    out.reserve(1 + id.len() + 8 + 1 + kind.len() + 4 + fields.len());
    // Stream ids are at most 64 bytes (`StreamId::parse`), type names a few.
    out.put_u8(id.len() as u8);
    out.put_slice(id);
    out.put_u64(seq);
    out.put_u8(kind.len() as u8);
    out.put_slice(kind);
    out.put_u32(fields.len() as u32);
    out.put_slice(fields);
}

/// One record of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// An event of the stream of that id.
    Event(Bytes, LoggedEvent),
    /// Read the log of the stream of that id.
    Nudge(Bytes),
}

/// The records of one message; `None` at the first malformed record (the rest
/// of that message is skipped).
pub fn decode(message: Bytes) -> impl Iterator<Item = Option<Record>> {
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

fn decode_one(rest: &mut Bytes) -> Option<Record> {
    let id = take(rest, usize::from(*rest.first()?), 1)?;
    if rest.remaining() < 8 {
        return None;
    }
    let seq = rest.get_u64();
    let kind = take(rest, usize::from(*rest.first()?), 1)?;
    if rest.remaining() < 4 {
        return None;
    }
    let len = rest.get_u32() as usize;
    let fields = take(rest, len, 0)?;
    if &kind[..] == NUDGE {
        return Some(Record::Nudge(id));
    }
    let event_type = EventType::parse(std::str::from_utf8(&kind).ok()?)?;
    Some(Record::Event(id, LoggedEvent { seq, event_type, fields }))
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
        encode_record(&mut message, &a, 0, NUDGE, &[]);
        let records: Vec<_> = decode(message.freeze()).collect::<Option<_>>().unwrap();
        assert_eq!(
            records,
            [
                Record::Event(Bytes::from_static(b"a1"), chunk.at(7)),
                Record::Event(Bytes::from_static(b"b2"), complete.at(u64::MAX - 1)),
                Record::Nudge(Bytes::from_static(b"a1")),
            ]
        );
    }

    #[test]
    fn an_outbox_keeps_one_message_per_channel_in_order() {
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let mut outbox = Outbox::default();
        outbox.push(&a, b"1");
        outbox.push(&b, b"2");
        outbox.push(&a, b"3");
        assert_eq!(outbox.bytes(), 3);
        assert_eq!(outbox.take(), [(a, Bytes::from_static(b"13")), (b, Bytes::from_static(b"2"))]);
        assert!(outbox.is_empty());
    }

    #[test]
    fn publishing_writes_one_command_per_channel_with_records_and_keeps_the_buffers_a_while() {
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let mut outbox = Outbox::default();
        outbox.push(&a, b"1");
        outbox.push(&b, b"2");
        let mut out = BytesMut::new();
        assert_eq!(outbox.publish_into(&mut out), 2);
        assert_eq!(&out[..], b"*3\r\n$7\r\nPUBLISH\r\n$1\r\na\r\n$1\r\n1\r\n*3\r\n$7\r\nPUBLISH\r\n$1\r\nb\r\n$1\r\n2\r\n");
        assert!(outbox.is_empty());
        outbox.push(&b, b"3");
        out.clear();
        assert_eq!(outbox.publish_into(&mut out), 1, "nothing for a");
        assert_eq!(&out[..], b"*3\r\n$7\r\nPUBLISH\r\n$1\r\nb\r\n$1\r\n3\r\n");
        assert_eq!(outbox.waiting.len(), 2, "a's buffer kept");
        for _ in 0..=IDLE_ROUNDS {
            outbox.publish_into(&mut BytesMut::new());
        }
        assert!(outbox.waiting.is_empty(), "dropped once idle");
    }

    #[test]
    fn an_event_pushed_for_several_channels_is_the_same_record_in_each_message() {
        let (a, b, c): (Arc<str>, Arc<str>, Arc<str>) = ("a".into(), "b".into(), "c".into());
        let id = StreamId::parse("s1").unwrap();
        let chunk = EventRecord::new(&EventBody::Chunk { token: "hi".into() });
        let mut one = BytesMut::new();
        encode(&mut one, &id, 3, &chunk);
        let mut outbox = Outbox::default();
        outbox.push(&b, b"x");
        outbox.push_event(&[c.clone(), b.clone(), a.clone()], &id, 3, &chunk);
        assert_eq!(outbox.bytes(), 1 + 3 * one.len());
        let mut then_x = b"x".to_vec();
        then_x.extend_from_slice(&one);
        assert_eq!(
            outbox.take(),
            [(b, Bytes::from(then_x)), (c, one.clone().freeze()), (a, one.freeze())],
            "each channel's message in order, the record once in each"
        );
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
