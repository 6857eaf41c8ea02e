//! The gateway as a load balancer: balancing algorithms against real (slow and fast) backends,
//! and route reloads while it runs.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{backend, System};

fn write(path: &std::path::Path, text: &str) {
    // Write then rename, as editors and config tools do, so the gateway never reads half a file.
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, text).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

async fn body(system: &System, path: &str) -> (u16, String) {
    let response = system.http.get(system.url(path)).send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_reload_while_serving_and_a_bad_file_keeps_the_old_table() {
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.toml");
    write(
        &routes,
        "[[routes]]\nprefix = \"/a\"\nservice = \"alpha\"\nauth = \"none\"\n",
    );
    let system = System::start_edge(Some(&routes)).await;
    system
        .register(
            "alpha",
            "alpha-1",
            backend::start("alpha", "alpha", Duration::ZERO).await,
            json!({}),
        )
        .await;
    system
        .register(
            "beta",
            "beta-1",
            backend::start("beta", "beta", Duration::ZERO).await,
            json!({}),
        )
        .await;
    // Only routed services are followed: alpha, not beta (until a route names it).
    system.wait_gateway_sees("alpha", 1).await;
    assert_eq!(body(&system, "/a").await, (200, "alpha".into()));
    assert_eq!(body(&system, "/b").await.0, 404);

    write(&routes, "[[routes]]\nprefix = \"/a\"\nservice = \"alpha\"\nauth = \"none\"\n\n[[routes]]\nprefix = \"/b\"\nservice = \"beta\"\nauth = \"none\"\n");
    let changed = Instant::now();
    while body(&system, "/b").await != (200, "beta".into()) {
        assert!(
            changed.elapsed() < Duration::from_secs(3),
            "the new route never took effect"
        );
        // Requests during the swap keep succeeding on the old routes.
        assert_eq!(body(&system, "/a").await, (200, "alpha".into()));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    write(
        &routes,
        "[[routes]]\nprefix = \"no-slash\"\nservice = \"alpha\"\n",
    );
    let admin = system.admin_url("/v1/routes");
    let refused = Instant::now();
    loop {
        let report: Value = system
            .internal()
            .get(&admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(error) = report["reload"]["last_error"].as_str() {
            assert!(error.contains("must start with '/'"), "{error}");
            assert_eq!(
                report["routes"].as_array().unwrap().len(),
                2,
                "the old table stays"
            );
            break;
        }
        assert!(
            refused.elapsed() < Duration::from_secs(3),
            "the bad file was never noticed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(body(&system, "/a").await, (200, "alpha".into()));
    assert_eq!(body(&system, "/b").await, (200, "beta".into()));
}

/// p99 of `count` sequential requests to `path`, in milliseconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_response_time_routes_around_a_slow_instance_and_round_robin_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.toml");
    write(
        &routes,
        "[[routes]]\nprefix = \"/rr\"\nservice = \"mixed\"\nauth = \"none\"\n\n\
         [[routes]]\nprefix = \"/lrt\"\nservice = \"mixed\"\nauth = \"none\"\nbalance = \"least_response_time\"\n",
    );
    let system = System::start_edge(Some(&routes)).await;
    system
        .register(
            "mixed",
            "fast-1",
            backend::start("mixed", "fast-1", Duration::ZERO).await,
            json!({}),
        )
        .await;
    system
        .register(
            "mixed",
            "fast-2",
            backend::start("mixed", "fast-2", Duration::ZERO).await,
            json!({}),
        )
        .await;
    system
        .register(
            "mixed",
            "slow",
            backend::start("mixed", "slow", Duration::from_millis(80)).await,
            json!({}),
        )
        .await;
    system.wait_gateway_sees("mixed", 3).await;

    // Counted by who answered, not by latency, so a busy machine cannot blur it: round robin
    // sends every third request to the slow instance; least response time (P2C over peak EWMA)
    // only probes it now and then, when its decayed estimate lets it win a pair.
    let round_robin = answered_by(&system, "/rr", "slow", 150).await;
    let least_time = answered_by(&system, "/lrt", "slow", 150).await;
    println!("the slow instance answered {round_robin} of 150 (round robin), {least_time} of 150 (least response time)");
    assert!(
        (40..=60).contains(&round_robin),
        "round robin sends every third request to the slow instance: it answered {round_robin} of 150"
    );
    assert!(
        least_time <= 15,
        "least response time should avoid the slow instance: it answered {least_time} of 150"
    );
}

/// How many of `count` sequential requests to `path` the instance named `name` answered.
async fn answered_by(system: &System, path: &str, name: &str, count: usize) -> usize {
    let mut answered = 0;
    for _ in 0..count {
        let (status, body) = body(system, path).await;
        assert_eq!(status, 200);
        answered += usize::from(body == name);
    }
    answered
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_instance_is_retried_around_then_ejected_then_probed() {
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.toml");
    write(
        &routes,
        "[[routes]]\nprefix = \"/\"\nservice = \"shaky\"\nauth = \"none\"\n",
    );
    let system = System::start_edge(Some(&routes)).await;
    system
        .register(
            "shaky",
            "good",
            backend::start("shaky", "good", Duration::ZERO).await,
            json!({}),
        )
        .await;
    system
        .register(
            "shaky",
            "bad",
            backend::start_with_status("shaky", "bad", 503).await,
            json!({}),
        )
        .await;
    system.wait_gateway_sees("shaky", 2).await;

    // Idempotent requests that land on the failing instance are retried on the good one, so the
    // client never sees the 503s; after five in a row the failing instance is ejected.
    for i in 0..40 {
        assert_eq!(
            body(&system, "/x").await,
            (200, "good".into()),
            "request {i}"
        );
    }
    let upstreams = system.admin_url("/v1/upstreams");
    let state = |report: &Value| -> String {
        report["services"]["shaky"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["id"] == "bad")
            .unwrap()["breaker"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let report: Value = system
        .internal()
        .get(&upstreams)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(state(&report), "open", "{report}");

    // A POST is not retried after reaching an instance: while the bad instance is out of
    // rotation, every POST goes to the good one.
    for _ in 0..10 {
        let response = system
            .http
            .post(system.url("/x"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    // After the ejection time the breaker lets a trial through; it fails and opens again.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for _ in 0..10 {
        assert_eq!(body(&system, "/x").await, (200, "good".into()));
    }
    let report: Value = system
        .internal()
        .get(&upstreams)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(state(&report), "open", "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_answer_429_and_strip_prefix_rewrites_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.toml");
    write(
        &routes,
        "[[routes]]\nprefix = \"/limited\"\nservice = \"echo\"\nauth = \"none\"\n\
         rate_limit = { requests_per_second = 2, burst = 5, per = \"client\" }\n\n\
         [[routes]]\nprefix = \"/svc\"\nservice = \"echo\"\nauth = \"none\"\nstrip_prefix = true\n\n\
         [[routes]]\nprefix = \"/read-only\"\nservice = \"echo\"\nauth = \"none\"\nmethods = [\"GET\", \"HEAD\"]\n\n\
         [[routes]]\nprefix = \"/\"\nhost = \"admin.example\"\nservice = \"echo\"\nauth = \"none\"\n",
    );
    let system = System::start_edge(Some(&routes)).await;
    system
        .register(
            "echo",
            "echo-1",
            backend::start_echo("echo").await,
            json!({}),
        )
        .await;
    system.wait_gateway_sees("echo", 1).await;

    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..8 {
        let response = system
            .http
            .get(system.url("/limited/x"))
            .send()
            .await
            .unwrap();
        if response.status() == 429 {
            assert_eq!(
                response.headers()["content-type"],
                "application/problem+json"
            );
            retry_after = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
        }
        statuses.push(response.status().as_u16());
    }
    assert_eq!(
        &statuses[..5],
        &[200; 5],
        "the burst is allowed: {statuses:?}"
    );
    assert!(
        statuses[5..].contains(&429),
        "then the limit bites: {statuses:?}"
    );
    assert_eq!(retry_after.as_deref(), Some("1"));

    assert_eq!(
        body(&system, "/svc/items/7?full=1").await,
        (200, "/items/7?full=1".into())
    );
    // Host-based routing: only requests for admin.example reach the catch-all route.
    assert_eq!(body(&system, "/other").await.0, 404);
    let by_host = system
        .http
        .get(system.url("/other"))
        .header("host", "admin.example:8080")
        .send()
        .await
        .unwrap();
    assert_eq!(by_host.status(), 200);
    assert_eq!(by_host.text().await.unwrap(), "/other");

    // A path routed only for other methods: 405 naming them, not 404.
    let refused = system
        .http
        .delete(system.url("/read-only/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 405);
    assert_eq!(refused.headers()["allow"], "GET, HEAD");
    assert_eq!(
        body(&system, "/read-only/x").await,
        (200, "/read-only/x".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_the_gateway() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.toml");
    write(
        &routes,
        "[[routes]]\nprefix = \"/ws\"\nservice = \"chat\"\nauth = \"none\"\n",
    );
    let system = System::start_edge(Some(&routes)).await;
    system
        .register(
            "chat",
            "chat-1",
            backend::start_websocket_echo("chat").await,
            json!({}),
        )
        .await;
    system.wait_gateway_sees("chat", 1).await;

    let port = system.gateway_port;
    let echoed = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        stream
            .write_all(
                b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                  Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            )
            .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        // RFC 6455's own example key and accept value.
        assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
        assert!(head.to_ascii_lowercase().contains("x-served-by: chat/chat-1"), "{head}");
        let mut replies = Vec::new();
        for message in ["hello", "through the gateway"] {
            let mask = [1u8, 2, 3, 4];
            let mut frame = vec![0x81, 0x80 | message.len() as u8];
            frame.extend_from_slice(&mask);
            frame.extend(message.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
            stream.write_all(&frame).unwrap();
            let mut header = [0u8; 2];
            stream.read_exact(&mut header).unwrap();
            let mut payload = vec![0u8; (header[1] & 0x7f) as usize];
            stream.read_exact(&mut payload).unwrap();
            replies.push(String::from_utf8(payload).unwrap());
        }
        replies
    })
    .await
    .unwrap();
    assert_eq!(echoed, ["hello", "through the gateway"]);
}

/// Only WebSocket is tunnelled. An `Upgrade: h2c` request is served as a plain request with
/// the Upgrade dropped (after a 101 to h2c every later request on the connection would bypass
/// routing, tokens and rate limits), and a 101 the client did not ask for is a 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_websocket_upgrades_are_tunnelled() {
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.toml");
    write(
        &routes,
        "[[routes]]\nprefix = \"/echo\"\nservice = \"echo\"\nauth = \"none\"\nstrip_prefix = true\n\
         [[routes]]\nprefix = \"/rogue\"\nservice = \"rogue\"\nauth = \"none\"\n",
    );
    let system = System::start_edge(Some(&routes)).await;
    system
        .register(
            "echo",
            "echo-1",
            backend::start_header_echo("echo", "upgrade").await,
            json!({}),
        )
        .await;
    // An instance that switches protocols whatever it is asked.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let rogue = listener.local_addr().unwrap().port();
    let tls = Some(support::mesh::tls_for("rogue"));
    backend::accept_loop(listener, tls, |mut stream| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut request = Vec::new();
        let mut chunk = [0u8; 1024];
        while !request.ends_with(b"\r\n\r\n") {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => request.extend_from_slice(&chunk[..n]),
            }
        }
        let _ = stream
            .write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
            )
            .await;
        let _ = stream.read(&mut chunk).await;
    });
    system.register("rogue", "rogue-1", rogue, json!({})).await;
    system.wait_gateway_sees("echo", 1).await;
    system.wait_gateway_sees("rogue", 1).await;

    let port = system.gateway_port;
    let (smuggled, rogue_head) = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let exchange = |request: &[u8]| {
            let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            stream.write_all(request).unwrap();
            let mut answer = Vec::new();
            let mut chunk = [0u8; 4096];
            // Read until the head and a short body are in (the gateway keeps the connection).
            loop {
                let n = stream.read(&mut chunk).unwrap();
                answer.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&answer).to_string();
                if let Some(at) = text.find("\r\n\r\n") {
                    let length = text[..at]
                        .lines()
                        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(|n| n.trim().parse::<usize>().unwrap()))
                        .unwrap_or(0);
                    if answer.len() >= at + 4 + length {
                        return text;
                    }
                }
                if n == 0 {
                    return text;
                }
            }
        };
        (
            exchange(b"GET /echo/x HTTP/1.1\r\nHost: localhost\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n"),
            exchange(b"GET /rogue HTTP/1.1\r\nHost: localhost\r\n\r\n"),
        )
    })
    .await
    .unwrap();
    // Served as a plain request: 200, and the instance saw no Upgrade header (empty echo).
    assert!(smuggled.starts_with("HTTP/1.1 200"), "{smuggled}");
    assert!(
        smuggled.ends_with("\r\n\r\n"),
        "the instance saw an Upgrade: {smuggled}"
    );
    assert!(rogue_head.starts_with("HTTP/1.1 502"), "{rogue_head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layer_4_mode_balances_connections_not_requests() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.toml");
    let l4_port = support::free_port();
    write(
        &routes,
        &format!("[[routes]]\nprefix = \"/\"\nservice = \"web\"\nauth = \"none\"\n\n[[tcp]]\nlisten = \"127.0.0.1:{l4_port}\"\nservice = \"web\"\n"),
    );
    let system = System::start_edge(Some(&routes)).await;
    system
        .register(
            "web",
            "web-1",
            backend::start("web", "web-1", Duration::ZERO).await,
            json!({}),
        )
        .await;
    system
        .register(
            "web",
            "web-2",
            backend::start("web", "web-2", Duration::ZERO).await,
            json!({}),
        )
        .await;
    system.wait_gateway_sees("web", 2).await;

    // The gateway copies bytes and vouches for nobody: TLS goes end to end, from this client
    // (an operator) to the instance, whose certificate it checks as `web`'s.
    let exchange = |request: &'static [u8]| async move {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", l4_port))
            .await
            .unwrap();
        let mut stream = support::mesh::tls_connect("web", tcp).await;
        stream.write_all(request).await.unwrap();
        let mut response = Vec::new();
        // The instance closes after `Connection: close` (a TCP close without TLS's
        // close_notify reads as an error once everything has been read).
        let _ = stream.read_to_end(&mut response).await;
        String::from_utf8_lossy(&response).to_string()
    };
    // Two requests on one kept-alive connection: both reach the same instance, and nothing in
    // the response comes from the gateway (it never parsed the HTTP).
    let response = exchange(
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let served: Vec<&str> = ["web-1", "web-2"]
        .into_iter()
        .filter(|name| response.contains(name))
        .collect();
    assert_eq!(served.len(), 1, "one connection, one instance: {response}");
    assert_eq!(response.matches(served[0]).count(), 2, "{response}");
    assert!(
        !response.to_ascii_lowercase().contains("x-served-by"),
        "L4 adds no headers"
    );

    // New connections are balanced across the instances.
    let mut seen = std::collections::HashSet::new();
    for _ in 0..4 {
        let response = exchange(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        seen.insert(if response.contains("web-1") {
            "web-1"
        } else {
            "web-2"
        });
    }
    assert_eq!(seen.len(), 2);
    // The same instances through the L7 door carry x-served-by.
    let l7 = system.http.get(system.url("/")).send().await.unwrap();
    assert!(l7.headers().contains_key("x-served-by"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_health_checks_take_a_broken_instance_out_before_any_request_hits_it() {
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.toml");
    write(
        &routes,
        "[[routes]]\nprefix = \"/\"\nservice = \"probed\"\nauth = \"none\"\nretries = 0\n",
    );
    let system = System::start_edge_with(
        Some(&routes),
        &[("STRATUS_UPSTREAM_HEALTH_INTERVAL", "200ms")],
    )
    .await;
    system
        .register(
            "probed",
            "well",
            backend::start("probed", "well", Duration::ZERO).await,
            json!({}),
        )
        .await;
    system
        .register(
            "probed",
            "sick",
            backend::start_with_status("probed", "sick", 503).await,
            json!({}),
        )
        .await;
    system.wait_gateway_sees("probed", 2).await;

    let upstreams = system.admin_url("/v1/upstreams");
    let started = Instant::now();
    loop {
        let report: Value = system
            .internal()
            .get(&upstreams)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let sick = report["services"]["probed"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["id"] == "sick")
            .cloned()
            .unwrap();
        if sick["health_check"] == "failing" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the failing check never took effect: {sick}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Without retries, every request now still succeeds: none is sent to the sick instance.
    for _ in 0..20 {
        assert_eq!(body(&system, "/").await, (200, "well".into()));
    }
}

/// A backend of `service` that counts the `GET /healthz` it is sent; returns its port and count.
async fn counting_health(service: &str) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use axum::routing::any;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let probes = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = probes.clone();
    let app = axum::Router::new()
        .route(
            "/healthz",
            any(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                async { "ok" }
            }),
        )
        .fallback(any(|| async { "counted" }));
    (backend::serve_app(Some(service), app).await, probes)
}

/// The gateway follows and health-checks only the services its route table names: an instance
/// of a service no route names is not in its view and gets no probe, however long it is in the
/// catalog, until a reloaded table names its service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_health_checks_probe_only_routed_services_and_follow_reloads() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.toml");
    write(
        &routes,
        "[[routes]]\nprefix = \"/a\"\nservice = \"alpha\"\nauth = \"none\"\n",
    );
    let system = System::start_edge_with(
        Some(&routes),
        &[("STRATUS_UPSTREAM_HEALTH_INTERVAL", "100ms")],
    )
    .await;
    let (alpha_port, alpha) = counting_health("alpha").await;
    let (ghost_port, ghost) = counting_health("ghost").await;
    system
        .register("alpha", "alpha-1", alpha_port, json!({}))
        .await;
    system
        .register("ghost", "ghost-1", ghost_port, json!({}))
        .await;
    system.wait_gateway_sees("alpha", 1).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let upstreams = system.get_json(system.admin_url("/v1/upstreams")).await;
    assert!(
        upstreams["services"].get("ghost").is_none(),
        "the gateway follows a service no route names: {upstreams}"
    );
    let probed = alpha.load(Ordering::SeqCst);
    assert!(
        probed >= 3,
        "the routed instance got {probed} probes in 1.5 s"
    );
    assert_eq!(
        ghost.load(Ordering::SeqCst),
        0,
        "an instance of a service no route names was probed"
    );

    write(&routes, "[[routes]]\nprefix = \"/a\"\nservice = \"alpha\"\nauth = \"none\"\n\n[[routes]]\nprefix = \"/g\"\nservice = \"ghost\"\nauth = \"none\"\n");
    let reloaded = Instant::now();
    system.wait_gateway_sees("ghost", 1).await;
    eprintln!(
        "a reloaded route's service in the gateway's view after {:?}",
        reloaded.elapsed()
    );
    while ghost.load(Ordering::SeqCst) < 2 {
        assert!(
            reloaded.elapsed() < Duration::from_secs(5),
            "a reload that routes ghost never started its checks"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(body(&system, "/g").await, (200, "counted".into()));
}

/// An instance that closes idle keep-alive connections (its idle timeout is shorter than the
/// gateway's) must never cost a client an error: a pooled connection found closed is replaced,
/// and a request that was never written goes out on a new one. POST is not idempotent, so no
/// retry policy can be what hides a failure here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_closed_by_the_instance_cost_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.toml");
    write(
        &routes,
        "[[routes]]\nprefix = \"/\"\nservice = \"closer\"\nauth = \"none\"\nretries = 0\n",
    );
    let system = System::start_edge(Some(&routes)).await;
    let port = backend::start_closing_after("closer", Duration::from_millis(20)).await;
    system.register("closer", "closer-1", port, json!({})).await;
    system.wait_gateway_sees("closer", 1).await;

    let mut failures = Vec::new();
    for round in 0..40 {
        let response = system
            .http
            .post(system.url("/order"))
            .body(format!("round {round}"))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        if status != 200 || text != "closer" {
            failures.push((round, status, text));
        }
        // Half the time the instance has closed the pooled connection by the next request.
        if round % 2 == 0 {
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    }
    assert!(failures.is_empty(), "failed requests: {failures:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_instance_costs_an_idempotent_request_one_per_try_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.toml");
    write(
        &routes,
        "[[routes]]\nprefix = \"/pair\"\nservice = \"pair\"\nauth = \"none\"\ntimeout = \"300ms\"\nretries = 1\n\n\
         [[routes]]\nprefix = \"/alone\"\nservice = \"alone\"\nauth = \"none\"\ntimeout = \"300ms\"\nretries = 1\n",
    );
    let system = System::start_edge(Some(&routes)).await;
    // "stuck" accepts connections and never answers in time, as a stopped or deadlocked
    // process would.
    // (One for each service: an instance's certificate names the service it serves.)
    let stuck = backend::start("pair", "stuck", Duration::from_secs(60)).await;
    let stuck_alone = backend::start("alone", "stuck", Duration::from_secs(60)).await;
    let good = backend::start("pair", "good", Duration::ZERO).await;
    system.register("pair", "good", good, json!({})).await;
    system.register("pair", "stuck", stuck, json!({})).await;
    system
        .register("alone", "stuck", stuck_alone, json!({}))
        .await;
    system.wait_gateway_sees("pair", 2).await;
    system.wait_gateway_sees("alone", 1).await;

    // A POST may have reached the instance: never retried, its timeout is the client's 504.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let response = system
            .http
            .post(system.url("/pair/x"))
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    assert!(statuses.contains(&504), "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 504),
        "{statuses:?}"
    );

    // A GET that times out on the stuck instance is tried again on the good one.
    for i in 0..12 {
        assert_eq!(
            body(&system, "/pair/x").await,
            (200, "good".into()),
            "GET {i}"
        );
    }

    // With nowhere else to go, the timeout is what the client hears (not "no instance").
    let (status, _) = body(&system, "/alone/x").await;
    assert_eq!(status, 504);
}

/// Waits up to `within` for `process` to exit; its status, or None if it is still running.
async fn exit_status(
    process: &mut support::Process,
    within: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(status) = process.child.try_wait().unwrap() {
            return Some(status);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// Starts another gateway with `env` and expects it to refuse to start, naming `port`.
async fn refuses_to_start(system: &mut System, env: &[(&str, &str)], port: u16) {
    let index = system
        .processes
        .iter()
        .filter(|p| p.name == "gateway")
        .count();
    let log = system.log_path("gateway", index);
    let process = system.spawn("gateway", env);
    let status = exit_status(process, Duration::from_secs(15)).await;
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    let status =
        status.unwrap_or_else(|| panic!("a gateway started on held port {port}: {output}"));
    assert!(!status.success(), "{output}");
    assert!(
        output.contains(&format!("port {port}")) || output.contains(&format!(":{port}")),
        "the error names the port {port}: {output}"
    );
}

/// A port held by another process is a start-up error that names it, so a gateway left over
/// from an earlier run and a new one never split the traffic. Only a gateway's own workers
/// share its port (`SO_REUSEPORT`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_held_by_another_process_is_a_start_up_error() {
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.toml");
    write(
        &routes,
        "[[routes]]\nprefix = \"/\"\nservice = \"first\"\nauth = \"none\"\n",
    );
    let mut system =
        System::start_edge_with(Some(&routes), &[("STRATUS_GATEWAY_WORKERS", "2")]).await;
    let backend = backend::start("first", "first", Duration::ZERO).await;
    system
        .register("first", "first-1", backend, json!({}))
        .await;
    system.wait_gateway_sees("first", 1).await;

    // A second gateway on the first one's port, with settings of its own (not its route file).
    let (port, admin) = (system.gateway_port, support::free_port());
    let (port_text, admin_text) = (port.to_string(), admin.to_string());
    refuses_to_start(
        &mut system,
        &[
            ("PORT", port_text.as_str()),
            ("STRATUS_ADMIN_PORT", admin_text.as_str()),
            ("STRATUS_GATEWAY_WORKERS", "2"),
        ],
        port,
    )
    .await;
    // The first gateway still answers every connection (the second would have said 404).
    for _ in 0..40 {
        let fresh = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let response = fresh.get(system.url("/any")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), "first");
    }

    // The first one's admin port: refused as well, before any traffic is served.
    let (free, admin) = (support::free_port(), system.admin_port);
    let (free_text, admin_text) = (free.to_string(), admin.to_string());
    refuses_to_start(
        &mut system,
        &[
            ("PORT", free_text.as_str()),
            ("STRATUS_ADMIN_PORT", admin_text.as_str()),
        ],
        admin,
    )
    .await;

    // Any other process's listener, even one that allows sharing the port with SO_REUSEPORT.
    for reuse_port in [false, true] {
        let port = support::free_port();
        let address: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .unwrap();
        socket.set_reuse_address(true).unwrap();
        socket.set_reuse_port(reuse_port).unwrap();
        socket.bind(&address.into()).unwrap();
        socket.listen(16).unwrap();
        let (port_text, admin_text) = (port.to_string(), support::free_port().to_string());
        refuses_to_start(
            &mut system,
            &[
                ("PORT", port_text.as_str()),
                ("STRATUS_ADMIN_PORT", admin_text.as_str()),
            ],
            port,
        )
        .await;
    }
}
