use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use redb::ReadableTable;

use super::db::{Db, RECORDS};
use crate::backend::{RecordStore, Result};

/// Durable records in the embedded database, each stamped with its write
/// time so housekeeping can expire them by prefix.
pub struct EmbeddedRecordStore {
    db: Db,
}

fn stamped(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + value.len());
    out.extend_from_slice(&Utc::now().timestamp_millis().to_be_bytes());
    out.extend_from_slice(value);
    out
}

fn unstamped(raw: &[u8]) -> (i64, &[u8]) {
    match raw.split_first_chunk::<8>() {
        Some((stamp, rest)) => (i64::from_be_bytes(*stamp), rest),
        None => (0, raw),
    }
}

impl EmbeddedRecordStore {
    pub fn new(db: Db) -> Self {
        EmbeddedRecordStore { db }
    }

    /// Deletes records under `prefix` written before `cutoff`; returns how many.
    pub async fn purge_before(&self, prefix: &str, cutoff: DateTime<Utc>) -> Result<usize> {
        let prefix = prefix.to_string();
        let cutoff = cutoff.timestamp_millis();
        self.db
            .write(move |txn| {
                let mut table = txn.open_table(RECORDS)?;
                let mut old = Vec::new();
                for item in table.range(prefix.as_str()..)? {
                    let (k, v) = item?;
                    if !k.value().starts_with(&prefix) {
                        break;
                    }
                    if unstamped(v.value()).0 < cutoff {
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
impl RecordStore for EmbeddedRecordStore {
    async fn create(&self, key: &str, value: Bytes) -> Result<Option<Bytes>> {
        // Most calls find the key absent; a present key is answered without a write.
        if let Some(existing) = self.get(key).await? {
            return Ok(Some(existing));
        }
        let key = key.to_string();
        let row = stamped(&value);
        self.db
            .write(move |txn| {
                let mut table = txn.open_table(RECORDS)?;
                let existing = table.get(key.as_str())?.map(|v| unstamped(v.value()).1.to_vec());
                if existing.is_none() {
                    table.insert(key.as_str(), row.as_slice())?;
                }
                Ok(existing.map(Bytes::from))
            })
            .await
    }

    async fn put(&self, key: &str, value: Bytes) -> Result<()> {
        let key = key.to_string();
        let row = stamped(&value);
        self.db
            .write(move |txn| {
                txn.open_table(RECORDS)?.insert(key.as_str(), row.as_slice())?;
                Ok(())
            })
            .await
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        self.db.read(|txn| {
            Ok(txn
                .open_table(RECORDS)?
                .get(key)?
                .map(|v| Bytes::copy_from_slice(unstamped(v.value()).1)))
        })
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let key = key.to_string();
        self.db
            .write(move |txn| {
                txn.open_table(RECORDS)?.remove(key.as_str())?;
                Ok(())
            })
            .await
    }

    async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<String>> {
        self.db.read(|txn| {
            let table = txn.open_table(RECORDS)?;
            let mut keys = Vec::new();
            for item in table.range(prefix..)? {
                let (k, _) = item?;
                if !k.value().starts_with(prefix) || keys.len() >= limit {
                    break;
                }
                keys.push(k.value().to_string());
            }
            Ok(keys)
        })
    }

    async fn ping(&self) -> Result<()> {
        self.db.ping()
    }
}
