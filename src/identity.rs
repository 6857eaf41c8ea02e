//! `stratus identity`: the certificate authority's files, from the command line.
//!
//! `stratus up` does all of this by itself; these are for systems put together by hand and for
//! Kubernetes, where each service's join credential is a Secret of its own:
//!
//! ```sh
//! stratus identity init                          # the authority's files in <data dir>/identity
//! stratus identity join-credential catalog       # prints catalog's join credential
//! stratus identity issue --operator ops --out ops/   # an operator certificate, key and bundle
//! stratus identity env                           # every service's credential, as .env lines
//! stratus identity kubernetes                    # the authority, bundle and credentials as
//!                                                # Kubernetes objects (deploy/README.md)
//! ```

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use stratus_identity::{Authority, JoinSecret, SpiffeId};
use stratus_kit::seal_key::SealKeySource;
use stratus_registry::identity::files::{self, Paths};
use time::OffsetDateTime;

#[derive(clap::Args, Debug)]
pub struct IdentityArgs {
    #[command(subcommand)]
    command: IdentityCommand,
}

#[derive(clap::Args, Debug, Clone)]
pub struct Location {
    /// The data directory; the files are in its `identity` folder.
    #[arg(long, env = "STRATUS_DATA_DIR", default_value = "./.stratus")]
    data_dir: PathBuf,

    /// The trust domain every SPIFFE ID of this system names.
    #[arg(long, env = "STRATUS_TRUST_DOMAIN", default_value = "stratus.local")]
    trust_domain: String,

    #[command(flatten)]
    seal: stratus_kit::seal_key::SealKeyArgs,

    /// The join secret's text instead of the folder's join.secret (as the registry reads it).
    /// Set it in the environment, never on a command line.
    #[arg(long, env = "STRATUS_JOIN_SECRET", hide_env_values = true)]
    join_secret: Option<files::JoinSecretText>,
}

impl Location {
    pub fn paths(&self) -> Paths {
        let mut paths = Paths::in_dir(&self.data_dir.join("identity"), &self.trust_domain);
        // STRATUS_SEAL_KEY or STRATUS_SEAL_KEY_FILE win over the data directory's file, as in
        // every process that seals (the same function decides).
        paths.seal = self.seal.source(&self.data_dir);
        paths.join_given = self.join_secret.clone();
        paths
    }

    /// The join secret: the one given, else the authority's files' (made when missing).
    fn join(&self) -> anyhow::Result<JoinSecret> {
        match &self.join_secret {
            Some(given) => Ok(JoinSecret::parse(&given.0)?),
            None => Ok(files::init(&self.paths())?.join),
        }
    }
}

#[derive(Subcommand, Debug)]
enum IdentityCommand {
    /// Make the authority's files (once; safe to run again): its roots with their keys sealed,
    /// the seal key (unless STRATUS_SEAL_KEY or STRATUS_SEAL_KEY_FILE is set), the join secret
    /// and the trust bundle.
    Init(Location),
    /// Print the join credential of a service: what an instance of it shows for its first
    /// certificate (STRATUS_JOIN_TOKEN).
    JoinCredential {
        service: String,
        #[command(flatten)]
        location: Location,
    },
    /// Print every service's join credential as `.env` lines (`STRATUS_JOIN_CATALOG=...`), for
    /// compose (deploy/compose-identity.sh). Needs only the join secret: STRATUS_JOIN_SECRET,
    /// else the authority's files.
    Env {
        /// The services (default: every built-in component but the registry, which certifies
        /// itself).
        services: Vec<String>,
        #[command(flatten)]
        location: Location,
    },
    /// Print what a Kubernetes system needs to join the mesh, as objects for `kubectl apply -f -`:
    /// the Secret stratus-authority (the registry's files), the ConfigMap stratus-trust-bundle
    /// and one Secret stratus-join-<service> per service. Makes the authority's files first
    /// (once; keep them, or the next run makes a new authority). The output holds secrets.
    Kubernetes {
        /// The services (default: every built-in component but the registry).
        services: Vec<String>,
        #[command(flatten)]
        location: Location,
    },
    /// Issue a certificate with a new key straight from the authority's files, and write
    /// cert.pem, key.pem (0600) and bundle.pem into a folder: for operators and for programs
    /// that cannot ask the registry themselves.
    Issue {
        /// A service's certificate.
        #[arg(
            long,
            conflicts_with = "operator",
            required_unless_present = "operator"
        )]
        service: Option<String>,
        /// An operator's certificate (accepted by every admin and query API).
        #[arg(long)]
        operator: Option<String>,
        /// How long it is valid.
        #[arg(long, default_value = "1h", value_parser = stratus_kit::duration::parse)]
        lifetime: Duration,
        /// The folder to write into (made when missing).
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        location: Location,
    },
}

pub fn run(args: IdentityArgs) -> anyhow::Result<()> {
    match args.command {
        IdentityCommand::Init(location) => {
            let paths = location.paths();
            files::init(&paths)?;
            println!(
                "certificate authority ready in {}",
                paths.authority.display()
            );
            println!("trust bundle: {}", paths.bundle.display());
            Ok(())
        }
        IdentityCommand::JoinCredential { service, location } => {
            println!("{}", location.join()?.credential(&service)?);
            Ok(())
        }
        IdentityCommand::Env { services, location } => {
            let join = location.join()?;
            print!("{}", crate::identity_export::env_lines(&join, &services)?);
            Ok(())
        }
        IdentityCommand::Kubernetes { services, location } => {
            let paths = location.paths();
            if matches!(paths.seal, SealKeySource::Made(_)) {
                // A key made here would seal the authority with a key the cluster lacks.
                anyhow::bail!(
                    "set STRATUS_SEAL_KEY (or STRATUS_SEAL_KEY_FILE) to the key of the stratus-seal \
                     Secret: the registry opens the authority with it (deploy/README.md)"
                );
            }
            let material = files::init(&paths)?;
            print!(
                "{}",
                crate::identity_export::kubernetes(&material, &services)?
            );
            Ok(())
        }
        IdentityCommand::Issue {
            service,
            operator,
            lifetime,
            out,
            location,
        } => {
            let id = match (&service, &operator) {
                (Some(service), _) => SpiffeId::service(&location.trust_domain, service)?,
                (None, Some(operator)) => SpiffeId::operator(&location.trust_domain, operator)?,
                (None, None) => anyhow::bail!("name --service or --operator"),
            };
            issue_into(&location.paths(), &id, lifetime, &out)?;
            println!("{id}: {}", out.display());
            Ok(())
        }
    }
}

/// Issues `id` a certificate from the authority's files and writes it into `out`.
pub fn issue_into(
    paths: &Paths,
    id: &SpiffeId,
    lifetime: Duration,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    let material = files::init(paths)?;
    let authority = Authority::from_stored(&material.authority, &material.sealer)?;
    let issued = authority
        .issue_with_key(id, lifetime, OffsetDateTime::now_utc())
        .context("issuing the certificate")?;
    let key = issued
        .private_key
        .as_deref()
        .context("the authority made no key")?;
    files::write_private(&out.join("key.pem"), key)?;
    files::write_private(&out.join("cert.pem"), &issued.certificate)?;
    files::write_private(&out.join("bundle.pem"), &issued.trust_bundle)?;
    Ok(())
}
