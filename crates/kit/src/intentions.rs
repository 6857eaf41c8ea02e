//! Intentions: which services may call this one (Consul's name for it). Default deny: with the
//! mesh on, an instance of another service is refused unless `STRATUS_ALLOWED_CALLERS` names
//! it; operators always pass, and so do instances of the service itself. With the mesh off
//! nobody's identity is known and nothing is refused.
//!
//! The refusal is a 403 problem+json, and, because this layer sits inside the kit's event
//! record, a record on the sink naming this service and the caller's identity (`peer`).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use stratus_identity::Principal;

use crate::identity::Peer;
use crate::Problem;

/// Who may call the service `name`.
#[derive(Debug)]
pub struct Intentions {
    name: String,
    any: bool,
    allowed: Vec<String>,
    /// Paths anyone may reach (health): the registry probes every instance.
    open_paths: Vec<&'static str>,
}

impl Intentions {
    pub fn new(name: &str, allowed: &[String], open_paths: &[&'static str]) -> Self {
        let allowed: Vec<String> = allowed
            .iter()
            .map(|caller| caller.trim().to_string())
            .filter(|caller| !caller.is_empty())
            .collect();
        Self {
            name: name.to_string(),
            any: allowed.iter().any(|caller| caller == "*"),
            allowed,
            open_paths: open_paths.to_vec(),
        }
    }

    /// Whether `principal` may call this service.
    pub fn allows(&self, principal: &Principal) -> bool {
        match principal {
            Principal::Operator(_) => true,
            Principal::Service(caller) => {
                self.any || caller == &self.name || self.allowed.iter().any(|a| a == caller)
            }
        }
    }
}

/// The layer: refuses a caller no intention allows.
pub async fn enforce(
    State(intentions): State<Arc<Intentions>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(Peer(id)) = request.extensions().get::<Peer>() {
        let open = intentions.open_paths.contains(&request.uri().path());
        if !open && !intentions.allows(&id.principal) {
            tracing::warn!(caller = %id, service = %intentions.name, path = %request.uri().path(), "refused by intentions");
            metrics::counter!("mesh_intention_refusals_total").increment(1);
            return Problem::forbidden(format!(
                "no intention lets {id} call `{}` (STRATUS_ALLOWED_CALLERS: {})",
                intentions.name,
                intentions.allowed.join(",")
            ))
            .into_response();
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_deny_but_for_the_named_the_service_itself_and_operators() {
        let intentions = Intentions::new("catalog", &["gateway".into(), " orders ".into()], &[]);
        let service = |name: &str| Principal::Service(name.into());
        assert!(intentions.allows(&service("gateway")));
        assert!(intentions.allows(&service("orders")));
        assert!(intentions.allows(&service("catalog")));
        assert!(!intentions.allows(&service("profile")));
        assert!(intentions.allows(&Principal::Operator("ops".into())));
        assert!(Intentions::new("catalog", &["*".into()], &[]).allows(&service("profile")));
        assert!(!Intentions::new("catalog", &[], &[]).allows(&service("gateway")));
    }
}
