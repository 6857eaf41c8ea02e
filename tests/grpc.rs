//! gRPC through the gateway: calls go to the instances over HTTP/2 and the `grpc-status`
//! trailers come back; a streamed answer arrives message by message; calls are balanced; and a
//! call the gateway cannot forward gets a gRPC status, not an HTTP error or a hang.
//!
//! The instances are small gRPC-like servers on hyper's HTTP/2 server (no code generation): a
//! message is gRPC's length-prefixed frame (a compression flag byte, a 4-byte big-endian length,
//! the bytes), and every answer ends with `grpc-status` trailers. They also answer `/healthz`
//! over HTTP/1.1 for the gateway's health checks, as gRPC servers with an HTTP side do. They
//! serve TLS with a certificate for `echo`, as instances in the mesh do: the gateway reaches
//! them over mutual TLS, HTTP/2 by ALPN.

mod support;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use support::System;
use tokio::sync::{mpsc, oneshot};

/// `[flag 0][length][message]`.
fn frame(message: &[u8]) -> Bytes {
    let mut framed = BytesMut::with_capacity(5 + message.len());
    framed.put_u8(0);
    framed.put_u32(message.len() as u32);
    framed.put_slice(message);
    framed.freeze()
}

/// The messages in a body made of length-prefixed frames.
fn messages(mut body: Bytes) -> Vec<String> {
    let mut found = Vec::new();
    while body.len() >= 5 {
        body.advance(1);
        let length = body.get_u32() as usize;
        let message = body.split_to(length.min(body.len()));
        found.push(String::from_utf8_lossy(&message).into_owned());
    }
    found
}

/// A response body fed frame by frame from a channel, so the server decides when each message
/// and the trailers go out.
struct ChannelBody(mpsc::Receiver<Frame<Bytes>>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|frame| frame.map(Ok))
    }
}

fn trailers(status: u32) -> Frame<Bytes> {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from(status));
    Frame::trailers(trailers)
}

/// The test service, by path:
/// - `/echo.Echo/Say` (unary): answers `<name>: <message>`;
/// - `/echo.Echo/Count` (server streaming): `<name> 0` .. `<name> 3`, 300 ms apart;
/// - `/echo.Echo/Slow`: answers after 3 s;
/// - anything else: `<name> saw <HTTP version>` as plain text (for h2c routes), and `/healthz`.
async fn answer(
    name: &'static str,
    request: Request<Incoming>,
) -> Result<Response<ChannelBody>, Infallible> {
    let (sender, receiver) = mpsc::channel(8);
    let mut response = Response::new(ChannelBody(receiver));
    let headers = response.headers_mut();
    let te = request.headers().get("te").cloned();
    match request.uri().path() {
        "/echo.Echo/Say" | "/echo.Echo/Count" | "/echo.Echo/Slow" => {
            headers.insert("content-type", HeaderValue::from_static("application/grpc"));
            if let Some(te) = te {
                headers.insert("x-saw-te", te);
            }
            let path = request.uri().path().to_string();
            let body = request.into_body().collect().await.map(|b| b.to_bytes());
            let said = messages(body.unwrap_or_default()).join(",");
            let slow = path == "/echo.Echo/Slow";
            tokio::spawn(async move {
                match path.as_str() {
                    "/echo.Echo/Say" => {
                        let _ = sender
                            .send(Frame::data(frame(format!("{name}: {said}").as_bytes())))
                            .await;
                    }
                    "/echo.Echo/Count" => {
                        for n in 0..4 {
                            if n > 0 {
                                tokio::time::sleep(Duration::from_millis(300)).await;
                            }
                            let message = frame(format!("{name} {n}").as_bytes());
                            if sender.send(Frame::data(message)).await.is_err() {
                                return;
                            }
                        }
                    }
                    _ => return,
                }
                let _ = sender.send(trailers(0)).await;
            });
            if slow {
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
        }
        _ => {
            let text = format!("{name} saw {:?}", request.version());
            tokio::spawn(async move {
                let _ = sender.send(Frame::data(Bytes::from(text))).await;
            });
        }
    }
    Ok(response)
}

/// A running test instance; [`Instance::kill`] closes its listener and every connection.
struct Instance {
    port: u16,
    stop: Option<oneshot::Sender<()>>,
}

impl Instance {
    async fn start(name: &'static str) -> Instance {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stop, mut stopped) = oneshot::channel::<()>();
        let tls = tokio_rustls::TlsAcceptor::from(support::mesh::tls_for("echo"));
        tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let tls = tls.clone();
                        connections.spawn(async move {
                            let Ok(stream) = tls.accept(stream).await else { return };
                            let service = service_fn(move |request| answer(name, request));
                            let builder =
                                hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                        });
                    }
                    // Dropping the set aborts every connection: the sockets close as in a crash.
                    _ = &mut stopped => return,
                }
            }
        });
        Instance {
            port,
            stop: Some(stop),
        }
    }

    fn kill(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// An HTTP/2 (prior knowledge) client connection to the gateway.
async fn connect(system: &System) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", system.gateway_port))
        .await
        .unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    sender
}

/// What a call got back: status, headers, each data frame with when it arrived, trailers.
struct Answer {
    status: u16,
    headers: HeaderMap,
    frames: Vec<(Instant, Bytes)>,
    trailers: Option<HeaderMap>,
}

impl Answer {
    fn messages(&self) -> Vec<String> {
        let mut all = BytesMut::new();
        for (_, data) in &self.frames {
            all.extend_from_slice(data);
        }
        messages(all.freeze())
    }

    /// `grpc-status` from the trailers, or from the headers of a trailers-only answer.
    fn grpc_status(&self) -> Option<String> {
        self.trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .or_else(|| self.headers.get("grpc-status"))
            .map(|v| v.to_str().unwrap().to_string())
    }
}

/// Calls `/echo.Echo/<method>` with `message` through the gateway at `port`.
async fn call(
    sender: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    port: u16,
    method: &str,
    message: &str,
) -> Answer {
    let request = Request::post(format!("http://127.0.0.1:{port}/echo.Echo/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(frame(message.as_bytes())))
        .unwrap();
    sender.ready().await.unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .expect("the gateway answered in time")
        .unwrap();
    let (head, mut body) = response.into_parts();
    let mut answer = Answer {
        status: head.status.as_u16(),
        headers: head.headers,
        frames: Vec::new(),
        trailers: None,
    };
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("the body went on in time")
    {
        let frame = frame.unwrap();
        match frame.into_data() {
            Ok(data) => answer.frames.push((Instant::now(), data)),
            Err(frame) => answer.trailers = frame.into_trailers().ok(),
        }
    }
    answer
}

const ROUTES: &str = "[[routes]]\nprefix = \"/echo.Echo/Slow\"\nservice = \"echo\"\nauth = \"none\"\ntimeout = \"500ms\"\n\n\
[[routes]]\nprefix = \"/echo.Echo\"\nservice = \"echo\"\nauth = \"none\"\n\n\
[[routes]]\nprefix = \"/plain\"\nservice = \"echo\"\nauth = \"none\"\nupstream_protocol = \"h2c\"\n";

/// A registry and a gateway with [`ROUTES`] (the directory holds the route file).
async fn edge() -> (tempfile::TempDir, System) {
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.toml");
    std::fs::write(&routes, ROUTES).unwrap();
    let system = System::start_edge(Some(&routes)).await;
    (dir, system)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_calls_get_their_answer_and_trailers_and_are_balanced() {
    let (_dir, system) = edge().await;
    let one = Instance::start("echo-1").await;
    let two = Instance::start("echo-2").await;
    system.register("echo", "echo-1", one.port, json!({})).await;
    system.register("echo", "echo-2", two.port, json!({})).await;
    system.wait_gateway_sees("echo", 2).await;

    // Eight calls at once on one client connection: multiplexed both sides of the gateway.
    let sender = connect(&system).await;
    let mut calls = tokio::task::JoinSet::new();
    for n in 0..8 {
        let mut sender = sender.clone();
        let port = system.gateway_port;
        calls.spawn(async move { call(&mut sender, port, "Say", &format!("hello {n}")).await });
    }
    let mut served_by = std::collections::BTreeSet::new();
    while let Some(answer) = calls.join_next().await {
        let answer = answer.unwrap();
        assert_eq!(answer.status, 200);
        assert_eq!(answer.grpc_status().as_deref(), Some("0"));
        assert!(answer.trailers.is_some(), "grpc-status came as a trailer");
        assert_eq!(answer.headers["x-saw-te"], "trailers");
        let said = answer.messages();
        assert_eq!(said.len(), 1, "{said:?}");
        let (name, message) = said[0].split_once(": ").unwrap();
        assert!(message.starts_with("hello "), "{message}");
        served_by.insert(name.to_string());
    }
    assert_eq!(
        served_by.into_iter().collect::<Vec<_>>(),
        ["echo-1", "echo-2"],
        "both instances served calls"
    );

    // A route that asks for h2c takes an HTTP/1.1 client's request to the instance over HTTP/2.
    let plain = system
        .http
        .get(system.url("/plain/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 200);
    let text = plain.text().await.unwrap();
    assert!(text.ends_with("saw HTTP/2.0"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_answer_arrives_message_by_message() {
    let (_dir, system) = edge().await;
    let instance = Instance::start("echo-1").await;
    system
        .register("echo", "echo-1", instance.port, json!({}))
        .await;
    system.wait_gateway_sees("echo", 1).await;

    let mut sender = connect(&system).await;
    let answer = call(&mut sender, system.gateway_port, "Count", "go").await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.messages(),
        ["echo-1 0", "echo-1 1", "echo-1 2", "echo-1 3"]
    );
    assert_eq!(answer.grpc_status().as_deref(), Some("0"));
    // The instance sends a message every 300 ms: relayed as they come, the first arrives about
    // 900 ms before the last; buffered, all would arrive together.
    let first = answer.frames.first().unwrap().0;
    let last = answer.frames.last().unwrap().0;
    assert!(
        last.duration_since(first) >= Duration::from_millis(600),
        "the messages arrived together ({:?} apart)",
        last.duration_since(first)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_with_no_instance_left_gets_unavailable_and_a_slow_one_deadline_exceeded() {
    let (_dir, system) = edge().await;
    let mut instance = Instance::start("echo-1").await;
    system
        .register("echo", "echo-1", instance.port, json!({}))
        .await;
    system.wait_gateway_sees("echo", 1).await;
    let mut sender = connect(&system).await;

    // Past the route's 500 ms timeout: DEADLINE_EXCEEDED, in gRPC's trailers-only form.
    let started = Instant::now();
    let slow = call(&mut sender, system.gateway_port, "Slow", "wait").await;
    assert!(started.elapsed() < Duration::from_secs(3), "no timeout");
    assert_eq!(slow.status, 200);
    assert_eq!(slow.grpc_status().as_deref(), Some("4"));
    assert!(slow.frames.is_empty() && slow.trailers.is_none());

    // The gateway holds an HTTP/2 connection to the instance; kill it.
    assert_eq!(
        call(&mut sender, system.gateway_port, "Say", "before")
            .await
            .grpc_status()
            .as_deref(),
        Some("0")
    );
    instance.kill();
    let started = Instant::now();
    let answer = call(&mut sender, system.gateway_port, "Say", "after").await;
    assert!(started.elapsed() < Duration::from_secs(5), "the call hung");
    assert_eq!(answer.status, 200);
    assert_eq!(answer.grpc_status().as_deref(), Some("14"));
    let message = answer.headers["grpc-message"].to_str().unwrap().to_string();
    assert!(message.contains("echo"), "{message}");
    // Again, now that the instance is known to be down: still UNAVAILABLE.
    let again = call(&mut sender, system.gateway_port, "Say", "again").await;
    assert_eq!(again.grpc_status().as_deref(), Some("14"));

    // A client that is not gRPC gets the usual problem.
    let plain = system
        .http
        .get(system.url("/plain/x"))
        .send()
        .await
        .unwrap();
    assert!(
        matches!(plain.status().as_u16(), 502 | 503),
        "{}",
        plain.status()
    );
    assert_eq!(plain.headers()["content-type"], "application/problem+json");
}

/// The gateway's view of one instance, from its admin API.
async fn upstream(system: &System, service: &str, id: &str) -> Value {
    let report: Value = system
        .internal()
        .get(system.admin_url("/v1/upstreams"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    report["services"][service]
        .as_array()
        .and_then(|all| all.iter().find(|i| i["id"] == id).cloned())
        .unwrap_or(Value::Null)
}

/// Polls the gateway's view of `id` until its active check says `verdict`.
async fn wait_check(system: &System, service: &str, id: &str, verdict: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = upstream(system, service, id).await;
        if seen["health_check"] == verdict {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "{id}'s check never said {verdict}: {seen}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An instance registered with `health_check = "grpc"` is probed with gRPC's own health service
/// over HTTP/2 and mutual TLS: in rotation while it says SERVING, out while NOT_SERVING, back
/// after. The same gRPC-only server probed the default way (`GET /healthz` over HTTP/1.1)
/// cannot answer at all, and one holding another service's certificate never passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_instances_are_probed_with_the_grpc_health_service() {
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.toml");
    std::fs::write(&routes, ROUTES).unwrap();
    let system = System::start_edge_with(
        Some(&routes),
        &[("STRATUS_UPSTREAM_HEALTH_INTERVAL", "100ms")],
    )
    .await;
    let serving = Arc::new(AtomicU8::new(1));
    let port = support::backend::start_grpc_health("echo", serving.clone()).await;
    system
        .register(
            "echo",
            "grpc-checked",
            port,
            json!({"health_check": "grpc"}),
        )
        .await;
    system
        .register("echo", "http-checked", port, json!({}))
        .await;
    // A gRPC server that says SERVING with another service's certificate: the probe goes over
    // mutual TLS and checks whom it reached, so it never passes.
    let impostor = support::backend::start_grpc_health("impostor", serving.clone()).await;
    system
        .register(
            "echo",
            "impostor",
            impostor,
            json!({"health_check": "grpc"}),
        )
        .await;
    system.wait_gateway_sees("echo", 3).await;

    let unanswerable = wait_check(&system, "echo", "http-checked", "failing").await;
    assert_eq!(unanswerable["check"], "http");
    let refused = wait_check(&system, "echo", "impostor", "failing").await;
    assert_eq!(refused["check"], "grpc");
    // Several probe rounds later the gRPC-checked one is still in rotation.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let checked = upstream(&system, "echo", "grpc-checked").await;
    assert_eq!(checked["check"], "grpc");
    assert_eq!(checked["health_check"], "passing", "{checked}");

    serving.store(2, Ordering::Relaxed);
    wait_check(&system, "echo", "grpc-checked", "failing").await;
    serving.store(1, Ordering::Relaxed);
    wait_check(&system, "echo", "grpc-checked", "passing").await;
}

/// `health_check = "tcp"`: in rotation while the port accepts connections, out once it does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_checked_instances_leave_when_their_port_closes() {
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.toml");
    std::fs::write(&routes, ROUTES).unwrap();
    let system = System::start_edge_with(
        Some(&routes),
        &[("STRATUS_UPSTREAM_HEALTH_INTERVAL", "100ms")],
    )
    .await;
    let mut instance = Instance::start("tcp").await;
    system
        .register(
            "echo",
            "tcp-checked",
            instance.port,
            json!({"health_check": "tcp"}),
        )
        .await;
    system.wait_gateway_sees("echo", 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = upstream(&system, "echo", "tcp-checked").await;
    assert_eq!(
        (seen["check"].as_str(), seen["health_check"].as_str()),
        (Some("tcp"), Some("passing")),
        "{seen}"
    );
    instance.kill();
    wait_check(&system, "echo", "tcp-checked", "failing").await;
}
