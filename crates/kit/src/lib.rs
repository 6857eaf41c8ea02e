//! The Stratus service kit: what every component and every shop service has in common.
//!
//! A service built on the kit reads its configuration from the environment ([`config`]), logs one
//! JSON object a line ([`logging`]), answers `/healthz`, `/readyz` and `/metrics` ([`health`],
//! [`metrics`]), registers itself with the registry and keeps its lease alive ([`registration`]),
//! reports bad input as `application/problem+json` ([`problem`]), keeps its data in its own
//! database ([`db`]), checks bearer tokens itself ([`auth`]), and on SIGTERM leaves the registry,
//! drains and exits ([`server`]). Every internal hop is mutual TLS between SPIFFE identities when
//! the mesh is on ([`mesh`], [`listener`], [`identity`]).

pub mod auth;
pub mod body_limit;
pub mod cache;
pub mod caller;
pub mod config;
pub mod consumer;
pub mod db;
pub mod deltas;
pub mod discovery;
pub mod dns_discovery;
pub mod duration;
pub mod event_wire;
pub mod events;
pub mod files;
pub mod fold;
pub mod grpc_health;
pub mod health;
pub mod http_cache;
pub mod identity;
pub mod intentions;
pub mod listener;
pub mod log_ship;
pub mod logging;
pub mod memory;
pub mod mesh;
pub mod metrics;
pub mod model;
pub mod openapi;
pub mod operator_token;
pub mod otlp;
pub mod outbox;
pub mod paging;
pub mod policy;
pub mod problem;
pub mod registration;
pub mod registry_client;
pub mod resilience;
pub mod seal_key;
pub mod server;
pub mod shutdown;
pub mod sketch;
pub mod state;
pub mod tally;
pub mod trace;

pub use problem::{Json, Problem};

/// Installs ring as the process-wide rustls crypto provider.
///
/// Stratus builds rustls without a default provider (so aws-lc never enters the build), which
/// means every process must pick one before its first TLS or HTTP client is made. Calling this
/// twice is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A new UUIDv7 as a string: time-ordered, so ids sort by creation.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// The current time in RFC 3339, UTC.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
