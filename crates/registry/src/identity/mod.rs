//! The certificate authority the registry serves: every instance's first certificate and its
//! renewals, the trust bundle, and CA rotation.
//!
//! Why the registry: it is the one process every instance already reaches first, before it can
//! find anything else (Consul's servers hold its Connect CA for the same reason). Its own
//! listener takes connections without a client certificate, since a new instance has none yet;
//! every route but the two below then requires an identity.
//!
//! - `GET /v1/identity/bundle`: the roots to trust, PEM (public).
//! - `POST /v1/identity/certificates`: `{"csr": "<PEM>"}` (or `{}`: the key is made here and
//!   returned once, for programs that cannot make a request, such as Python's standard
//!   library). The caller is either an instance with its current certificate (renewal), or
//!   shows `Authorization: Bearer <join credential>`; the certificate names the service the
//!   credential or certificate is for, whatever the request asks. An operator may ask for any
//!   service (`"service": "<name>"`).
//! - `POST /v1/identity/rotate` (operator): a new root, in two steps (see
//!   [`stratus_identity::authority`]).
//!
//! Files (`files.rs`): the authority's stored state, the seal key and the join secret live in
//! `<data dir>/identity/` unless named otherwise; `stratus up` makes them before the registry
//! starts, and a registry that finds none makes them itself.

pub mod api;
pub mod files;
pub mod own;

use std::path::PathBuf;
use std::sync::RwLock;
use std::time::Duration;

use anyhow::Context;
use stratus_identity::{Authority, Issued, JoinSecret, Principal, Sealer, SpiffeId};
use time::OffsetDateTime;

/// `stratus serve registry`'s settings for the authority (with `STRATUS_MTLS` on).
#[derive(clap::Args, Debug, Clone)]
pub struct IdentityArgs {
    /// How long a certificate the authority issues is valid (instances renew at half).
    #[arg(long, env = "STRATUS_CERT_LIFETIME", default_value = "1h", value_parser = stratus_kit::duration::parse)]
    pub cert_lifetime: Duration,

    /// Rotate the authority's root when it is this old (`0s`: only by hand).
    #[arg(long, env = "STRATUS_CA_ROTATE_EVERY", default_value = "720h", value_parser = stratus_kit::duration::parse)]
    pub ca_rotate_every: Duration,

    /// After a rotation, how long the new root waits before it signs: every instance fetches
    /// the bundle within this.
    #[arg(long, env = "STRATUS_CA_PROPAGATE", default_value = "3m", value_parser = stratus_kit::duration::parse)]
    pub ca_propagate: Duration,

    /// The authority's files (default: <data dir>/identity).
    #[arg(long, env = "STRATUS_IDENTITY_DIR")]
    pub identity_dir: Option<PathBuf>,

    /// The join secret, base64 of at least 32 bytes, from which every join credential is
    /// derived (default: join.secret among its files, made when missing). Set it in the
    /// environment, never on a command line; compose's `.env` holds it
    /// (deploy/compose-identity.sh).
    #[arg(long, env = "STRATUS_JOIN_SECRET", hide_env_values = true)]
    pub join_secret: Option<files::JoinSecretText>,

    /// The key that seals the authority's keys (default: seal.key among its files).
    #[command(flatten)]
    pub seal: stratus_kit::seal_key::SealKeyArgs,
}

impl IdentityArgs {
    /// Loads (or makes) the authority and starts its upkeep: pruning, scheduled rotation.
    /// `bundle` is where to keep the trust bundle for others to read (`STRATUS_TRUST_BUNDLE`;
    /// default: bundle.pem among the authority's files): compose shares it through a volume of
    /// its own, so no other container sees the authority's files.
    pub fn start(
        &self,
        data_dir: &std::path::Path,
        trust_domain: &str,
        bundle: Option<&std::path::Path>,
    ) -> anyhow::Result<std::sync::Arc<Ca>> {
        let dir = self
            .identity_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("identity"));
        let mut paths = files::Paths::in_dir(&dir, trust_domain);
        paths.join_given = self.join_secret.clone();
        if let Some(bundle) = bundle {
            paths.bundle = bundle.to_path_buf();
        }
        // STRATUS_SEAL_KEY or STRATUS_SEAL_KEY_FILE, else the folder's seal.key: the one rule
        // of every process that seals (auth's secrets too).
        paths.seal = self.seal.source_else(dir.join("seal.key"));
        let mut ca = Ca::load(&paths, self.cert_lifetime)?;
        ca.propagate = self.ca_propagate;
        let ca = std::sync::Arc::new(ca);
        let every = (!self.ca_rotate_every.is_zero()).then_some(self.ca_rotate_every);
        tokio::spawn(maintain(ca.clone(), every));
        Ok(ca)
    }
}

/// The authority with what it needs to issue: the join secret, the seal, where it is stored.
pub struct Ca {
    authority: RwLock<Authority>,
    join: JoinSecret,
    sealer: Sealer,
    file: PathBuf,
    bundle_file: PathBuf,
    pub lifetime: Duration,
    /// How long a rotated-in root waits before it signs: every workload refreshes its bundle
    /// within this (they fetch it every [`BUNDLE_REFRESH`]).
    pub propagate: Duration,
}

/// How often workloads fetch the trust bundle; a rotation waits three of these before the new
/// root signs.
pub const BUNDLE_REFRESH: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("issuing: {0}")]
    Internal(String),
}

impl Ca {
    /// Loads the authority from its files (made by [`files::init`] when missing).
    pub fn load(paths: &files::Paths, lifetime: Duration) -> anyhow::Result<Self> {
        let material = files::init(paths)?;
        let authority = Authority::from_stored(&material.authority, &material.sealer)
            .with_context(|| format!("reading the authority in {}", paths.authority.display()))?;
        let ca = Self {
            authority: RwLock::new(authority),
            join: material.join,
            sealer: material.sealer,
            file: paths.authority.clone(),
            bundle_file: paths.bundle.clone(),
            lifetime,
            propagate: 3 * BUNDLE_REFRESH,
        };
        if !Authority::stored_is_current(&material.authority, &ca.sealer) {
            // The seal key was rotated: seal the roots again with the current one.
            ca.change(|_| Ok(true))?;
        }
        Ok(ca)
    }

    pub fn trust_domain(&self) -> String {
        self.read().trust_domain().to_string()
    }

    pub fn bundle_pem(&self) -> String {
        self.read().bundle_pem()
    }

    /// The service a join credential is for, if it is genuine.
    pub fn join_service(&self, credential: &str) -> Option<String> {
        self.join.verify(credential).ok()
    }

    /// A certificate for `principal` (over the key in `csr`, or a key made here).
    pub fn issue(&self, principal: Principal, csr_pem: Option<&str>) -> Result<Issued, IssueError> {
        let authority = self.read();
        let id = match principal {
            Principal::Service(name) => SpiffeId::service(authority.trust_domain(), &name),
            Principal::Operator(name) => SpiffeId::operator(authority.trust_domain(), &name),
        }
        .map_err(|error| IssueError::BadRequest(error.to_string()))?;
        let now = OffsetDateTime::now_utc();
        let issued = match csr_pem {
            Some(pem) => {
                let der = csr_der(pem).map_err(IssueError::BadRequest)?;
                authority.sign_request(&der, &id, self.lifetime, now)
            }
            None => authority.issue_with_key(&id, self.lifetime, now),
        };
        issued.map_err(|error| match error {
            stratus_identity::authority::AuthorityError::BadRequest(detail) => {
                IssueError::BadRequest(detail)
            }
            other => IssueError::Internal(other.to_string()),
        })
    }

    /// Starts a rotation: a new root in the bundle now, signing after `propagate`.
    pub fn rotate(&self) -> anyhow::Result<()> {
        // Overlap: every certificate the old root signs until the switch has renewed (at
        // half-life) well before the old root leaves, with a lifetime of slack.
        let (propagate, overlap) = (self.propagate, 2 * self.lifetime);
        self.change(|authority| {
            authority.rotate(OffsetDateTime::now_utc(), propagate, overlap)?;
            Ok(true)
        })
    }

    /// Drops retired roots; persists when any went.
    pub fn prune(&self) -> anyhow::Result<()> {
        self.change(|authority| Ok(authority.prune(OffsetDateTime::now_utc())))
    }

    /// Applies `change` to a copy, stores the copy (and the bundle), and only then puts it in
    /// place: a change that cannot be stored never signs anything. The write lock is held
    /// throughout, so two changes cannot store out of order.
    fn change(
        &self,
        change: impl FnOnce(&mut Authority) -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        let mut authority = self.write();
        let mut next = Authority::from_stored(&authority.to_stored(&self.sealer), &self.sealer)?;
        if !change(&mut next)? {
            return Ok(());
        }
        files::write_private(&self.file, &next.to_stored(&self.sealer))?;
        files::write_public(&self.bundle_file, &next.bundle_pem())?;
        *authority = next;
        Ok(())
    }

    /// When the newest root was made (for scheduled rotation).
    pub fn newest_root_made(&self) -> Option<OffsetDateTime> {
        self.read().newest_root_made()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Authority> {
        self.authority
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Authority> {
        self.authority
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Prunes retired roots and rotates when the newest root is `every` old, until the process ends.
pub async fn maintain(ca: std::sync::Arc<Ca>, every: Option<Duration>) {
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    loop {
        tick.tick().await;
        if let Err(error) = ca.prune() {
            tracing::warn!(error = %format!("{error:#}"), "pruning the certificate authority's roots");
        }
        let due = every
            .zip(ca.newest_root_made())
            .is_some_and(|(every, made)| OffsetDateTime::now_utc() - made >= every);
        if due {
            match ca.rotate() {
                Ok(()) => tracing::info!("rotated the certificate authority's root"),
                Err(error) => {
                    tracing::warn!(error = %format!("{error:#}"), "rotating the certificate authority")
                }
            }
        }
    }
}

fn csr_der(pem: &str) -> Result<Vec<u8>, String> {
    stratus_identity::authority::csr_from_pem(pem).map_err(|error| error.to_string())
}
