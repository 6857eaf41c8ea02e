//! Active health checks: the gateway asks every instance whether it is healthy on an interval,
//! and takes an instance out of rotation after `unhealthy` failures in a row, back after
//! `healthy` successes. This catches an instance that is up but broken before a client request
//! finds out, and it complements the passive checks (the circuit breaker), which only see
//! instances that get traffic.
//!
//! How an instance is asked is its own to say, in its registration's metadata `health_check`
//! (as a Consul service names its check's kind):
//!
//! | `health_check` | the probe | passes when |
//! |---|---|---|
//! | `http` (or absent) | `GET /healthz` over HTTP/1.1 | a 2xx |
//! | `grpc` | `grpc.health.v1.Health/Check` over HTTP/2 (h2c), for the whole server | `SERVING` |
//! | `tcp` | a TCP connection | it opens |
//!
//! A gRPC-only server has no HTTP/1.1 side to answer `/healthz`; probed that way it would never
//! be taken for healthy. The standard health service is what gRPC load balancers and Kubernetes'
//! gRPC probes ask, so any gRPC server that implements it works here unchanged.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::header::{CONTENT_TYPE, TE};
use http::{HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use stratus_kit::model::Instance;

use crate::grpc::GRPC_STATUS;
use crate::upstream::{Endpoint, Upstreams};

/// How an instance is probed (its registration's metadata `health_check`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Http,
    Grpc,
    Tcp,
}

impl Check {
    /// The instance's choice; `http` when it names none (or one the gateway does not know).
    pub fn of(instance: &Instance) -> Self {
        match instance.metadata.get("health_check").map(String::as_str) {
            Some("grpc") => Check::Grpc,
            Some("tcp") => Check::Tcp,
            _ => Check::Http,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Check::Http => "http",
            Check::Grpc => "grpc",
            Check::Tcp => "tcp",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy: u32,
    pub healthy: u32,
}

/// Per-endpoint counters of consecutive outcomes.
#[derive(Default)]
pub struct Probe {
    failures: AtomicU32,
    successes: AtomicU32,
}

/// The probes' HTTP clients: HTTP/1.1 for `/healthz`, HTTP/2 with prior knowledge for gRPC.
/// Each keeps one idle connection per instance, so a probe costs a request, not a handshake.
#[derive(Clone)]
struct Clients {
    http1: Client<HttpConnector, Full<Bytes>>,
    h2c: Client<HttpConnector, Full<Bytes>>,
}

impl Clients {
    fn new(settings: &Settings) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(settings.timeout));
        connector.set_nodelay(true);
        let builder = || {
            let mut builder = Client::builder(hyper_util::rt::TokioExecutor::new());
            builder.pool_max_idle_per_host(1);
            builder
        };
        Self {
            http1: builder().build(connector.clone()),
            h2c: builder().http2_only(true).build(connector),
        }
    }
}

pub async fn run(upstreams: Arc<Upstreams>, settings: Settings) {
    let clients = Clients::new(&settings);
    let mut ticker = tokio::time::interval(settings.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        // Probe every instance at once, and wait for all before the next round.
        let mut round = tokio::task::JoinSet::new();
        for pool in upstreams.snapshot().values() {
            for endpoint in &pool.endpoints {
                round.spawn(check(clients.clone(), endpoint.clone(), settings));
            }
        }
        while round.join_next().await.is_some() {}
    }
}

async fn check(clients: Clients, endpoint: Arc<Endpoint>, settings: Settings) {
    let authority = endpoint.authority.as_str();
    let probe = async {
        match endpoint.check {
            Check::Http => http_healthz(&clients.http1, authority).await,
            Check::Grpc => grpc_serving(&clients.h2c, authority).await,
            Check::Tcp => tokio::net::TcpStream::connect(authority).await.is_ok(),
        }
    };
    let passed = tokio::time::timeout(settings.timeout, probe)
        .await
        .unwrap_or(false);
    let probe = &endpoint.probe;
    if passed {
        probe.failures.store(0, Ordering::Relaxed);
        let successes = probe.successes.fetch_add(1, Ordering::Relaxed) + 1;
        if !endpoint.is_actively_healthy() && successes >= settings.healthy {
            tracing::info!(service = %endpoint.service, instance = %endpoint.id, "health check passing again");
            endpoint.set_actively_healthy(true);
        }
    } else {
        probe.successes.store(0, Ordering::Relaxed);
        let failures = probe.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if endpoint.is_actively_healthy() && failures >= settings.unhealthy {
            tracing::warn!(service = %endpoint.service, instance = %endpoint.id, "health check failing; out of rotation");
            metrics::counter!("gateway_health_check_failures_total", "service" => endpoint.service.clone()).increment(1);
            endpoint.set_actively_healthy(false);
        }
    }
}

/// `GET /healthz` answered with a 2xx.
async fn http_healthz(client: &Client<HttpConnector, Full<Bytes>>, authority: &str) -> bool {
    let Ok(uri) = format!("http://{authority}/healthz").parse::<Uri>() else {
        return false;
    };
    let Ok(request) = Request::get(uri).body(Full::default()) else {
        return false;
    };
    matches!(client.request(request).await, Ok(response) if response.status().is_success())
}

/// An empty `HealthCheckRequest` (the whole server's health), framed as a gRPC message:
/// uncompressed, length 0.
const WHOLE_SERVER: [u8; 5] = [0, 0, 0, 0, 0];
/// Answers bigger than this are not a health response.
const MAX_HEALTH_RESPONSE: usize = 1024;

/// `grpc.health.v1.Health/Check` answered with status OK and `SERVING`.
async fn grpc_serving(client: &Client<HttpConnector, Full<Bytes>>, authority: &str) -> bool {
    let Ok(uri) = format!("http://{authority}/grpc.health.v1.Health/Check").parse::<Uri>() else {
        return false;
    };
    let Ok(request) = Request::post(uri)
        .header(CONTENT_TYPE, HeaderValue::from_static("application/grpc"))
        .header(TE, HeaderValue::from_static("trailers"))
        .body(Full::new(Bytes::from_static(&WHOLE_SERVER)))
    else {
        return false;
    };
    let Ok(response) = client.request(request).await else {
        return false;
    };
    if !response.status().is_success() {
        return false;
    }
    // "Trailers-only" (grpc-status among the headers) is a call that failed at once, or one
    // with no answer message: neither says SERVING.
    if response.headers().contains_key(&GRPC_STATUS) {
        return false;
    }
    let Ok(collected) = Limited::new(response.into_body(), MAX_HEALTH_RESPONSE)
        .collect()
        .await
    else {
        return false;
    };
    let ok = collected
        .trailers()
        .and_then(|trailers| trailers.get(&GRPC_STATUS))
        .is_some_and(|status| status == "0");
    ok && serving(collected.to_bytes())
}

/// `HealthCheckResponse.ServingStatus` value for "serving".
const SERVING: u64 = 1;

/// Whether a framed `HealthCheckResponse` says `SERVING`: one uncompressed gRPC message whose
/// protobuf field 1 (`status`, a varint) is 1. Unknown fields are skipped, as protobuf says.
fn serving(mut body: Bytes) -> bool {
    if body.len() < 5 || body.get_u8() != 0 {
        return false;
    }
    let length = body.get_u32() as usize;
    if body.len() != length {
        return false;
    }
    let mut status = 0;
    while body.has_remaining() {
        let Some(key) = varint(&mut body) else {
            return false;
        };
        let skipped = match key & 7 {
            0 => match varint(&mut body) {
                Some(value) if key >> 3 == 1 => {
                    status = value;
                    0
                }
                Some(_) => 0,
                None => return false,
            },
            1 => 8,
            2 => match varint(&mut body) {
                Some(length) => length as usize,
                None => return false,
            },
            5 => 4,
            _ => return false,
        };
        if body.remaining() < skipped {
            return false;
        }
        body.advance(skipped);
    }
    status == SERVING
}

/// A protobuf base-128 varint, or None if the bytes end inside one or it runs past 64 bits.
fn varint(body: &mut Bytes) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *body.first()?;
        body.advance(1);
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(message: &[u8]) -> Bytes {
        let mut body = vec![0];
        body.extend_from_slice(&(message.len() as u32).to_be_bytes());
        body.extend_from_slice(message);
        Bytes::from(body)
    }

    #[test]
    fn a_health_response_is_serving_only_with_status_one() {
        assert!(serving(framed(&[0x08, 0x01])));
        // NOT_SERVING, UNKNOWN (the field left out), SERVICE_UNKNOWN.
        assert!(!serving(framed(&[0x08, 0x02])));
        assert!(!serving(framed(&[])));
        assert!(!serving(framed(&[0x08, 0x03])));
        // Unknown fields around it are skipped: a string (2), a fixed64 (1), a fixed32 (5).
        assert!(serving(framed(&[
            0x12, 0x02, b'o', b'k', 0x08, 0x01, 0x19, 1, 2, 3, 4, 5, 6, 7, 8, 0x25, 1, 2, 3, 4
        ])));
    }

    #[test]
    fn a_malformed_health_response_is_not_serving() {
        // Compressed, length that disagrees, truncated varint, a field cut short, bad wire type.
        assert!(!serving(Bytes::from_static(&[1, 0, 0, 0, 2, 0x08, 0x01])));
        assert!(!serving(Bytes::from_static(&[0, 0, 0, 0, 3, 0x08, 0x01])));
        assert!(!serving(framed(&[0x08, 0x81])));
        assert!(!serving(framed(&[0x08, 0x01, 0x12, 0x05, b'x'])));
        assert!(!serving(framed(&[0x08, 0x01, 0x0b])));
        assert!(!serving(Bytes::from_static(&[0, 0])));
    }
}
