//! Active health checks: the gateway asks every instance of every service its route table names
//! whether it is healthy on an interval, and takes an instance out of rotation after `unhealthy`
//! failures in a row, back after `healthy` successes. Instances of services no route names get
//! no probes: the catalog holds every service of the system, and probing all of it made a
//! gateway's cost grow with the whole system instead of with what it serves. The route table is
//! read again every round, so a reload that adds a service starts its checks within one interval. This catches an instance that is up but broken before a client request
//! finds out, and it complements the passive checks (the circuit breaker), which only see
//! instances that get traffic.
//!
//! How an instance is asked is its own to say, in its registration's metadata `health_check`
//! (as a Consul service names its check's kind):
//!
//! | `health_check` | the probe | passes when |
//! |---|---|---|
//! | `http` (or absent) | `GET /healthz` over HTTP/1.1 | a 2xx |
//! | `grpc` | `grpc.health.v1.Health/Check` over HTTP/2 (mutual TLS with the mesh on, else h2c), for the whole server | `SERVING` |
//! | `tcp` | a TCP connection | it opens |
//!
//! A gRPC-only server has no HTTP/1.1 side to answer `/healthz`; probed that way it would never
//! be taken for healthy (`stratus_kit::grpc_health` asks the standard health service instead).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use stratus_kit::grpc_health::Prober;

use crate::upstream::check::Check;
use crate::upstream::instances::{Endpoint, Upstreams};

#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy: u32,
    pub healthy: u32,
}

/// The probes' clients: HTTP/1.1 for `/healthz`, HTTP/2 with prior knowledge for gRPC. Each
/// keeps one idle connection per instance, so a probe costs a request, not a handshake.
#[derive(Clone)]
struct Clients {
    http1: Client<HttpConnector, Full<Bytes>>,
    grpc: Prober,
}

impl Clients {
    fn new(settings: &Settings) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(settings.timeout));
        connector.set_nodelay(true);
        Self {
            http1: Client::builder(hyper_util::rt::TokioExecutor::new())
                .pool_max_idle_per_host(1)
                .build(connector),
            grpc: Prober::new(settings.timeout),
        }
    }
}

/// Runs the checks forever. `routed` names the services the route table sends traffic to now
/// (sorted, as [`crate::discovery::services_of`] gives them).
pub async fn run<F>(upstreams: Arc<Upstreams>, settings: Settings, routed: F)
where
    F: Fn() -> Vec<String> + Send + 'static,
{
    let clients = Clients::new(&settings);
    let mut ticker = tokio::time::interval(settings.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let routed = routed();
        let snapshot = upstreams.snapshot();
        let endpoints: Vec<&Arc<Endpoint>> = snapshot
            .iter()
            .filter(|(service, _)| routed.binary_search(service).is_ok())
            .flat_map(|(_, pool)| pool.endpoints.iter())
            .collect();
        // Probe every routed instance, in waves over the first half of the interval, and wait
        // for all before the next round.
        let plan = Waves::for_round(endpoints.len(), settings.interval);
        let mut round = tokio::task::JoinSet::new();
        for (n, wave) in endpoints.chunks(plan.size).enumerate() {
            if n > 0 {
                tokio::time::sleep(plan.gap).await;
            }
            for endpoint in wave {
                round.spawn(check(clients.clone(), Arc::clone(endpoint), settings));
            }
        }
        while round.join_next().await.is_some() {}
    }
}

/// How one round's probes are started: in waves of `size`, `gap` apart.
///
/// A gateway with a few dozen instances probes them all at once. With thousands, one burst a
/// second held the runtime the registry watch shares for hundreds of milliseconds:
/// `bench/gateway-scale.sh` measured a registry change taking 161 ms (p50) to reach routing
/// with 10,000 instances probed every second, against under a millisecond with 2. Waves of at
/// most [`Waves::MOST_AT_ONCE`] spread over half the interval leave the watch a turn between
/// them, and still end each round well before the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Waves {
    size: usize,
    gap: Duration,
}

impl Waves {
    /// The most probes started together.
    const MOST_AT_ONCE: usize = 100;
    /// The most waves a round is cut into (so a wave's gap stays a useful sleep).
    const MOST_WAVES: usize = 50;

    fn for_round(endpoints: usize, interval: Duration) -> Self {
        let waves = endpoints
            .div_ceil(Self::MOST_AT_ONCE)
            .clamp(1, Self::MOST_WAVES);
        Self {
            size: endpoints.div_ceil(waves).max(1),
            gap: interval / 2 / u32::try_from(waves).unwrap_or(1),
        }
    }
}

async fn check(clients: Clients, endpoint: Arc<Endpoint>, settings: Settings) {
    let authority = endpoint.authority.as_str();
    let probe = async {
        match endpoint.check {
            Check::Http if stratus_kit::mesh::current().is_on() => {
                meshed_healthz(&endpoint.service, authority).await
            }
            Check::Http => http_healthz(&clients.http1, authority).await,
            // Over mutual TLS with the mesh on (the instance's certificate must name its
            // service), h2c without.
            Check::Grpc => clients
                .grpc
                .check_meshed(&endpoint.service, authority, "")
                .await
                .is_ok(),
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

/// `GET /healthz` over mutual TLS, from an instance whose certificate names `service`.
async fn meshed_healthz(service: &str, authority: &str) -> bool {
    let Ok(client) = stratus_kit::mesh::current().client(service) else {
        return false;
    };
    let url = format!("https://{authority}/healthz");
    matches!(client.get(url).send().await, Ok(response) if response.status().is_success())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_round_starts_at_once_and_a_large_one_in_waves_over_half_the_interval() {
        let second = Duration::from_secs(1);
        assert_eq!(Waves::for_round(0, second).size, 1);
        assert_eq!(Waves::for_round(30, second).size, 30);
        assert_eq!(Waves::for_round(100, second).size, 100);
        let some = Waves::for_round(250, second);
        assert_eq!((some.size, 250usize.div_ceil(some.size)), (84, 3));
        let many = Waves::for_round(10_000, second);
        assert_eq!(
            many,
            Waves {
                size: 200,
                gap: Duration::from_millis(10)
            }
        );
        // The last wave starts before half the interval has passed.
        assert!(many.gap * (10_000u32.div_ceil(200) - 1) < second / 2);
    }
}
