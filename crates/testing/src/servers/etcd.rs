//! An etcd server of our own (single member), on free loopback ports.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;
use crate::Need;

pub struct Etcd {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Child,
}

impl Etcd {
    pub fn start() -> Etcd {
        let bin = Need::Etcd.path();
        let dir = tempfile::tempdir().expect("a temp dir");
        let port = free_port();
        let peer_port = free_port();
        let client_url = format!("http://127.0.0.1:{port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let log = std::fs::File::create(dir.path().join("etcd.log")).expect("etcd's log file");
        let child = Command::new(bin)
            .arg("--name=stratus-test")
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=stratus-test={peer_url}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("etcd's log file"))
            .stderr(log)
            .spawn()
            .expect("starting etcd");
        let server = Etcd { port, dir, child };
        server.wait_ready();
        server
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
        super::print_log_tail("etcd", &self.dir.path().join("etcd.log"));
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
