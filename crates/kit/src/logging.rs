//! Logs as an event stream (factor 11): one JSON object a line on stdout, or a human format when
//! stdout is a terminal. Request spans carry `trace_id`, so every line a request causes can be
//! found from its trace.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::CommonArgs;

pub fn init(component: &str, args: &CommonArgs) {
    let filter = EnvFilter::try_new(&args.log).unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match args.log_format.as_deref() {
        Some("json") => true,
        Some(_) => false,
        None => !std::io::stdout().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    let result = if json {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder.with_target(false).try_init()
    };
    if result.is_ok() {
        tracing::info!(component, version = env!("CARGO_PKG_VERSION"), "starting");
    }
}
