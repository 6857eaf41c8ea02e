//! The authority's files: its stored state (roots, keys sealed), the seal key, the join secret,
//! and the trust bundle for workloads that read it from the data directory.
//!
//! Each secret file is made once, mode 0600, and never rewritten but by a rotation. The seal key
//! may come from `STRATUS_SEAL_KEY` or `STRATUS_SEAL_KEY_FILE` instead (a Kubernetes Secret), in
//! which case no seal key file is made: a copy of the data directory then holds nothing that
//! opens the authority's keys. Where the key comes from, and the file writing, are
//! `stratus_kit::seal_key` and `stratus_kit::files`, shared with auth (which seals its secrets
//! with the same key).

use std::path::{Path, PathBuf};

use anyhow::Context;
use stratus_identity::{Authority, JoinSecret, Sealer};
use stratus_kit::files::read_or_make;
pub use stratus_kit::files::{write_private, write_public, write_public_if_changed};
use stratus_kit::seal_key::SealKeySource;
use time::OffsetDateTime;

/// Where the identity files are.
#[derive(Clone, Debug)]
pub struct Paths {
    pub authority: PathBuf,
    pub join_secret: PathBuf,
    /// The join secret's text when it is given (`STRATUS_JOIN_SECRET`: compose's `.env`, a
    /// Kubernetes Secret) instead of kept in `join_secret`; then no file is made.
    pub join_given: Option<JoinSecretText>,
    pub bundle: PathBuf,
    /// Where the seal key comes from: by default `seal.key` in the same folder.
    pub seal: SealKeySource,
    pub trust_domain: String,
}

impl Paths {
    /// The default layout: everything in `<dir>`.
    pub fn in_dir(dir: &Path, trust_domain: &str) -> Self {
        Self {
            authority: dir.join("ca.json"),
            join_secret: dir.join("join.secret"),
            join_given: None,
            bundle: dir.join("bundle.pem"),
            seal: SealKeySource::Made(dir.join("seal.key")),
            trust_domain: trust_domain.to_string(),
        }
    }
}

/// A join secret's text, as given: never shown by `{:?}` (the arguments it sits in are logged).
#[derive(Clone, PartialEq, Eq)]
pub struct JoinSecretText(pub String);

impl std::fmt::Debug for JoinSecretText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<hidden>")
    }
}

impl std::str::FromStr for JoinSecretText {
    type Err = String;

    /// Checked at parse time, so a malformed secret is a usage error naming the variable.
    fn from_str(text: &str) -> Result<Self, String> {
        JoinSecret::parse(text).map_err(|error| error.to_string())?;
        Ok(Self(text.trim().to_string()))
    }
}

/// What the files hold, read.
pub struct Material {
    pub authority: String,
    pub sealer: Sealer,
    pub join: JoinSecret,
    pub join_text: String,
    pub bundle: String,
}

/// Reads the identity files, making any that are missing. Safe to call again.
pub fn init(paths: &Paths) -> anyhow::Result<Material> {
    let sealer = paths.seal.load()?;
    let (join_text, join) = match &paths.join_given {
        Some(given) => {
            let join =
                JoinSecret::parse(&given.0).context("the join secret in STRATUS_JOIN_SECRET")?;
            (given.0.clone(), join)
        }
        None => {
            let text = read_or_make(&paths.join_secret, JoinSecret::generate)?;
            let join = JoinSecret::parse(&text)
                .with_context(|| format!("the join secret in {}", paths.join_secret.display()))?;
            (text, join)
        }
    };
    let authority_text = read_or_make(&paths.authority, || {
        Authority::create(&paths.trust_domain, OffsetDateTime::now_utc())
            .map(|authority| authority.to_stored(&sealer))
            .expect("a new authority")
    })?;
    let authority = Authority::from_stored(&authority_text, &sealer)
        .with_context(|| format!("reading {}", paths.authority.display()))?;
    if authority.trust_domain() != paths.trust_domain {
        anyhow::bail!(
            "{} is for trust domain `{}`, not `{}` (STRATUS_TRUST_DOMAIN)",
            paths.authority.display(),
            authority.trust_domain(),
            paths.trust_domain
        );
    }
    let bundle = authority.bundle_pem();
    write_public_if_changed(&paths.bundle, &bundle)?;
    Ok(Material {
        authority: authority_text,
        sealer,
        join,
        join_text,
        bundle,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_made_once_private_and_read_back_the_same() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::in_dir(dir.path(), "stratus.local");
        let first = init(&paths).unwrap();
        let seal_key = dir.path().join("seal.key");
        for secret in [&paths.authority, &seal_key, &paths.join_secret] {
            let mode = std::fs::metadata(secret).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", secret.display());
        }
        assert!(!std::fs::read_to_string(&paths.authority)
            .unwrap()
            .contains("PRIVATE KEY"));
        let again = init(&paths).unwrap();
        assert_eq!(first.authority, again.authority);
        assert_eq!(first.join_text, again.join_text);
        assert_eq!(
            std::fs::read_to_string(&paths.bundle).unwrap(),
            first.bundle
        );
        // Reading the same files again leaves the bundle's file as it was (the same inode:
        // not replaced by a copy).
        use std::os::unix::fs::MetadataExt;
        let inode = std::fs::metadata(&paths.bundle).unwrap().ino();
        init(&paths).unwrap();
        assert_eq!(std::fs::metadata(&paths.bundle).unwrap().ino(), inode);
        // Another trust domain over the same files is a clear error, not a new authority.
        let other = Paths::in_dir(dir.path(), "other.local");
        let error = init(&other).err().unwrap();
        assert!(format!("{error:#}").contains("trust domain"), "{error:#}");
    }

    #[test]
    fn a_given_join_secret_is_used_and_makes_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut paths = Paths::in_dir(dir.path(), "stratus.local");
        let text = JoinSecret::generate();
        paths.join_given = Some(text.parse().unwrap());
        let material = init(&paths).unwrap();
        assert!(!paths.join_secret.exists());
        assert_eq!(material.join_text, text);
        // A credential made from the same text anywhere else is accepted here.
        let elsewhere = JoinSecret::parse(&text).unwrap();
        let credential = elsewhere.credential("catalog").unwrap();
        assert_eq!(material.join.verify(&credential).unwrap(), "catalog");
        assert_eq!(format!("{:?}", paths.join_given), "Some(<hidden>)");
        assert!("c2hvcnQ=".parse::<JoinSecretText>().is_err());
    }

    #[test]
    fn a_seal_key_from_the_environment_makes_no_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut paths = Paths::in_dir(dir.path(), "stratus.local");
        paths.seal = SealKeySource::Text(Sealer::generate_key_line("env"));
        init(&paths).unwrap();
        assert!(!dir.path().join("seal.key").exists());
        // Without that key the authority does not open.
        paths.seal = SealKeySource::Text(Sealer::generate_key_line("env"));
        assert!(init(&paths).is_err());
    }
}
