//! The forward layer: sending a routed request to the chosen instance, over HTTP/1.1 or HTTP/2,
//! plaintext or mutual TLS, and relaying its answer.

pub mod attempt;
pub mod client;
pub mod client_h2;
pub mod error;
pub mod forwarder;
pub mod h1;
pub mod relay;
pub mod send;
pub mod unbuffered_tls;
pub mod upstream_io;
pub mod upstream_tls;
