use std::collections::HashMap;
use std::sync::Mutex;

use super::db::{Db, JOBS};
use crate::backend::fanout::Waiters;
use crate::backend::{Error, Result, ResultBus, Subscription};
use crate::model::{JobRecord, JobResult};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use redb::ReadableTable;

/// Job states and result fan-out inside one process.
///
/// Terminal records are durable (redb). Non-terminal states live in memory:
/// the durable record of an accepted job is its queue entry, and a restart
/// re-derives PENDING for every job it re-queues.
pub struct EmbeddedResultBus {
    db: Db,
    states: Mutex<HashMap<String, JobRecord>>,
    waiters: Waiters,
}

impl EmbeddedResultBus {
    pub fn new(db: Db) -> Self {
        EmbeddedResultBus {
            db,
            states: Mutex::new(HashMap::new()),
            waiters: Waiters::default(),
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
        self.db.purge(JOBS, move |r: &JobRecord| r.updated_at < cutoff).await
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
        if let Some(result) = &record.result {
            self.waiters.deliver(result);
        }
        Ok(record)
    }

    async fn subscribe(&self, request_id: &str) -> Result<Subscription> {
        self.waiters.subscribe(request_id)
    }

    async fn ping(&self) -> Result<()> {
        self.db.ping()
    }

    /// Terminal records are committed to redb before `publish` returns.
    fn is_durable(&self) -> bool {
        true
    }
}
