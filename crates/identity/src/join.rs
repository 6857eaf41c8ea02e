//! Join credentials: how an instance proves which service it is before it has a certificate.
//!
//! A credential is `sjc1.<service>.<base64url(HMAC-SHA256(join secret, "stratus-join:" ‖ service))>`.
//! The certificate authority holds the join secret and issues a certificate only for the service
//! the credential names, so a credential handed to `catalog` can never get an `auth`
//! certificate, and a forged one fails the HMAC. `stratus up` derives one per component from the
//! data directory's secret; on Kubernetes each service's credential is a Secret of its own
//! (`stratus identity join-credential <service>` prints it). Rotating the join secret revokes
//! every credential at once; certificates already issued renew with themselves, not with it.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use crate::spiffe::check_name;

const PREFIX: &str = "sjc1.";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JoinError {
    #[error("the join secret must be base64 of at least 32 bytes")]
    BadSecret,
    #[error("not a join credential")]
    Malformed,
    #[error("the join credential is not valid")]
    Invalid,
    #[error("{0}")]
    BadName(String),
}

pub struct JoinSecret {
    key: hmac::Key,
}

impl std::fmt::Debug for JoinSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JoinSecret(..)")
    }
}

impl JoinSecret {
    pub fn parse(text: &str) -> Result<Self, JoinError> {
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|_| JoinError::BadSecret)?;
        if bytes.len() < 32 {
            return Err(JoinError::BadSecret);
        }
        Ok(Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, &bytes),
        })
    }

    /// New secret text: 32 random bytes, base64.
    pub fn generate() -> String {
        let mut bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut bytes)
            .expect("the system's random source");
        STANDARD.encode(bytes)
    }

    /// The credential for `service` (which must be a valid service name).
    pub fn credential(&self, service: &str) -> Result<String, JoinError> {
        check_name(service).map_err(|error| JoinError::BadName(error.to_string()))?;
        let tag = hmac::sign(&self.key, &message(service));
        Ok(format!(
            "{PREFIX}{service}.{}",
            URL_SAFE_NO_PAD.encode(tag.as_ref())
        ))
    }

    /// The service a credential is for, if it is genuine. The comparison is constant-time.
    pub fn verify(&self, credential: &str) -> Result<String, JoinError> {
        let rest = credential
            .trim()
            .strip_prefix(PREFIX)
            .ok_or(JoinError::Malformed)?;
        let (service, tag) = rest.split_once('.').ok_or(JoinError::Malformed)?;
        check_name(service).map_err(|_| JoinError::Malformed)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| JoinError::Malformed)?;
        hmac::verify(&self.key, &message(service), &tag).map_err(|_| JoinError::Invalid)?;
        Ok(service.to_string())
    }
}

fn message(service: &str) -> Vec<u8> {
    let mut message = b"stratus-join:".to_vec();
    message.extend_from_slice(service.as_bytes());
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credential_names_one_service_and_cannot_be_bent_to_another() {
        let secret = JoinSecret::parse(&JoinSecret::generate()).unwrap();
        let catalog = secret.credential("catalog").unwrap();
        assert_eq!(secret.verify(&catalog).unwrap(), "catalog");
        // Swapping the service name keeps the tag of `catalog`: refused.
        let bent = catalog.replacen("catalog", "auth", 1);
        assert_eq!(secret.verify(&bent), Err(JoinError::Invalid));
        // Another secret's credential for the same name: refused.
        let other = JoinSecret::parse(&JoinSecret::generate()).unwrap();
        assert_eq!(
            secret.verify(&other.credential("catalog").unwrap()),
            Err(JoinError::Invalid)
        );
    }

    #[test]
    fn malformed_credentials_and_secrets_are_errors() {
        let secret = JoinSecret::parse(&JoinSecret::generate()).unwrap();
        for bad in [
            "",
            "sjc1.",
            "sjc1.catalog",
            "sjc2.catalog.AAAA",
            "sjc1.Catalog.AAAA",
            "sjc1.catalog.%%",
        ] {
            assert_eq!(secret.verify(bad), Err(JoinError::Malformed), "{bad}");
        }
        assert!(matches!(
            secret.credential("Not A Name"),
            Err(JoinError::BadName(_))
        ));
        assert!(matches!(
            JoinSecret::parse("c2hvcnQ="),
            Err(JoinError::BadSecret)
        ));
        assert!(matches!(
            JoinSecret::parse("%%%"),
            Err(JoinError::BadSecret)
        ));
    }
}
