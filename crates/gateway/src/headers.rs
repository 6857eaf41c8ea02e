//! Header handling on the way through: hop-by-hop headers (RFC 9110 section 7.6.1) are removed
//! in both directions, forwarding headers are added, and every request gets an id and a trace
//! context.

use std::net::SocketAddr;

use http::header::GetAll;
use http::header::{HeaderName, CONNECTION, HOST, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderValue};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_SERVED_BY: HeaderName = HeaderName::from_static("x-served-by");
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
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

/// The hop-by-hop headers every message loses, whether or not `Connection` names them.
static HOP_BY_HOP: [&HeaderName; 7] = [
    &CONNECTION,
    &TE,
    &TRAILER,
    &TRANSFER_ENCODING,
    &UPGRADE,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
];

/// Whether an `Upgrade` value names WebSocket (the one protocol the gateway tunnels).
pub fn is_websocket(value: &HeaderValue) -> bool {
    value
        .as_bytes()
        .trim_ascii()
        .eq_ignore_ascii_case(b"websocket")
}

/// Removes hop-by-hop headers, including any the `Connection` header names.
///
/// Most messages carry none, or only `Connection`: one pass over the names (comparing standard
/// names is an integer compare) finds that out, where removing each of the seven by name would
/// hash seven times per message.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Which of the seven are present, as bits: removing only those saves a hash per absentee.
    let mut present = 0u8;
    for name in headers.keys() {
        if let Some(index) = HOP_BY_HOP.iter().position(|hop| *hop == name) {
            present |= 1 << index;
        }
    }
    if present == 0 {
        return;
    }
    // Options the `Connection` header lists name headers to drop as well. The usual ones
    // (`keep-alive`, `close`, `upgrade`, `te`) need no lookup: they are in the list below, or
    // name no header a message has; anything else is parsed and removed.
    let mut named: Option<Vec<HeaderName>> = None;
    for value in headers.get_all(CONNECTION) {
        let Ok(value) = value.to_str() else { continue };
        for option in value.split(',').map(str::trim) {
            if ["keep-alive", "close", "upgrade", "te", "trailer", ""]
                .iter()
                .any(|usual| option.eq_ignore_ascii_case(usual))
            {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(option.as_bytes()) {
                named.get_or_insert_with(Vec::new).push(name);
            }
        }
    }
    for name in named.into_iter().flatten() {
        headers.remove(name);
    }
    for (index, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << index) != 0 {
            headers.remove(*name);
        }
    }
}

/// Whether the client's `TE` header accepts trailers. `TE` is hop-by-hop and is removed with the
/// others; over HTTP/2 it may still say `trailers` (RFC 9113 section 8.2.2), which gRPC servers
/// expect, so the HTTP/2 upstream path puts that back when the client asked for it.
pub fn accepts_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
}

/// What the gateway knows of a client connection, worked out once when it is accepted rather
/// than on each of the requests that keep-alive brings over it.
#[derive(Clone)]
pub struct ClientConnection {
    pub peer: SocketAddr,
    pub https: bool,
    /// The client's address as a header value, for `X-Forwarded-For`.
    client_ip: HeaderValue,
    /// `for=...;proto=...`: this connection's element of `Forwarded` (RFC 7239), less the host.
    forwarded: String,
}

impl ClientConnection {
    pub fn new(peer: SocketAddr, https: bool) -> Self {
        let ip = peer.ip();
        let client_ip =
            HeaderValue::from_str(&ip.to_string()).unwrap_or(HeaderValue::from_static("unknown"));
        let proto = if https { "https" } else { "http" };
        // RFC 7239 section 6: an IPv6 address is bracketed, and then must be quoted.
        let forwarded = match ip {
            std::net::IpAddr::V4(v4) => format!("for={v4};proto={proto}"),
            std::net::IpAddr::V6(v6) => format!("for=\"[{v6}]\";proto={proto}"),
        };
        Self {
            peer,
            https,
            client_ip,
            forwarded,
        }
    }

    fn proto(&self) -> &'static str {
        if self.https {
            "https"
        } else {
            "http"
        }
    }

    /// Appends the `Forwarded` value: what earlier proxies said (every line of it), then this
    /// hop's element, `for=<client>;proto=<scheme>[;host="<host>"]`.
    fn forwarded_value(
        &self,
        out: &mut Vec<u8>,
        prior: GetAll<'_, HeaderValue>,
        host: Option<&HeaderValue>,
    ) {
        append_prior(out, prior);
        out.extend_from_slice(self.forwarded.as_bytes());
        let host = host
            .and_then(|h| h.to_str().ok())
            .filter(|h| !h.is_empty() && !h.contains(['"', '\\']));
        if let Some(host) = host {
            out.extend_from_slice(b";host=\"");
            out.extend_from_slice(host.as_bytes());
            out.push(b'"');
        }
    }

    /// Appends the `X-Forwarded-For` value: what earlier proxies said (every line of it), then
    /// the client.
    fn forwarded_for_value(&self, out: &mut Vec<u8>, prior: GetAll<'_, HeaderValue>) {
        append_prior(out, prior);
        out.extend_from_slice(self.client_ip.as_bytes());
    }
}

/// Appends each of a list header's values and a separator: a list split over several lines is
/// one list (RFC 9110 section 5.3).
fn append_prior(out: &mut Vec<u8>, prior: GetAll<'_, HeaderValue>) {
    for value in prior {
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b", ");
    }
}

/// The host the client asked for: its `Host` header, or the authority of its request target
/// (HTTP/2 has `:authority` and no `Host`).
pub fn client_host(parts: &http::request::Parts) -> Option<HeaderValue> {
    or_authority(parts.headers.get(HOST).cloned(), &parts.uri)
}

/// `host` (a request's `Host` header), else the authority of its target `uri`.
pub fn or_authority(host: Option<HeaderValue>, uri: &http::Uri) -> Option<HeaderValue> {
    host.or_else(|| {
        uri.authority()
            .and_then(|authority| HeaderValue::from_str(authority.as_str()).ok())
    })
}

/// A request's `Host` header, or what is wrong with its `Host` lines (RFC 9112 section 3.2): an
/// HTTP/1.1 request must carry exactly one, and no HTTP/1 request may carry two (a server is told
/// to answer 400: two hosts could route on one and be forwarded with the other). HTTP/1.0 did
/// not require it, so a 1.0 request without one passes. HTTP/2 names its authority in
/// `:authority` (RFC 9113 has rules of its own), so its first `Host`, if any, is taken as is.
///
/// The one lookup serves both the check and the forwarding headers (see [`or_authority`]).
pub fn host_line(
    version: http::Version,
    headers: &HeaderMap,
) -> Result<Option<&HeaderValue>, &'static str> {
    let mut hosts = headers.get_all(HOST).iter();
    let first = hosts.next();
    let required = match version {
        http::Version::HTTP_11 => true,
        http::Version::HTTP_10 | http::Version::HTTP_09 => false,
        _ => return Ok(first),
    };
    if hosts.next().is_some() {
        return Err("a request must not carry more than one Host header");
    }
    if first.is_none() && required {
        return Err("an HTTP/1.1 request must carry a Host header");
    }
    Ok(first)
}

/// Adds `Forwarded` and `X-Forwarded-For` (each appending this hop to what earlier proxies
/// said), `X-Forwarded-Proto` and `-Host` (`host` is what the client asked for, see
/// [`client_host`]; a client's own `X-Forwarded-Host` is never passed on), and drops `Host` so
/// the upstream request carries the instance's own authority. (The HTTP/2 path; HTTP/1.1
/// writes the same headers straight into the request head, see [`Forwarding`].)
pub fn add_forwarding(
    headers: &mut HeaderMap,
    client: &ClientConnection,
    host: Option<&HeaderValue>,
) {
    let mut value = Vec::with_capacity(64);
    client.forwarded_value(&mut value, headers.get_all(&FORWARDED), host);
    if let Ok(value) = HeaderValue::from_bytes(&value) {
        headers.insert(FORWARDED.clone(), value);
    }
    let forwarded_for = if headers.contains_key(&X_FORWARDED_FOR) {
        value.clear();
        client.forwarded_for_value(&mut value, headers.get_all(&X_FORWARDED_FOR));
        HeaderValue::from_bytes(&value).ok()
    } else {
        Some(client.client_ip.clone())
    };
    if let Some(value) = forwarded_for {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
    headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(client.proto()),
    );
    headers.remove(HOST);
    match host {
        Some(host) => headers.insert(X_FORWARDED_HOST.clone(), host.clone()),
        None => headers.remove(&X_FORWARDED_HOST),
    };
}

/// What this hop adds to an HTTP/1.1 request on its way to an instance, written as header lines
/// into the request head as it is encoded rather than inserted into the request's header map:
/// no value is allocated and the map does not grow. The headers are those of
/// [`add_forwarding`], with the request's id and trace context.
pub struct Forwarding<'a> {
    pub client: &'a ClientConnection,
    /// The request's headers as the client sent them (for earlier proxies' values).
    pub headers: &'a HeaderMap,
    /// What the client asked for (see [`client_host`]).
    pub host: Option<&'a HeaderValue>,
    pub request_id: &'a HeaderValue,
    pub traceparent: &'a [u8],
}

impl Forwarding<'_> {
    /// Whether a header of the request is one this hop writes itself (or, for `Host`, leaves
    /// to the instance's own), so the request's own is not copied.
    pub fn replaces(name: &HeaderName) -> bool {
        name == HOST
            || name == FORWARDED
            || name == X_FORWARDED_FOR
            || name == X_FORWARDED_PROTO
            || name == X_FORWARDED_HOST
            || name == X_REQUEST_ID
            || name == TRACEPARENT
    }

    /// Appends the header lines.
    pub fn write(&self, out: &mut Vec<u8>) {
        let host = self.host;
        out.extend_from_slice(b"forwarded: ");
        self.client
            .forwarded_value(out, self.headers.get_all(&FORWARDED), host);
        out.extend_from_slice(b"\r\nx-forwarded-for: ");
        self.client
            .forwarded_for_value(out, self.headers.get_all(&X_FORWARDED_FOR));
        out.extend_from_slice(b"\r\nx-forwarded-proto: ");
        out.extend_from_slice(self.client.proto().as_bytes());
        if let Some(host) = host {
            out.extend_from_slice(b"\r\nx-forwarded-host: ");
            out.extend_from_slice(host.as_bytes());
        }
        out.extend_from_slice(b"\r\nx-request-id: ");
        out.extend_from_slice(self.request_id.as_bytes());
        out.extend_from_slice(b"\r\ntraceparent: ");
        out.extend_from_slice(self.traceparent);
        out.extend_from_slice(b"\r\n");
    }
}

/// A client's `x-request-id` is kept if it is short and printable; otherwise `fallback` is used.
pub fn request_id(headers: &HeaderMap, fallback: impl FnOnce() -> HeaderValue) -> HeaderValue {
    headers
        .get(&X_REQUEST_ID)
        .filter(|v| {
            let bytes = v.as_bytes();
            !bytes.is_empty() && bytes.len() <= 128 && bytes.iter().all(|b| b.is_ascii_graphic())
        })
        .cloned()
        .unwrap_or_else(fallback)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_lines_follow_rfc_9112() {
        use http::Version;
        let none = HeaderMap::new();
        let mut one = HeaderMap::new();
        one.insert(HOST, HeaderValue::from_static("example.com"));
        let mut two = one.clone();
        two.append(HOST, HeaderValue::from_static("other.example"));
        let example = Some(&one[HOST]);
        assert!(host_line(Version::HTTP_11, &none).is_err());
        assert_eq!(host_line(Version::HTTP_11, &one), Ok(example));
        assert!(host_line(Version::HTTP_11, &two).is_err());
        assert_eq!(host_line(Version::HTTP_10, &none), Ok(None));
        assert_eq!(host_line(Version::HTTP_10, &one), Ok(example));
        assert!(host_line(Version::HTTP_10, &two).is_err());
        assert_eq!(host_line(Version::HTTP_2, &none), Ok(None));
        assert_eq!(host_line(Version::HTTP_2, &two), Ok(example));
    }

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
        headers.append("x-forwarded-for", HeaderValue::from_static("10.0.0.2"));
        headers.insert(
            "x-forwarded-host",
            HeaderValue::from_static("spoofed.example"),
        );
        let client = ClientConnection::new("127.0.0.9:5000".parse().unwrap(), false);
        let host = headers.get(HOST).cloned();
        add_forwarding(&mut headers, &client, host.as_ref());
        // Every line of an earlier proxy's list is kept.
        assert_eq!(headers["x-forwarded-for"], "10.0.0.1, 10.0.0.2, 127.0.0.9");
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert_eq!(headers["x-forwarded-host"], "api.example");
        assert_eq!(
            headers["forwarded"],
            "for=127.0.0.9;proto=http;host=\"api.example\""
        );
        assert!(!headers.contains_key(HOST));

        let mut headers = HeaderMap::new();
        headers.insert("forwarded", HeaderValue::from_static("for=10.0.0.1"));
        headers.insert(
            "x-forwarded-host",
            HeaderValue::from_static("spoofed.example"),
        );
        let v6 = ClientConnection::new("[2001:db8::1]:443".parse().unwrap(), true);
        add_forwarding(&mut headers, &v6, None);
        // No host asked for: a client's own X-Forwarded-Host is not passed on either.
        assert!(!headers.contains_key("x-forwarded-host"));
        assert_eq!(headers["x-forwarded-for"], "2001:db8::1");
        assert_eq!(headers["x-forwarded-proto"], "https");
        assert_eq!(
            headers["forwarded"],
            "for=10.0.0.1, for=\"[2001:db8::1]\";proto=https"
        );
    }

    /// HTTP/1.1 writes the forwarding headers into the request head; HTTP/2 puts them in the
    /// header map. Both must say the same.
    #[test]
    fn written_forwarding_headers_match_the_inserted_ones() {
        // What a client may send of its own: earlier proxies' lists (over two lines), a host,
        // and values of the headers this hop sets itself.
        let mut sent = HeaderMap::new();
        sent.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        sent.append("x-forwarded-for", HeaderValue::from_static("10.0.0.2"));
        sent.insert("forwarded", HeaderValue::from_static("for=10.0.0.1"));
        sent.insert(
            "x-forwarded-host",
            HeaderValue::from_static("spoofed.example"),
        );
        sent.insert("x-forwarded-proto", HeaderValue::from_static("gopher"));
        sent.insert(X_REQUEST_ID.clone(), HeaderValue::from_static("client-id"));
        sent.insert(
            TRACEPARENT.clone(),
            HeaderValue::from_static("client-trace"),
        );
        let mut without_host = sent.clone();
        sent.insert(HOST, HeaderValue::from_static("api.example:8080"));
        without_host.remove(HOST);
        for client in [
            ClientConnection::new("127.0.0.9:5000".parse().unwrap(), false),
            ClientConnection::new("[2001:db8::1]:443".parse().unwrap(), true),
        ] {
            for headers in [sent.clone(), without_host.clone(), HeaderMap::new()] {
                let request_id = HeaderValue::from_static("id-1");
                let host = headers.get(HOST).cloned();
                let mut written = Vec::new();
                Forwarding {
                    client: &client,
                    headers: &headers,
                    host: host.as_ref(),
                    request_id: &request_id,
                    traceparent: b"00-abc-def-01",
                }
                .write(&mut written);
                let mut inserted = headers.clone();
                add_forwarding(&mut inserted, &client, host.as_ref());
                inserted.insert(X_REQUEST_ID.clone(), request_id.clone());
                inserted.insert(
                    TRACEPARENT.clone(),
                    HeaderValue::from_static("00-abc-def-01"),
                );
                let mut lines: Vec<String> = String::from_utf8(written)
                    .unwrap()
                    .lines()
                    .map(str::to_owned)
                    .collect();
                lines.sort();
                let mut expected: Vec<String> = inserted
                    .iter()
                    .map(|(name, value)| format!("{name}: {}", value.to_str().unwrap()))
                    .collect();
                expected.sort();
                assert_eq!(lines, expected);
            }
        }
    }

    #[test]
    fn leaves_end_to_end_headers_alone() {
        let mut headers = HeaderMap::new();
        headers.insert("x-kept", HeaderValue::from_static("1"));
        headers.insert(HOST, HeaderValue::from_static("api.example"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 2);
        headers.insert(TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 2);
    }

    #[test]
    fn te_trailers_is_recognised() {
        let mut headers = HeaderMap::new();
        assert!(!accepts_trailers(&headers));
        headers.insert(TE, HeaderValue::from_static("gzip, Trailers"));
        assert!(accepts_trailers(&headers));
        headers.insert(TE, HeaderValue::from_static("gzip;q=0.5"));
        assert!(!accepts_trailers(&headers));
    }

    #[test]
    fn request_ids_are_kept_only_when_sane() {
        let mut headers = HeaderMap::new();
        let new = || HeaderValue::from_static("new");
        assert_eq!(request_id(&headers, new), "new");
        headers.insert("x-request-id", HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&headers, new), "abc-123");
        headers.insert("x-request-id", HeaderValue::from_static("has space"));
        assert_eq!(request_id(&headers, new), "new");
    }
}
