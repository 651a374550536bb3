//! Whether a request's body was read to its end, so a response says
//! `Connection: close` when the connection will not be reused: a request refused
//! before its body was read (413 on an oversized body, 401, 415 …) leaves unread
//! bytes that hyper will not skip, so it closes the connection after the
//! response. Saying so lets a keep-alive client open a new connection for its
//! next request instead of sending it into one that is closing.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// A request body that notes when it has been read to its end.
pub struct TrackedBody {
    inner: Incoming,
    done: Arc<AtomicBool>,
}

impl TrackedBody {
    /// The body, and the flag it sets once read to its end (set at once for an
    /// empty body).
    pub fn new(inner: Incoming) -> (Self, Arc<AtomicBool>) {
        let done = Arc::new(AtomicBool::new(inner.is_end_stream()));
        (Self { inner, done: done.clone() }, done)
    }
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.done.store(true, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
