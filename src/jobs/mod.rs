//! The life of a job beyond one run: where its outcome is kept for good,
//! retries and dead letters, idempotency keys and large inputs. The rules are
//! pure (`policy`); `Ledger` keeps the durable records and `Jobs` joins it to
//! the fast result bus, for the API and the worker alike.

pub mod policy;

use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::backend::{Error, JobCounter, RecordStore, Result, ResultBus, Subscription};
use crate::model::{DeadLetter, JobRecord, JobResult};

/// Progress on the bus younger than this is taken without asking the ledger.
const PROGRESS_TRUSTED_FOR: chrono::TimeDelta = chrono::TimeDelta::seconds(2);

/// How long an idempotency key holds.
pub const IDEMPOTENCY_WINDOW: chrono::TimeDelta = chrono::TimeDelta::hours(24);

/// Who first used an idempotency key, and with what request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdempotencyClaim {
    pub job_id: String,
    /// Hash of the function id and the request body.
    pub fingerprint: String,
    pub asynchronous: bool,
    pub created_at: DateTime<Utc>,
}

/// The fingerprint of a run request, to tell a retried request from a
/// different one under the same key.
pub fn fingerprint(function_id: &str, body: &serde_json::Value) -> String {
    let mut h = Sha256::new();
    h.update(function_id.as_bytes());
    h.update([0]);
    h.update(body.to_string().as_bytes());
    hex::encode(h.finalize())
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::Invalid(format!("unreadable {what}: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Result<Bytes> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| Error::Invalid(format!("unencodable record: {e}")))
}

/// The durable records of jobs, over a `RecordStore`:
/// `results/{jobId}`, `dead-letters/{functionId}/{jobId}`,
/// `idempotency/{sha256(key)}`, `payloads/{jobId}`.
#[derive(Clone)]
pub struct Ledger {
    store: Arc<dyn RecordStore>,
}

/// True when `part` can be a segment of a record key: ids the platform
/// makes (job and function ids) always can. Anything else (control
/// characters, a `/` that would reach another prefix, a huge string) names
/// no record, and is answered as absent without asking the store, which
/// may not even accept it (S3 cannot list a prefix with control characters).
fn key_part(part: &str) -> bool {
    !part.is_empty() && part.len() <= 256 && !part.chars().any(|c| c.is_control() || c == '/')
}

const RESULTS: &str = "results/";
const DEAD_LETTERS: &str = "dead-letters/";
const IDEMPOTENCY: &str = "idempotency/";
const PAYLOADS: &str = "payloads/";
/// Dead-letter reads in flight when listing them.
const DEAD_LETTER_READS: usize = 16;

impl Ledger {
    pub fn new(store: Arc<dyn RecordStore>) -> Self {
        Ledger { store }
    }

    pub fn store(&self) -> &Arc<dyn RecordStore> {
        &self.store
    }

    /// Keeps the terminal record unless one is kept already; returns the kept one.
    pub async fn finish(&self, record: &JobRecord) -> Result<JobRecord> {
        if !record.status.is_terminal() {
            return Err(Error::Invalid(format!("{} is not terminal", record.status.as_str())));
        }
        let key = format!("{RESULTS}{}", record.request_id);
        match self.store.create(&key, encode(record)?).await? {
            None => Ok(record.clone()),
            Some(existing) => decode("job record", &existing),
        }
    }

    pub async fn result(&self, job_id: &str) -> Result<Option<JobRecord>> {
        if !key_part(job_id) {
            return Ok(None);
        }
        match self.store.get(&format!("{RESULTS}{job_id}")).await? {
            Some(bytes) => decode("job record", &bytes).map(Some),
            None => Ok(None),
        }
    }

    fn dead_letter_key(function_id: &str, job_id: &str) -> String {
        format!("{DEAD_LETTERS}{function_id}/{job_id}")
    }

    pub async fn put_dead_letter(&self, letter: &DeadLetter) -> Result<()> {
        let key = Self::dead_letter_key(&letter.function_id, &letter.job_id);
        self.store.put(&key, encode(letter)?).await
    }

    /// Dead letters, of one function or all, up to `limit`, oldest first.
    pub async fn dead_letters(&self, function_id: Option<&str>, limit: usize) -> Result<Vec<DeadLetter>> {
        let prefix = match function_id {
            Some(f) if !key_part(f) => return Ok(Vec::new()),
            Some(f) => format!("{DEAD_LETTERS}{f}/"),
            None => DEAD_LETTERS.to_string(),
        };
        use futures::{StreamExt, TryStreamExt};
        let keys = self.store.list(&prefix, limit).await?;
        // One read per letter (an S3 GET in production): several at a time.
        let store = &self.store;
        let read: Vec<Option<bytes::Bytes>> = futures::stream::iter(keys)
            .map(|key| async move { store.get(&key).await })
            .buffer_unordered(DEAD_LETTER_READS)
            .try_collect()
            .await?;
        // A letter gone meanwhile (redriven by someone else) is skipped.
        let mut letters = read
            .into_iter()
            .flatten()
            .map(|bytes| decode::<DeadLetter>("dead letter", &bytes))
            .collect::<Result<Vec<_>>>()?;
        letters.sort_by_key(|l| l.dead_lettered_at);
        Ok(letters)
    }

    pub async fn remove_dead_letter(&self, function_id: &str, job_id: &str) -> Result<()> {
        if !key_part(function_id) || !key_part(job_id) {
            return Ok(());
        }
        self.store.delete(&Self::dead_letter_key(function_id, job_id)).await
    }

    /// How many dead letters there are (up to `limit`).
    pub async fn count_dead_letters(&self, limit: usize) -> Result<usize> {
        Ok(self.store.list(DEAD_LETTERS, limit).await?.len())
    }

    /// Claims `key` for `claim`. `None` when this claim won; otherwise the
    /// live claim made first. Claims older than the window are replaced.
    pub async fn claim_idempotency_key(&self, key: &str, claim: &IdempotencyClaim) -> Result<Option<IdempotencyClaim>> {
        let record_key = Self::idempotency_record(key);
        let mut created = self.store.create(&record_key, encode(claim)?).await;
        // A concurrent claim still being written: look again shortly.
        for _ in 0..20 {
            if !matches!(created, Err(Error::Conflict(_))) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
            created = self.store.create(&record_key, encode(claim)?).await;
        }
        match created? {
            None => Ok(None),
            Some(bytes) => {
                let first: IdempotencyClaim = decode("idempotency claim", &bytes)?;
                if claim.created_at.signed_duration_since(first.created_at) > IDEMPOTENCY_WINDOW {
                    self.store.put(&record_key, encode(claim)?).await?;
                    Ok(None)
                } else {
                    Ok(Some(first))
                }
            }
        }
    }

    /// Frees a key whose request was not accepted after all.
    pub async fn release_idempotency_key(&self, key: &str) -> Result<()> {
        self.store.delete(&Self::idempotency_record(key)).await
    }

    fn idempotency_record(key: &str) -> String {
        format!("{IDEMPOTENCY}{}", hex::encode(Sha256::digest(key.as_bytes())))
    }

    /// Keeps a job's input outside its queue message; returns the reference.
    pub async fn put_payload(&self, job_id: &str, input: &serde_json::Value) -> Result<String> {
        let key = format!("{PAYLOADS}{job_id}");
        self.store.put(&key, encode(input)?).await?;
        Ok(key)
    }

    pub async fn payload(&self, key: &str) -> Result<serde_json::Value> {
        match self.store.get(key).await? {
            Some(bytes) => decode("job input", &bytes),
            None => Err(Error::NotFound(format!("job input {key}"))),
        }
    }

    pub async fn remove_payload(&self, key: &str) -> Result<()> {
        self.store.delete(key).await
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_plain_ids_make_record_keys() {
        assert!(super::key_part("3f2c9a8e-0b1d-4c5e-9f7a-1234567890ab"));
        assert!(super::key_part("default.hello-fn"));
        for bad in ["", "a/b", "a\nb", "x\u{17}", &"x".repeat(257)] {
            assert!(!super::key_part(bad), "{bad:?}");
        }
    }
}

/// A job's state as callers see it: the result bus (fast; in Redis it may
/// lose what it holds) backed by the ledger (durable).
#[derive(Clone)]
pub struct Jobs {
    bus: Arc<dyn ResultBus>,
    ledger: Ledger,
    counter: Arc<dyn JobCounter>,
}

impl Jobs {
    pub fn new(bus: Arc<dyn ResultBus>, ledger: Ledger, counter: Arc<dyn JobCounter>) -> Self {
        Jobs { bus, ledger, counter }
    }

    /// Per-function counts of unfinished jobs and run slots.
    pub fn counter(&self) -> &Arc<dyn JobCounter> {
        &self.counter
    }

    pub fn bus(&self) -> &Arc<dyn ResultBus> {
        &self.bus
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    pub async fn set_state(&self, record: &JobRecord) -> Result<()> {
        self.bus.set_state(record).await
    }

    pub async fn subscribe(&self, job_id: &str) -> Result<Subscription> {
        self.bus.subscribe(job_id).await
    }

    /// What is known of the job: a terminal record from either store, else
    /// the bus's progress. With the bus down or emptied, the ledger still
    /// answers for finished jobs. Recent progress on the bus is taken as is
    /// (the worker publishes there before it keeps the outcome, so only a
    /// failed publication leaves the bus behind, and that shows as progress
    /// that stopped moving): polling a running job costs no ledger read.
    pub async fn get(&self, job_id: &str) -> Result<Option<JobRecord>> {
        let fast = self.bus.get(job_id).await;
        if self.bus.is_durable() {
            return fast;
        }
        if let Ok(Some(record)) = &fast {
            let fresh = Utc::now().signed_duration_since(record.updated_at) < PROGRESS_TRUSTED_FOR;
            if record.status.is_terminal() || fresh {
                return Ok(Some(record.clone()));
            }
        }
        if let Some(record) = self.ledger.result(job_id).await? {
            return Ok(Some(record));
        }
        fast
    }

    /// Ends the job with `result`: published to waiting callers (best effort
    /// when the bus is down) and kept durably (must succeed before the job's
    /// message may be acknowledged). The first terminal result wins.
    pub async fn finish(&self, submitted_at: DateTime<Utc>, result: &JobResult) -> Result<JobRecord> {
        let record = match self.bus.publish(submitted_at, result).await {
            // A durable bus (infra up) keeps the outcome itself.
            Ok(winner) if self.bus.is_durable() => {
                self.uncount(result).await;
                return Ok(winner);
            }
            Ok(winner) => winner,
            Err(e) => {
                tracing::warn!(error = %e, "could not publish the result on the bus; keeping it durably");
                JobRecord::finished(submitted_at, result.clone())
            }
        };
        let kept = self.ledger.finish(&record).await?;
        self.uncount(result).await;
        Ok(kept)
    }

    async fn uncount(&self, result: &JobResult) {
        if let Err(e) = self.counter.done(&result.function_id, &result.request_id).await {
            // The count lapses on its own; maxQueued may refuse a little early meanwhile.
            tracing::warn!(error = %e, "could not uncount a finished job");
        }
    }
}
