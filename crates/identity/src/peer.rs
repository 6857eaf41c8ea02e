//! Who a peer is: the SPIFFE ID in its certificate.
//!
//! A Stratus certificate carries exactly one URI name, its SPIFFE ID (as the X.509-SVID
//! specification requires). A certificate with none, with several, or with one from another
//! trust domain names nobody Stratus knows, and is refused.

use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

use crate::spiffe::{IdError, SpiffeId};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PeerError {
    #[error("the certificate does not parse")]
    Unparsable,
    #[error("the certificate names no SPIFFE ID")]
    NoId,
    #[error("the certificate names more than one URI")]
    SeveralIds,
    #[error("the certificate's SPIFFE ID is not valid: {0}")]
    BadId(#[from] IdError),
    #[error("the certificate belongs to trust domain `{0}`")]
    OtherDomain(String),
}

/// The SPIFFE ID a certificate names.
pub fn spiffe_id(cert: &CertificateDer<'_>) -> Result<SpiffeId, PeerError> {
    let (_, parsed) =
        x509_parser::parse_x509_certificate(cert).map_err(|_| PeerError::Unparsable)?;
    let names = parsed
        .subject_alternative_name()
        .map_err(|_| PeerError::Unparsable)?
        .ok_or(PeerError::NoId)?;
    let mut uris = names
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        });
    let uri = uris.next().ok_or(PeerError::NoId)?;
    if uris.next().is_some() {
        return Err(PeerError::SeveralIds);
    }
    Ok(SpiffeId::parse(uri)?)
}

/// The SPIFFE ID a certificate names, which must be of `trust_domain`.
pub fn spiffe_id_in(cert: &CertificateDer<'_>, trust_domain: &str) -> Result<SpiffeId, PeerError> {
    let id = spiffe_id(cert)?;
    if id.trust_domain != trust_domain {
        return Err(PeerError::OtherDomain(id.trust_domain));
    }
    Ok(id)
}

/// When a certificate starts being valid, in seconds since the epoch.
pub fn not_before(cert: &CertificateDer<'_>) -> Result<i64, PeerError> {
    let (_, parsed) =
        x509_parser::parse_x509_certificate(cert).map_err(|_| PeerError::Unparsable)?;
    Ok(parsed.validity().not_before.timestamp())
}

/// When a certificate stops being valid, in seconds since the epoch.
pub fn not_after(cert: &CertificateDer<'_>) -> Result<i64, PeerError> {
    let (_, parsed) =
        x509_parser::parse_x509_certificate(cert).map_err(|_| PeerError::Unparsable)?;
    Ok(parsed.validity().not_after.timestamp())
}
