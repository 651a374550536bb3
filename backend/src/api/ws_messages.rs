//! The WebSocket's wire shapes: the client messages (`auth`, `start`, `resume`,
//! `cancel`, `detach`) decoded strictly (unknown types and fields are refused),
//! the `protocol_error` answer, and stream events as text frames.

use axum::extract::ws::{Message, Utf8Bytes};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::ai::streaming::events::{LoggedEvent, StreamId};

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// The socket's credential: first (when the upgrade carried none), or at any
    /// time later to refresh it or to switch principal.
    Auth {
        token: String,
    },
    Start {
        block_type: String,
        input: Map<String, Value>,
        #[serde(rename = "ref")]
        reference: Option<String>,
        /// Always generate anew (coalescing joins and replays nothing).
        fresh: Option<bool>,
    },
    Resume {
        stream_id: String,
        after: Option<u64>,
    },
    Cancel {
        stream_id: String,
    },
    /// Stop delivering this stream on this socket; its generation goes on.
    Detach {
        stream_id: String,
    },
}

/// Decodes one client text message.
pub fn decode(text: &str) -> Result<ClientMessage, String> {
    serde_json::from_str::<ClientMessage>(text).map_err(|error| format!("not a valid client message: {error}"))
}

/// An answer to a client message that could not be acted on; not part of any stream.
#[derive(Debug, Serialize)]
pub struct ProtocolError {
    #[serde(rename = "type")]
    /// Always `protocol_error`.
    pub kind: &'static str,
    pub code: &'static str,
    pub message: String,
    pub retryable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl ProtocolError {
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self { code: "unauthorized", retryable: true, ..Self::bad_request(message) }
    }

    pub fn unavailable() -> Self {
        Self { code: "store_unavailable", retryable: true, ..Self::bad_request("the server's store is unavailable; try again shortly") }
    }

    pub fn socket_full(limit: usize) -> Self {
        Self {
            code: "rate_limited",
            retryable: true,
            retry_after_ms: Some(1000),
            ..Self::bad_request(format!("this socket already reads {limit} live streams (LIMIT_STREAMS_PER_SOCKET); wait for one to end"))
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            kind: "protocol_error",
            code: "bad_request",
            message: message.into(),
            retryable: false,
            field: None,
            reference: None,
            stream_id: None,
            retry_after_ms: None,
        }
    }

    /// A `stream_id` that is not one.
    pub fn bad_stream_id() -> Self {
        Self { field: Some("stream_id".into()), ..Self::bad_request("stream_id is not a stream id") }
    }

    pub fn to_message(&self) -> Message {
        Message::Text(serde_json::to_string(self).expect("plain data serialises").into())
    }
}

/// An event as a text message.
pub fn text(event: &LoggedEvent, stream_id: &StreamId) -> Message {
    Message::Text(Utf8Bytes::try_from(event.json(stream_id)).expect("events are JSON, so UTF-8"))
}

/// The `start` event with the client's `ref` added: done once per stream.
pub fn with_ref(event: &LoggedEvent, stream_id: &StreamId, reference: &str) -> Message {
    let mut value: Value = serde_json::from_slice(&event.json(stream_id)).expect("logged events are JSON");
    value["ref"] = Value::String(reference.to_owned());
    Message::Text(value.to_string().into())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    /// JSON shaped like client messages, right and wrong: known and unknown types
    /// and fields, values of every JSON type.
    fn message() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            "\\PC{0,16}".prop_map(Value::String),
        ];
        let value = leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                prop::collection::btree_map("[a-z_]{1,8}", inner, 0..3).prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        });
        let kind = prop::sample::select(vec!["auth", "start", "resume", "cancel", "detach", "dance", ""]);
        let name = prop::sample::select(vec!["token", "block_type", "input", "ref", "fresh", "stream_id", "after", "extra"]);
        (kind, prop::collection::btree_map(name, value, 0..4)).prop_map(|(kind, fields)| {
            let mut object: serde_json::Map<String, Value> = fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            object.insert("type".into(), json!(kind));
            Value::Object(object)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn any_text_frame_decodes_or_is_refused_without_panicking(text in "\\PC{0,200}") {
            let _ = decode(&text);
        }

        /// A message decodes exactly when it is one of the contract's client
        /// messages, with only its own fields.
        #[test]
        fn messages_decode_exactly_when_they_have_a_client_message_shape(message in message()) {
            let fields: Vec<&str> = message.as_object().unwrap().keys().map(String::as_str).filter(|k| *k != "type").collect();
            let has = |allowed: &[&str], required: &[&str]| {
                fields.iter().all(|f| allowed.contains(f)) && required.iter().all(|r| fields.contains(r))
            };
            let is = |key: &str, check: fn(&Value) -> bool| message.get(key).is_none_or(check);
            let expected = match message["type"].as_str().unwrap() {
                "auth" => has(&["token"], &["token"]) && is("token", Value::is_string),
                "start" => has(&["block_type", "input", "ref", "fresh"], &["block_type", "input"])
                    && is("block_type", Value::is_string)
                    && is("input", Value::is_object)
                    && is("ref", |v| v.is_string() || v.is_null())
                    && is("fresh", |v| v.is_boolean() || v.is_null()),
                "resume" => has(&["stream_id", "after"], &["stream_id"])
                    && is("stream_id", Value::is_string)
                    && is("after", |v| v.is_u64() || v.is_null()),
                "cancel" | "detach" => has(&["stream_id"], &["stream_id"]) && is("stream_id", Value::is_string),
                _ => false,
            };
            prop_assert_eq!(decode(&message.to_string()).is_ok(), expected, "{}", message);
        }
    }

    #[test]
    fn detach_and_a_later_auth_decode_to_their_messages() {
        assert!(matches!(decode(r#"{"type":"detach","stream_id":"s1"}"#), Ok(ClientMessage::Detach { stream_id }) if stream_id == "s1"));
        assert!(matches!(decode(r#"{"type":"auth","token":"t"}"#), Ok(ClientMessage::Auth { token }) if token == "t"));
        assert!(decode(r#"{"type":"detach"}"#).is_err());
    }
}
