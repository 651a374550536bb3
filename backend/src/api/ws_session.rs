//! What one WebSocket does for its client: for whom it acts (its credential,
//! checked again at every start and resume, replaced by a later `auth`), which
//! streams it reads (one reader per stream, each forwarding log events into the
//! socket's outbox), and how each client message changes that.
//!
//! A `start` may carry `fresh: true` (coalescing: a new answer, never a shared
//! or replayed one).
//!
//! Deliberate rules, relied on by `@live-ai/client`:
//! - One reader per stream. A `resume` (or a retried `start`) of a stream the
//!   socket already reads restarts that reader only when it asks for earlier
//!   events than the reader has queued; the stream then continues from the lower
//!   position (what was already queued still goes out first, and the client drops
//!   the seqs it holds). Otherwise it changes nothing.
//! - `detach` stops delivering a stream at once (queued events of it are dropped)
//!   and frees its slot; its generation goes on for the resume grace. A stream
//!   the socket does not read is ignored: detach is idempotent.
//! - After the credential's `exp`, `start` and `resume` get `protocol_error`
//!   `unauthorized` (with the start's `ref` or the stream's `stream_id`) until an
//!   `auth` brings a current token; the socket and its readers stay.
//! - An `auth` for another principal (an account switch) makes the socket act
//!   for the new one; every stream it read for the previous one stops (queued
//!   events dropped) and gets one `protocol_error` `unauthorized` with its
//!   `stream_id`. A refused `auth` closes the socket (1008).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::ws::{close_code, Message, Utf8Bytes};
use futures::StreamExt;
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::ws::close;
use super::ws_messages::{decode, text, with_ref, ClientMessage, ProtocolError};
use super::AppState;
use crate::ai::blocks::{BlockInput, BlockType};
use crate::ai::streaming::coalesce::Sharing;
use crate::ai::streaming::events::{ErrorCode, EventBody, EventType, LoggedEvent, StreamId};
use crate::ai::streaming::stream_manager::{ManagerError, Opened, StartError};
use crate::auth::Credential;
use crate::config::settings::AuthMode;
use crate::limits::LimitError;

/// A message on its way to the socket.
pub struct Outgoing {
    pub message: Message,
    /// A stream's event: dropped unsent once the socket stops delivering that stream.
    delivering: Option<Arc<AtomicBool>>,
}

impl Outgoing {
    /// A message that always goes out: answers, keep-alives, Close.
    pub fn control(message: Message) -> Self {
        Self { message, delivering: None }
    }

    /// Whether it is still to be sent.
    pub fn is_wanted(&self) -> bool {
        self.delivering.as_ref().is_none_or(|flag| flag.load(Ordering::Relaxed))
    }
}

/// The socket's reader of one stream.
struct StreamReader {
    task: JoinHandle<()>,
    /// The seq of the next event it will queue.
    next_seq: Arc<AtomicU64>,
    /// Cleared when the socket stops delivering the stream.
    delivering: Arc<AtomicBool>,
}

impl StreamReader {
    /// Stops it and drops what it queued that the socket has not sent yet.
    fn stop(self) {
        self.delivering.store(false, Ordering::Relaxed);
        self.task.abort();
    }
}

pub struct Session {
    state: AppState,
    credential: Credential,
    outbox: mpsc::Sender<Outgoing>,
    readers: HashMap<StreamId, StreamReader>,
}

impl Session {
    pub fn new(state: AppState, credential: Credential, outbox: mpsc::Sender<Outgoing>) -> Self {
        Self { state, credential, outbox, readers: HashMap::new() }
    }

    pub async fn reply(&self, error: ProtocolError) {
        let _ = self.outbox.send(Outgoing::control(error.to_message())).await;
    }

    pub async fn send(&self, message: Message) {
        let _ = self.outbox.send(Outgoing::control(message)).await;
    }

    /// Whether any stream is being read.
    pub fn is_reading(&self) -> bool {
        !self.readers.is_empty()
    }

    pub fn forget_finished(&mut self) {
        self.readers.retain(|_, reader| !reader.task.is_finished());
    }

    /// Stops every reader and drops the outbox, so the send task can finish.
    pub fn abort_readers(self) {
        for reader in self.readers.values() {
            reader.task.abort();
        }
    }

    /// The process is stopping: every reader delivers what it has, within
    /// `within` (streams generated here are ending with a terminal event), then
    /// the socket closes with 1012, so the client resumes the streams generated
    /// elsewhere, which end here without one, on another process.
    pub async fn close_for_restart(&mut self, within: std::time::Duration) {
        self.finish_readers(within).await;
        self.send(close(close_code::RESTART, "restarting; resume elsewhere")).await;
    }

    /// Lets every reader deliver what it has (each stream is ending), within `within`.
    async fn finish_readers(&mut self, within: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + within;
        for (_, mut reader) in self.readers.drain() {
            if tokio::time::timeout_at(deadline, &mut reader.task).await.is_err() {
                reader.task.abort();
            }
        }
    }

    /// Acts on one client message; `false` when the socket must close.
    pub async fn handle(&mut self, text: Utf8Bytes) -> bool {
        let message = match decode(&text) {
            Ok(message) => message,
            Err(error) => {
                self.reply(ProtocolError::bad_request(error)).await;
                return true;
            }
        };
        match message {
            ClientMessage::Auth { token } => return self.authenticate(&token).await,
            ClientMessage::Start { block_type, input, reference, fresh } => {
                self.start(block_type, input, reference, fresh.unwrap_or(false)).await
            }
            ClientMessage::Resume { stream_id, after } => self.resume(stream_id, after).await,
            ClientMessage::Cancel { stream_id } => self.cancel(stream_id).await,
            ClientMessage::Detach { stream_id } => self.detach(stream_id).await,
        }
        true
    }

    /// A later `auth`: the same principal refreshes the credential; another one
    /// takes the socket over (see the module header). With `AUTH_MODE=none` it is
    /// ignored.
    async fn authenticate(&mut self, token: &str) -> bool {
        if self.state.auth.mode() == AuthMode::None {
            return true;
        }
        match self.state.auth.verify(Some(token), std::net::IpAddr::from([0, 0, 0, 0])) {
            Ok(credential) if credential.principal == self.credential.principal => self.credential = credential,
            Ok(credential) => self.switch_to(credential).await,
            Err(error) => {
                self.reply(ProtocolError::unauthorized(error.to_string())).await;
                self.send(close(close_code::POLICY, "unauthorized")).await;
                return false;
            }
        }
        true
    }

    async fn switch_to(&mut self, credential: Credential) {
        let previous: Vec<StreamId> = self.readers.keys().cloned().collect();
        for (_, reader) in self.readers.drain() {
            reader.stop();
        }
        tracing::info!(streams = previous.len(), "a WebSocket switched principal");
        self.credential = credential;
        for id in previous {
            self.reply(ProtocolError {
                stream_id: Some(id.to_string()),
                retryable: false,
                ..ProtocolError::unauthorized(
                    "this socket now acts for another principal (a new auth): it no longer delivers this stream of the previous one",
                )
            })
            .await;
        }
    }

    /// `None` while the credential may be used; the refusal otherwise.
    fn expired(&self) -> Option<ProtocolError> {
        (!self.credential.is_current()).then(|| {
            ProtocolError::unauthorized(
                "the socket's token has expired: send {\"type\":\"auth\",\"token\":…} with a fresh one, then try again",
            )
        })
    }

    /// Whether this socket may read one more stream than it does.
    fn has_room_for(&mut self, id: Option<&StreamId>) -> bool {
        self.forget_finished();
        id.is_some_and(|id| self.readers.contains_key(id)) || self.readers.len() < self.state.settings.limits.streams_per_socket
    }

    async fn start(&mut self, block_type: String, input: Map<String, Value>, reference: Option<String>, fresh: bool) {
        let fail = |error: ProtocolError| ProtocolError { reference: reference.clone(), ..error };
        if reference.as_ref().is_some_and(|r| r.len() > 128) {
            return self
                .reply(fail(ProtocolError { field: Some("ref".into()), ..ProtocolError::bad_request("ref is longer than 128 characters") }))
                .await;
        }
        if let Some(error) = self.expired() {
            return self.reply(fail(error)).await;
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
        // A start with a known ref is not a new stream: its room is checked when it
        // is read, like a resume's.
        let room = self.has_room_for(None);
        let (limits, principal, socket_limit) =
            (&self.state.limits, &self.credential.principal, self.state.settings.limits.streams_per_socket);
        let tokens = input.prompt().max_tokens.into();
        let admit = || async move {
            if !room {
                return Err(ProtocolError::socket_full(socket_limit));
            }
            limits.admit(principal, tokens).await.map_err(|error| match error {
                LimitError::Refused(refusal) => ProtocolError {
                    code: refusal.code(),
                    retryable: true,
                    retry_after_ms: Some(refusal.retry_after_ms()),
                    ..ProtocolError::bad_request(refusal.to_string())
                },
                LimitError::Unavailable(error) => {
                    tracing::warn!(%error, "could not admit a WebSocket start");
                    ProtocolError::unavailable()
                }
            })
        };
        let sharing = Sharing::of(principal, fresh);
        let started = self.state.manager.start(input, reference.clone(), principal.id(), &sharing, admit).await;
        match started {
            Ok(started) => self.read(started.stream_id().clone(), None, reference).await,
            Err(StartError::Refused(error)) => self.reply(fail(error)).await,
            Err(StartError::Manager(ManagerError::Store(error))) => {
                tracing::warn!(%error, "could not start a WebSocket stream");
                self.reply(fail(ProtocolError::unavailable())).await
            }
            Err(StartError::Manager(error)) => {
                let retry_after_ms = matches!(error, ManagerError::AtCapacity).then_some(1000);
                let code = if retry_after_ms.is_some() { "rate_limited" } else { "bad_request" };
                let retryable = matches!(error, ManagerError::AtCapacity | ManagerError::ShuttingDown);
                self.reply(fail(ProtocolError { code, retryable, retry_after_ms, ..ProtocolError::bad_request(error.to_string()) })).await
            }
        }
    }

    async fn resume(&mut self, stream_id: String, after: Option<u64>) {
        let Some(id) = StreamId::parse(&stream_id) else { return self.reply(ProtocolError::bad_stream_id()).await };
        if let Some(error) = self.expired() {
            return self.reply(ProtocolError { stream_id: Some(stream_id), ..error }).await;
        }
        self.read(id, after, None).await
    }

    /// Delivers `id`'s events after `after` on this socket, with its one reader
    /// (see the module header).
    async fn read(&mut self, id: StreamId, after: Option<u64>, reference: Option<String>) {
        if !self.has_room_for(Some(&id)) {
            let error = ProtocolError {
                stream_id: Some(id.to_string()),
                reference,
                ..ProtocolError::socket_full(self.state.settings.limits.streams_per_socket)
            };
            return self.reply(error).await;
        }
        let events = match self.state.manager.open(&id, after, self.credential.principal.id()).await {
            Ok(Opened::Events(events)) => events,
            Ok(Opened::UpToDate) => return,
            Err(ManagerError::NotFound { next_seq, .. }) => {
                let body = EventBody::error(ErrorCode::StreamNotFound, format!("no stream {id}; it may have expired: start again"), true);
                return self.send(text(&LoggedEvent::new(next_seq, &body), &id)).await;
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
        let from = after.map_or(0, |after| after + 1);
        if let Some(reader) = self.readers.get(&id) {
            // A `ref` needs its own start event, so a start always restarts.
            if reference.is_none() && !reader.task.is_finished() && from >= reader.next_seq.load(Ordering::Relaxed) {
                // It already delivers every event from `from` on.
                return;
            }
        }
        if let Some(previous) = self.readers.remove(&id) {
            // Restarted from the lower position: what it queued still goes out first.
            previous.task.abort();
        }
        let reader = self.spawn_reader(id.clone(), events, from, reference);
        self.readers.insert(id, reader);
    }

    fn spawn_reader(
        &self,
        stream_id: StreamId,
        mut events: crate::ai::streaming::stream_manager::EventReader,
        from: u64,
        reference: Option<String>,
    ) -> StreamReader {
        let (next_seq, delivering) = (Arc::new(AtomicU64::new(from)), Arc::new(AtomicBool::new(true)));
        let (outbox, sent) = (self.outbox.clone(), self.state.metrics.events_sent_ws.clone());
        let (position, flag) = (next_seq.clone(), delivering.clone());
        let task = tokio::spawn(async move {
            while let Some(batch) = events.next().await {
                for event in &batch.events {
                    let message = match (&reference, event.event_type) {
                        (Some(reference), EventType::Start) => with_ref(event, &stream_id, reference),
                        _ => text(event, &stream_id),
                    };
                    if outbox.send(Outgoing { message, delivering: Some(flag.clone()) }).await.is_err() {
                        return;
                    }
                    position.store(event.seq + 1, Ordering::Relaxed);
                    sent.inc();
                }
            }
        });
        StreamReader { task, next_seq, delivering }
    }

    async fn cancel(&mut self, stream_id: String) {
        let Some(id) = StreamId::parse(&stream_id) else { return self.reply(ProtocolError::bad_stream_id()).await };
        if let Err(ManagerError::NotFound { .. }) = self.state.manager.cancel(&id, self.credential.principal.id()).await {
            let error = ProtocolError {
                code: "stream_not_found",
                stream_id: Some(stream_id),
                ..ProtocolError::bad_request("no such stream; it may have expired")
            };
            self.reply(error).await;
        }
    }

    async fn detach(&mut self, stream_id: String) {
        let Some(id) = StreamId::parse(&stream_id) else { return self.reply(ProtocolError::bad_stream_id()).await };
        if let Some(reader) = self.readers.remove(&id) {
            reader.stop();
        }
    }
}
