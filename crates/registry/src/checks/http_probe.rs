//! The plaintext HTTP probe: `GET <path>` over HTTP/1.1 on a connection kept per instance.
//!
//! At 10,000 checked instances the registry sends 20,000 probes a second, and a general HTTP
//! client's per-request work (a URL string parsed, a request builder, a client handle cloned,
//! the pool's bookkeeping) was most of what a probe cost. A health probe needs none of that:
//! the request bytes are the same every time, so they are encoded once per registration
//! ([`HttpTarget::new`]), written in one system call on a kept keep-alive connection, and only
//! the answer's head is parsed (its status decides; its framing says whether the connection can
//! be kept for the next probe).
//!
//! A kept connection the instance has closed meanwhile (an idle timeout, a restart) fails on
//! its first read or write; the probe then tries once more on a fresh connection within the
//! same timeout, so a closed idle connection never fails a healthy instance, while a dead one
//! still fails (its fresh connect is refused).

use std::io;
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The most of an answer's head read; a health endpoint that sends more is not healthy.
const MAX_HEAD: usize = 16 * 1024;
/// Bodies up to this long are read to their end so the connection can be kept; a longer one
/// closes the connection after its head (the status still decides).
const MAX_KEPT_BODY: usize = 64 * 1024;
const MAX_HEADERS: usize = 64;

/// One instance's HTTP check: its request, encoded once, and its kept connection.
pub struct HttpTarget {
    request: Box<[u8]>,
    /// Taken for the duration of a probe; one probe per instance is out at a time (the
    /// scheduler's `probing` flag), so this lock is never contended.
    kept: Mutex<Option<Connection>>,
}

impl std::fmt::Debug for HttpTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTarget")
            .field("request", &String::from_utf8_lossy(&self.request))
            .finish_non_exhaustive()
    }
}

struct Connection {
    stream: TcpStream,
    /// Read buffer, reused from probe to probe.
    buf: Vec<u8>,
}

/// What an instance answered.
struct Answer {
    code: u16,
    /// The reason phrase, copied only when the probe fails (for the log).
    reason: Option<String>,
}

impl HttpTarget {
    /// `authority` (`host:port`) is the `Host`; `path` was validated as visible ASCII.
    pub fn new(authority: &str, path: &str) -> Self {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: stratus-registry-check\r\n\
             Accept: */*\r\nConnection: keep-alive\r\n\r\n"
        );
        Self {
            request: request.into_bytes().into_boxed_slice(),
            kept: Mutex::new(None),
        }
    }

    /// Probes `authority`: `Ok` on a 2xx answer within `timeout`, else why not (naming the URL
    /// as the general client's failures did).
    pub async fn probe(
        &self,
        authority: &str,
        path: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        let kept = self.kept.lock().ok().and_then(|mut kept| kept.take());
        match tokio::time::timeout(timeout, self.exchange(kept, authority)).await {
            Ok(Ok((answer, connection))) => {
                if let (Some(connection), Ok(mut kept)) = (connection, self.kept.lock()) {
                    *kept = Some(connection);
                }
                if (200..300).contains(&answer.code) {
                    Ok(())
                } else {
                    let reason = answer.reason.unwrap_or_default();
                    Err(
                        format!("http://{authority}{path} answered {} {reason}", answer.code)
                            .trim_end()
                            .to_string(),
                    )
                }
            }
            Ok(Err(error)) => Err(format!("http://{authority}{path}: {error}")),
            Err(_) => Err(format!("http://{authority}{path}: no answer in time")),
        }
    }

    /// One request and its answer: on the kept connection if there is one, else (or if that
    /// one turns out closed) on a fresh one. Returns the connection when it can be kept.
    async fn exchange(
        &self,
        kept: Option<Connection>,
        authority: &str,
    ) -> io::Result<(Answer, Option<Connection>)> {
        if let Some(connection) = kept {
            // Any failure here may just be an idle connection the instance closed; the fresh
            // connection below is the real test.
            if let Ok(done) = ask(connection, &self.request).await {
                return Ok(done);
            }
        }
        let stream = TcpStream::connect(authority).await?;
        stream.set_nodelay(true)?;
        let connection = Connection {
            stream,
            buf: Vec::with_capacity(1024),
        };
        ask(connection, &self.request).await
    }
}

/// Writes the request and reads the answer's head (and a short body, to keep the connection).
async fn ask(mut c: Connection, request: &[u8]) -> io::Result<(Answer, Option<Connection>)> {
    c.stream.write_all(request).await?;
    c.buf.clear();
    loop {
        if c.buf.capacity() - c.buf.len() < 512 {
            c.buf.reserve(1024);
        }
        if c.stream.read_buf(&mut c.buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before an answer",
            ));
        }
        let Some(head) = parse_head(&c.buf)? else {
            if c.buf.len() > MAX_HEAD {
                return Err(invalid("an answer head over 16 KiB"));
            }
            continue;
        };
        let Some(body) = head.body_len else {
            return Ok((head.answer, None));
        };
        let end = head.len + body;
        while c.buf.len() < end {
            c.buf.reserve(end - c.buf.len());
            if c.stream.read_buf(&mut c.buf).await? == 0 {
                // The status is known; only the connection is lost.
                return Ok((head.answer, None));
            }
        }
        // Anything past the body is not ours to read: do not reuse the connection.
        let keep = c.buf.len() == end;
        return Ok((head.answer, keep.then_some(c)));
    }
}

/// A parsed head.
struct Head {
    answer: Answer,
    /// Its length in bytes.
    len: usize,
    /// The body's length when the connection may be kept after reading it; `None`: close it.
    body_len: Option<usize>,
}

/// Parses an answer's head; `None` while it is incomplete.
fn parse_head(buf: &[u8]) -> io::Result<Option<Head>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(error) => return Err(invalid(&format!("not an HTTP answer ({error})"))),
    };
    let code = response.code.unwrap_or(0);
    let passed = (200..300).contains(&code);
    let reason = (!passed).then(|| response.reason.unwrap_or("").to_string());
    // HTTP/1.1 keeps the connection unless told otherwise; 1.0 closes it.
    let mut keep = response.version == Some(1);
    let mut content_length = None;
    for header in response.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            let value = std::str::from_utf8(header.value).ok();
            let parsed = value.and_then(|v| v.trim().parse::<usize>().ok());
            if parsed.is_none() || content_length.is_some() {
                keep = false;
            }
            content_length = parsed;
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            keep = false; // chunked: not worth decoding for a probe
        } else if header.name.eq_ignore_ascii_case("connection") {
            let value = header.value;
            if value
                .split(|b| *b == b',')
                .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"))
            {
                keep = false;
            }
        }
    }
    // An interim answer (1xx) fails the probe, and its final answer would still be on the
    // way: never keep that connection.
    if (100..200).contains(&code) {
        keep = false;
    }
    // No body by definition (RFC 9112 6.3); otherwise a length is needed to find the end.
    let bodiless = code == 204 || code == 304;
    let body_len = match (bodiless, content_length) {
        (true, _) => Some(0),
        (false, Some(n)) if n <= MAX_KEPT_BODY => Some(n),
        _ => None,
    };
    Ok(Some(Head {
        answer: Answer { code, reason },
        len,
        body_len: body_len.filter(|_| keep),
    }))
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    const TIMEOUT: Duration = Duration::from_millis(300);

    /// A loopback server answering each request it reads with `answer`, counting the
    /// connections it accepted; `close_after_one` closes each connection after its first answer.
    async fn server(answer: &'static [u8], close_after_one: bool) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    loop {
                        let Ok(n) = stream.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        request.extend_from_slice(&buf[..n]);
                        if !request.windows(4).any(|w| w == b"\r\n\r\n") {
                            continue;
                        }
                        request.clear();
                        if stream.write_all(answer).await.is_err() || close_after_one {
                            return;
                        }
                    }
                });
            }
        });
        (authority, accepted)
    }

    #[tokio::test]
    async fn a_2xx_passes_and_keeps_its_connection() {
        let (authority, accepted) =
            server(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n", false).await;
        let target = HttpTarget::new(&authority, "/healthz");
        for _ in 0..3 {
            assert_eq!(target.probe(&authority, "/healthz", TIMEOUT).await, Ok(()));
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "one connection for every probe"
        );
        let (authority, _) = server(b"HTTP/1.1 204 No Content\r\n\r\n", false).await;
        let target = HttpTarget::new(&authority, "/");
        assert_eq!(target.probe(&authority, "/", TIMEOUT).await, Ok(()));
    }

    #[tokio::test]
    async fn a_503_fails_with_its_status() {
        let (authority, _) = server(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
            false,
        )
        .await;
        let target = HttpTarget::new(&authority, "/healthz");
        let error = target
            .probe(&authority, "/healthz", TIMEOUT)
            .await
            .unwrap_err();
        assert_eq!(
            error,
            format!("http://{authority}/healthz answered 503 Service Unavailable")
        );
    }

    #[tokio::test]
    async fn garbage_fails() {
        let (authority, _) = server(b"SSH-2.0-OpenSSH_9.6\r\n\r\n", false).await;
        let target = HttpTarget::new(&authority, "/healthz");
        let error = target
            .probe(&authority, "/healthz", TIMEOUT)
            .await
            .unwrap_err();
        assert!(error.contains("not an HTTP answer"), "{error}");
    }

    #[tokio::test]
    async fn silence_times_out() {
        // Accepts (the kernel does, from its backlog) but never answers.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority = listener.local_addr().unwrap().to_string();
        let target = HttpTarget::new(&authority, "/healthz");
        let started = std::time::Instant::now();
        let error = target
            .probe(&authority, "/healthz", Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(error.ends_with("no answer in time"), "{error}");
        assert!(started.elapsed() < Duration::from_secs(1));
        drop(listener);
    }

    #[tokio::test]
    async fn refused_fails() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority = listener.local_addr().unwrap().to_string();
        drop(listener);
        let target = HttpTarget::new(&authority, "/healthz");
        let error = target
            .probe(&authority, "/healthz", TIMEOUT)
            .await
            .unwrap_err();
        assert!(
            error.starts_with(&format!("http://{authority}/healthz: ")),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_kept_connection_closed_by_the_instance_is_replaced() {
        let (authority, accepted) =
            server(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", true).await;
        let target = HttpTarget::new(&authority, "/healthz");
        for _ in 0..3 {
            assert_eq!(target.probe(&authority, "/healthz", TIMEOUT).await, Ok(()));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        // An answer that says it closes is not kept either.
        let (authority, accepted) = server(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
            false,
        )
        .await;
        let target = HttpTarget::new(&authority, "/healthz");
        for _ in 0..2 {
            assert_eq!(target.probe(&authority, "/healthz", TIMEOUT).await, Ok(()));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn heads_parse() {
        let head = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((head.answer.code, head.body_len), (200, Some(5)));
        assert!(head.answer.reason.is_none(), "nothing copied for a pass");
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Le")
            .unwrap()
            .is_none());
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(parse_head(chunked).unwrap().unwrap().body_len, None);
        let old = b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(parse_head(old).unwrap().unwrap().body_len, None);
        let interim = b"HTTP/1.1 100 Continue\r\n\r\n";
        assert_eq!(parse_head(interim).unwrap().unwrap().body_len, None);
        assert!(parse_head(b"hello\r\n\r\n").is_err());
    }
}
