//! Waiting callers of job results, keyed by job id: shared by every
//! `ResultBus` so each only has to decide when a result has arrived.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::{Error, Subscription};
use crate::model::JobResult;

type Map = HashMap<String, Vec<(u64, oneshot::Sender<JobResult>)>>;

/// A cheap-to-clone registry of waiters.
#[derive(Clone, Default)]
pub struct Waiters {
    map: Arc<Mutex<Map>>,
    next: Arc<AtomicU64>,
}

/// Unregisters its waiter when the subscription is dropped (caller gone).
struct Guard {
    map: Arc<Mutex<Map>>,
    id: String,
    key: u64,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(mut map) = self.map.lock() {
            if let Some(list) = map.get_mut(&self.id) {
                list.retain(|(k, _)| *k != self.key);
                if list.is_empty() {
                    map.remove(&self.id);
                }
            }
        }
    }
}

impl Waiters {
    /// Registers a waiter for `request_id`'s result.
    pub fn subscribe(&self, request_id: &str) -> Result<Subscription, Error> {
        let (tx, rx) = oneshot::channel();
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        self.map
            .lock()
            .map_err(|_| Error::Unavailable {
                message: "result waiters lock poisoned".into(),
                source: None,
            })?
            .entry(request_id.to_string())
            .or_default()
            .push((key, tx));
        let guard = Guard {
            map: self.map.clone(),
            id: request_id.to_string(),
            key,
        };
        Ok(Subscription::new(rx, Box::new(guard)))
    }

    /// Hands the result to everyone waiting for it.
    pub fn deliver(&self, result: &JobResult) {
        let senders = self.map.lock().ok().and_then(|mut m| m.remove(&result.request_id));
        for (_, tx) in senders.into_iter().flatten() {
            let _ = tx.send(result.clone());
        }
    }

    /// Job ids someone is waiting for.
    pub fn pending(&self) -> Vec<String> {
        self.map.lock().map(|m| m.keys().cloned().collect()).unwrap_or_default()
    }
}
