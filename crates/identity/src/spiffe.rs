//! SPIFFE IDs as Stratus uses them.
//!
//! A workload is `spiffe://<trust domain>/service/<name>`; a person or tool acting as an operator
//! is `spiffe://<trust domain>/operator/<name>`. Both names follow the registry's rule for service
//! names (DNS labels), so an ID never needs escaping and reads the same in a log line.

use std::fmt;

/// What an identity is allowed to be: an instance of a service, or an operator.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Principal {
    Service(String),
    Operator(String),
}

impl Principal {
    pub fn name(&self) -> &str {
        match self {
            Principal::Service(name) | Principal::Operator(name) => name,
        }
    }

    /// The service this identity speaks for, if it is a service's.
    pub fn service(&self) -> Option<&str> {
        match self {
            Principal::Service(name) => Some(name),
            Principal::Operator(_) => None,
        }
    }

    pub fn is_operator(&self) -> bool {
        matches!(self, Principal::Operator(_))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    pub trust_domain: String,
    pub principal: Principal,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error("not a SPIFFE ID (must start with spiffe://)")]
    Scheme,
    #[error("trust domain `{0}` must be 1-255 lowercase letters, digits, '-', '.' or '_'")]
    TrustDomain(String),
    #[error("path must be /service/<name> or /operator/<name>")]
    Path,
    #[error("{0}")]
    Name(String),
}

impl SpiffeId {
    pub fn service(trust_domain: &str, name: &str) -> Result<Self, IdError> {
        Self::new(trust_domain, Principal::Service(name.to_string()))
    }

    pub fn operator(trust_domain: &str, name: &str) -> Result<Self, IdError> {
        Self::new(trust_domain, Principal::Operator(name.to_string()))
    }

    fn new(trust_domain: &str, principal: Principal) -> Result<Self, IdError> {
        check_trust_domain(trust_domain)?;
        check_name(principal.name())?;
        Ok(Self {
            trust_domain: trust_domain.to_string(),
            principal,
        })
    }

    pub fn parse(uri: &str) -> Result<Self, IdError> {
        let rest = uri.strip_prefix("spiffe://").ok_or(IdError::Scheme)?;
        let (domain, path) = rest.split_once('/').ok_or(IdError::Path)?;
        let (kind, name) = path.split_once('/').ok_or(IdError::Path)?;
        let principal = match kind {
            "service" => Principal::Service(name.to_string()),
            "operator" => Principal::Operator(name.to_string()),
            _ => return Err(IdError::Path),
        };
        Self::new(domain, principal)
    }

    pub fn uri(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, name) = match &self.principal {
            Principal::Service(name) => ("service", name),
            Principal::Operator(name) => ("operator", name),
        };
        write!(f, "spiffe://{}/{kind}/{name}", self.trust_domain)
    }
}

fn check_trust_domain(domain: &str) -> Result<(), IdError> {
    let ok = !domain.is_empty()
        && domain.len() <= 255
        && domain.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.' | b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(IdError::TrustDomain(printable(domain)))
    }
}

/// Service and operator names: DNS labels, as the registry requires of service names.
pub fn check_name(name: &str) -> Result<(), IdError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(IdError::Name(format!(
            "name `{}` must be 1-63 lowercase letters, digits or '-', not starting or ending with '-'",
            printable(name)
        )))
    }
}

/// At most 64 characters of `text`, control characters as `?`: what an error may echo back.
pub fn printable(text: &str) -> String {
    text.chars()
        .take(64)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        let id = SpiffeId::service("stratus.local", "catalog").unwrap();
        assert_eq!(id.uri(), "spiffe://stratus.local/service/catalog");
        assert_eq!(SpiffeId::parse(&id.uri()).unwrap(), id);
        let op = SpiffeId::parse("spiffe://stratus.local/operator/admin").unwrap();
        assert!(op.principal.is_operator());
        assert_eq!(op.principal.service(), None);
    }

    #[test]
    fn malformed_ids_are_refused() {
        for bad in [
            "http://stratus.local/service/catalog",
            "spiffe://stratus.local",
            "spiffe://stratus.local/service",
            "spiffe://stratus.local/service/",
            "spiffe://stratus.local/service/Catalog",
            "spiffe://stratus.local/service/cat/alog",
            "spiffe://stratus.local/admin/root",
            "spiffe:///service/catalog",
            "spiffe://Stratus/service/catalog",
            "spiffe://stratus.local/service/caté",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad} parsed");
        }
    }
}
