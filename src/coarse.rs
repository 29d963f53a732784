//! Coarse deadlines for what is armed on every request and almost never fires: hyper's
//! header-read timeout and the backend response timeout. A tokio timer is a wheel insert
//! on its first wait and a removal under the time driver's lock when dropped (callgrind:
//! about 2 300 instructions per request for the two). Here each worker thread keeps a
//! plain slab of (deadline, waker) that one tick every [`TICK`] checks: arming is a push,
//! disarming a slot freed. A deadline fires up to one tick late, never early.
//!
//! A deadline made on a thread without a slab (outside the workers) is a tokio timer.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// How often a worker checks its deadlines: the most a deadline fires late.
pub const TICK: Duration = Duration::from_millis(100);

#[derive(Default)]
struct Slab {
    entries: Vec<Option<Entry>>,
    free: Vec<usize>,
}

struct Entry {
    deadline: Instant,
    waker: Waker,
    fired: bool,
}

/// One worker's deadlines. A mutex, though only its own thread uses it in practice: a
/// deadline may be dropped anywhere, and the lock is never contended.
type Shared = Arc<Mutex<Slab>>;

fn lock(s: &Shared) -> MutexGuard<'_, Slab> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

thread_local! {
    static SLAB: RefCell<Option<Shared>> = const { RefCell::new(None) };
}

/// Gives this thread a slab and returns the task that fires its deadlines (spawn it on
/// this thread's runtime). The tick also keeps the runtime's time driver from ever being
/// without a pending wake-up, so arming a tokio timer never has to wake the driver.
pub fn start() -> impl Future<Output = ()> + Send + 'static {
    let slab: Shared = Arc::default();
    SLAB.with(|s| *s.borrow_mut() = Some(slab.clone()));
    async move {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut due = Vec::new();
        loop {
            tick.tick().await;
            let now = Instant::now();
            {
                let mut s = lock(&slab);
                for e in s.entries.iter_mut().flatten() {
                    if !e.fired && e.deadline <= now {
                        e.fired = true;
                        due.push(std::mem::replace(&mut e.waker, Waker::noop().clone()));
                    }
                }
            }
            // Woken outside the lock: a woken task may drop its deadline at once.
            due.drain(..).for_each(Waker::wake);
        }
    }
}

/// A future that resolves at (or up to one tick after) `deadline`.
pub struct Deadline {
    deadline: Instant,
    state: State,
}

enum State {
    /// On a worker, not waited on yet: costs nothing until the first `Pending`.
    Idle(Shared),
    Waiting(Shared, usize),
    Fired,
    /// No slab on this thread.
    Tokio(Pin<Box<tokio::time::Sleep>>),
}

impl Deadline {
    pub fn at(deadline: Instant) -> Deadline {
        let state = match SLAB.with(|s| s.borrow().clone()) {
            Some(slab) => State::Idle(slab),
            None => State::Tokio(Box::pin(tokio::time::sleep_until(deadline.into()))),
        };
        Deadline { deadline, state }
    }

    pub fn after(d: Duration) -> Deadline {
        Deadline::at(Instant::now() + d)
    }
}

impl Future for Deadline {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        match &mut this.state {
            State::Idle(slab) => {
                let slab = slab.clone();
                let entry = Entry {
                    deadline: this.deadline,
                    waker: cx.waker().clone(),
                    fired: false,
                };
                let i = {
                    let mut s = lock(&slab);
                    match s.free.pop() {
                        Some(i) => {
                            s.entries[i] = Some(entry);
                            i
                        }
                        None => {
                            s.entries.push(Some(entry));
                            s.entries.len() - 1
                        }
                    }
                };
                this.state = State::Waiting(slab, i);
                Poll::Pending
            }
            State::Waiting(slab, i) => {
                let mut s = lock(slab);
                let Some(e) = s.entries.get_mut(*i).and_then(Option::as_mut) else {
                    return Poll::Ready(());
                };
                if e.fired {
                    s.entries[*i] = None;
                    s.free.push(*i);
                    drop(s);
                    this.state = State::Fired;
                    return Poll::Ready(());
                }
                if !e.waker.will_wake(cx.waker()) {
                    e.waker = cx.waker().clone();
                }
                Poll::Pending
            }
            State::Fired => Poll::Ready(()),
            State::Tokio(sleep) => sleep.as_mut().poll(cx),
        }
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        if let State::Waiting(slab, i) = &self.state {
            let mut s = lock(slab);
            if let Some(slot) = s.entries.get_mut(*i) {
                *slot = None;
                s.free.push(*i);
            }
        }
    }
}

impl hyper::rt::Sleep for Deadline {}

/// hyper's timer for the HTTP/1 server (its header-read timeout).
#[derive(Clone, Copy, Debug, Default)]
pub struct Timer;

impl hyper::rt::Timer for Timer {
    fn sleep(&self, d: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Deadline::after(d))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Deadline::at(deadline))
    }
}

pin_project_lite::pin_project! {
    /// `fut`, or `Err(Elapsed)` once its deadline has passed.
    pub struct Timeout<F> {
        #[pin]
        fut: F,
        #[pin]
        deadline: Deadline,
    }
}

/// The deadline passed first.
#[derive(Debug)]
pub struct Elapsed;

/// As `tokio::time::timeout`, on a coarse deadline.
pub fn timeout<F: Future>(d: Duration, fut: F) -> Timeout<F> {
    Timeout {
        fut,
        deadline: Deadline::after(d),
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(v) = this.fut.poll(cx) {
            return Poll::Ready(Ok(v));
        }
        this.deadline.poll(cx).map(|()| Err(Elapsed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on_worker<F: Future>(f: F) -> F::Output {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        rt.block_on(async {
            tokio::spawn(start());
            f.await
        })
    }

    fn slab_len() -> (usize, usize) {
        SLAB.with(|s| {
            let s = s.borrow();
            let s = lock(s.as_ref().expect("a slab"));
            (s.entries.iter().flatten().count(), s.entries.len())
        })
    }

    #[test]
    fn a_deadline_never_fires_early_and_at_most_a_tick_late() {
        on_worker(async {
            for ms in [0u64, 30, 250] {
                let t = Instant::now();
                Deadline::after(Duration::from_millis(ms)).await;
                let took = t.elapsed();
                assert!(
                    took >= Duration::from_millis(ms),
                    "{ms} ms fired after {took:?}"
                );
                // A tick, plus slack for a loaded machine.
                assert!(took < Duration::from_millis(ms) + TICK + Duration::from_secs(1));
            }
            assert_eq!(slab_len().0, 0, "fired deadlines keep no slot");
        })
    }

    #[test]
    fn a_timeout_passes_the_value_through_or_elapses() {
        on_worker(async {
            let v = timeout(Duration::from_secs(5), async { 7 }).await;
            assert!(matches!(v, Ok(7)));
            let slow = tokio::time::sleep(Duration::from_secs(5));
            let t = Instant::now();
            assert!(timeout(Duration::from_millis(150), slow).await.is_err());
            assert!(t.elapsed() >= Duration::from_millis(150));
        })
    }

    #[test]
    fn dropped_deadlines_give_their_slots_back() {
        on_worker(async {
            for _ in 0..1000 {
                // Waited on once (so it holds a slot), then dropped unfired.
                let r = timeout(Duration::from_secs(60), tokio::task::yield_now()).await;
                assert!(r.is_ok());
                let mut d = std::pin::pin!(Deadline::after(Duration::from_secs(60)));
                let w = Waker::noop();
                assert!(d.as_mut().poll(&mut Context::from_waker(w)).is_pending());
            }
            let (live, len) = slab_len();
            assert_eq!(live, 0);
            assert!(
                len <= 2,
                "{len} slots for at most two deadlines alive at once"
            );
        })
    }

    #[test]
    fn without_a_slab_a_deadline_is_a_tokio_timer() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let t = Instant::now();
            Deadline::after(Duration::from_millis(50)).await;
            assert!(t.elapsed() >= Duration::from_millis(50));
            assert!(SLAB.with(|s| s.borrow().is_none()));
        })
    }
}
