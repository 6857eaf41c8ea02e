//! A NATS server of our own, with JetStream (its store in a temporary directory) or without, on
//! a free loopback port. It can be stopped and started again on the same port and store, to
//! play a broker outage.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;
use crate::Need;

pub struct Nats {
    pub port: u16,
    bin: PathBuf,
    dir: tempfile::TempDir,
    child: Option<Child>,
    jetstream: bool,
}

impl Nats {
    /// A server with JetStream, as the broker needs.
    pub fn start() -> Nats {
        Self::start_with(true)
    }

    /// A plain NATS server, without JetStream.
    pub fn start_without_jetstream() -> Nats {
        Self::start_with(false)
    }

    fn start_with(jetstream: bool) -> Nats {
        let mut server = Nats {
            port: free_port(),
            bin: Need::Nats.path(),
            dir: tempfile::tempdir().expect("a temp dir"),
            child: None,
            jetstream,
        };
        server.resume();
        server
    }

    /// `nats://127.0.0.1:<port>`, as `BROKER_URL` takes it.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops the server (SIGTERM, waiting for it to exit).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: a plain kill(2) on our own child's pid, which `wait` has not reaped yet.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let _ = child.wait();
        }
    }

    /// Stops the server and starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.stop();
        self.resume();
    }

    /// Starts it (again) on the same port and store, and waits until it accepts connections.
    pub fn resume(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .expect("the server's log file");
        let mut command = Command::new(&self.bin);
        if self.jetstream {
            command
                .args(["-js", "-sd"])
                .arg(self.dir.path().join("store"));
        }
        let child = command
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the log file"))
            .stderr(log)
            .spawn()
            .expect("starting nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
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
}

impl Drop for Nats {
    fn drop(&mut self) {
        super::print_log_tail("nats-server", &self.log());
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
