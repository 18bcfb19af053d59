//! Counters of admissions and finished runs, summed in memory and written to
//! the registry now and then, so neither admission nor a worker pays a
//! registry write per job.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::backend::FunctionRegistry;
use crate::model::UsageDelta;

#[derive(Default)]
pub struct UsageTally {
    pending: Mutex<HashMap<String, UsageDelta>>,
}

impl UsageTally {
    pub fn add(&self, function_id: &str, delta: &UsageDelta) {
        if let Ok(mut m) = self.pending.lock() {
            m.entry(function_id.to_string()).or_default().merge(delta);
        }
    }

    /// What is counted but not yet written for the function.
    pub fn pending(&self, function_id: &str) -> UsageDelta {
        self.pending
            .lock()
            .ok()
            .and_then(|m| m.get(function_id).copied())
            .unwrap_or_default()
    }

    /// Writes the sums; those that fail to write are kept for the next flush.
    pub async fn flush(&self, registry: &dyn FunctionRegistry) {
        let pending: Vec<(String, UsageDelta)> = match self.pending.lock() {
            Ok(mut m) => m.drain().collect(),
            Err(_) => return,
        };
        for (id, delta) in pending {
            if let Err(e) = registry.add_usage(&id, &delta).await {
                tracing::warn!(function_id = id, error = %e, "could not write function counters; will retry");
                self.add(&id, &delta);
            }
        }
    }
}
