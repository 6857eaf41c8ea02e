//! DNS as a discovery source: the instances of a service from SRV (or A/AAAA) records.
//!
//! Where DNS already is the registry (Kubernetes headless services, Consul DNS, or
//! `stratus serve dns`), the gateway and the kit's [`crate::discovery::Discovery`] can take their
//! instances from it instead of the registry API. Each service name is turned into a DNS name
//! with a template (`{service}.service.stratus` by default) and asked for:
//!
//! 1. `SRV`: every record gives a target and a port; the target's address comes from the
//!    additional section, or from an `A`/`AAAA` query when the server left it out;
//! 2. when the name has no SRV records, `A` and `AAAA`, each address with the default port.
//!
//! NXDOMAIN means the service has no instances. A timeout, SERVFAIL or any other failure means
//! "no news": [`DnsFollower`] keeps that service's last good answer (fail static) and reports
//! the source down, exactly as the registry follower does when the registry is unreachable.
//! Both produce the same [`Catalog`], so everything downstream is one path.
//!
//! The client is a few lines over hickory-proto's message types: UDP with a timeout and an
//! EDNS buffer of 4096 bytes, and TCP when an answer still comes back truncated.

use std::collections::hash_map::RandomState;
use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::model::{Catalog, Health, Instance};

/// The longest a follower waits between two rounds, whatever the records' TTL says.
pub const MAX_REFRESH: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("{name}: no answer from {server} within {timeout:?}")]
    Timeout {
        name: String,
        server: SocketAddr,
        timeout: Duration,
    },
    #[error("{name}: {server} answered {code}")]
    Refused {
        name: String,
        server: SocketAddr,
        code: ResponseCode,
    },
    #[error("{name}: {source}")]
    Io {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{name}: {message}")]
    Protocol { name: String, message: String },
}

/// How to ask DNS for a service's instances.
#[derive(Debug, Clone)]
pub struct DnsSettings {
    /// The resolver or authoritative server to ask.
    pub server: SocketAddr,
    /// The name to ask for a service, with `{service}` in it.
    pub template: String,
    /// The port of instances found through A/AAAA records (which carry none).
    pub default_port: u16,
    /// How often to ask again (longer when the records' TTL is longer).
    pub refresh: Duration,
    /// How long one query may take.
    pub timeout: Duration,
}

impl DnsSettings {
    /// The DNS name for `service`.
    pub fn name_for(&self, service: &str) -> String {
        self.template.replace("{service}", service)
    }
}

/// The first `nameserver` of `/etc/resolv.conf`, on port 53.
pub fn system_resolver() -> anyhow::Result<SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").map_err(|e| {
        anyhow::anyhow!("reading /etc/resolv.conf (or set STRATUS_DNS_SERVER): {e}")
    })?;
    first_nameserver(&text).ok_or_else(|| {
        anyhow::anyhow!("/etc/resolv.conf names no nameserver; set STRATUS_DNS_SERVER")
    })
}

fn first_nameserver(resolv_conf: &str) -> Option<SocketAddr> {
    resolv_conf.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            return None;
        }
        // A link-local IPv6 address may carry a zone (`fe80::1%eth0`), which IpAddr refuses.
        let address: IpAddr = words.next()?.split('%').next()?.parse().ok()?;
        Some(SocketAddr::new(address, 53))
    })
}

/// One service's instances as DNS gave them, and the shortest TTL among the records used.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub instances: Vec<Instance>,
    pub ttl: u32,
}

/// Asks DNS for the instances of `service`.
pub async fn resolve(settings: &DnsSettings, service: &str) -> Result<Resolved, DnsError> {
    let name = settings.name_for(service);
    let srv = ask(settings, &name, RecordType::SRV).await?;
    match srv.response_code() {
        ResponseCode::NoError => {}
        ResponseCode::NXDomain => {
            return Ok(Resolved {
                instances: vec![],
                ttl: 0,
            })
        }
        code => return Err(refused(settings, &name, code)),
    }
    let mut ttl = u32::MAX;
    let mut found: Vec<(IpAddr, u16)> = Vec::new();
    let targets: Vec<(Name, u16, u32)> = srv
        .answers()
        .iter()
        .filter_map(|record| match record.data() {
            RData::SRV(srv) => Some((srv.target().clone(), srv.port(), record.ttl())),
            _ => None,
        })
        .collect();
    if targets.is_empty() {
        // No SRV records: the name's addresses, with the default port.
        for kind in [RecordType::A, RecordType::AAAA] {
            let answer = ask(settings, &name, kind).await?;
            match answer.response_code() {
                ResponseCode::NoError | ResponseCode::NXDomain => {}
                code => return Err(refused(settings, &name, code)),
            }
            for (address, record_ttl) in addresses(answer.answers(), None) {
                ttl = ttl.min(record_ttl);
                found.push((address, settings.default_port));
            }
        }
    } else {
        for (target, port, record_ttl) in targets {
            ttl = ttl.min(record_ttl);
            let mut known = addresses(srv.additionals(), Some(&target));
            if known.is_empty() {
                let target_text = target.to_ascii();
                for kind in [RecordType::A, RecordType::AAAA] {
                    let answer = ask(settings, &target_text, kind).await?;
                    known.extend(addresses(answer.answers(), Some(&target)));
                }
            }
            for (address, record_ttl) in known {
                ttl = ttl.min(record_ttl);
                found.push((address, port));
            }
        }
    }
    found.sort();
    found.dedup();
    let instances = found
        .into_iter()
        .map(|(address, port)| instance(service, address, port, ttl))
        .collect::<Vec<_>>();
    Ok(Resolved {
        ttl: if instances.is_empty() { 0 } else { ttl },
        instances,
    })
}

/// The addresses in `records` (of `owner`, if given), with their TTLs.
fn addresses(records: &[Record], owner: Option<&Name>) -> Vec<(IpAddr, u32)> {
    records
        .iter()
        .filter(|record| owner.is_none_or(|owner| record.name() == owner))
        .filter_map(|record| match record.data() {
            RData::A(a) => Some((IpAddr::V4(a.0), record.ttl())),
            RData::AAAA(aaaa) => Some((IpAddr::V6(aaaa.0), record.ttl())),
            _ => None,
        })
        .collect()
}

/// An instance found through DNS. DNS knows no instance ids, so the id is the address and port,
/// which is also what keeps an instance's state (breaker, in-flight count) across rounds.
fn instance(service: &str, address: IpAddr, port: u16, ttl: u32) -> Instance {
    let id = match address {
        IpAddr::V4(v4) => format!("{v4}-{port}"),
        IpAddr::V6(v6) => format!("{}-{port}", v6.to_string().replace(':', "-")),
    };
    Instance {
        id,
        service: service.to_string(),
        address: address.to_string(),
        port,
        version: "unknown".into(),
        metadata: BTreeMap::from([("source".to_string(), "dns".to_string())]),
        health: Health::Passing,
        ttl_seconds: f64::from(ttl),
        registered_at: String::new(),
    }
}

fn refused(settings: &DnsSettings, name: &str, code: ResponseCode) -> DnsError {
    DnsError::Refused {
        name: name.to_string(),
        server: settings.server,
        code,
    }
}

/// One question, over UDP; again over TCP if the answer is truncated.
async fn ask(settings: &DnsSettings, name: &str, kind: RecordType) -> Result<Message, DnsError> {
    let protocol = |message: String| DnsError::Protocol {
        name: name.to_string(),
        message,
    };
    let io = |source: std::io::Error| DnsError::Io {
        name: name.to_string(),
        source,
    };
    let fqdn = if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    };
    let question = Name::from_ascii(&fqdn).map_err(|e| protocol(e.to_string()))?;
    let id = random_id();
    let mut message = Message::new();
    message
        .set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(question, kind));
    let mut edns = Edns::new();
    edns.set_max_payload(4096);
    message.set_edns(edns);
    let bytes = message.to_vec().map_err(|e| protocol(e.to_string()))?;

    let exchange = async {
        let answer = udp(settings.server, &bytes, id).await.map_err(io)?;
        let answer = Message::from_vec(&answer).map_err(|e| protocol(e.to_string()))?;
        if !answer.truncated() {
            return Ok(answer);
        }
        let answer = tcp(settings.server, &bytes).await.map_err(io)?;
        Message::from_vec(&answer).map_err(|e| protocol(e.to_string()))
    };
    tokio::time::timeout(settings.timeout, exchange)
        .await
        .map_err(|_| DnsError::Timeout {
            name: name.to_string(),
            server: settings.server,
            timeout: settings.timeout,
        })?
}

async fn udp(server: SocketAddr, question: &[u8], id: u16) -> std::io::Result<Vec<u8>> {
    let local: SocketAddr = if server.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = tokio::net::UdpSocket::bind(local).await?;
    socket.connect(server).await?;
    socket.send(question).await?;
    let mut buffer = vec![0u8; 4096];
    loop {
        let size = socket.recv(&mut buffer).await?;
        // Anything that is not the answer to this question (a late answer to an earlier one on
        // a reused port, a spoof attempt) is ignored.
        if size >= 2 && u16::from_be_bytes([buffer[0], buffer[1]]) == id {
            buffer.truncate(size);
            return Ok(buffer);
        }
    }
}

async fn tcp(server: SocketAddr, question: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream = tokio::net::TcpStream::connect(server).await?;
    let length = u16::try_from(question.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "question too long"))?;
    stream.write_all(&length.to_be_bytes()).await?;
    stream.write_all(question).await?;
    let length = stream.read_u16().await?;
    let mut buffer = vec![0u8; usize::from(length)];
    stream.read_exact(&mut buffer).await?;
    Ok(buffer)
}

/// A message id nobody can guess (against off-path spoofing): std's per-process random hash keys.
fn random_id() -> u16 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish() as u16
}

/// What one round of [`DnsFollower::round`] found.
#[derive(Debug, Clone)]
pub struct Round {
    /// Every service's instances: this round's answer, or the last good one for a service whose
    /// query failed.
    pub catalog: Catalog,
    /// Whether every query was answered (the source is "up").
    pub complete: bool,
    /// Whether the catalog differs from the previous round's.
    pub changed: bool,
    /// When to ask again.
    pub next: Duration,
}

/// Asks DNS for a set of services, round after round, keeping the last good answer per service.
pub struct DnsFollower {
    settings: DnsSettings,
    last: BTreeMap<String, Vec<Instance>>,
    index: u64,
}

impl DnsFollower {
    pub fn new(settings: DnsSettings) -> Self {
        Self {
            settings,
            last: BTreeMap::new(),
            index: 0,
        }
    }

    pub fn settings(&self) -> &DnsSettings {
        &self.settings
    }

    /// Resolves every service in `services` (concurrently) and returns the resulting view.
    /// The catalog's index starts at 1 with the first answer and moves whenever the view changes.
    pub async fn round(&mut self, services: &[String]) -> Round {
        let answers = futures_util::future::join_all(
            services
                .iter()
                .map(|service| resolve(&self.settings, service)),
        )
        .await;
        let mut complete = true;
        let mut answered = false;
        let mut ttl = u32::MAX;
        let mut next: BTreeMap<String, Vec<Instance>> = BTreeMap::new();
        for (service, answer) in services.iter().zip(answers) {
            match answer {
                Ok(resolved) => {
                    answered = true;
                    if !resolved.instances.is_empty() {
                        ttl = ttl.min(resolved.ttl);
                        next.insert(service.clone(), resolved.instances);
                    }
                }
                Err(error) => {
                    complete = false;
                    tracing::warn!(%service, %error, "DNS lookup failed; keeping the last answer");
                    if let Some(kept) = self.last.get(service) {
                        next.insert(service.clone(), kept.clone());
                    }
                }
            }
        }
        let changed = next != self.last;
        if changed || (self.index == 0 && answered) {
            self.index += 1;
        }
        self.last = next;
        let ttl = Duration::from_secs(u64::from(if ttl == u32::MAX { 0 } else { ttl }));
        Round {
            catalog: Catalog {
                index: self.index,
                services: self.last.clone(),
                warming: false,
                epoch: String::new(),
            },
            complete,
            changed,
            // Asking before the records expire would only get the same answer from a caching
            // resolver; a failed round is retried at the refresh period.
            next: if complete {
                self.settings.refresh.max(ttl).min(MAX_REFRESH)
            } else {
                self.settings.refresh
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameserver_from_resolv_conf() {
        let text = "# generated\nsearch example.com\nnameserver 10.0.0.2\nnameserver 10.0.0.3\n";
        assert_eq!(first_nameserver(text), Some("10.0.0.2:53".parse().unwrap()));
        assert_eq!(
            first_nameserver("nameserver fe80::1%eth0\n"),
            Some("[fe80::1]:53".parse().unwrap())
        );
        assert_eq!(first_nameserver("options ndots:5\n"), None);
    }

    #[test]
    fn names_from_the_template() {
        let settings = DnsSettings {
            server: "127.0.0.1:53".parse().unwrap(),
            template: "_http._tcp.{service}.default.svc.cluster.local".into(),
            default_port: 80,
            refresh: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
        };
        assert_eq!(
            settings.name_for("catalog"),
            "_http._tcp.catalog.default.svc.cluster.local"
        );
    }

    #[tokio::test]
    async fn a_silent_server_is_a_timeout_and_the_last_answer_stays() {
        // A UDP socket that never answers.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let settings = DnsSettings {
            server: silent.local_addr().unwrap(),
            template: "{service}.service.stratus".into(),
            default_port: 80,
            refresh: Duration::from_millis(100),
            timeout: Duration::from_millis(100),
        };
        let mut follower = DnsFollower::new(settings);
        let kept = vec![instance("svc", "127.0.0.1".parse().unwrap(), 9000, 0)];
        follower.last.insert("svc".into(), kept.clone());
        let round = follower.round(&["svc".to_string()]).await;
        assert!(!round.complete);
        assert_eq!(round.catalog.services["svc"], kept);
        assert_eq!(round.next, Duration::from_millis(100));
    }
}
