//! gRPC at the edge: recognising a gRPC call, and answering one that the gateway cannot forward
//! in the shape gRPC clients understand.
//!
//! gRPC runs over HTTP/2 and reports how a call ended in the `grpc-status` and `grpc-message`
//! trailers; its clients take any HTTP status but 200 as a transport failure and report a vague
//! code for it. So where an HTTP client gets a problem+json 503 or 504, a gRPC client gets
//! HTTP 200 in the "trailers-only" form: a single HEADERS frame that ends the stream and carries
//! `grpc-status` (14 UNAVAILABLE, 4 DEADLINE_EXCEEDED, ...) and `grpc-message`, which is what a
//! gRPC server itself sends for a call that fails before it produces a message.

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use stratus_kit::Problem;

pub static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
pub static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// gRPC status codes the gateway answers with (grpc/doc/statuscodes.md).
pub mod code {
    pub const INVALID_ARGUMENT: u32 = 3;
    pub const DEADLINE_EXCEEDED: u32 = 4;
    pub const PERMISSION_DENIED: u32 = 7;
    pub const RESOURCE_EXHAUSTED: u32 = 8;
    pub const UNIMPLEMENTED: u32 = 12;
    pub const INTERNAL: u32 = 13;
    pub const UNAVAILABLE: u32 = 14;
    pub const UNAUTHENTICATED: u32 = 16;
    pub const UNKNOWN: u32 = 2;
}

/// Whether the request is a gRPC call: `content-type: application/grpc`, alone or with a
/// `+proto`/`+json` suffix or parameters. gRPC-Web (`application/grpc-web...`) is not: it is
/// made for HTTP/1.1 and its servers speak it over whatever the route says.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(CONTENT_TYPE).is_some_and(|value| {
        let value = value.as_bytes();
        value.len() >= 16
            && value[..16].eq_ignore_ascii_case(b"application/grpc")
            && matches!(value.get(16), None | Some(b'+' | b';'))
    })
}

/// The gRPC status for a refusal the gateway made itself, from its HTTP status. Mostly the
/// mapping gRPC documents for HTTP errors (grpc/doc/http-grpc-status-mapping.md), with the
/// gateway's knowledge of what went wrong where it knows better: a 504 is its deadline passing,
/// a 429 or 413 a limit.
pub fn status_for(http: StatusCode) -> u32 {
    match http.as_u16() {
        400 => code::INVALID_ARGUMENT,
        401 => code::UNAUTHENTICATED,
        403 => code::PERMISSION_DENIED,
        404 | 405 => code::UNIMPLEMENTED,
        413 | 429 => code::RESOURCE_EXHAUSTED,
        502 | 503 => code::UNAVAILABLE,
        504 => code::DEADLINE_EXCEEDED,
        500..=599 => code::INTERNAL,
        _ => code::UNKNOWN,
    }
}

/// A trailers-only gRPC answer for `problem`: HTTP 200 and an empty body, so the headers end
/// the stream and `grpc-status` / `grpc-message` in them are the call's trailers.
pub fn trailers_only(problem: &Problem) -> Response<Full<Bytes>> {
    let message = problem.detail.as_deref().unwrap_or(&problem.title);
    let mut response = Response::new(Full::new(Bytes::new()));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(
        GRPC_STATUS.clone(),
        HeaderValue::from(status_for(problem.status())),
    );
    if let Ok(value) = HeaderValue::from_str(&percent_encode(message)) {
        headers.insert(GRPC_MESSAGE.clone(), value);
    }
    response
}

/// `grpc-message` is percent-encoded: every byte outside printable ASCII, and `%` itself.
fn percent_encode(message: &str) -> String {
    let mut encoded = String::with_capacity(message.len());
    for &byte in message.as_bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_type(value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn recognises_grpc_but_not_grpc_web() {
        assert!(is_grpc(&with_type("application/grpc")));
        assert!(is_grpc(&with_type("application/grpc+proto")));
        assert!(is_grpc(&with_type("Application/GRPC;charset=utf-8")));
        assert!(!is_grpc(&with_type("application/grpc-web+proto")));
        assert!(!is_grpc(&with_type("application/json")));
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn a_refusal_becomes_trailers_only() {
        let response = trailers_only(&Problem::unavailable("no instance of echo 100%", 1));
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["grpc-status"], "14");
        assert_eq!(
            response.headers()["grpc-message"],
            "no instance of echo 100%25"
        );
        assert_eq!(response.headers()["content-type"], "application/grpc");
        let timeout = Problem::new(StatusCode::GATEWAY_TIMEOUT, "too slow, café");
        let response = trailers_only(&timeout);
        assert_eq!(response.headers()["grpc-status"], "4");
        assert_eq!(response.headers()["grpc-message"], "too slow, caf%C3%A9");
    }
}
