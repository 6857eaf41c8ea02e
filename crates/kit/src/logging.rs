//! Logs as an event stream (factor 11): one JSON object a line on stdout, or a human format when
//! stdout is a terminal. Request spans carry `trace_id` and `span_id`, so every line a request
//! causes can be found from its trace.
//!
//! Beside stdout, the lines are shipped to the event sink ([`crate::log_ship`]) when event
//! reporting is on (`STRATUS_EVENTS`, to `STRATUS_EVENTS_URL`) and `STRATUS_LOG_SHIP` is not off,
//! from `STRATUS_LOG_SHIP_LEVEL` (info) up. The sink itself does not ship its own: the lines that
//! matter most from it say that it cannot store, and a sink posting its lines to itself would
//! take its own intake's lines in as more intake.

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::CommonArgs;

/// The component that never ships its lines: the sink.
const SINK: &str = "events";

/// Installs the process's logging. Inside a tokio runtime, with shipping on, also starts the
/// task that ships lines to the sink (see the module's notes).
pub fn init(component: &str, args: &CommonArgs) {
    let filter = EnvFilter::try_new(&args.log).unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match args.log_format.as_deref() {
        Some("json") => true,
        Some(_) => false,
        None => !std::io::stdout().is_terminal(),
    };
    let stdout = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stdout)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_target(false)
            .with_writer(std::io::stdout)
            .boxed()
    };
    let shipping = ships(component, args)
        .then(|| tokio::runtime::Handle::try_current().ok())
        .flatten()
        .map(|_| {
            crate::log_ship::start(crate::log_ship::Settings {
                service: component.to_string(),
                instance: args.instance_id(),
                sink: args.events_url.clone(),
                min_level: args.log_ship_level,
            })
        });
    let result = tracing_subscriber::registry()
        .with(filter)
        .with(stdout)
        .with(shipping)
        .try_init();
    if result.is_ok() {
        tracing::info!(component, version = env!("CARGO_PKG_VERSION"), "starting");
    }
}

/// Whether `component` ships its lines to the sink under `args`.
fn ships(component: &str, args: &CommonArgs) -> bool {
    args.events && args.log_ship && component != SINK
}
