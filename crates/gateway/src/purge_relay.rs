//! Purges reach every gateway: a purge made at one (by a write through it, or its admin API)
//! is passed to every other gateway the registry lists, so a write through any of them shows on
//! the next read through all of them.
//!
//! Gateways register as the service `gateway` with their admin port in the metadata
//! (`metrics_port`); a purge goes to each one's `POST /v1/cache/purge` with `relayed: true` (so
//! it is not passed on again), over mutual TLS as the gateway's own identity, which that
//! endpoint takes besides an operator's. The request path only queues it (a bounded queue, never
//! waited on); a task beside the request path sends it, with a short timeout per peer. A purge
//! that cannot be queued or delivered is counted (`gateway_cache_purges_relayed_total{result}`):
//! that peer keeps the old answer until its lifetime ends, as a CDN's edge would after a lost
//! purge. Peers are read from the registry for each batch, so a gateway that joins gets the next
//! purge.

use std::time::Duration;

use serde_json::json;
use stratus_kit::model::METRICS_PORT;
use stratus_kit::registry_client::RegistryClient;
use tokio::sync::mpsc;

use crate::edge_cache::Purge;

/// Purges waiting to be sent; beyond this, new ones are dropped (and counted).
const QUEUE: usize = 1024;
/// How long one peer may take to take a purge.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

pub struct PurgeRelay {
    queue: mpsc::Sender<Purge>,
}

impl PurgeRelay {
    /// Starts the sending task on the current runtime. `own_id` is this gateway's instance id.
    pub fn start(registry: RegistryClient, own_id: String) -> anyhow::Result<Self> {
        let client = stratus_kit::mesh::current().client("gateway")?;
        let (queue, received) = mpsc::channel(QUEUE);
        tokio::spawn(send(registry, client, own_id, received));
        Ok(Self { queue })
    }

    /// Queues `purge` for every other gateway; never waits.
    pub fn relay(&self, purge: Purge) {
        if self.queue.try_send(purge).is_err() {
            metrics::counter!("gateway_cache_purges_relayed_total", "result" => "dropped")
                .increment(1);
        }
    }
}

async fn send(
    registry: RegistryClient,
    client: reqwest::Client,
    own_id: String,
    mut received: mpsc::Receiver<Purge>,
) {
    let mesh = stratus_kit::mesh::current();
    while let Some(first) = received.recv().await {
        let mut batch = vec![first];
        while let Ok(more) = received.try_recv() {
            batch.push(more);
        }
        let peers = match registry.service("gateway").await {
            Ok(service) => service.instances,
            Err(error) => {
                tracing::warn!(%error, purges = batch.len(), "edge cache purges not passed on: the registry did not answer");
                metrics::counter!("gateway_cache_purges_relayed_total", "result" => "failed")
                    .increment(batch.len() as u64);
                continue;
            }
        };
        for peer in peers.iter().filter(|peer| peer.id != own_id) {
            let Some(port) = peer.metadata.get(METRICS_PORT) else {
                continue;
            };
            let host = if peer.address.contains(':') {
                format!("[{}]", peer.address)
            } else {
                peer.address.clone()
            };
            let url = format!("{}://{host}:{port}/v1/cache/purge", mesh.scheme());
            for purge in &batch {
                let body = match purge {
                    Purge::Path(path) => json!({ "path": path, "relayed": true }),
                    Purge::Tags(tags) => json!({ "tags": tags, "relayed": true }),
                    Purge::All => json!({ "all": true, "relayed": true }),
                };
                let sent = client
                    .post(&url)
                    .timeout(SEND_TIMEOUT)
                    .json(&body)
                    .send()
                    .await;
                let result = match sent {
                    Ok(response) if response.status().is_success() => "ok",
                    Ok(response) => {
                        tracing::warn!(peer = %peer.id, status = %response.status(), "a gateway refused a relayed purge");
                        "failed"
                    }
                    Err(error) => {
                        tracing::warn!(peer = %peer.id, %error, "a relayed purge did not reach a gateway");
                        "failed"
                    }
                };
                metrics::counter!("gateway_cache_purges_relayed_total", "result" => result)
                    .increment(1);
            }
        }
    }
}
