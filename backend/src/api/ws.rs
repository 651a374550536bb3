//! The WebSocket transport: one socket multiplexes many streams.
//!
//! A receive loop reads client messages and hands them to the socket's
//! [`Session`] (what it reads, and for whom); each stream being read gets a
//! reader task that forwards log events into one bounded outbox; a send task
//! writes the outbox to the socket with a send timeout. A malformed message gets
//! a `protocol_error` frame and changes nothing else. A client that stops reading
//! is disconnected after the timeout; its streams keep running for the resume
//! grace period like any other disconnect. An idle socket gets a `keep_alive`
//! message every `SSE_KEEPALIVE_SECONDS`. A client's Close is answered at once:
//! what is still queued for it (a resume replay, say) is dropped.
//!
//! Trust: the upgrade is refused cross-site (`Origin`), and a socket acts for one
//! principal at a time — from the upgrade's `Authorization` header, or (browsers
//! cannot set headers on a WebSocket) from a first message
//! `{"type":"auth","token":…}` sent within [`AUTH_WAIT`]; a bad or missing one
//! gets a `protocol_error` `unauthorized` and close code 1008. Successful auth is
//! not answered; a later one refreshes the credential or switches principal
//! (`ws_session`). Starts are admitted by the principal's limits, and one socket
//! reads at most `LIMIT_STREAMS_PER_SOCKET` live streams. Frames over
//! [`MAX_CLIENT_MESSAGE_BYTES`] are refused by the WebSocket layer before they
//! are buffered (close code 1009); the socket's generations live on and resume
//! on a new socket. A socket with no live stream and no client message for
//! `WS_IDLE_TIMEOUT_SECONDS` is closed (1000).

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{close_code, CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use futures::future::Either;
use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::error::ApiError;
use super::origin::SameSiteStart;
use super::ws_messages::{decode, ClientMessage, ProtocolError};
use super::ws_session::{Outgoing, Session};
use super::AppState;
use crate::auth::principal::{SocketAuth, SocketPrincipal};
use crate::auth::Credential;
use crate::telemetry;

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

#[utoipa::path(
    get, path = "/api/stream/ws",
    description = "Upgrades to a WebSocket multiplexing many streams; messages as in the AsyncAPI contract. Authenticate with the upgrade's `Authorization` header or a first message `{\"type\":\"auth\",\"token\":…}`; a later `auth` refreshes the credential or switches the socket to another principal.",
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
    // The socket's streams belong to the upgrade's span (and so to the host
    // app's trace), which lasts as long as the socket; so do its log lines.
    let log = tracing::Span::current();
    let request = telemetry::http::current();
    Ok(ws.on_upgrade(move |socket| {
        let serve = async move {
            serve(socket, state, principal).await;
            drop(session);
        };
        match request {
            Some(request) => Either::Left(telemetry::http::within(request, serve).instrument(log)),
            None => Either::Right(serve.instrument(log)),
        }
    }))
}

/// The close frame that ends a socket for `code`.
pub fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame { code, reason: Utf8Bytes::from_static(reason) }))
}

async fn serve(socket: WebSocket, state: AppState, principal: SocketAuth) {
    let (sink, mut incoming) = socket.split();
    let (outbox, outgoing) = mpsc::channel::<Outgoing>(OUTBOX);
    let closing = CancellationToken::new();
    let mut send_task = tokio::spawn(send_loop(sink, outgoing, closing.clone(), state.clone()));
    let credential = match principal {
        SocketAuth::Known(credential) => credential,
        SocketAuth::Pending { client_ip } => match authenticate_first(&state, &mut incoming, client_ip).await {
            Ok(credential) => credential,
            Err(error) => {
                let _ = outbox.send(Outgoing::control(error.to_message())).await;
                let _ = outbox.send(Outgoing::control(close(close_code::POLICY, "unauthorized"))).await;
                drop(outbox);
                if tokio::time::timeout(state.settings.client_send_timeout, &mut send_task).await.is_err() {
                    send_task.abort();
                }
                return;
            }
        },
    };
    let mut session = Session::new(state.clone(), credential, outbox);
    let idle_timeout = state.settings.ws_idle_timeout;
    let mut idle_check = tokio::time::interval(idle_timeout / 4);
    let mut last_activity = tokio::time::Instant::now();
    let flush = loop {
        tokio::select! {
            _ = &mut send_task => return session.abort_readers(),
            _ = idle_check.tick() => {
                if session.is_reading() {
                    last_activity = tokio::time::Instant::now();
                } else if last_activity.elapsed() >= idle_timeout {
                    session.send(close(close_code::NORMAL, "idle")).await;
                    break true;
                }
            }
            _ = state.shutdown.cancelled() => {
                session.close_for_restart(state.settings.shutdown_timeout).await;
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
    mut outgoing: mpsc::Receiver<Outgoing>,
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
                Ok(Some(next)) if next.is_wanted() => next.message,
                // An event of a stream the socket no longer delivers.
                Ok(Some(_)) => continue,
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
            // The socket's own write timeout (`server::socket`) may fire first.
            Ok(Err(error)) if !timed_out(&error) => return,
            Ok(Err(_)) | Err(_) => {
                dropped.inc();
                tracing::info!("closing a WebSocket that stopped reading");
                return;
            }
        }
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.close()).await;
}

/// Whether a write failed because the client stopped reading.
fn timed_out(error: &axum::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = cause {
        if error.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut) {
            return true;
        }
        cause = error.source();
    }
    false
}

/// Writes `first` and the messages already queued behind it, then flushes once:
/// a burst of events is one write to the socket, not one per event.
async fn write_ready(
    sink: &mut SplitSink<WebSocket, Message>,
    first: Message,
    outgoing: &mut mpsc::Receiver<Outgoing>,
) -> Result<(), axum::Error> {
    sink.feed(first).await?;
    for _ in 1..OUTBOX {
        let Ok(next) = outgoing.try_recv() else { break };
        if next.is_wanted() {
            sink.feed(next.message).await?;
        }
    }
    sink.flush().await
}

/// Waits for the first message, which must be a valid `auth`.
async fn authenticate_first(
    state: &AppState,
    incoming: &mut futures::stream::SplitStream<WebSocket>,
    client_ip: std::net::IpAddr,
) -> Result<Credential, ProtocolError> {
    let first = tokio::time::timeout(AUTH_WAIT, incoming.next()).await.map_err(|_| {
        ProtocolError::unauthorized(format!("authenticate within {} s: send {{\"type\":\"auth\",\"token\":…}} first", AUTH_WAIT.as_secs()))
    })?;
    let Some(Ok(Message::Text(text))) = first else {
        return Err(ProtocolError::unauthorized("the first message must be {\"type\":\"auth\",\"token\":…}"));
    };
    match decode(&text) {
        Ok(ClientMessage::Auth { token }) => {
            state.auth.verify(Some(&token), client_ip).map_err(|error| ProtocolError::unauthorized(error.to_string()))
        }
        _ => Err(ProtocolError::unauthorized("the first message must be {\"type\":\"auth\",\"token\":…}")),
    }
}
