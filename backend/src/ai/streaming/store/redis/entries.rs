//! Log entries as Redis returns them (`XRANGE`, `XREVRANGE`), read
//! straight from the reply: the event's JSON members are taken as they come,
//! without a map per entry.

use bytes::Bytes;
use redis::Value;

use super::keys::entry_seq;
use crate::ai::streaming::events::{EventType, LoggedEvent};

/// The events of a range reply: `[[id, [field, value, …]], …]`.
pub fn events_of(reply: Value) -> Option<Vec<LoggedEvent>> {
    match reply {
        Value::Nil => Some(Vec::new()),
        Value::Array(entries) => entries.into_iter().map(event_of).collect(),
        _ => None,
    }
}

fn event_of(entry: Value) -> Option<LoggedEvent> {
    let Value::Array(entry) = entry else { return None };
    let mut entry = entry.into_iter();
    let seq = entry_seq(&bytes_of(entry.next()?)?)?;
    let Value::Array(fields) = entry.next()? else { return None };
    let (mut event_type, mut json) = (None, None);
    let mut fields = fields.into_iter();
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        match &bytes_of(name)?[..] {
            b"t" => event_type = EventType::parse(std::str::from_utf8(&bytes_of(value)?).ok()?),
            b"j" => json = Some(bytes_of(value)?),
            _ => {}
        }
    }
    Some(LoggedEvent { seq, event_type: event_type?, fields: json? })
}

fn bytes_of(value: Value) -> Option<Bytes> {
    match value {
        Value::BulkString(bytes) => Some(Bytes::from(bytes)),
        Value::SimpleString(text) => Some(Bytes::from(text)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    fn entry(id: &str, t: &str, j: &str) -> Value {
        Value::Array(vec![bulk(id), Value::Array(vec![bulk("t"), bulk(t), bulk("j"), bulk(j)])])
    }

    #[test]
    fn range_replies_become_events_at_their_seq() {
        let reply = Value::Array(vec![entry("3-1", "chunk", r#""token":"a""#), entry("4-1", "cancelled", r#""reason":"requested""#)]);
        let events = events_of(reply).unwrap();
        assert_eq!(events.iter().map(|e| (e.seq, e.event_type)).collect::<Vec<_>>(), [(3, EventType::Chunk), (4, EventType::Cancelled)]);
        assert_eq!(&events[0].fields[..], br#""token":"a""#);
    }

    #[test]
    fn malformed_entries_are_refused() {
        assert!(events_of(Value::Array(vec![entry("x-1", "chunk", "")])).is_none());
        assert!(events_of(Value::Array(vec![entry("1-1", "nonsense", "")])).is_none());
        assert!(events_of(Value::Int(3)).is_none());
    }
}
