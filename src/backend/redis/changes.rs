//! Function changes over Redis pub/sub: every writer publishes the id on one
//! channel; every process listens on one connection and forwards to its
//! subscribers. Pub/sub does not keep messages, so each (re)connection is
//! announced as a `Resync`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::bounded;
use super::subscriber::{self, Topic};
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
        let (on_resync, on_message) = (tx.clone(), tx.clone());
        tokio::spawn(subscriber::follow(
            client,
            Topic::Channel(channel.clone()),
            "function change",
            live.clone(),
            stop.clone(),
            // Whatever changed while nobody listened is unknown.
            move || {
                let _ = on_resync.send(FunctionChange::Resync);
                std::future::ready(())
            },
            move |msg| match msg.get_payload::<String>() {
                Ok(id) => {
                    let _ = on_message.send(FunctionChange::Changed(id));
                }
                Err(_) => tracing::warn!("unreadable function change message"),
            },
        ));
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
