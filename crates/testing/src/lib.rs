//! Stratus's harness for tests that need something outside the Rust toolchain: real servers
//! (PostgreSQL, etcd, NATS, Redis), a browser, curl, Python packages, network namespaces.
//!
//! Such a test file is a `harness = false` test target whose `main` lists its tests and what
//! each needs:
//!
//! ```no_run
//! use stratus_testing::{servers::Etcd, Need, Test};
//!
//! async fn three_registries_share_one_view() {
//!     let etcd = Etcd::start();
//!     // ...
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     stratus_testing::run(vec![
//!         Test::new("three_registries_share_one_view", three_registries_share_one_view)
//!             .worker_threads(2)
//!             .needs(&[Need::Etcd]),
//!     ])
//! }
//! ```
//!
//! Where etcd is missing the test is printed `ignored (needs etcd: apt-get install
//! etcd-server)` and counted in the summary's `ignored`; under CI ([`under_ci`]) it fails. Files
//! that need nothing stay on libtest. Which is which is checked against Cargo.toml's `[[test]]`
//! entries by a test of this crate (guard.rs).

mod ci;
mod harness;
pub mod needs;
pub mod servers;
pub mod tls;

#[cfg(test)]
mod guard;

pub use ci::under_ci;
pub use harness::{run, Test};
pub use needs::Need;
pub use servers::free_port;
