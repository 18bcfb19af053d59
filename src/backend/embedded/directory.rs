use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::backend::{Error, Result, WorkerDirectory};
use crate::model::WorkerStatus;

/// Worker reports in process memory (`infra up` has one worker, in-process).
#[derive(Default)]
pub struct InProcessDirectory {
    workers: Mutex<HashMap<String, (Instant, WorkerStatus)>>,
}

fn poisoned() -> Error {
    Error::Unavailable {
        message: "worker directory lock poisoned".into(),
        source: None,
    }
}

#[async_trait]
impl WorkerDirectory for InProcessDirectory {
    async fn report(&self, status: &WorkerStatus, ttl: Duration) -> Result<()> {
        let mut w = self.workers.lock().map_err(|_| poisoned())?;
        w.insert(status.worker_id.clone(), (Instant::now() + ttl, status.clone()));
        Ok(())
    }

    async fn list(&self) -> Result<Vec<WorkerStatus>> {
        let mut w = self.workers.lock().map_err(|_| poisoned())?;
        let now = Instant::now();
        w.retain(|_, (until, _)| *until > now);
        let mut out: Vec<_> = w.values().map(|(_, s)| s.clone()).collect();
        out.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        Ok(out)
    }

    async fn remove(&self, worker_id: &str) -> Result<()> {
        self.workers.lock().map_err(|_| poisoned())?.remove(worker_id);
        Ok(())
    }
}
