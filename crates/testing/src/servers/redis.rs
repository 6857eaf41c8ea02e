//! A Redis server of our own, without persistence, on a free loopback port; with TLS
//! ([`Redis::start_tls`]) on a TLS port only.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;
use crate::tls::{TestCa, TlsFiles};
use crate::Need;

pub struct Redis {
    pub port: u16,
    bin: PathBuf,
    child: Option<Child>,
    dir: tempfile::TempDir,
    tls: Option<TlsFiles>,
}

impl Redis {
    pub fn start() -> Redis {
        Self::start_with(false)
    }

    /// A server that speaks TLS only (`--port 0 --tls-port <port>`), with a certificate for
    /// 127.0.0.1 and localhost signed by a CA of its own ([`Redis::ca_file`]); clients need no
    /// certificate of their own.
    pub fn start_tls() -> Redis {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> Redis {
        let dir = tempfile::tempdir().expect("a temp dir");
        let tls = tls.then(|| TestCa::new().write_server_files(dir.path()));
        let mut server = Redis {
            port: free_port(),
            bin: Need::Redis.path(),
            child: None,
            dir,
            tls,
        };
        server.spawn();
        server
    }

    /// `redis://127.0.0.1:<port>` (`rediss://` with TLS), as `CACHE_URL` and
    /// `STRATUS_RATE_LIMIT_REDIS_URL` take it.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The certificate of the CA that signed this server's certificate. Panics for a server
    /// started without TLS.
    pub fn ca_file(&self) -> &Path {
        &self
            .tls
            .as_ref()
            .expect("a server started with Redis::start_tls")
            .ca
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .expect("the server's log file");
        let port = self.port.to_string();
        let mut command = Command::new(&self.bin);
        match &self.tls {
            None => command.args(["--port", &port]),
            Some(files) => command
                .args([
                    "--port",
                    "0",
                    "--tls-port",
                    &port,
                    "--tls-auth-clients",
                    "no",
                ])
                .arg("--tls-cert-file")
                .arg(&files.cert)
                .arg("--tls-key-file")
                .arg(&files.key)
                .arg("--tls-ca-cert-file")
                .arg(&files.ca),
        };
        let child = command
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the log file"))
            .stderr(log)
            .spawn()
            .expect("starting redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.answers() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start; log in {}",
                self.log().display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// Whether it takes connections: a PING answered (without TLS), or a port that accepts (with
    /// TLS: the server opens its listeners once its certificate is loaded, and keeps no data to
    /// load first).
    fn answers(&self) -> bool {
        if self.tls.is_some() {
            return std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok();
        }
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
        super::print_log_tail("redis-server", &self.log());
        self.kill();
    }
}
