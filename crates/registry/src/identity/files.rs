//! The authority's files: its stored state (roots, keys sealed), the seal key, the join secret,
//! and the trust bundle for workloads that read it from the data directory.
//!
//! Each secret file is made once, mode 0600, and never rewritten but by a rotation. The seal key
//! may come from `STRATUS_SEAL_KEY` instead (a Kubernetes Secret as an environment variable), in
//! which case no seal key file is made: a copy of the data directory then holds nothing that
//! opens the authority's keys.

use std::path::{Path, PathBuf};

use anyhow::Context;
use stratus_identity::{Authority, JoinSecret, Sealer};
use time::OffsetDateTime;

/// Where the identity files are.
#[derive(Clone, Debug)]
pub struct Paths {
    pub authority: PathBuf,
    pub seal_key: PathBuf,
    pub join_secret: PathBuf,
    pub bundle: PathBuf,
    /// Seal key text from the environment, which wins over the file.
    pub seal_key_text: Option<String>,
    pub trust_domain: String,
}

impl Paths {
    /// The default layout: everything in `<dir>`.
    pub fn in_dir(dir: &Path, trust_domain: &str) -> Self {
        Self {
            authority: dir.join("ca.json"),
            seal_key: dir.join("seal.key"),
            join_secret: dir.join("join.secret"),
            bundle: dir.join("bundle.pem"),
            seal_key_text: None,
            trust_domain: trust_domain.to_string(),
        }
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
    let seal_text = match &paths.seal_key_text {
        Some(text) => text.clone(),
        None => read_or_make(&paths.seal_key, || Sealer::generate_key_line("k1"))?,
    };
    let sealer =
        Sealer::parse(&seal_text).context("the seal key (STRATUS_SEAL_KEY or its file)")?;
    let join_text = read_or_make(&paths.join_secret, JoinSecret::generate)?;
    let join = JoinSecret::parse(&join_text)
        .with_context(|| format!("the join secret in {}", paths.join_secret.display()))?;
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
    write_public(&paths.bundle, &bundle)?;
    Ok(Material {
        authority: authority_text,
        sealer,
        join,
        join_text,
        bundle,
    })
}

fn read_or_make(path: &Path, make: impl FnOnce() -> String) -> anyhow::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let text = make();
            write_private(path, &text)?;
            Ok(text)
        }
        Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes a secret file (0600) whole: to a temporary name first, then renamed over.
pub fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    write_with_mode(path, text, 0o600)
}

/// Writes a file anyone may read (the trust bundle) whole.
pub fn write_public(path: &Path, text: &str) -> anyhow::Result<()> {
    write_with_mode(path, text, 0o644)
}

fn write_with_mode(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    // A name no other write uses (this process's id and a counter), made new: an existing file
    // or link at that name is an error, never written through.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let temporary = path.with_extension(format!("tmp{}-{n}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temporary)
        .with_context(|| format!("writing {}", temporary.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("replacing {}", path.display()))
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
        for secret in [&paths.authority, &paths.seal_key, &paths.join_secret] {
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
        // Another trust domain over the same files is a clear error, not a new authority.
        let other = Paths::in_dir(dir.path(), "other.local");
        let error = init(&other).err().unwrap();
        assert!(format!("{error:#}").contains("trust domain"), "{error:#}");
    }

    #[test]
    fn a_seal_key_from_the_environment_makes_no_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut paths = Paths::in_dir(dir.path(), "stratus.local");
        paths.seal_key_text = Some(Sealer::generate_key_line("env"));
        init(&paths).unwrap();
        assert!(!paths.seal_key.exists());
        // Without that key the authority does not open.
        paths.seal_key_text = Some(Sealer::generate_key_line("env"));
        assert!(init(&paths).is_err());
    }
}
