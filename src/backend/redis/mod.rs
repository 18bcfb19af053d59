//! Redis implementations: the rate limiter (one Lua script, exact across API
//! processes), the result bus (`job:{id}` records with a TTL, `PUBLISH
//! result:{id}`) and the function change feed. Connections reconnect on their own after an outage.

mod bus;
mod changes;
mod counter;
mod directory;
mod ratelimit;
mod subscriber;

pub use bus::RedisResultBus;
pub use changes::RedisChangeFeed;
pub use counter::RedisJobCounter;
pub use directory::RedisDirectory;
pub use ratelimit::RedisRateLimiter;

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::Error;

/// Commands fail after this instead of hanging while Redis is away.
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(800);
/// Hard bound on one call, including any wait for a reconnection, so callers
/// (and `/run`) fail fast during an outage.
const CALL_DEADLINE: Duration = Duration::from_millis(500);

fn unavailable(what: &str, e: redis::RedisError) -> Error {
    Error::unavailable(format!("redis {what}"), e)
}

/// Runs one Redis call within `CALL_DEADLINE`.
async fn bounded<T>(what: &str, call: impl std::future::Future<Output = redis::RedisResult<T>>) -> Result<T, Error> {
    match tokio::time::timeout(CALL_DEADLINE, call).await {
        Ok(r) => r.map_err(|e| unavailable(what, e)),
        Err(_) => Err(Error::Unavailable {
            message: format!("redis {what}: no answer within {CALL_DEADLINE:?}"),
            source: None,
        }),
    }
}

/// A client and a reconnecting connection manager for `url`
/// (`redis://host:port/db`).
pub async fn connect(url: &str) -> Result<(redis::Client, ConnectionManager), Error> {
    let client = redis::Client::open(url).map_err(|e| Error::Invalid(format!("invalid Redis URL: {e}")))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(RESPONSE_TIMEOUT)
        .set_response_timeout(RESPONSE_TIMEOUT)
        // Reconnect once per failed call; retry loops would stall callers.
        .set_number_of_retries(0)
        .set_max_delay(1000);
    let manager = ConnectionManager::new_with_config(client.clone(), config)
        .await
        .map_err(|e| unavailable("connect", e))?;
    Ok((client, manager))
}
