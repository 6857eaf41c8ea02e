//! Client-side discovery: find the instances of other services and call them.
//!
//! A [`Discovery`] follows the registry's incremental watch (`GET /v1/watch?deltas=true`: the
//! whole view once, then each change the moment it happens, resumed from the view's index after
//! a drop; a registry without it is asked with blocking queries, `GET /v1/services?index=N`),
//! and keeps the instances of every service in memory. A
//! call picks an instance round robin and never waits for the registry. Calls whose connection
//! fails are retried once on another instance.
//!
//! When the registry cannot be reached, the last list it gave stays in use (fail static): a
//! registry outage stops news from arriving but does not stop traffic. Two gauges tell how fresh
//! the view is: `discovery_registry_up` (1 when the last call to the registry answered) and
//! `discovery_view_age_seconds` (seconds since the registry last said anything; while it is up
//! this stays below the watch's keep-alive period, 15 s). A restarted registry says it is
//! `warming` until its instances have re-registered; until then its view is merged into the
//! last one ([`Catalog::merged_with`]) rather than replacing it.
//!
//! [`Discovery::start_dns`] takes the instances from DNS instead ([`crate::dns_discovery`]),
//! with the same view, the same fail static and the same gauges ("registry" then means the DNS
//! server).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::config::{DiscoveryArgs, DiscoverySource};
use crate::deltas::{Delta, Resume};
use crate::dns_discovery::{DnsFollower, DnsSettings};
use crate::model::{Catalog, Instance};
use crate::registry_client::RegistryClient;

/// How long one blocking query waits for a change before it is asked again.
pub const WAIT: Duration = Duration::from_secs(5);
/// Default limit for a call made through [`Discovery::send`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the staleness gauge is refreshed.
const GAUGE_PERIOD: Duration = Duration::from_millis(500);

/// Why a call through discovery failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("no known instance of `{0}`")]
    NoInstance(String),
    #[error("calling {service}: {source}")]
    Request {
        service: String,
        #[source]
        source: reqwest::Error,
    },
}

/// The instances of every service, as the registry last described them.
pub struct Discovery {
    inner: Arc<Inner>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

struct Inner {
    view: ArcSwap<HashMap<String, Arc<Vec<Instance>>>>,
    /// Round-robin positions per service.
    positions: Mutex<HashMap<String, Arc<AtomicUsize>>>,
    /// The registry index of the view (0: none yet); changes wake [`Discovery::changed`].
    index: watch::Sender<u64>,
    last_answer: Mutex<Option<Instant>>,
    registry_up: AtomicBool,
    http: reqwest::Client,
    timeout: Duration,
}

impl Discovery {
    /// Starts following the registry behind `client`. Calls time out after `timeout`.
    pub fn start(client: RegistryClient, timeout: Duration) -> anyhow::Result<Self> {
        let inner = Inner::new(timeout)?;
        let follower = tokio::spawn(follow(client, None, inner.clone()));
        Ok(Self::with_follower(inner, follower))
    }

    /// As [`Discovery::start`], following only `services` (the ones this process calls): a
    /// change to any other service is not even sent to it.
    pub fn start_for(
        client: RegistryClient,
        services: Vec<String>,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let inner = Inner::new(timeout)?;
        let mut services = services;
        services.sort();
        services.dedup();
        let follower = tokio::spawn(follow(client, Some(services), inner.clone()));
        Ok(Self::with_follower(inner, follower))
    }

    /// Starts asking DNS for the instances of `services` (DNS has no "every service" query, so
    /// the caller names the ones it calls). Calls time out after `timeout`.
    pub fn start_dns(
        settings: DnsSettings,
        services: Vec<String>,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let inner = Inner::new(timeout)?;
        let follower = tokio::spawn(follow_dns(
            DnsFollower::new(settings),
            services,
            inner.clone(),
        ));
        Ok(Self::with_follower(inner, follower))
    }

    /// Starts the source `args` name: the registry behind `registry_url`, or DNS for `services`.
    pub fn from_args(
        args: &DiscoveryArgs,
        registry_url: &str,
        services: Vec<String>,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        match args.discovery {
            DiscoverySource::Registry => {
                Self::start_for(RegistryClient::new(registry_url)?, services, timeout)
            }
            DiscoverySource::Dns => Self::start_dns(args.dns_settings()?, services, timeout),
        }
    }

    fn with_follower(inner: Arc<Inner>, follower: tokio::task::JoinHandle<()>) -> Self {
        let gauges = tokio::spawn({
            let inner = inner.clone();
            async move {
                let mut ticker = tokio::time::interval(GAUGE_PERIOD);
                loop {
                    ticker.tick().await;
                    inner.publish_gauges();
                }
            }
        });
        Self {
            inner,
            tasks: vec![follower, gauges],
        }
    }
}

impl Inner {
    fn new(timeout: Duration) -> anyhow::Result<Arc<Inner>> {
        crate::install_crypto_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(1).min(timeout))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()?;
        let inner = Arc::new(Inner {
            view: ArcSwap::from_pointee(HashMap::new()),
            positions: Mutex::new(HashMap::new()),
            index: watch::Sender::new(0),
            last_answer: Mutex::new(None),
            registry_up: AtomicBool::new(false),
            http,
            timeout,
        });
        Ok(inner)
    }
}

impl Discovery {
    /// The known instances of `service` (empty if none).
    pub fn instances(&self, service: &str) -> Arc<Vec<Instance>> {
        self.inner.instances(service)
    }

    /// The next instance of `service`, round robin.
    pub fn pick(&self, service: &str) -> Option<Instance> {
        self.inner.pick(service, None)
    }

    /// Whether the registry answered the last time it was asked.
    pub fn registry_up(&self) -> bool {
        self.inner.registry_up.load(Ordering::SeqCst)
    }

    /// Time since the registry last answered (`None`: it never has).
    pub fn view_age(&self) -> Option<Duration> {
        self.inner.view_age()
    }

    /// The registry index the current view was read at (0: no view yet).
    pub fn index(&self) -> u64 {
        *self.inner.index.borrow()
    }

    /// Waits until `service` has at least `count` instances, or `within` passes. Returns
    /// whether it got there.
    pub async fn wait_for(&self, service: &str, count: usize, within: Duration) -> bool {
        let mut changes = self.inner.index.subscribe();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.instances(service).len() >= count {
                return true;
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => continue,
                _ => return self.instances(service).len() >= count,
            }
        }
    }

    /// `GET <instance><path>` on an instance of `service`: see [`Discovery::send`].
    pub async fn get(&self, service: &str, path: &str) -> Result<reqwest::Response, CallError> {
        let path = path.to_string();
        self.send(service, move |http, base| http.get(format!("{base}{path}")))
            .await
    }

    /// Sends the request `build` makes for an instance's base URL (`http://host:port`), with
    /// the call timeout. If the connection fails (refused, reset before an answer, unreachable),
    /// it is sent once more to another instance; timeouts and answers of any status are returned
    /// as they are, since the request may have been processed.
    pub async fn send<F>(&self, service: &str, build: F) -> Result<reqwest::Response, CallError>
    where
        F: Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    {
        let first = self
            .inner
            .pick(service, None)
            .ok_or_else(|| CallError::NoInstance(service.to_string()))?;
        let error = match self.inner.call(service, &first, &build).await {
            Ok(response) => return Ok(response),
            Err(error) => error,
        };
        if !error.is_connect() {
            return Err(CallError::Request {
                service: service.to_string(),
                source: error,
            });
        }
        tracing::debug!(%service, instance = %first.id, %error, "connection failed; trying another instance");
        metrics::counter!("discovery_retries_total", "service" => service.to_string()).increment(1);
        match self.inner.pick(service, Some(&first.id)) {
            Some(second) => self
                .inner
                .call(service, &second, &build)
                .await
                .map_err(|source| CallError::Request {
                    service: service.to_string(),
                    source,
                }),
            None => Err(CallError::Request {
                service: service.to_string(),
                source: error,
            }),
        }
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Inner {
    fn instances(&self, service: &str) -> Arc<Vec<Instance>> {
        self.view.load().get(service).cloned().unwrap_or_default()
    }

    fn pick(&self, service: &str, avoid: Option<&str>) -> Option<Instance> {
        let instances = self.instances(service);
        let candidates: Vec<&Instance> = instances
            .iter()
            .filter(|i| Some(i.id.as_str()) != avoid)
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let position = {
            let mut positions = self.positions.lock().unwrap_or_else(|p| p.into_inner());
            positions.entry(service.to_string()).or_default().clone()
        };
        let next = position.fetch_add(1, Ordering::Relaxed);
        Some(candidates[next % candidates.len()].clone())
    }

    async fn call<F>(
        &self,
        service: &str,
        instance: &Instance,
        build: &F,
    ) -> Result<reqwest::Response, reqwest::Error>
    where
        F: Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    {
        // With the mesh on, each service has its own client, which accepts only a server
        // whose certificate names that service.
        let mesh = crate::mesh::current();
        let meshed;
        let http = if mesh.is_on() {
            meshed = mesh.client(service).ok();
            meshed.as_ref().unwrap_or(&self.http)
        } else {
            &self.http
        };
        build(http, &instance.base_url())
            .timeout(self.timeout)
            .send()
            .await
    }

    fn view_age(&self) -> Option<Duration> {
        self.last_answer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|at| at.elapsed())
    }

    fn answered(&self, catalog: &Catalog) {
        *self.last_answer.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        self.registry_up.store(true, Ordering::SeqCst);
        self.apply(catalog);
    }

    /// Installs `catalog` as the view, without saying anything about the source's health.
    fn apply(&self, catalog: &Catalog) {
        let view: HashMap<String, Arc<Vec<Instance>>> = catalog
            .services
            .iter()
            .map(|(name, instances)| (name.clone(), Arc::new(instances.clone())))
            .collect();
        self.view.store(Arc::new(view));
        // Index 0 is "no view yet"; a registry always answers with 1 or more.
        let index = catalog.index.max(1);
        self.index.send_if_modified(|current| {
            let changed = *current != index;
            *current = index;
            changed
        });
        self.publish_gauges();
    }

    /// The registry is there (a keep-alive on its watch), with nothing new to say.
    fn heard(&self) {
        *self.last_answer.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        self.registry_up.store(true, Ordering::SeqCst);
        self.publish_gauges();
    }

    fn unreachable(&self) {
        self.registry_up.store(false, Ordering::SeqCst);
        self.publish_gauges();
    }

    fn publish_gauges(&self) {
        let up = self.registry_up.load(Ordering::SeqCst);
        metrics::gauge!("discovery_registry_up").set(if up { 1.0 } else { 0.0 });
        if let Some(age) = self.view_age() {
            metrics::gauge!("discovery_view_age_seconds").set(age.as_secs_f64());
        }
    }
}

/// Follows the registry's incremental watch on `services` (every service when `None`): a
/// snapshot, then each change, applied to the view, resuming after a drop from the view's index;
/// a registry without it (404) is followed with blocking queries instead ([`follow_blocking`]).
async fn follow(client: RegistryClient, services: Option<Vec<String>>, inner: Arc<Inner>) {
    let mut backoff = Duration::from_millis(50);
    // The view as last applied (a warming registry's snapshot is merged into it), and where
    // the watch resumes from.
    let mut last = Catalog::default();
    let mut resume: Option<Resume> = None;
    loop {
        let error = match client
            .watch_deltas(services.as_deref(), resume.as_ref())
            .await
        {
            Ok(Some(mut stream)) => {
                loop {
                    match stream.next().await {
                        Ok(Some(delta)) => {
                            backoff = Duration::from_millis(50);
                            match &delta {
                                Delta::Alive => {
                                    inner.heard();
                                    continue;
                                }
                                Delta::Snapshot(catalog) => {
                                    if catalog.warming {
                                        tracing::debug!("registry warming; keeping instances it does not list yet");
                                    }
                                    // An older registry's whole catalog: kept to what is followed.
                                    let mut catalog = catalog.clone();
                                    keep_followed(&mut catalog, services.as_deref());
                                    last = catalog.merged_with(&last);
                                }
                                Delta::Change(change) => change.apply_to(&mut last),
                            }
                            resume.get_or_insert_with(Resume::default).after(&delta);
                            inner.answered(&last);
                        }
                        Ok(None) => break anyhow::anyhow!("the registry closed the watch"),
                        Err(error) => break error,
                    }
                }
            }
            Ok(None) => {
                tracing::info!(
                    "the registry has no incremental watch; following it with blocking queries"
                );
                return follow_blocking(client, services, inner, last).await;
            }
            Err(error) => error,
        };
        if inner.registry_up.load(Ordering::SeqCst) {
            tracing::warn!(error = %format!("{error:#}"), "registry unreachable; using the last known instances");
        }
        inner.unreachable();
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// Follows a registry older than the incremental watch: a blocking query on the whole catalog
/// (`GET /v1/services?index=N`), asked again after every answer.
async fn follow_blocking(
    client: RegistryClient,
    services: Option<Vec<String>>,
    inner: Arc<Inner>,
    mut last: Catalog,
) {
    let mut index = 0;
    let mut backoff = Duration::from_millis(50);
    loop {
        match client.watch(index, WAIT).await {
            Ok(mut catalog) => {
                keep_followed(&mut catalog, services.as_deref());
                backoff = Duration::from_millis(50);
                if catalog.index < index {
                    tracing::info!("registry index went back (it restarted); taking its view");
                }
                let view = catalog.merged_with(&last);
                inner.answered(&view);
                index = catalog.index;
                last = view;
            }
            Err(error) => {
                if inner.registry_up.load(Ordering::SeqCst) {
                    tracing::warn!(error = %format!("{error:#}"), "registry unreachable; using the last known instances");
                }
                inner.unreachable();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                // Ask for the whole view, at once, when it is back.
                index = 0;
            }
        }
    }
}

/// Leaves in `catalog` only the `services` followed (all when `None`).
fn keep_followed(catalog: &mut Catalog, services: Option<&[String]>) {
    if let Some(services) = services {
        catalog
            .services
            .retain(|name, _| services.binary_search(name).is_ok());
    }
}

/// The DNS source: a round every refresh period; a service whose lookup failed keeps its last
/// answer, and the source counts as down until a round answers completely.
async fn follow_dns(mut follower: DnsFollower, services: Vec<String>, inner: Arc<Inner>) {
    loop {
        let round = follower.round(&services).await;
        if round.complete {
            inner.answered(&round.catalog);
        } else {
            if round.catalog.index > 0 {
                inner.apply(&round.catalog);
            }
            inner.unreachable();
        }
        tokio::time::sleep(round.next).await;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use axum::extract::{Query, State};
    use axum::routing::get;
    use axum::Router;

    use super::*;
    use crate::model::Health;

    fn instance(service: &str, id: &str, port: u16) -> Instance {
        Instance {
            id: id.into(),
            service: service.into(),
            address: "127.0.0.1".into(),
            port,
            version: "1".into(),
            metadata: BTreeMap::new(),
            health: Health::Passing,
            ttl_seconds: 3.0,
            registered_at: String::new(),
        }
    }

    /// A fake registry: answers `/v1/services` with whatever `catalog` holds, blocking while the
    /// asked index is current (up to the asked wait, capped at 200 ms).
    struct Fake {
        catalog: Mutex<Catalog>,
        /// Answer 503 to everything, as a registry that lost its footing would.
        down: AtomicBool,
    }

    async fn fake_registry(catalog: Catalog) -> (String, Arc<Fake>, tokio::task::JoinHandle<()>) {
        #[derive(serde::Deserialize)]
        struct Q {
            index: Option<u64>,
        }
        async fn list(
            State(fake): State<Arc<Fake>>,
            Query(q): Query<Q>,
        ) -> Result<axum::Json<Catalog>, axum::http::StatusCode> {
            for _ in 0..20 {
                if fake.down.load(Ordering::SeqCst) {
                    return Err(axum::http::StatusCode::SERVICE_UNAVAILABLE);
                }
                let current = fake.catalog.lock().unwrap().clone();
                if q.index.is_none_or(|i| current.index > i) {
                    return Ok(axum::Json(current));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok(axum::Json(fake.catalog.lock().unwrap().clone()))
        }
        let fake = Arc::new(Fake {
            catalog: Mutex::new(catalog),
            down: AtomicBool::new(false),
        });
        let app = Router::new()
            .route("/v1/services", get(list))
            .with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (url, fake, task)
    }

    async fn backend(name: &'static str) -> u16 {
        let app = Router::new().route("/who", get(move || async move { name }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        port
    }

    /// A port nothing listens on.
    fn closed_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    }

    fn catalog(index: u64, instances: Vec<Instance>) -> Catalog {
        let mut services: BTreeMap<String, Vec<Instance>> = BTreeMap::new();
        for instance in instances {
            services
                .entry(instance.service.clone())
                .or_default()
                .push(instance);
        }
        Catalog {
            index,
            services,
            ..Catalog::default()
        }
    }

    #[tokio::test]
    async fn follows_the_registry_and_balances_round_robin() {
        let (a, b) = (backend("a").await, backend("b").await);
        let (url, fake, _server) = fake_registry(catalog(
            5,
            vec![instance("svc", "a", a), instance("svc", "b", b)],
        ))
        .await;
        let discovery =
            Discovery::start(RegistryClient::new(url).unwrap(), Duration::from_secs(2)).unwrap();
        assert!(discovery.wait_for("svc", 2, Duration::from_secs(5)).await);
        assert!(discovery.registry_up());
        let mut seen = Vec::new();
        for _ in 0..4 {
            let response = discovery.get("svc", "/who").await.unwrap();
            seen.push(response.text().await.unwrap());
        }
        seen.sort();
        assert_eq!(seen, ["a", "a", "b", "b"]);

        // A change reaches the client through the blocking query.
        let c = backend("c").await;
        *fake.catalog.lock().unwrap() = catalog(6, vec![instance("svc", "c", c)]);
        let deadline = Instant::now() + Duration::from_secs(5);
        while discovery.instances("svc").iter().all(|i| i.id != "c") {
            assert!(Instant::now() < deadline, "the change never arrived");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(discovery.instances("svc").len(), 1);
        assert_eq!(
            discovery
                .get("svc", "/who")
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
            "c"
        );
        assert!(matches!(
            discovery.get("nothing", "/").await,
            Err(CallError::NoInstance(_))
        ));
    }

    #[tokio::test]
    async fn retries_a_refused_connection_on_another_instance() {
        let live = backend("live").await;
        let dead = closed_port();
        let (url, _fake, _server) = fake_registry(catalog(
            3,
            vec![instance("svc", "dead", dead), instance("svc", "live", live)],
        ))
        .await;
        let discovery =
            Discovery::start(RegistryClient::new(url).unwrap(), Duration::from_secs(2)).unwrap();
        assert!(discovery.wait_for("svc", 2, Duration::from_secs(5)).await);
        for _ in 0..6 {
            let response = discovery
                .get("svc", "/who")
                .await
                .expect("retried elsewhere");
            assert_eq!(response.text().await.unwrap(), "live");
        }
    }

    #[tokio::test]
    async fn keeps_the_last_view_when_the_registry_goes_away() {
        let live = backend("live").await;
        let (url, fake, _server) =
            fake_registry(catalog(3, vec![instance("svc", "live", live)])).await;
        let discovery =
            Discovery::start(RegistryClient::new(url).unwrap(), Duration::from_secs(2)).unwrap();
        assert!(discovery.wait_for("svc", 1, Duration::from_secs(5)).await);
        fake.down.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(10);
        while discovery.registry_up() {
            assert!(Instant::now() < deadline, "never noticed the registry left");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(discovery.view_age().unwrap() >= Duration::from_millis(300));
        assert_eq!(discovery.instances("svc").len(), 1, "fail static");
        let response = discovery.get("svc", "/who").await.unwrap();
        assert_eq!(response.text().await.unwrap(), "live");
    }
}
