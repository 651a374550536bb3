//! The event contract: what every stream emits, on both transports, as JSON.
//!
//! Mirrors `specs/050-live-ai-interaction/contracts/stream-schema.yaml`; the
//! integration tests validate every emitted event against that file. An event is
//! serialised once, when it is appended to the log (`LoggedEvent`), and that JSON is
//! what every reader on every transport sends.

use std::sync::Arc;

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

    pub fn as_str(&self) -> &str {
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
        Self::Error { code, message: message.into(), retryable, retry_after_ms: None, raw_output: None }
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

/// An event as stored in a log and sent to readers: serialised once.
#[derive(Debug, Clone)]
pub struct LoggedEvent {
    pub seq: u64,
    pub event_type: EventType,
    pub json: Arc<str>,
    /// When it was made, for the delivery-latency metric.
    pub created: std::time::Instant,
}

impl LoggedEvent {
    pub fn new(stream_id: &StreamId, seq: u64, body: EventBody) -> Self {
        let event_type = body.event_type();
        let event = Event { stream_id: stream_id.clone(), seq, body };
        // Serialising plain data (strings, numbers, serde_json::Value) cannot fail.
        let json = serde_json::to_string(&event).expect("events serialise to JSON");
        Self { seq, event_type, json: json.into(), created: std::time::Instant::now() }
    }

    pub fn is_terminal(&self) -> bool {
        self.event_type.is_terminal()
    }

    /// Bytes this event holds in a log, for the retention bound.
    pub fn size(&self) -> usize {
        self.json.len() + std::mem::size_of::<Self>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_serialises_with_type_stream_id_and_seq_at_the_top_level() {
        let id = StreamId::parse("abc").unwrap();
        let logged = LoggedEvent::new(&id, 3, EventBody::Chunk { token: "hi".into() });
        assert_eq!(&*logged.json, r#"{"stream_id":"abc","seq":3,"type":"chunk","token":"hi"}"#);
        assert_eq!(logged.event_type, EventType::Chunk);
        assert!(!logged.is_terminal());
    }

    #[test]
    fn optional_error_fields_are_omitted_when_absent() {
        let id = StreamId::parse("abc").unwrap();
        let body = EventBody::error(ErrorCode::Timeout, "stalled", true);
        let logged = LoggedEvent::new(&id, 0, body);
        assert_eq!(&*logged.json, r#"{"stream_id":"abc","seq":0,"type":"error","code":"timeout","message":"stalled","retryable":true}"#);
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
