//! The client's request body on its way to the backend, with an idle limit. A leaf:
//! the backend pool and clients send it; the response side lives in `body`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// Why a client's request body stopped.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error(transparent)]
    Client(#[from] hyper::Error),
    /// No byte of the body arrived for `server.body_read_timeout`.
    #[error("the client sent no body bytes for too long")]
    Idle,
}

pin_project_lite::pin_project! {
    /// A client's request body on its way to the backend, cut off when no byte of it
    /// arrives for `idle` (a client dripping its upload cannot hold a backend connection
    /// forever). The timer exists only once the body has had to wait.
    pub struct Inbound {
        #[pin]
        inner: Incoming,
        idle: std::time::Duration,
        timer: Option<Pin<Box<tokio::time::Sleep>>>,
    }
}

impl Inbound {
    pub fn new(inner: Incoming, idle: std::time::Duration) -> Inbound {
        Inbound {
            inner,
            idle,
            timer: None,
        }
    }
}

impl Body for Inbound {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Pending => {
                let idle = *this.idle;
                let t = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match t.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(BodyError::Idle))),
                    Poll::Pending => Poll::Pending,
                }
            }
            Poll::Ready(r) => {
                if let Some(t) = this.timer {
                    t.as_mut().reset(tokio::time::Instant::now() + *this.idle);
                }
                Poll::Ready(r.map(|f| f.map_err(BodyError::Client)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether an error (a hyper client error, say) was caused by [`BodyError::Idle`].
pub fn is_idle_body(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if matches!(err.downcast_ref::<BodyError>(), Some(BodyError::Idle)) {
            return true;
        }
        cur = err.source();
    }
    false
}
