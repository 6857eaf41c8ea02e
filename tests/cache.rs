//! Caching end to end: ETags, `Cache-Control` and 304s through the gateway, the catalog's
//! cache-aside reads and write-back views, the profile service's write-through, with a real Redis that is killed mid-test; and two gateways sharing
//! one rate limit through Redis.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use stratus_testing::servers::Redis;
use stratus_testing::{Need, Test};
use support::System;

async fn create_product(system: &System, admin: &str, price: i64) -> String {
    let response = system
        .http
        .post(system.url("/api/catalog/products"))
        .bearer_auth(admin)
        .json(&json!({"name": "Tea", "price_cents": price, "stock": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.unwrap();
    created["id"].as_str().unwrap().to_string()
}

/// GET one product past the edge cache: (status, x-server-cache, body).
async fn read(system: &System, id: &str) -> (u16, String, Value) {
    let response = system
        .http
        .get(system.url(&format!("/api/catalog/products/{id}")))
        .header("cache-control", "no-store")
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let cache = response
        .headers()
        .get("x-server-cache")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, cache, response.json().await.unwrap_or(Value::Null))
}

/// The value of a counter on a process's /metrics (summed over label sets that contain `labels`).
async fn counter(http: &reqwest::Client, base: &str, name: &str, labels: &str) -> f64 {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    support::metric_sum(&text, name, labels)
}

async fn instance_url(system: &System, service: &str) -> String {
    system.instance_url(service).await
}

async fn catalog_reads_are_cache_aside_in_redis_and_survive_its_death() {
    let mut redis = Redis::start();
    let system = System::start_with(
        1,
        &[
            ("catalog", "CACHE_URL", redis.url()),
            // Views are flushed on shutdown only here, so no flush invalidates between reads.
            ("catalog", "CATALOG_VIEWS_FLUSH", "1h".into()),
        ],
    )
    .await;
    let admin = system.admin_token().await;
    let id = create_product(&system, &admin, 450).await;

    let (status, cache, first) = read(&system, &id).await;
    assert_eq!((status, cache.as_str()), (200, "miss"));
    assert_eq!(first["price_cents"], 450);
    let (status, cache, second) = read(&system, &id).await;
    assert_eq!((status, cache.as_str()), (200, "hit"));
    assert_eq!(second, first);

    // A write invalidates: the next read loads the new price.
    let updated = system
        .http
        .put(system.url(&format!("/api/catalog/products/{id}")))
        .bearer_auth(&admin)
        .json(&json!({"name": "Tea", "price_cents": 500, "stock": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(updated.status(), 200);
    let (_, cache, third) = read(&system, &id).await;
    assert_eq!(
        (cache.as_str(), third["price_cents"].clone()),
        ("miss", json!(500))
    );
    assert_eq!(read(&system, &id).await.1, "hit");
    assert_eq!(read(&system, "no-such-product").await.0, 404);

    // Redis dies: reads still answer from the database, and writes still work.
    redis.kill();
    for _ in 0..5 {
        let (status, cache, body) = read(&system, &id).await;
        assert_eq!((status, cache.as_str()), (200, "miss"));
        assert_eq!(body["price_cents"], 500);
    }
    let updated = system
        .http
        .put(system.url(&format!("/api/catalog/products/{id}")))
        .bearer_auth(&admin)
        .json(&json!({"name": "Tea", "price_cents": 550, "stock": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(updated.status(), 200);
    assert_eq!(read(&system, &id).await.2["price_cents"], 550);
    let catalog = instance_url(&system, "catalog").await;
    let errors = counter(&system.http, &catalog, "cache_errors_total", "products").await;
    assert!(errors >= 5.0, "cache errors counted: {errors}");
    let hits = counter(&system.http, &catalog, "cache_hits_total", "products").await;
    assert_eq!(hits, 2.0);
}

async fn cache_outcomes_reach_the_event_records() {
    let (system, events_port) = System::start_with_events(1, true).await;
    let admin = system.admin_token().await;
    let id = create_product(&system, &admin, 100).await;
    read(&system, &id).await;
    read(&system, &id).await;
    let url = support::mesh::internal_url(events_port, "/v1/events?service=catalog");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let records: Value = system
            .http
            .get(&url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let outcomes: Vec<String> = records
            .as_array()
            .or_else(|| records["events"].as_array())
            .into_iter()
            .flatten()
            .filter(|r| r["name"] == "/api/catalog/products/{id}")
            .filter_map(|r| r["cache"].as_str().map(str::to_string))
            .collect();
        if outcomes.contains(&"hit".to_string()) && outcomes.contains(&"miss".to_string()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no hit and miss records: {records}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn product_views_are_written_back_in_batches_and_on_shutdown() {
    let mut system =
        System::start_with(1, &[("catalog", "CATALOG_VIEWS_FLUSH", "200ms".into())]).await;
    let admin = system.admin_token().await;
    let id = create_product(&system, &admin, 100).await;
    for _ in 0..5 {
        assert_eq!(read(&system, &id).await.0, 200);
    }
    // The flush writes the batch and invalidates the product: a later read shows the count.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let views = read(&system, &id).await.2["views"].as_i64().unwrap();
        if views >= 5 {
            break;
        }
        assert!(Instant::now() < deadline, "views never flushed: {views}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Views not yet flushed are written on a clean shutdown.
    system.spawn("catalog", &[("CATALOG_VIEWS_FLUSH", "1h")]);
    system.wait_registered("catalog", 2).await;
    system.wait_gateway_sees("catalog", 2).await;
    let old = system.process("catalog", 0);
    old.signal(libc::SIGTERM);
    let _ = old.child.wait();
    system.wait_gateway_sees("catalog", 1).await;
    let before = read(&system, &id).await.2["views"].as_i64().unwrap();
    for _ in 0..3 {
        read(&system, &id).await;
    }
    let late = system.process("catalog", 1);
    late.signal(libc::SIGTERM);
    let _ = late.child.wait();
    system.spawn("catalog", &[]);
    system.wait_gateway_sees("catalog", 1).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let (status, _, body) = read(&system, &id).await;
        if status == 200 {
            break body["views"].as_i64().unwrap();
        }
        assert!(Instant::now() < deadline, "the new catalog never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        after,
        before + 4,
        "the views counted before SIGTERM were kept"
    );
}

async fn profiles_are_written_through_and_read_back_from_the_cache() {
    let mut redis = Redis::start();
    let mut system = System::start(1).await;
    let url = redis.url();
    system.spawn("profile", &[("CACHE_URL", url.as_str())]);
    system.wait_registered("profile", 1).await;
    system.wait_gateway_sees("profile", 1).await;
    let ann = system.customer_token("ann@example.com").await;
    let bob = system.customer_token("bob@example.com").await;
    let me = system.url("/api/profile/me");

    let missing = system.http.get(&me).bearer_auth(&ann).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(
        system.http.get(&me).send().await.unwrap().status(),
        401,
        "no token, no profile"
    );

    // Bad input: a clear 4xx, nothing stored.
    for (body, status) in [
        (json!({"display_name": ""}), 422),
        (json!({"display_name": "x".repeat(101)}), 422),
        (json!({"display_name": "Ann", "phone": "call me"}), 422),
        (json!({"display_name": "Ann", "email": "a@b"}), 422),
        (json!({"display_name": 5}), 422),
    ] {
        let response = system
            .http
            .put(&me)
            .bearer_auth(&ann)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{body}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
    }
    let malformed = system
        .http
        .put(&me)
        .bearer_auth(&ann)
        .header("content-type", "application/json")
        .body("{\"display_name\":")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 400);
    assert_eq!(
        system
            .http
            .get(&me)
            .bearer_auth(&ann)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    let saved = system
        .http
        .put(&me)
        .bearer_auth(&ann)
        .json(
            &json!({"display_name": " Ann ", "address": "1 High St", "phone": "+44 20 7946 0958"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(saved.status(), 200);
    let saved: Value = saved.json().await.unwrap();
    assert_eq!(saved["display_name"], "Ann");

    // Write-through: the first read after the write is already a hit.
    let read_back = system.http.get(&me).bearer_auth(&ann).send().await.unwrap();
    assert_eq!(read_back.headers()["x-server-cache"], "hit");
    // Personal: no shared cache keeps it, Ann's browser revalidates it before each use.
    assert_eq!(read_back.headers()["cache-control"], "private, no-cache");
    let anns_tag = read_back.headers()["etag"].clone();
    assert_eq!(read_back.json::<Value>().await.unwrap(), saved);
    // Bob sees his own (absent) profile, never Ann's, even showing her answer's tag.
    assert_eq!(
        system
            .http
            .get(&me)
            .bearer_auth(&bob)
            .header("if-none-match", anns_tag.clone())
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let revalidated = system
        .http
        .get(&me)
        .bearer_auth(&ann)
        .header("if-none-match", anns_tag)
        .send()
        .await
        .unwrap();
    assert_eq!(revalidated.status(), 304);

    // The OpenAPI document is public.
    let openapi = system
        .http
        .get(system.url("/api/profile/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(openapi.status(), 200);
    assert!(openapi.json::<Value>().await.unwrap()["paths"]["/api/profile/me"].is_object());

    // Redis dies: reads come from the database, writes still land.
    redis.kill();
    let update = system
        .http
        .put(&me)
        .bearer_auth(&ann)
        .json(&json!({"display_name": "Ann B"}))
        .send()
        .await
        .unwrap();
    assert_eq!(update.status(), 200);
    let after = system.http.get(&me).bearer_auth(&ann).send().await.unwrap();
    assert_eq!(after.status(), 200);
    assert_eq!(after.headers()["x-server-cache"], "miss");
    let after: Value = after.json().await.unwrap();
    assert_eq!(after["display_name"], "Ann B");
    assert_eq!(
        after["address"],
        Value::Null,
        "PUT replaces the whole profile"
    );
}

/// The client's cache layer through the gateway: a read carries an ETag and `Cache-Control`, the
/// same tag back gets a 304 with no body, and a write changes the tag.
async fn reads_carry_etags_and_a_write_changes_them() {
    let system = System::start(1).await;
    let admin = system.admin_token().await;
    let id = create_product(&system, &admin, 100).await;
    // The list, not the product by id: reading a product counts a view, which changes it.
    let list = system.url("/api/catalog/products?limit=200");
    let first = system.http.get(&list).send().await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(
        first.headers()["cache-control"],
        "public, max-age=5, stale-while-revalidate=30"
    );
    let tag = first.headers()["etag"].clone();
    assert!(
        tag.to_str().unwrap().starts_with('"'),
        "a strong tag: {tag:?}"
    );

    let revalidate = || {
        system
            .http
            .get(&list)
            .header("if-none-match", tag.clone())
            .send()
    };
    let again = revalidate().await.unwrap();
    assert_eq!(again.status(), 304);
    assert_eq!(again.headers()["etag"], tag);
    assert!(again.bytes().await.unwrap().is_empty(), "a 304 has no body");

    let product = system.url(&format!("/api/catalog/products/{id}"));
    let update = system
        .http
        .put(&product)
        .bearer_auth(&admin)
        .json(&json!({"name": "Tea", "price_cents": 250, "stock": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(update.status(), 200);
    let changed = revalidate().await.unwrap();
    assert_eq!(changed.status(), 200, "the write changed the answer");
    assert_ne!(changed.headers()["etag"], tag);
    let products: Value = changed.json().await.unwrap();
    let updated = products
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == id.as_str())
        .unwrap();
    assert_eq!(updated["price_cents"], 250);

    // A product by id is tagged and public too.
    let one = system.http.get(&product).send().await.unwrap();
    assert!(one.headers().contains_key("etag"));
    assert!(one.headers()["cache-control"]
        .to_str()
        .unwrap()
        .starts_with("public"));
}

/// Polls a gateway's admin API until it lists `count` instances of `service`.
async fn wait_sees(http: &reqwest::Client, admin_port: u16, service: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = match http
            .get(support::mesh::internal_url(admin_port, "/v1/upstreams"))
            .send()
            .await
        {
            Ok(response) => response
                .json::<Value>()
                .await
                .ok()
                .and_then(|v| v["services"][service].as_array().map(Vec::len)),
            Err(_) => None,
        };
        if seen == Some(count) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "gateway :{admin_port} never saw {service}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn two_gateways_share_one_rate_limit_in_redis_and_fail_open() {
    let mut redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.toml");
    std::fs::write(
        &routes,
        "[[routes]]\nname = \"limited\"\nprefix = \"/limited\"\nservice = \"echo\"\nauth = \"none\"\n\
         rate_limit = { requests_per_second = 5, burst = 5, per = \"route\" }\n",
    )
    .unwrap();
    let url = redis.url();
    let shared_env = [
        ("STRATUS_RATE_LIMIT_REDIS_URL", url.as_str()),
        // A loaded test machine must not turn slow answers into local decisions.
        ("STRATUS_RATE_LIMIT_REDIS_TIMEOUT", "2s"),
        ("STRATUS_GATEWAY_WORKERS", "2"),
    ];
    let mut system = System::start_edge_with(Some(&routes), &shared_env).await;
    let (second_port, second_admin) = (support::free_port(), support::free_port());
    let (port_text, admin_text) = (second_port.to_string(), second_admin.to_string());
    let routes_text = routes.display().to_string();
    let mut env = vec![
        ("PORT", port_text.as_str()),
        ("STRATUS_ADMIN_PORT", admin_text.as_str()),
        ("STRATUS_ROUTES", routes_text.as_str()),
    ];
    env.extend_from_slice(&shared_env);
    system.spawn("gateway", &env);
    system
        .register(
            "echo",
            "echo-1",
            support::backend::start_echo("echo").await,
            json!({}),
        )
        .await;
    system.wait_gateway_sees("echo", 1).await;
    wait_sees(&system.http, second_admin, "echo", 1).await;

    let gateways = [system.gateway_port, second_port];
    let send = |i: usize| {
        system
            .http
            .get(format!("http://127.0.0.1:{}/limited/x", gateways[i % 2]))
            .send()
    };
    // Spread over both gateways, as fast as they answer: the burst and the rate for the time
    // taken get through in total, not twice that.
    let started = Instant::now();
    let mut allowed = [0usize; 2];
    for i in 0..40 {
        let status = send(i).await.unwrap().status().as_u16();
        assert!(status == 200 || status == 429, "{status}");
        if status == 200 {
            allowed[i % 2] += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let total = allowed[0] + allowed[1];
    let ceiling = 5 + (5.0 * elapsed).ceil() as usize;
    assert!(
        (5..=ceiling).contains(&total),
        "{total} allowed in {elapsed:.2}s ({allowed:?}); one shared limit allows 5 + 5/s"
    );
    assert!(
        allowed[0] > 0 && allowed[1] > 0,
        "both gateways served: {allowed:?}"
    );

    // Redis dies: requests still pass (each gateway limits on its own).
    redis.kill();
    for i in 0..6 {
        let status = send(i).await.unwrap().status().as_u16();
        assert_eq!(status, 200, "request {i} after Redis died");
    }
    let mut errors = 0.0;
    for admin in [system.admin_port, second_admin] {
        errors += counter(
            &system.http,
            &support::mesh::internal_url(admin, ""),
            "ratelimit_redis_errors_total",
            "",
        )
        .await;
    }
    assert!(errors >= 1.0, "the failures were counted");
}

fn main() -> std::process::ExitCode {
    stratus_testing::run(vec![
        Test::new(
            "catalog_reads_are_cache_aside_in_redis_and_survive_its_death",
            catalog_reads_are_cache_aside_in_redis_and_survive_its_death,
        )
        .worker_threads(2)
        .needs(&[Need::Redis]),
        Test::new(
            "cache_outcomes_reach_the_event_records",
            cache_outcomes_reach_the_event_records,
        )
        .worker_threads(2),
        Test::new(
            "reads_carry_etags_and_a_write_changes_them",
            reads_carry_etags_and_a_write_changes_them,
        )
        .worker_threads(2),
        Test::new(
            "product_views_are_written_back_in_batches_and_on_shutdown",
            product_views_are_written_back_in_batches_and_on_shutdown,
        )
        .worker_threads(2),
        Test::new(
            "profiles_are_written_through_and_read_back_from_the_cache",
            profiles_are_written_through_and_read_back_from_the_cache,
        )
        .worker_threads(2)
        .needs(&[Need::Redis]),
        Test::new(
            "two_gateways_share_one_rate_limit_in_redis_and_fail_open",
            two_gateways_share_one_rate_limit_in_redis_and_fail_open,
        )
        .worker_threads(2)
        .needs(&[Need::Redis]),
    ])
}
