//! Zero trust inside, against real processes with `STRATUS_MTLS=required`: a process with no
//! certificate, with a plaintext socket, with another service's certificate, an expired one
//! or one from another authority can change nothing and read nothing.

mod support;

use std::time::Duration;

use serde_json::json;
use stratus_identity::{Authority, SpiffeId};
use support::mesh::{client_with, TRUST_DOMAIN};
use support::System;

fn registration(port: u16) -> serde_json::Value {
    json!({"address": "127.0.0.1", "port": port, "ttl_seconds": 60})
}

#[tokio::test]
async fn without_an_identity_nothing_in_the_registry_changes_or_is_read() {
    let system = System::start(1).await;
    let registry = system.registry_url();
    let auth = system.registered("auth").await;
    let auth_id = auth[0]["id"].as_str().unwrap().to_string();

    // Plaintext: the port speaks only TLS, so no HTTP answer at all.
    let plain = reqwest::Client::new();
    let plain_url = format!("http://127.0.0.1:{}/v1/services", system.registry_port);
    assert!(
        plain.get(&plain_url).send().await.is_err(),
        "a plaintext answer"
    );

    // TLS with no certificate: told why, and nothing done.
    let nobody = client_with(None);
    let rogue = format!("{registry}/v1/services/auth/instances/rogue");
    let response = nobody
        .put(&rogue)
        .json(&registration(9))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let real = format!("{registry}/v1/services/auth/instances/{auth_id}");
    let response = nobody
        .put(format!("{real}/heartbeat"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let response = nobody.delete(&real).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let response = nobody
        .get(format!("{registry}/v1/services"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    // The real auth instance is still there, alone.
    let auth = system.registered("auth").await;
    assert_eq!(auth.len(), 1);
    assert_eq!(auth[0]["id"], auth_id.as_str());
    // What is public by design stays so: the probes and the trust bundle.
    let response = nobody
        .get(format!("{registry}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = nobody
        .get(format!("{registry}/v1/identity/bundle"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_catalog_certificate_acts_for_catalog_only() {
    let system = System::start(1).await;
    let mesh = system.mesh.as_ref().unwrap();
    let registry = system.registry_url();
    let catalog_id = SpiffeId::service(TRUST_DOMAIN, "catalog").unwrap();
    let catalog = client_with(Some(&mesh.issue(&catalog_id, Duration::from_secs(600), 0)));

    let response = catalog
        .put(format!("{registry}/v1/services/auth/instances/rogue"))
        .json(&registration(9))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("cannot act for `auth`"),
        "{body}"
    );
    assert_eq!(system.registered("auth").await.len(), 1);

    // Its own service it may change, and any identity may read.
    let own = format!("{registry}/v1/services/catalog/instances/extra");
    let response = catalog
        .put(&own)
        .json(&registration(9))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let response = catalog.delete(&own).send().await.unwrap();
    assert_eq!(response.status(), 204);
    let response = catalog
        .get(format!("{registry}/v1/services"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // Its join credential gets a catalog certificate, never an auth one.
    let join = mesh.join.credential("catalog").unwrap();
    let response = client_with(None)
        .post(format!("{registry}/v1/identity/certificates"))
        .bearer_auth(&join)
        .json(&json!({"service": "auth"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
}

#[tokio::test]
async fn expired_and_foreign_certificates_are_refused() {
    let system = System::start(1).await;
    let mesh = system.mesh.as_ref().unwrap();
    let registry = system.registry_url();
    let catalog_id = SpiffeId::service(TRUST_DOMAIN, "catalog").unwrap();
    let services = format!("{registry}/v1/services");

    // Valid from two hours ago for one hour (its backdated start aside).
    let expired = mesh.issue(&catalog_id, Duration::from_secs(3600), -7200);
    let outcome = client_with(Some(&expired)).get(&services).send().await;
    assert!(
        outcome.is_err(),
        "an expired certificate was accepted: {outcome:?}"
    );

    let other = Authority::create(TRUST_DOMAIN, time::OffsetDateTime::now_utc()).unwrap();
    let foreign = other
        .issue_with_key(
            &catalog_id,
            Duration::from_secs(600),
            time::OffsetDateTime::now_utc(),
        )
        .unwrap();
    let outcome = client_with(Some(&foreign)).get(&services).send().await;
    assert!(
        outcome.is_err(),
        "another authority's certificate was accepted: {outcome:?}"
    );

    // The same request with a good certificate is answered.
    let good = mesh.issue(&catalog_id, Duration::from_secs(600), 0);
    let response = client_with(Some(&good))
        .get(&services)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn instances_and_the_admin_api_answer_only_identities() {
    let system = System::start(1).await;
    let catalog = system.instance_url("catalog").await;
    let nobody = client_with(None);
    let plain = reqwest::Client::new();

    let plain_url = catalog.replacen("https://", "http://", 1);
    assert!(plain
        .get(format!("{plain_url}/products"))
        .send()
        .await
        .is_err());
    let response = nobody
        .get(format!("{catalog}/products"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    // An orchestrator's probe has no certificate: health stays open.
    let response = nobody
        .get(format!("{catalog}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let admin = system.admin_url("/v1/upstreams");
    let response = nobody.get(&admin).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let plain_admin = admin.replacen("https://", "http://", 1);
    assert!(plain.get(&plain_admin).send().await.is_err());
    let response = system.client(&admin).get(&admin).send().await.unwrap();
    assert_eq!(response.status(), 200, "the operator reads the admin API");
}

fn record(service: &str) -> serde_json::Value {
    json!({
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        "span_id": "00f067aa0ba902b7",
        "service": service,
        "instance": "i-1",
        "kind": "server",
        "name": "/x",
        "method": "GET",
        "status": 200,
        "ok": true,
        "started_at": "2099-01-01T00:00:00.5Z",
        "duration_us": 1500
    })
}

#[tokio::test]
async fn the_sink_takes_each_service_s_own_records_and_answers_queries_to_operators() {
    let mut system = System::start(1).await;
    let port = support::free_port();
    system.spawn("events", &[("PORT", port.to_string().as_str())]);
    let sink = format!("https://127.0.0.1:{port}");
    system.wait_http_ok(&format!("{sink}/readyz")).await;
    let mesh = system.mesh.as_ref().unwrap();
    let catalog_id = SpiffeId::service(TRUST_DOMAIN, "catalog").unwrap();
    let catalog = client_with(Some(&mesh.issue(&catalog_id, Duration::from_secs(600), 0)));
    let events = format!("{sink}/v1/events");

    let response = client_with(None)
        .post(&events)
        .json(&json!([record("catalog")]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let response = catalog
        .post(&events)
        .json(&json!([record("orders")]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let response = catalog
        .post(&events)
        .json(&json!([record("catalog"), record("orders")]))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        403,
        "one record as another service refuses the batch"
    );
    let response = catalog
        .post(&events)
        .json(&json!([record("catalog")]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);

    // Queries are an operator's: not a service's, not nobody's.
    assert_eq!(catalog.get(&events).send().await.unwrap().status(), 403);
    assert_eq!(
        client_with(None)
            .get(&events)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let records = system.get_json(format!("{events}?service=catalog")).await;
    let records = records["events"].as_array().unwrap();
    assert_eq!(records.len(), 1, "{records:?}");
    assert!(
        records.iter().all(|r| r["service"] == "catalog"),
        "{records:?}"
    );
    assert!(
        !system.get_json(format!("{events}?service=orders")).await["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["instance"] == "i-1"),
        "a refused record was stored"
    );
}

#[tokio::test]
async fn intentions_let_only_the_named_services_call_and_a_refusal_is_on_the_sink() {
    let events_port = support::free_port();
    let sink = format!("http://127.0.0.1:{events_port}");
    let mut system = System::start_with(
        1,
        &[
            (
                "catalog",
                "STRATUS_ALLOWED_CALLERS",
                "gateway,orders".into(),
            ),
            ("catalog", "STRATUS_EVENTS_URL", sink.clone()),
        ],
    )
    .await;
    system.spawn("events", &[("PORT", events_port.to_string().as_str())]);
    let sink = sink.replacen("http://", "https://", 1);
    system.wait_http_ok(&format!("{sink}/readyz")).await;
    let mesh = system.mesh.as_ref().unwrap();
    let as_service = |name: &str| {
        let id = SpiffeId::service(TRUST_DOMAIN, name).unwrap();
        client_with(Some(&mesh.issue(&id, Duration::from_secs(600), 0)))
    };
    let products = format!(
        "{}/api/catalog/products",
        system.instance_url("catalog").await
    );

    let response = as_service("orders").get(&products).send().await.unwrap();
    assert_eq!(response.status(), 200, "orders -> catalog is allowed");
    let response = as_service("profile").get(&products).send().await.unwrap();
    assert_eq!(
        response.status(),
        403,
        "no intention allows profile -> catalog"
    );
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("no intention lets spiffe://stratus.local/service/profile call `catalog`"),
        "{body}"
    );

    // The refusal is on the sink, naming both identities.
    let url = format!("{sink}/v1/events?service=catalog&status=403");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let found = system.get_json(&url).await["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["peer"] == "spiffe://stratus.local/service/profile");
        if found {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no record of the refusal on the sink"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The dashboard's topology marks the calls as mutually authenticated, and one refused.
    let topology = system.get_json(format!("{sink}/v1/topology")).await;
    let edge = topology["edges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["to"] == "catalog" && e["from"] == "clients")
        .cloned()
        .unwrap_or_else(|| panic!("no edge to catalog: {topology}"));
    assert_eq!(edge["mutual_tls"], edge["count"], "{edge}");
    assert_eq!(edge["refused"], 1, "{edge}");
}

#[tokio::test]
async fn requests_flow_through_the_gateway_over_mutual_tls_and_a_rogue_gets_no_login() {
    let system = System::start(2).await;
    // Logins and reads go gateway -> auth and gateway -> catalog over mutual TLS.
    let token = system.admin_token().await;
    assert!(!token.is_empty());
    system.products().await;

    // A listener with no identity, put into the registry as `auth` by an operator's mistake
    // (nobody else can put it there): the gateway refuses it at the handshake, so it never
    // receives a login, and every login still succeeds on the real instance.
    let rogue = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let rogue_port = rogue.local_addr().unwrap().port();
    let received = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = received.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = rogue.accept().await {
            use tokio::io::AsyncReadExt;
            let mut buffer = vec![0u8; 4096];
            if let Ok(read) = socket.read(&mut buffer).await {
                if buffer[..read].windows(8).any(|w| w == b"password") {
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
        }
    });
    system
        .register("auth", "rogue", rogue_port, json!({}))
        .await;
    system.wait_gateway_sees("auth", 2).await;
    for _ in 0..10 {
        system.admin_token().await;
    }
    assert_eq!(
        received.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the rogue read a password"
    );
}

/// Acceptance: certificates of 30 s renew under load and the authority's root rotates, with not
/// one failed request through the gateway (reads to catalog, logins to auth, orders through the
/// saga: orders -> catalog over mTLS, then the broker) and not one lost order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_renew_and_the_root_rotates_under_load_without_a_failed_request() {
    // Health probes with room to spare: this test is about certificates, and a probe that
    // times out on a busy machine would take an instance out of rotation for other reasons.
    let patient = [
        ("STRATUS_HEALTH_INTERVAL", "1s"),
        ("STRATUS_HEALTH_TIMEOUT", "2s"),
    ];
    let mut settings = vec![
        ("registry", "STRATUS_CERT_LIFETIME", "30s".to_string()),
        ("registry", "STRATUS_CA_PROPAGATE", "20s".to_string()),
        (
            "catalog",
            "STRATUS_ALLOWED_CALLERS",
            "gateway,orders".to_string(),
        ),
    ];
    for service in ["auth", "catalog", "gateway"] {
        for (key, value) in patient {
            settings.push((service, key, value.to_string()));
        }
    }
    let mut system = System::start_with_own_authority(2, &settings).await;
    system
        .add_services(
            &[("orders", 1), ("payments", 1), ("notifications", 1)],
            &patient,
        )
        .await;
    let admin = system.admin_token().await;
    let created = system
        .http
        .post(system.url("/api/catalog/products"))
        .bearer_auth(&admin)
        .json(&json!({"name": "Tea", "price_cents": 250, "stock": 100000}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let tea = created.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let customer = system.customer_token("rotation@example.com").await;
    let system = std::sync::Arc::new(system);
    let registry = system.registry_url();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for worker in 0..4 {
        let (system, stop) = (system.clone(), stop.clone());
        let (customer, tea) = (customer.clone(), tea.clone());
        load.push(tokio::spawn(async move {
            let (mut ok, mut failed, mut orders) = (0u32, Vec::new(), Vec::new());
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let response = match worker {
                    0 => {
                        system
                            .http
                            .post(system.url("/auth/login"))
                            .json(&json!({"email": support::ADMIN_EMAIL, "password": support::ADMIN_PASSWORD}))
                            .send()
                            .await
                    }
                    1 => {
                        // An order every 100 ms.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        system
                            .http
                            .post(system.url("/api/orders"))
                            .bearer_auth(&customer)
                            .header("Idempotency-Key", format!("rotation-{n}"))
                            .json(&json!({"items": [{"product_id": tea, "quantity": 1}]}))
                            .send()
                            .await
                    }
                    _ => system.http.get(system.url("/api/catalog/products")).send().await,
                };
                match response {
                    Ok(response) if response.status().is_success() => {
                        ok += 1;
                        if worker == 1 {
                            let order: serde_json::Value = response.json().await.unwrap();
                            orders.push(order["id"].as_str().unwrap().to_string());
                        }
                    }
                    Ok(response) => failed.push(format!(
                        "worker {worker}: {} {}",
                        response.status(),
                        response.text().await.unwrap_or_default()
                    )),
                    Err(error) => failed.push(format!("worker {worker}: {error}")),
                }
            }
            (ok, failed, orders)
        }));
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let operator = &system.mesh.as_ref().unwrap().operator;
    let rotated = operator
        .post(format!("{registry}/v1/identity/rotate"))
        .send()
        .await
        .unwrap();
    assert_eq!(rotated.status(), 200);
    assert_eq!(
        rotated
            .text()
            .await
            .unwrap()
            .matches("BEGIN CERTIFICATE")
            .count(),
        2
    );
    // The new root signs after 20 s; every certificate of 30 s renews twice more by 70 s.
    tokio::time::sleep(Duration::from_secs(65)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed, mut placed) = (0, Vec::new(), Vec::new());
    for worker in load {
        let (worker_ok, worker_failed, worker_orders) = worker.await.unwrap();
        ok += worker_ok;
        failed.extend(worker_failed);
        placed.extend(worker_orders);
    }
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        ok as usize + failed.len(),
        {
            let mut kinds: Vec<&String> = failed.iter().collect();
            kinds.dedup();
            kinds.into_iter().take(6).collect::<Vec<_>>()
        }
    );
    assert!(ok > 1000, "only {ok} requests");
    assert!(placed.len() > 100, "only {} orders placed", placed.len());

    // Not one order lost: each one placed is there and settles (paid; the stock suffices).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    for id in &placed {
        loop {
            let order = system
                .http
                .get(system.url(&format!("/api/orders/{id}")))
                .bearer_auth(&customer)
                .send()
                .await
                .unwrap();
            assert_eq!(order.status(), 200, "order {id}");
            let order: serde_json::Value = order.json().await.unwrap();
            if order["status"] == "paid" {
                break;
            }
            assert_ne!(order["status"], "declined", "order {id} declined");
            assert!(
                std::time::Instant::now() < deadline,
                "order {id} still {}",
                order["status"]
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // Every instance now holds a certificate the new root signed: the catalog's handshake
    // checks out against a bundle of the new root alone.
    let bundle = system.mesh.as_ref().unwrap().bundle();
    let newest = bundle
        .split_inclusive("-----END CERTIFICATE-----\n")
        .next()
        .unwrap()
        .to_string();
    let credentials = stratus_identity::Credentials::new(TRUST_DOMAIN, &newest).unwrap();
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(
            credentials.client_config(stratus_identity::Expect::Service("catalog".into())),
        )
        .build()
        .unwrap();
    for service in ["catalog", "orders", "auth"] {
        let url = system.instance_url(service).await;
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(
                credentials.client_config(stratus_identity::Expect::Service(service.into())),
            )
            .build()
            .unwrap();
        let response = client.get(format!("{url}/healthz")).send().await.unwrap();
        assert_eq!(
            response.status(),
            200,
            "{service}'s certificate is not from the new root"
        );
    }
    drop(client);
}

/// `stratus serve` runs with mutual TLS required unless told otherwise, so an instance started
/// by hand without its join credential stops at once and says what is missing, instead of
/// waiting for a certificate it cannot get.
#[tokio::test]
async fn a_component_without_a_join_credential_stops_at_once_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(support::binary())
        .args(["serve", "catalog"])
        .env_remove("STRATUS_MTLS")
        .env_remove("STRATUS_JOIN_TOKEN")
        .env("STRATUS_DATA_DIR", dir.path())
        // Nothing listens there: the error must come before any attempt to reach it.
        .env(
            "STRATUS_REGISTRY_URL",
            format!("http://127.0.0.1:{}", support::free_port()),
        )
        .env("STRATUS_LOG_FORMAT", "json")
        .env("PORT", "0")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("catalog without a join credential was still running after 10 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.success());
    let output = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    for needed in [
        "STRATUS_JOIN_TOKEN",
        "required",
        "stratus up",
        "join-credential catalog",
    ] {
        assert!(said.contains(needed), "{needed:?} not in: {said}");
    }
}

/// `STRATUS_MTLS=off`, asked for explicitly, still runs a whole system in plaintext (for
/// development and benchmarks), and each process says so when it starts.
#[tokio::test]
async fn a_system_asked_to_run_plaintext_works_and_says_so() {
    let system = System::start_plaintext(1).await;
    assert!(system.registry_url().starts_with("http://"));
    let token = system.admin_token().await;
    assert!(!token.is_empty());
    system.products().await;
    // Inside, plaintext answers and nobody needs a certificate.
    let services = reqwest::get(format!("{}/v1/services", system.registry_url()))
        .await
        .unwrap();
    assert_eq!(services.status(), 200);
    let log = std::fs::read_to_string(system.log_path("catalog", 0)).unwrap();
    assert!(log.contains("STRATUS_MTLS=off"), "{log}");
}

/// An instance renews its certificate with the one it holds, on a connection that presents it:
/// the connection its first certificate was asked on had none, and a renewal sent there would
/// reach the registry as nobody. With 16 s certificates, the catalog renews within seconds and
/// never fails to.
#[tokio::test]
async fn instances_renew_with_the_certificate_they_hold() {
    let system = System::start_with(
        1,
        &[("registry", "STRATUS_CERT_LIFETIME", "16s".to_string())],
    )
    .await;
    let metrics = format!("{}/metrics", system.instance_url("catalog").await);
    let read = || async {
        let text = system
            .http
            .get(&metrics)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let expiry = text
            .lines()
            .find_map(|l| l.strip_prefix("identity_certificate_expiry_timestamp_seconds "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .expect("the certificate's expiry on /metrics");
        (expiry, text.contains("identity_renewal_failures_total"))
    };
    let (first, _) = read().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut renewals = 0;
    let mut last = first;
    while renewals < 2 {
        let (expiry, failed) = read().await;
        assert!(
            !failed,
            "a renewal failed; logs in {}",
            system.dir.path().display()
        );
        if expiry > last {
            renewals += 1;
            last = expiry;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the catalog renewed {renewals} times in 20 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let log = std::fs::read_to_string(system.log_path("catalog", 0)).unwrap();
    assert!(!log.contains("renewing the certificate"), "{log}");
}
