//! A small HTTP client for the registry API.

use std::time::Duration;

use anyhow::Context;
use reqwest::StatusCode;

use crate::deltas::{DeltaStream, Resume};
use crate::model::{Catalog, Instance, Registration, ServiceInstances};

#[derive(Clone)]
pub struct RegistryClient {
    base: String,
    http: reqwest::Client,
}

impl RegistryClient {
    pub fn new(base: impl Into<String>) -> anyhow::Result<Self> {
        crate::install_crypto_provider();
        let mesh = crate::mesh::current();
        let http = mesh
            .client_builder("registry")
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .context("building the registry client")?;
        Ok(Self {
            base: mesh.url(base.into().trim_end_matches('/')),
            http,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn instance_url(&self, service: &str, id: &str) -> String {
        format!("{}/v1/services/{service}/instances/{id}", self.base)
    }

    pub async fn register(
        &self,
        service: &str,
        id: &str,
        registration: &Registration,
    ) -> anyhow::Result<Instance> {
        let response = self
            .http
            .put(self.instance_url(service, id))
            .timeout(Duration::from_secs(3))
            .json(registration)
            .send()
            .await
            .with_context(|| format!("registering {service}/{id} at {}", self.base))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            anyhow::bail!("the registry refused {service}/{id}: {status} {body}");
        }
        response
            .json()
            .await
            .context("reading the registry's answer")
    }

    /// Renews the lease. `Ok(false)` means the registry no longer knows the instance (it expired
    /// or the registry restarted) and it must register again.
    pub async fn heartbeat(&self, service: &str, id: &str) -> anyhow::Result<bool> {
        let response = self
            .http
            .put(format!("{}/heartbeat", self.instance_url(service, id)))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .context("sending a heartbeat")?;
        match response.status() {
            status if status.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            status => anyhow::bail!("heartbeat answered {status}"),
        }
    }

    pub async fn deregister(&self, service: &str, id: &str) -> anyhow::Result<()> {
        self.http
            .delete(self.instance_url(service, id))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .context("deregistering")?;
        Ok(())
    }

    /// One service's instances, now.
    pub async fn service(&self, name: &str) -> anyhow::Result<ServiceInstances> {
        let response = self
            .http
            .get(format!("{}/v1/services/{name}", self.base))
            .timeout(Duration::from_secs(3))
            .send()
            .await
            .with_context(|| format!("looking up {name} in the registry"))?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(ServiceInstances {
                index: 0,
                name: name.into(),
                instances: vec![],
            });
        }
        response
            .error_for_status()?
            .json()
            .await
            .context("reading the registry's answer")
    }

    /// Every service, returning as soon as the registry's index passes `after` (a blocking
    /// query), or after `wait` with the same index.
    pub async fn watch(&self, after: u64, wait: Duration) -> anyhow::Result<Catalog> {
        let response = self
            .http
            .get(format!(
                "{}/v1/services?index={after}&wait={}ms",
                self.base,
                wait.as_millis()
            ))
            .timeout(wait + Duration::from_secs(5))
            .send()
            .await
            .context("watching the registry")?;
        response
            .error_for_status()?
            .json()
            .await
            .context("reading the registry's answer")
    }

    /// Only `services` (`GET /v1/services?services=a,b`), returning as soon as one of them
    /// changes past `after` (a blocking query), or after `wait` with the same index. `None` when
    /// the registry refuses the query (400: one that predates `services=`).
    pub async fn watch_services(
        &self,
        after: u64,
        wait: Duration,
        services: &[String],
    ) -> anyhow::Result<Option<Catalog>> {
        let response = self
            .http
            .get(format!(
                "{}/v1/services?services={}&index={after}&wait={}ms",
                self.base,
                services.join(","),
                wait.as_millis()
            ))
            .timeout(wait + Duration::from_secs(5))
            .send()
            .await
            .context("watching the registry")?;
        if response.status() == StatusCode::BAD_REQUEST {
            return Ok(None);
        }
        let catalog = response
            .error_for_status()?
            .json()
            .await
            .context("reading the registry's answer")?;
        Ok(Some(catalog))
    }

    /// Opens the incremental watch (`GET /v1/watch?deltas=true`) on `services`, or on every
    /// service when `None`: a snapshot first, or only the changes after `resume` when the
    /// registry still keeps them. `None` when the registry has no such route (404).
    pub async fn watch_deltas(
        &self,
        services: Option<&[String]>,
        resume: Option<&Resume>,
    ) -> anyhow::Result<Option<DeltaStream>> {
        let resumed = resume.map(Resume::query).unwrap_or_default();
        let named = services
            .map(|services| format!("&services={}", services.join(",")))
            .unwrap_or_default();
        let response = self
            .http
            .get(format!(
                "{}/v1/watch?deltas=true{named}{resumed}",
                self.base
            ))
            .send()
            .await
            .context("watching the registry")?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let response = response
            .error_for_status()
            .context("watching the registry")?;
        Ok(Some(DeltaStream::new(response)))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::extract::RawQuery;
    use axum::routing::get;
    use axum::Router;

    use super::RegistryClient;
    use crate::model::Catalog;

    /// A registry that knows `services=` (answers with the query it got in `epoch`) or, as
    /// one older than it, refuses the query with a 400.
    async fn registry(knows_services: bool) -> (String, tokio::task::JoinHandle<()>) {
        let app = Router::new().route(
            "/v1/services",
            get(move |RawQuery(query): RawQuery| async move {
                let query = query.unwrap_or_default();
                if query.contains("services=") && !knows_services {
                    return Err(axum::http::StatusCode::BAD_REQUEST);
                }
                Ok(axum::Json(Catalog {
                    index: 3,
                    epoch: query,
                    ..Catalog::default()
                }))
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        (url, task)
    }

    #[tokio::test]
    async fn watching_some_services_names_them_and_an_older_registry_says_none() {
        let services = ["auth".to_string(), "catalog".to_string()];
        let (url, server) = registry(true).await;
        let client = RegistryClient::new(url).unwrap();
        let answer = client
            .watch_services(2, Duration::from_millis(100), &services)
            .await
            .unwrap()
            .expect("an answer");
        assert_eq!(answer.epoch, "services=auth,catalog&index=2&wait=100ms");
        server.abort();

        let (url, server) = registry(false).await;
        let client = RegistryClient::new(url).unwrap();
        let refused = client
            .watch_services(2, Duration::from_millis(100), &services)
            .await
            .unwrap();
        assert!(refused.is_none(), "a 400 means: follow the whole catalog");
        server.abort();
    }
}
