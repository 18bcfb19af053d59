//! Function changes over Redis pub/sub: every writer publishes the id on one
//! channel; every process listens on one connection and forwards to its
//! subscribers. Pub/sub does not keep messages, so each (re)connection is
//! announced as a `Resync`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use redis::aio::ConnectionManager;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::bounded;
use crate::backend::{ChangeFeed, FunctionChange, Result};

pub struct RedisChangeFeed {
    conn: ConnectionManager,
    channel: String,
    tx: broadcast::Sender<FunctionChange>,
    live: Arc<AtomicBool>,
    stop: CancellationToken,
}

impl Drop for RedisChangeFeed {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl RedisChangeFeed {
    /// `prefix` namespaces the channel like every other key.
    pub fn new(client: redis::Client, conn: ConnectionManager, prefix: &str) -> Self {
        let (tx, _) = broadcast::channel(1024);
        let live = Arc::new(AtomicBool::new(false));
        let stop = CancellationToken::new();
        let channel = format!("{prefix}functions:changed");
        tokio::spawn(listen(client, channel.clone(), tx.clone(), live.clone(), stop.clone()));
        RedisChangeFeed {
            conn,
            channel,
            tx,
            live,
            stop,
        }
    }
}

#[async_trait]
impl ChangeFeed for RedisChangeFeed {
    async fn publish(&self, function_id: &str) -> Result<()> {
        // The connection reconnects after a failed call; the change must not
        // be lost to the first call after an outage, so it gets a second try.
        let mut retried = false;
        loop {
            let mut conn = self.conn.clone();
            let sent = bounded(
                "publish function change",
                redis::cmd("PUBLISH")
                    .arg(&self.channel)
                    .arg(function_id)
                    .query_async::<i64>(&mut conn),
            )
            .await;
            match sent {
                Ok(_) => return Ok(()),
                Err(e) if retried => return Err(e),
                Err(_) => retried = true,
            }
        }
    }

    fn subscribe(&self) -> broadcast::Receiver<FunctionChange> {
        self.tx.subscribe()
    }

    fn is_live(&self) -> bool {
        self.live.load(Ordering::Relaxed)
    }
}

async fn listen(
    client: redis::Client,
    channel: String,
    tx: broadcast::Sender<FunctionChange>,
    live: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    while !stop.is_cancelled() {
        let subscribed = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let pubsub = tokio::select! {
            r = tokio::time::timeout(Duration::from_secs(2), subscribed) => r,
            _ = stop.cancelled() => return,
        };
        if let Ok(Ok(mut pubsub)) = pubsub {
            backoff = Duration::from_millis(100);
            // Whatever changed while nobody listened is unknown.
            let _ = tx.send(FunctionChange::Resync);
            live.store(true, Ordering::Relaxed);
            let mut messages = pubsub.on_message();
            loop {
                let msg = tokio::select! {
                    m = messages.next() => m,
                    _ = stop.cancelled() => return,
                };
                let Some(msg) = msg else { break };
                match msg.get_payload::<String>() {
                    Ok(id) => {
                        let _ = tx.send(FunctionChange::Changed(id));
                    }
                    Err(_) => tracing::warn!("unreadable function change message"),
                }
            }
            live.store(false, Ordering::Relaxed);
            tracing::warn!("function change subscription lost; reconnecting");
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.cancelled() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}
