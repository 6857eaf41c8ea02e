//! Hot reload of the route table: the file is checked twice a second, and a changed file that
//! parses replaces the table in one atomic swap. Requests already matched keep the table they
//! started with; new requests see the new one; no connection is touched. A file that does not
//! parse is refused with its error logged and shown on the admin API, and the old table stays.
//! A route whose `split` the new file leaves as it was keeps its deployment state (what the admin
//! API or a canary rollback changed since), see [`RouteTable::carry_over`].

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::proxy::Shared;
use crate::route::routes::RouteTable;

const CHECK_EVERY: Duration = Duration::from_millis(500);

/// What the admin API reports about the route file.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReloadStatus {
    pub file: Option<String>,
    /// How many times a changed file was loaded.
    pub reloads: u64,
    /// The error of the last change that was refused, until a good file replaces it.
    pub last_error: Option<String>,
}

pub type SharedStatus = Arc<Mutex<ReloadStatus>>;

pub async fn watch(path: PathBuf, shared: Arc<Shared>, status: SharedStatus) {
    let mut last = std::fs::read(&path).ok();
    let mut ticker = tokio::time::interval(CHECK_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Ok(contents) = tokio::fs::read(&path).await else {
            continue; // Mid-replace or briefly missing: keep serving, look again soon.
        };
        if last.as_deref() == Some(contents.as_slice()) {
            continue;
        }
        last = Some(contents.clone());
        let parsed = std::str::from_utf8(&contents)
            .map_err(|_| "the file is not UTF-8".to_string())
            .and_then(|text| RouteTable::parse(text).map_err(|e| e.to_string()));
        let mut report = status.lock().unwrap_or_else(|p| p.into_inner());
        match parsed {
            Ok(mut table) => {
                table.carry_over(&shared.routes.load());
                tracing::info!(routes = table.routes.len(), file = %path.display(), "route table reloaded");
                shared.routes.store(Arc::new(table));
                // A route may now send elsewhere, or keep answers under other rules.
                shared.edge_cache.purge(&crate::edge_cache::Purge::All);
                report.reloads += 1;
                report.last_error = None;
                metrics::counter!("gateway_route_reloads_total", "result" => "loaded").increment(1);
            }
            Err(error) => {
                tracing::error!(%error, file = %path.display(), "route file refused; the previous table stays in force");
                report.last_error = Some(error);
                metrics::counter!("gateway_route_reloads_total", "result" => "refused")
                    .increment(1);
            }
        }
    }
}
