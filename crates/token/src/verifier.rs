use std::collections::HashMap;

use ring::signature::{UnparsedPublicKey, ED25519};
use serde::Deserialize;

use crate::{b64_decode, now_unix, Claims, Jwks, ALGORITHM};

/// Why a token was refused. The variants are for logs and metrics; clients only ever see 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not a compact JWS")]
    Malformed,
    #[error("the token's algorithm is not EdDSA")]
    Algorithm,
    #[error("the token names no key id, or one that is not a plain identifier")]
    KeyId,
    #[error("the token was signed by a key this verifier does not know")]
    UnknownKey,
    #[error("the token's signature does not match")]
    Signature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token was issued by someone else")]
    Issuer,
    #[error("the token is meant for another audience")]
    Audience,
}

/// Largest token accepted: well above any Stratus token, far below anything abusive.
const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY: u64 = 30;

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

#[derive(Deserialize)]
struct TimeClaims {
    #[serde(default)]
    nbf: Option<u64>,
}

/// Checks tokens against a fixed set of public keys, issuer and audience.
///
/// The order of checks matters: the header's algorithm and key id are checked before any
/// signature work, the signature before the payload is trusted, and only then the claims.
#[derive(Clone)]
pub struct Verifier {
    keys: HashMap<String, UnparsedPublicKey<Vec<u8>>>,
    issuer: String,
    audience: String,
}

impl Verifier {
    pub fn new(jwks: &Jwks, issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        let keys = jwks
            .keys
            .iter()
            .filter(|k| k.kty == "OKP" && k.crv == "Ed25519")
            .filter(|k| k.alg.as_deref().is_none_or(|a| a == ALGORITHM))
            .filter_map(|k| {
                let x = b64_decode(&k.x)?;
                (x.len() == 32).then(|| (k.kid.clone(), UnparsedPublicKey::new(&ED25519, x)))
            })
            .collect();
        Self {
            keys,
            issuer: issuer.into(),
            audience: audience.into(),
        }
    }

    pub fn knows(&self, kid: &str) -> bool {
        self.keys.contains_key(kid)
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// The key id a token names, if its header is well formed. Lets a caller refresh its JWKS
    /// when a token names a key it has not seen yet (signing key rotation).
    pub fn key_id_of(token: &str) -> Result<String, TokenError> {
        let (header, _) = split(token)?;
        let header = parse_header(header)?;
        header.kid.ok_or(TokenError::KeyId)
    }

    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        self.verify_at(token, now_unix())
    }

    pub fn verify_at(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        let (header_b64, rest) = split(token)?;
        let (payload_b64, signature_b64) = rest.split_once('.').ok_or(TokenError::Malformed)?;
        let header = parse_header(header_b64)?;
        let kid = header.kid.ok_or(TokenError::KeyId)?;
        let key = self.keys.get(&kid).ok_or(TokenError::UnknownKey)?;

        let signature = b64_decode(signature_b64).ok_or(TokenError::Malformed)?;
        let signed = &token[..header_b64.len() + 1 + payload_b64.len()];
        key.verify(signed.as_bytes(), &signature)
            .map_err(|_| TokenError::Signature)?;

        let payload = b64_decode(payload_b64).ok_or(TokenError::Malformed)?;
        let claims: Claims = serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
        let times: TimeClaims =
            serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
        // Saturating: `exp` is the signer's number, and u64::MAX must not wrap (or panic).
        if claims.exp.saturating_add(LEEWAY) <= now {
            return Err(TokenError::Expired);
        }
        if times
            .nbf
            .is_some_and(|nbf| nbf > now.saturating_add(LEEWAY))
        {
            return Err(TokenError::NotYetValid);
        }
        if claims.iss != self.issuer {
            return Err(TokenError::Issuer);
        }
        if claims.aud != self.audience {
            return Err(TokenError::Audience);
        }
        Ok(claims)
    }
}

fn split(token: &str) -> Result<(&str, &str), TokenError> {
    if token.len() > MAX_TOKEN_LEN || token.bytes().filter(|b| *b == b'.').count() != 2 {
        return Err(TokenError::Malformed);
    }
    token.split_once('.').ok_or(TokenError::Malformed)
}

fn parse_header(header_b64: &str) -> Result<Header, TokenError> {
    let bytes = b64_decode(header_b64).ok_or(TokenError::Malformed)?;
    let header: Header = serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)?;
    if header.alg != ALGORITHM {
        return Err(TokenError::Algorithm);
    }
    if let Some(kid) = &header.kid {
        let plain = !kid.is_empty()
            && kid.len() <= 64
            && kid
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !plain {
            return Err(TokenError::KeyId);
        }
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{b64_encode, SigningKey};

    #[test]
    fn an_expiry_at_the_end_of_time_neither_wraps_nor_panics() {
        // `exp + LEEWAY` would overflow: a panic in debug builds, "expired" in release.
        let key = SigningKey::generate("k1").unwrap();
        let verifier = Verifier::new(
            &Jwks {
                keys: vec![key.jwk()],
            },
            "stratus",
            "api",
        );
        let token = key.sign(&claims(u64::MAX));
        assert!(verifier.verify_at(&token, 1_800_000_000).is_ok());
    }

    fn claims(exp: u64) -> Claims {
        Claims {
            iss: "stratus".into(),
            aud: "api".into(),
            sub: "u1".into(),
            exp,
            iat: 0,
            jti: "j1".into(),
            email: None,
            roles: vec!["customer".into()],
            permissions: vec![],
        }
    }

    fn setup() -> (SigningKey, Verifier) {
        let key = SigningKey::generate("k1").unwrap();
        let verifier = Verifier::new(
            &Jwks {
                keys: vec![key.jwk()],
            },
            "stratus",
            "api",
        );
        (key, verifier)
    }

    #[test]
    fn accepts_a_token_it_signed() {
        let (key, verifier) = setup();
        let token = key.sign(&claims(now_unix() + 60));
        assert_eq!(verifier.verify(&token).unwrap().sub, "u1");
    }

    #[test]
    fn rejects_expired_tokens() {
        let (key, verifier) = setup();
        let token = key.sign(&claims(1000));
        assert_eq!(verifier.verify(&token), Err(TokenError::Expired));
    }

    #[test]
    fn rejects_alg_none_and_hs256() {
        let (key, verifier) = setup();
        let good = key.sign(&claims(now_unix() + 60));
        let payload = good.split('.').nth(1).unwrap();
        for alg in ["none", "HS256", "RS256", "eddsa"] {
            let header = b64_encode(format!(r#"{{"alg":"{alg}","kid":"k1"}}"#).as_bytes());
            let forged = format!("{header}.{payload}.");
            assert_eq!(
                verifier.verify(&forged),
                Err(TokenError::Algorithm),
                "{alg}"
            );
        }
    }

    #[test]
    fn rejects_tampered_payloads() {
        let (key, verifier) = setup();
        let good = key.sign(&claims(now_unix() + 60));
        let mut parts: Vec<&str> = good.split('.').collect();
        let mut admin = claims(now_unix() + 60);
        admin.roles = vec!["admin".into()];
        let forged_payload = b64_encode(&serde_json::to_vec(&admin).unwrap());
        parts[1] = &forged_payload;
        assert_eq!(
            verifier.verify(&parts.join(".")),
            Err(TokenError::Signature)
        );
    }

    #[test]
    fn rejects_unknown_keys_and_odd_kids() {
        let (_, verifier) = setup();
        let other = SigningKey::generate("k2").unwrap();
        let token = other.sign(&claims(now_unix() + 60));
        assert_eq!(verifier.verify(&token), Err(TokenError::UnknownKey));

        let header = b64_encode(br#"{"alg":"EdDSA","kid":"../../etc/passwd"}"#);
        let forged = format!("{header}.e30.AAAA");
        assert_eq!(verifier.verify(&forged), Err(TokenError::KeyId));
    }

    #[test]
    fn rejects_wrong_issuer_and_audience() {
        let (key, _) = setup();
        let jwks = Jwks {
            keys: vec![key.jwk()],
        };
        let token = key.sign(&claims(now_unix() + 60));
        assert_eq!(
            Verifier::new(&jwks, "other", "api").verify(&token),
            Err(TokenError::Issuer)
        );
        assert_eq!(
            Verifier::new(&jwks, "stratus", "other").verify(&token),
            Err(TokenError::Audience)
        );
    }

    #[test]
    fn rejects_garbage() {
        let (_, verifier) = setup();
        for junk in [
            "",
            ".",
            "..",
            "a.b.c",
            "a.b",
            "a.b.c.d",
            &"x".repeat(10_000),
        ] {
            assert!(verifier.verify(junk).is_err(), "{junk}");
        }
    }

    #[test]
    fn stored_keys_round_trip() {
        let key = SigningKey::generate("k1").unwrap();
        let again = SigningKey::from_pkcs8("k1", key.pkcs8()).unwrap();
        assert_eq!(key.jwk(), again.jwk());
    }
}
