//! Attribute-based access rules shared by the services: who may touch a record that belongs to
//! someone.
//!
//! Roles on a route answer "may this caller use this endpoint at all"; they cannot answer "may
//! this caller read *this* order", because that depends on an attribute of the record (its
//! owner). The rules here combine the caller's claims with that attribute, in one place, so every
//! service decides the same way:
//!
//! - the owner may read and change their own records;
//! - `admin` may do everything;
//! - a service account (or a support user) may be granted `<resource>:read:any` or
//!   `<resource>:write:any` to reach everyone's records of one kind, and nothing more.
//!
//! A refusal is `404 Not Found`, not `403`: telling a stranger "this order exists but is not
//! yours" would let them enumerate ids. Handlers load the record, then call
//! [`require_read`]/[`require_write`] with its owner before returning anything from it.

use stratus_token::Claims;

use crate::Problem;

/// What the caller wants to do with the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Read,
    Write,
}

impl Action {
    fn word(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Write => "write",
        }
    }
}

/// The permission that grants `action` on every record of `resource`: `orders:read:any`.
pub fn any_permission(resource: &str, action: Action) -> String {
    format!("{resource}:{}:any", action.word())
}

/// Whether `caller` may do `action` on a record of `resource` owned by `owner_id`.
pub fn allows(caller: &Claims, resource: &str, action: Action, owner_id: &str) -> bool {
    let owner = !owner_id.is_empty() && caller.sub == owner_id;
    // `has_permission` is also true for admins.
    owner || caller.has_permission(&any_permission(resource, action))
}

/// Owner, admin, or `<resource>:read:any`.
pub fn can_read(caller: &Claims, resource: &str, owner_id: &str) -> bool {
    allows(caller, resource, Action::Read, owner_id)
}

/// Owner, admin, or `<resource>:write:any`. Write access does not imply read-any: a service
/// that fulfils orders may update their status without browsing them.
pub fn can_write(caller: &Claims, resource: &str, owner_id: &str) -> bool {
    allows(caller, resource, Action::Write, owner_id)
}

/// [`can_read`], as a 404 problem when refused (see the module docs for why not 403).
pub fn require_read(caller: &Claims, resource: &str, owner_id: &str) -> Result<(), Problem> {
    require(caller, resource, Action::Read, owner_id)
}

/// [`can_write`], as a 404 problem when refused.
pub fn require_write(caller: &Claims, resource: &str, owner_id: &str) -> Result<(), Problem> {
    require(caller, resource, Action::Write, owner_id)
}

fn require(caller: &Claims, resource: &str, action: Action, owner_id: &str) -> Result<(), Problem> {
    if allows(caller, resource, action, owner_id) {
        Ok(())
    } else {
        tracing::info!(sub = %caller.sub, resource, action = action.word(), "refused by policy");
        Err(Problem::not_found(format!("no such {resource} record")))
    }
}

/// Whether `caller` may list everyone's records of `resource` (rather than only their own):
/// the query filter a list endpoint applies is `None` (all) or `Some(caller.sub)`.
pub fn list_scope<'a>(caller: &'a Claims, resource: &str) -> Option<&'a str> {
    if caller.has_permission(&any_permission(resource, Action::Read)) {
        None
    } else {
        Some(caller.sub.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(sub: &str, roles: &[&str], permissions: &[&str]) -> Claims {
        Claims {
            iss: "stratus".into(),
            aud: "stratus-api".into(),
            sub: sub.into(),
            exp: 0,
            iat: 0,
            jti: "j".into(),
            email: None,
            roles: roles.iter().map(|r| r.to_string()).collect(),
            permissions: permissions.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn owners_reach_their_own_records_only() {
        let ann = caller("ann", &["customer"], &[]);
        assert!(can_read(&ann, "orders", "ann"));
        assert!(can_write(&ann, "orders", "ann"));
        assert!(!can_read(&ann, "orders", "bob"));
        assert!(!can_write(&ann, "orders", "bob"));
    }

    #[test]
    fn an_empty_owner_belongs_to_nobody() {
        let anonymous = caller("", &[], &[]);
        assert!(!can_read(&anonymous, "orders", ""));
    }

    #[test]
    fn admins_reach_everything() {
        let admin = caller("root", &["admin"], &[]);
        assert!(can_read(&admin, "orders", "bob"));
        assert!(can_write(&admin, "orders", "bob"));
        assert_eq!(list_scope(&admin, "orders"), None);
    }

    #[test]
    fn any_permissions_are_per_resource_and_per_action() {
        let support = caller("svc-1", &[], &["orders:read:any"]);
        assert!(can_read(&support, "orders", "bob"));
        assert!(!can_write(&support, "orders", "bob"));
        assert!(!can_read(&support, "payments", "bob"));
        assert_eq!(list_scope(&support, "orders"), None);
        assert_eq!(list_scope(&support, "payments"), Some("svc-1"));

        let fulfilment = caller("svc-2", &[], &["orders:write:any"]);
        assert!(can_write(&fulfilment, "orders", "bob"));
        assert!(!can_read(&fulfilment, "orders", "bob"));
    }

    #[test]
    fn a_role_named_like_a_permission_grants_nothing() {
        let sneaky = caller("eve", &["orders:read:any"], &[]);
        assert!(!can_read(&sneaky, "orders", "bob"));
    }

    #[test]
    fn refusals_are_not_found() {
        let ann = caller("ann", &["customer"], &[]);
        assert!(require_read(&ann, "orders", "ann").is_ok());
        let refused = require_read(&ann, "orders", "bob").unwrap_err();
        assert_eq!(refused.status, 404);
        assert_eq!(
            require_write(&ann, "orders", "bob").unwrap_err().status,
            404
        );
    }
}
