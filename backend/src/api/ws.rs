//! The WebSocket transport: one socket multiplexes many streams.
//!
//! A receive loop reads client messages (`start`, `resume`, `cancel`); each stream
//! being read gets a reader task that forwards log events into one bounded outbox;
//! a send task writes the outbox to the socket with a send timeout. A malformed
//! message gets a `ProtocolError` frame and changes nothing else. A client that
//! stops reading is disconnected after the timeout; its streams keep running for
//! the resume grace period like any other disconnect. An idle socket gets a
//! `keep_alive` message every `SSE_KEEPALIVE_SECONDS`.
//!
//! Trust: the upgrade is refused cross-site (`Origin`), and a socket acts for one
//! principal — from the upgrade's `Authorization` header, or (browsers cannot set
//! headers on a WebSocket) from a first message `{"type":"auth","token":…}` sent
//! within [`AUTH_WAIT`]; a bad or missing one gets a `protocol_error`
//! `unauthorized` and close code 1008. Successful auth is not answered. Starts
//! are admitted by the principal's limits, and one socket reads at most
//! `LIMIT_STREAMS_PER_SOCKET` live streams. Frames over
//! [`MAX_CLIENT_MESSAGE_BYTES`] are refused by the WebSocket layer before they
//! are buffered (close code 1009); the socket's generations live on and resume
//! on a new socket. A socket with no live stream and no client message for
//! `WS_IDLE_TIMEOUT_SECONDS` is closed (1000).

use std::collections::HashMap;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{close_code, CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::error::ApiError;
use super::origin::SameSiteStart;
use super::AppState;
use crate::ai::blocks::{BlockInput, BlockType};
use crate::ai::streaming::events::{ErrorCode, EventBody, EventType, LoggedEvent, StreamId};
use crate::ai::streaming::stream_manager::{ManagerError, Opened};
use crate::auth::principal::{SocketAuth, SocketPrincipal};
use crate::auth::Principal;
use crate::config::settings::AuthMode;
use crate::limits::LimitError;

/// Largest client frame or message; the WebSocket layer refuses bigger ones.
pub const MAX_CLIENT_MESSAGE_BYTES: usize = 32 * 1024;
/// How long a socket may wait before authenticating.
pub const AUTH_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// Sent when the socket has been idle for the keep-alive interval.
const KEEP_ALIVE: &str = r#"{"type":"keep_alive"}"#;
/// Messages queued for the socket before readers wait.
const OUTBOX: usize = 256;
/// How long the Close handshake may take once the socket is closing.
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

pub fn router() -> Router<AppState> {
    Router::new().route("/api/stream/ws", get(upgrade))
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    Auth {
        token: String,
    },
    Start {
        block_type: String,
        input: Map<String, Value>,
        #[serde(rename = "ref")]
        reference: Option<String>,
    },
    Resume {
        stream_id: String,
        after: Option<u64>,
    },
    Cancel {
        stream_id: String,
    },
}

/// An answer to a client message that could not be acted on; not part of any stream.
#[derive(Debug, Serialize)]
struct ProtocolError {
    #[serde(rename = "type")]
    kind: &'static str,
    code: &'static str,
    message: String,
    retryable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<String>,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    reference: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_ms: Option<u64>,
}

impl ProtocolError {
    fn unauthorized(message: impl Into<String>) -> Self {
        Self { code: "unauthorized", retryable: true, ..Self::bad_request(message) }
    }

    fn unavailable() -> Self {
        Self { code: "store_unavailable", retryable: true, ..Self::bad_request("the server's store is unavailable; try again shortly") }
    }

    fn socket_full(limit: usize) -> Self {
        Self {
            code: "rate_limited",
            retryable: true,
            retry_after_ms: Some(1000),
            ..Self::bad_request(format!("this socket already reads {limit} live streams (LIMIT_STREAMS_PER_SOCKET); wait for one to end"))
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
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

    fn to_message(&self) -> Message {
        Message::Text(serde_json::to_string(self).expect("plain data serialises").into())
    }
}

/// Decodes one client text message.
pub fn decode(text: &str) -> Result<ClientMessage, String> {
    serde_json::from_str::<ClientMessage>(text).map_err(|error| format!("not a valid client message: {error}"))
}

#[utoipa::path(
    get, path = "/api/stream/ws",
    description = "Upgrades to a WebSocket multiplexing many streams; messages as in the AsyncAPI contract. Authenticate with the upgrade's `Authorization` header or a first message `{\"type\":\"auth\",\"token\":…}`.",
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, body = super::error::Problem, content_type = "application/problem+json", description = "Not a WebSocket upgrade request"),
        (status = 401, body = super::error::Problem, content_type = "application/problem+json", description = "The upgrade's Authorization header was refused"),
        (status = 403, body = super::error::Problem, content_type = "application/problem+json", description = "The upgrade comes from another site"),
        (status = 426, body = super::error::Problem, content_type = "application/problem+json", description = "The connection cannot be upgraded"),
        (status = 503, body = super::error::Problem, content_type = "application/problem+json", description = "Streaming is disabled"),
    )
)]
pub async fn upgrade(
    _: SameSiteStart,
    State(state): State<AppState>,
    SocketPrincipal(principal): SocketPrincipal,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    if !state.settings.streaming_enabled {
        return Err(ApiError::StreamingDisabled);
    }
    let ws = ws?.max_message_size(MAX_CLIENT_MESSAGE_BYTES).max_frame_size(MAX_CLIENT_MESSAGE_BYTES);
    let session = state.ws_sessions.token();
    Ok(ws.on_upgrade(move |socket| async move {
        serve(socket, state, principal).await;
        drop(session);
    }))
}

/// The close frame that ends a socket for `code`.
fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame { code, reason: Utf8Bytes::from_static(reason) }))
}

async fn serve(socket: WebSocket, state: AppState, principal: SocketAuth) {
    let (sink, mut incoming) = socket.split();
    let (outbox, outgoing) = mpsc::channel::<Message>(OUTBOX);
    let closing = CancellationToken::new();
    let mut send_task = tokio::spawn(send_loop(sink, outgoing, closing.clone(), state.clone()));
    let principal = match principal {
        SocketAuth::Known(principal) => principal,
        SocketAuth::Pending { client_ip } => match authenticate_first(&state, &mut incoming, client_ip).await {
            Ok(principal) => principal,
            Err(error) => {
                let _ = outbox.send(error.to_message()).await;
                let _ = outbox.send(close(close_code::POLICY, "unauthorized")).await;
                drop(outbox);
                if tokio::time::timeout(state.settings.client_send_timeout, &mut send_task).await.is_err() {
                    send_task.abort();
                }
                return;
            }
        },
    };
    let mut session = Session { state: state.clone(), principal, outbox, readers: HashMap::new() };
    let idle_timeout = state.settings.ws_idle_timeout;
    let mut idle_check = tokio::time::interval(idle_timeout / 4);
    let mut last_activity = tokio::time::Instant::now();
    let flush = loop {
        tokio::select! {
            _ = &mut send_task => return session.abort_readers(),
            _ = idle_check.tick() => {
                if !session.readers.is_empty() {
                    last_activity = tokio::time::Instant::now();
                } else if last_activity.elapsed() >= idle_timeout {
                    let _ = session.outbox.send(close(close_code::NORMAL, "idle")).await;
                    break true;
                }
            }
            _ = state.shutdown.cancelled() => {
                // Each stream is ending with a terminal event: let the readers deliver
                // them, within the shutdown timeout, before the socket closes.
                session.finish_readers(state.settings.shutdown_timeout).await;
                // Streams generated elsewhere end here without a terminal event:
                // 1012 tells the client to resume them on another process.
                let _ = session.outbox.send(close(close_code::RESTART, "restarting; resume elsewhere")).await;
                break true;
            }
            message = incoming.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    last_activity = tokio::time::Instant::now();
                    if !session.handle(text).await {
                        break true;
                    }
                }
                Some(Ok(Message::Binary(_))) => session.reply(ProtocolError::bad_request("send JSON text frames, not binary")).await,
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break false,
                Some(Ok(_)) => {}
            },
        }
        session.forget_finished();
    };
    session.abort_readers();
    if !flush {
        // The client is closing (or gone): what is still queued for it, a resume
        // replay say, is moot. Answer its Close at once.
        closing.cancel();
    }
    // With every sender gone the send task flushes what is queued, then closes.
    if tokio::time::timeout(state.settings.client_send_timeout, &mut send_task).await.is_err() {
        send_task.abort();
    }
}

/// Writes the outbox to the socket, a keep-alive when idle, until the outbox
/// closes or `closing`; then sends a Close frame.
async fn send_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut outgoing: mpsc::Receiver<Message>,
    closing: CancellationToken,
    state: AppState,
) {
    let (send_timeout, keepalive) = (state.settings.client_send_timeout, state.settings.sse_keepalive);
    let dropped = state.metrics.readers_dropped.with_label_values(&["send_timeout"]);
    loop {
        // Browsers hide WebSocket pings from scripts, so an idle socket gets a
        // keep-alive message the client can see and time its silence against.
        let message = tokio::select! {
            biased;
            _ = closing.cancelled() => break,
            next = tokio::time::timeout(keepalive, outgoing.recv()) => match next {
                Ok(Some(message)) => message,
                Ok(None) => break,
                Err(_) => Message::Text(Utf8Bytes::from_static(KEEP_ALIVE)),
            },
        };
        let sent = tokio::select! {
            biased;
            _ = closing.cancelled() => break,
            sent = tokio::time::timeout(send_timeout, write_ready(&mut sink, message, &mut outgoing)) => sent,
        };
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(_) => {
                dropped.inc();
                tracing::info!("closing a WebSocket that stopped reading");
                return;
            }
        }
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.close()).await;
}

/// Writes `first` and the messages already queued behind it, then flushes once:
/// a burst of events is one write to the socket, not one per event.
async fn write_ready(
    sink: &mut SplitSink<WebSocket, Message>,
    first: Message,
    outgoing: &mut mpsc::Receiver<Message>,
) -> Result<(), axum::Error> {
    sink.feed(first).await?;
    for _ in 1..OUTBOX {
        let Ok(next) = outgoing.try_recv() else { break };
        sink.feed(next).await?;
    }
    sink.flush().await
}

/// Waits for the first message, which must be a valid `auth`.
async fn authenticate_first(
    state: &AppState,
    incoming: &mut futures::stream::SplitStream<WebSocket>,
    client_ip: std::net::IpAddr,
) -> Result<Principal, ProtocolError> {
    let first = tokio::time::timeout(AUTH_WAIT, incoming.next()).await.map_err(|_| {
        ProtocolError::unauthorized(format!("authenticate within {} s: send {{\"type\":\"auth\",\"token\":…}} first", AUTH_WAIT.as_secs()))
    })?;
    let Some(Ok(Message::Text(text))) = first else {
        return Err(ProtocolError::unauthorized("the first message must be {\"type\":\"auth\",\"token\":…}"));
    };
    match decode(&text) {
        Ok(ClientMessage::Auth { token }) => {
            state.auth.authenticate(Some(&token), client_ip).map_err(|error| ProtocolError::unauthorized(error.to_string()))
        }
        _ => Err(ProtocolError::unauthorized("the first message must be {\"type\":\"auth\",\"token\":…}")),
    }
}

struct Session {
    state: AppState,
    principal: Principal,
    outbox: mpsc::Sender<Message>,
    /// The stream readers this socket runs, by stream.
    readers: HashMap<StreamId, JoinHandle<()>>,
}

impl Session {
    async fn reply(&self, error: ProtocolError) {
        let _ = self.outbox.send(error.to_message()).await;
    }

    fn forget_finished(&mut self) {
        self.readers.retain(|_, reader| !reader.is_finished());
    }

    /// Stops every reader and drops the outbox, so the send task can finish.
    fn abort_readers(self) {
        for reader in self.readers.values() {
            reader.abort();
        }
    }

    async fn finish_readers(&mut self, within: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + within;
        for (_, mut reader) in self.readers.drain() {
            if tokio::time::timeout_at(deadline, &mut reader).await.is_err() {
                reader.abort();
            }
        }
    }

    /// Acts on one client message; `false` when the socket must close.
    async fn handle(&mut self, text: Utf8Bytes) -> bool {
        let message = match decode(&text) {
            Ok(message) => message,
            Err(error) => {
                self.reply(ProtocolError::bad_request(error)).await;
                return true;
            }
        };
        match message {
            ClientMessage::Auth { token } => return self.reauthenticate(&token).await,
            ClientMessage::Start { block_type, input, reference } => self.start(block_type, input, reference).await,
            ClientMessage::Resume { stream_id, after } => match StreamId::parse(&stream_id) {
                Some(id) => self.read(id, after, None).await,
                None => {
                    self.reply(ProtocolError {
                        field: Some("stream_id".into()),
                        ..ProtocolError::bad_request("stream_id is not a stream id")
                    })
                    .await
                }
            },
            ClientMessage::Cancel { stream_id } => self.cancel(stream_id).await,
        }
        true
    }

    /// A later `auth` (a refreshed token) must prove the same principal; with
    /// `AUTH_MODE=none` it is ignored.
    async fn reauthenticate(&mut self, token: &str) -> bool {
        if self.state.auth.mode() == AuthMode::None {
            return true;
        }
        let error = match self.state.auth.authenticate(Some(token), std::net::IpAddr::from([0, 0, 0, 0])) {
            Ok(principal) if principal == self.principal => return true,
            Ok(_) => ProtocolError::unauthorized("a socket acts for one principal; open another socket for another"),
            Err(error) => ProtocolError::unauthorized(error.to_string()),
        };
        self.reply(error).await;
        let _ = self.outbox.send(close(close_code::POLICY, "unauthorized")).await;
        false
    }

    /// Whether this socket may read one more stream than it does.
    fn has_room_for(&mut self, id: Option<&StreamId>) -> bool {
        self.forget_finished();
        id.is_some_and(|id| self.readers.contains_key(id)) || self.readers.len() < self.state.settings.limits.streams_per_socket
    }

    async fn start(&mut self, block_type: String, input: Map<String, Value>, reference: Option<String>) {
        let fail = |error: ProtocolError| ProtocolError { reference: reference.clone(), ..error };
        if reference.as_ref().is_some_and(|r| r.len() > 128) {
            return self
                .reply(fail(ProtocolError { field: Some("ref".into()), ..ProtocolError::bad_request("ref is longer than 128 characters") }))
                .await;
        }
        let Some(block) = BlockType::parse(&block_type) else {
            let error = ProtocolError::bad_request(format!("unknown block type `{}`", block_type.chars().take(64).collect::<String>()));
            return self.reply(fail(ProtocolError { field: Some("block_type".into()), ..error })).await;
        };
        let input = match BlockInput::parse(block, &input) {
            Ok(input) => input,
            Err(error) => {
                let field = Some(error.field.clone());
                return self.reply(fail(ProtocolError { field, ..ProtocolError::bad_request(error.to_string()) })).await;
            }
        };
        if !self.has_room_for(None) {
            return self.reply(fail(ProtocolError::socket_full(self.state.settings.limits.streams_per_socket))).await;
        }
        let reservation = match self.state.limits.admit(&self.principal, input.prompt().max_tokens.into()).await {
            Ok(reservation) => reservation,
            Err(LimitError::Refused(refusal)) => {
                let error = ProtocolError {
                    code: refusal.code(),
                    retryable: true,
                    retry_after_ms: Some(refusal.retry_after_ms()),
                    ..ProtocolError::bad_request(refusal.to_string())
                };
                return self.reply(fail(error)).await;
            }
            Err(LimitError::Unavailable(error)) => {
                tracing::warn!(%error, "could not admit a WebSocket start");
                return self.reply(fail(ProtocolError::unavailable())).await;
            }
        };
        match self.state.manager.start(input, reference.clone(), self.principal.id(), reservation).await {
            Ok(started) => self.read(started.stream_id().clone(), None, reference).await,
            Err(ManagerError::Store(error)) => {
                tracing::warn!(%error, "could not start a WebSocket stream");
                self.reply(fail(ProtocolError::unavailable())).await
            }
            Err(error) => {
                let retry_after_ms = matches!(error, ManagerError::AtCapacity).then_some(1000);
                let code = if retry_after_ms.is_some() { "rate_limited" } else { "bad_request" };
                let retryable = matches!(error, ManagerError::AtCapacity | ManagerError::ShuttingDown);
                self.reply(fail(ProtocolError { code, retryable, retry_after_ms, ..ProtocolError::bad_request(error.to_string()) })).await
            }
        }
    }

    /// Starts forwarding `id`'s events after `after`; a second read of the same
    /// stream replaces the first (the client dedups by seq).
    async fn read(&mut self, id: StreamId, after: Option<u64>, reference: Option<String>) {
        if !self.has_room_for(Some(&id)) {
            let error = ProtocolError {
                stream_id: Some(id.to_string()),
                ..ProtocolError::socket_full(self.state.settings.limits.streams_per_socket)
            };
            return self.reply(error).await;
        }
        let reader = match self.state.manager.open(&id, after, self.principal.id()).await {
            Ok(Opened::Events(reader)) => reader,
            Ok(Opened::UpToDate) => return,
            Err(ManagerError::NotFound { next_seq, .. }) => {
                let body = EventBody::error(ErrorCode::StreamNotFound, format!("no stream {id}; it may have expired: start again"), true);
                let _ = self.outbox.send(text(&LoggedEvent::new(next_seq, &body), &id)).await;
                return;
            }
            Err(error @ ManagerError::AfterBeyondLog { .. }) => {
                let error = ProtocolError {
                    field: Some("after".into()),
                    stream_id: Some(id.to_string()),
                    ..ProtocolError::bad_request(error.to_string())
                };
                return self.reply(error).await;
            }
            Err(error) => {
                tracing::warn!(stream_id = %id, %error, "could not open a stream for a WebSocket");
                return self.reply(ProtocolError { stream_id: Some(id.to_string()), ..ProtocolError::unavailable() }).await;
            }
        };
        if let Some(previous) = self.readers.remove(&id) {
            previous.abort();
        }
        let outbox = self.outbox.clone();
        let sent = self.state.metrics.events_sent_ws.clone();
        let stream_id = id.clone();
        let task = tokio::spawn(async move {
            let mut reader = reader;
            while let Some(batch) = reader.next().await {
                for event in &batch.events {
                    let message = match (&reference, event.event_type) {
                        (Some(reference), EventType::Start) => with_ref(event, &stream_id, reference),
                        _ => text(event, &stream_id),
                    };
                    if outbox.send(message).await.is_err() {
                        return;
                    }
                    sent.inc();
                }
            }
        });
        self.readers.insert(id, task);
    }

    async fn cancel(&mut self, stream_id: String) {
        let Some(id) = StreamId::parse(&stream_id) else {
            return self
                .reply(ProtocolError { field: Some("stream_id".into()), ..ProtocolError::bad_request("stream_id is not a stream id") })
                .await;
        };
        if let Err(ManagerError::NotFound { .. }) = self.state.manager.cancel(&id, self.principal.id()).await {
            let error = ProtocolError {
                code: "stream_not_found",
                stream_id: Some(stream_id),
                ..ProtocolError::bad_request("no such stream; it may have expired")
            };
            self.reply(error).await;
        }
    }
}

/// An event as a text message.
fn text(event: &LoggedEvent, stream_id: &StreamId) -> Message {
    Message::Text(Utf8Bytes::try_from(event.json(stream_id)).expect("events are JSON, so UTF-8"))
}

/// The `start` event with the client's `ref` added: done once per stream.
fn with_ref(event: &LoggedEvent, stream_id: &StreamId, reference: &str) -> Message {
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
        let kind = prop::sample::select(vec!["auth", "start", "resume", "cancel", "dance", ""]);
        let name = prop::sample::select(vec!["token", "block_type", "input", "ref", "stream_id", "after", "extra"]);
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
                "start" => has(&["block_type", "input", "ref"], &["block_type", "input"])
                    && is("block_type", Value::is_string)
                    && is("input", Value::is_object)
                    && is("ref", |v| v.is_string() || v.is_null()),
                "resume" => has(&["stream_id", "after"], &["stream_id"])
                    && is("stream_id", Value::is_string)
                    && is("after", |v| v.is_u64() || v.is_null()),
                "cancel" => has(&["stream_id"], &["stream_id"]) && is("stream_id", Value::is_string),
                _ => false,
            };
            prop_assert_eq!(decode(&message.to_string()).is_ok(), expected, "{}", message);
        }
    }
}
