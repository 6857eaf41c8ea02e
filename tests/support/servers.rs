//! Real backing servers for tests, from the Debian packages, each started on a free loopback
//! port in a temporary directory and stopped when dropped.
//!
//! When a server is not installed the test is skipped with a notice, except under `CI=true`,
//! where a missing server is a failure: CI installs every server the suite needs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// `None` (skip) when `program` is missing outside CI; a panic under CI.
pub fn require(server: &str, found: Option<PathBuf>) -> Option<PathBuf> {
    if found.is_some() {
        return found;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{server} is not installed, and CI=true requires it (.ci/run installs it)");
    }
    eprintln!("SKIPPED: {server} is not installed; install it to run this test");
    None
}

fn on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// A PostgreSQL server of our own, with a superuser `stratus` trusted on loopback.
pub struct Postgres {
    pub port: u16,
    bin: PathBuf,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Postgres {
    pub fn start() -> Option<Postgres> {
        let bin = require("PostgreSQL (Debian package postgresql)", postgres_bin())?;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        if is_root() {
            // PostgreSQL refuses to run as root: hand the directory to the postgres user.
            let (uid, gid) =
                postgres_user().expect("the postgres user (created by the postgresql package)");
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .expect("chown of the temp dir");
        }
        let initdb = as_postgres(&bin.join("initdb"))
            .args([
                "--auth=trust",
                "--username=stratus",
                "--encoding=UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("running initdb");
        assert!(initdb.success(), "initdb failed");
        let mut server = Postgres {
            port: free_port(),
            bin,
            dir,
            child: None,
        };
        server.resume();
        Some(server)
    }

    /// Stops the server (fast shutdown: clients are disconnected) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe {
                libc::kill(child.id() as i32, libc::SIGINT);
            }
            let _ = child.wait();
        }
    }

    /// Starts it (again) on the same port and data, and waits until it accepts connections.
    pub fn resume(&mut self) {
        let child = as_postgres(&self.bin.join("postgres"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args([
                "-p",
                &self.port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
            ])
            .arg("-k")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting postgres");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "stratus",
                ])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            assert!(Instant::now() < deadline, "postgres did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Creates a database and returns its URL.
    pub fn database(&self, name: &str) -> String {
        let status = Command::new(self.bin.join("createdb"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "stratus",
                name,
            ])
            .status()
            .expect("running createdb");
        assert!(status.success(), "createdb {name} failed");
        format!("postgres://stratus@127.0.0.1:{}/{name}", self.port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe {
                libc::kill(child.id() as i32, libc::SIGQUIT);
            }
            let _ = child.wait();
        }
    }
}

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
        .or_else(|| on_path("initdb").and_then(|p| p.parent().map(Path::to_path_buf)))
}

/// PostgreSQL refuses to run as root; as root, run it as the `postgres` user the Debian package
/// creates. The uid is switched in the child itself, so signals reach postgres directly.
fn as_postgres(program: &Path) -> Command {
    let mut command = Command::new(program);
    if is_root() {
        use std::os::unix::process::CommandExt;
        let (uid, gid) =
            postgres_user().expect("the postgres user (created by the postgresql package)");
        command.uid(uid).gid(gid);
    }
    command
}

fn postgres_user() -> Option<(u32, u32)> {
    let name = std::ffi::CString::new("postgres").ok()?;
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    if entry.is_null() {
        return None;
    }
    unsafe { Some(((*entry).pw_uid, (*entry).pw_gid)) }
}

/// An etcd server of our own (single member), on free loopback ports.
pub struct Etcd {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Child,
}

impl Etcd {
    pub fn start() -> Option<Etcd> {
        let bin = require("etcd (Debian package etcd-server)", on_path("etcd"))?;
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let peer_port = free_port();
        let client_url = format!("http://127.0.0.1:{port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let log = std::fs::File::create(dir.path().join("etcd.log")).unwrap();
        let child = Command::new(bin)
            .arg("--name=stratus-test")
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=stratus-test={peer_url}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting etcd");
        let server = Etcd { port, dir, child };
        server.wait_ready();
        Some(server)
    }

    /// `http://127.0.0.1:<port>`: etcd's client URL, as `STRATUS_REGISTRY_STORE` takes it.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // /health answers {"health":"true"} once the member has a leader.
            let healthy = std::net::TcpStream::connect(("127.0.0.1", self.port))
                .ok()
                .and_then(|mut stream| {
                    use std::io::{Read, Write};
                    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
                    stream
                        .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                        .ok()?;
                    let mut answer = String::new();
                    stream.read_to_string(&mut answer).ok()?;
                    Some(answer.contains("\"health\":\"true\""))
                })
                .unwrap_or(false);
            if healthy {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not become healthy; log in {}",
                self.dir.path().join("etcd.log").display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Redis server of our own, without persistence, on a free loopback port.
pub struct Redis {
    pub port: u16,
    bin: PathBuf,
    child: Option<Child>,
}

impl Redis {
    pub fn start() -> Option<Redis> {
        let bin = require(
            "Redis (Debian package redis-server)",
            on_path("redis-server")
                .or_else(|| Some(PathBuf::from("/usr/bin/redis-server")).filter(|p| p.is_file())),
        )?;
        let mut server = Redis {
            port: free_port(),
            bin,
            child: None,
        };
        server.spawn();
        Some(server)
    }

    /// `redis://127.0.0.1:<port>`, as `CACHE_URL` and `STRATUS_RATE_LIMIT_REDIS_URL` take it.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new(&self.bin)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.answers() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn answers(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }

    /// Starts a killed server again on the same port (empty: this Redis keeps nothing on disk).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Kills the server (SIGKILL): open connections break, new ones are refused.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A NATS server with JetStream of our own, on a free loopback port with its store in a
/// temporary directory. It can be stopped and started again on the same port and store, to
/// play a broker outage.
pub struct Nats {
    pub port: u16,
    bin: PathBuf,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Nats {
    pub fn start() -> Option<Nats> {
        let found = on_path("nats-server").or_else(|| {
            let sbin = PathBuf::from("/usr/sbin/nats-server");
            sbin.is_file().then_some(sbin)
        });
        let bin = require("nats-server (Debian package nats-server)", found)?;
        let mut server = Nats {
            port: free_port(),
            bin,
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        server.resume();
        Some(server)
    }

    /// `nats://127.0.0.1:<port>`, as `BROKER_URL` takes it.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops the server (SIGTERM, waiting for it to exit).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let _ = child.wait();
        }
    }

    /// Starts it (again) on the same port and store, and waits until it accepts connections.
    pub fn resume(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("nats.log"))
            .unwrap();
        let child = Command::new(&self.bin)
            .args(["-js", "-sd"])
            .arg(self.dir.path().join("store"))
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
