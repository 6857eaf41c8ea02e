//! The orders service: customers place orders, which start the shop's saga.
//!
//! `POST /api/orders` prices the items with the catalog (a synchronous call through client-side
//! discovery, behind retries and a circuit breaker), stores the order as `pending` and an
//! `order.placed` event in one transaction (the transactional outbox), and answers 201. Payments
//! takes it from there; orders consumes `payment.completed` / `payment.failed` (group `orders`)
//! and marks the order `paid` or `failed`. Reads need only the orders database, so they keep
//! working while the catalog is down.

pub mod api;
pub mod consume;
pub mod events;
pub mod order;
pub mod pricing;
pub mod schema;

use std::sync::Arc;
use std::time::Duration;

use stratus_kit::auth::Tokens;
use stratus_kit::config::{BrokerArgs, CommonArgs, TokenArgs};
use stratus_kit::discovery::Discovery;
use stratus_kit::outbox::Relay;
use stratus_kit::registry_client::RegistryClient;
use stratus_kit::resilience::CircuitBreaker;
use stratus_kit::server::Service;

use crate::events::{PAYMENT_COMPLETED, PAYMENT_FAILED};

/// `stratus serve orders`
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Port to listen on (0: any free port, announced to the registry).
    #[arg(long, env = "PORT", default_value_t = 0)]
    pub port: u16,

    /// Database URL (sqlite: or postgres:); default: a SQLite file in the data directory.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,

    /// How long one call to the catalog may take.
    #[arg(long, env = "STRATUS_CATALOG_TIMEOUT", default_value = "400ms", value_parser = stratus_kit::duration::parse)]
    pub catalog_timeout: Duration,

    /// Consecutive failed catalog calls that open the circuit breaker.
    #[arg(long, env = "STRATUS_CATALOG_BREAKER_FAILURES", default_value_t = 5)]
    pub catalog_breaker_failures: u32,

    /// How long the open breaker refuses calls before letting a probe through.
    #[arg(long, env = "STRATUS_CATALOG_BREAKER_OPEN", default_value = "2s", value_parser = stratus_kit::duration::parse)]
    pub catalog_breaker_open: Duration,

    #[command(flatten)]
    pub broker: BrokerArgs,

    #[command(flatten)]
    pub tokens: TokenArgs,

    #[command(flatten)]
    pub common: CommonArgs,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut common = args.common.clone();
    common.instance_id = Some(common.instance_id());
    let url = stratus_kit::db::url_for("orders", args.database_url.as_deref(), &common.data_dir)?;
    let pool = stratus_kit::db::Db::open("orders", &url, schema::MIGRATIONS).await?;
    let broker = args.broker.connect(&common.data_dir).await?;
    let registry = RegistryClient::new(&common.registry_url)?;
    let tokens = Tokens::new(&args.tokens, registry.clone())?;
    let catalog = Arc::new(pricing::Catalog {
        // Orders calls the catalog alone: changes to other services are not even sent to it.
        discovery: Discovery::start_for(registry, vec!["catalog".into()], args.catalog_timeout)?,
        breaker: Arc::new(CircuitBreaker::new(
            args.catalog_breaker_failures,
            args.catalog_breaker_open,
        )),
    });
    let relay = Relay::start(pool.pool().clone(), broker.clone());

    let reporter = stratus_kit::consumer::reporter(&common, "orders")?;
    let mut consumers = Vec::new();
    for topic in [PAYMENT_COMPLETED, PAYMENT_FAILED] {
        let pool = pool.clone();
        let consumer = stratus_kit::consumer::spawn(
            &broker,
            topic,
            "orders",
            reporter.clone(),
            move |message, _| {
                let pool = pool.clone();
                async move { consume::apply(&pool, topic, &message).await }
            },
        )
        .await?;
        consumers.push(consumer);
    }

    let state = api::AppState {
        pool: pool.clone(),
        tokens,
        catalog,
        relay,
    };
    let service = Service::new("orders", args.port).with_metadata("broker", broker.backend_name());
    for consumer in &consumers {
        consumer.watch(&service.health);
    }
    service.health.add_check("database", move || {
        let pool = pool.clone();
        async move { stratus_kit::db::ping(&pool).await }
    });
    // No readiness check on the broker: with the outbox, orders are taken while it is away.
    service.run(&common, api::routes().with_state(state)).await
}
