//! The registry: the live directory of which instance of which service is where.
//!
//! Every process registers its address with a lease (TTL) and renews it with heartbeats; an
//! instance that stops renewing is dropped. Watchers (the gateway, service clients, DNS) ask with
//! the last index they saw and get an answer the moment anything changes: no polling delay.
//!
//! Where the instances are kept is a [`store::Store`]: this process's memory (the default), or
//! etcd, which lets several registry processes serve one view and outlive each other.

pub mod answers;
pub mod api;
pub mod checks;
pub mod coalesce;
pub mod deltas;
pub mod etcd_checks;
pub mod events;
pub mod identity;
pub mod prometheus;
pub mod store;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use stratus_kit::auth::Tokens;
use stratus_kit::config::{CommonArgs, TokenArgs};
use stratus_kit::server::Service;

use store::{EtcdStore, MemoryStore, Store, StoreConfig};

/// `stratus serve registry`
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Port of the registry API.
    #[arg(long, env = "PORT", default_value_t = 8500)]
    pub port: u16,

    /// Where instances are kept: `memory` (this process only), or etcd as `etcd://host:port` or
    /// `http://host:port`, shared by every registry process pointed at it.
    #[arg(long, env = "STRATUS_REGISTRY_STORE", default_value = "memory")]
    pub store: StoreConfig,

    /// With the memory store: how long after start the catalog says `warming`, so watchers
    /// keep the instances they knew while those re-register (a restarted registry starts
    /// empty). At least the longest heartbeat period of any instance (a third of its TTL)
    /// plus the registration back-off (2 s).
    #[arg(long, env = "STRATUS_REGISTRY_WARMUP", default_value = "5s", value_parser = stratus_kit::duration::parse)]
    pub warmup: Duration,

    /// With the memory store: when most instances fall silent at once (this registry cut off
    /// from them, or paused), hold their lapsed leases for at most this long instead of
    /// dropping them, so watchers are not handed an empty view the moment the network heals.
    /// `0s` turns it off.
    #[arg(long, env = "STRATUS_REGISTRY_PRESERVE_FOR", default_value = "60s", value_parser = stratus_kit::duration::parse)]
    pub preserve_for: Duration,

    /// How many recent changes to instances are kept for the incremental watch
    /// (`/v1/watch?deltas=true`): a watcher that resumes from further back is sent a snapshot.
    #[arg(long, env = "STRATUS_REGISTRY_CHANGE_RING", default_value_t = store::changes::DEFAULT_CAPACITY)]
    pub change_ring: usize,

    #[command(flatten)]
    pub identity: identity::IdentityArgs,

    /// An admin's access token is an operator credential here: how tokens are checked.
    #[command(flatten)]
    pub tokens: TokenArgs,

    #[command(flatten)]
    pub common: CommonArgs,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    // The mesh first: the health checks' clients are made with it.
    let ca = join_mesh(&args)?;
    match &args.store {
        StoreConfig::Memory => {
            let store = Arc::new(
                MemoryStore::warming_for(args.warmup)
                    .preserving_for(args.preserve_for)
                    .keeping_changes(args.change_ring),
            );
            tokio::spawn({
                let store = store.clone();
                async move { store.end_warming().await }
            });
            tokio::spawn(store::memory::reap_expired(
                store.clone(),
                Duration::from_millis(100),
            ));
            tokio::spawn(checks::run(store.clone()));
            serve(store, ca.clone(), &args).await
        }
        StoreConfig::Etcd(url) => {
            let store = EtcdStore::connect(url, args.change_ring)
                .await
                .with_context(|| format!("connecting to etcd at {url} (STRATUS_REGISTRY_STORE)"))?;
            tracing::info!(etcd = %url, "keeping instances in etcd");
            tokio::spawn(etcd_checks::run(
                store.client().clone(),
                etcd_checks::member_name().to_string(),
            ));
            serve(store, ca.clone(), &args).await
        }
    }
}

/// With mTLS on, the registry holds the authority and certifies itself; with it off, no
/// authority is loaded and the identity routes answer 404.
fn join_mesh(args: &Args) -> anyhow::Result<Option<Arc<identity::Ca>>> {
    let mesh = &args.common.mesh;
    if mesh.mtls == stratus_identity::Mode::Off {
        stratus_kit::mesh::install(mesh.mtls, None)?;
        return Ok(None);
    }
    let ca = args
        .identity
        .start(
            &args.common.data_dir,
            &mesh.trust_domain,
            mesh.trust_bundle.as_deref(),
        )
        .context("the certificate authority")?;
    let credentials = identity::own::credentials(&ca)?;
    tokio::spawn(identity::own::keep_fresh(ca.clone(), credentials.clone()));
    stratus_kit::mesh::install(mesh.mtls, Some(credentials))?;
    tracing::info!(trust_domain = %mesh.trust_domain, mode = ?mesh.mtls, "serving the certificate authority");
    Ok(Some(ca))
}

async fn serve<S: Store>(
    store: Arc<S>,
    ca: Option<Arc<identity::Ca>>,
    args: &Args,
) -> anyhow::Result<()> {
    let mut service = Service::new("registry", args.port)
        .serving_the_mesh()
        .unregistered()
        .without_events()
        .without_client_cache();
    for path in identity::api::OPEN_PATHS {
        service = service.open_path(path);
    }
    let checked = store.clone();
    service.health.add_check("registry store", move || {
        let store = checked.clone();
        async move { store.check().await }
    });
    let service = service.taking_operator_tokens(operator_tokens(&store, &args.tokens)?);
    let api = api::routes()
        .with_state(api::Registry::new(store))
        .merge(identity::api::routes().with_state(ca));
    service.run(&args.common, api).await
}

/// The token checker for operators' access tokens. Auth's keys are fetched from the auth
/// instances this registry's own store holds: asking itself over the network would need its
/// own address (`STRATUS_REGISTRY_URL` names the registry for the other processes).
fn operator_tokens<S: Store>(store: &Arc<S>, args: &TokenArgs) -> anyhow::Result<Arc<Tokens>> {
    let store = store.clone();
    Tokens::finding_auth_with(
        args,
        Arc::new(move || {
            let store = store.clone();
            Box::pin(async move {
                let auth = store
                    .service("auth")
                    .await
                    .context("looking up auth in the registry's store")?;
                Ok(auth.instances.iter().map(|i| i.base_url()).collect())
            })
        }),
    )
}
