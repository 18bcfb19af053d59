use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::backend::{rate_decision, Error, Quota, RateDecision, RateLimiter, Result};

/// Keys kept before idle ones are swept (an address scan must not grow the
/// map without bound).
const SWEEP_ABOVE: usize = 10_000;

/// A sliding-window log per key, in process memory: the times of the allowed
/// requests of the last window (at most `limit` per key), on the monotonic
/// clock. Same semantics as the Redis limiter.
pub struct InProcessRateLimiter {
    quota: Quota,
    logs: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl InProcessRateLimiter {
    pub fn new(quota: Quota) -> Self {
        InProcessRateLimiter {
            quota,
            logs: Mutex::new(HashMap::new()),
        }
    }
}

#[async_trait]
impl RateLimiter for InProcessRateLimiter {
    async fn check(&self, key: &str) -> Result<RateDecision> {
        let now = Instant::now();
        let window = self.quota.window;
        let live = |t: &Instant| now.saturating_duration_since(*t) < window;
        let mut logs = self.logs.lock().map_err(|_| Error::Unavailable {
            message: "rate limiter lock poisoned".into(),
            source: None,
        })?;
        if logs.len() > SWEEP_ABOVE {
            logs.retain(|_, log| log.back().is_some_and(live));
        }
        let log = logs.entry(key.to_string()).or_default();
        while log.front().is_some_and(|t| !live(t)) {
            log.pop_front();
        }
        let allowed = log.len() < self.quota.limit as usize;
        if allowed {
            log.push_back(now);
        }
        let left = |t: Option<&Instant>| t.map_or(Duration::ZERO, |t| window.saturating_sub(now - *t));
        let counted = u32::try_from(log.len()).unwrap_or(u32::MAX);
        Ok(rate_decision(
            self.quota,
            allowed,
            counted,
            left(log.front()),
            left(log.back()),
        ))
    }

    fn quota(&self) -> Quota {
        self.quota
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}
