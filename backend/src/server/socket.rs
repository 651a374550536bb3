//! An accepted TCP connection as the server holds it: it carries its place under
//! `MAX_CONNECTIONS` for as long as the socket is open — through an HTTP
//! exchange, a WebSocket upgrade, and its lingering close.
//!
//! Its writes time out: a write that makes no progress for the send timeout (the
//! client stopped reading; its buffers and ours are full) fails, which ends the
//! connection, its task and whatever response it was streaming. Hyper has no
//! write timeout, so without this a client that stops reading an SSE stream, or
//! any response larger than the buffers, would hold its connection forever.
//!
//! The lingering close: when the server is done with a socket, it does not drop
//! it at once. It sends its FIN, then reads and discards what the client is still
//! sending (an upload the server refused, say) for at most [`LINGER`], and only
//! then closes. Closing a socket whose receive queue holds unread bytes makes the
//! kernel answer with a reset, and a reset makes the client drop the response it
//! has not read yet (the 413 of a 2 MB body, seen by the client as "server
//! disconnected without a response").

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Sleep;

use crate::metrics::Metrics;

/// How long a closing socket drains what the client still sends.
pub const LINGER: Duration = Duration::from_secs(2);
/// How much of it is read at most before the socket closes anyway.
const LINGER_BYTES: usize = 16 * 1024 * 1024;

pub struct CountedSocket {
    /// `None` once handed to the lingering close.
    stream: Option<TcpStream>,
    permit: Option<OwnedSemaphorePermit>,
    send_timeout: Duration,
    metrics: Metrics,
    /// Armed while a write waits for the client to read.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl CountedSocket {
    pub fn new(stream: TcpStream, permit: OwnedSemaphorePermit, send_timeout: Duration, metrics: Metrics) -> Self {
        metrics.connections_open.inc();
        Self { stream: Some(stream), permit: Some(permit), send_timeout, metrics, stalled: None }
    }

    fn stream(&mut self) -> Pin<&mut TcpStream> {
        Pin::new(self.stream.as_mut().expect("open until dropped"))
    }

    /// A write's outcome, failing one that has waited for the send timeout.
    fn timed<T>(&mut self, cx: &mut Context<'_>, polled: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let send_timeout = self.send_timeout;
        let stalled = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(send_timeout)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => {
                tracing::info!("closing a connection whose client stopped reading");
                self.metrics.connections_closed.with_label_values(&["send_timeout"]).inc();
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "the client stopped reading (CLIENT_SEND_TIMEOUT_SECONDS)")))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for CountedSocket {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.get_mut().stream().poll_read(cx, buf)
    }
}

impl AsyncWrite for CountedSocket {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = this.stream().poll_write(cx, buf);
        this.timed(cx, polled)
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = this.stream().poll_write_vectored(cx, bufs);
        this.timed(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(TcpStream::is_write_vectored)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().stream().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().stream().poll_shutdown(cx)
    }
}

impl Drop for CountedSocket {
    fn drop(&mut self) {
        let (Some(stream), permit) = (self.stream.take(), self.permit.take()) else { return };
        let open = self.metrics.connections_open.clone();
        // Without a runtime (the process is ending) the socket simply closes.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                linger(stream, permit).await;
                open.dec();
            });
        } else {
            open.dec();
        }
    }
}

/// Sends FIN, drains the client's remaining bytes for a while, then closes.
pub async fn linger(mut stream: TcpStream, permit: Option<OwnedSemaphorePermit>) {
    let _ = tokio::time::timeout(LINGER, async {
        let _ = stream.shutdown().await;
        let mut buf = [0u8; 8192];
        let mut drained = 0;
        while drained < LINGER_BYTES {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
    drop(stream);
    drop(permit);
}
