use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::Script;

use super::bounded;
use crate::backend::{rate_decision, Quota, RateDecision, RateLimiter, Result};

/// A sliding-window log in one sorted set per key: members are the allowed
/// requests of the last window, scored by Redis's clock in microseconds (so
/// every API process shares one exact limit and one clock). Trimming,
/// counting and adding happen in one atomic step. A member is the TIME pair
/// plus the count, unique even for two requests in one microsecond.
///
/// Returns `{allowed, counted, µs until the oldest leaves, µs until the
/// newest leaves}`.
const LUA: &str = r#"
local limit = tonumber(ARGV[1])
local window_ms = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = window_ms * 1000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
local allowed = 0
if count < limit then
  redis.call('ZADD', KEYS[1], now, t[1] .. '.' .. t[2] .. '-' .. count)
  count = count + 1
  allowed = 1
end
if count == 0 then
  return {allowed, 0, 0, 0}
end
redis.call('PEXPIRE', KEYS[1], window_ms)
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local newest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
return {allowed, count, tonumber(oldest[2]) + window - now, tonumber(newest[2]) + window - now}
"#;

pub struct RedisRateLimiter {
    conn: ConnectionManager,
    script: Script,
    quota: Quota,
    key_prefix: String,
}

impl RedisRateLimiter {
    /// Keys are `key_prefix` + the checked key; limiters with different
    /// quotas need different prefixes. (Not the fixed-window `ratelimit:`
    /// keys of earlier versions, which held a counter: an old and a new
    /// API process sharing one Redis during an upgrade must not meet each
    /// other's key types.)
    pub fn new(conn: ConnectionManager, quota: Quota, key_prefix: &str) -> Self {
        RedisRateLimiter {
            conn,
            script: Script::new(LUA),
            quota,
            key_prefix: key_prefix.to_string(),
        }
    }
}

#[async_trait]
impl RateLimiter for RedisRateLimiter {
    async fn check(&self, key: &str) -> Result<RateDecision> {
        let mut conn = self.conn.clone();
        let mut call = self.script.key(format!("{}{key}", self.key_prefix));
        call.arg(self.quota.limit)
            .arg(u64::try_from(self.quota.window.as_millis()).unwrap_or(u64::MAX).max(1));
        let (allowed, counted, oldest_us, newest_us): (i64, i64, i64, i64) =
            bounded("rate limit script", call.invoke_async(&mut conn)).await?;
        let micros = |us: i64| Duration::from_micros(u64::try_from(us).unwrap_or(0));
        Ok(rate_decision(
            self.quota,
            allowed == 1,
            u32::try_from(counted).unwrap_or(u32::MAX),
            micros(oldest_us),
            micros(newest_us),
        ))
    }

    fn quota(&self) -> Quota {
        self.quota
    }

    async fn ping(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        bounded("ping", redis::cmd("PING").query_async::<String>(&mut conn)).await?;
        Ok(())
    }
}
