//! rustls configurations for internal hops: both ends present Stratus certificates.
//!
//! A workload's [`Credentials`] hold its current certificate and key and the current trust
//! bundle, each behind an `ArcSwap`: renewal and CA rotation swap them in place, and every
//! configuration built from the credentials sees the new ones at its next handshake. So
//! listeners, connection pools and HTTP clients are built once.
//!
//! - Server side ([`Credentials::server_config`]): presents the workload's certificate and asks
//!   for the client's; `Mode::Required` refuses a client without one, `Mode::Optional` lets it
//!   in unauthenticated (the handler then sees no peer identity).
//! - Client side ([`Credentials::client_config`]): presents the workload's certificate and
//!   checks the server's against the bundle and against the identity it expects
//!   ([`Expect`]); host names play no part (instances are reached by address), the SPIFFE ID
//!   does.
//!
//! Only TLS 1.3, only the ring provider, and no session resumption: a resumed session would
//! carry the peer's certificate from the first handshake past its expiry and past a root's
//! removal from the bundle, without either verifier seeing it again. Internal connections are
//! long-lived (pooled), so a full handshake each time costs little.
//!
//! The cipher is AES-128-GCM first ([`mesh_provider`]), on both ends: a server picks by its own
//! order, not the client's, so a Python or Go client that lists AES-256 first gets AES-128 too.

use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};

use crate::authority::{pem_certificates, AuthorityError};
use crate::peer;
use crate::spiffe::{Principal, SpiffeId};

/// `STRATUS_MTLS`: how strictly internal listeners ask for client certificates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Every internal connection presents a Stratus certificate; plaintext is refused.
    Required,
    /// TLS with a certificate is used when offered; a client without one gets in, as nobody.
    Optional,
    /// No TLS, no identities (development and benchmarks only).
    Off,
}

impl std::str::FromStr for Mode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "required" => Ok(Mode::Required),
            "optional" => Ok(Mode::Optional),
            "off" => Ok(Mode::Off),
            other => Err(format!(
                "STRATUS_MTLS must be required, optional or off, not `{}`",
                other.escape_debug()
            )),
        }
    }
}

/// Who a client expects to find at the other end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// An instance of this service (the registry, the sink, `catalog`, ...).
    Service(String),
    /// Any service of the trust domain (a probe that checks liveness, not identity).
    AnyService,
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("the certificate: {0}")]
    Certificate(#[from] AuthorityError),
    #[error("the private key: {0}")]
    Key(String),
    #[error("the certificate names {found}, not {expected}")]
    WrongIdentity { expected: String, found: String },
    #[error("the certificate's identity: {0}")]
    Peer(#[from] peer::PeerError),
    #[error("the trust bundle: {0}")]
    Bundle(String),
}

/// A workload's certificate, key and trust bundle, each replaceable in place.
pub struct Credentials {
    trust_domain: String,
    held: ArcSwapOption<Held>,
    roots: ArcSwap<RootCertStore>,
    client_verifier: ArcSwap<Arc<dyn ClientCertVerifier>>,
    provider: Arc<CryptoProvider>,
}

/// The certificate held now, with what is read from it once: swapped in as one.
struct Held {
    certified: Arc<CertifiedKey>,
    id: Arc<SpiffeId>,
    not_before: i64,
    not_after: i64,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("trust_domain", &self.trust_domain)
            .field("id", &self.held.load().as_ref().map(|held| held.id.uri()))
            .finish()
    }
}

impl Credentials {
    /// Credentials that trust `bundle_pem` and hold no certificate yet.
    pub fn new(trust_domain: &str, bundle_pem: &str) -> Result<Arc<Self>, CredentialsError> {
        let provider = Arc::new(mesh_provider());
        let roots = root_store(bundle_pem)?;
        let verifier = client_verifier(&roots, &provider)?;
        Ok(Arc::new(Self {
            trust_domain: trust_domain.to_string(),
            held: ArcSwapOption::empty(),
            roots: ArcSwap::from_pointee(roots),
            client_verifier: ArcSwap::from_pointee(verifier),
            provider,
        }))
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The identity of the certificate held now.
    pub fn id(&self) -> Option<Arc<SpiffeId>> {
        self.held.load().as_ref().map(|held| held.id.clone())
    }

    /// When the certificate held now became valid (seconds since the epoch).
    pub fn not_before(&self) -> Option<i64> {
        self.held.load().as_ref().map(|held| held.not_before)
    }

    /// When the certificate held now expires (seconds since the epoch).
    pub fn not_after(&self) -> Option<i64> {
        self.held.load().as_ref().map(|held| held.not_after)
    }

    /// Puts in a new certificate (PEM, leaf first) and key (PEM, PKCS#8 or SEC1). When `expect`
    /// is given the certificate must name it.
    pub fn set_certificate(
        &self,
        chain_pem: &str,
        key_pem: &str,
        expect: Option<&SpiffeId>,
    ) -> Result<(), CredentialsError> {
        use rustls::pki_types::pem::PemObject;
        let chain = pem_certificates(chain_pem)?;
        let leaf = chain
            .first()
            .ok_or_else(|| CredentialsError::Key("no certificate in the PEM text".into()))?;
        let id = peer::spiffe_id_in(leaf, &self.trust_domain)?;
        if let Some(expected) = expect {
            if &id != expected {
                return Err(CredentialsError::WrongIdentity {
                    expected: expected.uri(),
                    found: id.uri(),
                });
            }
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|error| CredentialsError::Key(error.to_string()))?;
        let not_before = peer::not_before(leaf)?;
        let not_after = peer::not_after(leaf)?;
        let certified = CertifiedKey::from_der(chain, key, &self.provider)
            .map_err(|error| CredentialsError::Key(error.to_string()))?;
        self.held.store(Some(Arc::new(Held {
            certified: Arc::new(certified),
            id: Arc::new(id),
            not_before,
            not_after,
        })));
        Ok(())
    }

    /// Puts in a new trust bundle (every root to trust, PEM).
    pub fn set_bundle(&self, bundle_pem: &str) -> Result<(), CredentialsError> {
        let roots = root_store(bundle_pem)?;
        let verifier = client_verifier(&roots, &self.provider)?;
        self.roots.store(Arc::new(roots));
        self.client_verifier.store(Arc::new(verifier));
        Ok(())
    }

    /// A server configuration presenting these credentials and checking clients' per `mode`.
    pub fn server_config(self: &Arc<Self>, mode: Mode) -> ServerConfig {
        let verifier = Arc::new(SpiffeClientVerifier {
            credentials: self.clone(),
            mandatory: mode == Mode::Required,
        });
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("ring supports TLS 1.3")
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(Resolver(self.clone())));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        config.ignore_client_order = true;
        config
    }

    /// A client configuration presenting these credentials and expecting `expect` at the other
    /// end. ALPN is left to the caller (HTTP/1.1 and HTTP/2 clients set their own).
    pub fn client_config(self: &Arc<Self>, expect: Expect) -> ClientConfig {
        let mut config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("ring supports TLS 1.3")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier {
                credentials: self.clone(),
                expect,
            }))
            .with_client_cert_resolver(Arc::new(Resolver(self.clone())));
        config.resumption = rustls::client::Resumption::disabled();
        config
    }

    fn algorithms(&self) -> &WebPkiSupportedAlgorithms {
        &self.provider.signature_verification_algorithms
    }
}

/// ring's provider with the TLS 1.3 suites in the mesh's order: AES-128-GCM, AES-256-GCM, then
/// ChaCha20-Poly1305 (ring's own order puts AES-256 first).
///
/// Every internal hop pays the cipher twice per byte (seal at one end, open at the other), on
/// machines that have AES instructions: AES-128 takes 10 rounds a block to AES-256's 14, and
/// measured here (`cargo run --release -p stratus-identity --example aead_floor`) opens a 16 KiB
/// record in about 80% of AES-256's time and a sixth of ChaCha20's. 128-bit keys are what
/// TLS 1.3 makes mandatory (RFC 8446, 9.1) and what Go and BoringSSL put first with AES hardware.
pub fn mesh_provider() -> CryptoProvider {
    use rustls::crypto::ring::cipher_suite::{
        TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
    };
    CryptoProvider {
        cipher_suites: vec![
            TLS13_AES_128_GCM_SHA256,
            TLS13_AES_256_GCM_SHA384,
            TLS13_CHACHA20_POLY1305_SHA256,
        ],
        ..rustls::crypto::ring::default_provider()
    }
}

/// The SPIFFE ID of the peer of an established connection, if it presented a certificate.
pub fn peer_id(
    certificates: Option<&[CertificateDer<'_>]>,
    trust_domain: &str,
) -> Option<SpiffeId> {
    let leaf = certificates?.first()?;
    peer::spiffe_id_in(leaf, trust_domain).ok()
}

fn root_store(bundle_pem: &str) -> Result<RootCertStore, CredentialsError> {
    let mut roots = RootCertStore::empty();
    for cert in pem_certificates(bundle_pem)? {
        roots
            .add(cert)
            .map_err(|error| CredentialsError::Bundle(error.to_string()))?;
    }
    if roots.is_empty() {
        return Err(CredentialsError::Bundle("no certificate in it".into()));
    }
    Ok(roots)
}

fn client_verifier(
    roots: &RootCertStore,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, CredentialsError> {
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots.clone()), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|error| CredentialsError::Bundle(error.to_string()))
}

/// Hands rustls the certificate held now, on both sides of a handshake.
#[derive(Debug)]
struct Resolver(Arc<Credentials>);

impl Resolver {
    /// The certificate held, unless it has run out: a client with an expired certificate
    /// connects without one (and can still show a join credential), rather than being refused
    /// at every handshake it tries.
    fn current(&self) -> Option<Arc<CertifiedKey>> {
        let held = self.0.held.load_full()?;
        (now_seconds() < held.not_after).then(|| held.certified.clone())
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0
            .held
            .load()
            .as_ref()
            .map(|held| held.certified.clone())
    }
}

impl ResolvesClientCert for Resolver {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        self.current().is_some()
    }
}

fn now_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs() as i64)
        .unwrap_or(0)
}

/// Checks a client's certificate against the bundle held now and requires a SPIFFE ID of the
/// trust domain. Which identities may do what is decided later, per request.
#[derive(Debug)]
struct SpiffeClientVerifier {
    credentials: Arc<Credentials>,
    mandatory: bool,
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints would pin the list at build time; Stratus clients hold one certificate anyway.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verifier = self.credentials.client_verifier.load();
        verifier.verify_client_cert(end_entity, intermediates, now)?;
        peer::spiffe_id_in(end_entity, &self.credentials.trust_domain)
            .map_err(|error| rustls::Error::General(format!("client certificate: {error}")))?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, self.credentials.algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, self.credentials.algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.credentials.algorithms().supported_schemes()
    }
}

/// Checks a server's certificate against the bundle held now and the identity expected.
#[derive(Debug)]
struct SpiffeServerVerifier {
    credentials: Arc<Credentials>,
    expect: Expect,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        let roots = self.credentials.roots.load();
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &roots,
            intermediates,
            now,
            self.credentials.algorithms().all,
        )?;
        let id = peer::spiffe_id_in(end_entity, &self.credentials.trust_domain)
            .map_err(|error| rustls::Error::General(format!("server certificate: {error}")))?;
        let fits = match (&self.expect, &id.principal) {
            (Expect::Service(expected), Principal::Service(found)) => expected == found,
            (Expect::AnyService, Principal::Service(_)) => true,
            (_, Principal::Operator(_)) => false,
        };
        if !fits {
            return Err(rustls::Error::General(format!(
                "server certificate names {id}, expected {:?}",
                self.expect
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, self.credentials.algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, self.credentials.algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.credentials.algorithms().supported_schemes()
    }
}
