//! `stratus up`'s part in the mesh: it makes the authority's files before the registry starts,
//! hands each child the join credential of its own service (in its environment, never its
//! arguments), and holds an operator certificate for itself and for the command line.
//!
//! The operator certificate is written to `<data dir>/identity/operator/` (cert.pem, key.pem,
//! bundle.pem; 0600), so `stratus status` and `curl --cert` reach the registry, the gateway's
//! admin API and every instance as an operator while `up` runs; `up` renews it at half-life.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use stratus_identity::{Authority, Credentials, JoinSecret, Mode, SpiffeId};
use stratus_registry::identity::files::{self, Paths};
use time::OffsetDateTime;

/// How long `up`'s operator certificate is valid (renewed at half).
const OPERATOR_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// The operator name `up` certifies itself as.
pub const OPERATOR: &str = "up";

/// The mesh settings `up` runs the system with, and what it needs to hand out identities.
pub struct Trust {
    pub mode: Mode,
    pub trust_domain: String,
    join: Option<JoinSecret>,
    paths: Paths,
    operator_dir: PathBuf,
}

impl Trust {
    /// Reads `STRATUS_MTLS` (default `required`) and `STRATUS_TRUST_DOMAIN`; with mTLS on,
    /// makes the authority's files (once), certifies `up` as an operator and joins the mesh
    /// with that certificate.
    pub fn prepare(data_dir: &Path) -> anyhow::Result<Arc<Self>> {
        let mode = match std::env::var("STRATUS_MTLS") {
            Ok(text) if !text.trim().is_empty() => text
                .trim()
                .to_ascii_lowercase()
                .parse::<Mode>()
                .map_err(anyhow::Error::msg)?,
            _ => Mode::Required,
        };
        let trust_domain =
            std::env::var("STRATUS_TRUST_DOMAIN").unwrap_or_else(|_| "stratus.local".into());
        let dir = std::env::var_os("STRATUS_IDENTITY_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| data_dir.join("identity"));
        let mut paths = Paths::in_dir(&dir, &trust_domain);
        // The same rule as the registry's and auth's (the children read the same variables).
        paths.seal =
            stratus_kit::seal_key::SealKeyArgs::from_env().source_else(dir.join("seal.key"));
        let operator_dir = dir.join("operator");
        if mode == Mode::Off {
            stratus_kit::mesh::install(Mode::Off, None)?;
            return Ok(Arc::new(Self {
                mode,
                trust_domain,
                join: None,
                paths,
                operator_dir,
            }));
        }
        let material = files::init(&paths).context("the certificate authority's files")?;
        let trust = Arc::new(Self {
            mode,
            trust_domain,
            join: Some(material.join),
            paths,
            operator_dir,
        });
        let credentials = Credentials::new(&trust.trust_domain, &material.bundle)?;
        trust.renew(&credentials)?;
        stratus_kit::mesh::install(mode, Some(credentials.clone()))?;
        tokio::spawn(trust.clone().keep_fresh(credentials));
        Ok(trust)
    }

    /// The environment a child of service `service` gets.
    pub fn child_env(&self, service: &str) -> anyhow::Result<Vec<(&'static str, String)>> {
        let mut env = vec![
            (
                "STRATUS_MTLS",
                format!("{:?}", self.mode).to_ascii_lowercase(),
            ),
            ("STRATUS_TRUST_DOMAIN", self.trust_domain.clone()),
            (
                "STRATUS_TRUST_BUNDLE",
                self.paths.bundle.display().to_string(),
            ),
        ];
        if let Some(join) = &self.join {
            let credential = join
                .credential(service)
                .with_context(|| format!("a join credential for `{service}`"))?;
            env.push((stratus_kit::mesh::JOIN_TOKEN_VAR, credential));
        }
        Ok(env)
    }

    /// The folder with the operator's cert.pem, key.pem and bundle.pem.
    pub fn operator_dir(&self) -> Option<&Path> {
        self.join.as_ref().map(|_| self.operator_dir.as_path())
    }

    /// Issues `up` a new operator certificate from the authority's files (the registry may
    /// have rotated the root since), holds it and writes it for the command line.
    fn renew(&self, credentials: &Credentials) -> anyhow::Result<()> {
        let material = files::init(&self.paths)?;
        let authority = Authority::from_stored(&material.authority, &material.sealer)?;
        let id = SpiffeId::operator(&self.trust_domain, OPERATOR)?;
        let issued = authority
            .issue_with_key(&id, OPERATOR_LIFETIME, OffsetDateTime::now_utc())
            .context("issuing the operator certificate")?;
        let key = issued
            .private_key
            .as_deref()
            .context("the authority made no key")?;
        credentials.set_bundle(&issued.trust_bundle)?;
        credentials.set_certificate(&issued.certificate, key, Some(&id))?;
        std::fs::create_dir_all(&self.operator_dir)
            .with_context(|| format!("creating {}", self.operator_dir.display()))?;
        files::write_private(&self.operator_dir.join("key.pem"), key)?;
        files::write_private(&self.operator_dir.join("cert.pem"), &issued.certificate)?;
        files::write_private(&self.operator_dir.join("bundle.pem"), &issued.trust_bundle)?;
        Ok(())
    }

    /// Renews the operator certificate at half-life and follows the bundle file (the registry
    /// rewrites it when it rotates), for as long as `up` runs.
    async fn keep_fresh(self: Arc<Self>, credentials: Arc<Credentials>) {
        let mut renew_at = tokio::time::Instant::now() + OPERATOR_LIFETIME / 2;
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            tick.tick().await;
            if let Ok(bundle) = std::fs::read_to_string(&self.paths.bundle) {
                if let Err(error) = credentials.set_bundle(&bundle) {
                    tracing::warn!(%error, "the trust bundle file");
                }
            }
            if tokio::time::Instant::now() >= renew_at {
                match self.renew(&credentials) {
                    Ok(()) => renew_at = tokio::time::Instant::now() + OPERATOR_LIFETIME / 2,
                    Err(error) => eprintln!("renewing the operator certificate: {error:#}"),
                }
            }
        }
    }
}
