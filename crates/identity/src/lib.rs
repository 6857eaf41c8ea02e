//! Workload identity: who a Stratus process is, proven by a certificate.
//!
//! Every instance holds a short-lived X.509 certificate naming its service as a SPIFFE ID
//! (`spiffe://<trust domain>/service/<name>`), issued by Stratus's own certificate authority.
//! Peers check that certificate on every internal connection (mutual TLS), so "who is calling"
//! is a fact of the connection, not a claim in a request.
//!
//! - [`spiffe`]: the IDs, and what a service or operator name may be.
//! - [`join`]: the credential an instance shows to get its first certificate, bound to one
//!   service name (a credential for `catalog` can never get an `auth` certificate).
//! - [`authority`]: the certificate authority: its keys, rotation with overlap, issuing.
//! - [`seal`]: secrets at rest (the CA's keys, and other services' secrets), encrypted with a
//!   key from the environment or a file, which can be rotated.
//! - [`peer`]: reading the SPIFFE ID out of a peer's certificate.
//! - [`tls`]: rustls configurations for both ends of an internal hop, whose certificate and
//!   trust bundle can be replaced at any time (renewal and rotation need no new connections
//!   pool or listener).
//!
//! Nothing here does I/O: the registry serves the authority, and kit's workloads fetch and
//! renew their certificates.

pub mod authority;
pub mod join;
pub mod peer;
pub mod seal;
pub mod spiffe;
pub mod tls;

pub use authority::{Authority, Issued};
pub use join::JoinSecret;
pub use seal::Sealer;
pub use spiffe::{Principal, SpiffeId};
pub use tls::{Credentials, Expect, Mode};
