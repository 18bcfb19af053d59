//! In-process change feed: one process holds every cache, so a broadcast
//! channel reaches them all.

use async_trait::async_trait;
use tokio::sync::broadcast;

use crate::backend::{ChangeFeed, FunctionChange, Result};

pub struct LocalChangeFeed {
    tx: broadcast::Sender<FunctionChange>,
}

impl Default for LocalChangeFeed {
    fn default() -> Self {
        let (tx, _) = broadcast::channel(1024);
        LocalChangeFeed { tx }
    }
}

#[async_trait]
impl ChangeFeed for LocalChangeFeed {
    async fn publish(&self, function_id: &str) -> Result<()> {
        // No subscriber is not an error: nobody caches anything yet.
        let _ = self.tx.send(FunctionChange::Changed(function_id.to_string()));
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<FunctionChange> {
        self.tx.subscribe()
    }

    fn is_live(&self) -> bool {
        true
    }
}
