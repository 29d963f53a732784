//! The request id on log lines, without a span per request. A leaf: every layer that
//! logs on the request path (the token layer included) may use it.

// A span per request gave every line logged while handling
// it the id, at ~5 % of the request's instructions (a registry slot, its fields
// formatted at creation, enter and exit on every poll). Lines are rare and requests are
// not, so the id is kept where a line can find it instead: in a thread-local, set
// around each poll of the request's future, read only when a line is logged.
thread_local! {
    static REQUEST_ID: std::cell::Cell<Option<http::HeaderValue>> =
        const { std::cell::Cell::new(None) };
}

pin_project_lite::pin_project! {
    /// A request's future, polled with its id as this thread's current request id.
    pub struct WithRequestId<F> {
        id: Option<http::HeaderValue>,
        #[pin]
        fut: F,
    }
}

impl<F> WithRequestId<F> {
    pub fn new(id: http::HeaderValue, fut: F) -> Self {
        WithRequestId { id: Some(id), fut }
    }
}

impl<F: std::future::Future> std::future::Future for WithRequestId<F> {
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let this = self.project();
        let _current = Current::enter(this.id);
        this.fut.poll(cx)
    }
}

/// Puts the id in the thread-local for one poll and takes it back after, also when the
/// poll unwinds. Moves, never clones: a poll costs two swaps.
struct Current<'a> {
    id: &'a mut Option<http::HeaderValue>,
    outer: Option<http::HeaderValue>,
}

impl<'a> Current<'a> {
    fn enter(id: &'a mut Option<http::HeaderValue>) -> Self {
        let outer = REQUEST_ID.with(|c| c.replace(id.take()));
        Current { id, outer }
    }
}

impl Drop for Current<'_> {
    fn drop(&mut self) {
        *self.id = REQUEST_ID.with(|c| c.replace(self.outer.take()));
    }
}

/// Calls `f` with the id of the request being polled on this thread (none outside one).
pub fn with_request_id<R>(f: impl FnOnce(Option<&str>) -> R) -> R {
    REQUEST_ID.with(|c| {
        let id = c.take();
        let r = f(id.as_ref().and_then(|v| v.to_str().ok()));
        c.set(id);
        r
    })
}

/// `tracing::event!` at `$level` (`WARN`, `INFO`, ...) with the current request's id as
/// the `request_id` field (absent outside a request). For lines logged on the request
/// path.
macro_rules! request_event {
    ($level:ident, $($rest:tt)+) => {
        $crate::request_log::with_request_id(|request_id| {
            ::tracing::event!(
                ::tracing::Level::$level,
                request_id = request_id.map(::tracing::field::display),
                $($rest)+
            )
        })
    };
}
pub(crate) use request_event;
