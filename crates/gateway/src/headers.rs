//! Header handling on the way through: hop-by-hop headers (RFC 9110 section 7.6.1) are removed
//! in both directions, forwarding headers are added, and every request gets an id and a trace
//! context.

use std::net::SocketAddr;

use http::header::{HeaderName, CONNECTION, HOST, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderValue};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_SERVED_BY: HeaderName = HeaderName::from_static("x-served-by");
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Whether the `Connection` header lists `token` (case-insensitive).
pub fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Removes hop-by-hop headers, including any the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        &CONNECTION,
        &TE,
        &TRAILER,
        &TRANSFER_ENCODING,
        &UPGRADE,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
    ] {
        headers.remove(name);
    }
}

/// Adds `X-Forwarded-For` (appending the client), `-Proto` and `-Host`, and drops `Host` so the
/// upstream request carries the instance's own authority.
pub fn add_forwarding(headers: &mut HeaderMap, peer: SocketAddr, https: bool) {
    let client = peer.ip().to_string();
    let forwarded_for = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(existing) => format!("{existing}, {client}"),
        None => client,
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
    headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(if https { "https" } else { "http" }),
    );
    if let Some(host) = headers.remove(HOST) {
        headers.insert(X_FORWARDED_HOST.clone(), host);
    }
}

/// A client's `x-request-id` is kept if it is short and printable; otherwise `fallback` is used.
pub fn request_id(headers: &HeaderMap, fallback: impl FnOnce() -> String) -> HeaderValue {
    headers
        .get(&X_REQUEST_ID)
        .filter(|v| {
            let bytes = v.as_bytes();
            !bytes.is_empty() && bytes.len() <= 128 && bytes.iter().all(|b| b.is_ascii_graphic())
        })
        .cloned()
        .unwrap_or_else(|| {
            HeaderValue::from_str(&fallback()).unwrap_or(HeaderValue::from_static("-"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("x-kept"));
    }

    #[test]
    fn forwarding_appends_the_client() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        headers.insert(HOST, HeaderValue::from_static("api.example"));
        add_forwarding(&mut headers, "127.0.0.9:5000".parse().unwrap(), false);
        assert_eq!(headers["x-forwarded-for"], "10.0.0.1, 127.0.0.9");
        assert_eq!(headers["x-forwarded-host"], "api.example");
        assert!(!headers.contains_key(HOST));
    }

    #[test]
    fn request_ids_are_kept_only_when_sane() {
        let mut headers = HeaderMap::new();
        assert_eq!(request_id(&headers, || "new".into()), "new");
        headers.insert("x-request-id", HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&headers, || "new".into()), "abc-123");
        headers.insert("x-request-id", HeaderValue::from_static("has space"));
        assert_eq!(request_id(&headers, || "new".into()), "new");
    }
}
