//! Self-registration: an instance announces itself to the registry and keeps its lease alive.
//!
//! Registration retries until the registry answers, so a service may start before the registry.
//! Heartbeats go out three times per TTL; if the registry has forgotten the instance (it expired,
//! or the registry restarted) the next heartbeat registers it again.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::model::Registration;
use crate::registry_client::RegistryClient;

pub struct Registrar {
    client: RegistryClient,
    service: String,
    id: String,
    stop: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Registrar {
    /// Registers in the background and keeps the lease alive until [`Registrar::deregister`].
    pub fn start(
        client: RegistryClient,
        service: &str,
        id: &str,
        registration: Registration,
    ) -> Self {
        let stop = Arc::new(Notify::new());
        let task = tokio::spawn(keep_alive(
            client.clone(),
            service.to_string(),
            id.to_string(),
            registration,
            stop.clone(),
        ));
        Self {
            client,
            service: service.into(),
            id: id.into(),
            stop,
            task,
        }
    }

    /// Stops heartbeats and removes the instance, so watchers stop routing to it at once.
    pub async fn deregister(self) {
        self.stop.notify_one();
        let _ = self.task.await;
        match tokio::time::timeout(
            Duration::from_secs(2),
            self.client.deregister(&self.service, &self.id),
        )
        .await
        {
            Ok(Ok(())) => tracing::info!(service = %self.service, id = %self.id, "deregistered"),
            Ok(Err(error)) => tracing::warn!(%error, "could not deregister; the lease will expire"),
            Err(_) => tracing::warn!("deregistration timed out; the lease will expire"),
        }
    }
}

async fn keep_alive(
    client: RegistryClient,
    service: String,
    id: String,
    registration: Registration,
    stop: Arc<Notify>,
) {
    let ttl = Duration::from_secs_f64(registration.ttl_seconds.unwrap_or(3.0));
    let beat = (ttl / 3).max(Duration::from_millis(100));
    let mut registered = false;
    let mut backoff = Duration::from_millis(100);
    loop {
        let outcome = if registered {
            client.heartbeat(&service, &id).await
        } else {
            client
                .register(&service, &id, &registration)
                .await
                .map(|_| true)
        };
        let wait = match outcome {
            Ok(true) => {
                if !registered {
                    tracing::info!(%service, %id, registry = client.base(), "registered");
                }
                registered = true;
                backoff = Duration::from_millis(100);
                beat
            }
            Ok(false) => {
                tracing::warn!(%service, %id, "the registry forgot this instance; registering again");
                registered = false;
                Duration::ZERO
            }
            Err(error) => {
                tracing::warn!(%error, "registry unreachable; retrying");
                registered = false;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                backoff
            }
        };
        tokio::select! {
            _ = stop.notified() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
