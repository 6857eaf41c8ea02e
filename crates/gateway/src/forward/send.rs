//! The two protocols' "send one attempt" steps for the attempt driver (`attempt.rs`): each
//! sends over its own client and says, in the driver's terms, how the attempt went.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, Uri};
use hyper::body::Incoming;
use stratus_kit::Problem;

use super::attempt::{SendStep, Sent};
use crate::forward::client::{ConnectionPool, PooledBody};
use crate::forward::client_h2::{Failure, H2Pool};
use crate::forward::error::SendError;
use crate::forward::h1::Outgoing;
use crate::grpc;
use crate::headers::Forwarding;
use crate::upstream::instances::Endpoint;

/// HTTP/1.1: the request as the client sent it (adjusted), borrowed for every attempt, written
/// to the instance in origin form with the instance's own `Host`.
pub struct Http1<'a> {
    pub client: &'a Arc<ConnectionPool>,
    pub method: &'a Method,
    pub target: &'a str,
    pub headers: &'a http::HeaderMap,
    pub forwarding: &'a Forwarding<'a>,
    pub body: &'a Bytes,
    /// An idempotent method: the gateway still holds the body, so it may go again.
    pub idempotent: bool,
}

impl SendStep for Http1<'_> {
    type Response = Response<PooledBody>;
    type Error = SendError;

    fn resendable(&self) -> bool {
        self.idempotent
    }

    async fn send(&mut self, endpoint: &Arc<Endpoint>) -> Sent<Self::Response, SendError> {
        let request = Outgoing {
            method: self.method,
            target: self.target,
            host: Some(&endpoint.host),
            headers: self.headers,
            forwarding: Some(self.forwarding),
            body: self.body,
        };
        match self.client.send(endpoint, request).await {
            Ok(response) => {
                let status = response.status().as_u16();
                Sent::Answered {
                    response,
                    failing: status >= 500,
                    retryable: matches!(status, 502..=504),
                }
            }
            // A connection that was never made carried nothing; anything else may have.
            Err(error) => {
                let connect = error.is_connect();
                Sent::Failed {
                    error,
                    connect,
                    reached: !connect,
                }
            }
        }
    }
}

/// HTTP/2: the request itself, its body streaming from the client. It goes again only when it
/// never left the gateway (the client hands it back), never once its body may have gone.
pub struct Http2<'a> {
    pub client: &'a H2Pool,
    /// None only while an attempt has it.
    pub request: Option<Request<Incoming>>,
    pub path: http::uri::PathAndQuery,
}

impl SendStep for Http2<'_> {
    type Response = Response<Incoming>;
    type Error = SendError;

    fn resendable(&self) -> bool {
        false
    }

    /// HTTP/2 names the instance in the `:authority` of an absolute URI.
    fn address(&mut self, endpoint: &Endpoint) -> Result<(), Problem> {
        let uri = Uri::builder()
            .scheme(self.client.scheme())
            .authority(endpoint.authority.clone())
            .path_and_query(self.path.clone())
            .build()
            .map_err(|_| Problem::bad_request("the request path is not valid"))?;
        if let Some(request) = &mut self.request {
            *request.uri_mut() = uri;
        }
        Ok(())
    }

    async fn send(&mut self, endpoint: &Arc<Endpoint>) -> Sent<Self::Response, SendError> {
        let Some(request) = self.request.take() else {
            // Not reached: the driver sends again only a request that came back unsent.
            return Sent::Failed {
                error: SendError::Connect {
                    authority: endpoint.authority.to_string(),
                    source: std::io::Error::other("the request has already gone"),
                },
                connect: false,
                reached: true,
            };
        };
        match self.client.send(endpoint, request).await {
            Ok(response) => {
                // A gRPC server that says UNAVAILABLE is failing as surely as a 503.
                let failing = response.status().is_server_error()
                    || response
                        .headers()
                        .get(&grpc::GRPC_STATUS)
                        .is_some_and(|s| s.as_bytes() == b"14");
                Sent::Answered {
                    response,
                    failing,
                    retryable: false,
                }
            }
            Err(Failure::NotSent(error, unsent)) => {
                self.request = Some(*unsent);
                Sent::Failed {
                    connect: error.is_connect(),
                    error,
                    reached: false,
                }
            }
            // (A refused certificate, found only after hyper took the request, is a connect
            // failure that may still have been seen.)
            Err(Failure::Failed(error)) => Sent::Failed {
                connect: error.is_connect(),
                error,
                reached: true,
            },
        }
    }
}
