//! The registry's incremental watch (`/v1/watch?deltas=true`) as a watcher uses it: a client
//! that applies the snapshot and the changes to a view of its own, and the tests both stores run
//! (`watched` and `writer` may be two registries on one etcd: changes made through one reach the
//! watchers of the other, in order).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::registry::{counter, Registry};

/// A view: each service's instances by id, as whole instance JSON.
pub type View = BTreeMap<String, BTreeMap<String, Value>>;

#[derive(Debug, Clone)]
pub enum Event {
    Snapshot(Value),
    Change(Value),
}

impl Event {
    pub fn index(&self) -> u64 {
        match self {
            Event::Snapshot(data) | Event::Change(data) => data["index"].as_u64().unwrap(),
        }
    }

    pub fn is_snapshot(&self) -> bool {
        matches!(self, Event::Snapshot(_))
    }
}

/// One incremental watcher, with the view its events add up to.
pub struct Deltas {
    response: reqwest::Response,
    buffer: String,
    /// The last `id:` seen, as an `EventSource` keeps it.
    pub last_id: Option<u64>,
    pub view: View,
    /// Every event applied, in order.
    pub seen: Vec<Event>,
}

/// Opens `/v1/watch?deltas=true&<query>`, sending `Last-Event-ID` when given.
pub async fn open(registry: &Registry, query: &str, last_event_id: Option<u64>) -> Deltas {
    let mut request = registry
        .http
        .get(registry.url(&format!("/v1/watch?deltas=true&{query}")))
        .timeout(Duration::from_secs(600));
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id.to_string());
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap();
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    Deltas {
        response,
        buffer: String::new(),
        last_id: None,
        view: View::new(),
        seen: Vec::new(),
    }
}

impl Deltas {
    /// The next event (keep-alive comments skipped), applied to the view; `None` if none comes
    /// within `within`.
    pub async fn next(&mut self, within: Duration) -> Option<Event> {
        let event = tokio::time::timeout(within, self.next_inner()).await.ok()?;
        self.apply(&event);
        self.seen.push(event.clone());
        Some(event)
    }

    /// The next event, which must come within `within`.
    pub async fn expect(&mut self, within: Duration) -> Event {
        self.next(within)
            .await
            .expect("an event from the incremental watch in time")
    }

    async fn next_inner(&mut self) -> Event {
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut kind, mut data) = (None, String::new());
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("event:") {
                        kind = Some(value.trim().to_string());
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data.push_str(value.trim_start());
                    } else if let Some(value) = line.strip_prefix("id:") {
                        self.last_id = Some(value.trim().parse().expect("a numeric id"));
                    }
                }
                let Some(kind) = kind else { continue };
                let data: Value = serde_json::from_str(&data).expect("JSON in the event");
                return match kind.as_str() {
                    "snapshot" => Event::Snapshot(data),
                    "change" => Event::Change(data),
                    other => panic!("unexpected event {other}"),
                };
            }
            let chunk = self
                .response
                .chunk()
                .await
                .expect("reading the event stream")
                .expect("the event stream ended");
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    fn apply(&mut self, event: &Event) {
        match event {
            Event::Snapshot(data) => self.view = view_of(&data["services"]),
            Event::Change(data) => {
                let service = data["service"].as_str().unwrap().to_string();
                let instances = self.view.entry(service.clone()).or_default();
                for instance in data["instances"].as_array().unwrap() {
                    instances.insert(instance["id"].as_str().unwrap().into(), instance.clone());
                }
                for id in data["removed"].as_array().unwrap() {
                    instances.remove(id.as_str().unwrap());
                }
                if instances.is_empty() {
                    self.view.remove(&service);
                }
            }
        }
    }

    /// Reads events until the view equals `expected`; panics with both after `within`.
    pub async fn until_view(&mut self, expected: &View, within: Duration, who: &str) {
        let deadline = Instant::now() + within;
        while self.view != *expected {
            let left = deadline.saturating_duration_since(Instant::now());
            if self.next(left).await.is_none() {
                panic!(
                    "{who}: the watcher's view never equalled the registry's\nwatcher: {:#?}\nregistry: {:#?}",
                    self.view, expected
                );
            }
        }
    }
}

/// A catalog's `services` object as a view.
pub fn view_of(services: &Value) -> View {
    services
        .as_object()
        .map(|services| {
            services
                .iter()
                .map(|(name, instances)| {
                    let by_id = instances
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|i| (i["id"].as_str().unwrap().to_string(), i.clone()))
                        .collect();
                    (name.clone(), by_id)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The registry's view now, only the services in `only` when given.
pub async fn registry_view(registry: &Registry, only: Option<&[&str]>) -> View {
    let mut view = view_of(&registry.catalog().await["services"]);
    if let Some(only) = only {
        view.retain(|name, _| only.contains(&name.as_str()));
    }
    view
}

/// Registers `service/id` with `metadata` (`v` = `version`); returns the status.
pub async fn put(registry: &Registry, service: &str, id: &str, port: u16, version: &str) -> u16 {
    put_ttl(registry, service, id, port, version, 60.0).await
}

pub async fn put_ttl(
    registry: &Registry,
    service: &str,
    id: &str,
    port: u16,
    version: &str,
    ttl: f64,
) -> u16 {
    registry
        .http
        .put(registry.url(&format!("/v1/services/{service}/instances/{id}")))
        .json(&json!({
            "address": "127.0.0.1", "port": port, "ttl_seconds": ttl,
            "metadata": {"v": version},
        }))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

pub async fn delete(registry: &Registry, service: &str, id: &str) -> u16 {
    registry
        .http
        .delete(registry.url(&format!("/v1/services/{service}/instances/{id}")))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn metric(registry: &Registry, name: &str) -> f64 {
    counter(registry, name, "").await
}

/// A watcher of one service is not woken (nor sent anything) by 30 changes to another, and is
/// by a change to its own; that change is encoded once and the same change sent to each of
/// its watchers.
pub async fn a_service_watcher_is_woken_only_by_its_services(
    writer: &Registry,
    watched: &Registry,
) {
    assert_eq!(put(writer, "alpha", "a1", 9101, "1").await, 201);
    let mut alpha = open(watched, "services=alpha,gamma", None).await;
    let snapshot = alpha.expect(Duration::from_secs(5)).await;
    assert!(snapshot.is_snapshot());
    assert_eq!(alpha.view, registry_view(watched, Some(&["alpha"])).await);
    assert_eq!(alpha.last_id, Some(snapshot.index()));

    let wakeups = "registry_watch_wakeups_total";
    let before = metric(watched, wakeups).await;
    for n in 0..30 {
        assert_eq!(
            put(writer, "beta", &format!("b{n}"), 9200 + n, "1").await,
            201
        );
    }
    // Every change to beta has reached the watched registry...
    let beta = loop {
        let beta = watched.ids("beta").await;
        if beta.len() == 30 {
            break beta;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(beta.len(), 30);
    // ... and woke nobody watching alpha and gamma, nor was sent to them.
    let quiet = alpha.next(Duration::from_millis(500)).await;
    assert!(
        quiet.is_none(),
        "beta's change reached alpha's watcher: {quiet:?}"
    );
    assert_eq!(
        metric(watched, wakeups).await,
        before,
        "30 changes to beta woke a watcher of alpha and gamma"
    );

    // Four watchers of everything, and one change to alpha.
    let mut everything = Vec::new();
    for _ in 0..4 {
        let mut watcher = open(watched, "", None).await;
        assert!(watcher.expect(Duration::from_secs(5)).await.is_snapshot());
        everything.push(watcher);
    }
    let (encodings, sent, wakeups_before) = (
        metric(watched, "registry_change_encodings_total").await,
        metric(watched, "registry_watch_deltas_sent_total").await,
        metric(watched, wakeups).await,
    );
    assert_eq!(put(writer, "alpha", "a2", 9102, "1").await, 201);
    let change = alpha.expect(Duration::from_secs(5)).await;
    let Event::Change(data) = &change else {
        panic!("a change, not {change:?}")
    };
    assert_eq!(data["service"], "alpha");
    assert_eq!(data["instances"][0]["id"], "a2");
    assert_eq!(alpha.last_id, Some(change.index()));
    assert_eq!(
        alpha.view,
        registry_view(watched, Some(&["alpha", "gamma"])).await
    );
    for watcher in &mut everything {
        let theirs = watcher.expect(Duration::from_secs(5)).await;
        assert_eq!(
            format!("{theirs:?}"),
            format!("{change:?}"),
            "the same change"
        );
    }
    assert_eq!(
        metric(watched, "registry_change_encodings_total").await - encodings,
        1.0,
        "one change, encoded once for its five watchers"
    );
    assert_eq!(
        metric(watched, "registry_watch_deltas_sent_total").await - sent,
        5.0
    );
    assert_eq!(metric(watched, wakeups).await - wakeups_before, 5.0);
    assert!(metric(watched, "registry_change_ring_len").await >= 32.0);
}

/// A watcher that disconnects and comes back with its last index (in the URL, or as an
/// `EventSource` would, in `Last-Event-ID`) is sent every change it missed, in order, and no
/// snapshot; its view then equals the registry's.
pub async fn a_resumed_watcher_misses_nothing_and_sees_changes_in_order(
    writer: &Registry,
    watched: &Registry,
) {
    for n in 0..3 {
        assert_eq!(
            put(writer, "shop", &format!("s{n}"), 9300 + n, "1").await,
            201
        );
    }
    let mut watcher = open(watched, "", None).await;
    assert!(watcher.expect(Duration::from_secs(5)).await.is_snapshot());
    assert_eq!(put(writer, "shop", "s3", 9303, "1").await, 201);
    watcher.expect(Duration::from_secs(5)).await;
    let left_at = watcher.last_id.unwrap();
    let view = watcher.view.clone();
    drop(watcher);

    // While it is away: x added, changed, removed and added again elsewhere; one removed; an
    // instance that changes nothing; one whose lease lapses.
    assert_eq!(put(writer, "shop", "x", 9400, "1").await, 201);
    assert_eq!(put(writer, "shop", "x", 9400, "2").await, 200);
    assert_eq!(delete(writer, "shop", "x").await, 204);
    assert_eq!(put(writer, "shop", "x", 9401, "3").await, 201);
    assert_eq!(delete(writer, "shop", "s0").await, 204);
    assert_eq!(put(writer, "shop", "s1", 9301, "1").await, 200);
    assert_eq!(put_ttl(writer, "other", "short", 9500, "1", 1.0).await, 201);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !watched.ids("other").await.is_empty() {
        assert!(Instant::now() < deadline, "the short lease never lapsed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let expected = registry_view(watched, None).await;

    for how in ["index", "last-event-id"] {
        let mut resumed = match how {
            "index" => open(watched, &format!("index={left_at}"), None).await,
            _ => open(watched, "index=1", Some(left_at)).await,
        };
        resumed.view = view.clone();
        resumed
            .until_view(&expected, Duration::from_secs(5), how)
            .await;
        // The view can equal the registry's before the last changes (`other` comes and goes):
        // read whatever else was sent, and it still must.
        while resumed.next(Duration::from_millis(300)).await.is_some() {}
        assert_eq!(resumed.view, expected, "{how}");
        assert!(
            resumed.seen.iter().all(|e| !e.is_snapshot()),
            "{how}: a snapshot for a watcher the ring still covers"
        );
        let indexes: Vec<u64> = resumed.seen.iter().map(Event::index).collect();
        assert!(indexes.iter().all(|&i| i > left_at), "{how}: {indexes:?}");
        assert!(
            indexes.windows(2).all(|w| w[0] < w[1]),
            "{how}: out of order: {indexes:?}"
        );
        // x's story, in the order it happened.
        let x: Vec<String> = resumed
            .seen
            .iter()
            .filter_map(|e| match e {
                Event::Change(data) if data["service"] == "shop" => Some(data),
                _ => None,
            })
            .filter_map(|data| {
                if data["removed"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|id| id == "x")
                {
                    return Some("removed".to_string());
                }
                let instances = data["instances"].as_array().unwrap();
                let x = instances.iter().find(|i| i["id"] == "x")?;
                Some(format!("{}@{}", x["metadata"]["v"].as_str()?, x["port"]))
            })
            .collect();
        assert_eq!(x, ["1@9400", "2@9400", "removed", "3@9401"], "{how}");
        let other: Vec<&Value> = resumed
            .seen
            .iter()
            .filter_map(|e| match e {
                Event::Change(data) if data["service"] == "other" => Some(data),
                _ => None,
            })
            .collect();
        assert_eq!(other.len(), 2, "{how}: short added, then lapsed: {other:?}");
        assert_eq!(other[1]["removed"], json!(["short"]));
        assert_eq!(resumed.last_id, Some(*indexes.last().unwrap()));
    }
}

/// A watcher further behind than the changes the registry keeps (`registry` keeps 8) is sent
/// a snapshot; so is one with an index the registry never reached. The ring's length is on
/// /metrics.
pub async fn a_watcher_too_far_behind_gets_a_snapshot(writer: &Registry, watched: &Registry) {
    let mut watcher = open(watched, "", None).await;
    let first = watcher.expect(Duration::from_secs(5)).await;
    assert!(first.is_snapshot());
    drop(watcher);
    for n in 0..20 {
        assert_eq!(
            put(writer, "far", &format!("f{n}"), 9600 + n, "1").await,
            201
        );
    }
    let expected = loop {
        let view = registry_view(watched, None).await;
        if view.get("far").map(BTreeMap::len) == Some(20) {
            break view;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(metric(watched, "registry_change_ring_len").await, 8.0);
    let snapshots = metric(watched, "registry_watch_snapshots_total").await;
    let mut behind = open(watched, &format!("index={}", first.index()), None).await;
    let event = behind.expect(Duration::from_secs(5)).await;
    assert!(
        event.is_snapshot(),
        "20 changes behind a ring of 8: {event:?}"
    );
    assert_eq!(behind.view, expected);
    assert_eq!(
        metric(watched, "registry_watch_snapshots_total").await - snapshots,
        1.0
    );

    // Within the ring: changes only.
    let near = event.index();
    assert_eq!(put(writer, "far", "f0", 9700, "2").await, 200);
    let mut close = open(watched, &format!("index={near}"), None).await;
    assert!(!close.expect(Duration::from_secs(5)).await.is_snapshot());

    // An index this registry never reached: a snapshot.
    let mut ahead = open(watched, "index=999999999", None).await;
    assert!(ahead.expect(Duration::from_secs(5)).await.is_snapshot());
}

/// A small deterministic generator (xorshift), so a failing sequence can be run again.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// After a random sequence of registrations, changes and removals, every watcher's view (its
/// snapshot plus the changes applied) equals the registry's answer: watchers of everything, of
/// some services, and one that keeps dropping its connection and resuming.
pub async fn every_view_equals_the_registry_after_random_changes(
    writer: &Registry,
    watched: &Registry,
) {
    let seed = std::env::var("DELTAS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("random changes with DELTAS_SEED={seed}");
    let mut rng = Rng(seed);
    let mut all = open(watched, "", None).await;
    let mut some = open(watched, "services=s0,s1", None).await;
    let mut one = open(watched, "services=s3,nothing", None).await;
    let mut flaky = open(watched, "", None).await;
    for watcher in [&mut all, &mut some, &mut one, &mut flaky] {
        assert!(watcher.expect(Duration::from_secs(5)).await.is_snapshot());
    }
    for step in 0..120u16 {
        let service = format!("s{}", rng.below(4));
        let id = format!("i{}", rng.below(5));
        match rng.below(10) {
            0..=5 => {
                let version = rng.below(3).to_string();
                let status = put(writer, &service, &id, 9000 + step, &version).await;
                assert!(status == 200 || status == 201, "{status}");
            }
            6..=8 => {
                let status = delete(writer, &service, &id).await;
                assert!(status == 204 || status == 404, "{status}");
            }
            _ => {
                // The flaky watcher reads a little, drops, and comes back from its last id.
                while flaky.next(Duration::from_millis(20)).await.is_some() {}
                let (view, last) = (std::mem::take(&mut flaky.view), flaky.last_id);
                flaky = open(watched, "", last).await;
                flaky.view = view;
            }
        }
    }
    let expected = registry_view(watched, None).await;
    let within = Duration::from_secs(10);
    all.until_view(&expected, within, "all").await;
    flaky.until_view(&expected, within, "flaky").await;
    let mut part = expected.clone();
    part.retain(|name, _| name == "s0" || name == "s1");
    some.until_view(&part, within, "s0,s1").await;
    let mut part = expected.clone();
    part.retain(|name, _| name == "s3");
    one.until_view(&part, within, "s3").await;
    assert!(
        all.seen.iter().skip(1).all(|e| !e.is_snapshot()),
        "a watcher that kept up got a second snapshot"
    );
    for (who, watcher) in [("s0,s1", &some), ("s3", &one)] {
        for event in &watcher.seen {
            if let Event::Change(data) = event {
                let service = data["service"].as_str().unwrap();
                assert!(
                    who.split(',').any(|s| s == service),
                    "{who} was sent {service}"
                );
            }
        }
    }
}
