use async_trait::async_trait;
use redb::ReadableTable;

use super::db::{Db, FUNCTIONS};
use crate::backend::{Error, FunctionRegistry, Result};
use crate::model::FunctionRecord;

/// Function records in the embedded database, one JSON value per function id.
pub struct EmbeddedRegistry {
    db: Db,
}

impl EmbeddedRegistry {
    pub fn new(db: Db) -> Self {
        EmbeddedRegistry { db }
    }
}

fn decode(bytes: &[u8]) -> Result<FunctionRecord> {
    serde_json::from_slice(bytes).map_err(|e| Error::Invalid(format!("corrupt function record: {e}")))
}

fn encode(record: &FunctionRecord) -> Result<Vec<u8>> {
    serde_json::to_vec(record).map_err(|e| Error::Invalid(format!("unencodable function record: {e}")))
}

#[async_trait]
impl FunctionRegistry for EmbeddedRegistry {
    async fn put(&self, record: &FunctionRecord) -> Result<()> {
        let id = record.function_id.clone();
        let bytes = encode(record)?;
        self.db
            .write(move |txn| {
                txn.open_table(FUNCTIONS)?.insert(id.as_str(), bytes.as_slice())?;
                Ok(())
            })
            .await
    }

    async fn get(&self, function_id: &str) -> Result<FunctionRecord> {
        let bytes = self.db.read(|txn| {
            let table = txn.open_table(FUNCTIONS)?;
            Ok(table.get(function_id)?.map(|v| v.value().to_vec()))
        })?;
        match bytes {
            Some(b) => decode(&b),
            None => Err(Error::NotFound(format!("function {function_id}"))),
        }
    }

    async fn list(&self) -> Result<Vec<FunctionRecord>> {
        let raw = self.db.read(|txn| {
            let table = txn.open_table(FUNCTIONS)?;
            let mut out = Vec::new();
            for item in table.iter()? {
                let (_, v) = item?;
                out.push(v.value().to_vec());
            }
            Ok(out)
        })?;
        raw.iter().map(|b| decode(b)).collect()
    }

    async fn delete(&self, function_id: &str) -> Result<()> {
        let id = function_id.to_string();
        let existed = self
            .db
            .write(move |txn| Ok(txn.open_table(FUNCTIONS)?.remove(id.as_str())?.is_some()))
            .await?;
        if existed {
            Ok(())
        } else {
            Err(Error::NotFound(format!("function {function_id}")))
        }
    }

    async fn add_invocations(&self, function_id: &str, n: u64) -> Result<()> {
        let id = function_id.to_string();
        // Read-modify-write inside the single writer's transaction: atomic.
        self.db
            .write(move |txn| {
                let mut table = txn.open_table(FUNCTIONS)?;
                let current = table.get(id.as_str())?.map(|v| v.value().to_vec());
                if let Some(bytes) = current {
                    if let Ok(mut record) = serde_json::from_slice::<FunctionRecord>(&bytes) {
                        record.invocations = record.invocations.saturating_add(n);
                        if let Ok(updated) = serde_json::to_vec(&record) {
                            table.insert(id.as_str(), updated.as_slice())?;
                        }
                    }
                }
                Ok(())
            })
            .await
    }

    async fn ping(&self) -> Result<()> {
        self.db.ping()
    }
}
