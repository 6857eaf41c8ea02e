//! A PostgreSQL server of our own, with a superuser `stratus` trusted on loopback; with TLS
//! ([`Postgres::start_tls`]) it takes TLS connections only.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;
use crate::needs::is_root;
use crate::tls::TestCa;
use crate::Need;

pub struct Postgres {
    pub port: u16,
    bin: PathBuf,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// With TLS: the CA file a client verifies the server with.
    ca: Option<PathBuf>,
}

impl Postgres {
    /// A server without TLS (`ssl = off`): plaintext connections only.
    pub fn start() -> Postgres {
        Self::start_with(false)
    }

    /// A server with `ssl = on` that refuses plaintext connections (`hostnossl ... reject`): its
    /// certificate, for 127.0.0.1 and localhost, is signed by a CA of its own whose certificate
    /// is [`Postgres::ca_file`]. A client that does not ask for TLS is refused, so a client that
    /// falls back to plaintext shows up as an error, not as a pass.
    pub fn start_tls() -> Postgres {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> Postgres {
        let bin = Need::Postgres.path();
        let dir = tempfile::tempdir().expect("a temp dir");
        let data = dir.path().join("data");
        if is_root() {
            // PostgreSQL refuses to run as root: hand the directory to the postgres user.
            let (uid, gid) = postgres_user();
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
        let ca = tls.then(|| enable_tls(dir.path(), &data));
        let mut server = Postgres {
            port: free_port(),
            bin,
            dir,
            child: None,
            ca,
        };
        server.resume();
        server
    }

    /// Stops the server (fast shutdown: clients are disconnected) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: a plain kill(2) on our own child's pid, which `wait` has not reaped yet.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGINT);
            }
            let _ = child.wait();
        }
    }

    /// Starts it (again) on the same port and data, and waits until it accepts connections.
    pub fn resume(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .expect("the server's log file");
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
            .args([
                "-c",
                if self.ca.is_some() {
                    "ssl=on"
                } else {
                    "ssl=off"
                },
            ])
            .arg("-k")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(log)
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

    /// The certificate of the CA that signed this server's certificate, for `sslrootcert=`.
    /// Panics for a server started without TLS.
    pub fn ca_file(&self) -> &Path {
        self.ca
            .as_deref()
            .expect("a server started with Postgres::start_tls")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }
}

/// Writes the server's certificate and key into the data directory, where `ssl = on` looks for
/// them (`server.crt`, `server.key`), and the CA's certificate beside it; only TLS connections
/// from loopback are let in. Returns the CA file.
fn enable_tls(dir: &Path, data: &Path) -> PathBuf {
    let ca = TestCa::new();
    let files = ca.write_server_files(data);
    // The CA stays readable for the client, outside the data directory (mode 0700).
    let ca_file = ca.write_cert(&dir.join("ca.crt"));
    std::fs::remove_file(&files.ca).expect("removing the CA's copy in the data directory");
    std::fs::write(
        data.join("pg_hba.conf"),
        "local all all trust\n\
         hostssl all all 127.0.0.1/32 trust\n\
         hostnossl all all 127.0.0.1/32 reject\n",
    )
    .expect("writing pg_hba.conf");
    if is_root() {
        // PostgreSQL reads its key only when the user it runs as owns it, mode 0600.
        let (uid, gid) = postgres_user();
        for file in [&files.cert, &files.key, &data.join("pg_hba.conf")] {
            std::os::unix::fs::chown(file, Some(uid), Some(gid)).expect("chown of a TLS file");
        }
    }
    ca_file
}

impl Drop for Postgres {
    fn drop(&mut self) {
        super::print_log_tail("postgres", &self.log());
        if let Some(mut child) = self.child.take() {
            // SAFETY: as in `stop`; SIGQUIT is the immediate shutdown.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGQUIT);
            }
            let _ = child.wait();
        }
    }
}

/// PostgreSQL refuses to run as root; as root, run it as the `postgres` user the Debian package
/// creates. The uid is switched in the child itself, so signals reach postgres directly.
fn as_postgres(program: &Path) -> Command {
    let mut command = Command::new(program);
    if is_root() {
        use std::os::unix::process::CommandExt;
        let (uid, gid) = postgres_user();
        command.uid(uid).gid(gid);
    }
    command
}

fn postgres_user() -> (u32, u32) {
    let name = std::ffi::CString::new("postgres").expect("no NUL in the name");
    // SAFETY: getpwnam with a valid C string; the entry is read at once, before any other
    // call that could reuse its static buffer.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !entry.is_null(),
        "the postgres user is missing (the postgresql package creates it)"
    );
    // SAFETY: checked non-null above.
    unsafe { ((*entry).pw_uid, (*entry).pw_gid) }
}
