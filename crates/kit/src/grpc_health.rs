//! Asking a gRPC server whether it is healthy: the standard health service,
//! `grpc.health.v1.Health/Check` (grpc/doc/health-checking.md), over HTTP/2: in cleartext
//! (h2c) with the mesh off, over mutual TLS with it on ([`Prober::check_meshed`]), where the
//! server must present the certificate of the service it is registered as, as every other
//! internal call checks.
//!
//! A gRPC-only server has no HTTP/1.1 side to answer `GET /healthz`; the health service is what
//! gRPC load balancers, Consul's gRPC checks and Kubernetes' gRPC probes ask instead, so any
//! server that implements it can be checked by the registry (`"check": {"grpc": ""}`) and by
//! the gateway (metadata `health_check = "grpc"`) unchanged.
//!
//! No generated code: the request is one protobuf string field and the answer one enum field,
//! encoded and decoded here by hand.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{CONTENT_TYPE, TE};
use http::{HeaderName, HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use stratus_identity::Expect;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::ClientConfig;

static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// `HealthCheckResponse.ServingStatus` value for "serving".
const SERVING: u64 = 1;
/// Answers bigger than this are not a health response.
const MAX_RESPONSE: usize = 1024;
/// Service names longer than this are refused before any request.
pub const MAX_SERVICE_NAME: usize = 200;

/// An HTTP/2 (prior knowledge) client that keeps one idle connection per server, so a probe
/// costs one request rather than a handshake. Cheap to clone.
#[derive(Clone)]
pub struct Prober {
    client: Client<HttpConnector, Full<Bytes>>,
    connect_timeout: std::time::Duration,
    /// Under the mesh: one HTTP/2 connection per (service, server), kept while it is open.
    meshed: Arc<Mutex<HashMap<(String, String), Sender>>>,
    /// Under the mesh: the TLS client configuration per service expected (ALPN h2).
    configs: Arc<Mutex<HashMap<String, Arc<ClientConfig>>>>,
}

type Sender = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

impl Prober {
    pub fn new(connect_timeout: std::time::Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_max_idle_per_host(1)
            .http2_only(true)
            .build(connector);
        Self {
            client,
            connect_timeout,
            meshed: Arc::default(),
            configs: Arc::default(),
        }
    }

    /// Asks the server at `authority` about `service` ("" is the whole server): `Ok` when it
    /// answers status OK and `SERVING`, else what it said instead. The caller bounds the time.
    pub async fn check(&self, authority: &str, service: &str) -> Result<(), String> {
        let request = request("http", authority, service)?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|error| format!("grpc {authority}: {error}"))?;
        judge(authority, response).await
    }

    /// As [`Prober::check`], over mutual TLS with this process's mesh credentials: the server
    /// at `authority` must hold a certificate naming `instance_of` (the Stratus service it is
    /// registered as), or the probe fails at the handshake. With the mesh off, as `check`.
    pub async fn check_meshed(
        &self,
        instance_of: &str,
        authority: &str,
        service: &str,
    ) -> Result<(), String> {
        let mesh = crate::mesh::current();
        let Some(credentials) = mesh.credentials().filter(|_| mesh.is_on()) else {
            return self.check(authority, service).await;
        };
        let key = (instance_of.to_string(), authority.to_string());
        let kept = self.lock_meshed().get(&key).cloned();
        let mut sender = match kept.filter(|sender| !sender.is_closed()) {
            Some(sender) => sender,
            None => {
                let config = self.config(instance_of, credentials);
                let sender = self.connect(authority, config).await?;
                let mut kept = self.lock_meshed();
                // Connections to instances that are gone have closed: let them go too.
                kept.retain(|_, sender| !sender.is_closed());
                kept.insert(key.clone(), sender.clone());
                sender
            }
        };
        let request = request("https", authority, service)?;
        let outcome = sender
            .send_request(request)
            .await
            .map_err(|error| format!("grpc {authority}: {error}"));
        if outcome.is_err() {
            // A connection that failed a request is not tried again.
            self.lock_meshed().remove(&key);
        }
        judge(authority, outcome?).await
    }

    fn lock_meshed(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Sender>> {
        self.meshed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The client configuration expecting `service`, made once: the credentials in it swap
    /// certificate and bundle in place, so a renewal needs no new configuration.
    fn config(
        &self,
        service: &str,
        credentials: &Arc<stratus_identity::Credentials>,
    ) -> Arc<ClientConfig> {
        let mut configs = self.configs.lock().unwrap_or_else(|p| p.into_inner());
        configs
            .entry(service.to_string())
            .or_insert_with(|| {
                let mut config = credentials.client_config(Expect::Service(service.to_string()));
                config.alpn_protocols = vec![b"h2".to_vec()];
                Arc::new(config)
            })
            .clone()
    }

    /// TCP, the TLS handshake (which checks the server's SPIFFE ID), then HTTP/2.
    async fn connect(&self, authority: &str, config: Arc<ClientConfig>) -> Result<Sender, String> {
        let fail = |error: &dyn std::fmt::Display| format!("grpc {authority}: {error}");
        let tcp = tokio::time::timeout(
            self.connect_timeout,
            tokio::net::TcpStream::connect(authority),
        )
        .await
        .map_err(|_| fail(&"no connection in time"))?
        .map_err(|error| fail(&error))?;
        let _ = tcp.set_nodelay(true);
        let ip = tcp.peer_addr().map_err(|error| fail(&error))?.ip();
        // The certificate names a service, not a host: the address is sent as the name.
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(ServerName::IpAddress(ip.into()), tcp)
            .await
            .map_err(|error| fail(&format!("mutual TLS: {error}")))?;
        let (sender, connection) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tls),
        )
        .await
        .map_err(|error| fail(&error))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }
}

/// The health check request to `authority`, over `scheme`.
fn request(scheme: &str, authority: &str, service: &str) -> Result<Request<Full<Bytes>>, String> {
    let uri = format!("{scheme}://{authority}/grpc.health.v1.Health/Check")
        .parse::<Uri>()
        .map_err(|error| format!("grpc {authority}: {error}"))?;
    Request::post(uri)
        .header(CONTENT_TYPE, HeaderValue::from_static("application/grpc"))
        .header(TE, HeaderValue::from_static("trailers"))
        .body(Full::new(request_body(service)))
        .map_err(|error| format!("grpc {authority}: {error}"))
}

/// `Ok` when the answer is status OK and `SERVING`, else what it said instead.
async fn judge(
    authority: &str,
    response: http::Response<hyper::body::Incoming>,
) -> Result<(), String> {
    if !response.status().is_success() {
        return Err(format!("grpc {authority}: HTTP {}", response.status()));
    }
    // "Trailers-only" (grpc-status among the headers): the call failed at once, or ended
    // with no answer; neither says SERVING.
    if let Some(status) = response.headers().get(&GRPC_STATUS) {
        return Err(format!(
            "grpc {authority}: grpc-status {status:?}, no answer"
        ));
    }
    let collected = Limited::new(response.into_body(), MAX_RESPONSE)
        .collect()
        .await
        .map_err(|error| format!("grpc {authority}: {error}"))?;
    match collected.trailers().and_then(|t| t.get(&GRPC_STATUS)) {
        Some(status) if status == "0" => {}
        Some(status) => return Err(format!("grpc {authority}: grpc-status {status:?}")),
        None => return Err(format!("grpc {authority}: no grpc-status")),
    }
    match serving_status(collected.to_bytes()) {
        Some(SERVING) => Ok(()),
        Some(status) => Err(format!("grpc {authority}: not serving (status {status})")),
        None => Err(format!("grpc {authority}: not a health response")),
    }
}

/// A `HealthCheckRequest { service }` framed as one uncompressed gRPC message.
fn request_body(service: &str) -> Bytes {
    let service = &service.as_bytes()[..service.len().min(MAX_SERVICE_NAME)];
    let mut message = BytesMut::with_capacity(7 + service.len());
    message.put_u8(0);
    if service.is_empty() {
        message.put_u32(0);
    } else {
        // Field 1, wire type 2 (length-delimited); the length fits one varint byte or two.
        let mut length = BytesMut::new();
        put_varint(&mut length, service.len() as u64);
        message.put_u32((1 + length.len() + service.len()) as u32);
        message.put_u8(0x0a);
        message.put_slice(&length);
        message.put_slice(service);
    }
    message.freeze()
}

/// The `status` field of a framed `HealthCheckResponse` (0 when the field is left out, as
/// protobuf's default), or None if the bytes are not one well-formed uncompressed message.
/// Unknown fields are skipped, as protobuf says.
pub fn serving_status(mut body: Bytes) -> Option<u64> {
    if body.len() < 5 || body.get_u8() != 0 {
        return None;
    }
    let length = body.get_u32() as usize;
    if body.len() != length {
        return None;
    }
    let mut status = 0;
    while body.has_remaining() {
        let key = varint(&mut body)?;
        let skip = match key & 7 {
            0 => {
                let value = varint(&mut body)?;
                if key >> 3 == 1 {
                    status = value;
                }
                0
            }
            1 => 8,
            2 => usize::try_from(varint(&mut body)?).ok()?,
            5 => 4,
            _ => return None,
        };
        if body.remaining() < skip {
            return None;
        }
        body.advance(skip);
    }
    Some(status)
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

fn put_varint(out: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        out.put_u8((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
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
    fn the_status_field_is_read_and_unknown_fields_skipped() {
        assert_eq!(serving_status(framed(&[0x08, 0x01])), Some(SERVING));
        assert_eq!(serving_status(framed(&[0x08, 0x02])), Some(2));
        assert_eq!(serving_status(framed(&[])), Some(0));
        // A string (2), a fixed64 (1) and a fixed32 (5) around it.
        let noisy = [
            0x12, 0x02, b'o', b'k', 0x08, 0x01, 0x19, 1, 2, 3, 4, 5, 6, 7, 8, 0x25, 1, 2, 3, 4,
        ];
        assert_eq!(serving_status(framed(&noisy)), Some(SERVING));
    }

    #[test]
    fn malformed_answers_have_no_status() {
        // Compressed; a length that disagrees; a varint cut short; a field cut short; a wire
        // type protobuf does not have; shorter than a frame header.
        assert_eq!(
            serving_status(Bytes::from_static(&[1, 0, 0, 0, 2, 8, 1])),
            None
        );
        assert_eq!(
            serving_status(Bytes::from_static(&[0, 0, 0, 0, 3, 8, 1])),
            None
        );
        assert_eq!(serving_status(framed(&[0x08, 0x81])), None);
        assert_eq!(
            serving_status(framed(&[0x08, 0x01, 0x12, 0x05, b'x'])),
            None
        );
        assert_eq!(serving_status(framed(&[0x08, 0x01, 0x0b])), None);
        assert_eq!(serving_status(Bytes::from_static(&[0, 0])), None);
    }

    #[test]
    fn the_request_names_the_service_as_field_one() {
        assert_eq!(&request_body("")[..], &[0, 0, 0, 0, 0]);
        assert_eq!(
            &request_body("shop.Orders")[..],
            &[&[0, 0, 0, 0, 13, 0x0a, 11][..], b"shop.Orders"].concat()[..]
        );
        let long = "s".repeat(150);
        let body = request_body(&long);
        // 150 needs a two-byte varint: 0x96 0x01.
        assert_eq!(&body[5..8], &[0x0a, 0x96, 0x01]);
        assert_eq!(body.len(), 5 + 3 + 150);
    }
}
