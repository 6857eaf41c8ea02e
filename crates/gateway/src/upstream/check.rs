//! What the gateway keeps on each instance for its active health checks (`health.rs`): how it
//! is asked, and its run of consecutive outcomes.

use std::sync::atomic::AtomicU32;

use stratus_kit::model::Instance;

/// How an instance is probed (its registration's metadata `health_check`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Http,
    Grpc,
    Tcp,
}

impl Check {
    /// The instance's choice; `http` when it names none (or one the gateway does not know).
    pub fn of(instance: &Instance) -> Self {
        match instance.metadata.get("health_check").map(String::as_str) {
            Some("grpc") => Check::Grpc,
            Some("tcp") => Check::Tcp,
            _ => Check::Http,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Check::Http => "http",
            Check::Grpc => "grpc",
            Check::Tcp => "tcp",
        }
    }
}

/// Per-endpoint counters of consecutive outcomes.
#[derive(Default)]
pub struct Probe {
    pub failures: AtomicU32,
    pub successes: AtomicU32,
}
