//! The reference shop's order saga, end to end: real processes (registry, auth, catalog,
//! orders ×2, payments ×2, notifications, gateway), driven through the gateway as a client would.
//!
//! orders --order.placed--> payments --payment.completed|failed--> orders, notifications

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use stratus_testing::servers::{Nats, Postgres, Redis};
use stratus_testing::{Need, Test};
use support::System;

/// Everything the saga needs, started and waited for.
struct Shop {
    system: System,
    admin: String,
}

/// Environment for every shop service (orders, payments, notifications).
type Env = Vec<(&'static str, String)>;

impl Shop {
    async fn start(shop_env: Env, per_service: &[(&str, &str, String)]) -> Shop {
        // Settings for registry, auth, catalog or gateway go to the base system.
        let mut system = System::start_with(1, per_service).await;
        for (service, count) in [("orders", 2), ("payments", 2), ("notifications", 1)] {
            for _ in 0..count {
                let mut env: Vec<(&str, &str)> =
                    shop_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
                env.extend(
                    per_service
                        .iter()
                        .filter(|(s, _, _)| *s == service)
                        .map(|(_, k, v)| (*k, v.as_str())),
                );
                system.spawn(service, &env);
            }
        }
        for (service, count) in [("orders", 2), ("payments", 2), ("notifications", 1)] {
            system.wait_registered(service, count).await;
            system.wait_gateway_sees(service, count).await;
        }
        let admin = system.admin_token().await;
        Shop { system, admin }
    }

    async fn product(&self, name: &str, price_cents: i64) -> String {
        let response = self
            .system
            .http
            .post(self.system.url("/api/catalog/products"))
            .bearer_auth(&self.admin)
            .json(&json!({"name": name, "price_cents": price_cents, "stock": 1000}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        response.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn place(&self, token: &str, key: &str, items: Value) -> reqwest::RequestBuilder {
        self.system
            .http
            .post(self.system.url("/api/orders"))
            .bearer_auth(token)
            .header("Idempotency-Key", key)
            .json(&json!({ "items": items }))
    }

    async fn get(&self, token: &str, path: &str) -> (u16, Value) {
        let response = self
            .system
            .http
            .get(self.system.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Polls an order until it leaves `pending`, within `deadline`; returns its status.
    async fn settled(&self, token: &str, id: &str, deadline: Duration) -> String {
        let until = Instant::now() + deadline;
        loop {
            let (status, order) = self.get(token, &format!("/api/orders/{id}")).await;
            assert_eq!(status, 200, "reading order {id}");
            let state = order["status"].as_str().unwrap().to_string();
            if state != "pending" || Instant::now() > until {
                return state;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every order in the system (admin view).
    async fn all_orders(&self) -> Vec<Value> {
        let (status, orders) = self
            .get(&self.admin, "/api/orders?all=true&limit=1000")
            .await;
        assert_eq!(status, 200);
        orders.as_array().unwrap().clone()
    }

    /// Polls until no order is pending, within `deadline`; returns every order.
    async fn all_settled(&self, deadline: Duration) -> Vec<Value> {
        let until = Instant::now() + deadline;
        loop {
            let orders = self.all_orders().await;
            let pending = orders.iter().filter(|o| o["status"] == "pending").count();
            if pending == 0 {
                return orders;
            }
            assert!(
                Instant::now() < until,
                "{pending} of {} orders still pending after {deadline:?}; logs in {}",
                orders.len(),
                self.system.dir.path().display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Payments per order, counted through the API (admin).
    async fn payments_of(&self, order_id: &str) -> Vec<Value> {
        let (status, payments) = self
            .get(&self.admin, &format!("/api/payments?order_id={order_id}"))
            .await;
        assert_eq!(status, 200);
        payments.as_array().unwrap().clone()
    }

    /// Places `count` orders from one customer, 16 at a time, calling `during(i)` as order i is
    /// sent. Every 10th order has a line of quantity 13 (declined). Returns (order id, declined).
    async fn burst(
        self: &Arc<Self>,
        token: &str,
        product: &str,
        count: usize,
        mut during: impl FnMut(usize),
    ) -> Vec<(String, bool)> {
        let limit = Arc::new(tokio::sync::Semaphore::new(16));
        let mut tasks = Vec::new();
        for i in 0..count {
            during(i);
            let permit = limit.clone().acquire_owned().await.unwrap();
            let (shop, token, product) = (self.clone(), token.to_string(), product.to_string());
            tasks.push(tokio::spawn(async move {
                let declined = i % 10 == 3;
                let quantity = if declined { 13 } else { 1 + (i % 5) as i64 };
                let key = format!("burst-{i}");
                let items = json!([{"product_id": product, "quantity": quantity}]);
                // A client retries a request that did not get an answer, with the same key.
                let mut attempts = 0;
                let order = loop {
                    attempts += 1;
                    match shop.place(&token, &key, items.clone()).send().await {
                        Ok(r) if r.status() == 201 || r.status() == 200 => {
                            break r.json::<Value>().await.unwrap()
                        }
                        other if attempts < 20 => {
                            let _ = other;
                            tokio::time::sleep(Duration::from_millis(250)).await;
                        }
                        Ok(r) => panic!("order {i}: {}", r.status()),
                        Err(e) => panic!("order {i}: {e}"),
                    }
                };
                drop(permit);
                (order["id"].as_str().unwrap().to_string(), declined)
            }));
        }
        let mut placed = Vec::new();
        for task in tasks {
            placed.push(task.await.unwrap());
        }
        placed
    }

    /// Every order placed ended as the card rule says, and was charged exactly once.
    async fn assert_each_charged_once(&self, placed: &[(String, bool)], deadline: Duration) {
        let orders = self.all_settled(deadline).await;
        let by_id: HashMap<&str, &Value> = orders
            .iter()
            .map(|o| (o["id"].as_str().unwrap(), o))
            .collect();
        assert_eq!(by_id.len(), placed.len(), "one order per idempotency key");
        for (id, declined) in placed {
            let order = by_id.get(id.as_str()).expect("the placed order exists");
            let expected = if *declined { "failed" } else { "paid" };
            assert_eq!(order["status"], expected, "order {id}");
            let payments = self.payments_of(id).await;
            assert_eq!(
                payments.len(),
                1,
                "order {id} has {} payments",
                payments.len()
            );
        }
    }
}

fn is_uuid_v7(id: &str) -> bool {
    id.len() == 36 && id.as_bytes()[14] == b'7'
}

async fn an_order_is_paid_or_declined_and_notified_once() {
    let shop = Shop::start(vec![], &[]).await;
    order_flow(&shop).await;
}

/// The same flow with every backing service real: each service's database on PostgreSQL, the
/// caches on Redis, the broker on NATS JetStream.
async fn on_postgres_redis_and_nats_an_order_is_paid_or_declined_and_notified_once() {
    let postgres = Postgres::start();
    let nats = Nats::start();
    let redis = Redis::start();
    let env = vec![("BROKER_URL", nats.url()), ("CACHE_URL", redis.url())];
    let mut per_service: Vec<(&str, &str, String)> =
        ["auth", "catalog", "orders", "payments", "notifications"]
            .into_iter()
            .map(|service| (service, "DATABASE_URL", postgres.database(service)))
            .collect();
    per_service.push(("catalog", "CACHE_URL", redis.url()));
    let shop = Shop::start(env, &per_service).await;
    order_flow(&shop).await;
    // Nothing fell back to an embedded store: no SQLite file was created for any service.
    for service in [
        "auth",
        "catalog",
        "orders",
        "payments",
        "notifications",
        "broker",
    ] {
        let file = shop.system.dir.path().join(format!("{service}.db"));
        assert!(!file.exists(), "{} exists", file.display());
    }
    let catalog_log = std::fs::read_to_string(shop.system.log_path("catalog", 0)).unwrap();
    assert!(
        catalog_log.contains(r#""store":"redis""#),
        "the catalog's cache is not on Redis"
    );
}

/// Order, pay, decline, notify, deduplicate and scope, through the gateway.
async fn order_flow(shop: &Shop) {
    let tea = shop.product("Tea", 250).await;
    let pot = shop.product("Teapot", 1000).await;
    let ann = shop.system.customer_token("ann@example.com").await;
    let bob = shop.system.customer_token("bob@example.com").await;

    // Placed: pending, priced by the catalog, a UUIDv7 id.
    let started = Instant::now();
    let response = shop
        .place(
            &ann,
            "ann-1",
            json!([{"product_id": tea, "quantity": 2}, {"product_id": pot, "quantity": 1}]),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let first: Value = response.json().await.unwrap();
    let id = first["id"].as_str().unwrap().to_string();
    assert!(is_uuid_v7(&id), "{id}");
    assert_eq!(first["status"], "pending");
    assert_eq!(first["total"], 2 * 250 + 1000);
    assert_eq!(first["items"].as_array().unwrap().len(), 2);

    // Paid within the deadline (normally well under a second).
    assert_eq!(
        shop.settled(&ann, &id, Duration::from_secs(5)).await,
        "paid"
    );
    eprintln!("order -> paid in {:?}", started.elapsed());

    // The same key again: the same order, the same body; never a second order.
    let again = shop
        .place(
            &ann,
            "ann-1",
            json!([{"product_id": tea, "quantity": 2}, {"product_id": pot, "quantity": 1}]),
        )
        .send()
        .await
        .unwrap();
    assert!(again.status() == 200 || again.status() == 201);
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    // The same key for a different order is refused.
    let reused = shop
        .place(&ann, "ann-1", json!([{"product_id": tea, "quantity": 1}]))
        .send()
        .await
        .unwrap();
    assert_eq!(reused.status(), 422);

    // Concurrent duplicates (to both orders instances): one order.
    let racers: Vec<_> = (0..8)
        .map(|_| {
            shop.place(
                &ann,
                "ann-race",
                json!([{"product_id": tea, "quantity": 1}]),
            )
            .send()
        })
        .collect();
    let mut raced = HashSet::new();
    for response in futures_join(racers).await {
        let response = response.unwrap();
        assert!(response.status() == 200 || response.status() == 201);
        raced.insert(response.json::<Value>().await.unwrap()["id"].clone());
    }
    assert_eq!(raced.len(), 1, "concurrent duplicates made {raced:?}");

    // The decline rule: a line of quantity 13.
    let declined: Value = shop
        .place(&ann, "ann-2", json!([{"product_id": tea, "quantity": 13}]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let declined_id = declined["id"].as_str().unwrap();
    assert_eq!(
        shop.settled(&ann, declined_id, Duration::from_secs(5))
            .await,
        "failed"
    );
    let race_id = raced.iter().next().unwrap().as_str().unwrap().to_string();
    assert_eq!(
        shop.settled(&ann, &race_id, Duration::from_secs(5)).await,
        "paid"
    );

    // One notification per outcome.
    let until = Instant::now() + Duration::from_secs(5);
    let notifications = loop {
        let (status, list) = shop.get(&ann, "/api/notifications").await;
        assert_eq!(status, 200);
        let list = list.as_array().unwrap().clone();
        if list.len() >= 3 || Instant::now() > until {
            break list;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let kinds: HashMap<String, String> = notifications
        .iter()
        .map(|n| {
            (
                n["order_id"].as_str().unwrap().to_string(),
                n["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(notifications.len(), 3, "{notifications:?}");
    assert_eq!(kinds[&id], "order.paid");
    assert_eq!(kinds[declined_id], "order.failed");

    // Exactly one payment for the order, visible to its owner.
    let (status, payments) = shop
        .get(&ann, &format!("/api/payments?order_id={id}"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(payments.as_array().unwrap().len(), 1);
    assert_eq!(payments[0]["status"], "completed");
    assert_eq!(payments[0]["amount_cents"], 1500);

    // Ownership: bob sees none of ann's; the admin sees everything.
    let (status, body) = shop.get(&bob, &format!("/api/orders/{id}")).await;
    assert_eq!(status, 404);
    assert_eq!(body["status"], 404);
    let (_, bobs) = shop.get(&bob, "/api/orders").await;
    assert_eq!(bobs, json!([]));
    let (status, _) = shop.get(&bob, "/api/orders?all=true").await;
    assert_eq!(status, 403);
    let (_, bob_payments) = shop
        .get(&bob, &format!("/api/payments?order_id={id}"))
        .await;
    assert_eq!(bob_payments, json!([]));
    let (_, bob_notes) = shop.get(&bob, "/api/notifications").await;
    assert_eq!(bob_notes, json!([]));
    let (status, as_admin) = shop.get(&shop.admin, &format!("/api/orders/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(as_admin["status"], "paid");
    let (_, anns) = shop.get(&ann, "/api/orders").await;
    assert_eq!(anns.as_array().unwrap().len(), 3);
    assert_eq!(shop.all_orders().await.len(), 3);

    // Each service describes itself.
    for (service, path) in [
        ("orders", "/api/orders"),
        ("payments", "/api/payments"),
        ("notifications", "/api/notifications"),
    ] {
        let url = format!("{}/openapi.json", shop.system.instance_url(service).await);
        let document: Value = shop.system.get_json(url).await;
        assert_eq!(document["openapi"], "3.0.3");
        assert!(document["paths"][path].is_object(), "{service}");
        // And through the gateway, without a token.
        let public = shop
            .system
            .http
            .get(shop.system.url(&format!("{path}/openapi.json")))
            .send()
            .await
            .unwrap();
        assert_eq!(public.status(), 200, "{service} through the gateway");
    }
}

/// Awaits every future (the test crate has no futures dependency of its own).
async fn futures_join<F: std::future::Future + Send + 'static>(futures: Vec<F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let tasks: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for task in tasks {
        out.push(task.await.unwrap());
    }
    out
}

async fn a_poison_message_goes_to_the_dead_letter_topic_and_consumers_carry_on() {
    let shop = Shop::start(vec![], &[]).await;
    let tea = shop.product("Tea", 250).await;
    let ann = shop.system.customer_token("ann@example.com").await;
    let url = format!(
        "sqlite://{}",
        shop.system.dir.path().join("broker.db").display()
    );
    let broker = stratus_broker::Broker::connect(&url, Default::default())
        .await
        .unwrap();
    let mut dead = broker
        .subscribe_at(
            "payment.completed.dlq",
            "test",
            stratus_broker::StartAt::Earliest,
        )
        .await
        .unwrap();
    let poison = stratus_broker::Message::new("this is not JSON");
    broker.publish("payment.completed", &poison).await.unwrap();

    // Both consuming groups give up on it after their attempts, and it waits in the DLQ.
    let mut groups = HashSet::new();
    let until = Instant::now() + Duration::from_secs(30);
    while groups.len() < 2 {
        let left = until.saturating_duration_since(Instant::now());
        let delivery = tokio::time::timeout(left, dead.next())
            .await
            .expect("the poison message reaches the DLQ")
            .unwrap();
        let original = delivery
            .message
            .header(stratus_broker::dlq_headers::ORIGINAL_ID)
            .map(str::to_string);
        if original.as_deref() == Some(poison.id.as_str()) {
            groups.insert(
                delivery
                    .message
                    .header(stratus_broker::dlq_headers::GROUP)
                    .unwrap()
                    .to_string(),
            );
        }
        delivery.ack().await.unwrap();
    }
    assert_eq!(
        groups,
        HashSet::from(["orders".into(), "notifications".into()])
    );

    // The consumers are still at work.
    let order: Value = shop
        .place(
            &ann,
            "after-poison",
            json!([{"product_id": tea, "quantity": 1}]),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = order["id"].as_str().unwrap();
    assert_eq!(shop.settled(&ann, id, Duration::from_secs(5)).await, "paid");
}

async fn a_killed_payments_instance_loses_and_doubles_no_order() {
    // A message the killed instance had taken comes back after the visibility timeout.
    let env = vec![("STRATUS_BROKER_VISIBILITY_TIMEOUT", "2s".to_string())];
    let shop = Arc::new(Shop::start(env, &[]).await);
    let tea = shop.product("Tea", 199).await;
    let ann = shop.system.customer_token("ann@example.com").await;
    let victim = shop
        .system
        .processes
        .iter()
        .position(|p| p.name == "payments")
        .unwrap();
    let pid = shop.system.processes[victim].pid();

    let placed = shop
        .burst(&ann, &tea, 200, |i| {
            if i == 60 {
                // SIGKILL: no deregistration, no acks, no goodbye.
                unsafe {
                    libc::kill(pid as i32, libc::SIGKILL);
                }
            }
        })
        .await;
    shop.assert_each_charged_once(&placed, Duration::from_secs(60))
        .await;
}

async fn on_postgres_and_nats_a_broker_outage_delays_but_loses_nothing() {
    let postgres = Postgres::start();
    let mut nats = Nats::start();
    let env = vec![
        ("BROKER_URL", nats.url()),
        ("STRATUS_BROKER_VISIBILITY_TIMEOUT", "3s".to_string()),
    ];
    let databases = [
        ("orders", "DATABASE_URL", postgres.database("orders")),
        ("payments", "DATABASE_URL", postgres.database("payments")),
        (
            "notifications",
            "DATABASE_URL",
            postgres.database("notifications"),
        ),
    ];
    let shop = Arc::new(Shop::start(env, &databases).await);
    let tea = shop.product("Tea", 250).await;
    let ann = shop.system.customer_token("ann@example.com").await;

    // The plain flow first.
    let order: Value = shop
        .place(&ann, "first", json!([{"product_id": tea, "quantity": 1}]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let first = order["id"].as_str().unwrap().to_string();
    assert_eq!(
        shop.settled(&ann, &first, Duration::from_secs(5)).await,
        "paid"
    );

    // A burst with NATS away for about ten seconds in the middle: orders keep being taken
    // (the outbox holds their events), and everything settles once the broker is back.
    let stopped = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let placed = {
        let stopped = stopped.clone();
        let nats = &mut nats;
        shop.burst(&ann, &tea, 200, move |i| {
            if i == 50 {
                nats.stop();
                *stopped.lock().unwrap() = Some(Instant::now());
            }
        })
        .await
    };
    let since = stopped.lock().unwrap().expect("stopped").elapsed();
    if since < Duration::from_secs(10) {
        // The outage lasts ten seconds whatever the speed of the burst.
        tokio::time::sleep(Duration::from_secs(10) - since).await;
    }
    let (status, pending) = shop
        .get(&ann, &format!("/api/orders/{}", placed[150].0))
        .await;
    assert_eq!(status, 200, "reads work while the broker is down");
    assert_eq!(pending["status"], "pending", "no broker, no payment yet");
    nats.resume();

    let mut all = placed;
    all.push((first, false));
    shop.assert_each_charged_once(&all, Duration::from_secs(90))
        .await;
}

async fn with_the_catalog_down_orders_are_refused_fast_and_reads_still_work() {
    let mut shop = Shop::start(vec![], &[]).await;
    let tea = shop.product("Tea", 250).await;
    let ann = shop.system.customer_token("ann@example.com").await;
    let order: Value = shop
        .place(&ann, "before", json!([{"product_id": tea, "quantity": 1}]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = order["id"].as_str().unwrap().to_string();
    assert_eq!(
        shop.settled(&ann, &id, Duration::from_secs(5)).await,
        "paid"
    );

    shop.system.process("catalog", 0).kill9();
    for n in 0..5 {
        let started = Instant::now();
        let response = shop
            .place(
                &ann,
                &format!("during-{n}"),
                json!([{"product_id": tea, "quantity": 1}]),
            )
            .send()
            .await
            .unwrap();
        let took = started.elapsed();
        assert_eq!(response.status(), 503, "attempt {n}");
        assert!(took < Duration::from_secs(1), "attempt {n} took {took:?}");
        assert!(response.headers().contains_key("retry-after"));
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
    }
    let (status, read) = shop.get(&ann, &format!("/api/orders/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(read["status"], "paid");
    assert_eq!(
        shop.all_orders().await.len(),
        1,
        "no order was stored while refusing"
    );
}

async fn bad_input_is_refused_and_stores_nothing() {
    let shop = Shop::start(vec![], &[]).await;
    let tea = shop.product("Tea", 250).await;
    let ann = shop.system.customer_token("ann@example.com").await;
    let http = &shop.system.http;
    let url = shop.system.url("/api/orders");
    let good = json!({"items": [{"product_id": tea, "quantity": 1}]});

    let mut cases: Vec<(&str, reqwest::RequestBuilder, u16)> = vec![
        (
            "no token",
            http.post(&url).header("Idempotency-Key", "k0").json(&good),
            401,
        ),
        ("no key", http.post(&url).bearer_auth(&ann).json(&good), 400),
        (
            "empty key",
            http.post(&url)
                .bearer_auth(&ann)
                .header("Idempotency-Key", "")
                .json(&good),
            400,
        ),
        (
            "bad JSON",
            http.post(&url)
                .bearer_auth(&ann)
                .header("Idempotency-Key", "k1")
                .header("content-type", "application/json")
                .body("{\"items\": [ {"),
            400,
        ),
        (
            "not JSON",
            http.post(&url)
                .bearer_auth(&ann)
                .header("Idempotency-Key", "k2")
                .body("items=1"),
            415,
        ),
    ];
    let shaped = [
        (
            "zero quantity",
            json!({"items": [{"product_id": tea, "quantity": 0}]}),
            422,
        ),
        (
            "negative quantity",
            json!({"items": [{"product_id": tea, "quantity": -1}]}),
            422,
        ),
        (
            "too many",
            json!({"items": [{"product_id": tea, "quantity": 101}]}),
            422,
        ),
        (
            "fractional",
            json!({"items": [{"product_id": tea, "quantity": 1.5}]}),
            422,
        ),
        ("no items", json!({"items": []}), 422),
        (
            "unknown field",
            json!({"items": [{"product_id": tea, "quantity": 1}], "discount": 50}),
            422,
        ),
        (
            "duplicate product",
            json!({"items": [{"product_id": tea, "quantity": 1}, {"product_id": tea, "quantity": 2}]}),
            422,
        ),
        (
            "unknown product",
            json!({"items": [{"product_id": "0190aaaa-0000-7000-8000-000000000000", "quantity": 1}]}),
            422,
        ),
        (
            "path in the id",
            json!({"items": [{"product_id": "../../auth", "quantity": 1}]}),
            422,
        ),
    ];
    for (n, (name, body, status)) in shaped.into_iter().enumerate() {
        let request = http
            .post(&url)
            .bearer_auth(&ann)
            .header("Idempotency-Key", format!("shape-{n}"))
            .json(&body);
        cases.push((name, request, status));
    }
    let huge = json!({"items": [{"product_id": "x".repeat(4 << 20), "quantity": 1}]});
    cases.push((
        "huge body",
        http.post(&url)
            .bearer_auth(&ann)
            .header("Idempotency-Key", "huge")
            .json(&huge),
        413,
    ));
    let list = shop.system.url("/api/orders?limit=0");
    cases.push(("bad page", http.get(&list).bearer_auth(&ann), 400));
    let payments = shop.system.url("/api/payments?colour=red");
    cases.push(("unknown query", http.get(&payments).bearer_auth(&ann), 400));

    for (name, request, expected) in cases {
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), expected, "{name}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{name}"
        );
    }
    assert!(shop.all_orders().await.is_empty(), "nothing was stored");
}

async fn one_trace_follows_the_order_through_every_service() {
    let events_port = support::free_port();
    let sink = support::mesh::internal_url(events_port, "");
    let per_service: Vec<(&str, &str, String)> = [
        "auth",
        "catalog",
        "gateway",
        "orders",
        "payments",
        "notifications",
    ]
    .into_iter()
    .map(|service| (service, "STRATUS_EVENTS_URL", sink.clone()))
    .collect();
    let mut shop = Shop::start(vec![], &per_service).await;
    let port = events_port.to_string();
    shop.system.spawn("events", &[("PORT", port.as_str())]);
    shop.system.wait_http_ok(&format!("{sink}/readyz")).await;
    let tea = shop.product("Tea", 250).await;
    let ann = shop.system.customer_token("ann@example.com").await;

    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let order: Value = shop
        .place(&ann, "traced", json!([{"product_id": tea, "quantity": 1}]))
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = order["id"].as_str().unwrap();
    assert_eq!(shop.settled(&ann, id, Duration::from_secs(5)).await, "paid");

    // Records arrive in batches (every 200 ms): poll until every hop is in.
    let find = |records: &[Value], service: &str, kind: &str, name: &str| -> Option<Value> {
        records
            .iter()
            .find(|r| r["service"] == service && r["kind"] == kind && r["name"] == name)
            .cloned()
    };
    let until = Instant::now() + Duration::from_secs(10);
    let records = loop {
        let response = shop
            .system
            .internal()
            .get(format!("{sink}/v1/traces/{trace}"))
            .send()
            .await
            .unwrap();
        let records = if response.status() == 200 {
            response.json::<Value>().await.unwrap()["records"]
                .as_array()
                .unwrap()
                .clone()
        } else {
            vec![]
        };
        let complete = records.iter().any(|r| r["kind"] == "gateway")
            && find(&records, "orders", "server", "/api/orders").is_some()
            && find(&records, "payments", "consumer", "order.placed").is_some()
            && find(&records, "notifications", "consumer", "payment.completed").is_some()
            && find(&records, "orders", "consumer", "payment.completed").is_some()
            && find(&records, "catalog", "server", "/api/catalog/products/{id}").is_some();
        if complete {
            break records;
        }
        assert!(Instant::now() < until, "incomplete trace: {records:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let orders = find(&records, "orders", "server", "/api/orders").expect("the orders hop");
    let catalog = find(&records, "catalog", "server", "/api/catalog/products/{id}").unwrap();
    let payments = find(&records, "payments", "consumer", "order.placed").unwrap();
    let notified = find(&records, "notifications", "consumer", "payment.completed").unwrap();
    let settled = find(&records, "orders", "consumer", "payment.completed").unwrap();
    // gateway -> orders -> catalog; orders -> payments -> notifications and orders.
    let gateway = records.iter().find(|r| r["kind"] == "gateway").unwrap();
    assert_eq!(orders["parent_span_id"], gateway["span_id"]);
    assert_eq!(catalog["parent_span_id"], orders["span_id"]);
    assert_eq!(payments["parent_span_id"], orders["span_id"]);
    assert_eq!(payments["topic"], "order.placed");
    assert_eq!(notified["parent_span_id"], payments["span_id"]);
    assert_eq!(settled["parent_span_id"], payments["span_id"]);

    // The orders service's database work is one `client` record under its request, naming the
    // database it called; the topology draws that as an edge orders -> orders-db.
    let until = Instant::now() + Duration::from_secs(10);
    let database = loop {
        let records: Vec<Value> = shop
            .system
            .internal()
            .get(format!("{sink}/v1/traces/{trace}"))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()["records"]
            .as_array()
            .unwrap()
            .clone();
        let found = records.into_iter().find(|r| {
            r["service"] == "orders"
                && r["kind"] == "client"
                && r["peer"] == "orders-db"
                && r["parent_span_id"] == orders["span_id"]
        });
        if let Some(found) = found {
            break found;
        }
        assert!(
            Instant::now() < until,
            "no orders -> orders-db record in the trace"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(database["name"], "sqlite");
    assert_eq!(database["ok"], true);
    assert!(database["duration_us"].as_u64().unwrap() > 0);
    assert!(
        database["duration_us"].as_u64().unwrap() <= orders["duration_us"].as_u64().unwrap(),
        "the database time fits in the request: {database} in {orders}"
    );
    let topology: Value = shop
        .system
        .get_json(format!("{sink}/v1/topology?window=5m"))
        .await;
    let edge = topology["edges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["from"] == "orders" && e["to"] == "orders-db")
        .unwrap_or_else(|| panic!("no edge orders -> orders-db: {topology:#}"))
        .clone();
    assert!(edge["count"].as_u64().unwrap() >= 1, "{edge}");
    let node = topology["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "orders-db")
        .unwrap()
        .clone();
    assert_eq!(node["kind"], "database");
}

fn main() -> std::process::ExitCode {
    stratus_testing::run(vec![
        Test::new(
            "an_order_is_paid_or_declined_and_notified_once",
            an_order_is_paid_or_declined_and_notified_once,
        ),
        Test::new(
            "on_postgres_redis_and_nats_an_order_is_paid_or_declined_and_notified_once",
            on_postgres_redis_and_nats_an_order_is_paid_or_declined_and_notified_once,
        )
        .needs(&[Need::Postgres, Need::Nats, Need::Redis]),
        Test::new(
            "a_poison_message_goes_to_the_dead_letter_topic_and_consumers_carry_on",
            a_poison_message_goes_to_the_dead_letter_topic_and_consumers_carry_on,
        ),
        Test::new(
            "a_killed_payments_instance_loses_and_doubles_no_order",
            a_killed_payments_instance_loses_and_doubles_no_order,
        ),
        Test::new(
            "on_postgres_and_nats_a_broker_outage_delays_but_loses_nothing",
            on_postgres_and_nats_a_broker_outage_delays_but_loses_nothing,
        )
        .needs(&[Need::Postgres, Need::Nats]),
        Test::new(
            "with_the_catalog_down_orders_are_refused_fast_and_reads_still_work",
            with_the_catalog_down_orders_are_refused_fast_and_reads_still_work,
        ),
        Test::new(
            "bad_input_is_refused_and_stores_nothing",
            bad_input_is_refused_and_stores_nothing,
        ),
        Test::new(
            "one_trace_follows_the_order_through_every_service",
            one_trace_follows_the_order_through_every_service,
        ),
    ])
}
