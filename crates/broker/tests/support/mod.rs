//! A real `nats-server` for the JetStream tests, from the Debian package, on a free loopback port
//! with its store in a temporary directory.
//!
//! When it is not installed the test is skipped with a notice, except under `CI=true`, where a
//! missing server is a failure: CI installs it.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `None` (skip) when the server is missing outside CI; a panic under CI.
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

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn find(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

pub struct NatsServer {
    pub port: u16,
    bin: PathBuf,
    dir: tempfile::TempDir,
    child: Option<Child>,
    jetstream: bool,
}

impl NatsServer {
    pub fn start() -> Option<NatsServer> {
        Self::start_with(true)
    }

    /// A plain NATS server, without JetStream.
    pub fn start_without_jetstream() -> Option<NatsServer> {
        Self::start_with(false)
    }

    fn start_with(jetstream: bool) -> Option<NatsServer> {
        let bin = require(
            "nats-server (Debian package nats-server)",
            find("nats-server"),
        )?;
        let mut server = NatsServer {
            port: free_port(),
            bin,
            dir: tempfile::tempdir().expect("a temp dir"),
            child: None,
            jetstream,
        };
        server.spawn();
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops the server (SIGTERM) and starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    fn spawn(&mut self) {
        let store = self.dir.path().join("store");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("nats.log"))
            .expect("the server's log file");
        let mut command = Command::new(&self.bin);
        if self.jetstream {
            command.args(["-js", "-sd"]).arg(&store);
        }
        let child = command
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the log file"))
            .stderr(log)
            .spawn()
            .expect("starting nats-server");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not start; log in {}",
                self.log().display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("nats.log")
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let _ = child.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Ok(text) = std::fs::read_to_string(self.log()) {
                let tail: Vec<&str> = text.lines().rev().take(20).collect();
                eprintln!("--- nats-server log (last lines)");
                for line in tail.into_iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
