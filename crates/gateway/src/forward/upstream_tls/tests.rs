//! The upstream pools against real TLS 1.3 instances on loopback: a rustls server with
//! `Credentials::server_config(Mode::Required)` (as every meshed instance will be), serving
//! HTTP/1.1, HTTP/2 and an upgrade with hyper. Certificates come from an authority made in
//! memory, as in `stratus-identity`'s own tests.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use stratus_identity::tls::peer_id;
use stratus_identity::{Authority, Credentials, Mode, SpiffeId};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::*;
use crate::forward::client::{ConnectionPool as Pool, PooledBody, UpstreamUpgrade};
use crate::forward::client_h2::{Failure, H2Pool};
use crate::upstream::instances::tests::endpoint_of;

pub(crate) const TD: &str = "stratus.local";
const HOUR: Duration = Duration::from_secs(3600);
const SECOND: Duration = Duration::from_secs(1);

/// Issues `service` a new certificate from `authority` into `credentials`; its leaf, DER.
fn certify(credentials: &Credentials, authority: &Authority, service: &str) -> Vec<u8> {
    let id = SpiffeId::service(TD, service).unwrap();
    let issued = authority
        .issue_with_key(&id, HOUR, OffsetDateTime::now_utc())
        .unwrap();
    credentials
        .set_certificate(
            &issued.certificate,
            issued.private_key.as_deref().unwrap(),
            Some(&id),
        )
        .unwrap();
    CertificateDer::pem_slice_iter(issued.certificate.as_bytes())
        .next()
        .unwrap()
        .unwrap()
        .as_ref()
        .to_vec()
}

/// Credentials for `service`, certified by `authority`, trusting `authority`.
pub(crate) fn workload(authority: &Authority, service: &str) -> Arc<Credentials> {
    let credentials = Credentials::new(TD, &authority.bundle_pem()).unwrap();
    certify(&credentials, authority, service);
    credentials
}

/// A meshed instance: TLS with client certificates required, then hyper (HTTP/1.1 or HTTP/2,
/// upgrades allowed). Each answer says the HTTP version and the client's SPIFFE ID; an
/// upgrade request gets a 101 and its bytes echoed.
struct Instance {
    port: u16,
    /// Finished handshakes.
    handshakes: Arc<AtomicUsize>,
    /// The leaf certificate each client presented, in the order of their connections.
    clients: Arc<Mutex<Vec<Vec<u8>>>>,
    accepting: tokio::task::JoinHandle<()>,
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

async fn instance(credentials: &Arc<Credentials>) -> Instance {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = TlsAcceptor::from(Arc::new(credentials.server_config(Mode::Required)));
    let handshakes = Arc::new(AtomicUsize::new(0));
    let clients = Arc::new(Mutex::new(Vec::new()));
    let (done, seen) = (handshakes.clone(), clients.clone());
    let accepting = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, done, seen) = (acceptor.clone(), done.clone(), seen.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                done.fetch_add(1, Ordering::SeqCst);
                let certificates = tls.get_ref().1.peer_certificates();
                let peer = peer_id(certificates, TD).map_or("nobody".to_string(), |id| id.uri());
                if let Some(leaf) = certificates.and_then(|chain| chain.first()) {
                    seen.lock().unwrap().push(leaf.as_ref().to_vec());
                }
                let service = service_fn(move |request| answer(request, peer.clone()));
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    Instance {
        port,
        handshakes,
        clients,
        accepting,
    }
}

async fn answer(
    mut request: Request<Incoming>,
    peer: String,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.headers().contains_key(http::header::UPGRADE) {
        let upgrading = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            let Ok(upgraded) = upgrading.await else {
                return;
            };
            let mut io = TokioIo::new(upgraded);
            let mut buf = [0u8; 1024];
            while let Ok(n @ 1..) = io.read(&mut buf).await {
                if io.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        });
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        response
            .headers_mut()
            .insert(http::header::UPGRADE, "websocket".parse().unwrap());
        response
            .headers_mut()
            .insert(http::header::CONNECTION, "upgrade".parse().unwrap());
        return Ok(response);
    }
    let said = format!("{:?} {peer}", request.version());
    Ok(Response::new(Full::new(Bytes::from(said))))
}

fn get(path: &str) -> Request<Bytes> {
    let mut request = Request::new(Bytes::new());
    *request.uri_mut() = path.parse().unwrap();
    request
}

async fn body(response: Response<PooledBody>) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// What `gateway_upstream_tls_failures_total` says for `service` (each test its own service,
/// as the recorder is the process's).
fn tls_failures(service: &str) -> u64 {
    let text = stratus_kit::metrics::install().render();
    let line = format!("gateway_upstream_tls_failures_total{{service=\"{service}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(line.as_str()))
        .map_or(0, |n| n.trim().parse().unwrap())
}

struct Mesh {
    authority: Authority,
    gateway: Arc<Credentials>,
    tls: Arc<UpstreamTls>,
}

fn mesh() -> Mesh {
    stratus_kit::metrics::install();
    let authority = Authority::create(TD, OffsetDateTime::now_utc()).unwrap();
    let gateway = workload(&authority, "gateway");
    let tls = UpstreamTls::new(gateway.clone());
    Mesh {
        authority,
        gateway,
        tls,
    }
}

impl Mesh {
    fn pool(&self) -> Arc<Pool> {
        Pool::with_tls(SECOND, 30 * SECOND, Some(self.tls.clone()))
    }
}

#[tokio::test]
async fn http1_over_mutual_tls_reuses_one_connection() {
    let mesh = mesh();
    let catalog = instance(&workload(&mesh.authority, "catalog")).await;
    let endpoint = endpoint_of("catalog", catalog.port);
    let pool = mesh.pool();
    for _ in 0..5 {
        let response = pool.send(&endpoint, (&get("/")).into()).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            body(response).await,
            "HTTP/1.1 spiffe://stratus.local/service/gateway",
            "the instance saw the gateway's certificate"
        );
        assert_eq!(pool.idle_count(), 1);
    }
    assert_eq!(
        catalog.handshakes.load(Ordering::SeqCst),
        1,
        "one handshake"
    );
    // A body larger than a TLS record (16 KiB) both ways, on the same connection.
    let mut post = get("/upload");
    *post.method_mut() = Method::POST;
    *post.body_mut() = Bytes::from(vec![b'x'; 100_000]);
    let response = pool.send(&endpoint, (&post).into()).await.unwrap();
    assert_eq!(response.status(), 200);
    body(response).await;
    assert_eq!(catalog.handshakes.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn the_client_configuration_is_built_once_per_service() {
    let mesh = mesh();
    let first = mesh.tls.config("catalog", Alpn::Http1);
    assert!(Arc::ptr_eq(
        &first,
        &mesh.tls.config("catalog", Alpn::Http1)
    ));
    assert_eq!(first.alpn_protocols, [b"http/1.1".to_vec()]);
    let h2 = mesh.tls.config("catalog", Alpn::Http2);
    assert_eq!(h2.alpn_protocols, [b"h2".to_vec()]);
    assert!(!Arc::ptr_eq(
        &first,
        &mesh.tls.config("orders", Alpn::Http1)
    ));
}

#[tokio::test]
async fn an_upgrade_carries_the_tls_stream() {
    let mesh = mesh();
    let catalog = instance(&workload(&mesh.authority, "catalog")).await;
    let endpoint = endpoint_of("catalog", catalog.port);
    let pool = mesh.pool();
    let mut request = get("/ws");
    let headers = request.headers_mut();
    headers.insert(http::header::UPGRADE, "websocket".parse().unwrap());
    headers.insert(http::header::CONNECTION, "upgrade".parse().unwrap());
    let mut response = pool.send(&endpoint, (&request).into()).await.unwrap();
    assert_eq!(response.status(), 101);
    let upgrade = response
        .extensions_mut()
        .remove::<UpstreamUpgrade>()
        .unwrap();
    let (mut stream, leftover) = upgrade.take().unwrap();
    assert!(stream.is_tls(), "{stream:?}");
    assert!(leftover.is_empty());
    stream.write_all(b"\x81\x04ping").await.unwrap();
    let mut echo = [0u8; 6];
    tokio::time::timeout(5 * SECOND, stream.read_exact(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echo, b"\x81\x04ping");
    assert_eq!(pool.idle_count(), 0, "an upgraded connection is not pooled");
}

#[tokio::test]
async fn an_instance_naming_another_service_is_a_failed_connection() {
    let mesh = mesh();
    // An instance with a good certificate, for `auth`, registered as (or found for) `ledger`.
    let impostor = instance(&workload(&mesh.authority, "auth")).await;
    let endpoint = endpoint_of("ledger", impostor.port);
    let pool = mesh.pool();
    let error = pool.send(&endpoint, (&get("/")).into()).await.unwrap_err();
    assert!(error.is_connect(), "{error}");
    assert!(matches!(error, SendError::Tls { .. }), "{error}");
    assert!(
        error.to_string().contains("service/auth"),
        "says what it found: {error}"
    );
    assert_eq!(tls_failures("ledger"), 1);
    assert_eq!(impostor.handshakes.load(Ordering::SeqCst), 0);
    assert_eq!(pool.idle_count(), 0);
}

#[tokio::test]
async fn a_plaintext_instance_is_a_failed_connection() {
    let mesh = mesh();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let plain = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
            let _ = stream
                .write_all(
                    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )
                .await;
        }
    });
    let pool = mesh.pool();
    let error = pool
        .send(&endpoint_of("plain-text", port), (&get("/")).into())
        .await
        .unwrap_err();
    plain.abort();
    assert!(error.is_connect(), "{error}");
    assert!(matches!(error, SendError::Tls { .. }), "{error}");
    assert_eq!(tls_failures("plain-text"), 1);
}

#[tokio::test]
async fn an_instance_refusing_the_gateways_certificate_is_a_failed_connection() {
    let mesh = mesh();
    let untrusting = instance(&workload(&mesh.authority, "untrusting")).await;
    // A gateway that trusts the right roots but whose own certificate another authority made:
    // the instance refuses it once the gateway's side of the handshake is done.
    let rogue = Authority::create(TD, OffsetDateTime::now_utc()).unwrap();
    let stranger = Credentials::new(TD, &mesh.authority.bundle_pem()).unwrap();
    certify(&stranger, &rogue, "gateway");
    let pool = Pool::with_tls(SECOND, 30 * SECOND, Some(UpstreamTls::new(stranger)));
    let error = pool
        .send(
            &endpoint_of("untrusting", untrusting.port),
            (&get("/")).into(),
        )
        .await
        .unwrap_err();
    assert!(error.is_connect(), "{error}");
    assert!(matches!(error, SendError::Tls { .. }), "{error}");
    assert!(
        error.to_string().contains("received fatal alert"),
        "{error}"
    );
    assert_eq!(tls_failures("untrusting"), 1);
    assert_eq!(untrusting.handshakes.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_renewed_certificate_is_shown_on_the_next_new_connection() {
    let mesh = mesh();
    let catalog = instance(&workload(&mesh.authority, "catalog")).await;
    let endpoint = endpoint_of("catalog", catalog.port);
    let pool = mesh.pool();
    body(pool.send(&endpoint, (&get("/")).into()).await.unwrap()).await;
    let renewed = certify(&mesh.gateway, &mesh.authority, "gateway");
    // The pooled connection keeps the session it was opened with...
    body(pool.send(&endpoint, (&get("/")).into()).await.unwrap()).await;
    assert_eq!(catalog.handshakes.load(Ordering::SeqCst), 1);
    // ... and the next new one, made from the same cached configuration, shows the renewal.
    let another = mesh.pool();
    body(another.send(&endpoint, (&get("/")).into()).await.unwrap()).await;
    let clients = catalog.clients.lock().unwrap().clone();
    assert_eq!(clients.len(), 2);
    assert_ne!(
        clients[0], renewed,
        "the first connection had the old certificate"
    );
    assert_eq!(
        clients[1], renewed,
        "the new connection shows the renewed one"
    );
}

/// Sends a GET for `path` through `pool` to `endpoint`, as the proxy's HTTP/2 path does: the
/// pool takes a `Request<Incoming>`, which only hyper makes, so a local HTTP/1.1 front end
/// receives the request and hands it on. Returns the status and body, or the pool's error
/// and whether it was a connection failure.
async fn through_h2(
    pool: Arc<H2Pool>,
    endpoint: Arc<Endpoint>,
    path: &str,
) -> Result<String, (String, bool)> {
    let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = front.local_addr().unwrap();
    let serving = tokio::spawn(async move {
        let (stream, _) = front.accept().await.unwrap();
        let service = service_fn(move |request: Request<Incoming>| {
            let (pool, endpoint) = (pool.clone(), endpoint.clone());
            async move {
                let (mut parts, body) = request.into_parts();
                parts.uri = Uri::builder()
                    .scheme(pool.scheme())
                    .authority(endpoint.authority.clone())
                    .path_and_query(parts.uri.path_and_query().unwrap().clone())
                    .build()
                    .unwrap();
                let answer = match pool.send(&endpoint, Request::from_parts(parts, body)).await {
                    Ok(response) => {
                        let bytes = response.into_body().collect().await.unwrap().to_bytes();
                        Response::new(Full::new(bytes))
                    }
                    Err(Failure::NotSent(error, _)) | Err(Failure::Failed(error)) => {
                        let mut response = Response::new(Full::new(Bytes::from(error.to_string())));
                        *response.status_mut() = if error.is_connect() {
                            StatusCode::SERVICE_UNAVAILABLE
                        } else {
                            StatusCode::BAD_GATEWAY
                        };
                        response
                    }
                };
                Ok::<_, Infallible>(answer)
            }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await;
    });
    let stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = Request::get(path).body(Empty::<Bytes>::new()).unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    drop(sender);
    serving.abort();
    match status {
        StatusCode::OK => Ok(text),
        StatusCode::SERVICE_UNAVAILABLE => Err((text, true)),
        _ => Err((text, false)),
    }
}

#[tokio::test]
async fn http2_over_mutual_tls_shares_one_connection() {
    let mesh = mesh();
    let catalog = instance(&workload(&mesh.authority, "catalog")).await;
    let endpoint = Arc::new(endpoint_of("catalog", catalog.port));
    let pool = H2Pool::with_tls(SECOND, Some(mesh.tls.clone()));
    assert_eq!(pool.scheme(), http::uri::Scheme::HTTPS);
    for _ in 0..3 {
        let said = through_h2(pool.clone(), endpoint.clone(), "/grpc.Echo/Say")
            .await
            .unwrap();
        assert_eq!(said, "HTTP/2.0 spiffe://stratus.local/service/gateway");
    }
    assert_eq!(catalog.handshakes.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn http2_to_an_instance_naming_another_service_is_a_failed_connection() {
    let mesh = mesh();
    let impostor = instance(&workload(&mesh.authority, "auth")).await;
    let endpoint = Arc::new(endpoint_of("h2-ledger", impostor.port));
    let pool = H2Pool::with_tls(SECOND, Some(mesh.tls.clone()));
    let (error, connect) = through_h2(pool, endpoint, "/").await.unwrap_err();
    assert!(connect, "{error}");
    assert!(error.contains("mutual TLS"), "{error}");
    assert_eq!(tls_failures("h2-ledger"), 1);
}

#[tokio::test]
async fn http2_to_an_instance_refusing_the_gateways_certificate_is_a_failed_connection() {
    let mesh = mesh();
    let untrusting = instance(&workload(&mesh.authority, "h2-untrusting")).await;
    let rogue = Authority::create(TD, OffsetDateTime::now_utc()).unwrap();
    let stranger = Credentials::new(TD, &mesh.authority.bundle_pem()).unwrap();
    certify(&stranger, &rogue, "gateway");
    let pool = H2Pool::with_tls(SECOND, Some(UpstreamTls::new(stranger)));
    let endpoint = Arc::new(endpoint_of("h2-untrusting", untrusting.port));
    let (error, connect) = through_h2(pool, endpoint, "/").await.unwrap_err();
    assert!(connect, "{error}");
    assert!(error.contains("mutual TLS"), "{error}");
    // Counted when the connection's task ends, just after the request failed.
    let deadline = std::time::Instant::now() + 5 * SECOND;
    while tls_failures("h2-untrusting") == 0 {
        assert!(std::time::Instant::now() < deadline, "never counted");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(tls_failures("h2-untrusting"), 1);
    assert_eq!(untrusting.handshakes.load(Ordering::SeqCst), 0);
}
