//! Layer-4 load balancing: whole TCP connections spread across a service's instances.
//!
//! Beside the HTTP (layer-7) gateway, to show the difference the seeds draw: here the gateway
//! sees only connections, not requests. It cannot route by path, check tokens, retry a request
//! or add `x-served-by`; it picks an instance per connection (round robin over the live ones),
//! fails over if the connection is refused, and then copies bytes both ways. Every request on a
//! kept-alive connection goes to the same instance.
//!
//! It stays plain TCP when the gateway holds workload credentials for mutual TLS to the
//! instances (`upstream_tls.rs`). The gateway reads nothing of these connections, so it cannot
//! vouch for who is on the other end: were it to wrap them in its own TLS, every instance would
//! see the gateway's identity on bytes from anyone on the internet, and an L4 port would launder
//! outside traffic into mesh traffic. A client that needs TLS to the instance brings its own,
//! end to end through the copy (TLS passthrough); an instance that requires client certificates
//! then checks that client's, not the gateway's.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};

use crate::route::routes::TcpRoute;
use crate::upstream::balance::Balance;
use crate::upstream::instances::Upstreams;

/// Instances tried per connection before giving up on it.
const ATTEMPTS: usize = 3;

pub async fn bind(route: &TcpRoute) -> anyhow::Result<TcpListener> {
    TcpListener::bind(route.listen)
        .await
        .with_context(|| format!("binding the TCP listener {}", route.listen))
}

pub async fn serve(
    listener: TcpListener,
    service: String,
    upstreams: Arc<Upstreams>,
    connect_timeout: Duration,
) {
    let balance = Balance::default();
    let connections =
        metrics::counter!("gateway_l4_connections_total", "service" => service.clone());
    loop {
        let (mut client, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        connections.increment(1);
        // As on the upstream side: without it, a response larger than one write waits for the
        // client's delayed ACK (40 ms a request) before its last segment leaves.
        let _ = client.set_nodelay(true);
        let upstreams = upstreams.clone();
        let service = service.clone();
        let balance = balance.clone();
        tokio::spawn(async move {
            let mut tried: Option<String> = None;
            for _ in 0..ATTEMPTS {
                let Some(endpoint) = upstreams
                    .pool(&service)
                    .and_then(|pool| pool.pick(&balance, None, tried.as_deref()))
                else {
                    break;
                };
                let target = endpoint.authority.as_str().to_string();
                match tokio::time::timeout(connect_timeout, TcpStream::connect(&target)).await {
                    Ok(Ok(mut upstream)) => {
                        let _ = upstream.set_nodelay(true);
                        let guard = endpoint.start();
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                        drop(guard);
                        return;
                    }
                    _ => {
                        tracing::warn!(%service, instance = %endpoint.id, "L4 connect failed; trying another instance");
                        endpoint.trip();
                        tried = Some(endpoint.id.clone());
                    }
                }
            }
            tracing::warn!(%service, %peer, "no instance accepted the connection");
        });
    }
}
