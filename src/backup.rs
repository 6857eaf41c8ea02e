//! `stratus backup` and `stratus restore`: every service database, copied consistently.
//!
//! Where each database lives comes from the same places the services read it: a component's
//! `DATABASE_URL` in `stratus.toml` (else the one in the environment), else
//! `<STRATUS_DATA_DIR>/<service>.db`; the embedded broker queue is `BROKER_URL` or
//! `<data dir>/broker.db`. So `backup` and `restore` pointed at the same file and data dir as
//! `stratus up` see exactly the databases that `up` runs against.
//!
//! - SQLite: `VACUUM INTO` a new file. It reads the database inside one read transaction, so the
//!   copy is one consistent point in time while the services keep writing (WAL mode lets them),
//!   and it is a plain, compacted database file with no `-wal` beside it.
//! - PostgreSQL: `pg_dump --format=custom` (itself one consistent snapshot), restored with
//!   `pg_restore --clean --if-exists --single-transaction`, so a failed restore changes nothing.
//!
//! A backup is a directory: one file per database and `manifest.json` listing each one's
//! service, backend, file, size, sha256 and time. `restore` checks every checksum before it
//! touches anything, refuses while a `stratus up` runs on the target data dir, and refuses to
//! overwrite existing databases unless given `--yes`.
//!
//! The auth database's secrets are sealed with the seal key (`stratus_kit::seal_key`), which no
//! database holds. When that key is the data dir's own file (`identity/seal.key`), the backup
//! takes a copy (`seal.key`, 0600), and a restore puts it into a data dir that has none, so the
//! restored auth database opens; such a backup is then as secret as the data dir. A key given
//! as STRATUS_SEAL_KEY or STRATUS_SEAL_KEY_FILE is not copied: the backup alone opens nothing.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection, Executor};

use crate::manifest::Manifest;

/// The built-in services that own a database, in the order they are backed up.
pub const DATABASES: &[&str] = &[
    "auth",
    "catalog",
    "profile",
    "orders",
    "payments",
    "notifications",
    "events",
];

/// The services that use the broker (its `BROKER_URL` is read from these).
const BROKER_USERS: &[&str] = &["orders", "payments", "notifications"];

const MANIFEST: &str = "manifest.json";

/// The seal key's name in a backup.
const SEAL_KEY: &str = "seal.key";

/// Where the system's databases are: the same settings `stratus up` reads.
#[derive(clap::Args, Debug)]
pub struct System {
    /// The desired state whose components' env may name each database (`DATABASE_URL`).
    #[arg(long, env = "STRATUS_FILE", default_value = "stratus.toml")]
    file: PathBuf,
    /// The data dir holding the SQLite databases (and control.addr of a running `up`).
    #[arg(long, env = "STRATUS_DATA_DIR", default_value = "./.stratus")]
    data_dir: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct BackupArgs {
    #[command(flatten)]
    system: System,
    /// The directory to write (must not exist yet, or be empty). Default:
    /// `<data dir>/backups/<UTC time>`.
    #[arg(long)]
    to: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct RestoreArgs {
    #[command(flatten)]
    system: System,
    /// A directory written by `stratus backup`.
    #[arg(long)]
    from: PathBuf,
    /// Replace databases that already exist (the system must still be stopped).
    #[arg(long)]
    yes: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// One database of one service, as `manifest.json` records it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub service: String,
    pub backend: Backend,
    pub file: String,
    pub size: u64,
    pub sha256: String,
    pub time: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct BackupManifest {
    pub stratus_version: String,
    pub created: String,
    pub databases: Vec<Entry>,
    /// The data dir's seal key, when it was there (older backups have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal_key: Option<KeyFile>,
}

/// The seal key file of a backup.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyFile {
    pub file: String,
    pub sha256: String,
}

/// A database to copy: which service, and where it is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Location {
    Sqlite(PathBuf),
    Postgres(String),
    /// Not a database this command copies (NATS JetStream keeps its own streams).
    Elsewhere(String),
}

impl System {
    /// Every database of the system: (service, location), each location once.
    fn databases(&self) -> anyhow::Result<Vec<(String, Location)>> {
        let (manifest, _) = Manifest::load(&self.file)?;
        let env_of = |service: &str, key: &str| {
            manifest
                .component(service)
                .and_then(|c| c.env.get(key).cloned())
                .or_else(|| std::env::var(key).ok())
                .filter(|v| !v.trim().is_empty())
        };
        let mut found = Vec::new();
        let mut seen = BTreeSet::new();
        for service in DATABASES {
            if manifest.component(service).is_none() {
                continue;
            }
            let location = match env_of(service, "DATABASE_URL") {
                Some(url) => locate(&url)?,
                None => Location::Sqlite(self.data_dir.join(format!("{service}.db"))),
            };
            if seen.insert(location.clone()) {
                found.push((service.to_string(), location));
            }
        }
        if BROKER_USERS.iter().any(|s| manifest.component(s).is_some()) {
            let url = BROKER_USERS.iter().find_map(|s| env_of(s, "BROKER_URL"));
            let location = match url {
                Some(url) if url.starts_with("sqlite:") => locate(&url)?,
                Some(url) => Location::Elsewhere(stratus_kit::db::redact(&url)),
                None => Location::Sqlite(self.data_dir.join("broker.db")),
            };
            if seen.insert(location.clone()) {
                found.push(("broker".to_string(), location));
            }
        }
        Ok(found)
    }

    /// The control API of a `stratus up` running on this data dir, if one answers.
    async fn running_up(&self) -> Option<String> {
        let address = std::fs::read_to_string(self.data_dir.join("control.addr")).ok()?;
        let url = format!("http://{}/v1/status", address.trim());
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .ok()?;
        http.get(&url).send().await.ok().map(|_| url)
    }
}

/// A `DATABASE_URL` as a place on disk or a PostgreSQL database.
fn locate(url: &str) -> anyhow::Result<Location> {
    match stratus_kit::db::Backend::of(url)? {
        stratus_kit::db::Backend::Postgres => Ok(Location::Postgres(url.to_string())),
        stratus_kit::db::Backend::Sqlite => {
            let rest = url
                .trim_start_matches("sqlite:")
                .trim_start_matches("//")
                .split('?')
                .next()
                .unwrap_or_default();
            if rest.is_empty() || rest == ":memory:" {
                bail!("{url}: an in-memory database has nothing to back up");
            }
            Ok(Location::Sqlite(PathBuf::from(rest)))
        }
    }
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// `stratus backup`: copies every database into a new directory and writes the manifest last,
/// so a directory with a manifest is a complete backup.
pub async fn backup(args: BackupArgs) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let databases = args.system.databases()?;
    let dir = match args.to {
        Some(dir) => dir,
        None => {
            let stamp = time::OffsetDateTime::now_utc()
                .format(time::macros::format_description!(
                    "[year][month][day]T[hour][minute][second]Z"
                ))
                .unwrap_or_default();
            args.system.data_dir.join("backups").join(stamp)
        }
    };
    if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
        bail!(
            "{} is not empty; back up into a new directory",
            dir.display()
        );
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut entries = Vec::new();
    for (service, location) in databases {
        let (backend, file) = match &location {
            Location::Sqlite(path) => {
                if !path.exists() {
                    println!(
                        "  {service:<14} skipped: {} does not exist yet",
                        path.display()
                    );
                    continue;
                }
                let file = format!("{service}.db");
                sqlite_backup(path, &dir.join(&file))
                    .await
                    .with_context(|| format!("backing up {service} ({})", path.display()))?;
                (Backend::Sqlite, file)
            }
            Location::Postgres(url) => {
                let file = format!("{service}.pgdump");
                pg_dump(url, &dir.join(&file))
                    .with_context(|| format!("backing up {service} (PostgreSQL)"))?;
                (Backend::Postgres, file)
            }
            Location::Elsewhere(url) => {
                println!("  {service:<14} skipped: {url} keeps its own data (not a database)");
                continue;
            }
        };
        let (size, sha256) = digest(&dir.join(&file))?;
        println!("  {service:<14} {backend:?} {file} {size} bytes");
        entries.push(Entry {
            service,
            backend,
            file,
            size,
            sha256,
            time: now(),
        });
    }
    let seal_key = back_up_seal_key(&args.system.data_dir, &dir)?;
    let manifest = BackupManifest {
        stratus_version: env!("CARGO_PKG_VERSION").to_string(),
        created: now(),
        databases: entries,
        seal_key,
    };
    write_atomically(
        &dir.join(MANIFEST),
        serde_json::to_string_pretty(&manifest)?.as_bytes(),
    )?;
    println!(
        "Backed up {} databases to {} in {:.1} s",
        manifest.databases.len(),
        dir.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `stratus restore`: checks the whole backup, then the target, then copies.
pub async fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(args.from.join(MANIFEST))
        .with_context(|| format!("reading {}", args.from.join(MANIFEST).display()))?;
    let manifest: BackupManifest =
        serde_json::from_str(&text).context("parsing the backup's manifest.json")?;
    // 1. Every file is there and intact, before anything is touched.
    for entry in &manifest.databases {
        if entry.file.contains('/') || entry.file.contains("..") {
            bail!("manifest.json names an unsafe file: {:?}", entry.file);
        }
        let path = args.from.join(&entry.file);
        let (size, sha256) =
            digest(&path).with_context(|| format!("reading {}", path.display()))?;
        if size != entry.size || sha256 != entry.sha256 {
            bail!(
                "{} does not match the manifest (sha256 {sha256}, expected {}); nothing restored",
                path.display(),
                entry.sha256
            );
        }
    }
    let seal_key = match &manifest.seal_key {
        Some(key) => Some(read_backed_up_seal_key(&args.from, key)?),
        None => None,
    };
    // 2. Nothing runs on the target.
    if let Some(url) = args.system.running_up().await {
        bail!(
            "a stratus up is running on {} (its control API answers at {url}); stop it first, \
             or restore into a fresh STRATUS_DATA_DIR",
            args.system.data_dir.display()
        );
    }
    // 3. Where each database goes: the target's own configuration.
    let targets = args.system.databases()?;
    let mut plan = Vec::new();
    let mut occupied = Vec::new();
    for entry in &manifest.databases {
        let Some((_, location)) = targets.iter().find(|(s, _)| *s == entry.service) else {
            bail!(
                "the backup has {} but {} has no such component",
                entry.service,
                args.system.file.display()
            );
        };
        let exists = match (location, entry.backend) {
            (Location::Sqlite(path), Backend::Sqlite) => path.metadata().is_ok_and(|m| m.len() > 0),
            (Location::Postgres(url), Backend::Postgres) => pg_has_tables(url).await?,
            _ => bail!(
                "{} was backed up from {:?} but is configured as {location:?}",
                entry.service,
                entry.backend
            ),
        };
        if exists {
            occupied.push(entry.service.clone());
        }
        plan.push((entry, location.clone()));
    }
    if !occupied.is_empty() && !args.yes {
        bail!(
            "restoring would replace existing databases ({}); pass --yes to replace them",
            occupied.join(", ")
        );
    }
    let seal_key_target = match &seal_key {
        Some(text) => seal_key_target(&args.system.data_dir, &args.from, text)?,
        None => None,
    };
    // 4. Copy.
    let dir = &args.system.data_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (entry, location) in plan {
        let source = args.from.join(&entry.file);
        match location {
            Location::Sqlite(path) => sqlite_restore(&source, &path)?,
            Location::Postgres(url) => pg_restore(&source, &url)?,
            Location::Elsewhere(_) => bail!("only SQLite and PostgreSQL databases are restored"),
        }
        println!("  {:<14} restored from {}", entry.service, entry.file);
    }
    if let (Some(path), Some(text)) = (&seal_key_target, &seal_key) {
        stratus_kit::files::write_private(path, text)?;
        println!("  {:<14} restored to {}", "seal key", path.display());
    } else if manifest.seal_key.is_none() {
        println!(
            "  {:<14} not in the backup: auth needs the key its database was sealed with \
             (STRATUS_SEAL_KEY or STRATUS_SEAL_KEY_FILE)",
            "seal key"
        );
    }
    println!(
        "Restored {} databases from {} (taken {})",
        manifest.databases.len(),
        args.from.display(),
        manifest.created
    );
    Ok(())
}

/// Copies the data dir's seal key into the backup, if the key is there (else it came from
/// STRATUS_SEAL_KEY or STRATUS_SEAL_KEY_FILE and is kept apart from the data).
fn back_up_seal_key(data_dir: &Path, dir: &Path) -> anyhow::Result<Option<KeyFile>> {
    let source = stratus_kit::seal_key::default_file(data_dir);
    let text = match std::fs::read_to_string(&source) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!(
                "  {:<14} not in the data dir (STRATUS_SEAL_KEY or STRATUS_SEAL_KEY_FILE): keep \
                 it apart; the restored auth database needs it",
                "seal key"
            );
            return Ok(None);
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", source.display())),
    };
    let target = dir.join(SEAL_KEY);
    stratus_kit::files::write_private(&target, &text)?;
    let (_, sha256) = digest(&target)?;
    println!(
        "  {:<14} {SEAL_KEY} (opens the auth database's secrets: keep this backup as private \
         as the data dir)",
        "seal key"
    );
    Ok(Some(KeyFile {
        file: SEAL_KEY.to_string(),
        sha256,
    }))
}

/// The backup's seal key text, checked against its manifest entry.
fn read_backed_up_seal_key(from: &Path, key: &KeyFile) -> anyhow::Result<String> {
    if key.file != SEAL_KEY {
        bail!(
            "manifest.json names an unexpected seal key file: {:?}",
            key.file
        );
    }
    let path = from.join(SEAL_KEY);
    let (_, sha256) = digest(&path).with_context(|| format!("reading {}", path.display()))?;
    if sha256 != key.sha256 {
        bail!(
            "{} does not match the manifest (sha256 {sha256}, expected {}); nothing restored",
            path.display(),
            key.sha256
        );
    }
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// Where the backup's seal key goes: the target data dir's key file when it has none (`Some`);
/// nothing to do when that file already holds every line of the backup's key (`None`). A
/// target with another key is refused before anything is touched: the restored auth database
/// would not open with it, and replacing it would lock out what it seals there.
fn seal_key_target(data_dir: &Path, from: &Path, text: &str) -> anyhow::Result<Option<PathBuf>> {
    let path = stratus_kit::seal_key::default_file(data_dir);
    let existing = match std::fs::read_to_string(&path) {
        Ok(existing) => existing,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Some(path)),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let lines = |text: &str| -> BTreeSet<String> {
        text.lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(str::to_string)
            .collect()
    };
    if lines(text).is_subset(&lines(&existing)) {
        return Ok(None);
    }
    bail!(
        "{} holds another seal key than {}, the one the backup's auth database is sealed \
         with; restore into a fresh STRATUS_DATA_DIR; nothing restored",
        path.display(),
        from.join(SEAL_KEY).display()
    )
}

/// `VACUUM INTO`: one read transaction, so one consistent point in time.
async fn sqlite_backup(source: &Path, target: &Path) -> anyhow::Result<()> {
    let mut conn = SqliteConnectOptions::new()
        .filename(source)
        .create_if_missing(false)
        .busy_timeout(Duration::from_secs(10))
        .connect()
        .await?;
    let target = target
        .to_str()
        .context("the backup path is not valid UTF-8")?;
    conn.execute(format!("VACUUM INTO '{}'", target.replace('\'', "''")).as_str())
        .await?;
    conn.close().await?;
    Ok(())
}

/// Places a copy beside the target, then renames it over; the old `-wal` and `-shm` files
/// belong to the old database and go first.
fn sqlite_restore(source: &Path, target: &Path) -> anyhow::Result<()> {
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let partial = target.with_extension("db.restoring");
    std::fs::copy(source, &partial).with_context(|| format!("copying to {}", partial.display()))?;
    std::fs::File::open(&partial)?.sync_all()?;
    for suffix in ["-wal", "-shm"] {
        let side = PathBuf::from(format!("{}{suffix}", target.display()));
        match std::fs::remove_file(&side) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", side.display())),
        }
    }
    std::fs::rename(&partial, target).with_context(|| format!("replacing {}", target.display()))?;
    Ok(())
}

/// A PostgreSQL client program: on the PATH, else in the newest /usr/lib/postgresql/*/bin.
fn pg_tool(name: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin").join(name))
        .filter(|p| p.exists())
        .collect();
    versions.sort();
    versions.pop().unwrap_or_else(|| PathBuf::from(name))
}

fn run(mut command: Command, what: &str) -> anyhow::Result<()> {
    let output = command.output().with_context(|| {
        format!("running {what} (install the Debian package postgresql-client)")
    })?;
    if !output.status.success() {
        bail!(
            "{what} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

fn pg_dump(url: &str, target: &Path) -> anyhow::Result<()> {
    run(pg_dump_command(url, target)?, "pg_dump")
}

fn pg_restore(source: &Path, url: &str) -> anyhow::Result<()> {
    run(pg_restore_command(source, url)?, "pg_restore")
}

fn pg_dump_command(url: &str, target: &Path) -> anyhow::Result<Command> {
    let (mut command, url) = pg_command("pg_dump", url)?;
    command
        .args(["--format=custom", "--no-owner", "--no-privileges", "--file"])
        .arg(target)
        .arg(format!("--dbname={url}"));
    Ok(command)
}

fn pg_restore_command(source: &Path, url: &str) -> anyhow::Result<Command> {
    let (mut command, url) = pg_command("pg_restore", url)?;
    command
        .args([
            "--clean",
            "--if-exists",
            "--no-owner",
            "--no-privileges",
            "--single-transaction",
            "--exit-on-error",
        ])
        .arg(format!("--dbname={url}"))
        .arg(source);
    Ok(command)
}

/// A PostgreSQL tool's command for the database at `url`, and the URL to give it: the same URL
/// without its password, which goes in the child's environment (`PGPASSWORD`) instead.
///
/// A command line is readable by every user of the machine (`ps`, `/proc/<pid>/cmdline`); a
/// process's environment only by its own user and root (`/proc/<pid>/environ` is mode 0400).
/// libpq takes the password from the URL's user part or from a `password` query parameter;
/// both are taken out.
fn pg_command(tool: &str, url: &str) -> anyhow::Result<(Command, String)> {
    let mut parsed = url::Url::parse(url)
        .with_context(|| format!("{} is not a PostgreSQL URL", stratus_kit::db::redact(url)))?;
    let mut password: Option<Vec<u8>> = parsed
        .password()
        .map(|encoded| percent_encoding::percent_decode_str(encoded).collect());
    if password.is_some() && parsed.set_password(None).is_err() {
        bail!(
            "{}: cannot take the password out of this URL",
            stratus_kit::db::redact(url)
        );
    }
    if parsed.query_pairs().any(|(name, _)| name == "password") {
        let mut kept = Vec::new();
        for (name, value) in parsed.query_pairs() {
            if name == "password" {
                password = Some(value.as_bytes().to_vec());
            } else {
                kept.push((name.into_owned(), value.into_owned()));
            }
        }
        if kept.is_empty() {
            parsed.set_query(None);
        } else {
            parsed.query_pairs_mut().clear().extend_pairs(kept);
        }
    }
    let mut command = Command::new(pg_tool(tool));
    if let Some(password) = password {
        use std::os::unix::ffi::OsStringExt;
        command.env("PGPASSWORD", std::ffi::OsString::from_vec(password));
    }
    Ok((command, parsed.into()))
}

async fn pg_has_tables(url: &str) -> anyhow::Result<bool> {
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .with_context(|| format!("connecting to {}", stratus_kit::db::redact(url)))?;
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .fetch_one(&mut conn)
    .await?;
    conn.close().await?;
    Ok(tables > 0)
}

/// Size and hex sha256 of a file.
fn digest(path: &Path) -> anyhow::Result<(u64, String)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buffer[..n]);
    }
    let hex = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((size, hex))
}

fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let partial = path.with_extension("partial");
    let mut file = std::fs::File::create(&partial)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&partial, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Everything a command shows in `ps`.
    fn command_line(command: &Command) -> String {
        std::iter::once(command.get_program())
            .chain(command.get_args())
            .map(|part| part.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn password_env(command: &Command) -> Option<String> {
        command
            .get_envs()
            .find(|(name, _)| *name == "PGPASSWORD")
            .and_then(|(_, value)| value)
            .map(|value| value.to_string_lossy().into_owned())
    }

    #[test]
    fn pg_tools_get_the_password_in_their_environment_not_their_arguments() {
        let url = "postgres://stratus:s3cr%40t%3Aw0rd@db.example:5433/orders?sslmode=disable";
        let dump = pg_dump_command(url, Path::new("/backups/orders.dump")).unwrap();
        let restore = pg_restore_command(Path::new("/backups/orders.dump"), url).unwrap();
        for command in [&dump, &restore] {
            let line = command_line(command);
            assert!(!line.contains("s3cr"), "{line}");
            assert!(
                line.contains("--dbname=postgres://stratus@db.example:5433/orders?sslmode=disable"),
                "{line}"
            );
            assert_eq!(password_env(command).as_deref(), Some("s3cr@t:w0rd"));
        }

        // libpq's other place for it: a query parameter.
        let url = "postgresql://stratus@db/orders?password=hunter%202&sslmode=require";
        let dump = pg_dump_command(url, Path::new("/b/orders.dump")).unwrap();
        let line = command_line(&dump);
        assert!(!line.contains("hunter"), "{line}");
        assert!(line.contains("--dbname=postgresql://stratus@db/orders?sslmode=require"));
        assert_eq!(password_env(&dump).as_deref(), Some("hunter 2"));

        // No password: none is set (the tool falls back to ~/.pgpass or the server's trust).
        let dump = pg_dump_command("postgres://stratus@db/orders", Path::new("/b/o")).unwrap();
        assert_eq!(password_env(&dump), None);
        assert!(command_line(&dump).contains("--dbname=postgres://stratus@db/orders"));
    }

    #[test]
    fn the_backups_seal_key_goes_only_where_it_is_missing_or_already_known() {
        let dir = tempfile::tempdir().unwrap();
        let (data, from) = (dir.path().join("data"), dir.path().join("backup"));
        let key = "k1:AAAA\n";
        let target = stratus_kit::seal_key::default_file(&data);
        // None there: it goes in.
        assert_eq!(
            seal_key_target(&data, &from, key).unwrap(),
            Some(target.clone())
        );
        // There, with the backup's line among its own (a rotation since): nothing to do.
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::write(&target, "k2:BBBB\nk1:AAAA\n").unwrap();
        assert_eq!(seal_key_target(&data, &from, key).unwrap(), None);
        // Another key: refused, and the file is left as it was.
        std::fs::write(&target, "k1:CCCC\n").unwrap();
        let error = seal_key_target(&data, &from, key).unwrap_err().to_string();
        assert!(error.contains("another seal key"), "{error}");
        assert!(
            !error.contains("AAAA") && !error.contains("CCCC"),
            "{error}"
        );
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "k1:CCCC\n");
    }

    #[test]
    fn database_urls_become_locations() {
        assert_eq!(
            locate("sqlite:///var/lib/stratus/auth.db?mode=rwc").unwrap(),
            Location::Sqlite(PathBuf::from("/var/lib/stratus/auth.db"))
        );
        assert_eq!(
            locate("postgres://u@db/auth").unwrap(),
            Location::Postgres("postgres://u@db/auth".into())
        );
        assert!(locate("mysql://db/auth").is_err());
        assert!(locate("sqlite::memory:").is_err());
    }
}
