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
        let mut record = record.clone();
        let as_given = encode(&record)?;
        // As DynamoDB's: the counters start at the record's values only when
        // new, so additions made meanwhile survive a settings change.
        self.db
            .write(move |txn| {
                let mut table = txn.open_table(FUNCTIONS)?;
                let existing = table
                    .get(id.as_str())?
                    .and_then(|v| serde_json::from_slice::<FunctionRecord>(v.value()).ok());
                if let Some(old) = existing {
                    record.invocations = old.invocations;
                    record.finished_runs = old.finished_runs;
                    record.total_duration = old.total_duration;
                    record.handler_invocations = old.handler_invocations;
                    record.total_handler_duration = old.total_handler_duration;
                }
                // It encoded above, so it encodes again; as given if not.
                let bytes = serde_json::to_vec(&record).unwrap_or(as_given);
                table.insert(id.as_str(), bytes.as_slice())?;
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

    async fn add_usage(&self, function_id: &str, delta: &crate::model::UsageDelta) -> Result<()> {
        let (id, delta) = (function_id.to_string(), *delta);
        // Read-modify-write inside the single writer's transaction: atomic.
        self.db
            .write(move |txn| {
                let mut table = txn.open_table(FUNCTIONS)?;
                let current = table.get(id.as_str())?.map(|v| v.value().to_vec());
                if let Some(bytes) = current {
                    if let Ok(mut record) = serde_json::from_slice::<FunctionRecord>(&bytes) {
                        delta.apply_to(&mut record);
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
