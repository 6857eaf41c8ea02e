//! The instance's answer on its way back to the client: hop-by-hop headers stripped,
//! `x-served-by` added, and a WebSocket switch (101) turned into a tunnel between the two
//! connections.

use bytes::Bytes;
use http::{Response, StatusCode};
use stratus_kit::Problem;

use crate::forward::attempt::bad_gateway;
use crate::forward::client::{PooledBody, UpstreamStream, UpstreamUpgrade};
use crate::headers::{self, is_websocket, X_SERVED_BY};
use crate::upstream::instances::Endpoint;

/// The response to relay from `endpoint`; a 101 the client did not ask for (or to anything but
/// WebSocket) is refused as a 502.
pub fn relay(
    mut response: Response<PooledBody>,
    endpoint: &Endpoint,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    served_by: bool,
) -> Result<Response<PooledBody>, Problem> {
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let upstream = response
            .extensions_mut()
            .remove::<UpstreamUpgrade>()
            .and_then(|upgrade| upgrade.take());
        let to_websocket = response
            .headers()
            .get(http::header::UPGRADE)
            .is_some_and(is_websocket);
        // A switch the client did not ask for, or to another protocol than WebSocket, has
        // nothing sound to relay: the instance is answering out of turn.
        let (Some(client), Some((upstream, leftover)), true) =
            (client_upgrade, upstream, to_websocket)
        else {
            tracing::warn!(service = %endpoint.service, instance = %endpoint.id, "a 101 the client did not ask for");
            return Err(bad_gateway(&endpoint.service));
        };
        tokio::spawn(tunnel(client, upstream, leftover, endpoint.service.clone()));
        if served_by {
            response
                .headers_mut()
                .insert(X_SERVED_BY.clone(), endpoint.served_by.clone());
        }
        return Ok(response);
    }
    headers::strip_hop_by_hop(response.headers_mut());
    if served_by {
        response
            .headers_mut()
            .insert(X_SERVED_BY.clone(), endpoint.served_by.clone());
    }
    Ok(response)
}

/// Once both sides have switched protocols, copies bytes both ways until either side closes.
/// The instance's side is its connection as the upstream client left it (its TLS session
/// included, under mutual TLS), and the bytes it had already read past the 101 head, which go
/// to the client first.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    mut upstream: UpstreamStream,
    leftover: Bytes,
    service: String,
) {
    use tokio::io::AsyncWriteExt;
    let client = match client.await {
        Ok(client) => client,
        Err(error) => {
            tracing::debug!(%error, %service, "protocol upgrade failed");
            return;
        }
    };
    let mut client = hyper_util::rt::TokioIo::new(client);
    if !leftover.is_empty() {
        if let Err(error) = client.write_all(&leftover).await {
            tracing::debug!(%error, %service, "upgraded connection ended with an error");
            return;
        }
    }
    if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(%error, %service, "upgraded connection ended with an error");
    }
}
