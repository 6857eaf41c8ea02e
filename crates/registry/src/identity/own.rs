//! The registry's own place in the mesh: it holds the authority, so it certifies itself (no
//! join credential, no network), renews at half-life the same way, and keeps its trust bundle
//! in step with the authority's roots.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use stratus_identity::{Credentials, Principal};

use super::Ca;

/// Issues the registry's certificate and returns credentials holding it.
pub fn credentials(ca: &Ca) -> anyhow::Result<Arc<Credentials>> {
    let credentials = Credentials::new(&ca.trust_domain(), &ca.bundle_pem())
        .context("the authority's trust bundle")?;
    renew(ca, &credentials)?;
    Ok(credentials)
}

fn renew(ca: &Ca, credentials: &Credentials) -> anyhow::Result<()> {
    let issued = ca
        .issue(Principal::Service("registry".into()), None)
        .context("certifying the registry itself")?;
    let key = issued
        .private_key
        .as_deref()
        .context("the authority made no key")?;
    credentials.set_bundle(&issued.trust_bundle)?;
    credentials.set_certificate(&issued.certificate, key, None)?;
    stratus_kit::identity::record_certificate(credentials);
    Ok(())
}

/// Renews the registry's certificate at half its lifetime and follows the authority's bundle,
/// for the life of the process.
pub async fn keep_fresh(ca: Arc<Ca>, credentials: Arc<Credentials>) {
    let half = ca.lifetime / 2;
    let mut renew_at = tokio::time::Instant::now() + half;
    let mut tick = tokio::time::interval(Duration::from_secs(1).min(half));
    loop {
        tick.tick().await;
        if let Err(error) = credentials.set_bundle(&ca.bundle_pem()) {
            tracing::warn!(%error, "the authority's bundle");
        }
        if tokio::time::Instant::now() >= renew_at {
            match renew(&ca, &credentials) {
                Ok(()) => renew_at = tokio::time::Instant::now() + half,
                Err(error) => {
                    stratus_kit::identity::record_renewal_failure();
                    tracing::warn!(error = %format!("{error:#}"), "renewing the registry's certificate")
                }
            }
        }
    }
}
