//! A service in another language: examples/python/hello.py (Python's standard library only)
//! joins a running system. Two instances register themselves, the gateway balances over them,
//! tokens are checked at the gateway and again in Python (through auth's introspection), the
//! trace reads client -> gateway -> hello -> auth on the event sink, and SIGTERM takes an
//! instance out of discovery before it stops.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use stratus_testing::{Need, Test};
use support::System;

/// Starts one instance of the Python service as `stratus up` would: $PORT, the registry, the
/// sink, an instance id, and the service account it introspects tokens with.
fn spawn_hello(
    system: &mut System,
    python: &str,
    events_port: u16,
    client: (&str, &str),
) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/python/hello.py");
    let index = system
        .processes
        .iter()
        .filter(|p| p.name == "hello")
        .count();
    let log = std::fs::File::create(system.log_path("hello", index)).unwrap();
    let instance_id = stratus_kit::new_id();
    let child = Command::new(python)
        .arg(script)
        .env("PORT", "0")
        .env("STRATUS_REGISTRY_URL", system.registry_url())
        .env(
            "STRATUS_EVENTS_URL",
            format!("http://127.0.0.1:{events_port}"),
        )
        .env("STRATUS_INSTANCE_ID", &instance_id)
        .env("STRATUS_VERSION", "0.1.0")
        .env("STRATUS_TTL", "3s")
        .env("STRATUS_CLIENT_ID", client.0)
        .env("STRATUS_CLIENT_SECRET", client.1)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("starting python3");
    system.processes.push(support::Process {
        name: "hello".into(),
        child,
        instance_id: instance_id.clone(),
    });
    instance_id
}

async fn the_python_service_is_discovered_balanced_protected_and_traced() {
    let python = "python3";
    let (mut system, events_port) = System::start_with_events(1, true).await;
    let sink = format!("http://127.0.0.1:{events_port}");
    let admin = system.admin_token().await;

    // The service account the Python service introspects tokens with.
    let created = system
        .http
        .post(system.url("/auth/clients"))
        .bearer_auth(&admin)
        .json(&json!({"name": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let client: Value = created.json().await.unwrap();
    let credentials = (
        client["client_id"].as_str().unwrap().to_string(),
        client["client_secret"].as_str().unwrap().to_string(),
    );
    let ids: Vec<String> = (0..2)
        .map(|_| {
            spawn_hello(
                &mut system,
                python,
                events_port,
                (&credentials.0, &credentials.1),
            )
        })
        .collect();

    // Discovered: both register with their version and a health check; the gateway sees both.
    system.wait_registered("hello", 2).await;
    system.wait_gateway_sees("hello", 2).await;
    let instances = system.registered("hello").await;
    assert!(instances
        .iter()
        .all(|i| i["version"] == "0.1.0" && i["metadata"]["language"] == "python"));

    // Protected: the gateway refuses a request without a token, and so does the service.
    let anonymous = system
        .http
        .get(system.url("/api/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let direct = format!("{}/api/hello", base_url(&instances[0]));
    let response = system.http.get(&direct).send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let forged = system
        .http
        .get(&direct)
        .bearer_auth("not.a.token")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401, "the service checks tokens itself");

    // Balanced: with a token, both instances answer, in turn.
    let token = system.customer_token("py@example.com").await;
    let mut served = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..20 {
        let response = system
            .http
            .get(system.url("/api/hello"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert!(body["message"].as_str().unwrap().starts_with("hello, "));
        *served
            .entry(body["instance"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    assert_eq!(served.len(), 2, "{served:?}");
    assert!(
        ids.iter().all(|id| served.get(id).is_some_and(|n| *n >= 5)),
        "{served:?}"
    );

    // Traced: the client's trace has the gateway's hop, the Python hop under it, and auth's
    // introspection under that.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = system
        .http
        .get(system.url("/api/hello"))
        .bearer_auth(&token)
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["trace_id"], trace_id);
    // A fresh token: the introspection is not cached yet, so auth is called under this trace.
    let fresh = system.login("py@example.com", "customer-password").await;
    let response = system
        .http
        .get(system.url("/api/hello"))
        .bearer_auth(&fresh)
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b8-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    let records = loop {
        let response = system
            .http
            .get(format!("{sink}/v1/traces/{trace_id}"))
            .send()
            .await
            .unwrap();
        if response.status() == 200 {
            let body: Value = response.json().await.unwrap();
            let records = body["records"].as_array().cloned().unwrap_or_default();
            let count = |service: &str| records.iter().filter(|r| r["service"] == service).count();
            // Both requests' gateway and Python hops, and the introspection under the second.
            if count("gateway") >= 2 && count("hello") >= 2 && count("auth") >= 1 {
                break records;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the trace never had gateway, hello and auth"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let span = |r: &Value| r["span_id"].as_str().unwrap().to_string();
    let gateway: Vec<String> = records
        .iter()
        .filter(|r| r["service"] == "gateway")
        .map(span)
        .collect();
    let hello: Vec<&Value> = records.iter().filter(|r| r["service"] == "hello").collect();
    assert!(hello.iter().all(|r| r["kind"] == "server"
        && r["name"] == "/api/hello"
        && r["status"] == 200
        && gateway.contains(&r["parent_span_id"].as_str().unwrap().to_string())));
    let hello_spans: Vec<String> = hello.iter().map(|r| span(r)).collect();
    // (Auth's own database work hangs under its request, as a `client` record.)
    for record in records
        .iter()
        .filter(|r| r["service"] == "auth" && r["kind"] == "server")
    {
        let parent = record["parent_span_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(hello_spans.contains(&parent), "{record} in {records:#?}");
    }

    // SIGTERM: the instance leaves the registry before it stops; the rest keeps serving.
    let stopping = system
        .processes
        .iter_mut()
        .find(|p| p.name == "hello")
        .unwrap();
    stopping.signal(libc::SIGTERM);
    let status = tokio::task::block_in_place(|| stopping.child.wait()).unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(
        system.registered("hello").await.len(),
        1,
        "deregistered on SIGTERM"
    );
    system.wait_gateway_sees("hello", 1).await;
    for _ in 0..5 {
        let response = system
            .http
            .get(system.url("/api/hello"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
}

fn base_url(instance: &Value) -> String {
    format!(
        "http://{}:{}",
        instance["address"].as_str().unwrap(),
        instance["port"]
    )
}

fn main() -> std::process::ExitCode {
    stratus_testing::run(vec![Test::new(
        "the_python_service_is_discovered_balanced_protected_and_traced",
        the_python_service_is_discovered_balanced_protected_and_traced,
    )
    .worker_threads(2)
    .needs(&[Need::Python(&[])])])
}
