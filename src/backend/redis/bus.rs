use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use redis::aio::ConnectionManager;
use redis::Script;
use tokio_util::sync::CancellationToken;

use super::bounded;
use super::subscriber::{self, Topic};
use crate::backend::fanout::Waiters;
use crate::backend::{Error, Result, ResultBus, Subscription};
use crate::model::{JobRecord, JobResult};

/// Writes a non-terminal state unless the job is already terminal.
const SET_STATE: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, rec = pcall(cjson.decode, cur)
  if ok and rec['status'] ~= 'PENDING' and rec['status'] ~= 'RUNNING' then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"#;

/// Stores the terminal record and publishes the result, unless a terminal
/// record exists: then returns it (the first result wins), publishing nothing.
const PUBLISH: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, rec = pcall(cjson.decode, cur)
  if ok and rec['status'] ~= 'PENDING' and rec['status'] ~= 'RUNNING' then return cur end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return false
"#;

/// Job records as `job:{id}` (with a TTL) and results published on
/// `result:{id}` — the original worker's key and channel, and for a finished
/// job the original's value too (the result JSON), so an original
/// controller reads what this worker finishes and this controller what an
/// original worker finishes (docs/compat-wire.md). One shared subscriber
/// connection (pattern `result:*`) fans results out to waiting requests.
pub struct RedisResultBus {
    conn: ConnectionManager,
    set_state: Script,
    publish: Script,
    ttl_secs: u64,
    prefix: String,
    waiters: Waiters,
    listening: Arc<AtomicBool>,
    stop: CancellationToken,
}

impl Drop for RedisResultBus {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl RedisResultBus {
    /// `prefix` namespaces keys and channels; the original platform uses none.
    pub fn new(client: redis::Client, conn: ConnectionManager, ttl: Duration, prefix: &str) -> Self {
        let waiters = Waiters::default();
        let listening = Arc::new(AtomicBool::new(false));
        let stop = CancellationToken::new();
        let channel_prefix = format!("{prefix}result:");
        let (catching_up, delivering) = (waiters.clone(), waiters.clone());
        let (recover_from, prefix_owned) = (conn.clone(), prefix.to_string());
        tokio::spawn(subscriber::follow(
            client,
            Topic::Pattern(format!("{prefix}result:*")),
            "result",
            listening.clone(),
            stop.clone(),
            // Results stored while it was away reach their callers now.
            move || catch_up(recover_from.clone(), catching_up.clone(), prefix_owned.clone()),
            move |msg| {
                let channel = msg.get_channel_name();
                if !channel.starts_with(&channel_prefix) {
                    return;
                }
                match msg
                    .get_payload::<String>()
                    .map(|p| serde_json::from_str::<JobResult>(&p))
                {
                    Ok(Ok(result)) => delivering.deliver(&result),
                    _ => tracing::warn!(channel, "unreadable result message"),
                }
            },
        ));
        RedisResultBus {
            conn,
            set_state: Script::new(SET_STATE),
            publish: Script::new(PUBLISH),
            ttl_secs: ttl.as_secs().max(1),
            prefix: prefix.to_string(),
            waiters,
            listening,
            stop,
        }
    }

    /// Waits until the shared subscriber is connected (at most `within`), so a
    /// process reports healthy only once results can reach its callers.
    pub async fn ready(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while !self.listening.load(Ordering::Relaxed) {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    fn job_key(&self, id: &str) -> String {
        format!("{}job:{id}", self.prefix)
    }
}

/// What `job:{id}` holds: a record of a job in progress (`PENDING`,
/// `RUNNING`, with `updatedAt`), or a terminal job's result itself, as the
/// original worker keeps it and the original controller's `/status` returns
/// it: ours with `submittedAt` beside, an original worker's without.
fn decode(raw: &str) -> Result<JobRecord> {
    let unreadable = |e: serde_json::Error| Error::Invalid(format!("unreadable job record: {e}"));
    let value: serde_json::Value = serde_json::from_str(raw).map_err(unreadable)?;
    if value.get("updatedAt").is_some() {
        return serde_json::from_value(value).map_err(unreadable);
    }
    let submitted_at = value
        .get("submittedAt")
        .and_then(|t| serde_json::from_value::<DateTime<Utc>>(t.clone()).ok());
    let mut result: JobResult = serde_json::from_value(value).map_err(unreadable)?;
    result.extra.remove("submittedAt");
    Ok(JobRecord::finished(submitted_at.unwrap_or(result.finished_at), result))
}

/// The value kept at `job:{id}` for a terminal record (see `decode`).
fn terminal_value(record: &JobRecord) -> Result<String> {
    let invalid = |e: serde_json::Error| Error::Invalid(e.to_string());
    let Some(result) = &record.result else {
        return serde_json::to_string(record).map_err(invalid);
    };
    let mut value = serde_json::to_value(result).map_err(invalid)?;
    if let Some(fields) = value.as_object_mut() {
        fields.insert(
            "submittedAt".into(),
            serde_json::to_value(record.submitted_at).map_err(invalid)?,
        );
    }
    serde_json::to_string(&value).map_err(invalid)
}

/// Delivers the results of pending waiters that were stored while the
/// subscription was away.
async fn catch_up(mut conn: ConnectionManager, waiters: Waiters, prefix: String) {
    let ids = waiters.pending();
    for id in ids {
        let raw: Option<String> = redis::cmd("GET")
            .arg(format!("{prefix}job:{id}"))
            .query_async(&mut conn)
            .await
            .unwrap_or(None);
        if let Some(result) = raw.and_then(|r| decode(&r).ok()).and_then(|r| r.result) {
            waiters.deliver(&result);
        }
    }
}

#[async_trait]
impl ResultBus for RedisResultBus {
    async fn set_state(&self, record: &JobRecord) -> Result<()> {
        if record.status.is_terminal() {
            return Err(Error::Invalid("terminal states are set by publish".into()));
        }
        let json = serde_json::to_string(record).map_err(|e| Error::Invalid(e.to_string()))?;
        let mut conn = self.conn.clone();
        let mut call = self.set_state.key(self.job_key(&record.request_id));
        call.arg(json).arg(self.ttl_secs);
        let _: i64 = bounded("set job state", call.invoke_async(&mut conn)).await?;
        Ok(())
    }

    async fn get(&self, request_id: &str) -> Result<Option<JobRecord>> {
        let mut conn = self.conn.clone();
        let raw: Option<String> = bounded(
            "get job",
            redis::cmd("GET").arg(self.job_key(request_id)).query_async(&mut conn),
        )
        .await?;
        raw.map(|r| decode(&r)).transpose()
    }

    async fn publish(&self, submitted_at: DateTime<Utc>, result: &JobResult) -> Result<JobRecord> {
        if !result.status.is_terminal() {
            return Err(Error::Invalid(format!(
                "{} is not a terminal status",
                result.status.as_str()
            )));
        }
        let record = JobRecord::finished(submitted_at, result.clone());
        let record_json = terminal_value(&record)?;
        let result_json = serde_json::to_string(result).map_err(|e| Error::Invalid(e.to_string()))?;
        let mut conn = self.conn.clone();
        let mut call = self.publish.key(self.job_key(&result.request_id));
        call.arg(record_json)
            .arg(self.ttl_secs)
            .arg(format!("{}result:{}", self.prefix, result.request_id))
            .arg(result_json);
        let existing: Option<String> = bounded("publish result", call.invoke_async(&mut conn)).await?;
        match existing {
            Some(raw) => {
                let winner = decode(&raw)?;
                // A waiter in this process may have missed the first publication.
                if let Some(r) = &winner.result {
                    self.waiters.deliver(r);
                }
                Ok(winner)
            }
            None => Ok(record),
        }
    }

    async fn subscribe(&self, request_id: &str) -> Result<Subscription> {
        if !self.listening.load(Ordering::Relaxed) {
            return Err(Error::Unavailable {
                message: "redis result subscription is not connected".into(),
                source: None,
            });
        }
        self.waiters.subscribe(request_id)
    }

    async fn ping(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        bounded("ping", redis::cmd("PING").query_async::<String>(&mut conn)).await?;
        if !self.listening.load(Ordering::Relaxed) {
            return Err(Error::Unavailable {
                message: "redis result subscription is not connected".into(),
                source: None,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_keys_hold_records_in_progress_or_bare_results() {
        let job = crate::backend::conformance::sample_job("f");
        let running = JobRecord::pending(&job).with_status(crate::model::JobStatus::Running);
        let raw = serde_json::to_string(&running).unwrap();
        assert_eq!(decode(&raw).unwrap(), running);

        let mut result = JobResult::platform(&job, crate::model::JobStatus::Error, "E", "m");
        result.stdout = "out".into();
        let finished = JobRecord::finished(job.submitted_at, result.clone());
        let raw = terminal_value(&finished).unwrap();
        let stored: serde_json::Value = serde_json::from_str(&raw).unwrap();
        // The original's shape: the result's fields at the top.
        assert_eq!(stored["status"], "FAILED");
        assert_eq!(stored["stdout"], "out");
        assert_eq!(stored["requestId"], job.request_id.as_str());
        assert!(stored.get("updatedAt").is_none());
        let back = decode(&raw).unwrap();
        assert_eq!(back.submitted_at, job.submitted_at);
        assert_eq!(back.result.as_ref().unwrap(), &result);
        assert_eq!(back, finished);
    }
}
