//! The shared store: one Redis for every instance, through redis-rs's connection manager.
//!
//! The manager keeps one multiplexed connection and reconnects in the background when it breaks;
//! while Redis is away each call fails within [`RESPONSE_TIMEOUT`] (connection refused comes back
//! at once), and the caller answers it as a miss. Values expire in Redis itself (`SET .. PX`).

use std::time::Duration;

use anyhow::Context;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncCommands;

/// The longest one cache call may wait for Redis before it counts as failed.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_millis(250);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

pub struct Redis {
    connection: ConnectionManager,
}

/// Connects to `url` (`redis://host:port[/db]`, or `rediss://` for TLS) and checks with a PING
/// that Redis answers.
///
/// `rediss://` is TLS or nothing: redis-rs checks the server's certificate and name against the
/// system's roots (rustls-native-certs, so `SSL_CERT_FILE` replaces them) with the process's
/// rustls provider (ring), and a failed handshake is a start-up error like a refused connection.
/// redis-rs's `#insecure` (no check at all) is not built in and is refused.
///
/// The connection is bound to the tokio runtime it is made on (its driver task runs there).
pub async fn connect(url: &str) -> anyhow::Result<ConnectionManager> {
    let client = redis::Client::open(url)
        .with_context(|| format!("CACHE_URL / Redis URL `{}` is not valid", redact(url)))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        // Reconnecting happens in the background; a call never waits through the back-off.
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(1));
    let mut connection = ConnectionManager::new_with_config(client, config)
        .await
        .with_context(|| format!("connecting to Redis at {}", redact(url)))?;
    let _: () = redis::cmd("PING")
        .query_async(&mut connection)
        .await
        .with_context(|| format!("Redis at {} does not answer PING", redact(url)))?;
    Ok(connection)
}

impl Redis {
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        Ok(Self {
            connection: connect(url).await?,
        })
    }

    pub async fn get(&self, key: &str) -> redis::RedisResult<Option<Vec<u8>>> {
        self.connection.clone().get(key).await
    }

    pub async fn put(&self, key: &str, value: Vec<u8>, ttl: Duration) -> redis::RedisResult<()> {
        let ttl_ms = (ttl.as_millis() as u64).max(1);
        self.connection.clone().pset_ex(key, value, ttl_ms).await
    }

    pub async fn remove(&self, key: &str) -> redis::RedisResult<()> {
        self.connection.clone().del(key).await
    }
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    crate::db::redact(url)
}
