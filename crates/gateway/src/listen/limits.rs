//! What the listeners hold clients to: how long a request head may take and how large it may
//! be, how many connections a worker serves, and how long idle ones are kept.

use std::time::Duration;

/// Protections against abusive clients.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A client must send a request's headers within this time (against slowloris).
    pub header_timeout: Duration,
    /// Largest request head (request line and headers); larger gets 431.
    pub max_header_bytes: usize,
    /// Open client connections per worker; past it, new connections wait in the kernel's backlog.
    pub max_connections_per_worker: usize,
    pub connect_timeout: Duration,
    /// How long an instance may send nothing in the middle of a response body.
    pub upstream_idle_timeout: Duration,
    pub grace: Duration,
    /// How long an idle keep-alive client connection is kept open (parked) before it is closed.
    pub keepalive_timeout: Duration,
    /// Idle time at a message boundary after which a connection's session ends and it parks.
    pub park_after: Duration,
}
