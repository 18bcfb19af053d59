//! A long-lived pub/sub subscription that outlives Redis outages: the one
//! connection the result bus and the change feed each keep.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

/// What to subscribe to.
pub(super) enum Topic {
    Channel(String),
    Pattern(String),
}

/// Keeps a connection subscribed to `topic` until `stop`, retrying with a
/// backoff from 100 ms to 2 s. After each (re)subscription it marks `live`
/// (until the connection is lost) and awaits `resubscribed`: pub/sub keeps
/// nothing, so what was published while away is the caller's to recover,
/// while new messages already arrive (they wait on the connection). Then it
/// hands every message to `message`. `what` names it in logs.
pub(super) async fn follow<R: Future<Output = ()>>(
    client: redis::Client,
    topic: Topic,
    what: &'static str,
    live: Arc<AtomicBool>,
    stop: CancellationToken,
    mut resubscribed: impl FnMut() -> R,
    mut message: impl FnMut(redis::Msg),
) {
    let mut backoff = Duration::from_millis(100);
    while !stop.is_cancelled() {
        let subscribed = async {
            let mut pubsub = client.get_async_pubsub().await?;
            match &topic {
                Topic::Channel(channel) => pubsub.subscribe(channel).await?,
                Topic::Pattern(pattern) => pubsub.psubscribe(pattern).await?,
            }
            Ok::<_, redis::RedisError>(pubsub)
        };
        let pubsub = tokio::select! {
            r = tokio::time::timeout(Duration::from_secs(2), subscribed) => r,
            _ = stop.cancelled() => return,
        };
        if let Ok(Ok(mut pubsub)) = pubsub {
            backoff = Duration::from_millis(100);
            live.store(true, Ordering::Relaxed);
            resubscribed().await;
            let mut messages = pubsub.on_message();
            loop {
                let msg = tokio::select! {
                    m = messages.next() => m,
                    _ = stop.cancelled() => return,
                };
                let Some(msg) = msg else { break };
                message(msg);
            }
            live.store(false, Ordering::Relaxed);
            tracing::warn!("{what} subscription lost; reconnecting");
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.cancelled() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}
