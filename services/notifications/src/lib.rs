//! The notifications service: one message to the customer per order outcome.
//!
//! It consumes `payment.completed` and `payment.failed` as the group `notifications` (so it and
//! orders each get every payment event) and serves `GET /api/notifications`.

pub mod api;
pub mod consume;
pub mod schema;

use stratus_kit::auth::Tokens;
use stratus_kit::config::{BrokerArgs, CommonArgs, TokenArgs};
use stratus_kit::registry_client::RegistryClient;
use stratus_kit::server::Service;

use crate::consume::{PAYMENT_COMPLETED, PAYMENT_FAILED};

/// `stratus serve notifications`
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
    let url = stratus_kit::db::url_for(
        "notifications",
        args.database_url.as_deref(),
        &common.data_dir,
    )?;
    let pool = stratus_kit::db::Db::open("notifications", &url, schema::MIGRATIONS).await?;
    let broker = args.broker.connect(&common.data_dir).await?;
    let tokens = Tokens::new(&args.tokens, RegistryClient::new(&common.registry_url)?)?;

    let reporter = stratus_kit::consumer::reporter(&common, "notifications")?;
    let mut consumers = Vec::new();
    for topic in [PAYMENT_COMPLETED, PAYMENT_FAILED] {
        let pool = pool.clone();
        let consumer = stratus_kit::consumer::spawn(
            &broker,
            topic,
            "notifications",
            reporter.clone(),
            move |message, _| {
                let pool = pool.clone();
                async move { consume::notify(&pool, topic, &message).await }
            },
        )
        .await?;
        consumers.push(consumer);
    }

    let state = api::AppState {
        pool: pool.clone(),
        tokens,
    };
    let service =
        Service::new("notifications", args.port).with_metadata("broker", broker.backend_name());
    for consumer in &consumers {
        consumer.watch(&service.health);
    }
    service.health.add_check("database", move || {
        let pool = pool.clone();
        async move { stratus_kit::db::ping(&pool).await }
    });
    service.run(&common, api::routes().with_state(state)).await
}
