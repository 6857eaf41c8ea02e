//! One stored answer: its status, headers and body as the instance sent them, when it was
//! stored and how long it may be used, and what it varies on.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{AGE, CONTENT_LENGTH, ETAG, IF_NONE_MATCH};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::Full;

/// The header that tells a client which layer answered: `hit`, `stale` or `miss`.
pub static X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// How a stored answer may be used at a moment (RFC 9111 4.2 and RFC 5861).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Within its lifetime: served as it is.
    Fresh,
    /// Past it but within `stale-while-revalidate`: served while a fresh one is fetched.
    StaleWhileRevalidate,
    /// Usable only when the instance cannot answer (`stale-if-error`).
    StaleIfError,
    /// Not usable at all.
    Expired,
}

#[derive(Debug)]
pub struct Entry {
    pub status: StatusCode,
    /// The instance's headers, less those the gateway sets per answer (`Age`, `x-cache`) and
    /// the surrogate keys (for the cache only, never sent on).
    pub headers: HeaderMap,
    pub body: Bytes,
    pub stored: Instant,
    /// The age the answer already had when it arrived (the instance's own `Age`).
    pub age_at_arrival: Duration,
    pub fresh_for: Duration,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
    /// `must-revalidate`: never served stale, not even when the instance fails.
    pub must_revalidate: bool,
    /// The request headers the answer varies on (its `Vary`), with the values of the request
    /// that fetched it: another request is served it only with the same values.
    pub vary: Vec<(HeaderName, Option<HeaderValue>)>,
    /// Surrogate keys: the instance's names for what the answer shows, for purges.
    pub tags: Vec<Box<str>>,
    /// Marked `public` or `s-maxage`: it may answer a request with credentials (RFC 9111 3.5).
    pub public: bool,
}

impl Entry {
    pub fn age(&self, now: Instant) -> Duration {
        self.age_at_arrival + now.saturating_duration_since(self.stored)
    }

    pub fn freshness(&self, now: Instant) -> Freshness {
        let age = self.age(now);
        if age < self.fresh_for {
            Freshness::Fresh
        } else if self.must_revalidate {
            Freshness::Expired
        } else if age < self.fresh_for + self.stale_while_revalidate {
            Freshness::StaleWhileRevalidate
        } else if age < self.fresh_for + self.stale_if_error {
            Freshness::StaleIfError
        } else {
            Freshness::Expired
        }
    }

    /// Whether it may stand in for an instance that failed (RFC 5861 4).
    pub fn usable_on_error(&self, now: Instant) -> bool {
        !self.must_revalidate && self.age(now) < self.fresh_for + self.stale_if_error
    }

    /// How long the cache should hold it: as long as any use of it is allowed.
    pub fn keep_for(&self) -> Duration {
        let stale = if self.must_revalidate {
            Duration::ZERO
        } else {
            self.stale_while_revalidate.max(self.stale_if_error)
        };
        (self.fresh_for + stale).saturating_sub(self.age_at_arrival)
    }

    /// What it costs the cache: the body and the headers, roughly.
    pub fn weight(&self) -> u32 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 32)
            .sum();
        u32::try_from(self.body.len() + headers + 256).unwrap_or(u32::MAX)
    }

    /// Whether `request` asks for the same variant (RFC 9111 4.1).
    pub fn matches(&self, request: &HeaderMap) -> bool {
        self.vary
            .iter()
            .all(|(name, value)| request.get(name) == value.as_ref())
    }

    /// Whether the client already holds this answer: its `If-None-Match` names the stored
    /// `ETag` (weak comparison, RFC 9110 13.1.2) or is `*`.
    pub fn not_modified_for(&self, request: &HeaderMap) -> bool {
        let Some(etag) = self.headers.get(ETAG) else {
            return false;
        };
        let opaque = |tag: &[u8]| tag.strip_prefix(b"W/").unwrap_or(tag).to_vec();
        let ours = opaque(etag.as_bytes());
        request.get_all(IF_NONE_MATCH).iter().any(|value| {
            value.as_bytes().split(|b| *b == b',').any(|tag| {
                let tag = tag.trim_ascii();
                tag == b"*" || opaque(tag) == ours
            })
        })
    }

    /// The answer for a client: the stored one with its `Age` and `x-cache`, without a body
    /// for HEAD, or a 304 for a client that holds it already.
    pub fn respond(
        &self,
        now: Instant,
        how: &'static str,
        request: &HeaderMap,
        head: bool,
    ) -> Response<Full<Bytes>> {
        let not_modified = self.not_modified_for(request);
        let body = if head || not_modified {
            Bytes::new()
        } else {
            self.body.clone()
        };
        let mut response = Response::new(Full::new(body));
        if not_modified {
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            let headers = response.headers_mut();
            // RFC 9110 15.4.5: what a 200 would have said about caching, nothing about a body.
            for name in [
                http::header::CACHE_CONTROL,
                http::header::CONTENT_LOCATION,
                http::header::DATE,
                ETAG,
                http::header::EXPIRES,
                http::header::VARY,
            ] {
                for value in self.headers.get_all(&name) {
                    headers.append(name.clone(), value.clone());
                }
            }
        } else {
            *response.status_mut() = self.status;
            let headers = response.headers_mut();
            headers.clone_from(&self.headers);
            if head {
                // A HEAD answer says how long the GET's body is.
                headers.insert(CONTENT_LENGTH, HeaderValue::from(self.body.len()));
            }
        }
        let headers = response.headers_mut();
        headers.insert(AGE, HeaderValue::from(self.age(now).as_secs()));
        headers.insert(X_CACHE.clone(), HeaderValue::from_static(how));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(fresh: u64, swr: u64, sie: u64) -> Entry {
        let mut headers = HeaderMap::new();
        headers.insert(ETAG, HeaderValue::from_static("\"abc\""));
        headers.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=5"),
        );
        Entry {
            status: StatusCode::OK,
            headers,
            body: Bytes::from_static(b"hello"),
            stored: Instant::now(),
            age_at_arrival: Duration::ZERO,
            fresh_for: Duration::from_secs(fresh),
            stale_while_revalidate: Duration::from_secs(swr),
            stale_if_error: Duration::from_secs(sie),
            must_revalidate: false,
            vary: Vec::new(),
            tags: Vec::new(),
            public: true,
        }
    }

    #[test]
    fn freshness_follows_the_lifetime_then_the_stale_windows() {
        let e = entry(5, 30, 600);
        let at = |s| e.stored + Duration::from_secs(s);
        assert_eq!(e.freshness(at(0)), Freshness::Fresh);
        assert_eq!(e.freshness(at(6)), Freshness::StaleWhileRevalidate);
        assert_eq!(e.freshness(at(40)), Freshness::StaleIfError);
        assert!(e.usable_on_error(at(40)));
        assert_eq!(e.freshness(at(700)), Freshness::Expired);
        assert!(!e.usable_on_error(at(700)));
        assert_eq!(e.keep_for(), Duration::from_secs(605));
    }

    #[test]
    fn must_revalidate_is_never_served_stale() {
        let mut e = entry(5, 30, 600);
        e.must_revalidate = true;
        let later = e.stored + Duration::from_secs(6);
        assert_eq!(e.freshness(later), Freshness::Expired);
        assert!(!e.usable_on_error(later));
    }

    #[test]
    fn the_age_it_arrived_with_counts() {
        let mut e = entry(5, 0, 0);
        e.age_at_arrival = Duration::from_secs(5);
        assert_eq!(e.freshness(e.stored), Freshness::Expired);
    }

    #[test]
    fn a_variant_is_served_only_to_requests_with_the_same_values() {
        let mut e = entry(5, 0, 0);
        e.vary = vec![(
            http::header::ACCEPT_LANGUAGE,
            Some(HeaderValue::from_static("fr")),
        )];
        let mut request = HeaderMap::new();
        assert!(!e.matches(&request));
        request.insert(
            http::header::ACCEPT_LANGUAGE,
            HeaderValue::from_static("fr"),
        );
        assert!(e.matches(&request));
        request.insert(
            http::header::ACCEPT_LANGUAGE,
            HeaderValue::from_static("en"),
        );
        assert!(!e.matches(&request));
    }

    #[test]
    fn a_matching_if_none_match_gets_304_without_a_body() {
        let e = entry(5, 0, 0);
        let mut request = HeaderMap::new();
        request.insert(IF_NONE_MATCH, HeaderValue::from_static("\"x\", W/\"abc\""));
        let response = e.respond(e.stored, "hit", &request, false);
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(response.headers()[ETAG], "\"abc\"");
        assert_eq!(response.headers()[AGE], "0");
        request.insert(IF_NONE_MATCH, HeaderValue::from_static("\"other\""));
        let response = e.respond(e.stored, "hit", &request, false);
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[&X_CACHE], "hit");
    }

    #[test]
    fn head_gets_the_length_and_no_body() {
        use hyper::body::Body as _;
        let e = entry(5, 0, 0);
        let response = e.respond(e.stored, "hit", &HeaderMap::new(), true);
        assert_eq!(response.headers()[CONTENT_LENGTH], "5");
        assert_eq!(response.body().size_hint().exact(), Some(0));
    }
}
