//! The event sink: every hop's record (which service and instance handled a request, whether it
//! succeeded, how long it took), stored in its own database and read back by trace, by filter
//! and as per-service and per-instance stats.
//!
//! Records arrive in batches on `POST /v1/events` (the kit's [`stratus_kit::events`] reporter)
//! or as OTLP/HTTP JSON on `POST /v1/traces`. A batch is stored whole or not at all. A background
//! task ([`budget`]) deletes traces past the retention, and samples out whole traces without
//! an error or a slow record to keep the database and its WAL within a budget in bytes.
//!
//! The sink also serves the dashboard at `/` (topology, instances, traces, logs; live over SSE),
//! and forwards the spans and log lines it stores to an OpenTelemetry collector when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set.

pub mod aggregate;
pub mod api;
pub mod budget;
pub mod checkpoint;
pub mod dashboard;
pub mod deletion;
pub mod export;
pub mod export_logs;
pub mod export_spans;
pub mod links;
pub mod live;
pub mod log_line;
pub mod log_store;
pub mod log_tail;
pub mod logs_api;
pub mod otlp;
pub mod otlp_logs;
pub mod otlp_logs_proto;
pub mod record;
pub mod registry;
pub mod sample;
pub mod sqlite;
pub mod stats;
pub mod store;
pub mod topology;
pub mod trace_list;
pub mod writer;

// The OTLP messages live in the kit, which also writes them (its log shipping); these names
// keep `crate::proto` and `stratus_events::proto` as they were.
pub use stratus_kit::otlp::{proto, proto_logs};
/// The latency sketch, shared with the reporters (which fold what they cannot send into it).
pub use stratus_kit::sketch;

use std::time::Duration;

use stratus_kit::auth::Tokens;
use stratus_kit::config::{CommonArgs, TokenArgs};
use stratus_kit::registry_client::RegistryClient;
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

    /// Bytes the database and its WAL may hold together (like 256MiB or 1GiB). Traces with an
    /// error or a slow record are kept for the retention; the others are sampled, whole, to fit.
    #[arg(long, env = "STRATUS_EVENTS_BUDGET", default_value = "256MiB", value_parser = checkpoint::parse_bytes)]
    pub budget: u64,

    /// A trace with a record at least this slow is kept for the whole retention, like one with
    /// an error.
    #[arg(long, env = "STRATUS_EVENTS_SLOW", default_value = "1s", value_parser = stratus_kit::duration::parse)]
    pub slow: Duration,

    /// Replaced by STRATUS_EVENTS_BUDGET: accepted, so an old setting does not stop the sink,
    /// and otherwise ignored (a warning at start-up says so).
    #[arg(long, env = "STRATUS_EVENTS_MAX_ROWS", hide = true)]
    pub max_rows: Option<i64>,

    /// A SQLite database's write-ahead log is checkpointed and truncated once it passes half of
    /// this (and every second while it holds anything), so it stays near or under it under load.
    /// It is at most an eighth of STRATUS_EVENTS_BUDGET, which counts the WAL (twice its limit).
    #[arg(long, env = "STRATUS_EVENTS_WAL_LIMIT", default_value = "64MiB", value_parser = checkpoint::parse_bytes)]
    pub wal_limit: u64,

    /// OTLP collector base URL; spans are exported to <endpoint>/v1/traces and log lines to
    /// <endpoint>/v1/logs (protobuf).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// OTLP traces URL, used as is (overrides OTEL_EXPORTER_OTLP_ENDPOINT for spans).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")]
    pub otlp_traces_endpoint: Option<String>,

    /// OTLP logs URL, used as is (overrides OTEL_EXPORTER_OTLP_ENDPOINT for log lines).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT")]
    pub otlp_logs_endpoint: Option<String>,

    /// Spans (or log lines) each OTLP exporter holds while its collector is slow or down;
    /// beyond, stored batches are not exported (counted as dropped), so intake never waits.
    #[arg(long, env = "STRATUS_EVENTS_EXPORT_QUEUE", default_value_t = export::QUEUE_ITEMS)]
    pub export_queue: usize,

    /// Headers for every export request: key=value,key2=value2 (values percent-encoded).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_HEADERS")]
    pub otlp_headers: Option<String>,

    /// The instrumentation scope exported spans carry (default stratus-events).
    #[arg(long, env = "OTEL_SERVICE_NAME")]
    pub otel_service_name: Option<String>,

    /// An admin's access token is an operator credential here (queries, the dashboard, OTLP
    /// from tools outside Stratus): how tokens are checked.
    #[command(flatten)]
    pub tokens: TokenArgs,

    #[command(flatten)]
    pub common: CommonArgs,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let url = stratus_kit::db::url_for(
        "events",
        args.database_url.as_deref(),
        &args.common.data_dir,
    )?;
    let (pool, backend) = stratus_kit::db::open(&url, store::MIGRATIONS).await?;
    if let Some(rows) = args.max_rows {
        tracing::warn!(
            rows,
            budget = args.budget,
            "STRATUS_EVENTS_MAX_ROWS is no longer used: the sink keeps to STRATUS_EVENTS_BUDGET bytes"
        );
    }
    let export = export::Variables {
        endpoint: args.otlp_endpoint.as_deref(),
        traces_endpoint: args.otlp_traces_endpoint.as_deref(),
        logs_endpoint: args.otlp_logs_endpoint.as_deref(),
        headers: args.otlp_headers.as_deref(),
        service_name: args.otel_service_name.as_deref(),
        queue: Some(args.export_queue),
    }
    .start()?;
    let sqlite = backend == stratus_kit::db::Backend::Sqlite;
    let file = sqlite.then(|| sqlite::file_of(&url)).flatten();
    let settings = budget::Settings::new(
        args.budget,
        file.is_some().then_some(args.wal_limit),
        args.retention,
        args.slow,
    );
    let settings = if sqlite {
        settings
    } else {
        settings.on_postgres()
    };
    let storage = budget::Storage::new(settings.clone());
    let measure = if sqlite {
        budget::Measure::Sqlite { file: file.clone() }
    } else {
        budget::Measure::Postgres(Default::default())
    };
    let writer_target = match file.clone() {
        Some(path) => writer::Target::SqliteFile {
            path,
            wal_limit: settings.wal_limit,
        },
        None => writer::Target::Pool {
            pool: pool.clone(),
            sqlite,
        },
    };
    // Records stored up to `stored` are counted by the rebuild, later ones by the writer as
    // it commits them: none twice.
    let aggregates = aggregate::Aggregates::new(args.retention);
    let stored = store::max_id(&pool).await?;
    let writer = writer::Writer::start(writer_target, export, Some(aggregates.clone()))?;
    // On /metrics from the start, at 0: a dashboard tells "never" from "not reported".
    for counter in [
        "events_batches_refused_total",
        "events_summaries_total",
        "events_summary_records_total",
    ] {
        metrics::counter!(counter).increment(0);
    }
    // On a SQLite file the writer runs the pruner's deletions too (crate::deletion).
    let deleter = if file.is_some() {
        deletion::Deleter::Writer(writer.clone())
    } else {
        deletion::Deleter::pool(pool.clone())
    };
    tokio::spawn(budget::Pruner::new(pool.clone(), deleter, measure, storage.clone()).run());
    tokio::spawn(rebuild(
        pool.clone(),
        aggregates.clone(),
        args.retention,
        stored,
    ));
    let ticking = aggregates.clone();
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        loop {
            ticker.tick().await;
            ticking.tick();
        }
    });
    logs_api::describe_metrics();
    let registry = registry::Registry::follow(&args.common.registry_url)?;
    let state = api::AppState {
        pool: pool.clone(),
        live: live::Live::start(pool.clone(), registry.clone(), aggregates.clone()),
        registry,
        writer,
        aggregates,
        storage,
    };
    let tokens = Tokens::new(
        &args.tokens,
        RegistryClient::new(&args.common.registry_url)?,
    )?;
    let service = Service::new("events", args.port)
        .without_events()
        .serving_the_mesh()
        .taking_operator_tokens(tokens);
    service.health.add_check("database", move || {
        let pool = pool.clone();
        async move { stratus_kit::db::ping(&pool).await }
    });
    service
        .run(&args.common, api::routes().with_state(state))
        .await
}

/// Records read per page while rebuilding the aggregates.
const REBUILD_PAGE: i64 = 20_000;
/// The longest a rebuild may take: past it, the window's older records are left uncounted.
const REBUILD_DEADLINE: Duration = Duration::from_secs(60);

/// On start: counts the records still stored (up to id `up_to`, within the retention) into the
/// aggregates, stats and topology alike, page by page in the order they arrived, so a restart
/// does not lose the window. Until it ends, stats show only part of the time before the start.
/// It reads at most what the budget holds, and stops at [`REBUILD_DEADLINE`] whatever the
/// database's pace.
pub async fn rebuild(
    pool: sqlx::AnyPool,
    aggregates: aggregate::Aggregates,
    retention: Duration,
    up_to: i64,
) {
    let started = std::time::Instant::now();
    let now = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000) as i64;
    let since = now - retention.as_micros().min(i64::MAX as u128 / 2) as i64;
    let mut after = 0;
    let mut counted = 0usize;
    while started.elapsed() < REBUILD_DEADLINE {
        match store::page(&pool, after, up_to, since, REBUILD_PAGE).await {
            Ok((page, last)) => {
                counted += page.len();
                aggregates.add(&page);
                match last {
                    Some(last) if page.len() as i64 == REBUILD_PAGE => after = last,
                    _ => {
                        tracing::info!(
                            records = counted,
                            seconds = started.elapsed().as_secs_f64(),
                            "stats rebuilt from the stored records"
                        );
                        return;
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, records = counted, "rebuilding stats from the stored records failed");
                return;
            }
        }
    }
    tracing::warn!(
        records = counted,
        "rebuilding stats took too long: older records of the window are not counted"
    );
}
