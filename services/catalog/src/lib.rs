//! The catalog service: products and their stock, in the catalog's own database.
//!
//! Reads are public; writes need the role `admin` or the permission `catalog:write`, checked
//! here as well as at the gateway (zero trust: a request that reaches this process directly is
//! held to the same rules).

pub mod api;
pub mod demo;
pub mod product;
pub mod schema;

use std::time::Duration;

use stratus_kit::auth::Tokens;
use stratus_kit::cache::{Cache, CacheArgs, WriteBack, WriteBackSettings};
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

    /// How often counted product views are written to the database (write-back).
    #[arg(long, env = "CATALOG_VIEWS_FLUSH", default_value = "1s", value_parser = stratus_kit::duration::parse)]
    pub views_flush: Duration,

    /// Write the views early once this many products have uncounted views.
    #[arg(long, env = "CATALOG_VIEWS_BATCH", default_value_t = 1000)]
    pub views_batch: usize,

    /// Seed a few demo products into an empty catalog at start-up (`stratus up` turns it on).
    #[arg(long, env = "CATALOG_DEMO_DATA", default_value_t = false, action = clap::ArgAction::Set)]
    pub demo_data: bool,

    #[command(flatten)]
    pub cache: CacheArgs,

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
    let pool = stratus_kit::db::Db::open("catalog", &url, schema::MIGRATIONS).await?;
    if args.demo_data {
        let seeded = demo::seed_if_empty(&pool).await?;
        if seeded > 0 {
            tracing::info!(products = seeded, "seeded the demo products");
        }
    }
    let tokens = Tokens::new(
        &args.tokens,
        RegistryClient::new(&args.common.registry_url)?,
    )?;
    let products = Cache::open("products", &args.cache).await?;
    let views = {
        let (pool, products) = (pool.clone(), products.clone());
        WriteBack::start(
            "views",
            WriteBackSettings {
                every: args.views_flush,
                max_pending: args.views_batch.max(1),
            },
            move |batch| {
                let (pool, products) = (pool.clone(), products.clone());
                Box::pin(async move { api::flush_views(&pool, &products, batch).await })
            },
        )
    };
    let state = api::AppState {
        pool: pool.clone(),
        tokens,
        products,
        views: views.clone(),
    };

    let service = Service::new("catalog", args.port);
    service.health.add_check("database", move || {
        let pool = pool.clone();
        async move { stratus_kit::db::ping(&pool).await }
    });
    let result = service
        .run(&args.common, api::routes().with_state(state))
        .await;
    // Views counted but not yet written go to the database before the process leaves.
    views.close().await;
    result
}
