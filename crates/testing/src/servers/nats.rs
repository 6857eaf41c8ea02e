//! A NATS server of our own, with JetStream (its store in a temporary directory) or without, on
//! a free loopback port. It can be stopped and started again on the same port and store, to
//! play a broker outage. With TLS ([`Nats::start_tls`]) every client must speak TLS.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;
use crate::tls::{TestCa, TlsFiles};
use crate::Need;

pub struct Nats {
    pub port: u16,
    bin: PathBuf,
    dir: tempfile::TempDir,
    child: Option<Child>,
    jetstream: bool,
    tls: Option<Tls>,
}

/// A TLS server's files, and its monitoring port (`/connz` says which connections are TLS).
struct Tls {
    files: TlsFiles,
    monitor_port: u16,
}

impl Nats {
    /// A server with JetStream, as the broker needs.
    pub fn start() -> Nats {
        Self::start_with(true, false)
    }

    /// A plain NATS server, without JetStream.
    pub fn start_without_jetstream() -> Nats {
        Self::start_with(false, false)
    }

    /// A server with JetStream that requires TLS of every client (`--tls`), with a certificate
    /// for 127.0.0.1 and localhost signed by a CA of its own ([`Nats::ca_file`]), and its HTTP
    /// monitoring on [`Nats::monitor_url`].
    pub fn start_tls() -> Nats {
        Self::start_with(true, true)
    }

    fn start_with(jetstream: bool, tls: bool) -> Nats {
        let dir = tempfile::tempdir().expect("a temp dir");
        let tls = tls.then(|| Tls {
            files: TestCa::new().write_server_files(dir.path()),
            monitor_port: free_port(),
        });
        let mut server = Nats {
            port: free_port(),
            bin: Need::Nats.path(),
            dir,
            child: None,
            jetstream,
            tls,
        };
        server.resume();
        server
    }

    /// `nats://127.0.0.1:<port>` (`tls://` with TLS), as `BROKER_URL` takes it.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "tls" } else { "nats" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The certificate of the CA that signed this server's certificate. Panics for a server
    /// started without TLS.
    pub fn ca_file(&self) -> &Path {
        &self.tls().files.ca
    }

    /// `http://127.0.0.1:<monitoring port>` of a TLS server (`/connz` lists each client
    /// connection with its `tls_version`). Panics for a server started without TLS.
    pub fn monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.tls().monitor_port)
    }

    fn tls(&self) -> &Tls {
        self.tls
            .as_ref()
            .expect("a server started with Nats::start_tls")
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
        if let Some(tls) = &self.tls {
            command
                .args(["--tls", "--tlscert"])
                .arg(&tls.files.cert)
                .arg("--tlskey")
                .arg(&tls.files.key)
                .args(["-m", &tls.monitor_port.to_string()]);
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
