//! The response body type: either a backend body streamed through untouched, or a small
//! body the sidecar wrote itself. An enum rather than a boxed trait object, so the hot
//! path does not allocate for it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::pool::Lease;

pin_project_lite::pin_project! {
    #[project = ProxyBodyProj]
    pub enum ProxyBody {
        /// Streamed from the backend, frame by frame (SSE, long polls, downloads). The
        /// lease gives the backend connection back once the body has been read to its end.
        Stream { #[pin] inner: Incoming, lease: Option<Lease> },
        /// Written by the sidecar (errors, admin endpoints).
        Full { #[pin] inner: Full<Bytes> },
        /// A streamed body that ends as soon as `stop` completes (a revoked user's SSE
        /// stream or open-ended response).
        /// `None` once it has: the body is over.
        Watched { inner: Box<ProxyBody>, stop: Option<Pin<Box<dyn Future<Output = ()> + Send>>> },
    }
}

impl ProxyBody {
    pub fn full(b: impl Into<Bytes>) -> Self {
        ProxyBody::Full {
            inner: Full::new(b.into()),
        }
    }
    pub fn empty() -> Self {
        Self::full(Bytes::new())
    }
    /// `self`, ended early when `stop` completes.
    pub fn watched(self, stop: impl Future<Output = ()> + Send + 'static) -> Self {
        ProxyBody::Watched {
            inner: Box::new(self),
            stop: Some(Box::pin(stop)),
        }
    }
    pub fn stream(inner: Incoming, mut lease: Option<Lease>) -> Self {
        if let Some(l) = &mut lease {
            // No body at all (204, 304, HEAD, Content-Length: 0): free at once.
            l.done = inner.is_end_stream();
        }
        ProxyBody::Stream { inner, lease }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.project() {
            ProxyBodyProj::Stream { mut inner, lease } => {
                let polled = inner.as_mut().poll_frame(cx);
                if let Some(l) = lease {
                    l.done = match &polled {
                        Poll::Ready(None) => true,
                        Poll::Ready(Some(Ok(_))) => inner.is_end_stream(),
                        _ => false,
                    };
                }
                polled
            }
            ProxyBodyProj::Watched { inner, stop } => {
                let Some(s) = stop else {
                    return Poll::Ready(None);
                };
                if s.as_mut().poll(cx).is_ready() {
                    // Ended here (a finished future is never polled again); the backend
                    // connection behind it is not reused.
                    *stop = None;
                    return Poll::Ready(None);
                }
                Pin::new(inner.as_mut()).poll_frame(cx)
            }
            ProxyBodyProj::Full { inner } => match inner.poll_frame(cx) {
                Poll::Ready(Some(Ok(f))) => Poll::Ready(Some(Ok(f))),
                Poll::Ready(Some(Err(never))) => match never {},
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Stream { inner, .. } => inner.is_end_stream(),
            ProxyBody::Full { inner } => inner.is_end_stream(),
            ProxyBody::Watched { inner, stop } => stop.is_none() || inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Stream { inner, .. } => inner.size_hint(),
            ProxyBody::Full { inner } => inner.size_hint(),
            ProxyBody::Watched { inner, .. } => inner.size_hint(),
        }
    }
}
