//! Serving a router on a bound listener with hyper-util's connection builder,
//! and owning every connection's life: nothing may hold a connection that does
//! not use it.
//!
//! - At most `MAX_CONNECTIONS` sockets are open at once (a WebSocket counts until
//!   it closes). One more is answered `503` (a JSON problem body, `Connection:
//!   close`) and closed.
//! - A connection must send its first request head within
//!   `HTTP_HEADER_TIMEOUT_SECONDS` of being accepted, bytes or none: hyper-util's
//!   own header timeout starts only at the first byte, so a socket that connects
//!   and stays silent would otherwise be held forever. Later request heads on a
//!   kept-alive connection are bounded by hyper's header timeout.
//! - A connection whose writes make no progress for `CLIENT_SEND_TIMEOUT_SECONDS`
//!   (a client that stopped reading: an SSE stream, a WebSocket, any response) is
//!   closed, and its task ends (`socket`); hyper has no write timeout of its own.
//! - A response to a request whose body was not read says `Connection: close`
//!   (`body_read`); sockets close lingering (`socket`).
//!
//! Each request carries its peer address (`ConnectInfo`) for the client-IP
//! principal. Shutdown stops accepting, asks open connections to finish, and gives
//! up on them after the timeout.

mod body_read;
mod socket;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::{header, HeaderValue, Version};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use body_read::TrackedBody;
use socket::CountedSocket;

use crate::metrics::Metrics;

/// How a server serves its connections.
#[derive(Clone)]
pub struct ServeConfig {
    /// Time to send a request head: from acceptance for the first one.
    pub header_timeout: Duration,
    /// Open connections at most (`MAX_CONNECTIONS`).
    pub max_connections: usize,
    /// How long a connection's writes may make no progress (`CLIENT_SEND_TIMEOUT_SECONDS`).
    pub send_timeout: Duration,
    pub metrics: Metrics,
    /// How long open connections get to finish on shutdown.
    pub drain: Duration,
}

/// Refusals of connections over the limit being written at once; beyond them a
/// connection is closed without an answer, so a flood cannot hold more sockets.
const MAX_REFUSALS: usize = 1024;

/// Serves `app` until `stop` is cancelled, then waits up to `config.drain` for
/// open connections to close.
pub async fn serve(listener: TcpListener, app: Router, config: ServeConfig, stop: CancellationToken) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(config.header_timeout);
    builder.http2().timer(TokioTimer::new()).enable_connect_protocol();
    let connections = Arc::new(Semaphore::new(config.max_connections));
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
    let tasks = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            config.metrics.connections_closed.with_label_values(&["at_capacity"]).inc();
            if let Ok(refusal) = refusals.clone().try_acquire_owned() {
                tokio::spawn(async move {
                    refuse_at_capacity(stream, config.max_connections).await;
                    drop(refusal);
                });
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let first_request = CancellationToken::new();
        let service = {
            let (app, first_request) = (app.clone(), first_request.clone());
            TowerToHyperService::new(tower::service_fn(move |mut request: hyper::Request<Incoming>| {
                first_request.cancel();
                request.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                let http1 = request.version() < Version::HTTP_2;
                let (request, body_read) = {
                    let (parts, body) = request.into_parts();
                    let (body, read) = TrackedBody::new(body);
                    (hyper::Request::from_parts(parts, axum::body::Body::new(body)), read)
                };
                let app = app.clone();
                async move {
                    let mut response = app.oneshot(request).await?;
                    if http1 && !body_read.load(Ordering::Relaxed) {
                        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
                    }
                    Ok::<_, std::convert::Infallible>(response)
                }
            }))
        };
        let io = TokioIo::new(CountedSocket::new(stream, permit, config.send_timeout, config.metrics.clone()));
        let connection = builder.serve_connection_with_upgrades(io, service).into_owned();
        let (stop, header_timeout) = (stop.clone(), config.header_timeout);
        let header_timeouts = config.metrics.connections_closed.with_label_values(&["header_timeout"]);
        tasks.spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let first_head_due = tokio::time::sleep(header_timeout);
            tokio::pin!(first_head_due);
            let mut shutting_down = false;
            let mut waiting_for_first = true;
            loop {
                tokio::select! {
                    done = connection.as_mut() => {
                        if let Err(error) = done {
                            tracing::debug!(%error, "connection ended with an error");
                        }
                        return;
                    }
                    _ = first_request.cancelled(), if waiting_for_first => waiting_for_first = false,
                    _ = &mut first_head_due, if waiting_for_first && !first_request.is_cancelled() => {
                        tracing::debug!("closing a connection that sent no request head in time");
                        header_timeouts.inc();
                        return;
                    }
                    _ = stop.cancelled(), if !shutting_down => {
                        shutting_down = true;
                        connection.as_mut().graceful_shutdown();
                    }
                }
            }
        });
    }
    drop(listener);
    tasks.close();
    if tokio::time::timeout(config.drain, tasks.wait()).await.is_err() {
        tracing::warn!("connections still open after the shutdown timeout; closing them");
    }
}

/// Answers a connection over `MAX_CONNECTIONS` with 503 and closes it.
async fn refuse_at_capacity(mut stream: TcpStream, limit: usize) {
    let problem = crate::api::error::Problem {
        kind: "about:blank",
        title: "Service Unavailable",
        status: 503,
        detail: format!("the server holds its limit of {limit} open connections (MAX_CONNECTIONS); try again shortly"),
        code: "at_capacity",
        field: None,
        retryable: Some(true),
        retry_after_ms: None,
        categories: None,
    };
    let body = serde_json::to_string(&problem).expect("plain data serialises");
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    // A fresh socket's buffer takes a few hundred bytes at once; a bound all the same.
    if tokio::time::timeout(Duration::from_secs(1), stream.write_all(response.as_bytes())).await.is_ok() {
        socket::linger(stream, None).await;
    }
}
