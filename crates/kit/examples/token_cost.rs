//! What checking a bearer token costs: a full Ed25519 verification, and a repeated token
//! answered from the verified-token cache. Run by `bench/tokens.sh`.

use std::time::Instant;

use stratus_kit::auth::Tokens;
use stratus_kit::config::TokenArgs;
use stratus_kit::registry_client::RegistryClient;
use stratus_token::{now_unix, Claims, Jwks, SigningKey, Verifier};

fn main() -> anyhow::Result<()> {
    let key = SigningKey::generate("bench")?;
    let jwks = Jwks {
        keys: vec![key.jwk()],
    };
    let claims = Claims {
        iss: "stratus".into(),
        aud: "stratus-api".into(),
        sub: "01a2099e-a485-7067-8d80-de7e5f7988a4".into(),
        exp: now_unix() + 3600,
        iat: now_unix(),
        jti: "01a2099e-a485-7067-8d80-de7e5f7988a5".into(),
        email: Some("ann@example.com".into()),
        roles: vec!["customer".into()],
        permissions: vec![],
    };
    let token = key.sign(&claims);

    let verifier = Verifier::new(&jwks, "stratus", "stratus-api");
    let rounds = 20_000;
    let started = Instant::now();
    for _ in 0..rounds {
        verifier
            .verify(&token)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let full = started.elapsed().as_secs_f64() / rounds as f64;

    let args = TokenArgs {
        token_issuer: "stratus".into(),
        token_audience: "stratus-api".into(),
        jwks_url: None,
    };
    let tokens = Tokens::with_keys(&args, RegistryClient::new("http://127.0.0.1:1")?, &jwks)?;
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    let cached_rounds = 1_000_000;
    let cached = runtime.block_on(async {
        tokens
            .verify(&token)
            .await
            .map_err(|p| anyhow::anyhow!("{:?}", p.detail))?;
        let started = Instant::now();
        for _ in 0..cached_rounds {
            tokens
                .verify(&token)
                .await
                .map_err(|p| anyhow::anyhow!("{:?}", p.detail))?;
        }
        Ok::<_, anyhow::Error>(started.elapsed().as_secs_f64() / cached_rounds as f64)
    })?;

    println!("token length: {} bytes", token.len());
    println!(
        "full verification (Ed25519 + claims): {:>8.2} us  = {:>9.0} tokens/s on one core",
        full * 1e6,
        1.0 / full
    );
    println!(
        "repeated token (verified cache):      {:>8.2} us  = {:>9.0} tokens/s on one core",
        cached * 1e6,
        1.0 / cached
    );
    Ok(())
}
