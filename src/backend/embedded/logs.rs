use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::db::{Db, LOGS};
use crate::backend::{Error, LogStore, Result};
use crate::model::LogEntry;

/// Invocation logs in the embedded database, purged by age.
pub struct EmbeddedLogStore {
    db: Db,
}

impl EmbeddedLogStore {
    pub fn new(db: Db) -> Self {
        EmbeddedLogStore { db }
    }

    /// Deletes entries that finished before `cutoff`; returns how many.
    pub async fn purge_before(&self, cutoff: DateTime<Utc>) -> Result<usize> {
        self.db.purge(LOGS, move |e: &LogEntry| e.finished_at < cutoff).await
    }
}

fn decode(bytes: &[u8]) -> Result<LogEntry> {
    serde_json::from_slice(bytes).map_err(|e| Error::Invalid(format!("unreadable log entry: {e}")))
}

#[async_trait]
impl LogStore for EmbeddedLogStore {
    async fn put(&self, entry: &LogEntry) -> Result<()> {
        let key = format!("{}/{}", entry.function_id, entry.request_id);
        let bytes = serde_json::to_vec(entry).map_err(|e| Error::Invalid(e.to_string()))?;
        self.db
            .write(move |txn| {
                txn.open_table(LOGS)?.insert(key.as_str(), bytes.as_slice())?;
                Ok(())
            })
            .await
    }

    async fn list(&self, function_id: &str, limit: usize) -> Result<Vec<LogEntry>> {
        // Function ids never contain '/', so the prefix range is exactly this function's.
        let start = format!("{function_id}/");
        let end = format!("{function_id}0"); // '0' sorts right after '/'
        let raw = self.db.read(|txn| {
            let table = txn.open_table(LOGS)?;
            let mut out = Vec::new();
            for item in table.range(start.as_str()..end.as_str())? {
                let (_, v) = item?;
                out.push(v.value().to_vec());
            }
            Ok(out)
        })?;
        let entries = raw.iter().map(|b| decode(b)).collect::<Result<Vec<_>>>()?;
        // Request ids are random: order by time here.
        Ok(crate::backend::newest_logs(entries, limit))
    }

    async fn get(&self, function_id: &str, request_id: &str) -> Result<LogEntry> {
        let key = format!("{function_id}/{request_id}");
        let raw = self
            .db
            .read(|txn| Ok(txn.open_table(LOGS)?.get(key.as_str())?.map(|v| v.value().to_vec())))?;
        match raw {
            Some(b) => decode(&b),
            None => Err(Error::NotFound(format!("log of {request_id}"))),
        }
    }

    async fn ping(&self) -> Result<()> {
        self.db.ping()
    }
}
