//! The dashboard's live feed: one snapshot of the last minute (topology, per-service and
//! per-instance stats merged with the registry's health, recent errors, recent traces), computed
//! once a second while anyone watches and pushed to every watcher by server-sent events.
//!
//! One task computes, however many pages are open: the snapshot goes into a `watch` channel and
//! each `GET /v1/stream` connection forwards whatever is newest. With nobody connected the task
//! does nothing but tick.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde::Serialize;
use serde_json::json;
use sqlx::AnyPool;
use tokio::sync::watch;

use crate::aggregate::Aggregates;
use crate::registry::{Registry, RegistryView};
use crate::stats::ServiceStats;
use crate::topology::{self, Topology};
use crate::{store, trace_list};

/// The window every snapshot covers.
pub const WINDOW: Duration = Duration::from_secs(60);
/// How often a snapshot is pushed.
pub const EVERY: Duration = Duration::from_secs(1);

/// One instance: its health in the registry and its share of its service's traffic.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InstanceShare {
    pub id: String,
    /// `passing`, `warning`, `critical`, or `gone` (handled traffic, no longer registered).
    pub health: String,
    pub address: Option<String>,
    pub version: Option<String>,
    pub count: u64,
    /// This instance's fraction of the service's records in the window (0-1).
    pub share: f64,
    pub error_rate: f64,
    pub p99_ms: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceInstances {
    pub service: String,
    pub count: u64,
    pub instances: Vec<InstanceShare>,
}

/// Puts the registry's instances and the window's per-instance stats side by side.
pub fn instances(registry: &RegistryView, stats: &[ServiceStats]) -> Vec<ServiceInstances> {
    let mut out: BTreeMap<String, ServiceInstances> = BTreeMap::new();
    for (service, registered) in &registry.services {
        let entry = out
            .entry(service.clone())
            .or_insert_with(|| ServiceInstances {
                service: service.clone(),
                count: 0,
                instances: Vec::new(),
            });
        for instance in registered {
            entry.instances.push(InstanceShare {
                id: instance.id.clone(),
                health: serde_json::to_value(instance.health)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                address: Some(format!("{}:{}", instance.address, instance.port)),
                version: Some(instance.version.clone()),
                count: 0,
                share: 0.0,
                error_rate: 0.0,
                p99_ms: 0.0,
            });
        }
    }
    for service in stats {
        let entry = out
            .entry(service.service.clone())
            .or_insert_with(|| ServiceInstances {
                service: service.service.clone(),
                count: 0,
                instances: Vec::new(),
            });
        entry.count = service.summary.count;
        for seen in &service.instances {
            let at = match entry.instances.iter().position(|i| i.id == seen.instance) {
                Some(at) => at,
                None => {
                    entry.instances.push(InstanceShare {
                        id: seen.instance.clone(),
                        health: "gone".into(),
                        address: None,
                        version: None,
                        count: 0,
                        share: 0.0,
                        error_rate: 0.0,
                        p99_ms: 0.0,
                    });
                    entry.instances.len() - 1
                }
            };
            let slot = &mut entry.instances[at];
            slot.count = seen.summary.count;
            slot.share = seen.summary.count as f64 / service.summary.count.max(1) as f64;
            slot.error_rate = seen.summary.error_rate;
            slot.p99_ms = seen.summary.p99_ms;
        }
    }
    out.into_values().collect()
}

/// The topology of the calls started in the `window` up to `now_us`, with every registered
/// service as a node and the broker's backend.
pub fn topology(
    aggregates: &Aggregates,
    now_us: i64,
    window: Duration,
    registry: &RegistryView,
) -> Topology {
    let known = topology::Known {
        services: registry.services.keys().cloned().collect(),
        broker: registry.broker.clone(),
    };
    let since_us = now_us - window.as_micros() as i64;
    aggregates.topology_at(
        since_us,
        now_us.div_euclid(1_000_000),
        window.as_secs_f64(),
        &known,
    )
}

fn now_us() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000) as i64
}

/// Everything the dashboard shows, as one JSON document.
pub async fn snapshot(
    pool: &AnyPool,
    registry: &Registry,
    aggregates: &Aggregates,
) -> Result<String, sqlx::Error> {
    let now = now_us();
    let since = now - WINDOW.as_micros() as i64;
    let view = registry.snapshot();
    let services = aggregates.stats(since);
    let errors = store::events(
        pool,
        &store::Filter {
            status: Some((500, 599)),
            since_us: Some(since),
            limit: 20,
            ..Default::default()
        },
    )
    .await?
    .into_iter()
    .map(crate::record::Row::into_record)
    .collect::<Vec<_>>();
    let traces = trace_list::newest(pool, since, now - 1_000_000, 15).await?;
    let body = json!({
        "time": crate::record::format_micros(now),
        "window_seconds": WINDOW.as_secs_f64(),
        "registry_reachable": view.reachable,
        "topology": topology(aggregates, now, WINDOW, &view),
        "instances": instances(&view, &services),
        "services": services,
        "errors": errors,
        "traces": traces,
    });
    Ok(body.to_string())
}

/// The channel every stream reads from, fed by one task.
#[derive(Clone)]
pub struct Live {
    latest: watch::Sender<Option<Arc<String>>>,
}

impl Live {
    pub fn start(pool: AnyPool, registry: Registry, aggregates: Aggregates) -> Self {
        let (latest, _) = watch::channel(None);
        let live = Self { latest };
        tokio::spawn(feed(live.latest.clone(), pool, registry, aggregates));
        live
    }

    /// `GET /v1/stream`: a `snapshot` event every second.
    pub fn stream(&self) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
        let receiver = self.latest.subscribe();
        let events = futures_util::stream::unfold(receiver, |mut receiver| async move {
            loop {
                receiver.changed().await.ok()?;
                let latest = receiver.borrow_and_update().clone();
                if let Some(body) = latest {
                    let event = Event::default().event("snapshot").data(body.as_str());
                    return Some((Ok(event), receiver));
                }
            }
        });
        Sse::new(events).keep_alive(KeepAlive::default())
    }
}

async fn feed(
    latest: watch::Sender<Option<Arc<String>>>,
    pool: AnyPool,
    registry: Registry,
    aggregates: Aggregates,
) {
    let mut ticker = tokio::time::interval(EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if latest.receiver_count() == 0 {
            continue;
        }
        match snapshot(&pool, &registry, &aggregates).await {
            Ok(body) => {
                latest.send_replace(Some(Arc::new(body)));
            }
            Err(error) => tracing::warn!(%error, "computing the dashboard snapshot failed"),
        }
    }
}
