//! EdDSA (Ed25519) JSON Web Tokens, the way Stratus uses them.
//!
//! The auth service signs access tokens with an Ed25519 key; the gateway and every service verify
//! them with the public keys the auth service publishes as a JWKS. This crate holds both halves.
//!
//! Why not a general JWT library: Stratus accepts exactly one algorithm, `EdDSA`. A verifier that
//! knows that up front rejects `alg: none`, `HS256`-with-the-public-key and every other algorithm
//! confusion before it looks at anything else, and it is small enough to read in one sitting. The
//! signature maths is ring's, the same library rustls already uses.

mod claims;
mod jwk;
mod signer;
mod verifier;

pub use claims::Claims;
pub use jwk::{Jwk, Jwks};
pub use signer::{KeyError, SigningKey};
pub use verifier::{TokenError, Verifier, LEEWAY};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

/// The one algorithm Stratus signs and accepts.
pub const ALGORITHM: &str = "EdDSA";

fn b64_encode(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn b64_decode(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text).ok()
}

/// Seconds since the Unix epoch, the unit of `exp`, `iat` and `nbf`.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
