//! The event contract: what every stream emits, on both transports, as JSON.
//!
//! Mirrors `specs/050-live-ai-interaction/contracts/stream-schema.yaml`; the
//! integration tests validate every emitted event against that file. An event is
//! serialised once, when it is appended to the log (`EventRecord`); readers on
//! every transport wrap those bytes with the stream id and seq.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ai::blocks::BlockType;

/// A stream's id: opaque, URL-safe, unique per generation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(transparent)]
pub struct StreamId(Arc<str>);

impl StreamId {
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().simple().to_string().into())
    }

    /// Accepts only ids of the contract's shape, so a garbage id never reaches a store.
    pub fn parse(raw: &str) -> Option<Self> {
        let ok = !raw.is_empty() && raw.len() <= 64 && raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        ok.then(|| Self(raw.into()))
    }

    /// The id's text, shared: a clone counts a reference.
    pub fn shared(&self) -> Arc<str> {
        self.0.clone()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Lets a map keyed by stream ids be searched with an id's text (Redis's announcements).
impl std::borrow::Borrow<str> for StreamId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Error codes of `error` events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    ProviderUnavailable,
    RateLimited,
    ProviderError,
    Timeout,
    InvalidOutput,
    GenerationLost,
    StreamNotFound,
    BadRequest,
    /// The learner's input was flagged by moderation; never retryable as is.
    InputFlagged,
    /// The model's output was flagged by moderation.
    OutputFlagged,
    /// The moderator could not be asked (`MODERATION_FAIL_MODE=closed`).
    ModerationUnavailable,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ProviderUnavailable => "provider_unavailable",
            Self::RateLimited => "rate_limited",
            Self::ProviderError => "provider_error",
            Self::Timeout => "timeout",
            Self::InvalidOutput => "invalid_output",
            Self::GenerationLost => "generation_lost",
            Self::StreamNotFound => "stream_not_found",
            Self::BadRequest => "bad_request",
            Self::InputFlagged => "input_flagged",
            Self::OutputFlagged => "output_flagged",
            Self::ModerationUnavailable => "moderation_unavailable",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    Stop,
    Length,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelReason {
    /// A client asked for it (DELETE or a WebSocket `cancel`).
    Requested,
    /// No client was attached for the whole resume grace period.
    Abandoned,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

/// The typed payload of an event; `type` is the discriminant on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventBody {
    Start {
        block_type: BlockType,
        provider: String,
        model: String,
        /// This stream joined a generation already running for an identical
        /// request in its scope (coalescing); only written when true.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        shared: bool,
        /// This stream replays a finished answer to an identical request in its
        /// scope, without asking the model; only written when true.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        cached: bool,
    },
    Chunk {
        token: String,
    },
    Part {
        kind: PartKind,
        index: u32,
        data: Value,
    },
    Error {
        code: ErrorCode,
        message: String,
        retryable: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        raw_output: Option<String>,
        /// `input_flagged` / `output_flagged`: the moderation categories.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        categories: Option<Vec<String>>,
        /// The stream's text and parts were shown and must be removed: the log
        /// keeps only `start` and this event (async moderation).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        retract: bool,
    },
    Complete {
        finish_reason: FinishReason,
        usage: Usage,
        result: Value,
        ttft_ms: u64,
        duration_ms: u64,
    },
    Cancelled {
        reason: CancelReason,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartKind {
    QuizQuestion,
}

impl EventBody {
    pub fn event_type(&self) -> EventType {
        match self {
            Self::Start { .. } => EventType::Start,
            Self::Chunk { .. } => EventType::Chunk,
            Self::Part { .. } => EventType::Part,
            Self::Error { .. } => EventType::Error,
            Self::Complete { .. } => EventType::Complete,
            Self::Cancelled { .. } => EventType::Cancelled,
        }
    }

    pub fn error(code: ErrorCode, message: impl Into<String>, retryable: bool) -> Self {
        Self::Error { code, message: message.into(), retryable, retry_after_ms: None, raw_output: None, categories: None, retract: false }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Start,
    Chunk,
    Part,
    Error,
    Complete,
    Cancelled,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Chunk => "chunk",
            Self::Part => "part",
            Self::Error => "error",
            Self::Complete => "complete",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Some(match raw {
            "start" => Self::Start,
            "chunk" => Self::Chunk,
            "part" => Self::Part,
            "error" => Self::Error,
            "complete" => Self::Complete,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Error | Self::Complete | Self::Cancelled)
    }
}

/// The wire form of an event: `{type, stream_id, seq, ...body}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    pub stream_id: StreamId,
    pub seq: u64,
    #[serde(flatten)]
    pub body: EventBody,
}

/// An event as a log holds it: serialised once, without its stream id and seq
/// (the log knows both), so a store can put it at whatever seq is next and every
/// reader renders the same bytes around it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    pub event_type: EventType,
    /// The JSON members of the body after `type`, e.g. `"token":"hi"`.
    pub fields: Bytes,
}

impl EventRecord {
    pub fn new(body: &EventBody) -> Self {
        // Serialising plain data (strings, numbers, serde_json::Value) cannot fail.
        let json = serde_json::to_vec(body).expect("events serialise to JSON");
        let event_type = body.event_type();
        // `{"type":"<type>",` … `}`: every body has members after its tag.
        let from = r#"{"type":""#.len() + event_type.as_str().len() + r#"","#.len();
        let fields = Bytes::from(json).slice(from..);
        Self { event_type, fields: fields.slice(..fields.len() - 1) }
    }

    /// The record of an event read from a log, to put it in another log
    /// (coalescing's relay): the same bytes, at the other log's seq.
    pub fn of(event: &LoggedEvent) -> Self {
        Self { event_type: event.event_type, fields: event.fields.clone() }
    }

    pub fn at(self, seq: u64) -> LoggedEvent {
        LoggedEvent { seq, event_type: self.event_type, fields: self.fields }
    }

    pub fn is_terminal(&self) -> bool {
        self.event_type.is_terminal()
    }

    /// Whether this is a terminal event that retracts its stream: the log keeps
    /// only its first event (`start`) and this one. Read from the serialised
    /// members, once per stream (only terminal events are asked).
    pub fn retracts(&self) -> bool {
        retracts(self.event_type, &self.fields)
    }
}

fn retracts(event_type: EventType, fields: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(default)]
        retract: bool,
    }
    if event_type != EventType::Error {
        return false;
    }
    let mut json = Vec::with_capacity(fields.len() + 2);
    json.push(b'{');
    json.extend_from_slice(fields);
    json.push(b'}');
    serde_json::from_slice::<Probe>(&json).is_ok_and(|probe| probe.retract)
}

/// An event of a log, at its seq.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedEvent {
    pub seq: u64,
    pub event_type: EventType,
    /// See [`EventRecord::fields`].
    pub fields: Bytes,
}

impl LoggedEvent {
    pub fn new(seq: u64, body: &EventBody) -> Self {
        EventRecord::new(body).at(seq)
    }

    pub fn is_terminal(&self) -> bool {
        self.event_type.is_terminal()
    }

    /// See [`EventRecord::retracts`].
    pub fn retracts(&self) -> bool {
        retracts(self.event_type, &self.fields)
    }

    /// The typed event, read back from its bytes (`None` if they are not one,
    /// which a log written by this server never holds).
    pub fn body(&self) -> Option<EventBody> {
        let mut json = Vec::with_capacity(self.fields.len() + 32);
        json.extend_from_slice(br#"{"type":""#);
        json.extend_from_slice(self.event_type.as_str().as_bytes());
        json.extend_from_slice(b"\",");
        json.extend_from_slice(&self.fields);
        json.push(b'}');
        serde_json::from_slice(&json).ok()
    }

    /// Appends the event's JSON, `{"stream_id":…,"seq":…,"type":…,…}`, to `out`.
    pub fn write_json(&self, stream_id: &StreamId, out: &mut BytesMut) {
        out.reserve(48 + stream_id.as_str().len() + self.fields.len());
        out.extend_from_slice(br#"{"stream_id":""#);
        out.extend_from_slice(stream_id.as_str().as_bytes());
        out.extend_from_slice(br#"","seq":"#);
        out.extend_from_slice(itoa::Buffer::new().format(self.seq).as_bytes());
        out.extend_from_slice(br#","type":""#);
        out.extend_from_slice(self.event_type.as_str().as_bytes());
        out.extend_from_slice(b"\",");
        out.extend_from_slice(&self.fields);
        out.extend_from_slice(b"}");
    }

    pub fn json(&self, stream_id: &StreamId) -> Bytes {
        let mut out = BytesMut::new();
        self.write_json(stream_id, &mut out);
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_serialises_with_type_stream_id_and_seq_at_the_top_level() {
        let id = StreamId::parse("abc").unwrap();
        let logged = LoggedEvent::new(3, &EventBody::Chunk { token: "hi".into() });
        assert_eq!(logged.json(&id), r#"{"stream_id":"abc","seq":3,"type":"chunk","token":"hi"}"#);
        assert_eq!(logged.event_type, EventType::Chunk);
        assert!(!logged.is_terminal());
    }

    #[test]
    fn a_record_rendered_at_a_seq_is_the_serialised_event() {
        let id = StreamId::parse("s-1").unwrap();
        let bodies = [
            EventBody::Start {
                block_type: BlockType::Quiz,
                provider: "demo".into(),
                model: "demo-model".into(),
                shared: false,
                cached: false,
            },
            EventBody::Start {
                block_type: BlockType::Quiz,
                provider: "demo".into(),
                model: "demo-model".into(),
                shared: true,
                cached: true,
            },
            EventBody::Chunk { token: "a \"quoted\" token\n".into() },
            EventBody::Part { kind: PartKind::QuizQuestion, index: 0, data: serde_json::json!({"question": "Why?"}) },
            EventBody::error(ErrorCode::GenerationLost, "lost", true),
            EventBody::Complete {
                finish_reason: FinishReason::Stop,
                usage: Usage::default(),
                result: serde_json::json!({"markdown": "hi"}),
                ttft_ms: 1,
                duration_ms: 2,
            },
            EventBody::Cancelled { reason: CancelReason::Abandoned },
        ];
        for (seq, body) in bodies.into_iter().enumerate() {
            let seq = seq as u64 + u64::from(u32::MAX);
            let expected = serde_json::to_string(&Event { stream_id: id.clone(), seq, body: body.clone() }).unwrap();
            let logged = LoggedEvent::new(seq, &body);
            assert_eq!(logged.json(&id), expected.as_bytes());
            assert_eq!(logged.body(), Some(body), "read back from its bytes");
        }
    }

    #[test]
    fn a_start_says_shared_or_cached_only_when_it_is() {
        let id = StreamId::parse("abc").unwrap();
        let start =
            |shared, cached| EventBody::Start { block_type: BlockType::Quiz, provider: "demo".into(), model: "m".into(), shared, cached };
        let plain = LoggedEvent::new(0, &start(false, false)).json(&id);
        assert_eq!(plain, r#"{"stream_id":"abc","seq":0,"type":"start","block_type":"quiz","provider":"demo","model":"m"}"#);
        let shared = LoggedEvent::new(0, &start(true, false)).json(&id);
        assert_eq!(shared, r#"{"stream_id":"abc","seq":0,"type":"start","block_type":"quiz","provider":"demo","model":"m","shared":true}"#);
    }

    #[test]
    fn optional_error_fields_are_omitted_when_absent() {
        let id = StreamId::parse("abc").unwrap();
        let body = EventBody::error(ErrorCode::Timeout, "stalled", true);
        let logged = LoggedEvent::new(0, &body);
        assert_eq!(logged.json(&id), r#"{"stream_id":"abc","seq":0,"type":"error","code":"timeout","message":"stalled","retryable":true}"#);
        assert!(logged.is_terminal());
    }

    #[test]
    fn stream_ids_outside_the_contract_shape_are_rejected() {
        for bad in ["", "a b", "../x", "a:1", &"x".repeat(65)] {
            assert!(StreamId::parse(bad).is_none(), "{bad:?}");
        }
        assert!(StreamId::parse("A-z_09").is_some());
    }
}
