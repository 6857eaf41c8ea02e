//! An admin's access token as an operator credential, beside the operator certificate.
//!
//! A person at a terminal or a script has an access token from `/auth/login` more easily than a
//! certificate from the authority's files. On the ports that serve an admin or query API (the
//! registry, the event sink, the gateway's admin API), a caller that presented no certificate
//! but shows `Authorization: Bearer <token>` is an operator when the token verifies (signature
//! by auth's keys, issuer, audience, expiry: [`Tokens`]) and its claims give it the `admin`
//! role. It then carries a [`Peer`] like a certificate's, `spiffe://<domain>/operator/<name>`
//! (the name made from the token's subject), and an [`OperatorToken`] saying where it came from,
//! so every check downstream (intentions, `Caller::operator`, the registry's own rules) treats
//! it as any operator.
//!
//! This runs only for callers without a certificate: mesh traffic pays nothing for it.

use std::sync::Arc;

use axum::http::HeaderMap;
use stratus_identity::SpiffeId;

use crate::auth::Tokens;
use crate::identity::Peer;
use crate::Problem;

/// The role whose holders are operators.
pub const ADMIN_ROLE: &str = "admin";

/// In a request's extensions beside its [`Peer`] when that identity came from an admin's access
/// token rather than a certificate (absent for certificates). For logs and audit records.
#[derive(Clone, Debug)]
pub struct OperatorToken {
    /// The token's subject (a user or client id).
    pub subject: String,
    /// The token's email claim, when it has one.
    pub email: Option<String>,
}

/// What a request without a certificate showed.
pub enum Shown {
    /// No `Authorization` header.
    Nothing,
    /// An admin's valid access token: the operator it makes the caller.
    Operator(Peer, OperatorToken),
}

/// Reads the bearer token of a request without a certificate: `Ok(Shown::Nothing)` without
/// one, an operator for an admin's token, else the problem to answer: 401 for a token that does
/// not verify (expired, bad signature, another issuer or audience, not a bearer token at all),
/// 403 for a valid token without the admin role, 503 when auth's keys cannot be fetched.
pub async fn check(
    tokens: &Tokens,
    trust_domain: &str,
    headers: &HeaderMap,
) -> Result<Shown, Problem> {
    let Some(token) = crate::auth::bearer_in(headers)? else {
        return Ok(Shown::Nothing);
    };
    let claims = tokens.verify_shared(token).await?;
    if !claims.has_role(ADMIN_ROLE) {
        return Err(Problem::forbidden(
            "this access token is not an admin's: without a Stratus certificate, only an \
             admin's access token makes its holder an operator",
        ));
    }
    let name = operator_name(&claims.sub);
    let id = SpiffeId::operator(trust_domain, &name)
        .map_err(|error| Problem::internal(format!("an operator's identity: {error}")))?;
    Ok(Shown::Operator(
        Peer(Arc::new(id)),
        OperatorToken {
            subject: claims.sub.clone(),
            email: claims.email.clone(),
        },
    ))
}

/// A SPIFFE path segment for a token's subject: lowercase letters, digits and '-' (a user id,
/// a UUID, passes unchanged), anything else made '-', at most 63 characters.
pub fn operator_name(subject: &str) -> String {
    let mapped: String = subject
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '-',
        })
        .take(63)
        .collect();
    let trimmed = mapped.trim_matches('-');
    if trimmed.is_empty() {
        "token".to_string()
    } else {
        trimmed.to_string()
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;
    use stratus_token::{now_unix, Claims, Jwks, SigningKey};

    use super::*;
    use crate::config::TokenArgs;
    use crate::registry_client::RegistryClient;

    fn claims(roles: &[&str], exp: u64) -> Claims {
        Claims {
            iss: "stratus".into(),
            aud: "stratus-api".into(),
            sub: "01890a5d-ac96-774b-bcce-b302099a8057".into(),
            exp,
            iat: exp.saturating_sub(900),
            jti: "j".into(),
            email: Some("ops@example.com".into()),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            permissions: vec![],
        }
    }

    fn headers(authorization: Option<String>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(value) = authorization {
            headers.insert("authorization", HeaderValue::from_str(&value).unwrap());
        }
        headers
    }

    #[tokio::test]
    async fn only_an_admins_valid_token_makes_an_operator() {
        let key = SigningKey::generate("k1").unwrap();
        let jwks = Jwks {
            keys: vec![key.jwk()],
        };
        let args = TokenArgs {
            token_issuer: "stratus".into(),
            token_audience: "stratus-api".into(),
            jwks_url: None,
        };
        let registry = RegistryClient::new("http://127.0.0.1:1").unwrap();
        let tokens = Tokens::with_keys(&args, registry, &jwks).unwrap();
        let check = |value: Option<String>| {
            let tokens = tokens.clone();
            async move { check(&tokens, "stratus.local", &headers(value)).await }
        };
        let bearer = |claims: &Claims| Some(format!("Bearer {}", key.sign(claims)));

        let admin = check(bearer(&claims(&["admin"], now_unix() + 600))).await;
        let Ok(Shown::Operator(Peer(id), token)) = admin else {
            panic!("an admin's token made no operator");
        };
        assert_eq!(
            id.uri(),
            "spiffe://stratus.local/operator/01890a5d-ac96-774b-bcce-b302099a8057"
        );
        assert_eq!(token.email.as_deref(), Some("ops@example.com"));

        assert!(matches!(check(None).await, Ok(Shown::Nothing)));
        let status = |shown: Result<Shown, Problem>| match shown {
            Err(problem) => problem.status().as_u16(),
            Ok(_) => 200,
        };
        let customer = bearer(&claims(&["customer"], now_unix() + 600));
        assert_eq!(status(check(customer).await), 403);
        let expired = bearer(&claims(&["admin"], now_unix() - 600));
        assert_eq!(status(check(expired).await), 401);
        let mut other_audience = claims(&["admin"], now_unix() + 600);
        other_audience.aud = "another-api".into();
        assert_eq!(status(check(bearer(&other_audience)).await), 401);
        assert_eq!(status(check(Some("Bearer garbage".into())).await), 401);
        assert_eq!(status(check(Some("Basic YTpi".into())).await), 401);
    }

    #[test]
    fn a_subject_becomes_a_valid_operator_name() {
        let uuid = "01890a5d-ac96-774b-bcce-b302099a8057";
        assert_eq!(operator_name(uuid), uuid);
        assert_eq!(operator_name("Deploy_Bot@ci"), "deploy-bot-ci");
        assert_eq!(operator_name("--"), "token");
        assert_eq!(operator_name(""), "token");
        let long = "a".repeat(100);
        assert_eq!(operator_name(&long).len(), 63);
        for subject in [uuid, "Deploy_Bot@ci", "--", "", long.as_str(), "é-x-", "-a"] {
            let name = operator_name(subject);
            assert!(
                SpiffeId::operator("stratus.local", &name).is_ok(),
                "{subject:?} gave {name:?}"
            );
        }
    }
}
