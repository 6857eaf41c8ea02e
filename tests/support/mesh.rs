//! Mutual TLS in test systems: the authority's files in the system's data directory (as
//! `stratus up` makes them), each spawned process's join credential, and clients for the test
//! itself: as an operator, as a given identity, or as nobody.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use stratus_identity::{Authority, Issued, JoinSecret, SpiffeId};
use stratus_registry::identity::files::{self, Paths};
use time::OffsetDateTime;

pub const TRUST_DOMAIN: &str = "stratus.local";

pub struct TestMesh {
    pub join: JoinSecret,
    paths: Paths,
    /// A client holding an operator certificate, trusting the system's bundle.
    pub operator: reqwest::Client,
}

impl TestMesh {
    /// Makes the authority's files in `<dir>/identity`.
    pub fn init(dir: &Path) -> TestMesh {
        stratus_kit::install_crypto_provider();
        let paths = Paths::in_dir(&dir.join("identity"), TRUST_DOMAIN);
        let material = files::init(&paths).expect("the authority's files");
        let mut mesh = TestMesh {
            join: material.join,
            paths,
            operator: reqwest::Client::new(),
        };
        let operator = SpiffeId::operator(TRUST_DOMAIN, "tests").unwrap();
        let issued = mesh.issue(&operator, Duration::from_secs(3600), 0);
        mesh.operator = client_with(Some(&issued));
        mesh
    }

    /// The environment of a spawned `service`: mTLS required, and its join credential.
    pub fn env(&self, service: &str) -> Vec<(&'static str, String)> {
        vec![
            ("STRATUS_MTLS", "required".into()),
            ("STRATUS_TRUST_DOMAIN", TRUST_DOMAIN.into()),
            ("STRATUS_JOIN_TOKEN", self.join.credential(service).unwrap()),
        ]
    }

    /// A certificate (with its key) for `id` straight from the authority's files, valid for
    /// `lifetime` from `shift_seconds` from now (negative: in the past).
    pub fn issue(&self, id: &SpiffeId, lifetime: Duration, shift_seconds: i64) -> Issued {
        let material = files::init(&self.paths).unwrap();
        let authority = Authority::from_stored(&material.authority, &material.sealer).unwrap();
        let at = OffsetDateTime::now_utc() + time::Duration::seconds(shift_seconds);
        authority.issue_with_key(id, lifetime, at).unwrap()
    }

    /// The system's trust bundle, PEM.
    pub fn bundle(&self) -> String {
        std::fs::read_to_string(&self.paths.bundle).unwrap()
    }
}

/// A TLS client presenting `identity`'s certificate (or none), which does not check the
/// server's: for asking a server what it does with a given client, nothing more.
pub fn client_with(identity: Option<&Issued>) -> reqwest::Client {
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
    reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
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
