//! Where a process's seal key comes from: the key that encrypts its secrets at rest
//! ([`stratus_identity::seal`]).
//!
//! In order: `STRATUS_SEAL_KEY` (the key text itself, e.g. a Kubernetes Secret as an environment
//! variable), `STRATUS_SEAL_KEY_FILE` (a file someone else provides, e.g. a mounted Secret; it
//! must exist), else `<data dir>/identity/seal.key`, made once (0600) when missing and shared
//! by every process of that data directory (auth's secrets, the registry's certificate
//! authority).
//!
//! The made file is for one machine: processes on several machines that share a database (auth
//! on PostgreSQL) must be given the same key through one of the two variables, or each would
//! make its own and none could open the others' values.

use std::path::{Path, PathBuf};

use anyhow::Context;
use stratus_identity::Sealer;

/// The id of the first line of a made key file.
pub const FIRST_KEY_ID: &str = "k1";

/// The seal key settings, for a component's clap arguments.
#[derive(clap::Args, Clone, Default)]
pub struct SealKeyArgs {
    /// The seal key text: lines `<id>:<base64 of 32 bytes>`, the first seals, every line opens
    /// (rotate by putting a new line first). Set it in the environment, never on a command line.
    /// Default: `<data dir>/identity/seal.key`, made when missing.
    #[arg(long, env = "STRATUS_SEAL_KEY", hide_env_values = true)]
    pub seal_key: Option<String>,

    /// A file holding the seal key text instead (it must exist).
    #[arg(long, env = "STRATUS_SEAL_KEY_FILE", conflicts_with = "seal_key")]
    pub seal_key_file: Option<PathBuf>,
}

// By hand, so the key text never reaches a log through `{:?}`.
impl std::fmt::Debug for SealKeyArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealKeyArgs")
            .field("seal_key", &self.seal_key.as_ref().map(|_| "<hidden>"))
            .field("seal_key_file", &self.seal_key_file)
            .finish()
    }
}

impl SealKeyArgs {
    /// The two variables, read without clap (for `stratus up`, which has no component
    /// arguments of its own).
    pub fn from_env() -> Self {
        Self {
            seal_key: std::env::var("STRATUS_SEAL_KEY").ok(),
            seal_key_file: std::env::var_os("STRATUS_SEAL_KEY_FILE").map(PathBuf::from),
        }
    }

    /// Where the key comes from, for a process whose data directory is `data_dir`.
    pub fn source(&self, data_dir: &Path) -> SealKeySource {
        self.source_else(default_file(data_dir))
    }

    /// Where the key comes from, with `file` (made when missing) as the default. An empty
    /// variable counts as unset.
    pub fn source_else(&self, file: PathBuf) -> SealKeySource {
        let text = self.seal_key.as_ref().filter(|t| !t.trim().is_empty());
        let given = self
            .seal_key_file
            .as_ref()
            .filter(|f| !f.as_os_str().is_empty());
        match (text, given) {
            (Some(text), _) => SealKeySource::Text(text.clone()),
            (None, Some(given)) => SealKeySource::File(given.clone()),
            (None, None) => SealKeySource::Made(file),
        }
    }
}

/// `<data dir>/identity/seal.key`.
pub fn default_file(data_dir: &Path) -> PathBuf {
    data_dir.join("identity").join("seal.key")
}

/// Where the seal key text is.
#[derive(Clone)]
pub enum SealKeySource {
    /// The text itself (`STRATUS_SEAL_KEY`).
    Text(String),
    /// A file someone else provides (`STRATUS_SEAL_KEY_FILE`): missing is an error.
    File(PathBuf),
    /// A file of the data directory, made (one new key line, 0600) when missing.
    Made(PathBuf),
}

impl std::fmt::Debug for SealKeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

/// Names the source for messages (never the key itself).
impl std::fmt::Display for SealKeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SealKeySource::Text(_) => write!(f, "STRATUS_SEAL_KEY"),
            SealKeySource::File(path) => write!(f, "STRATUS_SEAL_KEY_FILE {}", path.display()),
            SealKeySource::Made(path) => write!(f, "{}", path.display()),
        }
    }
}

impl SealKeySource {
    /// Reads the key text (making the data directory's file if that is the source) and parses it.
    pub fn load(&self) -> anyhow::Result<Sealer> {
        let text = match self {
            SealKeySource::Text(text) => text.clone(),
            SealKeySource::File(path) => std::fs::read_to_string(path)
                .with_context(|| format!("reading the seal key file {}", path.display()))?,
            SealKeySource::Made(path) => {
                crate::files::read_or_make(path, || Sealer::generate_key_line(FIRST_KEY_ID) + "\n")?
            }
        };
        Sealer::parse(&text).with_context(|| format!("the seal key ({self})"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_wins_then_the_file_then_the_data_directory() {
        let dir = tempfile::tempdir().unwrap();
        let line = Sealer::generate_key_line("env");
        let mut args = SealKeyArgs {
            seal_key: Some(line.clone()),
            seal_key_file: Some(dir.path().join("given.key")),
        };
        assert_eq!(args.source(dir.path()).load().unwrap().current_id(), "env");
        assert!(!default_file(dir.path()).exists());

        // A named file must exist: it is never made.
        args.seal_key = None;
        let error = args.source(dir.path()).load().unwrap_err();
        assert!(format!("{error:#}").contains("given.key"), "{error:#}");
        std::fs::write(dir.path().join("given.key"), format!("{line}\n")).unwrap();
        assert_eq!(args.source(dir.path()).load().unwrap().current_id(), "env");

        // Else the data directory's file, made once (an empty variable counts as unset).
        args.seal_key = Some(String::new());
        args.seal_key_file = None;
        let made = args.source(dir.path()).load().unwrap();
        assert_eq!(made.current_id(), FIRST_KEY_ID);
        let sealed = made.seal("c", b"x");
        let again = args.source(dir.path()).load().unwrap();
        assert_eq!(again.open("c", &sealed).unwrap(), b"x");
    }

    #[test]
    fn bad_key_text_names_its_source_but_never_shows_it() {
        let dir = tempfile::tempdir().unwrap();
        let args = SealKeyArgs {
            seal_key: Some("k1:not-the-32-bytes-it-needs".into()),
            seal_key_file: None,
        };
        let error = format!("{:#}", args.source(dir.path()).load().unwrap_err());
        assert!(error.contains("STRATUS_SEAL_KEY"), "{error}");
        assert!(!error.contains("not-the-32"), "{error}");
        assert!(!format!("{args:?}").contains("not-the-32"));
    }
}
