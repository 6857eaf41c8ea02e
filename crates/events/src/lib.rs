//! The event sink: every hop's record (which service and instance handled a request, whether it
//! succeeded, how long it took), stored in its own database and read back by trace, by filter
//! and as per-service and per-instance stats.
//!
//! Records arrive in batches on `POST /v1/events` (the kit's [`stratus_kit::events`] reporter)
//! or as OTLP/HTTP JSON on `POST /v1/traces`. A batch is stored whole or not at all. A background
//! task deletes records older than the retention period and the oldest beyond the row cap.

pub mod api;
pub mod otlp;
pub mod record;
pub mod stats;
pub mod store;

use std::time::Duration;

use stratus_kit::config::CommonArgs;
use stratus_kit::server::Service;

/// `stratus serve events`
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Port to listen on.
    #[arg(long, env = "PORT", default_value_t = 8090)]
    pub port: u16,

    /// Database URL (sqlite: or postgres:); default: events.db in the data directory.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,

    /// Records older than this are deleted.
    #[arg(long, env = "STRATUS_EVENTS_RETENTION", default_value = "1h", value_parser = stratus_kit::duration::parse)]
    pub retention: Duration,

    /// At most this many records are kept; the oldest go first.
    #[arg(long, env = "STRATUS_EVENTS_MAX_ROWS", default_value_t = 1_000_000)]
    pub max_rows: i64,

    #[command(flatten)]
    pub common: CommonArgs,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let url = stratus_kit::db::url_for(
        "events",
        args.database_url.as_deref(),
        &args.common.data_dir,
    )?;
    let (pool, _) = stratus_kit::db::open(&url, store::MIGRATIONS).await?;
    tokio::spawn(retention(
        pool.clone(),
        args.retention,
        args.max_rows.max(1),
    ));
    let state = api::AppState { pool: pool.clone() };
    let service = Service::new("events", args.port).without_events();
    service.health.add_check("database", move || {
        let pool = pool.clone();
        async move { stratus_kit::db::ping(&pool).await }
    });
    service.run(&args.common, api::router(state)).await
}

/// Every few seconds: drop what is past retention or beyond the row cap.
async fn retention(pool: sqlx::AnyPool, keep: Duration, max_rows: i64) {
    let every = (keep / 10).clamp(Duration::from_millis(100), Duration::from_secs(10));
    let mut ticker = tokio::time::interval(every);
    loop {
        ticker.tick().await;
        let now = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000) as i64;
        let cutoff = now - keep.as_micros().min(i64::MAX as u128) as i64;
        match store::prune(&pool, cutoff, max_rows).await {
            Ok(0) => {}
            Ok(deleted) => tracing::debug!(deleted, "pruned events"),
            Err(error) => tracing::warn!(%error, "pruning events failed"),
        }
    }
}
