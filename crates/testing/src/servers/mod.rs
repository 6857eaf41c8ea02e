//! Real backing servers for tests, from the Debian packages, each started on a free loopback
//! port in a temporary directory and stopped when dropped.
//!
//! A test that starts one declares it (`.needs(&[Need::Postgres])`), so where the server is not
//! installed the test is reported ignored before it starts. Starting a server that is missing is
//! therefore a test that forgot to declare it: a panic that says what to install, never a
//! silent pass.

mod etcd;
mod nats;
mod postgres;
mod redis;

pub use etcd::Etcd;
pub use nats::Nats;
pub use postgres::Postgres;
pub use redis::Redis;

use std::net::TcpListener;
use std::path::Path;

/// A free port for a process that must listen on a known port (a server, a registry, a gateway).
///
/// Ports come from 20000-29999, below the kernel's ephemeral range (32768 and up), and are
/// checked free by binding. Processes that bind port 0 get ephemeral ports, so they can never
/// take a port handed out here between the check and the moment the process that was given it
/// binds it, as tests run in parallel.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let seed = std::process::id().wrapping_mul(7919);
    loop {
        let candidate =
            20000 + (seed.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed)) % 10000) as u16;
        if TcpListener::bind(("127.0.0.1", candidate)).is_ok() {
            return candidate;
        }
    }
}

/// The last lines of a server's log, printed when the test that started it fails, so the
/// failure shows why the server did what it did.
fn print_log_tail(server: &str, log: &Path) {
    if !std::thread::panicking() {
        return;
    }
    if let Ok(text) = std::fs::read_to_string(log) {
        let tail: Vec<&str> = text.lines().rev().take(20).collect();
        eprintln!("--- {server} log (last lines of {})", log.display());
        for line in tail.into_iter().rev() {
            eprintln!("{line}");
        }
    }
}
