//! Stratus's certificate authority: root keys, rotation with overlap, and issuing certificates.
//!
//! The authority keeps one or more roots, newest first; every root is in the trust bundle. A
//! rotation happens in two steps, so no connection fails across it:
//! 1. the new root joins the bundle at once, but signs only after `propagate` (long enough for
//!    every workload to have fetched the new bundle), so nobody is handed a certificate its
//!    peers cannot check yet;
//! 2. the old root stops signing then and retires `overlap` later (at least the longest
//!    certificate lifetime, so every certificate it signed has been renewed), the way auth keeps
//!    a retired signing key in its JWKS until its last token expires.
//!
//! Certificates are issued from a certificate signing request (the key never leaves the
//! workload) or, for programs that cannot make one (Python's standard library), with a key made
//! here and handed over once. Either way the certificate names exactly the SPIFFE ID the caller
//! was authorised for: whatever a request asks for beyond its public key is ignored.
//!
//! Stored form (JSON): each root's certificate in PEM and its private key sealed
//! ([`crate::seal`]), so the file, or the etcd key that holds it, reveals no key.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::seal::{SealError, Sealer};
use crate::spiffe::SpiffeId;

/// How long a root is valid. Rotation (every `STRATUS_CA_ROTATION`) comes long before that.
pub const ROOT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// Certificates start this long before they are issued, for clocks a little behind.
pub const BACKDATE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    #[error("the certificate signing request is not valid: {0}")]
    BadRequest(String),
    #[error("the authority's stored state does not read: {0}")]
    Stored(String),
    #[error("a root key does not open: {0}")]
    Seal(#[from] SealError),
    #[error("the authority has no root")]
    NoRoot,
    #[error("making a certificate: {0}")]
    Certificate(#[from] rcgen::Error),
}

struct Root {
    cert: CertificateDer<'static>,
    cert_pem: String,
    key: KeyPair,
    not_after: OffsetDateTime,
    /// Set when a newer root took over: after this the root leaves the bundle.
    retire_after: Option<OffsetDateTime>,
    /// When it starts signing (a rotated-in root is in the bundle before it signs).
    signs_from: OffsetDateTime,
}

pub struct Authority {
    trust_domain: String,
    roots: Vec<Root>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("trust_domain", &self.trust_domain)
            .field("roots", &self.roots.len())
            .finish()
    }
}

/// A certificate issued to a workload.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Issued {
    pub spiffe_id: String,
    /// The certificate, PEM.
    pub certificate: String,
    /// The private key, PEM (PKCS#8), only when the authority made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    /// Every root certificate a peer should trust now, PEM.
    pub trust_bundle: String,
    /// Seconds since the epoch.
    pub not_after: i64,
}

#[derive(Serialize, Deserialize)]
struct StoredAuthority {
    trust_domain: String,
    roots: Vec<StoredRoot>,
}

#[derive(Serialize, Deserialize)]
struct StoredRoot {
    certificate: String,
    /// The root's PKCS#8 key, sealed.
    key: String,
    #[serde(default)]
    retire_after: Option<i64>,
    #[serde(default)]
    signs_from: i64,
}

impl Authority {
    /// A new authority with one root.
    pub fn create(trust_domain: &str, now: OffsetDateTime) -> Result<Self, AuthorityError> {
        let mut authority = Self {
            trust_domain: trust_domain.to_string(),
            roots: Vec::new(),
        };
        authority.roots.push(new_root(trust_domain, now)?);
        Ok(authority)
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// A new root: in the bundle now, signing after `propagate`; the previous ones stop signing
    /// then and leave the bundle `overlap` later.
    pub fn rotate(
        &mut self,
        now: OffsetDateTime,
        propagate: Duration,
        overlap: Duration,
    ) -> Result<(), AuthorityError> {
        let mut root = new_root(&self.trust_domain, now)?;
        root.signs_from = now + propagate;
        for old in &mut self.roots {
            if old.retire_after.is_none() {
                old.retire_after = Some(now + propagate + overlap);
            }
        }
        self.roots.insert(0, root);
        Ok(())
    }

    /// The root that signs at `now`: the newest whose time has come.
    fn signer(&self, now: OffsetDateTime) -> Result<&Root, AuthorityError> {
        self.roots
            .iter()
            .find(|root| root.signs_from <= now)
            .or(self.roots.last())
            .ok_or(AuthorityError::NoRoot)
    }

    /// Drops roots whose overlap has ended or that have expired. Returns whether any went.
    pub fn prune(&mut self, now: OffsetDateTime) -> bool {
        let before = self.roots.len();
        let newest = self.roots.first().map(|root| root.cert.clone());
        self.roots.retain(|root| {
            // The newest root always stays.
            Some(&root.cert) == newest.as_ref()
                || (root.retire_after.is_none_or(|at| now < at) && now < root.not_after)
        });
        self.roots.len() != before
    }

    /// When the newest root was made; the next rotation is due some time after it.
    pub fn newest_root_made(&self) -> Option<OffsetDateTime> {
        self.roots
            .first()
            .map(|root| root.not_after - ROOT_LIFETIME)
    }

    pub fn bundle(&self) -> Vec<CertificateDer<'static>> {
        self.roots.iter().map(|root| root.cert.clone()).collect()
    }

    pub fn bundle_pem(&self) -> String {
        self.roots
            .iter()
            .map(|root| root.cert_pem.as_str())
            .collect()
    }

    /// A certificate for `id` over the public key of a certificate signing request. The request's
    /// own subject and names are ignored.
    pub fn sign_request(
        &self,
        csr_der: &[u8],
        id: &SpiffeId,
        lifetime: Duration,
        now: OffsetDateTime,
    ) -> Result<Issued, AuthorityError> {
        let request =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
                .map_err(|error| AuthorityError::BadRequest(error.to_string()))?;
        self.issue_for(&request.public_key, id, lifetime, now, None)
    }

    /// A certificate for `id` with a key made here (returned once, in `private_key`).
    pub fn issue_with_key(
        &self,
        id: &SpiffeId,
        lifetime: Duration,
        now: OffsetDateTime,
    ) -> Result<Issued, AuthorityError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let pem = key.serialize_pem();
        self.issue_for(&key, id, lifetime, now, Some(pem))
    }

    fn issue_for(
        &self,
        public_key: &impl PublicKeyData,
        id: &SpiffeId,
        lifetime: Duration,
        now: OffsetDateTime,
        private_key: Option<String>,
    ) -> Result<Issued, AuthorityError> {
        if id.trust_domain != self.trust_domain {
            return Err(AuthorityError::BadRequest(format!(
                "{id} is not of trust domain {}",
                self.trust_domain
            )));
        }
        let root = self.signer(now)?;
        let issuer = Issuer::from_ca_cert_der(&root.cert, &root.key)?;
        let mut params = CertificateParams::default();
        params.not_before = now - BACKDATE;
        // Never past the root's own end: a chain is only as valid as its root.
        params.not_after = (now + lifetime).min(root.not_after);
        params.serial_number = Some(serial());
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, id.principal.name());
        name.push(DnType::OrganizationName, "Stratus");
        params.distinguished_name = name;
        params.subject_alt_names = vec![SanType::URI(id.uri().try_into()?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let certificate = params.signed_by(public_key, &issuer)?;
        Ok(Issued {
            spiffe_id: id.uri(),
            certificate: certificate.pem(),
            private_key,
            trust_bundle: self.bundle_pem(),
            not_after: params.not_after.unix_timestamp(),
        })
    }

    /// The stored form: certificates in PEM, keys sealed.
    pub fn to_stored(&self, sealer: &Sealer) -> String {
        let stored = StoredAuthority {
            trust_domain: self.trust_domain.clone(),
            roots: self
                .roots
                .iter()
                .map(|root| StoredRoot {
                    certificate: root.cert_pem.clone(),
                    key: sealer.seal(
                        &key_context(&root.cert_pem),
                        root.key.serialize_pem().as_bytes(),
                    ),
                    retire_after: root.retire_after.map(|at| at.unix_timestamp()),
                    signs_from: root.signs_from.unix_timestamp(),
                })
                .collect(),
        };
        serde_json::to_string_pretty(&stored).expect("the authority serialises")
    }

    pub fn from_stored(text: &str, sealer: &Sealer) -> Result<Self, AuthorityError> {
        let stored: StoredAuthority = serde_json::from_str(text)
            .map_err(|error| AuthorityError::Stored(error.to_string()))?;
        let mut roots = Vec::new();
        for root in stored.roots {
            let key_pem = sealer.open(&key_context(&root.certificate), &root.key)?;
            let key_pem = String::from_utf8(key_pem)
                .map_err(|_| AuthorityError::Stored("a root key is not PEM".into()))?;
            let key = KeyPair::from_pem(&key_pem)?;
            let cert = pem_certificate(&root.certificate)?;
            let not_after = certificate_not_after(&cert)?;
            let retire_after = root
                .retire_after
                .map(OffsetDateTime::from_unix_timestamp)
                .transpose()
                .map_err(|error| AuthorityError::Stored(error.to_string()))?;
            let signs_from = OffsetDateTime::from_unix_timestamp(root.signs_from)
                .map_err(|error| AuthorityError::Stored(error.to_string()))?;
            roots.push(Root {
                cert,
                cert_pem: root.certificate,
                key,
                not_after,
                retire_after,
                signs_from,
            });
        }
        if roots.is_empty() {
            return Err(AuthorityError::NoRoot);
        }
        Ok(Self {
            trust_domain: stored.trust_domain,
            roots,
        })
    }

    /// Whether every root key is sealed with the sealer's current key (else store again).
    pub fn stored_is_current(text: &str, sealer: &Sealer) -> bool {
        serde_json::from_str::<StoredAuthority>(text)
            .is_ok_and(|stored| stored.roots.iter().all(|root| sealer.is_current(&root.key)))
    }
}

/// A root's key is sealed for that root's certificate: it opens for no other.
fn key_context(cert_pem: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert_pem.as_bytes());
    let hex: String = digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("stratus-ca-root:{hex}")
}

fn new_root(trust_domain: &str, now: OffsetDateTime) -> Result<Root, AuthorityError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.not_before = now - BACKDATE;
    params.not_after = now + ROOT_LIFETIME;
    params.serial_number = Some(serial());
    let mut name = DistinguishedName::new();
    name.push(
        DnType::CommonName,
        format!("Stratus CA {trust_domain} {}", now.unix_timestamp()),
    );
    name.push(DnType::OrganizationName, "Stratus");
    params.distinguished_name = name;
    params.subject_alt_names = vec![SanType::URI(format!("spiffe://{trust_domain}").try_into()?)];
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key)?;
    Ok(Root {
        cert_pem: cert.pem(),
        cert: cert.der().clone(),
        key,
        not_after: params.not_after,
        retire_after: None,
        signs_from: now,
    })
}

fn serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system's random source");
    // Positive, and never with a leading zero byte that DER would strip.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

/// The DER of a PEM certificate signing request.
pub fn csr_from_pem(pem: &str) -> Result<Vec<u8>, AuthorityError> {
    use rustls_pki_types::pem::PemObject;
    CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
        .map(|der| der.as_ref().to_vec())
        .map_err(|error| AuthorityError::BadRequest(format!("the request's PEM: {error}")))
}

/// The first certificate in PEM text.
pub fn pem_certificate(pem: &str) -> Result<CertificateDer<'static>, AuthorityError> {
    pem_certificates(pem)?
        .into_iter()
        .next()
        .ok_or_else(|| AuthorityError::Stored("no certificate in the PEM text".into()))
}

/// Every certificate in PEM text (a trust bundle, a chain).
pub fn pem_certificates(pem: &str) -> Result<Vec<CertificateDer<'static>>, AuthorityError> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| AuthorityError::Stored(format!("PEM: {error}")))
}

fn certificate_not_after(cert: &CertificateDer<'_>) -> Result<OffsetDateTime, AuthorityError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|error| AuthorityError::Stored(format!("a root certificate: {error}")))?;
    OffsetDateTime::from_unix_timestamp(parsed.validity().not_after.timestamp())
        .map_err(|error| AuthorityError::Stored(error.to_string()))
}
