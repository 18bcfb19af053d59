use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;

use super::bounded;
use crate::backend::{Error, Result, WorkerDirectory};
use crate::model::WorkerStatus;

/// Worker reports as `worker:{id}` keys that expire unless renewed.
pub struct RedisDirectory {
    conn: ConnectionManager,
    prefix: String,
}

impl RedisDirectory {
    pub fn new(conn: ConnectionManager, prefix: &str) -> Self {
        RedisDirectory {
            conn,
            prefix: prefix.to_string(),
        }
    }
}

#[async_trait]
impl WorkerDirectory for RedisDirectory {
    async fn report(&self, status: &WorkerStatus, ttl: Duration) -> Result<()> {
        let json = serde_json::to_string(status).map_err(|e| Error::Invalid(e.to_string()))?;
        let mut conn = self.conn.clone();
        let key = format!("{}worker:{}", self.prefix, status.worker_id);
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(json).arg("PX").arg(ttl.as_millis() as u64);
        bounded("report worker", cmd.query_async::<()>(&mut conn)).await
    }

    async fn list(&self) -> Result<Vec<WorkerStatus>> {
        let mut conn = self.conn.clone();
        let pattern = format!("{}worker:*", self.prefix);
        let mut keys: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let mut cmd = redis::cmd("SCAN");
            cmd.arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(500);
            let (next, batch): (u64, Vec<String>) = bounded("scan workers", cmd.query_async(&mut conn)).await?;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("MGET");
        cmd.arg(&keys);
        let values: Vec<Option<String>> = bounded("read workers", cmd.query_async(&mut conn)).await?;
        let mut out: Vec<WorkerStatus> = values
            .into_iter()
            .flatten()
            .filter_map(|v| serde_json::from_str(&v).ok())
            .collect();
        out.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        Ok(out)
    }

    async fn remove(&self, worker_id: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("DEL");
        cmd.arg(format!("{}worker:{worker_id}", self.prefix));
        bounded("remove worker", cmd.query_async::<()>(&mut conn)).await
    }
}
