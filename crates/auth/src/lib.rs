//! The auth service: who you are (authentication) and what you may do (roles in the token).
//!
//! Users sign up and log in with an email and password (argon2id). A login returns a short-lived
//! EdDSA access token, which the gateway and the services verify locally with the public keys
//! published at `/auth/.well-known/jwks.json`, and an opaque refresh token, stored hashed and
//! rotated on every use. The secrets it must keep readable (TOTP secrets, signing keys) are
//! stored sealed with a key the database never holds ([`sealed`]).

pub mod admin;
pub mod api;
pub mod clients;
pub mod keys;
pub mod mfa;
pub mod oauth;
pub mod passwords;
pub mod revocation;
pub mod roles;
pub mod schema;
pub mod sealed;
pub mod throttle;
pub mod users;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use stratus_kit::config::{CommonArgs, TokenArgs};
use stratus_kit::seal_key::SealKeyArgs;
use stratus_kit::server::Service;

pub const ADMIN_EMAIL: &str = "admin@stratus.local";

/// `stratus serve auth`
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Port to listen on (0: any free port, announced to the registry).
    #[arg(long, env = "PORT", default_value_t = 0)]
    pub port: u16,

    /// Database URL (sqlite: or postgres:); default: a SQLite file in the data directory.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,

    /// Password of `admin@stratus.local` on first start; generated and printed once when unset.
    #[arg(long, env = "STRATUS_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,

    /// Lifetime of access tokens.
    #[arg(long, env = "STRATUS_ACCESS_TOKEN_TTL", default_value = "15m", value_parser = stratus_kit::duration::parse)]
    pub access_token_ttl: Duration,

    /// Lifetime of refresh tokens.
    #[arg(long, env = "STRATUS_REFRESH_TOKEN_TTL", default_value = "720h", value_parser = stratus_kit::duration::parse)]
    pub refresh_token_ttl: Duration,

    /// Rotate the token signing key this often (e.g. `720h`); unset: only on
    /// `POST /auth/admin/keys/rotate`.
    #[arg(long, env = "STRATUS_KEY_ROTATION", value_parser = stratus_kit::duration::parse)]
    pub key_rotation: Option<Duration>,

    /// The key that seals TOTP secrets and signing keys in the database
    /// (STRATUS_SEAL_KEY, STRATUS_SEAL_KEY_FILE, else `<data dir>/identity/seal.key`).
    #[command(flatten)]
    pub seal: SealKeyArgs,

    #[command(flatten)]
    pub tokens: TokenArgs,

    #[command(flatten)]
    pub common: CommonArgs,
}

/// Everything `run` needs before it serves: the database migrated, every stored secret opened
/// and sealed with the current seal key, the signing key, the admin account.
pub async fn prepare(args: &Args) -> anyhow::Result<Arc<api::AppState>> {
    let url =
        stratus_kit::db::url_for("auth", args.database_url.as_deref(), &args.common.data_dir)?;
    let pool = stratus_kit::db::Db::open("auth", &url, schema::MIGRATIONS).await?;
    let source = args.seal.source(&args.common.data_dir);
    let sealer = Arc::new(source.load()?);
    let resealed = sealed::reseal_all(&pool, &sealer).await.with_context(|| {
        format!("opening the auth database's secrets with the seal key ({source})")
    })?;
    if resealed != sealed::Resealed::default() {
        tracing::info!(
            key = sealer.current_id(),
            from_plain = resealed.from_plain,
            from_old_key = resealed.from_old_key,
            "stored secrets sealed with the current seal key"
        );
    }
    let signing_key = keys::current_or_create(&pool, &sealer)
        .await
        .context("loading the signing key")?;
    users::ensure_admin(&pool, args.admin_password.as_deref()).await?;
    let signing_key = Arc::new(keys::CurrentKey::new(signing_key));
    let state = api::AppState::new(pool, sealer, signing_key, args).await?;
    Ok(Arc::new(state))
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let state = prepare(&args).await?;
    let pool = state.pool.clone();
    tokio::spawn(keys::maintain(
        pool.clone(),
        state.sealer.clone(),
        state.key.clone(),
        args.access_token_ttl,
        args.key_rotation,
    ));
    tokio::spawn(revocation::prune(pool.clone()));
    let service = Service::new("auth", args.port).serving_the_mesh();
    let ping_pool = pool.clone();
    service.health.add_check("database", move || {
        let pool = ping_pool.clone();
        async move { stratus_kit::db::ping(&pool).await }
    });
    service
        .run(&args.common, api::routes().with_state(state))
        .await
}
