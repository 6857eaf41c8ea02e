//! HTTP/1.1 on the wire, the upstream side: writing a request, reading a response head, and
//! working out how the body that follows is framed (RFC 9112).
//!
//! Nothing here does I/O: the functions work on buffers, so `client.rs` decides when to read
//! and write, and the same task that serves the client's connection can read the instance's
//! answer inline. Every bound a misbehaving instance could push against is here too: the head's
//! size, its number of headers, a chunk-size line's length.

use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, HOST};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Version};

use crate::headers::Forwarding;

/// The largest response head read from an instance.
pub const MAX_HEAD: usize = 64 * 1024;
/// The most headers a response head may carry.
pub const MAX_HEADERS: usize = 128;
/// Most informational (1xx) responses taken before the final one.
pub const MAX_INFORMATIONAL: usize = 8;
/// A request body up to this size is copied behind the head, so head and body go out in one
/// write; a larger one is written on its own rather than copied.
pub const INLINE_BODY: usize = 16 * 1024;
/// The longest chunk-size line (size and extensions) a chunked body may have.
const MAX_CHUNK_LINE: usize = 4 * 1024;

/// What was wrong with an instance's answer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the connection closed before the response was complete")]
    Closed,
    #[error("the response head is over {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("the response head is malformed: {0}")]
    Malformed(httparse::Error),
    #[error("the response status {0} is not valid")]
    BadStatus(u16),
    #[error("a response header is not valid")]
    BadHeader,
    #[error("the response's Content-Length is invalid or conflicting")]
    BadContentLength,
    #[error("the response's chunked body is malformed")]
    BadChunk,
    #[error("the response's transfer coding is not supported (only chunked is)")]
    UnsupportedCoding,
    #[error("the instance sent over {MAX_INFORMATIONAL} informational (1xx) responses")]
    TooManyInformational,
    #[error("the instance sent nothing for {0:?} in the middle of the response body")]
    Stalled(std::time::Duration),
}

/// A request as the upstream client writes it, borrowed from where it already is: the proxy
/// sends the client's request (its headers already adjusted) to an instance, and again to
/// another on a retry, without copying the header map for each attempt.
#[derive(Clone, Copy)]
pub struct Outgoing<'a> {
    pub method: &'a Method,
    /// The target in origin form: path and query.
    pub target: &'a str,
    /// The `Host` to send, in place of any in `headers`.
    pub host: Option<&'a HeaderValue>,
    pub headers: &'a HeaderMap,
    /// The headers this hop adds, written after `headers` (any of theirs it replaces left out).
    pub forwarding: Option<&'a Forwarding<'a>>,
    pub body: &'a Bytes,
}

impl<'a> From<&'a Request<Bytes>> for Outgoing<'a> {
    fn from(request: &'a Request<Bytes>) -> Self {
        Self {
            method: request.method(),
            target: request.uri().path_and_query().map_or("/", |p| p.as_str()),
            host: None,
            headers: request.headers(),
            forwarding: None,
            body: request.body(),
        }
    }
}

/// Appends `request`'s head (and its body, when small) to `out`, and returns the body when it
/// is to be written separately.
///
/// The head is the request line, the `Host` if one is given, and the headers as given (they
/// are the proxy's, already stripped of hop-by-hop ones) less any `Content-Length`, which is
/// written from the body's actual length: for a non-empty body, or an empty one of a method
/// that carries a body.
pub fn encode_request(out: &mut Vec<u8>, request: &Outgoing<'_>) -> Option<Bytes> {
    let body = request.body;
    out.extend_from_slice(request.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(request.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if let Some(host) = request.host {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(host.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let forwarding = request.forwarding;
    for (name, value) in request.headers {
        if name == CONTENT_LENGTH
            || (name == HOST && request.host.is_some())
            || (forwarding.is_some() && Forwarding::replaces(name))
        {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(forwarding) = forwarding {
        forwarding.write(out);
    }
    let carries_body = matches!(*request.method, Method::POST | Method::PUT | Method::PATCH);
    if !body.is_empty() || carries_body {
        out.extend_from_slice(b"content-length: ");
        push_decimal(out, body.len() as u64);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if body.len() <= INLINE_BODY {
        out.extend_from_slice(body);
        None
    } else {
        Some(body.clone())
    }
}

fn push_decimal(out: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// A response head, with what its headers say about the body and the connection.
pub struct Head {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    content_length: Option<u64>,
    /// `Some(true)` when `Transfer-Encoding` is `chunked`; `Some(false)` for any other coding,
    /// which only a 101 may carry (anywhere else it is an error).
    transfer_encoding: Option<bool>,
    close: bool,
    keep_alive: bool,
}

/// How a response's body is delimited (RFC 9112 section 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body at all.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Everything until the instance closes the connection.
    Close,
}

impl Head {
    /// How the body of this response to a `method` request is delimited, in the RFC's order:
    /// HEAD, 1xx, 204 and 304 have none; then `Transfer-Encoding`; then `Content-Length`; then
    /// the connection's end.
    pub fn framing(&self, method: &Method) -> Framing {
        let status = self.status.as_u16();
        if *method == Method::HEAD || status < 200 || status == 204 || status == 304 {
            return Framing::Empty;
        }
        match (self.transfer_encoding, self.content_length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) => Framing::Close,
            (None, Some(0)) => Framing::Empty,
            (None, Some(length)) => Framing::Length(length),
            (None, None) => Framing::Close,
        }
    }

    /// Whether the instance keeps the connection open after this response: HTTP/1.1 unless it
    /// says `close`, HTTP/1.0 only if it says `keep-alive`. A response with both
    /// `Transfer-Encoding` and `Content-Length` is answered but not trusted with another.
    pub fn persistent(&self) -> bool {
        let open = match self.version {
            Version::HTTP_10 => self.keep_alive && !self.close,
            _ => !self.close,
        };
        open && !(self.transfer_encoding.is_some() && self.content_length.is_some())
    }
}

/// Where a header's name and value lie in the head.
#[derive(Clone, Copy, Default)]
struct Span {
    name: (u32, u32),
    value: (u32, u32),
}

/// Takes a complete response head off the front of `buf`, or returns `None` when more bytes
/// are needed. The header values share the head's bytes rather than being copied.
pub fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, Error> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        &mut slots,
    );
    let length = match parsed {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => return Err(Error::HeadTooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(error) => return Err(Error::Malformed(error)),
    };
    if length > MAX_HEAD {
        return Err(Error::HeadTooLarge);
    }
    let code = response.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| Error::BadStatus(code))?;
    let version = match response.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };

    // First pass, over the borrowed bytes: what the headers say about framing, and where each
    // one lies, so the second can share the head's bytes once it is split off the buffer.
    let base = buf.as_ptr() as usize;
    let offset = |part: &[u8]| {
        let start = (part.as_ptr() as usize - base) as u32;
        (start, start + part.len() as u32)
    };
    let mut spans = [Span::default(); MAX_HEADERS];
    let mut head = Head {
        status,
        version,
        headers: HeaderMap::new(),
        content_length: None,
        transfer_encoding: None,
        close: false,
        keep_alive: false,
    };
    // `Transfer-Encoding`, and a `Connection` that only says keep-alive or close, are read here
    // for framing and persistence but left out of the map: they are hop-by-hop, and the proxy
    // would only remove them again. (Not from a 101: the tunnel's answer keeps its headers.)
    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    let mut count = 0;
    for header in response.headers.iter() {
        let name = header.name.as_bytes();
        let mut keep = true;
        if name.eq_ignore_ascii_case(b"content-length") {
            let length = content_length(header.value)?;
            if head.content_length.is_some_and(|seen| seen != length) {
                return Err(Error::BadContentLength);
            }
            head.content_length = Some(length);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // Only `chunked` (as nginx): the coding is taken off here and the header dropped,
            // so any other coding (gzip) would reach the client undeclared.
            // (Two header lines would be chunked applied twice.)
            let chunked = header.value.trim_ascii().eq_ignore_ascii_case(b"chunked");
            if !switching && (!chunked || head.transfer_encoding.is_some()) {
                return Err(Error::UnsupportedCoding);
            }
            head.transfer_encoding = Some(chunked);
            keep = switching;
        } else if name.eq_ignore_ascii_case(b"connection") {
            let mut only_usual = true;
            for option in header.value.split(|b| *b == b',') {
                let option = option.trim_ascii();
                let close = option.eq_ignore_ascii_case(b"close");
                let keep_alive = option.eq_ignore_ascii_case(b"keep-alive");
                head.close |= close;
                head.keep_alive |= keep_alive;
                only_usual &= close || keep_alive || option.is_empty();
            }
            keep = switching || !only_usual;
        }
        if keep {
            spans[count] = Span {
                name: offset(name),
                value: offset(header.value),
            };
            count += 1;
        }
    }

    // With `Transfer-Encoding` the body's length is the chunks' (RFC 9112 6.3): a
    // `Content-Length` beside it is wrong, and passed on it would frame the client's response.
    let drop_length = head.transfer_encoding.is_some() && !switching;
    let bytes = buf.split_to(length).freeze();
    let mut headers = HeaderMap::with_capacity(count);
    for span in &spans[..count] {
        let (start, end) = (span.name.0 as usize, span.name.1 as usize);
        if drop_length && bytes[start..end].eq_ignore_ascii_case(b"content-length") {
            continue;
        }
        let name = HeaderName::from_bytes(&bytes[start..end]).map_err(|_| Error::BadHeader)?;
        let (start, end) = (span.value.0 as usize, span.value.1 as usize);
        let value = HeaderValue::from_maybe_shared(bytes.slice(start..end))
            .map_err(|_| Error::BadHeader)?;
        headers.append(name, value);
    }
    head.headers = headers;
    Ok(Some(head))
}

/// A `Content-Length` value: digits, or a list of identical ones (RFC 9110 section 8.6).
fn content_length(value: &[u8]) -> Result<u64, Error> {
    let mut length = None;
    for element in value.split(|b| *b == b',') {
        let digits = element.trim_ascii();
        if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
            return Err(Error::BadContentLength);
        }
        let parsed = digits
            .iter()
            .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        if length.is_some_and(|seen| seen != parsed) {
            return Err(Error::BadContentLength);
        }
        length = Some(parsed);
    }
    length.ok_or(Error::BadContentLength)
}

/// What the chunked decoder made of the bytes it had.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Data(Bytes),
    /// The body's last chunk and its trailers (which are read and dropped) are done.
    End,
    /// Nothing more to take until more bytes arrive.
    NeedMore,
}

/// Decodes a chunked body (RFC 9112 section 7.1) from a buffer that fills up as bytes arrive.
/// Chunk extensions are ignored; trailers are read and dropped.
#[derive(Debug, Default)]
pub struct ChunkedDecoder {
    state: ChunkState,
}

#[derive(Debug, Default, Clone, Copy)]
enum ChunkState {
    /// Expecting a chunk-size line.
    #[default]
    Size,
    /// Inside a chunk's data, this much left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one, this many bytes of them so far.
    Trailers(usize),
    Done,
}

impl ChunkedDecoder {
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, Error> {
        loop {
            match self.state {
                ChunkState::Size => {
                    let Some(line) = take_line(buf, MAX_CHUNK_LINE)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    let size = chunk_size(&line)?;
                    self.state = if size == 0 {
                        ChunkState::Trailers(0)
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let take = left.min(buf.len() as u64);
                    let data = buf.split_to(take as usize).freeze();
                    self.state = match left - take {
                        0 => ChunkState::DataEnd,
                        left => ChunkState::Data(left),
                    };
                    return Ok(Decoded::Data(data));
                }
                ChunkState::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(Error::BadChunk);
                    }
                    buf.advance(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers(seen) => {
                    let Some(line) = take_line(buf, MAX_HEAD.saturating_sub(seen))? else {
                        return Ok(Decoded::NeedMore);
                    };
                    if line.is_empty() {
                        self.state = ChunkState::Done;
                        return Ok(Decoded::End);
                    }
                    self.state = ChunkState::Trailers(seen + line.len() + 2);
                }
                ChunkState::Done => return Ok(Decoded::End),
            }
        }
    }
}

/// Takes one CRLF-terminated line (without its CRLF) off the front of `buf`, or `None` if it
/// is not all there yet; a line longer than `max` bytes, its CRLF counted, is an error (so a
/// caller adding up lines against a budget never goes past it).
fn take_line(buf: &mut BytesMut, max: usize) -> Result<Option<BytesMut>, Error> {
    let Some(newline) = buf.iter().position(|b| *b == b'\n') else {
        return if buf.len() >= max {
            Err(Error::BadChunk)
        } else {
            Ok(None)
        };
    };
    if newline == 0 || buf[newline - 1] != b'\r' || newline + 1 > max {
        return Err(Error::BadChunk);
    }
    let mut line = buf.split_to(newline + 1);
    line.truncate(newline - 1);
    Ok(Some(line))
}

/// A chunk-size line: hex digits, then optional whitespace and `;`-led extensions.
fn chunk_size(line: &[u8]) -> Result<u64, Error> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 {
        return Err(Error::BadChunk);
    }
    // RFC 9112 7.1.1: only spaces and tabs (BWS) before an extension.
    let blank = line[digits..]
        .iter()
        .take_while(|b| matches!(b, b' ' | b'\t'))
        .count();
    let rest = &line[digits + blank..];
    if !(rest.is_empty() || rest[0] == b';') {
        return Err(Error::BadChunk);
    }
    let size = line[..digits].iter().fold(0u64, |n, d| {
        let digit = (*d as char).to_digit(16).unwrap_or(0);
        (n << 4) | u64::from(digit)
    });
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &[u8]) -> Result<Option<Head>, Error> {
        parse_head(&mut BytesMut::from(text))
    }

    #[test]
    fn a_head_is_parsed_and_its_framing_known() {
        let mut buf =
            BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello"[..]);
        let head = parse_head(&mut buf).unwrap().unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(head.headers["x-a"], "b");
        assert_eq!(head.framing(&Method::GET), Framing::Length(5));
        assert_eq!(head.framing(&Method::HEAD), Framing::Empty);
        assert!(head.persistent());
        assert_eq!(&buf[..], b"hello");
    }

    #[test]
    fn framing_follows_rfc_9112_order() {
        let head = |text: &[u8]| parse(text).unwrap().unwrap();
        let chunked =
            head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n");
        assert_eq!(chunked.framing(&Method::GET), Framing::Chunked);
        assert!(!chunked.persistent(), "TE and CL together: not reused");
        assert!(
            chunked.headers.get(CONTENT_LENGTH).is_none(),
            "the Content-Length beside chunked is not passed on"
        );
        // Codings other than chunked would reach the client undeclared once the header is
        // dropped: refused, as nginx does.
        for coding in [
            "gzip",
            "gzip, chunked",
            "chunked, chunked",
            "identity",
            "chunked\r\nTransfer-Encoding: chunked",
        ] {
            let text = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: {coding}\r\n\r\n");
            assert!(
                matches!(parse(text.as_bytes()), Err(Error::UnsupportedCoding)),
                "{coding}"
            );
        }
        let none = head(b"HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(none.framing(&Method::GET), Framing::Close);
        let no_content = head(b"HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n");
        assert_eq!(no_content.framing(&Method::GET), Framing::Empty);
        let same = head(b"HTTP/1.1 200 OK\r\nContent-Length: 4, 4\r\nContent-Length: 4\r\n\r\n");
        assert_eq!(same.framing(&Method::GET), Framing::Length(4));
        let old = head(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n");
        assert!(!old.persistent());
        let closing = head(b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\n\r\n");
        assert!(!closing.persistent());
    }

    #[test]
    fn usual_hop_by_hop_headers_stay_out_of_the_map_except_on_101() {
        let head = |text: &[u8]| parse(text).unwrap().unwrap();
        let usual = head(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\nX-A: b\r\n\r\n",
        );
        assert_eq!(usual.framing(&Method::GET), Framing::Chunked);
        assert_eq!(usual.headers.len(), 1);
        let naming =
            head(b"HTTP/1.1 200 OK\r\nConnection: close, x-private\r\nX-Private: 1\r\n\r\n");
        assert!(!naming.persistent());
        assert_eq!(naming.headers["connection"], "close, x-private");
        let switching =
            head(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
        assert_eq!(switching.headers["connection"], "Upgrade");
        assert_eq!(switching.headers["upgrade"], "websocket");
        let closing = head(b"HTTP/1.1 101 Switching Protocols\r\nConnection: close\r\n\r\n");
        assert_eq!(closing.headers["connection"], "close");
    }

    #[test]
    fn bad_heads_are_errors() {
        assert!(matches!(
            parse(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n"),
            Err(Error::BadContentLength)
        ));
        assert!(matches!(
            parse(b"HTTP/1.1 200 OK\r\nContent-Length: -4\r\n\r\n"),
            Err(Error::BadContentLength)
        ));
        assert!(matches!(
            parse(b"HTTP/1.1 2x0 OK\r\n\r\n"),
            Err(Error::Malformed(_))
        ));
        assert!(matches!(
            parse(b"SMTP ready\r\n\r\n"),
            Err(Error::Malformed(_))
        ));
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("x-{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(matches!(parse(&many), Err(Error::Malformed(_))));
        assert!(matches!(parse(b"HTTP/1.1 200 OK\r\nX-A: b"), Ok(None)));
    }

    /// The headers this hop sets replace the client's own, once each; everything else the
    /// client sent goes on; the instance's `Host` replaces the client's.
    #[test]
    fn forwarding_headers_replace_the_clients_own() {
        use crate::headers::{ClientConnection, Forwarding};
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("host", "api.example"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "spoofed.example"),
            ("x-forwarded-for", "10.0.0.1"),
            ("forwarded", "for=10.0.0.1"),
            ("x-request-id", "client-id"),
            ("traceparent", "client-trace"),
            ("accept", "text/plain"),
            ("content-length", "999"),
        ] {
            headers.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        let client = ClientConnection::new("127.0.0.9:5000".parse().unwrap(), false);
        let request_id = HeaderValue::from_static("id-1");
        let forwarding = Forwarding {
            client: &client,
            headers: &headers,
            host: headers.get(http::header::HOST),
            request_id: &request_id,
            traceparent: b"00-trace-01",
        };
        let instance = HeaderValue::from_static("10.1.1.1:9000");
        let body = Bytes::from_static(b"abc");
        let mut out = Vec::new();
        encode_request(
            &mut out,
            &Outgoing {
                method: &Method::POST,
                target: "/orders",
                host: Some(&instance),
                headers: &headers,
                forwarding: Some(&forwarding),
                body: &body,
            },
        );
        let text = String::from_utf8(out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let mut lines = head.lines();
        assert_eq!(lines.next(), Some("POST /orders HTTP/1.1"));
        let mut lines: Vec<&str> = lines.collect();
        lines.sort_unstable();
        assert_eq!(
            lines,
            [
                "accept: text/plain",
                "content-length: 3",
                "forwarded: for=10.0.0.1, for=127.0.0.9;proto=http;host=\"api.example\"",
                "host: 10.1.1.1:9000",
                "traceparent: 00-trace-01",
                "x-forwarded-for: 10.0.0.1, 127.0.0.9",
                "x-forwarded-host: api.example",
                "x-forwarded-proto: http",
                "x-request-id: id-1",
            ]
        );
        assert_eq!(body, "abc");
    }

    #[test]
    fn requests_are_written_with_their_own_content_length() {
        let mut request = Request::new(Bytes::from_static(b"abc"));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = "/items?x=1".parse().unwrap();
        request
            .headers_mut()
            .insert(http::header::HOST, HeaderValue::from_static("shop:80"));
        request
            .headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from_static("999"));
        let mut out = Vec::new();
        assert!(encode_request(&mut out, &(&request).into()).is_none());
        assert_eq!(
            out,
            b"POST /items?x=1 HTTP/1.1\r\nhost: shop:80\r\ncontent-length: 3\r\n\r\nabc"
        );

        let request = Request::new(Bytes::new());
        out.clear();
        encode_request(&mut out, &(&request).into());
        assert_eq!(out, b"GET / HTTP/1.1\r\n\r\n");

        let big = Request::new(Bytes::from(vec![b'x'; INLINE_BODY + 1]));
        out.clear();
        let separate = encode_request(&mut out, &(&big).into()).unwrap();
        assert_eq!(separate.len(), INLINE_BODY + 1);
        assert!(out.ends_with(b"content-length: 16385\r\n\r\n"));
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_pieces() {
        let wire = b"5;ext=1\r\nhello\r\n6 ; x\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n";
        for piece in [1, 2, 3, 7, wire.len()] {
            let mut decoder = ChunkedDecoder::default();
            let mut buf = BytesMut::new();
            let mut body = Vec::new();
            let mut ended = false;
            for part in wire.chunks(piece) {
                buf.extend_from_slice(part);
                loop {
                    match decoder.decode(&mut buf).unwrap() {
                        Decoded::Data(data) => body.extend_from_slice(&data),
                        Decoded::NeedMore => break,
                        Decoded::End => {
                            ended = true;
                            break;
                        }
                    }
                }
            }
            assert!(ended, "pieces of {piece}");
            assert_eq!(body, b"hello world", "pieces of {piece}");
            assert!(buf.is_empty());
        }
    }

    /// Trailers share the head's bound, CRLFs counted: a trailer line that ends past it is
    /// refused, so the count never passes the bound (where the budget left would wrap around
    /// in a release build, and an instance streaming bytes with no end of line could grow the
    /// buffer without limit).
    #[test]
    fn trailers_cannot_run_past_their_bound() {
        // A trailer line whose CRLF ends one byte past the bound.
        let mut wire = b"0\r\n".to_vec();
        wire.extend(std::iter::repeat_n(b'x', MAX_HEAD - 1));
        wire.extend_from_slice(b"\r\n");
        wire.extend(std::iter::repeat_n(b'y', 100));
        let mut buf = BytesMut::from(&wire[..]);
        let mut decoder = ChunkedDecoder::default();
        let outcome = loop {
            match decoder.decode(&mut buf) {
                Ok(Decoded::Data(_)) => continue,
                other => break other,
            }
        };
        assert!(outcome.is_err(), "{:?}", outcome.map(|_| ()));
        // One byte under the bound, the body still ends.
        let mut wire = b"0\r\n".to_vec();
        wire.extend(std::iter::repeat_n(b'x', MAX_HEAD - 5));
        wire.extend_from_slice(b"\r\n\r\n");
        let mut buf = BytesMut::from(&wire[..]);
        let mut decoder = ChunkedDecoder::default();
        assert!(matches!(decoder.decode(&mut buf), Ok(Decoded::End)));
    }

    #[test]
    fn bad_chunks_are_errors() {
        for wire in [
            &b"zz\r\n"[..],
            b"5\r\nhelloXX",
            b"5 x\r\n",
            // Only spaces and tabs may stand before an extension: not a bare CR or a form feed.
            b"5\r;a\r\n",
            b"5\x0c;a\r\n",
            b"5\n",
            b"ffffffffffffffff0\r\n",
        ] {
            let mut buf = BytesMut::from(wire);
            let mut decoder = ChunkedDecoder::default();
            let outcome = loop {
                match decoder.decode(&mut buf) {
                    Ok(Decoded::Data(_)) => continue,
                    other => break other,
                }
            };
            assert!(outcome.is_err(), "{:?}", String::from_utf8_lossy(wire));
        }
    }
}
