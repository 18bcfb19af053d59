use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::Script;

use super::bounded;
use crate::backend::{RateDecision, RateLimiter, Result};

/// Counts and starts the window in one atomic step, so any number of API
/// processes share one exact limit. The window starts at a key's first
/// request and lasts 60 s (Redis's clock, not the callers').
const LUA: &str = r#"
local count = redis.call('INCR', KEYS[1])
if count == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {count, ttl}
"#;

const WINDOW_MS: u64 = 60_000;

pub struct RedisRateLimiter {
    conn: ConnectionManager,
    script: Script,
    limit: u32,
    prefix: String,
}

impl RedisRateLimiter {
    /// `prefix` namespaces the keys (e.g. per deployment).
    pub fn new(conn: ConnectionManager, limit_per_minute: u32, prefix: &str) -> Self {
        RedisRateLimiter {
            conn,
            script: Script::new(LUA),
            limit: limit_per_minute,
            prefix: prefix.to_string(),
        }
    }
}

#[async_trait]
impl RateLimiter for RedisRateLimiter {
    async fn check(&self, key: &str) -> Result<RateDecision> {
        let mut conn = self.conn.clone();
        let mut call = self.script.key(format!("{}ratelimit:{key}", self.prefix));
        call.arg(WINDOW_MS);
        let (count, ttl_ms): (u64, i64) = bounded("rate limit script", call.invoke_async(&mut conn)).await?;
        let count = u32::try_from(count).unwrap_or(u32::MAX);
        Ok(RateDecision {
            allowed: count <= self.limit,
            limit: self.limit,
            remaining: self.limit.saturating_sub(count),
            reset_secs: (ttl_ms.max(0) as u64).div_ceil(1000),
        })
    }

    async fn ping(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        bounded("ping", redis::cmd("PING").query_async::<String>(&mut conn)).await?;
        Ok(())
    }
}
