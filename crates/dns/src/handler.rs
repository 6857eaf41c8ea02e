//! The glue between hickory's server and [`crate::answer`]: one question in, one response out.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use hickory_proto::op::{Header, MessageType, OpCode, ResponseCode};
use hickory_server::authority::MessageResponseBuilder;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use stratus_kit::model::Catalog;

use crate::answer;

pub struct Handler {
    pub view: Arc<ArcSwapOption<Catalog>>,
    /// The API's name, answered with the gateway's instances.
    pub gateway_name: String,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let builder = MessageResponseBuilder::from_message_request(request);
        let refuse = |code: ResponseCode| {
            let mut header = Header::response_from_request(request.header());
            header.set_response_code(code);
            header
        };
        if request.message_type() != MessageType::Query || request.op_code() != OpCode::Query {
            let response = builder.error_msg(request.header(), ResponseCode::NotImp);
            return send(&mut response_handle, response, refuse(ResponseCode::NotImp)).await;
        }
        let Ok(info) = request.request_info() else {
            let response = builder.error_msg(request.header(), ResponseCode::FormErr);
            return send(
                &mut response_handle,
                response,
                refuse(ResponseCode::FormErr),
            )
            .await;
        };
        let Some(catalog) = self.view.load_full() else {
            // No view of the registry yet: say "try again", not "no such name".
            let response = builder.error_msg(request.header(), ResponseCode::ServFail);
            return send(
                &mut response_handle,
                response,
                refuse(ResponseCode::ServFail),
            )
            .await;
        };
        let name = info.query.name().into();
        let found =
            answer::lookup_with(&catalog, &name, info.query.query_type(), &self.gateway_name);
        tracing::debug!(name = %name, kind = %info.query.query_type(), code = %found.code, answers = found.answers.len(), "query");

        let mut header = Header::response_from_request(request.header());
        header.set_authoritative(found.code != ResponseCode::Refused);
        header.set_recursion_available(false);
        header.set_response_code(found.code);
        let response = builder.build(
            header,
            found.answers.iter(),
            std::iter::empty(),
            std::iter::empty(),
            found.additionals.iter(),
        );
        send(&mut response_handle, response, header).await
    }
}

/// Sends `response`; if sending fails (the client went away) the failure is logged and reported
/// as SERVFAIL to hickory's bookkeeping.
async fn send<'a, R: ResponseHandler>(
    handle: &mut R,
    response: hickory_server::authority::MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a hickory_proto::rr::Record> + Send + 'a,
        impl Iterator<Item = &'a hickory_proto::rr::Record> + Send + 'a,
        impl Iterator<Item = &'a hickory_proto::rr::Record> + Send + 'a,
        impl Iterator<Item = &'a hickory_proto::rr::Record> + Send + 'a,
    >,
    header: Header,
) -> ResponseInfo {
    match handle.send_response(response).await {
        Ok(info) => info,
        Err(error) => {
            tracing::warn!(%error, "could not send a DNS response");
            let mut header = header;
            header.set_response_code(ResponseCode::ServFail);
            header.into()
        }
    }
}
