//! Several registry processes on one etcd: one view, shared watches, leases kept by etcd, and
//! nothing lost when registries die.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use stratus_testing::servers::Etcd;
use stratus_testing::{Need, Test};
use support::registry::{instance_ids, Registry};

/// Polls `probe` until it is true, or panics with `what` after `within`.
async fn eventually<F, Fut>(within: Duration, what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !probe().await {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn three_registries_share_one_view_and_outlive_each_other() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let store = etcd.url();
    let mut first = Registry::start("registry-0", &store, dir.path()).await;
    let mut second = Registry::start("registry-1", &store, dir.path()).await;
    let third = Registry::start("registry-2", &store, dir.path()).await;

    // Registered through one, seen through the others.
    assert_eq!(first.register("catalog", "a", 9001, 60.0).await, 201);
    assert_eq!(first.register("catalog", "a", 9001, 60.0).await, 200);
    assert_eq!(second.ids("catalog").await, ["a"]);
    assert_eq!(third.ids("catalog").await, ["a"]);

    // A blocking query on the third returns when the second changes something.
    let index = third.catalog().await["index"].as_u64().unwrap();
    let watch = {
        let http = third.http.clone();
        let url = third.url(&format!("/v1/services?index={index}&wait=20s"));
        tokio::spawn(async move {
            let started = Instant::now();
            let body: Value = http.get(url).send().await.unwrap().json().await.unwrap();
            (body, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(second.register("catalog", "b", 9002, 60.0).await, 201);
    let (body, waited) = tokio::time::timeout(Duration::from_secs(5), watch)
        .await
        .expect("the blocking query returned on the change")
        .unwrap();
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    assert!(body["index"].as_u64().unwrap() > index);
    assert_eq!(instance_ids(&body["services"]["catalog"]), ["a", "b"]);

    // The event stream on the third sees the same view, then a deregistration on the first.
    let mut events = third.events().await;
    let catalog = events.next_catalog(Duration::from_secs(5)).await;
    assert_eq!(instance_ids(&catalog["services"]["catalog"]), ["a", "b"]);
    let deleted = first
        .http
        .delete(first.url("/v1/services/catalog/instances/b"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    let catalog = events.next_catalog(Duration::from_secs(5)).await;
    assert_eq!(instance_ids(&catalog["services"]["catalog"]), ["a"]);

    // An instance whose heartbeats stop, registered through a registry that is about to die.
    assert_eq!(first.register("catalog", "short", 9003, 2.0).await, 201);
    let catalog = events.next_catalog(Duration::from_secs(5)).await;
    assert_eq!(
        instance_ids(&catalog["services"]["catalog"]),
        ["a", "short"]
    );

    // Two registries die at once. The third keeps answering and its watchers keep working.
    first.process.kill9();
    second.process.kill9();
    assert_eq!(third.ids("catalog").await, ["a", "short"]);
    assert_eq!(third.readyz().await, 200);

    // No registry process renews `short`, and none needs to be alive to expire it: etcd drops it
    // when its lease runs out, and the third registry's stream reports it.
    let started = Instant::now();
    let catalog = events.next_catalog(Duration::from_secs(15)).await;
    assert_eq!(instance_ids(&catalog["services"]["catalog"]), ["a"]);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "expired after {:?}",
        started.elapsed()
    );

    // Heartbeats keep a lease alive across far more than its TTL.
    assert_eq!(third.register("catalog", "kept", 9004, 2.0).await, 201);
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let beat = third
            .http
            .put(third.url("/v1/services/catalog/instances/kept/heartbeat"))
            .send()
            .await
            .unwrap();
        assert_eq!(beat.status(), 204);
    }
    assert_eq!(third.ids("catalog").await, ["a", "kept"]);
    let unknown = third
        .http
        .put(third.url("/v1/services/catalog/instances/short/heartbeat"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        unknown.status(),
        404,
        "an expired instance must register again"
    );
    drop(etcd);
}

async fn readiness_follows_etcd() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start("registry", &etcd.url(), dir.path()).await;
    assert_eq!(registry.readyz().await, 200);
    drop(etcd);
    eventually(
        Duration::from_secs(10),
        "readyz fails without etcd",
        || async { registry.readyz().await == 503 },
    )
    .await;
    // Reads fail loudly too: a 503, never an empty catalog from some fallback.
    let response = registry
        .http
        .get(registry.url("/v1/services"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
}

fn an_unreachable_etcd_is_a_clear_error_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let output = Command::new(support::binary())
        .args(["serve", "registry"])
        .env("PORT", support::free_port().to_string())
        .env("STRATUS_REGISTRY_STORE", format!("etcd://127.0.0.1:{port}"))
        .env("STRATUS_DATA_DIR", dir.path())
        .env("STRATUS_LOG_FORMAT", "text")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        !output.status.success(),
        "the registry must refuse to start without its etcd"
    );
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(text.contains("connecting to etcd"), "{text}");
    assert!(text.contains(&port.to_string()), "{text}");
}

fn an_unknown_store_is_refused() {
    let output = Command::new(support::binary())
        .args(["serve", "registry"])
        .env("STRATUS_REGISTRY_STORE", "redis://127.0.0.1:6379")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(
        text.contains("STRATUS_REGISTRY_STORE") || text.contains("registry store"),
        "{text}"
    );
}

/// The whole request path on an etcd-backed registry: the gateway routes around a catalog
/// instance killed with -9, and etcd drops the instance when its lease runs out.
async fn the_gateway_never_routes_to_the_dead_on_etcd() {
    let etcd = Etcd::start();
    let extra = [("registry", "STRATUS_REGISTRY_STORE", etcd.url())];
    let mut system = support::System::start_with(2, &extra).await;
    let victim = system.process("catalog", 0).instance_id.clone();
    let mut killed_at = None;
    for i in 0..100 {
        if i == 25 {
            system.process("catalog", 0).kill9();
            killed_at = Some(Instant::now());
        }
        let response = system
            .http
            .get(system.url("/api/catalog/products"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "request {i} failed after the kill");
    }
    // Leases are whole seconds in etcd: the 3 s TTL runs out within about 4 s of the last renewal.
    let killed_at = killed_at.unwrap();
    eventually(
        Duration::from_secs(8),
        "the dead instance left etcd",
        || async {
            let ids: Vec<String> = system
                .registered("catalog")
                .await
                .iter()
                .filter_map(|i| i["id"].as_str().map(str::to_string))
                .collect();
            !ids.is_empty() && !ids.contains(&victim)
        },
    )
    .await;
    assert!(killed_at.elapsed() < Duration::from_secs(8));
    system.wait_gateway_sees("catalog", 1).await;
}

/// Reads catalog events until one lists exactly `ids` under `shop` (a change of health to
/// `warning` is an event too, with the instance still listed).
async fn until_listed(events: &mut support::registry::Events, within: Duration, ids: &[&str]) {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let catalog = events.next_catalog(left).await;
        if instance_ids(&catalog["services"]["shop"]) == ids {
            return;
        }
    }
}

/// A backend whose `/healthz` answers 200 or 500 as `healthy` says; returns its port.
async fn switchable_backend(healthy: std::sync::Arc<std::sync::atomic::AtomicBool>) -> u16 {
    use std::sync::atomic::Ordering;
    let app = axum::Router::new().route(
        "/healthz",
        axum::routing::get(move || {
            let healthy = healthy.clone();
            async move {
                if healthy.load(Ordering::SeqCst) {
                    axum::http::StatusCode::OK
                } else {
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR
                }
            }
        }),
    );
    // With a certificate for `shop`: the registries' checks go over mutual TLS.
    support::backend::serve_app(Some("shop"), app).await
}

/// Active checks on etcd: one registry owns each check and writes the verdict into etcd, so an
/// instance that fails its check leaves every registry's list and watch long before its lease
/// would run out, and comes back when it passes. When the owning registry dies, another takes
/// the check over.
async fn active_checks_work_across_registries_on_etcd() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let store = etcd.url();
    let mut first = Registry::start("registry-0", &store, dir.path()).await;
    let second = Registry::start("registry-1", &store, dir.path()).await;
    let healthy = Arc::new(AtomicBool::new(true));
    let port = switchable_backend(healthy.clone()).await;

    // A 60 s lease, so only the check can take the instance out within this test.
    let registered = first
        .http
        .put(first.url("/v1/services/shop/instances/checked"))
        .json(&serde_json::json!({
            "address": "127.0.0.1", "port": port, "ttl_seconds": 60,
            "check": {"http": "/healthz"}, "interval": "500ms",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), 201);
    assert_eq!(first.register("shop", "plain", 9001, 60.0).await, 201);
    assert_eq!(second.ids("shop").await, ["checked", "plain"]);
    let mut events = second.events().await;
    until_listed(&mut events, Duration::from_secs(5), &["checked", "plain"]).await;

    // The instance starts failing its check.
    healthy.store(false, Ordering::SeqCst);
    let failed = Instant::now();
    until_listed(&mut events, Duration::from_secs(5), &["plain"]).await;
    let took = failed.elapsed();
    eprintln!("failing check left the watch after {took:?}");
    // Interval 500 ms, a confirming probe 100 ms later, then one etcd write: about 0.7 s.
    assert!(took < Duration::from_millis(2000), "took {took:?}");
    assert_eq!(first.ids("shop").await, ["plain"]);
    assert_eq!(second.ids("shop").await, ["plain"]);
    let one: Value = first
        .http
        .get(first.url("/v1/services/shop"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(instance_ids(&one["instances"]), ["plain"]);
    // Its lease is still alive: a heartbeat is accepted, and it stays out.
    let beat = first
        .http
        .put(first.url("/v1/services/shop/instances/checked/heartbeat"))
        .send()
        .await
        .unwrap();
    assert_eq!(beat.status(), 204);

    // It passes again: back in every list.
    healthy.store(true, Ordering::SeqCst);
    until_listed(&mut events, Duration::from_secs(5), &["checked", "plain"]).await;
    assert_eq!(first.ids("shop").await, ["checked", "plain"]);

    // Whichever registry owned the check, kill the first: the second runs every check now
    // (at the latest once the first one's session lease has run out).
    first.process.kill9();
    tokio::time::sleep(Duration::from_millis(200)).await;
    healthy.store(false, Ordering::SeqCst);
    let failed = Instant::now();
    until_listed(&mut events, Duration::from_secs(10), &["plain"]).await;
    let took = failed.elapsed();
    eprintln!("with the first registry dead: left after {took:?}");
    assert!(took < Duration::from_secs(6), "took {took:?}");
    assert_eq!(second.ids("shop").await, ["plain"]);
    drop(etcd);
}

/// On etcd too, a blocking query on one service wakes only for that service, across registries:
/// each registry keeps every service's index from its one etcd watch.
async fn a_watcher_of_one_service_wakes_only_when_it_changes_on_etcd() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let store = etcd.url();
    let writer = Registry::start("registry-0", &store, dir.path()).await;
    let watched = Registry::start("registry-1", &store, dir.path()).await;
    support::registry::one_service_watch_wakes_for_that_service_only(&writer, &watched).await;
    // Both registries give the same index for the same service.
    assert_eq!(
        writer.service("alpha").await["index"],
        watched.service("alpha").await["index"]
    );
    drop(etcd);
}

/// On etcd, the watchers one change wakes share the catalog's read and its encoding.
async fn one_change_is_encoded_once_for_every_watcher_on_etcd() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start("registry-0", &etcd.url(), dir.path()).await;
    support::registry::one_change_is_encoded_once_for_every_watcher(&registry).await;
    drop(etcd);
}

/// On etcd, a query on part of the catalog through one registry wakes for changes made through
/// another to its services only.
async fn a_query_on_part_of_the_catalog_wakes_only_for_its_services_on_etcd() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let writer = Registry::start("registry-0", &etcd.url(), dir.path()).await;
    let watched = Registry::start("registry-1", &etcd.url(), dir.path()).await;
    support::registry::part_of_the_catalog_wakes_for_its_services_only(&writer, &watched).await;
    drop(etcd);
}

/// The incremental watch on etcd, with the changes made through another registry: each
/// registry feeds its ring from its one etcd watch (see `support::deltas`).
async fn an_incremental_watcher_of_one_service_is_woken_only_by_its_services_on_etcd() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let writer = Registry::start("registry-0", &etcd.url(), dir.path()).await;
    let watched = Registry::start("registry-1", &etcd.url(), dir.path()).await;
    support::deltas::a_service_watcher_is_woken_only_by_its_services(&writer, &watched).await;
    drop(etcd);
}

async fn an_incremental_watcher_resumes_from_its_index_missing_nothing_on_etcd() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let writer = Registry::start("registry-0", &etcd.url(), dir.path()).await;
    let watched = Registry::start("registry-1", &etcd.url(), dir.path()).await;
    support::deltas::a_resumed_watcher_misses_nothing_and_sees_changes_in_order(&writer, &watched)
        .await;
    // Both registries give the same indexes: a watcher may resume on the other one.
    let mut first = support::deltas::open(&watched, "", None).await;
    let snapshot = first.expect(Duration::from_secs(5)).await;
    assert_eq!(
        support::deltas::put(&writer, "moved", "m1", 9800, "1").await,
        201
    );
    let change = first.expect(Duration::from_secs(5)).await;
    let mut elsewhere =
        support::deltas::open(&writer, &format!("index={}", snapshot.index()), None).await;
    let same = elsewhere.expect(Duration::from_secs(5)).await;
    assert!(!same.is_snapshot());
    assert_eq!(format!("{same:?}"), format!("{change:?}"));
    drop(etcd);
}

async fn an_incremental_watcher_too_far_behind_gets_a_snapshot_on_etcd() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let writer = Registry::start("registry-0", &etcd.url(), dir.path()).await;
    let env = [("STRATUS_REGISTRY_CHANGE_RING", "8")];
    let port = support::free_port();
    let watched = Registry::start_with("registry-1", &etcd.url(), dir.path(), port, &env).await;
    support::deltas::a_watcher_too_far_behind_gets_a_snapshot(&writer, &watched).await;
    drop(etcd);
}

async fn every_incremental_view_equals_the_registry_after_random_changes_on_etcd() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let writer = Registry::start("registry-0", &etcd.url(), dir.path()).await;
    let watched = Registry::start("registry-1", &etcd.url(), dir.path()).await;
    support::deltas::every_view_equals_the_registry_after_random_changes(&writer, &watched).await;
    drop(etcd);
}

/// A snapshot read at a revision the registry's watch stream has not delivered (here, the
/// revision of a check's record, written after its instance under a prefix the stream does not
/// follow) is resumed from without a second snapshot, and what follows it arrives as changes.
async fn a_snapshot_ahead_of_the_ring_is_resumed_from_on_etcd() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start("registry-0", &etcd.url(), dir.path()).await;
    // A port that accepts, so the check passes and the instance's health never changes.
    let listening = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listening.local_addr().unwrap().port();
    let checked = registry
        .http
        .put(registry.url("/v1/services/shop/instances/checked"))
        .json(&serde_json::json!({
            "address": "127.0.0.1", "port": port, "ttl_seconds": 60.0,
            "check": {"tcp": true}, "interval": "60s",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(checked.status(), 201);
    let mut first = support::deltas::open(&registry, "", None).await;
    let snapshot = first.expect(Duration::from_secs(5)).await;
    assert!(snapshot.is_snapshot());
    let at = first.last_id.unwrap();
    drop(first);
    let snapshots =
        support::registry::counter(&registry, "registry_watch_snapshots_total", "").await;
    let mut resumed = support::deltas::open(&registry, &format!("index={at}"), None).await;
    let quiet = resumed.next(Duration::from_millis(500)).await;
    assert!(
        quiet.is_none(),
        "nothing after its index yet, and no snapshot: {quiet:?} (at {at})"
    );
    assert_eq!(
        support::deltas::put(&registry, "shop", "plain", 9901, "1").await,
        201
    );
    let change = resumed.expect(Duration::from_secs(5)).await;
    assert!(!change.is_snapshot());
    assert!(change.index() > at);
    assert_eq!(
        support::registry::counter(&registry, "registry_watch_snapshots_total", "").await,
        snapshots
    );
    drop(listening);
    drop(etcd);
}

/// Compacts etcd's history through `revision` (as an operator's `etcdctl compact` does).
async fn compact(etcd: &Etcd, revision: u64) {
    let answer = reqwest::Client::new()
        .post(format!("{}/v3/kv/compaction", etcd.url()))
        .json(&serde_json::json!({"revision": revision.to_string(), "physical": true}))
        .send()
        .await
        .unwrap();
    assert!(answer.status().is_success(), "compacting: {answer:?}");
}

/// Several registries on one etcd, in one story: a watcher on registry B sees the
/// changes made through registry A; dropped, it resumes from its index on B and misses none;
/// and when etcd compacts away history B's own etcd watch had not read yet (B was cut off from
/// etcd while A made changes), B no longer knows what changed: its watchers get a snapshot of
/// the current view, neither an error nor a silent gap, and changes after it as changes.
async fn a_watcher_on_another_registry_gets_a_snapshot_after_etcd_compacts_past_it() {
    use support::deltas::{delete, open, put, registry_view};
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let writer = Registry::start("registry-a", &etcd.url(), dir.path()).await;
    // Registry B reaches etcd through a hop the test can cut.
    let hop = support::cut::Cuttable::to(etcd.port).await;
    let hop_url = format!("http://127.0.0.1:{}", hop.port);
    let watched = Registry::start("registry-b", &hop_url, dir.path()).await;
    let within = Duration::from_secs(5);

    // Made through A, seen on B.
    assert_eq!(put(&writer, "shop", "a", 9601, "1").await, 201);
    let mut watcher = open(&watched, "", None).await;
    assert!(watcher.expect(within).await.is_snapshot());
    assert_eq!(put(&writer, "shop", "b", 9602, "1").await, 201);
    let change = watcher.expect(within).await;
    assert!(!change.is_snapshot(), "{change:?}");
    assert_eq!(watcher.view, registry_view(&writer, None).await);

    // Dropped, changes made meanwhile, resumed on B from its index: every change, in order.
    let left_at = watcher.last_id.unwrap();
    let view = watcher.view.clone();
    drop(watcher);
    assert_eq!(put(&writer, "shop", "c", 9603, "1").await, 201);
    assert_eq!(put(&writer, "shop", "c", 9603, "2").await, 200);
    assert_eq!(delete(&writer, "shop", "a").await, 204);
    let mut resumed = open(&watched, &format!("index={left_at}"), None).await;
    resumed.view = view;
    let expected = registry_view(&writer, None).await;
    resumed.until_view(&expected, within, "resumed").await;
    let indexes: Vec<u64> = resumed.seen.iter().map(|e| e.index()).collect();
    assert!(
        resumed.seen.iter().all(|e| !e.is_snapshot()),
        "a snapshot for a watcher B's ring still covers: {:?}",
        resumed.seen
    );
    assert_eq!(indexes.len(), 3, "one change each: {indexes:?}");
    assert!(indexes.windows(2).all(|w| w[0] < w[1]) && indexes[0] > left_at);
    let before_cut = resumed.last_id.unwrap();

    // B is cut off from etcd; A changes things; etcd compacts past everything B has read.
    hop.cut();
    assert_eq!(put(&writer, "shop", "d", 9604, "1").await, 201);
    assert_eq!(delete(&writer, "shop", "b").await, 204);
    assert_eq!(put(&writer, "other", "e", 9605, "1").await, 201);
    let expected = registry_view(&writer, None).await;
    compact(&etcd, writer.catalog().await["index"].as_u64().unwrap()).await;
    // Nothing reaches B's watcher while B cannot read etcd (keep-alives are not events).
    let quiet = resumed.next(Duration::from_millis(500)).await;
    assert!(quiet.is_none(), "while cut off: {quiet:?}");
    hop.restore();

    // B's etcd watch reopens, finds the history gone, and its watcher gets the current view
    // whole, on the same connection.
    let event = resumed.expect(Duration::from_secs(15)).await;
    assert!(event.is_snapshot(), "after the compaction: {event:?}");
    assert!(event.index() > before_cut);
    assert_eq!(resumed.view, expected);
    // A watcher resuming from before the compaction gets the same.
    let mut late = open(&watched, &format!("index={before_cut}"), None).await;
    let first = late.expect(within).await;
    assert!(
        first.is_snapshot(),
        "resumed from compacted history: {first:?}"
    );
    assert_eq!(late.view, expected);

    // And then changes again, not snapshots.
    assert_eq!(put(&writer, "shop", "f", 9606, "1").await, 201);
    let expected = registry_view(&writer, None).await;
    for (who, watcher) in [("connected", &mut resumed), ("late", &mut late)] {
        let change = watcher.expect(within).await;
        assert!(!change.is_snapshot(), "{who}: {change:?}");
        assert_eq!(watcher.view, expected, "{who}");
    }
    drop(hop);
    drop(etcd);
}

fn main() -> std::process::ExitCode {
    stratus_testing::run(vec![
        Test::new(
            "a_watcher_on_another_registry_gets_a_snapshot_after_etcd_compacts_past_it",
            a_watcher_on_another_registry_gets_a_snapshot_after_etcd_compacts_past_it,
        )
        .needs(&[Need::Etcd]),
        Test::new(
            "a_snapshot_ahead_of_the_ring_is_resumed_from_on_etcd",
            a_snapshot_ahead_of_the_ring_is_resumed_from_on_etcd,
        )
        .needs(&[Need::Etcd]),
        Test::new(
            "an_incremental_watcher_of_one_service_is_woken_only_by_its_services_on_etcd",
            an_incremental_watcher_of_one_service_is_woken_only_by_its_services_on_etcd,
        )
        .needs(&[Need::Etcd]),
        Test::new(
            "an_incremental_watcher_resumes_from_its_index_missing_nothing_on_etcd",
            an_incremental_watcher_resumes_from_its_index_missing_nothing_on_etcd,
        )
        .needs(&[Need::Etcd]),
        Test::new(
            "an_incremental_watcher_too_far_behind_gets_a_snapshot_on_etcd",
            an_incremental_watcher_too_far_behind_gets_a_snapshot_on_etcd,
        )
        .needs(&[Need::Etcd]),
        Test::new(
            "every_incremental_view_equals_the_registry_after_random_changes_on_etcd",
            every_incremental_view_equals_the_registry_after_random_changes_on_etcd,
        )
        .needs(&[Need::Etcd]),
        Test::new(
            "a_query_on_part_of_the_catalog_wakes_only_for_its_services_on_etcd",
            a_query_on_part_of_the_catalog_wakes_only_for_its_services_on_etcd,
        )
        .needs(&[Need::Etcd]),
        Test::new(
            "one_change_is_encoded_once_for_every_watcher_on_etcd",
            one_change_is_encoded_once_for_every_watcher_on_etcd,
        )
        .needs(&[Need::Etcd]),
        Test::new(
            "a_watcher_of_one_service_wakes_only_when_it_changes_on_etcd",
            a_watcher_of_one_service_wakes_only_when_it_changes_on_etcd,
        )
        .needs(&[Need::Etcd]),
        Test::new(
            "three_registries_share_one_view_and_outlive_each_other",
            three_registries_share_one_view_and_outlive_each_other,
        )
        .needs(&[Need::Etcd]),
        Test::new("readiness_follows_etcd", readiness_follows_etcd).needs(&[Need::Etcd]),
        Test::sync(
            "an_unreachable_etcd_is_a_clear_error_at_start_up",
            an_unreachable_etcd_is_a_clear_error_at_start_up,
        ),
        Test::sync("an_unknown_store_is_refused", an_unknown_store_is_refused),
        Test::new(
            "the_gateway_never_routes_to_the_dead_on_etcd",
            the_gateway_never_routes_to_the_dead_on_etcd,
        )
        .needs(&[Need::Etcd]),
        Test::new(
            "active_checks_work_across_registries_on_etcd",
            active_checks_work_across_registries_on_etcd,
        )
        .needs(&[Need::Etcd]),
    ])
}
