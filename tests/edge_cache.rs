//! The gateway's edge cache against a real gateway, registry and instance: what it keeps and
//! serves (`x-cache`, `Age`, 304s), what it never shares, purges by writes and by the admin
//! API, stale answers while the instance fails or while a fresh one is fetched, and one upstream
//! request for a thousand concurrent misses.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;
use support::{backend, metric_sum, System};

const ROUTES: &str = r#"
[[routes]]
name = "shop-read"
prefix = "/shop"
methods = ["GET", "HEAD"]
service = "shop"
auth = "none"
strip_prefix = true
cache = { authenticated = true, stale_if_error = "10m" }

[[routes]]
name = "shop-write"
prefix = "/shop"
service = "shop"
auth = "none"
strip_prefix = true
"#;

/// The instance: prices per product, how many requests reached it per path, and a switch that
/// makes every answer a 500.
#[derive(Clone, Default)]
struct Shop {
    prices: Arc<Mutex<HashMap<String, u64>>>,
    reached: Arc<Mutex<HashMap<String, usize>>>,
    failing: Arc<AtomicBool>,
    served: Arc<AtomicUsize>,
}

impl Shop {
    fn reached(&self, path: &str) -> usize {
        self.reached.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    fn count(&self, path: String) -> Result<(), StatusCode> {
        self.served.fetch_add(1, Ordering::SeqCst);
        *self.reached.lock().unwrap().entry(path).or_default() += 1;
        if self.failing.load(Ordering::SeqCst) {
            return Err(StatusCode::INTERNAL_SERVER_ERROR);
        }
        Ok(())
    }
}

fn public(seconds: &str, tags: String) -> [(&'static str, String); 2] {
    [
        ("cache-control", seconds.to_string()),
        ("surrogate-key", tags),
    ]
}

async fn product(State(shop): State<Shop>, Path(id): Path<String>) -> axum::response::Response {
    if let Err(status) = shop.count(format!("/products/{id}")) {
        return status.into_response();
    }
    let price = shop.prices.lock().unwrap().get(&id).copied().unwrap_or(100);
    let etag = format!("\"{id}-{price}\"");
    let headers = public("public, max-age=60", format!("product-{id}"));
    (
        headers,
        [("etag", etag)],
        axum::Json(json!({ "id": id, "price": price })),
    )
        .into_response()
}

async fn products(State(shop): State<Shop>) -> axum::response::Response {
    if let Err(status) = shop.count("/products".into()) {
        return status.into_response();
    }
    let prices = shop.prices.lock().unwrap().clone();
    (
        public("public, max-age=60", "products".into()),
        axum::Json(json!(prices)),
    )
        .into_response()
}

async fn set_price(
    State(shop): State<Shop>,
    Path(id): Path<String>,
    axum::Json(body): axum::Json<serde_json::Value>,
) -> axum::response::Response {
    let price = body["price"].as_u64().unwrap_or(0);
    shop.prices.lock().unwrap().insert(id.clone(), price);
    let tags = [("surrogate-key", format!("product-{id} products"))];
    (tags, axum::Json(json!({ "id": id, "price": price }))).into_response()
}

/// Short-lived, so the tests can see it go stale.
async fn short(State(shop): State<Shop>) -> axum::response::Response {
    if let Err(status) = shop.count("/short".into()) {
        return status.into_response();
    }
    let n = shop.reached("/short");
    let headers = public(
        "public, max-age=1, stale-while-revalidate=30",
        "short".into(),
    );
    (headers, format!("version {n}")).into_response()
}

/// Short-lived, with no stale-while-revalidate: once stale it is only for errors.
async fn brief(State(shop): State<Shop>) -> axum::response::Response {
    if let Err(status) = shop.count("/brief".into()) {
        return status.into_response();
    }
    (public("public, max-age=1", "brief".into()), "brief").into_response()
}

/// Slow, for concurrent misses.
async fn slow(State(shop): State<Shop>) -> axum::response::Response {
    if let Err(status) = shop.count("/slow".into()) {
        return status.into_response();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    (public("public, max-age=60", "slow".into()), "slow").into_response()
}

/// A personal answer: whoever asks, with a lifetime but not marked public.
async fn me(State(shop): State<Shop>, headers: HeaderMap) -> axum::response::Response {
    let _ = shop.count("/me".into());
    let who = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("nobody")
        .to_string();
    ([("cache-control", "max-age=60")], who).into_response()
}

/// Marked private.
async fn private(State(shop): State<Shop>) -> axum::response::Response {
    let _ = shop.count("/private".into());
    ([("cache-control", "private, max-age=60")], "mine").into_response()
}

async fn start() -> (System, Shop) {
    let (system, shop, _) = start_keeping_routes().await;
    (system, shop)
}

/// The system, the shop, and the route file (for another gateway).
async fn start_keeping_routes() -> (System, Shop, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.toml");
    std::fs::write(&routes, ROUTES).unwrap();
    let system = System::start_edge(Some(&routes)).await;
    let shop = Shop::default();
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/products", get(products))
        .route("/products/{id}", get(product).put(set_price))
        .route("/short", get(short))
        .route("/brief", get(brief))
        .route("/slow", get(slow))
        .route("/me", get(me))
        .route("/private", get(private))
        .with_state(shop.clone());
    let port = backend::serve_app(Some("shop"), app).await;
    system.register("shop", "shop-1", port, json!({})).await;
    system.wait_gateway_sees("shop", 1).await;
    (system, shop, dir)
}

async fn get_with(system: &System, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = system.http.get(system.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

fn x_cache(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("x-cache")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

async fn gateway_metrics(system: &System) -> String {
    let response = system
        .internal()
        .get(system.admin_url("/metrics"))
        .send()
        .await
        .unwrap();
    response.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_public_answers_answers_304s_and_purges_what_a_write_changed() {
    let (system, shop) = start().await;

    let first = get_with(&system, "/shop/products/7", &[]).await;
    assert_eq!(first.status(), 200);
    assert_eq!(x_cache(&first), "miss");
    assert!(
        first.headers().get("surrogate-key").is_none(),
        "surrogate keys stay inside"
    );
    let etag = first.headers()["etag"].to_str().unwrap().to_string();
    assert_eq!(first.text().await.unwrap(), r#"{"id":"7","price":100}"#);

    let second = get_with(&system, "/shop/products/7", &[]).await;
    assert_eq!(x_cache(&second), "hit");
    assert!(second.headers().contains_key("age"), "a hit carries Age");
    assert_eq!(second.text().await.unwrap(), r#"{"id":"7","price":100}"#);
    assert_eq!(
        shop.reached("/products/7"),
        1,
        "the hit did not reach the instance"
    );

    // HEAD from the stored GET, with its length and no body.
    let head = system
        .http
        .head(system.url("/shop/products/7"))
        .send()
        .await
        .unwrap();
    assert_eq!(x_cache(&head), "hit");
    assert_eq!(head.headers()["content-length"], "22");
    // A client that holds the answer gets a 304 from the gateway.
    let revalidated = get_with(&system, "/shop/products/7", &[("if-none-match", &etag)]).await;
    assert_eq!(revalidated.status(), 304);
    assert_eq!(revalidated.headers()["etag"].to_str().unwrap(), etag);
    assert!(revalidated.bytes().await.unwrap().is_empty());
    // A client asking for a fresh answer gets one (and it is kept).
    let fresh = get_with(
        &system,
        "/shop/products/7",
        &[("cache-control", "no-cache")],
    )
    .await;
    assert_eq!(x_cache(&fresh), "miss");
    assert_eq!(shop.reached("/products/7"), 2);

    // The list, tagged `products`.
    assert_eq!(
        x_cache(&get_with(&system, "/shop/products", &[]).await),
        "miss"
    );
    assert_eq!(
        x_cache(&get_with(&system, "/shop/products", &[]).await),
        "hit"
    );
    assert_eq!(
        x_cache(&get_with(&system, "/shop/products/8", &[]).await),
        "miss"
    );

    // A write through the gateway purges its path and the tags its answer names, at once.
    let write = system
        .http
        .put(system.url("/shop/products/7"))
        .json(&json!({ "price": 120 }))
        .send()
        .await
        .unwrap();
    assert_eq!(write.status(), 200);
    assert!(write.headers().get("surrogate-key").is_none());
    let after = get_with(&system, "/shop/products/7", &[]).await;
    assert_eq!(x_cache(&after), "miss");
    assert_eq!(after.text().await.unwrap(), r#"{"id":"7","price":120}"#);
    let list = get_with(&system, "/shop/products", &[]).await;
    assert_eq!(x_cache(&list), "miss", "the list was tagged `products`");
    assert_eq!(list.text().await.unwrap(), r#"{"7":120}"#);
    // Another product's answer was not tagged with what the write named: still a hit.
    assert_eq!(
        x_cache(&get_with(&system, "/shop/products/8", &[]).await),
        "hit"
    );

    // The admin API purges by tag, by path and everything; it refuses what it cannot read.
    let purge = |body: serde_json::Value| {
        system
            .internal()
            .post(system.admin_url("/v1/cache/purge"))
            .json(&body)
            .send()
    };
    assert_eq!(
        purge(json!({ "tags": ["product-8"] }))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        x_cache(&get_with(&system, "/shop/products/8", &[]).await),
        "miss"
    );
    assert_eq!(
        purge(json!({ "path": "/shop/products/8" }))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        x_cache(&get_with(&system, "/shop/products/8", &[]).await),
        "miss"
    );
    assert_eq!(purge(json!({ "all": true })).await.unwrap().status(), 200);
    assert_eq!(
        x_cache(&get_with(&system, "/shop/products", &[]).await),
        "miss"
    );
    for bad in [
        json!({}),
        json!({ "path": "x" }),
        json!({ "tags": [] }),
        json!({ "path": "/a", "all": true }),
        json!({ "what": 1 }),
        json!({ "path": "/", "tags": null }),
    ] {
        let refused = purge(bad.clone()).await.unwrap();
        assert_eq!(refused.status().as_u16() / 100, 4, "{bad}");
        assert_eq!(
            refused.headers()["content-type"],
            "application/problem+json",
            "{bad}"
        );
    }
    let size: serde_json::Value = system
        .internal()
        .get(system.admin_url("/v1/cache"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(size["budget"], 64 * 1024 * 1024);

    let metrics = gateway_metrics(&system).await;
    let count = |result: &str| {
        // Only `shop-read` keeps answers here.
        metric_sum(
            &metrics,
            "gateway_cache_requests_total",
            &format!("result=\"{result}\""),
        )
    };
    assert!(count("hit") >= 5.0, "{}", count("hit"));
    assert!(count("miss") >= 8.0, "{}", count("miss"));
    assert!(metric_sum(&metrics, "gateway_cache_purges_total", "") >= 4.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_serves_one_user_s_answer_to_another() {
    let (system, shop) = start().await;
    // Not public: each user gets their own, every time.
    let alice = get_with(&system, "/shop/me", &[("authorization", "Bearer alice")]).await;
    assert_eq!(alice.text().await.unwrap(), "Bearer alice");
    let bob = get_with(&system, "/shop/me", &[("authorization", "Bearer bob")]).await;
    assert_eq!(bob.text().await.unwrap(), "Bearer bob");
    let cookie = get_with(&system, "/shop/me", &[("cookie", "session=carol")]).await;
    assert_eq!(cookie.text().await.unwrap(), "nobody");
    let nobody = get_with(&system, "/shop/me", &[]).await;
    assert_eq!(nobody.text().await.unwrap(), "nobody");
    // Without credentials the same answer is shareable, and kept: but never given to a
    // request with credentials, since it is not public.
    let again = get_with(&system, "/shop/me", &[("authorization", "Bearer dave")]).await;
    assert_eq!(again.text().await.unwrap(), "Bearer dave");
    assert_eq!(shop.reached("/me"), 5);
    // Private answers are not kept at all.
    for _ in 0..3 {
        let response = get_with(&system, "/shop/private", &[]).await;
        assert_ne!(x_cache(&response), "hit");
    }
    assert_eq!(shop.reached("/private"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_stale_while_the_instance_fails_and_refreshes_in_the_background() {
    let (system, shop) = start().await;
    // stale-if-error: the route's ten minutes, past the answer's one second of life.
    assert_eq!(
        x_cache(&get_with(&system, "/shop/brief", &[]).await),
        "miss"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    shop.failing.store(true, Ordering::SeqCst);
    let stale = get_with(&system, "/shop/brief", &[]).await;
    assert_eq!(stale.status(), 200);
    assert_eq!(x_cache(&stale), "stale");
    assert_eq!(stale.text().await.unwrap(), "brief");
    // What was never stored gets the instance's error.
    let uncached = get_with(&system, "/shop/products/9", &[]).await;
    assert_eq!(uncached.status(), 500);
    shop.failing.store(false, Ordering::SeqCst);

    // stale-while-revalidate: the stale answer at once, one refresh behind it.
    assert_eq!(
        get_with(&system, "/shop/short", &[])
            .await
            .text()
            .await
            .unwrap(),
        "version 1"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let started = Instant::now();
    let stale = get_with(&system, "/shop/short", &[]).await;
    assert_eq!(x_cache(&stale), "stale");
    assert_eq!(stale.text().await.unwrap(), "version 1");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let response = get_with(&system, "/shop/short", &[]).await;
        let how = x_cache(&response);
        let text = response.text().await.unwrap();
        if text == "version 2" {
            assert_eq!(how, "hit", "the refreshed answer is served from the cache");
            break;
        }
        assert!(Instant::now() < deadline, "never refreshed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        shop.reached("/short"),
        2,
        "one refresh, however many stale answers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_misses_make_one_upstream_request() {
    let (system, shop) = start().await;
    let system = Arc::new(system);
    let requests: Vec<_> = (0..1000)
        .map(|_| {
            let system = system.clone();
            tokio::spawn(async move {
                let response = system
                    .http
                    .get(system.url("/shop/slow"))
                    .send()
                    .await
                    .unwrap();
                (response.status().as_u16(), response.text().await.unwrap())
            })
        })
        .collect();
    for request in requests {
        assert_eq!(request.await.unwrap(), (200, "slow".to_string()));
    }
    assert_eq!(
        shop.reached("/slow"),
        1,
        "one fetch for every concurrent miss"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_at_one_gateway_reaches_the_others() {
    let (mut system, _shop, dir) = start_keeping_routes().await;
    let routes = dir.path().join("routes.toml").display().to_string();
    let (port, admin) = (support::free_port(), support::free_port());
    let (port_text, admin_text) = (port.to_string(), admin.to_string());
    system.spawn(
        "gateway",
        &[
            ("PORT", port_text.as_str()),
            ("STRATUS_ADMIN_PORT", admin_text.as_str()),
            ("STRATUS_ROUTES", routes.as_str()),
        ],
    );
    system
        .wait_http_ok(&system.internal_url(admin, "/readyz"))
        .await;
    let second = |path: &str| format!("http://127.0.0.1:{port}{path}");
    // Both registered: the first gateway's relay finds the second in the registry.
    system.wait_registered("gateway", 2).await;
    let read_second = || async {
        let response = system
            .http
            .get(second("/shop/products/3"))
            .send()
            .await
            .unwrap();
        let how = x_cache(&response);
        (how, response.text().await.unwrap())
    };
    let _ = get_with(&system, "/shop/products/3", &[]).await;
    assert_eq!(
        x_cache(&get_with(&system, "/shop/products/3", &[]).await),
        "hit"
    );
    let _ = read_second().await;
    assert_eq!(read_second().await.0, "hit");

    // A write through the first gateway: the second's copy goes too, within moments.
    let write = system
        .http
        .put(system.url("/shop/products/3"))
        .json(&json!({ "price": 300 }))
        .send()
        .await
        .unwrap();
    assert_eq!(write.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (how, body) = read_second().await;
        if body == r#"{"id":"3","price":300}"# {
            assert_eq!(how, "miss");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the second gateway kept {body} ({how})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // An operator's purge at the first gateway reaches the second as well.
    assert_eq!(read_second().await.0, "hit");
    let purge = system
        .internal()
        .post(system.admin_url("/v1/cache/purge"))
        .json(&json!({ "tags": ["product-3"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(purge.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(3);
    while read_second().await.0 != "miss" {
        assert!(Instant::now() < deadline, "the second gateway never purged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let metrics = gateway_metrics(&system).await;
    assert!(
        metric_sum(
            &metrics,
            "gateway_cache_purges_relayed_total",
            "result=\"ok\""
        ) >= 3.0,
        "path and tags of the write, and the admin's tags"
    );
}

/// The default routes with the real catalog: its product reads are kept at the edge, an admin's
/// price change through the gateway shows on the next read (and in the list), a hit is on the
/// event sink as served by the gateway, and with the catalog killed the reads it answered go on
/// (`x-cache: stale`) while a product never read gets the usual 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_s_reads_are_kept_purged_by_a_price_change_and_outlive_the_catalog() {
    let (mut system, events_port) = System::start_with_events(1, true).await;
    let admin = system.admin_token().await;
    let mut ids = Vec::new();
    for name in ["Tea", "Coffee"] {
        let created = system
            .http
            .post(system.url("/api/catalog/products"))
            .bearer_auth(&admin)
            .json(&json!({ "name": name, "price_cents": 450, "stock": 5 }))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 201);
        let created: serde_json::Value = created.json().await.unwrap();
        ids.push(created["id"].as_str().unwrap().to_string());
    }
    let (tea, coffee) = (&ids[0], &ids[1]);
    let tea_path = format!("/api/catalog/products/{tea}");
    let (status, how, _, _) = read(&system, &tea_path).await;
    assert_eq!((status, how.as_str()), (200, "miss"));
    let (_, how, age, body) = read(&system, &tea_path).await;
    assert_eq!(how, "hit");
    assert!(age, "a hit carries its Age");
    assert_eq!(body["price_cents"], 450);
    let (_, how, _, _) = read(&system, "/api/catalog/products").await;
    assert_eq!(how, "miss");
    assert_eq!(read(&system, "/api/catalog/products").await.1, "hit");

    // An admin's price change through the gateway: the next read shows it, and the list too.
    let update = system
        .http
        .put(system.url(&tea_path))
        .bearer_auth(&admin)
        .json(&json!({ "name": "Tea", "price_cents": 500, "stock": 5 }))
        .send()
        .await
        .unwrap();
    assert_eq!(update.status(), 200);
    let (_, how, _, body) = read(&system, &tea_path).await;
    assert_eq!(
        (how.as_str(), body["price_cents"].as_i64()),
        ("miss", Some(500))
    );
    let (_, how, _, list) = read(&system, "/api/catalog/products").await;
    assert_eq!(
        how, "miss",
        "the list is tagged with every product's change"
    );
    let listed = list
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == tea.as_str())
        .cloned();
    assert_eq!(listed.unwrap()["price_cents"], 500);
    assert_eq!(read(&system, &tea_path).await.1, "hit");

    // The hits are on the sink as the gateway's hops, no catalog record under them.
    let sink = support::mesh::internal_url(events_port, "/v1/events?service=gateway&limit=1000");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let events: serde_json::Value = system
            .client(&sink)
            .get(&sink)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let hits = events["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["name"] == "catalog-read" && e["cache"] == "hit")
            .count();
        if hits >= 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no hit records on the sink: {events}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The catalog killed: the reads it answered go on from the edge once stale (5 s fresh),
    // a product nobody read gets the usual 503.
    system.process("catalog", 0).kill9();
    tokio::time::sleep(Duration::from_millis(5200)).await;
    let (status, how, _, body) = read(&system, &tea_path).await;
    assert_eq!((status, how.as_str()), (200, "stale"));
    assert_eq!(body["price_cents"], 500);
    let (status, _, _, problem) = read(&system, &format!("/api/catalog/products/{coffee}")).await;
    assert_eq!(status, 503, "{problem}");
}

/// GET `path` through the gateway: status, x-cache, whether it has an Age, and the JSON body.
async fn read(system: &System, path: &str) -> (u16, String, bool, serde_json::Value) {
    let response = system.http.get(system.url(path)).send().await.unwrap();
    let status = response.status().as_u16();
    let how = x_cache(&response);
    let age = response.headers().contains_key("age");
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    (status, how, age, body)
}
