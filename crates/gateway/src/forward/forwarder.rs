//! One worker's forwarding: its own upstream connections (HTTP/1.1 and HTTP/2), the attempt
//! driver over them, and the answer relayed. What is decided per route (the instance pool, the
//! split's version, the balancing key, the timeout, the target) comes in as [`Attempts`].

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use stratus_kit::Problem;

use crate::forward::attempt::Attempts;
use crate::forward::client::{idempotent, ConnectionPool, PooledBody};
use crate::forward::client_h2::H2Pool;
use crate::forward::relay::relay;
use crate::forward::send::{Http1, Http2};
use crate::forward::upstream_tls::UpstreamTls;
use crate::headers::Forwarding;

pub struct Forwarder {
    /// This worker's keep-alive HTTP/1.1 connections to the instances.
    client: Arc<ConnectionPool>,
    /// This worker's HTTP/2 connections, one per instance (gRPC and h2c routes).
    h2: Arc<H2Pool>,
    /// Whether answers carry `x-served-by`.
    served_by: bool,
}

impl Forwarder {
    /// Called on the worker's own runtime: the pools' sweepers run there.
    pub fn new(
        connect_timeout: Duration,
        body_idle_timeout: Duration,
        tls: Option<Arc<UpstreamTls>>,
        served_by: bool,
    ) -> Self {
        let client = ConnectionPool::with_tls(connect_timeout, body_idle_timeout, tls.clone());
        client.spawn_sweeper();
        let h2 = H2Pool::with_tls(connect_timeout, tls);
        h2.spawn_sweeper();
        Self {
            client,
            h2,
            served_by,
        }
    }

    /// HTTP/1.1 to the instance: the target in origin form, and the instance's own `Host`; the
    /// rest is the client's request as the proxy adjusted it, borrowed, not copied. On a
    /// failure that allows it, once more to another instance.
    #[allow(clippy::too_many_arguments)]
    pub async fn http1(
        &self,
        attempts: &Attempts<'_>,
        parts: &http::request::Parts,
        target: &str,
        forwarding: &Forwarding<'_>,
        body: &Bytes,
        client_upgrade: Option<hyper::upgrade::OnUpgrade>,
        retries: &mut u32,
    ) -> Result<Response<PooledBody>, Problem> {
        let mut step = Http1 {
            client: &self.client,
            method: &parts.method,
            target,
            headers: &parts.headers,
            forwarding,
            body,
            idempotent: idempotent(&parts.method),
        };
        let (response, endpoint) = attempts.run(&mut step, retries).await?;
        relay(response, &endpoint, client_upgrade, self.served_by)
    }

    /// HTTP/2 to one instance; when the request never left the gateway (no connection, or the
    /// connection closed before the request went out), to another. Anything else is not
    /// retried: the body has gone, and a gRPC call is not idempotent.
    pub async fn http2(
        &self,
        attempts: &Attempts<'_>,
        request: Request<Incoming>,
        path: http::uri::PathAndQuery,
        retries: &mut u32,
    ) -> Result<Response<PooledBody>, Problem> {
        let mut step = Http2 {
            client: &self.h2,
            request: Some(request),
            path,
        };
        let (response, endpoint) = attempts.run(&mut step, retries).await?;
        relay(
            response.map(PooledBody::unpooled),
            &endpoint,
            None,
            self.served_by,
        )
    }
}
