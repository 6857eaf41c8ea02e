//! A workload's identity: its certificate from the registry's authority, kept fresh.
//!
//! At start an instance makes a key pair, sends a certificate signing request to the registry
//! with its join credential, and holds the certificate it gets in [`Credentials`], which every
//! listener and client of the process reads at each handshake. Then it renews at half-life with
//! the certificate itself (the join credential is only needed again if the certificate ran out),
//! and fetches the trust bundle every [`BUNDLE_REFRESH`], so a rotated-in root is trusted before
//! anyone presents a certificate it signed. The key never leaves the process.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;
use stratus_identity::{Credentials, Expect, SpiffeId};

/// How often the trust bundle is fetched (the authority waits three of these before a new root
/// signs).
pub const BUNDLE_REFRESH: Duration = Duration::from_secs(60);
/// The shortest time between two renewals.
const MIN_RENEWAL_GAP: Duration = Duration::from_secs(1);
/// The longest wait between tries when the registry cannot renew.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The verified identity of the peer of a request's connection (mutual TLS), in the request's
/// extensions. Absent when the peer presented no certificate.
#[derive(Clone, Debug)]
pub struct Peer(pub Arc<SpiffeId>);

#[derive(Deserialize)]
struct IssuedAnswer {
    certificate: String,
    #[serde(default)]
    private_key: Option<String>,
    trust_bundle: String,
    not_after: i64,
}

/// Obtains and renews one service's certificate from the registry.
pub struct Workload {
    credentials: Arc<Credentials>,
    registry: String,
    id: SpiffeId,
    join: Option<String>,
    http: reqwest::Client,
}

impl std::fmt::Debug for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workload")
            .field("id", &self.id.uri())
            .field("registry", &self.registry)
            .finish()
    }
}

impl Workload {
    /// `bundle_pem`: the roots to trust the registry by, before the first answer brings the
    /// current bundle. `join`: the join credential (needed for the first certificate).
    pub fn new(
        registry_url: &str,
        trust_domain: &str,
        bundle_pem: &str,
        service: &str,
        join: Option<String>,
    ) -> anyhow::Result<Self> {
        crate::install_crypto_provider();
        let id = SpiffeId::service(trust_domain, service).context("this service's identity")?;
        let credentials = Credentials::new(trust_domain, bundle_pem).context("the trust bundle")?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(
                credentials.client_config(Expect::Service("registry".into())),
            )
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            // A new connection per call: the first certificate is asked for on a connection
            // that had none to present, and a renewal reusing it would reach the registry as
            // nobody (401). These calls are a few a minute at most.
            .pool_max_idle_per_host(0)
            .build()
            .context("building the identity client")?;
        Ok(Self {
            credentials,
            registry: registry_url.trim_end_matches('/').to_string(),
            id,
            join,
            http,
        })
    }

    pub fn credentials(&self) -> &Arc<Credentials> {
        &self.credentials
    }

    /// A new certificate now: with the one held if it is still valid, else the join credential.
    pub async fn obtain(&self) -> anyhow::Result<()> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .context("making a key pair")?;
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&key)
            .and_then(|request| request.pem())
            .context("making a certificate signing request")?;
        let still_valid = self
            .credentials
            .not_after()
            .is_some_and(|not_after| not_after > now_seconds() + 5);
        let mut request = self
            .http
            .post(format!("{}/v1/identity/certificates", self.registry))
            .json(&serde_json::json!({ "csr": csr }));
        if !still_valid {
            let join = self.join.as_deref().context(
                "no certificate held and no join credential (STRATUS_JOIN_TOKEN) to get one",
            )?;
            request = request.bearer_auth(join);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("asking {} for a certificate", self.registry))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            anyhow::bail!(
                "the registry refused a certificate for {}: {status} {body}",
                self.id
            );
        }
        let issued: IssuedAnswer = response.json().await.context("reading the certificate")?;
        if issued.private_key.is_some() {
            anyhow::bail!("the registry made a key although a request was sent");
        }
        self.credentials
            .set_bundle(&issued.trust_bundle)
            .context("the trust bundle in the answer")?;
        self.credentials
            .set_certificate(&issued.certificate, &key.serialize_pem(), Some(&self.id))
            .context("the certificate in the answer")?;
        record_certificate(&self.credentials);
        tracing::info!(id = %self.id, not_after = issued.not_after, "certificate obtained");
        Ok(())
    }

    /// Fetches the current trust bundle.
    pub async fn refresh_bundle(&self) -> anyhow::Result<()> {
        let response = self
            .http
            .get(format!("{}/v1/identity/bundle", self.registry))
            .send()
            .await
            .with_context(|| format!("fetching the trust bundle from {}", self.registry))?
            .error_for_status()?;
        let bundle = response.text().await?;
        self.credentials.set_bundle(&bundle)?;
        Ok(())
    }

    /// Renews at half-life and refreshes the bundle, until the process ends. A failure is
    /// retried with back-off; the certificate held keeps serving until it expires.
    pub async fn keep_fresh(self: Arc<Self>) {
        let mut backoff = Duration::from_secs(1);
        let mut next_bundle = tokio::time::Instant::now() + BUNDLE_REFRESH;
        loop {
            let renew_in = self.renew_in();
            let wake = (tokio::time::Instant::now() + renew_in).min(next_bundle);
            tokio::time::sleep_until(wake).await;
            if tokio::time::Instant::now() >= next_bundle {
                if let Err(error) = self.refresh_bundle().await {
                    tracing::warn!(error = %format!("{error:#}"), "refreshing the trust bundle");
                }
                next_bundle = tokio::time::Instant::now() + BUNDLE_REFRESH;
            }
            if self.renew_in().is_zero() {
                match self.obtain().await {
                    Ok(()) => {
                        backoff = Duration::from_secs(1);
                        // However the clocks disagree, never more than one renewal a second.
                        tokio::time::sleep(MIN_RENEWAL_GAP).await;
                    }
                    Err(error) => {
                        record_renewal_failure();
                        tracing::warn!(error = %format!("{error:#}"), retry_in = ?backoff, "renewing the certificate");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
        }
    }

    /// How long until the certificate held is half-way through its life (zero: renew now).
    /// The life counts from when it was issued, not from its backdated start, so a short
    /// lifetime (30 s in the rotation test) still leaves half of it before renewal.
    fn renew_in(&self) -> Duration {
        let Some(not_after) = self.credentials.not_after() else {
            return Duration::ZERO;
        };
        let backdate = stratus_identity::authority::BACKDATE.as_secs() as i64;
        let issued = self
            .credentials
            .not_before()
            .map_or(not_after, |not_before| {
                (not_before + backdate).min(not_after)
            });
        let half = issued + (not_after - issued) / 2;
        Duration::from_secs(u64::try_from(half - now_seconds()).unwrap_or(0))
    }
}

/// Puts the expiry of the certificate `credentials` hold on `/metrics`
/// (`identity_certificate_expiry_timestamp_seconds`, Unix time): what it has left is that
/// minus `time()`, which an alert can watch for renewals that stopped.
pub fn record_certificate(credentials: &Credentials) {
    if let Some(not_after) = credentials.not_after() {
        metrics::gauge!("identity_certificate_expiry_timestamp_seconds").set(not_after as f64);
    }
}

/// Counts a renewal of this process's certificate that failed (it is tried again).
pub fn record_renewal_failure() {
    metrics::counter!("identity_renewal_failures_total").increment(1);
}

fn now_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs() as i64)
        .unwrap_or(0)
}
