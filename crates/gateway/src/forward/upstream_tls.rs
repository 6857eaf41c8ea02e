//! Mutual TLS to the instances: the gateway presents its workload certificate and accepts an
//! instance only if its certificate names the service the gateway meant to reach.
//!
//! Given the gateway's [`Credentials`], each new upstream connection (HTTP/1.1 or HTTP/2) runs
//! a TLS 1.3 handshake after TCP connects, with the client configuration for the endpoint's
//! service: `Credentials::client_config(Expect::Service(service))`, which checks the instance's
//! certificate against the trust bundle and its SPIFFE ID
//! (`spiffe://<trust domain>/service/<service>`), never a host name. The server name sent is the
//! instance's IP address, for that reason. The configurations are built once per service and
//! ALPN and kept: the credentials inside them swap certificate and bundle in place, so a renewal
//! is used by the next new connection without rebuilding anything. A pooled connection keeps
//! the certificates it was opened with (TLS has no other way); the pools close idle
//! connections within a minute anyway.
//!
//! A failed handshake is a failed connection, for the balancer and the breaker as for a refused
//! one: the instance is not the service it is registered as, is not in the mesh (plaintext),
//! or refused the gateway's certificate. It never saw the request, so the request may go to
//! another instance whatever its method. Each is logged and counted in
//! `gateway_upstream_tls_failures_total{service}`.
//!
//! A TLS 1.3 server judges the client's certificate after the client has finished its side of
//! the handshake, so an instance refusing the gateway's certificate is heard of only at the
//! first read, as an alert, with the request already written. The server stopped at the
//! certificate and decrypted none of it, so that too counts as a connection that failed before
//! the request ([`is_tls_error`] tells the pools which errors are rustls's).

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use stratus_identity::{Credentials, Expect};
use tokio::net::TcpStream;

use crate::forward::error::SendError;
use crate::forward::unbuffered_tls::UnbufferedTls;
use crate::forward::upstream_io::UpstreamStream;
use crate::upstream::instances::Endpoint;

/// What a connection will speak once TLS is up, offered by ALPN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alpn {
    Http1,
    Http2,
}

/// The two client configurations of one service.
struct Configs {
    http1: Arc<ClientConfig>,
    http2: Arc<ClientConfig>,
}

/// The gateway's side of mutual TLS to the instances, shared by every worker's pools.
pub struct UpstreamTls {
    credentials: Arc<Credentials>,
    /// Per service, built the first time the gateway connects to one of its instances. Taken
    /// once per new connection, never per request.
    configs: Mutex<HashMap<String, Configs>>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("credentials", &self.credentials)
            .finish()
    }
}

impl UpstreamTls {
    pub fn new(credentials: Arc<Credentials>) -> Arc<Self> {
        Arc::new(Self {
            credentials,
            configs: Mutex::new(HashMap::new()),
        })
    }

    pub fn credentials(&self) -> &Arc<Credentials> {
        &self.credentials
    }

    /// The client configuration for connections to `service`'s instances.
    pub fn config(&self, service: &str, alpn: Alpn) -> Arc<ClientConfig> {
        let mut configs = self.configs.lock().unwrap_or_else(|p| p.into_inner());
        let configs = configs.entry(service.to_string()).or_insert_with(|| {
            let build = |protocol: &[u8]| {
                let mut config = self
                    .credentials
                    .client_config(Expect::Service(service.to_string()));
                config.alpn_protocols = vec![protocol.to_vec()];
                Arc::new(config)
            };
            Configs {
                http1: build(b"http/1.1"),
                http2: build(b"h2"),
            }
        });
        match alpn {
            Alpn::Http1 => configs.http1.clone(),
            Alpn::Http2 => configs.http2.clone(),
        }
    }

    /// Runs the TLS handshake on a new connection to `endpoint`, within `timeout`.
    pub async fn connect(
        &self,
        stream: TcpStream,
        endpoint: &Endpoint,
        alpn: Alpn,
        timeout: Duration,
    ) -> Result<UpstreamStream, SendError> {
        // The verifier checks the SPIFFE ID and ignores the name; the address is the honest one.
        let address = stream.peer_addr().map_err(|source| SendError::Connect {
            authority: endpoint.authority.to_string(),
            source,
        })?;
        let name = ServerName::IpAddress(address.ip().into());
        let config = self.config(&endpoint.service, alpn);
        match tokio::time::timeout(timeout, UnbufferedTls::connect(stream, config, name)).await {
            Ok(Ok(tls)) => Ok(UpstreamStream::Tls(Box::new(tls))),
            Ok(Err(source)) => Err(self.failed(endpoint, source)),
            Err(_) => Err(self.failed(
                endpoint,
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the TLS handshake did not finish within {timeout:?}"),
                ),
            )),
        }
    }

    /// Logs and counts a failed handshake with `endpoint`; the error the pools return for it.
    pub(crate) fn failed(&self, endpoint: &Endpoint, source: io::Error) -> SendError {
        refused(
            &endpoint.service,
            &endpoint.id,
            endpoint.authority.as_str(),
            &source,
        );
        SendError::Tls {
            authority: endpoint.authority.to_string(),
            source,
        }
    }
}

/// Logs and counts mutual TLS failing with an instance of `service`.
pub(crate) fn refused(
    service: &str,
    instance: &str,
    authority: &str,
    error: &dyn std::fmt::Display,
) {
    tracing::warn!(
        %service,
        %instance,
        %authority,
        %error,
        "mutual TLS with an instance failed: it is not the service it is registered as, \
         it does not speak TLS, or it refused the gateway's certificate; taken as a failed \
         connection"
    );
    metrics::counter!("gateway_upstream_tls_failures_total", "service" => service.to_string())
        .increment(1);
}

/// Whether `error` is TLS failing (a refused certificate, an alert from the peer, a record
/// that does not decrypt) rather than the connection itself.
pub fn is_tls_error(error: &io::Error) -> bool {
    error
        .get_ref()
        .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
}

#[cfg(test)]
pub(crate) mod tests;
