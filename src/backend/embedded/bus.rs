use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use redb::ReadableTable;
use tokio::sync::oneshot;

use super::db::{Db, JOBS};
use crate::backend::{Error, Result, ResultBus, Subscription};
use crate::model::{JobRecord, JobResult};

type Waiters = Arc<Mutex<HashMap<String, Vec<(u64, oneshot::Sender<JobResult>)>>>>;

/// Job states and result fan-out inside one process.
///
/// Terminal records are durable (redb). Non-terminal states live in memory:
/// the durable record of an accepted job is its queue entry, and a restart
/// re-derives PENDING for every job it re-queues.
pub struct EmbeddedResultBus {
    db: Db,
    states: Mutex<HashMap<String, JobRecord>>,
    waiters: Waiters,
    next_waiter: AtomicU64,
}

struct WaiterGuard {
    waiters: Waiters,
    id: String,
    key: u64,
}

impl Drop for WaiterGuard {
    fn drop(&mut self) {
        if let Ok(mut map) = self.waiters.lock() {
            if let Some(list) = map.get_mut(&self.id) {
                list.retain(|(k, _)| *k != self.key);
                if list.is_empty() {
                    map.remove(&self.id);
                }
            }
        }
    }
}

impl EmbeddedResultBus {
    pub fn new(db: Db) -> Self {
        EmbeddedResultBus {
            db,
            states: Mutex::new(HashMap::new()),
            waiters: Arc::new(Mutex::new(HashMap::new())),
            next_waiter: AtomicU64::new(1),
        }
    }

    fn stored(&self, id: &str) -> Result<Option<JobRecord>> {
        let bytes = self
            .db
            .read(|txn| Ok(txn.open_table(JOBS)?.get(id)?.map(|v| v.value().to_vec())))?;
        bytes
            .map(|b| serde_json::from_slice(&b).map_err(|e| Error::Invalid(format!("corrupt job record: {e}"))))
            .transpose()
    }

    /// Deletes terminal records last updated before `cutoff`; returns how many.
    pub async fn purge_finished_before(&self, cutoff: DateTime<Utc>) -> Result<usize> {
        self.db
            .write(move |txn| {
                let mut table = txn.open_table(JOBS)?;
                let mut old = Vec::new();
                for item in table.iter()? {
                    let (k, v) = item?;
                    let expired = serde_json::from_slice::<JobRecord>(v.value())
                        .map(|r| r.updated_at < cutoff)
                        .unwrap_or(true);
                    if expired {
                        old.push(k.value().to_string());
                    }
                }
                for k in &old {
                    table.remove(k.as_str())?;
                }
                Ok(old.len())
            })
            .await
    }
}

#[async_trait]
impl ResultBus for EmbeddedResultBus {
    async fn set_state(&self, record: &JobRecord) -> Result<()> {
        if record.status.is_terminal() {
            return Err(Error::Invalid("terminal states are set by publish".into()));
        }
        if self.stored(&record.request_id)?.is_some() {
            return Ok(());
        }
        if let Ok(mut states) = self.states.lock() {
            states.insert(record.request_id.clone(), record.clone());
        }
        Ok(())
    }

    async fn get(&self, request_id: &str) -> Result<Option<JobRecord>> {
        if let Some(r) = self.states.lock().ok().and_then(|s| s.get(request_id).cloned()) {
            return Ok(Some(r));
        }
        self.stored(request_id)
    }

    async fn publish(&self, submitted_at: DateTime<Utc>, result: &JobResult) -> Result<JobRecord> {
        if !result.status.is_terminal() {
            return Err(Error::Invalid(format!(
                "{} is not a terminal status",
                result.status.as_str()
            )));
        }
        let record = JobRecord::finished(submitted_at, result.clone());
        let bytes = serde_json::to_vec(&record).map_err(|e| Error::Invalid(format!("unencodable result: {e}")))?;
        let id = result.request_id.clone();
        let winner = self
            .db
            .write(move |txn| {
                let mut table = txn.open_table(JOBS)?;
                let existing = table.get(id.as_str())?.map(|v| v.value().to_vec());
                match existing {
                    Some(prev) => Ok(Some(prev)),
                    None => {
                        table.insert(id.as_str(), bytes.as_slice())?;
                        Ok(None)
                    }
                }
            })
            .await?;
        let record = match winner {
            Some(prev) => {
                serde_json::from_slice(&prev).map_err(|e| Error::Invalid(format!("corrupt job record: {e}")))?
            }
            None => record,
        };
        if let Ok(mut states) = self.states.lock() {
            states.remove(&record.request_id);
        }
        let senders = self.waiters.lock().ok().and_then(|mut w| w.remove(&record.request_id));
        if let (Some(senders), Some(result)) = (senders, record.result.as_ref()) {
            for (_, tx) in senders {
                let _ = tx.send(result.clone());
            }
        }
        Ok(record)
    }

    async fn subscribe(&self, request_id: &str) -> Result<Subscription> {
        let (tx, rx) = oneshot::channel();
        let key = self.next_waiter.fetch_add(1, Ordering::Relaxed);
        self.waiters
            .lock()
            .map_err(|_| Error::Unavailable {
                message: "result bus lock poisoned".into(),
                source: None,
            })?
            .entry(request_id.to_string())
            .or_default()
            .push((key, tx));
        let guard = WaiterGuard {
            waiters: self.waiters.clone(),
            id: request_id.to_string(),
            key,
        };
        Ok(Subscription::new(rx, Box::new(guard)))
    }

    async fn ping(&self) -> Result<()> {
        self.db.ping()
    }
}
