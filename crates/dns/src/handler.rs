//! The glue between hickory's server and [`crate::answer`]: one question in, one response out,
//! and (with the event sink on) one `server` record per query, so the topology shows
//! `clients -> dns`.

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwapOption;
use hickory_proto::op::{Header, MessageType, OpCode, ResponseCode};
use hickory_server::authority::MessageResponseBuilder;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use stratus_kit::events::{EventRecord, EventReporter};
use stratus_kit::model::Catalog;
use stratus_kit::trace::TraceContext;

use crate::answer;

pub struct Handler {
    pub view: Arc<ArcSwapOption<Catalog>>,
    /// The API's name, answered with the gateway's instances.
    pub gateway_name: String,
    /// Where each query is reported (`None` with `STRATUS_EVENTS=off`).
    pub reporter: Option<EventReporter>,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        let Some(reporter) = &self.reporter else {
            return self.answer(request, response_handle).await;
        };
        let started = Instant::now();
        let started_at = stratus_kit::now_rfc3339();
        let info = self.answer(request, response_handle).await;
        // DNS carries no trace context: each query is a trace of its own, from outside.
        let context = TraceContext::new_root();
        let kind = request
            .request_info()
            .map(|i| i.query.query_type().to_string())
            .unwrap_or_else(|_| "malformed".into());
        reporter.report(EventRecord {
            trace_id: context.trace_id_hex(),
            span_id: context.span_id_hex(),
            parent_span_id: None,
            service: reporter.service().to_string(),
            instance: reporter.instance().to_string(),
            kind: "server".into(),
            name: kind,
            method: None,
            status: 0,
            // NXDOMAIN and REFUSED are answers; SERVFAIL (no view of the registry) is a failure.
            ok: info.response_code() != ResponseCode::ServFail,
            started_at,
            duration_us: started.elapsed().as_micros() as u64,
            retries: None,
            cache: None,
            topic: None,
            breaker: None,
            peer: None,
        });
        info
    }
}

impl Handler {
    async fn answer<R: ResponseHandler>(
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
