#![no_main]
//! The token verification path every request with a bearer token takes (gateway and services).
//!
//! First byte 0: the rest is a token exactly as a client could send it: verification returns an
//! error or claims, never panics. Otherwise the rest is a JSON payload that we sign with the
//! genuine key, which carries the input past the signature check into the claim checks: a token
//! that verifies must have our issuer and audience and must not have expired (beyond the
//! clock-skew leeway).

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use stratus_token::{Jwks, SigningKey, Verifier, LEEWAY};

const ISSUER: &str = "stratus";
const AUDIENCE: &str = "stratus-api";
const NOW: u64 = 1_800_000_000;

struct Fixture {
    key: SigningKey,
    verifier: Verifier,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let key = SigningKey::generate("fuzz-key").expect("a key");
        let jwks = Jwks {
            keys: vec![key.jwk()],
        };
        Fixture {
            verifier: Verifier::new(&jwks, ISSUER, AUDIENCE),
            key,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let fixture = fixture();
    match data.split_first() {
        Some((0, token)) => {
            let Ok(token) = std::str::from_utf8(token) else {
                return;
            };
            let _ = Verifier::key_id_of(token);
            let _ = fixture.verifier.verify_at(token, NOW);
        }
        Some((_, payload)) => {
            let Ok(payload) = serde_json::from_slice::<serde_json::Value>(payload) else {
                return;
            };
            let token = fixture.key.sign_json(&payload);
            if let Ok(claims) = fixture.verifier.verify_at(&token, NOW) {
                assert_eq!(claims.iss, ISSUER);
                assert_eq!(claims.aud, AUDIENCE);
                // Within the clock-skew leeway a token is still accepted.
                assert!(
                    claims.exp.saturating_add(LEEWAY) > NOW,
                    "an expired token verified: {payload}"
                );
            }
        }
        None => {}
    }
});
