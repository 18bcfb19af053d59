//! Redis implementations: the rate limiter (one Lua script, exact across API
//! processes) and the result bus (`job:{id}` records with a TTL, `PUBLISH
//! result:{id}`). Connections reconnect on their own after an outage.

mod bus;
mod ratelimit;

pub use bus::RedisResultBus;
pub use ratelimit::RedisRateLimiter;

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::Error;

/// Commands fail after this instead of hanging while Redis is away.
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(800);

fn unavailable(what: &str, e: redis::RedisError) -> Error {
    Error::unavailable(format!("redis {what}"), e)
}

/// A client and a reconnecting connection manager for `url`
/// (`redis://host:port/db`).
pub async fn connect(url: &str) -> Result<(redis::Client, ConnectionManager), Error> {
    let client = redis::Client::open(url).map_err(|e| Error::Invalid(format!("invalid Redis URL: {e}")))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(RESPONSE_TIMEOUT)
        .set_response_timeout(RESPONSE_TIMEOUT)
        .set_number_of_retries(1)
        .set_max_delay(1000);
    let manager = ConnectionManager::new_with_config(client.clone(), config)
        .await
        .map_err(|e| unavailable("connect", e))?;
    Ok((client, manager))
}
