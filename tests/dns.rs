//! `stratus serve dns` answers from the registry: real processes, real UDP and TCP queries.

mod support;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use support::registry::Registry;
use support::Process;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn question(name: &str, kind: RecordType) -> Vec<u8> {
    let mut message = Message::new();
    message
        .set_id(rand_id())
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(false)
        .add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
    message.to_vec().unwrap()
}

/// A fresh message id per question, so a late answer to an earlier one is never mistaken for it.
fn rand_id() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// One query over UDP; `None` if no answer came within a second.
async fn udp(port: u16, name: &str, kind: RecordType) -> Option<Message> {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket
        .send_to(&question(name, kind), ("127.0.0.1", port))
        .await
        .unwrap();
    let mut buffer = vec![0u8; 4096];
    let size = tokio::time::timeout(Duration::from_secs(1), socket.recv(&mut buffer))
        .await
        .ok()?
        .ok()?;
    Some(Message::from_vec(&buffer[..size]).expect("a well-formed DNS answer"))
}

/// One query over TCP (each message prefixed with its two-byte length).
async fn tcp(port: u16, name: &str, kind: RecordType) -> Message {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let bytes = question(name, kind);
    stream
        .write_all(&(bytes.len() as u16).to_be_bytes())
        .await
        .unwrap();
    stream.write_all(&bytes).await.unwrap();
    let length = stream.read_u16().await.unwrap();
    let mut buffer = vec![0u8; usize::from(length)];
    stream.read_exact(&mut buffer).await.unwrap();
    Message::from_vec(&buffer).unwrap()
}

fn addresses(message: &Message) -> Vec<String> {
    let mut found: Vec<String> = message
        .answers()
        .iter()
        .filter(|r| matches!(r.data(), RData::A(_) | RData::AAAA(_)))
        .map(|r| r.data().to_string())
        .collect();
    found.sort();
    found
}

/// Asks over UDP until `check` accepts the answer, or panics after ten seconds.
async fn until(
    port: u16,
    name: &str,
    kind: RecordType,
    check: impl Fn(&Message) -> bool,
) -> Message {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(answer) = udp(port, name, kind).await {
            if check(&answer) {
                return answer;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no acceptable answer for {name} {kind}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn dns_answers_a_and_srv_from_the_registry() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start("registry", "memory", dir.path()).await;
    let port = support::free_port();
    let log = std::fs::File::create(dir.path().join("dns.log")).unwrap();
    let child = Command::new(support::binary())
        .args(["serve", "dns"])
        .env("PORT", port.to_string())
        .env("STRATUS_REGISTRY_URL", registry.url(""))
        .env("STRATUS_LOG_FORMAT", "json")
        .env("STRATUS_LOG", "debug")
        .envs(support::mesh::shared().env("dns"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let _dns = Process {
        name: "dns".into(),
        child,
        instance_id: "dns".into(),
    };

    assert_eq!(registry.register("catalog", "one", 9001, 30.0).await, 201);
    assert_eq!(registry.register("catalog", "two", 9002, 30.0).await, 201);
    let name = "catalog.service.stratus.";

    let answer = until(port, name, RecordType::A, |m| addresses(m).len() == 2).await;
    assert_eq!(addresses(&answer), ["127.0.0.1", "127.0.0.1"]);
    assert_eq!(answer.response_code(), ResponseCode::NoError);
    assert!(answer.authoritative());
    assert!(
        answer.answers().iter().all(|r| r.ttl() == 0),
        "TTL 0: never cached"
    );

    let srv = udp(port, name, RecordType::SRV)
        .await
        .expect("an SRV answer");
    let mut ports: Vec<u16> = srv
        .answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::SRV(srv) => Some(srv.port()),
            _ => None,
        })
        .collect();
    ports.sort();
    assert_eq!(ports, [9001, 9002]);
    assert_eq!(
        srv.additionals().len(),
        2,
        "the targets' addresses come along"
    );

    let over_tcp = tcp(port, name, RecordType::A).await;
    assert_eq!(addresses(&over_tcp).len(), 2);

    // A deregistered instance leaves DNS as soon as it leaves the registry.
    let gone = registry
        .http
        .delete(registry.url("/v1/services/catalog/instances/two"))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 204);
    until(port, name, RecordType::A, |m| addresses(m).len() == 1).await;
    let one = udp(port, "one.catalog.service.stratus.", RecordType::A)
        .await
        .unwrap();
    assert_eq!(addresses(&one), ["127.0.0.1"]);

    let unknown = udp(port, "orders.service.stratus.", RecordType::A)
        .await
        .unwrap();
    assert_eq!(unknown.response_code(), ResponseCode::NXDomain);
    let elsewhere = udp(port, "example.com.", RecordType::A).await.unwrap();
    assert_eq!(elsewhere.response_code(), ResponseCode::Refused);

    // The API's name answers with every gateway instance (DNS round robin to the front door).
    assert_eq!(registry.register("gateway", "g1", 8080, 30.0).await, 201);
    assert_eq!(registry.register("gateway", "g2", 8081, 30.0).await, 201);
    until(port, "api.stratus.", RecordType::A, |m| {
        addresses(m).len() == 2
    })
    .await;
}

#[tokio::test]
async fn a_killed_instance_leaves_dns_within_the_detection_time() {
    let mut system = support::System::start(2).await;
    let port = support::free_port();
    let port_text = port.to_string();
    system.spawn("dns", &[("PORT", port_text.as_str())]);
    let name = "catalog.service.stratus.";
    until(port, name, RecordType::SRV, |m| m.answers().len() == 2).await;

    system.process("catalog", 0).kill9();
    let killed = Instant::now();
    until(port, name, RecordType::SRV, |m| m.answers().len() == 1).await;
    // The registry's health check (500 ms, two failures) or the 3 s lease, whichever is first.
    assert!(
        killed.elapsed() < Duration::from_secs(4),
        "took {:?}",
        killed.elapsed()
    );
    // The gateway's own name resolves too, since the gateway registers itself.
    until(port, "api.stratus.", RecordType::A, |m| {
        addresses(m).len() == 1
    })
    .await;
}

/// With the event sink on, each query is a `server` record of the service `dns` named by its
/// type, so the topology shows `clients -> dns`.
#[tokio::test]
async fn queries_are_reported_to_the_event_sink() {
    let mut system = support::System::start_edge(None).await;
    let events_port = support::free_port();
    let sink = support::mesh::internal_url(events_port, "");
    let events_port_text = events_port.to_string();
    system.spawn("events", &[("PORT", events_port_text.as_str())]);
    system.wait_http_ok(&format!("{sink}/readyz")).await;
    let port = support::free_port();
    let port_text = port.to_string();
    system.spawn(
        "dns",
        &[
            ("PORT", port_text.as_str()),
            ("STRATUS_EVENTS_URL", sink.as_str()),
        ],
    );
    let name = "gateway.service.stratus.";
    until(port, name, RecordType::A, |m| !m.answers().is_empty()).await;
    udp(port, name, RecordType::SRV)
        .await
        .expect("an SRV answer");

    let deadline = Instant::now() + Duration::from_secs(10);
    let topology = loop {
        let topology: serde_json::Value = system
            .get_json(format!("{sink}/v1/topology?window=5m"))
            .await;
        let edge =
            topology["edges"].as_array().unwrap().iter().any(|e| {
                e["from"] == "clients" && e["to"] == "dns" && e["count"].as_u64() >= Some(2)
            });
        if edge {
            break topology;
        }
        assert!(
            Instant::now() < deadline,
            "no clients -> dns edge: {topology}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let node = topology["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "dns")
        .unwrap();
    assert_eq!(node["kind"], "dns");
    let events: serde_json::Value = system
        .get_json(format!("{sink}/v1/events?service=dns&limit=1000"))
        .await;
    let names: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert_eq!(e["kind"], "server");
            e["name"].as_str().unwrap()
        })
        .collect();
    assert!(names.contains(&"A") && names.contains(&"SRV"), "{names:?}");
}
