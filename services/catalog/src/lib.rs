//! The catalog service: products and their stock, in the catalog's own database.
//!
//! Reads are public; writes need the role `admin` or the permission `catalog:write`, checked
//! here as well as at the gateway (zero trust: a request that reaches this process directly is
//! held to the same rules).

pub mod api;
pub mod product;
pub mod schema;

use stratus_kit::auth::Tokens;
use stratus_kit::config::{CommonArgs, TokenArgs};
use stratus_kit::registry_client::RegistryClient;
use stratus_kit::server::Service;

/// `stratus serve catalog`
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Port to listen on (0: any free port, announced to the registry).
    #[arg(long, env = "PORT", default_value_t = 0)]
    pub port: u16,

    /// Database URL (sqlite: or postgres:); default: a SQLite file in the data directory.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,

    #[command(flatten)]
    pub tokens: TokenArgs,

    #[command(flatten)]
    pub common: CommonArgs,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let url = stratus_kit::db::url_for(
        "catalog",
        args.database_url.as_deref(),
        &args.common.data_dir,
    )?;
    let (pool, _) = stratus_kit::db::open(&url, schema::MIGRATIONS).await?;
    let tokens = Tokens::new(
        &args.tokens,
        RegistryClient::new(&args.common.registry_url)?,
    )?;
    let state = api::AppState {
        pool: pool.clone(),
        tokens,
    };

    let service = Service::new("catalog", args.port);
    service.health.add_check("database", move || {
        let pool = pool.clone();
        async move { stratus_kit::db::ping(&pool).await }
    });
    service.run(&args.common, api::router(state)).await
}
