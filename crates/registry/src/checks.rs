//! Active health checks: the registry probes the instances that declare a check.
//!
//! A registration may carry `"check": {"http": "/healthz"}` (a GET that must answer 2xx),
//! `"check": {"tcp": true}` (a connection that must open) or `"check": {"grpc": ""}` (gRPC's
//! standard health service must answer SERVING for the named service, "" for the whole server:
//! `stratus_kit::grpc_health`), with `interval` (default 500ms) and
//! `timeout` (default 300ms, or the interval if shorter). Each probe's outcome moves the
//! instance's health:
//!
//! - a pass makes it `passing`;
//! - one failure makes it `warning` (still routed to), and the next probe comes sooner
//!   ([`RECHECK`]) so a real failure is confirmed fast;
//! - [`CRITICAL_AFTER`] consecutive failures make it `critical`: it is left out of every list and
//!   every watch until a probe passes again.
//!
//! Every change of health moves the registry's index, so blocking queries and the event stream
//! tell every watcher at once. With the memory store the one registry process probes every
//! instance ([`run`]); with etcd, each check is owned by one of the registry processes and the
//! verdict is written into etcd (`crate::etcd_checks`).

mod http_probe;
pub mod schedule;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use stratus_kit::model::{Check, Health, Registration};

use crate::store::MemoryStore;
use http_probe::HttpTarget;

pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(500);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(300);
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
pub const MAX_INTERVAL: Duration = Duration::from_secs(600);
pub const MIN_TIMEOUT: Duration = Duration::from_millis(10);
/// Consecutive failures that make an instance critical.
pub const CRITICAL_AFTER: u32 = 2;
/// After a failure, the next probe comes this soon (or at the interval, if that is sooner).
pub const RECHECK: Duration = Duration::from_millis(100);
/// How often the scheduler looks for checks that are due.
const TICK: Duration = Duration::from_millis(20);

/// A validated check: what to probe, how often, and how long to wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckSpec {
    pub check: Check,
    pub interval: Duration,
    pub timeout: Duration,
}

impl CheckSpec {
    /// The check a registration declares, validated; `None` when it declares none.
    pub fn from_registration(registration: &Registration) -> Result<Option<CheckSpec>, String> {
        let Some(check) = &registration.check else {
            if registration.interval.is_some() || registration.timeout.is_some() {
                return Err("interval and timeout need a check".into());
            }
            return Ok(None);
        };
        match check {
            Check::Http(path) => {
                let ok = path.starts_with('/')
                    && path.len() <= 1024
                    && path.bytes().all(|b| b.is_ascii_graphic());
                if !ok {
                    return Err(
                        "check.http must be a path starting with '/', at most 1024 visible characters"
                            .into(),
                    );
                }
            }
            Check::Tcp(true) => {}
            Check::Tcp(false) => {
                return Err("check.tcp must be true (leave out `check` for no check)".into())
            }
            Check::Grpc(service) => {
                let ok = service.len() <= stratus_kit::grpc_health::MAX_SERVICE_NAME
                    && service.bytes().all(|b| b.is_ascii_graphic());
                if !ok {
                    return Err(
                        "check.grpc must name a service in at most 200 visible characters (\"\" for the whole server)"
                            .into(),
                    );
                }
            }
        }
        let interval = parse(
            registration.interval.as_deref(),
            "interval",
            DEFAULT_INTERVAL,
        )?;
        // Without a timeout of its own, a short interval gets one that fits in it.
        let timeout = parse(
            registration.timeout.as_deref(),
            "timeout",
            DEFAULT_TIMEOUT.min(interval),
        )?;
        if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&interval) {
            return Err("interval must be between 100ms and 10m".into());
        }
        if timeout < MIN_TIMEOUT || timeout > interval {
            return Err("timeout must be at least 10ms and no longer than the interval".into());
        }
        Ok(Some(CheckSpec {
            check: check.clone(),
            interval,
            timeout,
        }))
    }

    /// The health after `failures` consecutive failed probes.
    pub fn health_after(failures: u32) -> Health {
        match failures {
            0 => Health::Passing,
            n if n < CRITICAL_AFTER => Health::Warning,
            _ => Health::Critical,
        }
    }

    /// When to probe next, after a probe that left `failures` consecutive failures.
    pub fn next_delay(&self, failures: u32) -> Duration {
        if failures == 0 || failures >= CRITICAL_AFTER {
            self.interval
        } else {
            self.interval.min(RECHECK)
        }
    }
}

fn parse(text: Option<&str>, what: &str, default: Duration) -> Result<Duration, String> {
    match text {
        None => Ok(default),
        Some(text) => {
            stratus_kit::duration::parse(text).map_err(|error| format!("{what}: {error}"))
        }
    }
}

/// One probe to run: what to probe, and which registration of the instance it is for. Built
/// once per registration and shared (an `Arc`) by the schedule and each probe in flight, so a
/// probe copies nothing.
#[derive(Debug)]
pub struct Due {
    pub service: String,
    pub id: String,
    pub authority: String,
    pub spec: CheckSpec,
    /// Which registration of the instance this probe is for (a result for an older one is
    /// dropped).
    pub generation: u64,
    /// For a plaintext HTTP check: its encoded request and kept connection.
    http: Option<HttpTarget>,
}

impl Due {
    pub fn new(
        service: &str,
        id: &str,
        authority: String,
        spec: CheckSpec,
        generation: u64,
    ) -> Self {
        let http = match &spec.check {
            Check::Http(path) => Some(HttpTarget::new(&authority, path)),
            _ => None,
        };
        Self {
            service: service.to_string(),
            id: id.to_string(),
            authority,
            spec,
            generation,
            http,
        }
    }
}

/// How many probes share one task: a tick's due probes run in batches of this many, each batch
/// a task of its own.
const BATCH: usize = 64;

/// Background task: runs every due check of `store`.
///
/// Every `TICK` the store hands over the checks that are due (from its schedule, without
/// looking at the others); their probes run concurrently in batches of [`BATCH`], each batch a
/// task (a `FuturesUnordered`), each probe recording its outcome as it finishes, so a slow
/// instance delays no other. A task per probe (a spawn and a cross-thread wake-up each, at
/// 20,000 probes a second) was a large share of the checker's CPU; one task for all of them
/// held the checker to one worker thread, so when the machine was busy it fell behind, its
/// probes timed out waiting for it, and a dead instance was found seconds late
/// (`EXTRA=10000 bench/discovery.sh`). Batches keep the spawns few and let every worker help.
pub async fn run(store: Arc<MemoryStore>) {
    let probes = Probes::default();
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let due = store.due_checks(Instant::now());
        for batch in due.chunks(BATCH) {
            let batch = batch.to_vec();
            let store = store.clone();
            let probes = probes.clone();
            tokio::spawn(async move {
                let mut inflight: FuturesUnordered<_> = batch
                    .into_iter()
                    .map(|due| probe_and_record(&store, &probes, due))
                    .collect();
                while inflight.next().await.is_some() {}
            });
        }
    }
}

/// Runs one probe and records its outcome in the store, logging a change of health.
async fn probe_and_record(store: &MemoryStore, probes: &Probes, due: Arc<Due>) {
    let outcome = probe(probes, &due).await;
    let passed = outcome.is_ok();
    if let Some((before, after)) = store.record_check(
        &due.service,
        &due.id,
        due.generation,
        passed,
        Instant::now(),
    ) {
        let reason = outcome.err().unwrap_or_default();
        if after == Health::Passing {
            tracing::info!(service = %due.service, id = %due.id, ?before, ?after, "health check passing");
        } else {
            tracing::warn!(service = %due.service, id = %due.id, ?before, ?after, %reason, "health check failed");
        }
    }
}

/// The clients probes go out on: HTTP/1.1 with the mesh on (reqwest, mutual TLS) and gRPC's
/// health service (h2c, or mutual TLS with the mesh on). Plaintext HTTP probes need neither
/// (`http_probe`).
#[derive(Clone)]
pub struct Probes {
    grpc: stratus_kit::grpc_health::Prober,
}

impl Default for Probes {
    fn default() -> Self {
        Self {
            grpc: stratus_kit::grpc_health::Prober::new(MAX_INTERVAL),
        }
    }
}

/// Runs one probe: `Ok` if it passed, else why not.
pub async fn probe(probes: &Probes, due: &Due) -> Result<(), String> {
    match &due.spec.check {
        Check::Http(path) => {
            let mesh = stratus_kit::mesh::current();
            if !mesh.is_on() {
                if let Some(http) = &due.http {
                    return http.probe(&due.authority, path, due.spec.timeout).await;
                }
            }
            // With the mesh on, the probe is a mutual TLS call that checks the instance is
            // the service it registered as (the registry's own certificate is its identity).
            let url = format!("{}://{}{path}", mesh.scheme(), due.authority);
            let http = mesh
                .client(&due.service)
                .map_err(|error| format!("{error:#}"))?;
            match http.get(&url).timeout(due.spec.timeout).send().await {
                Ok(response) if response.status().is_success() => Ok(()),
                Ok(response) => Err(format!("{url} answered {}", response.status())),
                Err(error) if error.is_timeout() => Err(format!("{url}: no answer in time")),
                Err(error) => Err(format!("{url}: {error}")),
            }
        }
        Check::Tcp(_) => {
            match tokio::time::timeout(
                due.spec.timeout,
                tokio::net::TcpStream::connect(&due.authority),
            )
            .await
            {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(error)) => Err(format!("tcp {}: {error}", due.authority)),
                Err(_) => Err(format!("tcp {}: no connection in time", due.authority)),
            }
        }
        Check::Grpc(service) => {
            // Over mutual TLS with the mesh on, checking the instance is its service.
            let asked = probes
                .grpc
                .check_meshed(&due.service, &due.authority, service);
            match tokio::time::timeout(due.spec.timeout, asked).await {
                Ok(outcome) => outcome,
                Err(_) => Err(format!("grpc {}: no answer in time", due.authority)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registration(
        check: Option<Check>,
        interval: Option<&str>,
        timeout: Option<&str>,
    ) -> Registration {
        Registration {
            address: "127.0.0.1".into(),
            port: 8080,
            version: None,
            metadata: Default::default(),
            ttl_seconds: None,
            check,
            interval: interval.map(str::to_string),
            timeout: timeout.map(str::to_string),
        }
    }

    #[test]
    fn defaults_and_bounds() {
        let http = Some(Check::Http("/healthz".into()));
        let spec = CheckSpec::from_registration(&registration(http.clone(), None, None))
            .unwrap()
            .unwrap();
        assert_eq!(spec.interval, DEFAULT_INTERVAL);
        assert_eq!(spec.timeout, DEFAULT_TIMEOUT);
        assert_eq!(
            CheckSpec::from_registration(&registration(None, None, None)),
            Ok(None)
        );
        let tcp = Some(Check::Tcp(true));
        assert!(
            CheckSpec::from_registration(&registration(tcp, Some("1s"), Some("250ms"))).is_ok()
        );
        for (check, interval, timeout) in [
            (http.clone(), Some("10ms"), None),
            (http.clone(), Some("1h"), None),
            (http.clone(), Some("soon"), None),
            (http.clone(), Some("500ms"), Some("1s")),
            (http.clone(), None, Some("1ms")),
            (Some(Check::Http("healthz".into())), None, None),
            (Some(Check::Http("/a b".into())), None, None),
            (Some(Check::Tcp(false)), None, None),
            (None, Some("1s"), None),
        ] {
            assert!(
                CheckSpec::from_registration(&registration(check.clone(), interval, timeout))
                    .is_err(),
                "{check:?} {interval:?} {timeout:?}"
            );
        }
    }

    #[test]
    fn health_moves_with_failures() {
        assert_eq!(CheckSpec::health_after(0), Health::Passing);
        assert_eq!(CheckSpec::health_after(1), Health::Warning);
        assert_eq!(CheckSpec::health_after(CRITICAL_AFTER), Health::Critical);
    }

    #[test]
    fn checks_parse_from_json() {
        let body =
            r#"{"address":"127.0.0.1","port":1,"check":{"http":"/healthz"},"interval":"250ms"}"#;
        let registration: Registration = serde_json::from_str(body).unwrap();
        assert_eq!(registration.check, Some(Check::Http("/healthz".into())));
        let body = r#"{"address":"127.0.0.1","port":1,"check":{"tcp":true}}"#;
        let registration: Registration = serde_json::from_str(body).unwrap();
        assert_eq!(registration.check, Some(Check::Tcp(true)));
        let body = r#"{"address":"127.0.0.1","port":1,"check":{"grpc":"shop.Orders"}}"#;
        let registration: Registration = serde_json::from_str(body).unwrap();
        assert_eq!(registration.check, Some(Check::Grpc("shop.Orders".into())));
        let body = r#"{"address":"127.0.0.1","port":1,"check":{"exec":"true"}}"#;
        assert!(serde_json::from_str::<Registration>(body).is_err());
    }
}
