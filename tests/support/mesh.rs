//! Mutual TLS in test systems, as `stratus up` runs it: one certificate authority per test
//! binary (its files in a temporary directory of their own, made on first use), shared by
//! every system the binary starts, so that a test backend or a client made before any system
//! exists can already hold a certificate the system's processes trust. Each spawned process
//! gets its join credential; the test itself calls internal ports as an operator
//! ([`internal`]), as a given service ([`client_as`]) or as nobody ([`client_with`]`(None)`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use stratus_identity::{Authority, Credentials, Expect, Issued, JoinSecret, Mode, SpiffeId};
use stratus_registry::identity::files::{self, Paths};
use time::OffsetDateTime;

pub const TRUST_DOMAIN: &str = "stratus.local";

/// How long the certificates the tests hold themselves live: longer than any test binary runs.
const TEST_CERT_LIFETIME: Duration = Duration::from_secs(24 * 3600);

pub struct TestMesh {
    pub join: JoinSecret,
    /// The authority's files (`STRATUS_IDENTITY_DIR` of every registry that uses them).
    pub identity_dir: PathBuf,
    paths: Paths,
    /// A client holding an operator certificate, trusting the authority's bundle.
    pub operator: reqwest::Client,
    /// The operator's certificate, key and the bundle, as files (for curl and the like).
    operator_files: OperatorFiles,
    operator_issued: Issued,
    check_servers: bool,
}

/// Paths of an operator's certificate, its key and the trust bundle.
#[derive(Clone, Debug)]
pub struct OperatorFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub bundle: PathBuf,
}

/// The shared authority's directory, removed when the test binary exits.
static SHARED_DIR: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn remove_shared_dir() {
    if let Some(dir) = SHARED_DIR.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// The test binary's authority, made the first time it is asked for.
pub fn shared() -> Arc<TestMesh> {
    static SHARED: OnceLock<Arc<TestMesh>> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            // Statics are never dropped: the directory (the authority's keys among its files)
            // goes when the process exits instead.
            let dir = tempfile::Builder::new()
                .prefix("stratus-mesh-")
                .tempdir()
                .expect("a directory for the test authority")
                .keep();
            let dir = SHARED_DIR.get_or_init(|| dir);
            unsafe {
                libc::atexit(remove_shared_dir);
            }
            Arc::new(TestMesh::init(dir, true))
        })
        .clone()
}

/// The operator's client (trusts the shared authority's bundle, checks every server is one of
/// its services).
pub fn internal() -> reqwest::Client {
    shared().operator.clone()
}

/// A builder for another operator client (for settings of its own: a pool, a timeout).
pub fn operator_builder() -> reqwest::ClientBuilder {
    let mesh = shared();
    mesh.builder_holding(&mesh.operator_issued)
}

/// An internal URL: `https://127.0.0.1:<port><path>`.
pub fn internal_url(port: u16, path: &str) -> String {
    format!("https://127.0.0.1:{port}{path}")
}

/// A client presenting `service`'s certificate (from the shared authority), trusting its bundle.
pub fn client_as(service: &str) -> reqwest::Client {
    shared().client_as(service)
}

/// A server configuration with a certificate for `service`, for a test's own backends: the
/// gateway's upstream mutual TLS checks that an instance is the service it is registered as.
/// Client certificates are asked for, not demanded (anyone may call a test backend).
pub fn tls_for(service: &str) -> Arc<rustls::ServerConfig> {
    let credentials = shared().credentials_for(&SpiffeId::service(TRUST_DOMAIN, service).unwrap());
    Arc::new(credentials.server_config(Mode::Optional))
}

/// A TLS connection over `tcp` as the operator, to a server that must hold `service`'s
/// certificate (HTTP/1.1 by ALPN): for bytes sent straight to an instance.
pub async fn tls_connect(
    service: &str,
    tcp: tokio::net::TcpStream,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mesh = shared();
    let operator = SpiffeId::operator(TRUST_DOMAIN, "tests").unwrap();
    let mut config = mesh
        .credentials_for(&operator)
        .client_config(Expect::Service(service.to_string()));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let address = tcp.peer_addr().unwrap().ip();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::IpAddress(address.into()), tcp)
        .await
        .expect("a TLS handshake with the instance")
}

/// The operator's certificate, key and trust bundle as files.
pub fn operator_files() -> OperatorFiles {
    shared().operator_files.clone()
}

/// Puts the test process itself in the mesh as an instance of `service` (once per process:
/// the kit's mesh is set once), for tests that run kit clients (discovery, the reporter) in
/// process. A second call for the same service does nothing; for another, panics.
pub fn join_test_process(service: &str) {
    static JOINED: OnceLock<String> = OnceLock::new();
    let joined = JOINED.get_or_init(|| {
        let mesh = shared();
        let credentials = mesh.credentials_for(&SpiffeId::service(TRUST_DOMAIN, service).unwrap());
        stratus_kit::mesh::install(Mode::Required, Some(credentials))
            .expect("the test process joins the mesh");
        service.to_string()
    });
    assert_eq!(
        joined, service,
        "the test process is in the mesh as {joined}"
    );
}

impl TestMesh {
    /// Makes the authority's files in `<dir>/identity`, and an operator certificate. With
    /// `check_servers` the operator's client checks every server against the bundle; without,
    /// it takes any server (for a test that rotates the authority's root under it).
    pub fn init(dir: &Path, check_servers: bool) -> TestMesh {
        stratus_kit::install_crypto_provider();
        let identity_dir = dir.join("identity");
        let paths = Paths::in_dir(&identity_dir, TRUST_DOMAIN);
        let material = files::init(&paths).expect("the authority's files");
        let operator_dir = identity_dir.join("operator");
        let operator_files = OperatorFiles {
            cert: operator_dir.join("cert.pem"),
            key: operator_dir.join("key.pem"),
            bundle: paths.bundle.clone(),
        };
        let operator = SpiffeId::operator(TRUST_DOMAIN, "tests").unwrap();
        let issued = issue_from(&paths, &operator, TEST_CERT_LIFETIME, 0);
        let mut mesh = TestMesh {
            join: material.join,
            identity_dir,
            paths,
            operator: reqwest::Client::new(),
            operator_files,
            operator_issued: issued.clone(),
            check_servers,
        };
        files::write_private(&mesh.operator_files.cert, &issued.certificate).unwrap();
        files::write_private(
            &mesh.operator_files.key,
            issued.private_key.as_deref().unwrap(),
        )
        .unwrap();
        mesh.operator = mesh.operator_with_timeout(Duration::from_secs(10));
        mesh
    }

    /// Another operator client, whose requests time out after `timeout`.
    pub fn operator_with_timeout(&self, timeout: Duration) -> reqwest::Client {
        let issued = &self.operator_issued;
        if !self.check_servers {
            return client_builder_with(Some(issued))
                .timeout(timeout)
                .build()
                .unwrap();
        }
        self.builder_holding(issued)
            .timeout(timeout)
            .build()
            .unwrap()
    }

    /// The environment of a spawned `service`: mTLS required, its join credential, and where
    /// the authority's files and bundle are.
    pub fn env(&self, service: &str) -> Vec<(&'static str, String)> {
        vec![
            ("STRATUS_MTLS", "required".into()),
            ("STRATUS_TRUST_DOMAIN", TRUST_DOMAIN.into()),
            ("STRATUS_JOIN_TOKEN", self.join.credential(service).unwrap()),
            (
                "STRATUS_IDENTITY_DIR",
                self.identity_dir.display().to_string(),
            ),
            (
                "STRATUS_TRUST_BUNDLE",
                self.paths.bundle.display().to_string(),
            ),
        ]
    }

    /// A certificate (with its key) for `id` straight from the authority's files, valid for
    /// `lifetime` from `shift_seconds` from now (negative: in the past).
    pub fn issue(&self, id: &SpiffeId, lifetime: Duration, shift_seconds: i64) -> Issued {
        issue_from(&self.paths, id, lifetime, shift_seconds)
    }

    /// Credentials holding a fresh certificate for `id`, trusting the bundle.
    pub fn credentials_for(&self, id: &SpiffeId) -> Arc<Credentials> {
        let issued = self.issue(id, TEST_CERT_LIFETIME, 0);
        let credentials = Credentials::new(TRUST_DOMAIN, &self.bundle()).unwrap();
        credentials
            .set_certificate(
                &issued.certificate,
                issued.private_key.as_deref().unwrap(),
                None,
            )
            .unwrap();
        credentials
    }

    /// A client presenting `service`'s certificate, trusting the bundle.
    pub fn client_as(&self, service: &str) -> reqwest::Client {
        let id = SpiffeId::service(TRUST_DOMAIN, service).unwrap();
        self.client_holding(&self.issue(&id, TEST_CERT_LIFETIME, 0))
    }

    /// A client presenting `issued`, checking servers against the bundle (any service).
    pub fn client_holding(&self, issued: &Issued) -> reqwest::Client {
        self.builder_holding(issued)
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    }

    fn builder_holding(&self, issued: &Issued) -> reqwest::ClientBuilder {
        let credentials = Credentials::new(TRUST_DOMAIN, &self.bundle()).unwrap();
        credentials
            .set_certificate(
                &issued.certificate,
                issued.private_key.as_deref().unwrap(),
                None,
            )
            .unwrap();
        reqwest::Client::builder()
            .tls_backend_preconfigured(credentials.client_config(Expect::AnyService))
    }

    /// The trust bundle, PEM.
    pub fn bundle(&self) -> String {
        std::fs::read_to_string(&self.paths.bundle).unwrap()
    }
}

/// A certificate for `id` from the authority's files at `paths`.
fn issue_from(paths: &Paths, id: &SpiffeId, lifetime: Duration, shift_seconds: i64) -> Issued {
    let material = files::init(paths).unwrap();
    let authority = Authority::from_stored(&material.authority, &material.sealer).unwrap();
    let at = OffsetDateTime::now_utc() + time::Duration::seconds(shift_seconds);
    authority.issue_with_key(id, lifetime, at).unwrap()
}

/// A TLS client presenting `identity`'s certificate (or none), which does not check the
/// server's: for asking a server what it does with a given client, nothing more.
pub fn client_with(identity: Option<&Issued>) -> reqwest::Client {
    client_builder_with(identity)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn client_builder_with(identity: Option<&Issued>) -> reqwest::ClientBuilder {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)));
    let config = match identity {
        Some(issued) => {
            let chain = CertificateDer::pem_slice_iter(issued.certificate.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key =
                PrivateKeyDer::from_pem_slice(issued.private_key.as_deref().unwrap().as_bytes())
                    .unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    reqwest::Client::builder().tls_backend_preconfigured(config)
}

/// Accepts any server certificate (signatures still checked).
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client holding the operator certificate `stratus up` writes into `<data dir>/identity/
/// operator`, checking that servers hold certificates of the system's authority.
pub fn up_operator(data_dir: &Path) -> reqwest::Client {
    let dir = data_dir.join("identity").join("operator");
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    let credentials =
        stratus_identity::Credentials::new(TRUST_DOMAIN, &read("bundle.pem")).unwrap();
    credentials
        .set_certificate(&read("cert.pem"), &read("key.pem"), None)
        .unwrap();
    reqwest::Client::builder()
        .tls_backend_preconfigured(credentials.client_config(stratus_identity::Expect::AnyService))
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A client that trusts the system's bundle (servers must hold its certificates) and shows no
/// certificate of its own: a tool outside Stratus, which can only bring an access token.
pub fn bundle_only(bundle_pem: &str) -> reqwest::Client {
    let credentials = stratus_identity::Credentials::new(TRUST_DOMAIN, bundle_pem).unwrap();
    reqwest::Client::builder()
        .tls_backend_preconfigured(credentials.client_config(stratus_identity::Expect::AnyService))
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}
