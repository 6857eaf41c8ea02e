//! What a test may need beyond the Rust toolchain, how to tell whether it is here, and what to
//! install when it is not.
//!
//! A test declares its needs when it is listed (`Test::new(..).needs(&[Need::Etcd])`), so the
//! harness can report it ignored, with the reason, before it starts. Code that starts a server
//! asks for it again ([`Need::path`]); if it is missing there, the test did not declare it, and
//! that is a failure rather than a silent pass.
//!
//! `STRATUS_TEST_HIDE` (a comma-separated list of [`Need::key`]s, or `all`) makes needs look
//! missing on a machine that has them: to see what a run without them reports.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Something outside the Rust toolchain that a test needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Need {
    /// A PostgreSQL server and its client programs (initdb, pg_dump...), run as our own.
    Postgres,
    /// An etcd server, run as our own.
    Etcd,
    /// A NATS server (with JetStream), run as our own.
    Nats,
    /// A Redis server, run as our own.
    Redis,
    /// Chromium, driven headless (`$CHROMIUM`, else /usr/bin/chromium).
    Chromium,
    /// Node.js with npm (npm installs the test's own packages from its package-lock.json).
    Node,
    /// The curl program.
    Curl,
    /// python3 with these modules importable (none: python3 alone).
    Python(&'static [&'static str]),
    /// schemathesis, the API fuzzer (its `st` script, or the module through python3).
    Schemathesis,
    /// Making network namespaces and veth pairs: root, and iproute2's `ip`.
    NetworkNamespaces,
}

/// Every kind of need, for the README's list and the tests (Python with no modules).
pub const ALL: [Need; 10] = [
    Need::Postgres,
    Need::Etcd,
    Need::Nats,
    Need::Redis,
    Need::Chromium,
    Need::Node,
    Need::Curl,
    Need::Python(&[]),
    Need::Schemathesis,
    Need::NetworkNamespaces,
];

impl Need {
    /// The name `STRATUS_TEST_HIDE` knows it by.
    pub fn key(&self) -> &'static str {
        match self {
            Need::Postgres => "postgres",
            Need::Etcd => "etcd",
            Need::Nats => "nats",
            Need::Redis => "redis",
            Need::Chromium => "chromium",
            Need::Node => "node",
            Need::Curl => "curl",
            Need::Python(_) => "python",
            Need::Schemathesis => "schemathesis",
            Need::NetworkNamespaces => "netns",
        }
    }

    /// What it is, for people.
    pub fn name(&self) -> String {
        match self {
            Need::Postgres => "PostgreSQL".into(),
            Need::Etcd => "etcd".into(),
            Need::Nats => "nats-server".into(),
            Need::Redis => "redis-server".into(),
            Need::Chromium => "Chromium".into(),
            Need::Node => "Node.js and npm".into(),
            Need::Curl => "curl".into(),
            Need::Python([]) => "python3".into(),
            Need::Python(modules) => format!("python3 with {}", modules.join(", ")),
            Need::Schemathesis => "schemathesis".into(),
            Need::NetworkNamespaces => "network namespaces".into(),
        }
    }

    /// How to get it on Debian (and PyPI for Python modules).
    pub fn install(&self) -> String {
        match self {
            Need::Postgres => "apt-get install postgresql".into(),
            Need::Etcd => "apt-get install etcd-server".into(),
            Need::Nats => "apt-get install nats-server".into(),
            Need::Redis => "apt-get install redis-server".into(),
            Need::Chromium => "apt-get install chromium".into(),
            Need::Node => "apt-get install nodejs npm".into(),
            Need::Curl => "apt-get install curl".into(),
            Need::Python([]) => "apt-get install python3".into(),
            Need::Python(modules) => format!("pip install {}", modules.join(" ")),
            Need::Schemathesis => "pip install schemathesis".into(),
            Need::NetworkNamespaces => "run as root, apt-get install iproute2".into(),
        }
    }

    /// What an ignored test says about this need: `needs etcd: apt-get install etcd-server`.
    pub fn reason(&self) -> String {
        format!("needs {}: {}", self.name(), self.install())
    }

    /// Whether it is here (and not hidden by `STRATUS_TEST_HIDE`). May run a program to find
    /// out (python3, `ip netns`), so the harness asks once per need and run.
    pub fn is_met(&self) -> bool {
        if self.is_hidden() {
            return false;
        }
        match self {
            Need::Python(modules) => python_imports(modules),
            Need::Schemathesis => find_schemathesis().is_some(),
            Need::NetworkNamespaces => can_make_network_namespaces(),
            program => program.locate().is_some(),
        }
    }

    /// Where the program is (for PostgreSQL: the directory of its programs). A missing program
    /// here is a test that did not declare its need: a panic that says what to install.
    pub fn path(&self) -> PathBuf {
        match self.locate() {
            Some(path) if !self.is_hidden() => path,
            _ => self.missing(),
        }
    }

    /// Fails the test that needed this and did not have it.
    pub fn missing(&self) -> ! {
        let hidden = if self.is_hidden() {
            " (hidden by STRATUS_TEST_HIDE)"
        } else {
            ""
        };
        panic!(
            "{} is missing{hidden}; {}. A test that needs it declares it when it is listed \
             (.needs(&[Need::{:?}])), so that it is reported ignored where it is missing",
            self.name(),
            self.install(),
            self,
        )
    }

    fn is_hidden(&self) -> bool {
        hidden(
            std::env::var("STRATUS_TEST_HIDE").ok().as_deref(),
            self.key(),
        )
    }

    fn locate(&self) -> Option<PathBuf> {
        match self {
            Need::Postgres => postgres_bin(),
            Need::Etcd => program("etcd"),
            Need::Nats => program("nats-server"),
            Need::Redis => program("redis-server"),
            Need::Chromium => {
                let chosen =
                    std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
                let chosen = PathBuf::from(chosen);
                match chosen.is_absolute() {
                    true => chosen.is_file().then_some(chosen),
                    false => program(&chosen.to_string_lossy()),
                }
            }
            Need::Node => program("npm").and(program("node")),
            Need::Curl => program("curl"),
            Need::Python(_) => program("python3"),
            Need::Schemathesis | Need::NetworkNamespaces => None,
        }
    }
}

/// Whether `STRATUS_TEST_HIDE`'s value hides the need named `key`.
pub(crate) fn hidden(setting: Option<&str>, key: &str) -> bool {
    setting.is_some_and(|setting| {
        setting
            .split(',')
            .map(str::trim)
            .any(|item| item == key || item == "all")
    })
}

/// A program on the PATH, or in /usr/sbin or /usr/bin (Debian puts some servers in sbin, which
/// is not on every user's PATH).
pub fn program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The newest /usr/lib/postgresql/*/bin (Debian keeps the server programs there, off the
/// PATH), else the directory of an `initdb` on the PATH.
fn postgres_bin() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|bin| bin.join("postgres").is_file())
        .collect();
    versions.sort();
    versions
        .pop()
        .or_else(|| program("initdb").and_then(|p| p.parent().map(Path::to_path_buf)))
}

fn succeeds(command: &mut Command) -> bool {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

fn python_imports(modules: &[&str]) -> bool {
    let check = match modules {
        [] => "pass".to_string(),
        modules => format!("import {}", modules.join(", ")),
    };
    succeeds(Command::new("python3").args(["-c", &check]))
}

/// The command that runs schemathesis: its `st` script, or the module through python3 when
/// the script is not on the PATH (pip's user scripts directory often is not).
fn find_schemathesis() -> Option<&'static [&'static str]> {
    const CANDIDATES: [&[&str]; 3] = [
        &["st"],
        &["schemathesis"],
        &["python3", "-m", "schemathesis.cli"],
    ];
    CANDIDATES.into_iter().find(|command| {
        succeeds(
            Command::new(command[0])
                .args(&command[1..])
                .arg("--version"),
        )
    })
}

/// The schemathesis command; a panic naming what to install when there is none.
pub fn schemathesis() -> &'static [&'static str] {
    match find_schemathesis() {
        Some(command) if !Need::Schemathesis.is_hidden() => command,
        _ => Need::Schemathesis.missing(),
    }
}

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Tries it: makes a namespace and deletes it again.
fn can_make_network_namespaces() -> bool {
    if !is_root() || program("ip").is_none() {
        return false;
    }
    let probe = format!("stratus-probe-{}", std::process::id());
    let made = succeeds(Command::new("ip").args(["netns", "add", &probe]));
    if made {
        succeeds(Command::new("ip").args(["netns", "del", &probe]));
    }
    made
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hide_names_needs_by_key_or_all() {
        assert!(hidden(Some("etcd"), "etcd"));
        assert!(hidden(Some("postgres, etcd"), "etcd"));
        assert!(hidden(Some("all"), "curl"));
        assert!(!hidden(Some("postgres"), "etcd"));
        assert!(!hidden(Some(""), "etcd"));
        assert!(!hidden(None, "etcd"));
    }

    #[test]
    fn every_need_says_what_it_is_and_how_to_install_it() {
        let mut keys = std::collections::HashSet::new();
        for need in ALL {
            assert!(
                keys.insert(need.key()),
                "{need:?}: a second need with its key"
            );
            assert!(!need.name().is_empty());
            assert!(
                need.install().contains("apt-get install") || need.install().contains("pip"),
                "{need:?}: {}",
                need.install()
            );
        }
        assert_eq!(
            Need::Postgres.reason(),
            "needs PostgreSQL: apt-get install postgresql"
        );
        assert_eq!(
            Need::Python(&["authlib", "requests"]).reason(),
            "needs python3 with authlib, requests: pip install authlib requests"
        );
    }

    #[test]
    fn a_missing_program_is_a_panic_that_says_what_to_install() {
        let missing = std::panic::catch_unwind(|| {
            Need::Etcd.missing();
        })
        .expect_err("a panic");
        let message = missing.downcast_ref::<String>().expect("a message");
        assert!(message.contains("apt-get install etcd-server"), "{message}");
        assert!(message.contains(".needs(&[Need::Etcd])"), "{message}");
    }
}
