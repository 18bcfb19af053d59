use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

use crate::backend::{Error, RateDecision, RateLimiter, Result};

const WINDOW_SECS: u64 = 60;

/// Fixed one-minute windows per key, in process memory (the same semantics as
/// the Redis Lua limiter: INCR, expire at the window's end).
pub struct InProcessRateLimiter {
    limit: u32,
    windows: Mutex<HashMap<String, (u64, u32)>>,
}

impl InProcessRateLimiter {
    pub fn new(limit_per_minute: u32) -> Self {
        InProcessRateLimiter {
            limit: limit_per_minute,
            windows: Mutex::new(HashMap::new()),
        }
    }
}

#[async_trait]
impl RateLimiter for InProcessRateLimiter {
    async fn check(&self, key: &str) -> Result<RateDecision> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let window = now / WINDOW_SECS;
        let mut windows = self.windows.lock().map_err(|_| Error::Unavailable {
            message: "rate limiter lock poisoned".into(),
            source: None,
        })?;
        if windows.len() > 100_000 {
            windows.retain(|_, (w, _)| *w == window);
        }
        let slot = windows.entry(key.to_string()).or_insert((window, 0));
        if slot.0 != window {
            *slot = (window, 0);
        }
        slot.1 = slot.1.saturating_add(1);
        let count = slot.1;
        Ok(RateDecision {
            allowed: count <= self.limit,
            limit: self.limit,
            remaining: self.limit.saturating_sub(count),
            reset_secs: WINDOW_SECS - now % WINDOW_SECS,
        })
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}
