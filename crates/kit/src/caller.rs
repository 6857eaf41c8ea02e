//! Who is calling: the identity the mesh verified for a request's connection, and the checks
//! handlers make with it.
//!
//! With the mesh off nobody's identity is known and every check passes (`STRATUS_MTLS=off` is
//! for development and benchmarks, and says so at start). With it on, a caller is the SPIFFE ID
//! of its certificate, or nobody (a plaintext caller under `optional`, or a TLS caller with no
//! certificate on one of the few open paths). Where a service takes them, an admin's access
//! token makes a caller without a certificate an operator (`operator_token`): its identity is
//! then `spiffe://<domain>/operator/<subject>`, with an `OperatorToken` beside it saying so.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use stratus_identity::{Principal, SpiffeId};

use crate::identity::Peer;
use crate::Problem;

/// The caller of a request, as the mesh knows it.
#[derive(Clone, Debug)]
pub enum Caller {
    /// The mesh is off: identities are not checked.
    Unchecked,
    /// No certificate.
    Nobody,
    /// The verified identity of the caller's certificate.
    Id(Arc<SpiffeId>),
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Infallible> {
        Ok(Self::of(parts.extensions.get::<Peer>()))
    }
}

impl Caller {
    /// The caller given the peer identity found on its connection (if any).
    pub fn of(peer: Option<&Peer>) -> Self {
        match peer {
            Some(Peer(id)) => Caller::Id(id.clone()),
            None if crate::mesh::current().is_on() => Caller::Nobody,
            None => Caller::Unchecked,
        }
    }

    /// The caller's identity as a URI, for logs and records (`-` when unknown).
    pub fn describe(&self) -> String {
        match self {
            Caller::Id(id) => id.uri(),
            Caller::Nobody => "nobody".into(),
            Caller::Unchecked => "-".into(),
        }
    }

    /// Whether the caller is an operator.
    pub fn is_operator(&self) -> bool {
        matches!(self, Caller::Id(id) if matches!(id.principal, Principal::Operator(_)))
    }

    /// Any verified identity (or the mesh off).
    pub fn known(&self) -> Result<(), Problem> {
        match self {
            Caller::Nobody => Err(Problem::unauthorized(
                "this needs a Stratus certificate (mutual TLS)",
            )),
            _ => Ok(()),
        }
    }

    /// The service `service` itself, or an operator (or the mesh off).
    pub fn acts_as(&self, service: &str) -> Result<(), Problem> {
        match self {
            Caller::Unchecked => Ok(()),
            Caller::Nobody => Err(Problem::unauthorized(format!(
                "acting for `{service}` needs its certificate or an operator's (mutual TLS)"
            ))),
            Caller::Id(id) => match &id.principal {
                Principal::Operator(_) => Ok(()),
                Principal::Service(own) if own == service => Ok(()),
                Principal::Service(own) => Err(Problem::forbidden(format!(
                    "an instance of `{own}` cannot act for `{service}`"
                ))),
            },
        }
    }

    /// An operator (or the mesh off).
    pub fn operator(&self) -> Result<(), Problem> {
        match self {
            Caller::Unchecked => Ok(()),
            _ if self.is_operator() => Ok(()),
            Caller::Nobody => Err(Problem::unauthorized(
                "this needs an operator: an operator's certificate (mutual TLS) or, where taken, \
                 an admin's access token",
            )),
            Caller::Id(id) => Err(Problem::forbidden(format!(
                "{} is not an operator",
                id.uri()
            ))),
        }
    }
}

/// A layer for routes only operators may use (queries, admin APIs): anyone else is refused
/// before the handler runs.
pub async fn operator_only(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match Caller::of(request.extensions().get::<Peer>()).operator() {
        Ok(()) => next.run(request).await,
        Err(problem) => problem.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(principal: Principal) -> Caller {
        let id = match principal {
            Principal::Service(name) => SpiffeId::service("stratus.local", &name),
            Principal::Operator(name) => SpiffeId::operator("stratus.local", &name),
        };
        Caller::Id(Arc::new(id.unwrap()))
    }

    #[test]
    fn a_service_acts_only_for_itself_and_an_operator_for_anyone() {
        let catalog = id(Principal::Service("catalog".into()));
        assert!(catalog.acts_as("catalog").is_ok());
        let refused = catalog.acts_as("auth").unwrap_err();
        assert_eq!(refused.status().as_u16(), 403);
        assert!(catalog.operator().is_err());
        let admin = id(Principal::Operator("admin".into()));
        assert!(admin.acts_as("auth").is_ok());
        assert!(admin.operator().is_ok());
        assert_eq!(
            Caller::Nobody
                .acts_as("auth")
                .unwrap_err()
                .status()
                .as_u16(),
            401
        );
        assert_eq!(Caller::Nobody.known().unwrap_err().status().as_u16(), 401);
        assert!(Caller::Unchecked.acts_as("auth").is_ok());
    }
}
