//! A service in another language: examples/python/hello.py (Python's standard library only)
//! joins a running system whose every internal hop is mutual TLS. With its join credential it
//! gets a certificate from the registry's authority, serves HTTPS with it and renews it at
//! half-life; two instances register themselves over mTLS, the gateway balances over them over
//! mTLS (the Python side sees the gateway's SPIFFE ID), plaintext gets no answer and a caller
//! without a certificate or without an intention is refused; tokens are checked at the gateway
//! and again in Python (through auth's introspection), the trace reads client -> gateway ->
//! hello -> auth on the event sink, and SIGTERM takes an instance out of discovery before it
//! stops.

mod support;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use stratus_identity::{Credentials, Expect, SpiffeId};
use stratus_testing::{Need, Test};
use support::mesh::TRUST_DOMAIN;
use support::System;

/// How long the authority's certificates live here: short, so the Python instances renew
/// theirs (at half-life) while the test runs.
const CERT_LIFETIME: &str = "16s";

/// Starts one instance of the Python service as `stratus up` would: $PORT, the registry, the
/// sink, an instance id, the mesh (its own join credential, the trust bundle), and the
/// service account it introspects tokens with.
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
    let mesh = system.mesh.as_ref().expect("a meshed system");
    let bundle = system.dir.path().join("identity").join("bundle.pem");
    let child = Command::new(python)
        .arg(script)
        .envs(mesh.env("hello"))
        .env("STRATUS_TRUST_BUNDLE", &bundle)
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

/// A client holding a certificate for `id` from the system's authority, which accepts only a
/// server whose certificate names `expect`.
fn client_as(system: &System, id: &SpiffeId, expect: &str) -> reqwest::Client {
    let mesh = system.mesh.as_ref().expect("a meshed system");
    let issued = mesh.issue(id, Duration::from_secs(600), 0);
    let credentials = Credentials::new(TRUST_DOMAIN, &mesh.bundle()).unwrap();
    credentials
        .set_certificate(
            &issued.certificate,
            issued.private_key.as_deref().unwrap(),
            None,
        )
        .unwrap();
    reqwest::Client::builder()
        .tls_backend_preconfigured(credentials.client_config(Expect::Service(expect.to_string())))
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// The certificate (DER) the server at `address` presents, checked against the system's roots
/// and for the `hello` identity on the way.
async fn served_certificate(system: &System, address: &str) -> Vec<u8> {
    let mesh = system.mesh.as_ref().unwrap();
    let credentials = Credentials::new(TRUST_DOMAIN, &mesh.bundle()).unwrap();
    let config = credentials.client_config(Expect::Service("hello".into()));
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = connector
        .connect(name, tcp)
        .await
        .expect("a TLS handshake with a hello certificate");
    let (_, connection) = tls.get_ref();
    connection.peer_certificates().unwrap()[0].as_ref().to_vec()
}

async fn the_python_service_joins_the_mesh_and_is_balanced_protected_and_traced() {
    let python = "python3";
    let events_port = support::free_port();
    let sink = format!("https://127.0.0.1:{events_port}");
    let report_to = format!("http://127.0.0.1:{events_port}");
    let extra = [
        (
            "registry",
            "STRATUS_CERT_LIFETIME",
            CERT_LIFETIME.to_string(),
        ),
        ("auth", "STRATUS_EVENTS_URL", report_to.clone()),
        ("catalog", "STRATUS_EVENTS_URL", report_to.clone()),
        ("gateway", "STRATUS_EVENTS_URL", report_to.clone()),
    ];
    let mut system = System::start_meshed_with(1, &extra).await;
    let port = events_port.to_string();
    system.spawn("events", &[("PORT", port.as_str())]);
    system.wait_http_ok(&format!("{sink}/readyz")).await;
    system.wait_registered("events", 1).await;
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

    // Discovered: both register (over mTLS, as `hello`: the registry lets only that identity
    // register a hello instance) with their version and a health check; the gateway sees both.
    system.wait_registered("hello", 2).await;
    system.wait_gateway_sees("hello", 2).await;
    let instances = system.registered("hello").await;
    assert!(instances
        .iter()
        .all(|i| i["version"] == "0.1.0" && i["metadata"]["language"] == "python"));
    let address = format!(
        "{}:{}",
        instances[0]["address"].as_str().unwrap(),
        instances[0]["port"]
    );
    let first_certificate = served_certificate(&system, &address).await;

    // In the mesh: plaintext gets no answer at all; over TLS without a certificate only the
    // probes answer; a service no intention names is refused; an operator gets as far as the
    // token check.
    let plaintext = system
        .http
        .get(format!("http://{address}/healthz"))
        .send()
        .await;
    assert!(plaintext.is_err(), "plaintext answered: {plaintext:?}");
    let nobody = support::mesh::client_with(None);
    let health = nobody
        .get(format!("https://{address}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200, "probes need no certificate");
    let anonymous = nobody
        .get(format!("https://{address}/api/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    assert_eq!(
        anonymous.headers()["content-type"],
        "application/problem+json"
    );
    let catalog = client_as(
        &system,
        &SpiffeId::service(TRUST_DOMAIN, "catalog").unwrap(),
        "hello",
    );
    let direct = format!("https://{address}/api/hello");
    let refused = catalog.get(&direct).send().await.unwrap();
    assert_eq!(
        refused.status(),
        403,
        "no intention lets catalog call hello"
    );
    let refusal: Value = refused.json().await.unwrap();
    assert!(
        refusal["detail"]
            .as_str()
            .unwrap()
            .contains("spiffe://stratus.local/service/catalog"),
        "{refusal}"
    );
    let operator = client_as(
        &system,
        &SpiffeId::operator(TRUST_DOMAIN, "tests").unwrap(),
        "hello",
    );

    // Protected: the gateway refuses a request without a token, and so does the service.
    let anonymous = system
        .http
        .get(system.url("/api/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let response = operator.get(&direct).send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let forged = operator
        .get(&direct)
        .bearer_auth("not.a.token")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401, "the service checks tokens itself");

    // Balanced: with a token, both instances answer, in turn, each reached by the gateway over
    // mutual TLS (the Python service took its calls only because they came with the gateway's
    // certificate, and it introspected the tokens with auth over mutual TLS).
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

    // Traced: the client's trace has the gateway's hop, the Python hop under it (whose caller
    // is the gateway's identity), and auth's introspection under that. The sink took the
    // Python records because they came over mTLS as `hello`; the test reads them as operator.
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
    let traces = format!("{sink}/v1/traces/{trace_id}");
    let records = loop {
        let response = system.client(&traces).get(&traces).send().await.unwrap();
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
    assert!(
        hello.iter().all(|r| r["kind"] == "server"
            && r["name"] == "/api/hello"
            && r["status"] == 200
            && r["peer"] == "spiffe://stratus.local/service/gateway"
            && gateway.contains(&r["parent_span_id"].as_str().unwrap().to_string())),
        "{hello:#?}"
    );
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
        assert_eq!(record["peer"], "spiffe://stratus.local/service/hello");
    }

    // Renewed: past half the certificate's life the instance serves a new certificate (still
    // `hello`, from the same roots), and the gateway still reaches both instances with it.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if served_certificate(&system, &address).await != first_certificate {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the Python instance never renewed its certificate"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Past the first certificate's end: nothing still works that needed it.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let mut renewed = std::collections::BTreeSet::new();
    for _ in 0..10 {
        let response = system
            .http
            .get(system.url("/api/hello"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        renewed.insert(body["instance"].as_str().unwrap().to_string());
    }
    assert_eq!(renewed.len(), 2, "{renewed:?}");
    assert_eq!(
        system.registered("hello").await.len(),
        2,
        "heartbeats go on"
    );

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

fn main() -> std::process::ExitCode {
    stratus_testing::run(vec![Test::new(
        "the_python_service_joins_the_mesh_and_is_balanced_protected_and_traced",
        the_python_service_joins_the_mesh_and_is_balanced_protected_and_traced,
    )
    .worker_threads(2)
    .needs(&[Need::Python(&[])])])
}
