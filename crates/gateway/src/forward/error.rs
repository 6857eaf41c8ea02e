//! Why an attempt to send a request to an instance got no response, as the upstream clients
//! (`client.rs`, `client_h2.rs`) and mutual TLS (`upstream_tls.rs`) report it.

use std::time::Duration;

use crate::forward::h1;

/// Why a request got no response. The difference matters for retries: a request that was never
/// sent may go to another instance whatever its method.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("connecting to {authority}: {source}")]
    Connect {
        authority: String,
        source: std::io::Error,
    },
    #[error("connecting to {authority}: timed out after {after:?}")]
    ConnectTimeout { authority: String, after: Duration },
    #[error("HTTP handshake with {authority}: {source}")]
    Handshake {
        authority: String,
        source: hyper::Error,
    },
    /// An HTTP/2 request failed (`client_h2.rs`).
    #[error("the request to {authority} failed: {source}")]
    Request {
        authority: String,
        source: hyper::Error,
    },
    /// An HTTP/1.1 exchange failed: writing the request, or reading a usable response head.
    #[error("the request to {authority} failed: {source}")]
    Exchange {
        authority: String,
        source: h1::Error,
    },
    /// Mutual TLS with the instance failed (`upstream_tls.rs`): its certificate does not name
    /// the service, it does not speak TLS, or it refused the gateway's certificate. The
    /// request was never processed.
    #[error("mutual TLS with {authority}: {source}")]
    Tls {
        authority: String,
        source: std::io::Error,
    },
}

impl SendError {
    /// The instance never saw the request.
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            SendError::Connect { .. } | SendError::ConnectTimeout { .. } | SendError::Tls { .. }
        )
    }
}
