//! The WebSocket transport: one socket multiplexes many streams.
//!
//! A receive loop reads client messages (`start`, `resume`, `cancel`); each stream
//! being read gets a reader task that forwards log events into one bounded outbox;
//! a send task writes the outbox to the socket with a send timeout. A malformed
//! message gets a `ProtocolError` frame and changes nothing else. A client that
//! stops reading is disconnected after the timeout; its streams keep running for
//! the resume grace period like any other disconnect. An idle socket gets a
//! `keep_alive` message every `SSE_KEEPALIVE_SECONDS`.

use std::collections::HashMap;

use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
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
use super::AppState;
use crate::ai::blocks::{BlockInput, BlockType};
use crate::ai::streaming::events::{ErrorCode, EventBody, EventType, LoggedEvent, StreamId};
use crate::ai::streaming::stream_manager::{ManagerError, Opened};

/// Largest client message acted on; bigger ones get an error frame.
pub const MAX_CLIENT_MESSAGE_BYTES: usize = 32 * 1024;
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
enum ClientMessage {
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

#[utoipa::path(get, path = "/api/stream/ws", responses((status = 101, description = "WebSocket; messages as in the AsyncAPI contract")))]
pub async fn upgrade(State(state): State<AppState>, ws: WebSocketUpgrade) -> Result<Response, ApiError> {
    if !state.settings.streaming_enabled {
        return Err(ApiError::StreamingDisabled);
    }
    // The socket's own limit is far above ours so that an oversized message gets an
    // error frame instead of killing the socket and its other streams.
    Ok(ws.max_message_size(MAX_CLIENT_MESSAGE_BYTES * 32).on_upgrade(move |socket| serve(socket, state)))
}

async fn serve(socket: WebSocket, state: AppState) {
    let (sink, mut incoming) = socket.split();
    let (outbox, outgoing) = mpsc::channel::<Message>(OUTBOX);
    let closing = CancellationToken::new();
    let mut send_task = tokio::spawn(send_loop(sink, outgoing, closing.clone(), state.clone()));
    let mut session = Session { state: state.clone(), outbox, readers: HashMap::new() };
    let flush = loop {
        tokio::select! {
            _ = &mut send_task => return session.abort_readers(),
            _ = state.shutdown.cancelled() => {
                // Each stream is ending with a terminal event: let the readers deliver
                // them, within the shutdown timeout, before the socket closes.
                session.finish_readers(state.settings.shutdown_timeout).await;
                break true;
            }
            message = incoming.next() => match message {
                Some(Ok(Message::Text(text))) => session.handle(text).await,
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
            sent = tokio::time::timeout(send_timeout, sink.send(message)) => sent,
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

struct Session {
    state: AppState,
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

    async fn handle(&mut self, text: Utf8Bytes) {
        if text.len() > MAX_CLIENT_MESSAGE_BYTES {
            return self.reply(ProtocolError::bad_request(format!("message is larger than {MAX_CLIENT_MESSAGE_BYTES} bytes"))).await;
        }
        let message = match serde_json::from_str::<ClientMessage>(&text) {
            Ok(message) => message,
            Err(error) => return self.reply(ProtocolError::bad_request(format!("not a valid client message: {error}"))).await,
        };
        match message {
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
        match self.state.manager.start(input, reference.clone()).await {
            Ok(started) => self.read(started.stream_id().clone(), None, reference).await,
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
        let reader = match self.state.manager.open(&id, after).await {
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
                let error =
                    ProtocolError { retryable: true, stream_id: Some(id.to_string()), ..ProtocolError::bad_request(error.to_string()) };
                return self.reply(error).await;
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
        if let Err(ManagerError::NotFound { .. }) = self.state.manager.cancel(&id).await {
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
