//! Hostile clients at the gateway: slowloris, oversized headers, thousands of idle connections.
//! The gateway must stay up and keep serving everyone else.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;
use support::{backend, System};

/// The edge with an echo backend; the temp dir holds its route file and must live as long.
async fn edge() -> (System, tempfile::TempDir) {
    edge_with(&[]).await
}

async fn edge_with(settings: &[(&str, &str)]) -> (System, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.toml");
    std::fs::write(
        &routes,
        "[[routes]]\nprefix = \"/\"\nservice = \"echo\"\nauth = \"none\"\n",
    )
    .unwrap();
    let mut settings = settings.to_vec();
    settings.push(("STRATUS_HEADER_TIMEOUT", "1s"));
    let system = System::start_edge_with(Some(&routes), &settings).await;
    system
        .register(
            "echo",
            "echo-1",
            backend::start_echo("echo").await,
            json!({}),
        )
        .await;
    system.wait_gateway_sees("echo", 1).await;
    (system, dir)
}

async fn ok(system: &System) {
    let response = system
        .http
        .get(system.url("/still-serving"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// The gateway's `gateway_connections_parked` gauge (0 before anything parked).
async fn parked_connections(system: &System) -> f64 {
    let metrics = system
        .internal()
        .get(system.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("gateway_connections_parked "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0)
}

/// A raw client connection to the gateway that gives up reading after 5 s.
fn client(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_cut_off_and_others_are_served() {
    let (system, _dir) = edge().await;
    let port = system.gateway_port;
    let slow = std::thread::spawn(move || {
        let mut stream = client(port);
        let started = Instant::now();
        let _ = stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n");
        // A header byte every 200 ms, never finishing the request.
        while started.elapsed() < Duration::from_secs(5) {
            if stream.write_all(b"X").is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
            let mut buffer = [0u8; 256];
            stream.set_nonblocking(true).unwrap();
            let read = stream.read(&mut buffer);
            stream.set_nonblocking(false).unwrap();
            match read {
                Ok(0) => break,
                Ok(_) => break, // 408 or similar, then close
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => break,
            }
        }
        started.elapsed()
    });
    for _ in 0..10 {
        ok(&system).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lasted = tokio::task::spawn_blocking(move || slow.join().unwrap())
        .await
        .unwrap();
    assert!(
        lasted < Duration::from_secs(4),
        "the slow client was allowed {lasted:?}"
    );
    ok(&system).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_kb_header_is_refused_with_431() {
    let (system, _dir) = edge().await;
    let response = system
        .http
        .get(system.url("/x"))
        .header("x-huge", "a".repeat(100 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 431);
    ok(&system).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_idle_connections_do_not_starve_other_clients() {
    let (system, _dir) = edge().await;
    let port = system.gateway_port;
    let idle: Vec<TcpStream> = (0..2000)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    let started = Instant::now();
    for _ in 0..20 {
        ok(&system).await;
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(idle);
    ok(&system).await;
}

/// An idle keep-alive connection is parked after `STRATUS_PARK_AFTER` (1 s; its session and
/// buffers freed) and served again
/// when the client comes back, on the same connection, however long it idled within the
/// keep-alive timeout. The header timeout (1 s here) must not cut an idle connection either:
/// it applies from a request's first byte, not to the wait between requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_park_and_come_back() {
    use std::io::{Read, Write};
    let (system, _dir) = edge().await;
    let port = system.gateway_port;
    let statuses = tokio::task::spawn_blocking(move || {
        let mut stream = client(port);
        let mut statuses = Vec::new();
        for (round, idle_ms) in [0u64, 100, 1_500, 50, 2_500].into_iter().enumerate() {
            std::thread::sleep(Duration::from_millis(idle_ms));
            let request = format!("GET /round/{round} HTTP/1.1\r\nHost: test\r\n\r\n");
            stream.write_all(request.as_bytes()).unwrap();
            let mut response = Vec::new();
            let mut buffer = [0u8; 4096];
            while !String::from_utf8_lossy(&response).contains(&format!("/round/{round}")) {
                let n = stream
                    .read(&mut buffer)
                    .expect("an answer on the same connection");
                assert!(
                    n > 0,
                    "the gateway closed the connection after idling {idle_ms} ms"
                );
                response.extend_from_slice(&buffer[..n]);
            }
            let text = String::from_utf8_lossy(&response).to_string();
            statuses.push(text.lines().next().unwrap_or_default().to_string());
        }
        statuses
    })
    .await
    .unwrap();
    assert!(
        statuses.iter().all(|s| s.starts_with("HTTP/1.1 200")),
        "{statuses:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_parks_and_frees_its_session() {
    use std::io::{Read, Write};
    let (system, _dir) = edge().await;
    let port = system.gateway_port;
    let mut streams = Vec::new();
    for round in 0..3 {
        let mut stream = client(port);
        let request = format!("GET /park/{round} HTTP/1.1\r\nHost: test\r\n\r\n");
        stream.write_all(request.as_bytes()).unwrap();
        let mut buffer = [0u8; 4096];
        let n = stream.read(&mut buffer).unwrap();
        assert!(String::from_utf8_lossy(&buffer[..n]).starts_with("HTTP/1.1 200"));
        streams.push(stream);
    }
    // Parked within a moment of the park delay (one second), with nothing more sent.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while parked_connections(&system).await < 3.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "idle connections never parked"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A parked connection wakes for its next request, and parks again after it.
    let mut stream = streams.pop().unwrap();
    stream
        .write_all(b"GET /again HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    let mut buffer = [0u8; 4096];
    let n = stream.read(&mut buffer).unwrap();
    assert!(String::from_utf8_lossy(&buffer[..n]).starts_with("HTTP/1.1 200"));
    drop(streams);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while parked_connections(&system).await != 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "closed connections should leave the parked count, the woken one park again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A parked connection whose client stays silent past the keep-alive timeout is closed (and
/// leaves the parked count); one that speaks within it is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_is_closed_after_the_keep_alive_timeout() {
    let (system, _dir) = edge_with(&[
        ("STRATUS_PARK_AFTER", "200ms"),
        ("STRATUS_KEEPALIVE_TIMEOUT", "2s"),
    ])
    .await;
    let port = system.gateway_port;
    let outcome = tokio::task::spawn_blocking(move || {
        let request = |stream: &mut TcpStream, path: &str| {
            let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
            stream.write_all(request.as_bytes()).unwrap();
            let mut buffer = [0u8; 4096];
            let n = stream.read(&mut buffer).unwrap();
            String::from_utf8_lossy(&buffer[..n]).to_string()
        };
        let mut silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut talkative = TcpStream::connect(("127.0.0.1", port)).unwrap();
        for stream in [&mut silent, &mut talkative] {
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            assert!(request(stream, "/first").starts_with("HTTP/1.1 200"));
        }
        // Both park (200 ms); the talkative one comes back within the timeout, twice.
        std::thread::sleep(Duration::from_millis(1_200));
        assert!(request(&mut talkative, "/second").starts_with("HTTP/1.1 200"));
        let waited = Instant::now();
        let mut buffer = [0u8; 16];
        let closed = matches!(silent.read(&mut buffer), Ok(0));
        let silent_for = waited.elapsed() + Duration::from_millis(1_200);
        assert!(request(&mut talkative, "/third").starts_with("HTTP/1.1 200"));
        (closed, silent_for)
    })
    .await
    .unwrap();
    let (closed, silent_for) = outcome;
    assert!(closed, "the silent connection was not closed");
    assert!(
        silent_for >= Duration::from_millis(1_900) && silent_for < Duration::from_secs(6),
        "closed after {silent_for:?} of silence (keep-alive timeout 2 s, checked every second)"
    );
}

/// A new connection that sends nothing for the park delay waits in the lot: if its request
/// starts within the header timeout (1 s here, from the connection), it is served; a connection
/// that never sends is closed at that deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_new_connection_parks_until_its_header_deadline() {
    let (system, _dir) = edge_with(&[("STRATUS_PARK_AFTER", "200ms")]).await;
    let port = system.gateway_port;
    let mut late = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let connected = Instant::now();
    // Parked after 200 ms of silence.
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(
        parked_connections(&system).await,
        2.0,
        "both silent connections wait in the lot"
    );
    let (late_answer, silent_for) = tokio::task::spawn_blocking(move || {
        for stream in [&mut late, &mut silent] {
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
        }
        // The request comes at 600 ms.
        std::thread::sleep(Duration::from_millis(600).saturating_sub(connected.elapsed()));
        late.write_all(b"GET /late HTTP/1.1\r\nHost: test\r\n\r\n")
            .unwrap();
        let mut buffer = [0u8; 4096];
        let n = late.read(&mut buffer).unwrap();
        let late_answer = String::from_utf8_lossy(&buffer[..n]).to_string();
        let closed = matches!(silent.read(&mut buffer), Ok(0));
        assert!(closed, "the silent connection was not closed");
        (late_answer, connected.elapsed())
    })
    .await
    .unwrap();
    assert!(late_answer.starts_with("HTTP/1.1 200"), "{late_answer}");
    assert!(
        silent_for >= Duration::from_millis(900) && silent_for < Duration::from_secs(4),
        "a connection silent since it opened was closed after {silent_for:?} (header timeout 1 s)"
    );
}

/// A client may send its request and then close its side of the connection (a half-close,
/// as `nc -N` does) while it waits for the answer: it still gets one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_closed_client_still_gets_its_answer() {
    let (system, _dir) = edge().await;
    let port = system.gateway_port;
    let answer = tokio::task::spawn_blocking(move || {
        let mut stream = client(port);
        stream
            .write_all(b"GET /half-closed HTTP/1.1\r\nHost: test\r\n\r\n")
            .unwrap();
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).to_string()
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(answer.contains("/half-closed"), "{answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_is_refused_the_gateway_is_no_forward_proxy() {
    let (system, _dir) = edge().await;
    let port = system.gateway_port;
    let answer = tokio::task::spawn_blocking(move || {
        let mut stream = client(port);
        stream
            .write_all(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
            .unwrap();
        let mut answer = Vec::new();
        let mut buffer = [0u8; 4096];
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buffer[..n]),
            }
        }
        String::from_utf8_lossy(&answer).into_owned()
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("\r\nx-request-id: "),
        "a refused request is still traceable by its id: {answer}"
    );
    ok(&system).await;
}

/// Sends `request` on a fresh connection and reads the answer to its end.
fn exchange(port: u16, request: &str) -> String {
    let mut stream = client(port);
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// RFC 9112 section 3.2: an HTTP/1.1 request without `Host`, and any request with two, is a
/// 400 (problem+json, with a request id, like the gateway's other refusals). HTTP/1.0 did not
/// require `Host`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_header_rules_follow_rfc_9112() {
    let (system, _dir) = edge().await;
    let port = system.gateway_port;
    let answers = tokio::task::spawn_blocking(move || {
        [
            "GET /no-host HTTP/1.1\r\nConnection: close\r\n\r\n",
            "GET /two-hosts HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n",
            "GET http://a.example/absolute HTTP/1.1\r\nConnection: close\r\n\r\n",
            "GET /two-hosts HTTP/1.0\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
            "GET /one-host HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
            "GET /no-host HTTP/1.0\r\n\r\n",
        ]
        .map(|request| (request, exchange(port, request)))
    })
    .await
    .unwrap();
    for (index, (request, answer)) in answers.iter().enumerate() {
        let head = answer.to_ascii_lowercase();
        // The status code of `HTTP/1.x NNN ...`.
        let status = answer.get(9..12).unwrap_or_default();
        if index < 4 {
            assert_eq!(status, "400", "{request:?} -> {answer}");
            assert!(
                head.contains("content-type: application/problem+json"),
                "{answer}"
            );
            assert!(head.contains("x-request-id: "), "{answer}");
            assert!(answer.contains("Host header"), "{answer}");
        } else {
            assert_eq!(status, "200", "{request:?} -> {answer}");
        }
    }
    ok(&system).await;
}
