//! The client's cache layer (RFC 9110 and 9111): every 200 answer to a GET carries a strong
//! `ETag` and a `Cache-Control`, and a GET whose `If-None-Match` names the answer's current tag
//! gets `304 Not Modified` with no body.
//!
//! - The tag is a digest of the body (SHA-256, its first 128 bits in hex): the same bytes give
//!   the same tag on every replica of a service, and a write that changes what a read answers
//!   changes its tag, with nothing for a handler to remember.
//! - A handler says who may keep its answer by setting `Cache-Control` itself ([`public`] for
//!   reads anyone may see, as the catalog's products). An answer without one gets
//!   `private, no-cache`: a browser may keep it for its own user but revalidates it (a 304
//!   costs no body) before every use, and no shared cache (the gateway's, a CDN's) keeps it.
//!   So forgetting to mark an answer never shows one user's data to another.
//! - Only whole bodies of a known size up to [`MAX_TAGGED`] are tagged; a stream (the event
//!   sink's `/v1/stream`) or a larger body goes out as it is.
//!
//! The instance still does the work of a read before it can compare tags: the 304 saves the
//! network and the client's parsing, not the database. Saving the instance is the edge cache's
//! job (the gateway's).

use axum::body::Body;
use axum::extract::Request;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use http_body::Body as _;
use http_body_util::BodyExt;

/// The largest body that gets a tag (hashed in memory, where it already is).
pub const MAX_TAGGED: u64 = 1 << 20;

/// What an answer without a `Cache-Control` of its own gets: kept only by its user's client,
/// revalidated before each use.
pub const PRIVATE: &str = "private, no-cache";

/// A `Cache-Control` for an answer anyone may see: fresh for `max_age` seconds, then usable for
/// `stale` seconds more while the cache fetches a fresh one (`stale-while-revalidate`).
pub fn public(max_age: u32, stale: u32) -> HeaderValue {
    HeaderValue::try_from(format!(
        "public, max-age={max_age}, stale-while-revalidate={stale}"
    ))
    .unwrap_or(HeaderValue::from_static(PRIVATE))
}

/// The header that names what an answer shows, for the purges of a shared cache: the
/// gateway's edge cache drops every answer tagged with a key that a successful write's answer
/// names (`Surrogate-Key`, space-separated, Fastly's and Varnish's convention). The gateway
/// keeps it from its clients.
pub const SURROGATE_KEY: axum::http::HeaderName =
    axum::http::HeaderName::from_static("surrogate-key");

/// A `Surrogate-Key` header naming `keys` (a key with a space or a character not allowed in a
/// header is left out).
pub fn surrogate_keys<K: AsRef<str>>(
    keys: impl IntoIterator<Item = K>,
) -> (axum::http::HeaderName, HeaderValue) {
    let joined = keys
        .into_iter()
        .filter(|k| {
            let k = k.as_ref();
            !k.is_empty() && !k.contains(' ') && HeaderValue::from_str(k).is_ok()
        })
        .map(|k| k.as_ref().to_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let value = HeaderValue::from_str(&joined).unwrap_or(HeaderValue::from_static(""));
    (SURROGATE_KEY, value)
}

/// The middleware: tags GET answers and answers a matching `If-None-Match` with 304.
pub async fn revalidate(request: Request, next: Next) -> Response {
    if request.method() != Method::GET {
        return next.run(request).await;
    }
    let if_none_match = request.headers().get(IF_NONE_MATCH).cloned();
    let mut response = next.run(request).await;
    if response.status() != StatusCode::OK || !taggable(&response) {
        return response;
    }
    if !response.headers().contains_key(CACHE_CONTROL) {
        response
            .headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static(PRIVATE));
    }
    let (mut parts, body) = response.into_parts();
    let bytes = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        // The handler's body failed: so does the answer, as it would have without this layer.
        Err(error) => {
            tracing::warn!(%error, "an answer's body failed");
            return Response::builder()
                .status(StatusCode::INTERNAL_SERVER_ERROR)
                .body(Body::empty())
                .unwrap_or_default();
        }
    };
    let tag = tag_of(&bytes);
    let fresh = if_none_match.is_some_and(|wanted| matches(&wanted, &tag));
    parts.headers.insert(ETAG, tag);
    if fresh {
        parts.status = StatusCode::NOT_MODIFIED;
        drop_representation_headers(&mut parts.headers);
        return Response::from_parts(parts, Body::empty());
    }
    Response::from_parts(parts, Body::from(bytes))
}

/// A whole body of a known, small size that no one tagged before, and not a stream.
fn taggable(response: &Response) -> bool {
    let headers = response.headers();
    let stream = headers
        .get(CONTENT_TYPE)
        .is_some_and(|kind| kind.as_bytes().starts_with(b"text/event-stream"));
    let size = response.body().size_hint();
    !stream && !headers.contains_key(ETAG) && size.upper().is_some_and(|n| n <= MAX_TAGGED)
}

/// The strong tag of a body: `"` + the first 128 bits of its SHA-256 in hex + `"`.
pub fn tag_of(body: &[u8]) -> HeaderValue {
    let digest = ring::digest::digest(&ring::digest::SHA256, body);
    let mut tag = String::with_capacity(34);
    tag.push('"');
    for byte in &digest.as_ref()[..16] {
        tag.push(char::from(b"0123456789abcdef"[usize::from(byte >> 4)]));
        tag.push(char::from(b"0123456789abcdef"[usize::from(byte & 15)]));
    }
    tag.push('"');
    HeaderValue::try_from(tag).unwrap_or(HeaderValue::from_static("\"\""))
}

/// `If-None-Match` names `tag`: `*`, or one of its comma-separated tags, compared weakly (a
/// `W/` prefix ignored), as RFC 9110 13.1.2 has it for this header.
fn matches(wanted: &HeaderValue, tag: &HeaderValue) -> bool {
    let Ok(wanted) = wanted.to_str() else {
        return false;
    };
    let tag = tag.as_bytes();
    wanted
        .split(',')
        .map(str::trim)
        .any(|candidate| candidate == "*" || candidate.trim_start_matches("W/").as_bytes() == tag)
}

/// A 304 carries the headers a cache updates (ETag, Cache-Control, Vary, Date...), not the
/// ones that describe a body it does not have.
fn drop_representation_headers(headers: &mut HeaderMap) {
    for name in [
        CONTENT_TYPE,
        axum::http::header::CONTENT_LENGTH,
        axum::http::header::CONTENT_ENCODING,
    ] {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use axum::Router;
    use tower::ServiceExt;

    fn app() -> Router {
        Router::new()
            .route("/private", get(|| async { "mine" }))
            .route(
                "/public",
                get(|| async { ([(CACHE_CONTROL, public(5, 30))], "everyone's") }),
            )
            .route(
                "/stream",
                get(|| async {
                    let chunks =
                        futures_util::stream::iter([Ok::<_, std::io::Error>("data: 1\n\n")]);
                    (
                        [(CONTENT_TYPE, "text/event-stream")],
                        Body::from_stream(chunks),
                    )
                }),
            )
            .route("/missing", get(|| async { StatusCode::NOT_FOUND }))
            .layer(axum::middleware::from_fn(revalidate))
    }

    async fn get_with(path: &str, if_none_match: Option<&str>) -> Response {
        let mut request = Request::get(path);
        if let Some(tag) = if_none_match {
            request = request.header(IF_NONE_MATCH, tag);
        }
        app()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_matching_if_none_match_gets_304_without_a_body() {
        let first = get_with("/public", None).await;
        assert_eq!(first.status(), StatusCode::OK);
        let tag = first.headers()[ETAG].to_str().unwrap().to_string();
        assert_eq!(tag, tag_of(b"everyone's").to_str().unwrap());
        assert_eq!(
            first.headers()[CACHE_CONTROL],
            "public, max-age=5, stale-while-revalidate=30"
        );

        for header in [
            tag.clone(),
            format!("W/{tag}"),
            format!("\"x\", {tag}"),
            "*".into(),
        ] {
            let again = get_with("/public", Some(&header)).await;
            assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{header}");
            assert_eq!(again.headers()[ETAG], tag.as_str());
            assert!(again.headers().contains_key(CACHE_CONTROL));
            assert!(!again.headers().contains_key(CONTENT_TYPE));
            let body = again.into_body().collect().await.unwrap().to_bytes();
            assert!(body.is_empty());
        }
        let changed = get_with("/public", Some("\"something else\"")).await;
        assert_eq!(changed.status(), StatusCode::OK);
        let body = changed.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"everyone's");
    }

    #[tokio::test]
    async fn an_unmarked_answer_is_private_and_streams_and_errors_are_left_alone() {
        let private = get_with("/private", None).await;
        assert_eq!(private.headers()[CACHE_CONTROL], "private, no-cache");
        assert!(private.headers().contains_key(ETAG));

        let stream = get_with("/stream", None).await;
        assert!(!stream.headers().contains_key(ETAG));
        let body = stream.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"data: 1\n\n");

        let missing = get_with("/missing", Some("*")).await;
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        assert!(!missing.headers().contains_key(ETAG));
    }

    #[test]
    fn tags_differ_with_the_body_and_not_otherwise() {
        assert_eq!(tag_of(b"a"), tag_of(b"a"));
        assert_ne!(tag_of(b"a"), tag_of(b"b"));
        assert_eq!(tag_of(b"a").len(), 34);
    }
}
