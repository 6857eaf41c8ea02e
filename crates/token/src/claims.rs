use serde::{Deserialize, Serialize};

/// What an access token says about its bearer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer: who signed it (the auth service).
    pub iss: String,
    /// Audience: who it is for (the Stratus API).
    pub aud: String,
    /// Subject: the user or service account id.
    pub sub: String,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Issued at, seconds since the epoch.
    pub iat: u64,
    /// Unique token id, so a single token can be revoked.
    pub jti: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub permissions: Vec<String>,
}

impl Claims {
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// `admin` may do everything; otherwise the caller needs one of `roles`.
    pub fn has_any_role(&self, roles: &[String]) -> bool {
        roles.is_empty() || self.has_role("admin") || roles.iter().any(|r| self.has_role(r))
    }

    pub fn has_permission(&self, permission: &str) -> bool {
        self.has_role("admin") || self.permissions.iter().any(|p| p == permission)
    }
}
