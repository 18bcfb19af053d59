use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::backend::{FunctionLoad, JobCounter, Result, JOB_COUNT_HORIZON};

#[derive(Default)]
struct Counts {
    /// Accepted job -> when it stops counting.
    jobs: HashMap<String, Instant>,
    /// Slot holder -> lease end.
    slots: HashMap<String, Instant>,
}

impl Counts {
    /// Slots are few (at most a function's maxConcurrency): swept on every call.
    fn expire_slots(&mut self, now: Instant) {
        self.slots.retain(|_, until| *until > now);
    }

    /// Jobs can be many (a backlog): swept only when their number matters
    /// (a limit is reached, a load report), not on every admission.
    fn expire_jobs(&mut self, now: Instant) {
        self.jobs.retain(|_, until| *until > now);
    }
}

/// Job counts and run slots in process memory (`infra up`: one process
/// admits and runs every job).
#[derive(Default)]
pub struct InProcessJobCounter {
    functions: Mutex<HashMap<String, Counts>>,
}

impl InProcessJobCounter {
    fn with<T>(&self, function_id: &str, f: impl FnOnce(&mut Counts) -> T) -> T {
        let mut all = self.functions.lock().unwrap_or_else(|p| p.into_inner());
        let counts = all.entry(function_id.to_string()).or_default();
        counts.expire_slots(Instant::now());
        let out = f(counts);
        if counts.jobs.is_empty() && counts.slots.is_empty() {
            all.remove(function_id);
        }
        out
    }
}

#[async_trait]
impl JobCounter for InProcessJobCounter {
    async fn admit(&self, function_id: &str, job_id: &str, limit: Option<u32>) -> Result<bool> {
        Ok(self.with(function_id, |c| {
            if c.jobs.contains_key(job_id) {
                return true;
            }
            if let Some(limit) = limit {
                if c.jobs.len() >= limit as usize {
                    c.expire_jobs(Instant::now());
                }
                if c.jobs.len() >= limit as usize {
                    return false;
                }
            }
            c.jobs.insert(job_id.to_string(), Instant::now() + JOB_COUNT_HORIZON);
            true
        }))
    }

    async fn done(&self, function_id: &str, job_id: &str) -> Result<()> {
        self.with(function_id, |c| c.jobs.remove(job_id));
        Ok(())
    }

    async fn acquire(&self, function_id: &str, job_id: &str, max: u32, lease: Duration) -> Result<bool> {
        Ok(self.with(function_id, |c| {
            if !c.slots.contains_key(job_id) && c.slots.len() >= max as usize {
                return false;
            }
            c.slots.insert(job_id.to_string(), Instant::now() + lease);
            true
        }))
    }

    async fn release(&self, function_id: &str, job_id: &str) -> Result<()> {
        self.with(function_id, |c| c.slots.remove(job_id));
        Ok(())
    }

    async fn load(&self) -> Result<BTreeMap<String, FunctionLoad>> {
        let mut all = self.functions.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let mut out = BTreeMap::new();
        all.retain(|f, c| {
            c.expire_slots(now);
            c.expire_jobs(now);
            if c.jobs.is_empty() && c.slots.is_empty() {
                return false;
            }
            out.insert(
                f.clone(),
                FunctionLoad {
                    jobs: c.jobs.len() as u64,
                    running: c.slots.len() as u64,
                },
            );
            true
        });
        Ok(out)
    }
}
