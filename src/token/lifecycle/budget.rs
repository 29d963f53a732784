//! Budgets for token-service calls: a rate per replica and per user, and the back-off a
//! `429` asked for. Checked only by the replica about to call (coalesced requests spend
//! one call), so valid traffic and herds on one token are never limited.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moka::sync::Cache;

/// A token bucket: `rate` per second, holding at most `burst`.
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: f64) -> Bucket {
        Bucket {
            tokens: burst,
            at: Instant::now(),
        }
    }

    /// Takes one token, or says how long until one is there.
    fn take(&mut self, rate: f64, burst: f64) -> Result<(), Duration> {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * rate).min(burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
        }
    }
}

pub(super) struct Budget {
    call: &'static str,
    per_second: f64,
    per_user_per_second: f64,
    global: Mutex<Bucket>,
    users: Cache<String, Arc<Mutex<Bucket>>>,
    /// Set by a `429`: no call before this.
    paused_until: Mutex<Option<Instant>>,
}

/// A user's bucket holds a few calls (a burst of tabs), refilled at the per-minute rate.
const USER_BURST: f64 = 3.0;

impl Budget {
    pub(super) fn new(call: &'static str, per_second: u32, per_user_per_minute: u32) -> Budget {
        let per_second = f64::from(per_second);
        Budget {
            call,
            per_second,
            per_user_per_second: f64::from(per_user_per_minute) / 60.0,
            global: Mutex::new(Bucket::full(per_second.max(1.0))),
            users: Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(Duration::from_secs(120))
                .build(),
            paused_until: Mutex::new(None),
        }
    }

    /// May this replica call now for `user`? `Err` holds how long until it may.
    pub(super) fn check(&self, user: &str) -> Result<(), Duration> {
        if let Some(until) = *lock(&self.paused_until) {
            let now = Instant::now();
            if now < until {
                return self.refused("retry_after", until - now);
            }
        }
        if self.per_user_per_second > 0.0 {
            let b = self
                .users
                .get_with_by_ref(user, || Arc::new(Mutex::new(Bucket::full(USER_BURST))));
            let taken = lock(&b).take(self.per_user_per_second, USER_BURST);
            if let Err(wait) = taken {
                return self.refused("user", wait);
            }
        }
        if self.per_second > 0.0 {
            let taken = lock(&self.global).take(self.per_second, self.per_second.max(1.0));
            if let Err(wait) = taken {
                return self.refused("global", wait);
            }
        }
        Ok(())
    }

    fn refused(&self, limit: &'static str, wait: Duration) -> Result<(), Duration> {
        metrics::counter!("auth_sidecar_token_service_budget_total", "call" => self.call, "limit" => limit)
            .increment(1);
        Err(wait.max(Duration::from_secs(1)))
    }

    /// The token service answered `429`: no call for `d`.
    pub(super) fn pause(&self, d: Duration) {
        let until = Instant::now() + d;
        let mut g = lock(&self.paused_until);
        if g.is_none_or(|t| t < until) {
            *g = Some(until);
            crate::request_log::request_event!(
                WARN,
                call = self.call,
                seconds = d.as_secs(),
                "token service asked to slow down (429): no calls until then"
            );
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}
