//! Files a process writes whole: secrets (mode 0600, made once) and public files beside them.
//!
//! Two rules keep them safe to share between processes that start at the same moment (several
//! auth instances and the registry all reach for `<data dir>/identity/seal.key`):
//!
//! - A file is written under a temporary name no other write uses, synced, and only then given
//!   its real name, so a reader sees the whole file or none of it.
//! - A secret that is *made* (generated because it is missing) is put in place only if nothing
//!   is there yet ([`read_or_make`]): the process that loses the race reads the winner's file
//!   instead of replacing it, so two processes never hold two different secrets.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// The file's text; if it does not exist, `make` is called and its text stored (0600), unless
/// another process stored one first, whose text is then returned instead.
pub fn read_or_make(path: &Path, make: impl FnOnce() -> String) -> anyhow::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => return Ok(text),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error).with_context(|| format!("reading {}", path.display())),
    }
    let text = make();
    let temporary = write_temporary(path, &text, 0o600)?;
    // A hard link fails when the name exists: unlike a rename, it never replaces a file
    // another process put there a moment ago.
    let linked = std::fs::hard_link(&temporary, path);
    let _ = std::fs::remove_file(&temporary);
    match linked {
        Ok(()) => Ok(text),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
        }
        Err(error) => Err(error).with_context(|| format!("creating {}", path.display())),
    }
}

/// Writes a secret file (0600) whole, replacing any file of that name.
pub fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    replace(path, text, 0o600)
}

/// Writes a file anyone may read (a trust bundle) whole, replacing any file of that name.
pub fn write_public(path: &Path, text: &str) -> anyhow::Result<()> {
    replace(path, text, 0o644)
}

/// As [`write_public`], but leaves the file alone when it already holds `text`: a registry
/// starting again over the same files (or several sharing them) rewrites nothing, and a
/// process reading the file at that moment is never racing a rename for nothing.
pub fn write_public_if_changed(path: &Path, text: &str) -> anyhow::Result<()> {
    match std::fs::read_to_string(path) {
        Ok(current) if current == text => Ok(()),
        _ => write_public(path, text),
    }
}

fn replace(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    let temporary = write_temporary(path, text, mode)?;
    if let Err(error) = std::fs::rename(&temporary, path) {
        let _ = std::fs::remove_file(&temporary);
        return Err(error).with_context(|| format!("replacing {}", path.display()));
    }
    Ok(())
}

/// Writes `text` to a new file beside `path` (its folder made if missing) and syncs it.
fn write_temporary(path: &Path, text: &str, mode: u32) -> anyhow::Result<PathBuf> {
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
    if let Err(error) = file
        .write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
    {
        let _ = std::fs::remove_file(&temporary);
        return Err(error).with_context(|| format!("writing {}", temporary.display()));
    }
    Ok(temporary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_made_secret_is_private_and_made_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested").join("secret");
        let first = read_or_make(&path, || "one".into()).unwrap();
        let again = read_or_make(&path, || "two".into()).unwrap();
        assert_eq!((first.as_str(), again.as_str()), ("one", "one"));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Nothing but the file itself is left behind.
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("secret")]);
    }

    #[test]
    fn processes_racing_to_make_a_secret_all_get_the_same_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seal.key");
        let threads: Vec<_> = (0..8)
            .map(|n| {
                let path = path.clone();
                std::thread::spawn(move || read_or_make(&path, || format!("secret {n}")).unwrap())
            })
            .collect();
        let seen: std::collections::BTreeSet<String> =
            threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            *seen.first().unwrap()
        );
    }

    #[test]
    fn a_written_file_replaces_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_private(&path, "a").unwrap();
        write_private(&path, "b").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "b");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
