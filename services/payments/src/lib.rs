//! The payments service: charges each placed order exactly once, with a simulated card.
//!
//! It consumes `order.placed` as a work queue (group `payments`: with several instances, one
//! takes each order), stores the payment and a `payment.completed` or `payment.failed` event in
//! one transaction (the outbox), and serves `GET /api/payments`.

pub mod api;
pub mod card;
pub mod consume;
pub mod schema;

use stratus_kit::auth::Tokens;
use stratus_kit::config::{BrokerArgs, CommonArgs, TokenArgs};
use stratus_kit::outbox::Relay;
use stratus_kit::registry_client::RegistryClient;
use stratus_kit::server::Service;

/// `stratus serve payments`
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Port to listen on (0: any free port, announced to the registry).
    #[arg(long, env = "PORT", default_value_t = 0)]
    pub port: u16,

    /// Database URL (sqlite: or postgres:); default: a SQLite file in the data directory.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,

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
    let url = stratus_kit::db::url_for("payments", args.database_url.as_deref(), &common.data_dir)?;
    let pool = stratus_kit::db::Db::open("payments", &url, schema::MIGRATIONS).await?;
    let broker = args.broker.connect(&common.data_dir).await?;
    let tokens = Tokens::new(&args.tokens, RegistryClient::new(&common.registry_url)?)?;
    let relay = Relay::start(pool.pool().clone(), broker.clone());

    let reporter = stratus_kit::consumer::reporter(&common, "payments")?;
    let consumer = {
        let (pool, relay) = (pool.clone(), relay.clone());
        stratus_kit::consumer::spawn(
            &broker,
            consume::ORDER_PLACED,
            "payments",
            reporter,
            move |message, hop| {
                let (pool, relay) = (pool.clone(), relay.clone());
                async move { consume::charge(&pool, &relay, &message, hop).await }
            },
        )
        .await?
    };

    let state = api::AppState {
        pool: pool.clone(),
        tokens,
    };
    let service =
        Service::new("payments", args.port).with_metadata("broker", broker.backend_name());
    consumer.watch(&service.health);
    service.health.add_check("database", move || {
        let pool = pool.clone();
        async move { stratus_kit::db::ping(&pool).await }
    });
    service.run(&common, api::routes().with_state(state)).await
}
