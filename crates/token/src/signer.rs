use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::Serialize;

use crate::{b64_encode, Claims, Jwk, ALGORITHM};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("could not generate an Ed25519 key")]
    Generate,
    #[error("the stored signing key is not a valid Ed25519 PKCS#8 document")]
    Invalid,
}

/// An Ed25519 private key with its key id.
pub struct SigningKey {
    kid: String,
    pair: Ed25519KeyPair,
    pkcs8: Vec<u8>,
}

#[derive(Serialize)]
struct Header<'a> {
    alg: &'a str,
    typ: &'a str,
    kid: &'a str,
}

impl SigningKey {
    /// A fresh key. `kid` names it in token headers and in the JWKS.
    pub fn generate(kid: impl Into<String>) -> Result<Self, KeyError> {
        let document =
            Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| KeyError::Generate)?;
        Self::from_pkcs8(kid, document.as_ref())
    }

    /// A key stored earlier with [`SigningKey::pkcs8`].
    pub fn from_pkcs8(kid: impl Into<String>, pkcs8: &[u8]) -> Result<Self, KeyError> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|_| KeyError::Invalid)?;
        Ok(Self {
            kid: kid.into(),
            pair,
            pkcs8: pkcs8.to_vec(),
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The private key as PKCS#8 DER, for storage.
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The public half, as published in the JWKS.
    pub fn jwk(&self) -> Jwk {
        Jwk {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            x: b64_encode(self.pair.public_key().as_ref()),
            kid: self.kid.clone(),
            use_: Some("sig".into()),
            alg: Some(ALGORITHM.into()),
        }
    }

    /// A compact JWS: `header.payload.signature`.
    pub fn sign(&self, claims: &Claims) -> String {
        self.sign_json(claims)
    }

    /// Signs any JSON payload (an OpenID Connect ID token, say) with this key.
    pub fn sign_json<T: Serialize + ?Sized>(&self, claims: &T) -> String {
        let header = Header {
            alg: ALGORITHM,
            typ: "JWT",
            kid: &self.kid,
        };
        // Serialising these plain structs cannot fail.
        let header = serde_json::to_vec(&header).unwrap_or_default();
        let payload = serde_json::to_vec(claims).unwrap_or_default();
        let mut token = b64_encode(&header);
        token.push('.');
        token.push_str(&b64_encode(&payload));
        let signature = self.pair.sign(token.as_bytes());
        token.push('.');
        token.push_str(&b64_encode(signature.as_ref()));
        token
    }
}
