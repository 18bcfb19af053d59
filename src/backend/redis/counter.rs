use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::Script;

use super::bounded;
use crate::backend::{FunctionLoad, JobCounter, Result, JOB_COUNT_HORIZON};

/// Counts a job unless the function has `limit` (ARGV[3], 0 = none) counted.
/// Sorted sets scored by expiry (Redis's clock), so entries of lost jobs and
/// dead workers lapse on their own.
const ADMIT: &str = r#"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 1 end
local limit = tonumber(ARGV[3])
if limit > 0 and redis.call('ZCARD', KEYS[1]) >= limit then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[4])
return 1
"#;

/// Takes (or renews) a slot unless `max` (ARGV[3]) are held.
const ACQUIRE: &str = r#"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[4])
return 1
"#;

/// Live counts of every indexed function; forgets functions with none.
const LOAD: &str = r#"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local out = {}
for _, f in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local jobs = ARGV[1] .. f .. ':jobs'
  local slots = ARGV[1] .. f .. ':slots'
  redis.call('ZREMRANGEBYSCORE', jobs, '-inf', now)
  redis.call('ZREMRANGEBYSCORE', slots, '-inf', now)
  local j = redis.call('ZCARD', jobs)
  local s = redis.call('ZCARD', slots)
  if j == 0 and s == 0 then
    redis.call('SREM', KEYS[1], f)
  else
    table.insert(out, f)
    table.insert(out, j)
    table.insert(out, s)
  end
end
return out
"#;

/// Job counts and run slots in Redis, shared by every API process and worker:
/// `fn:{id}:jobs` and `fn:{id}:slots` sorted sets, `fn:index` of function ids.
pub struct RedisJobCounter {
    conn: ConnectionManager,
    admit: Script,
    acquire: Script,
    load: Script,
    prefix: String,
}

impl RedisJobCounter {
    pub fn new(conn: ConnectionManager, prefix: &str) -> Self {
        RedisJobCounter {
            conn,
            admit: Script::new(ADMIT),
            acquire: Script::new(ACQUIRE),
            load: Script::new(LOAD),
            prefix: format!("{prefix}fn:"),
        }
    }

    fn key(&self, function_id: &str, kind: &str) -> String {
        format!("{}{function_id}:{kind}", self.prefix)
    }

    fn index(&self) -> String {
        format!("{}index", self.prefix)
    }
}

#[async_trait]
impl JobCounter for RedisJobCounter {
    async fn admit(&self, function_id: &str, job_id: &str, limit: Option<u32>) -> Result<bool> {
        let mut conn = self.conn.clone();
        let mut call = self.admit.key(self.key(function_id, "jobs"));
        call.key(self.index())
            .arg(job_id)
            .arg(JOB_COUNT_HORIZON.as_millis() as u64)
            .arg(limit.unwrap_or(0))
            .arg(function_id);
        let admitted: i64 = bounded("count job", call.invoke_async(&mut conn)).await?;
        Ok(admitted == 1)
    }

    async fn done(&self, function_id: &str, job_id: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: i64 = bounded(
            "uncount job",
            redis::cmd("ZREM")
                .arg(self.key(function_id, "jobs"))
                .arg(job_id)
                .query_async(&mut conn),
        )
        .await?;
        Ok(())
    }

    async fn acquire(&self, function_id: &str, job_id: &str, max: u32, lease: Duration) -> Result<bool> {
        let mut conn = self.conn.clone();
        let mut call = self.acquire.key(self.key(function_id, "slots"));
        call.key(self.index())
            .arg(job_id)
            .arg(lease.as_millis().max(1) as u64)
            .arg(max)
            .arg(function_id);
        let got: i64 = bounded("take run slot", call.invoke_async(&mut conn)).await?;
        Ok(got == 1)
    }

    async fn release(&self, function_id: &str, job_id: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: i64 = bounded(
            "release run slot",
            redis::cmd("ZREM")
                .arg(self.key(function_id, "slots"))
                .arg(job_id)
                .query_async(&mut conn),
        )
        .await?;
        Ok(())
    }

    async fn load(&self) -> Result<BTreeMap<String, FunctionLoad>> {
        let mut conn = self.conn.clone();
        let mut call = self.load.key(self.index());
        call.arg(&self.prefix);
        let flat: Vec<redis::Value> = bounded("function load", call.invoke_async(&mut conn)).await?;
        let mut out = BTreeMap::new();
        for chunk in flat.chunks(3) {
            if let [f, j, s] = chunk {
                let (Ok(f), Ok(j), Ok(s)) = (
                    redis::from_redis_value::<String>(f),
                    redis::from_redis_value::<u64>(j),
                    redis::from_redis_value::<u64>(s),
                ) else {
                    continue;
                };
                out.insert(f, FunctionLoad { jobs: j, running: s });
            }
        }
        Ok(out)
    }
}
