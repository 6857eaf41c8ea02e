//! The profile service: each customer's display name, address and phone, in the profile
//! service's own database, keyed by the `sub` of their token. Kept apart from auth (which owns
//! logins and passwords), as the seed documents separate `/login` from `/profile`.
//!
//! Every route needs a valid token (checked here as well as at the gateway); a caller only ever
//! sees and changes their own profile.

pub mod api;
pub mod profile;
pub mod schema;

use stratus_kit::auth::Tokens;
use stratus_kit::cache::{Cache, CacheArgs};
use stratus_kit::config::{CommonArgs, TokenArgs};
use stratus_kit::registry_client::RegistryClient;
use stratus_kit::server::Service;

/// `stratus serve profile`
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Port to listen on (0: any free port, announced to the registry).
    #[arg(long, env = "PORT", default_value_t = 0)]
    pub port: u16,

    /// Database URL (sqlite: or postgres:); default: a SQLite file in the data directory.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,

    #[command(flatten)]
    pub cache: CacheArgs,

    #[command(flatten)]
    pub tokens: TokenArgs,

    #[command(flatten)]
    pub common: CommonArgs,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let url = stratus_kit::db::url_for(
        "profile",
        args.database_url.as_deref(),
        &args.common.data_dir,
    )?;
    let pool = stratus_kit::db::Db::open("profile", &url, schema::MIGRATIONS).await?;
    let tokens = Tokens::new(
        &args.tokens,
        RegistryClient::new(&args.common.registry_url)?,
    )?;
    let cache = Cache::open("profiles", &args.cache).await?;
    let state = api::AppState {
        pool: pool.clone(),
        tokens,
        profiles: api::profiles(cache, pool.clone()),
    };

    let service = Service::new("profile", args.port);
    service.health.add_check("database", move || {
        let pool = pool.clone();
        async move { stratus_kit::db::ping(&pool).await }
    });
    service
        .run(&args.common, api::routes().with_state(state))
        .await
}
