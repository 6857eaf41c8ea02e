//! `Cache-Control` as the edge cache reads it (RFC 9111 5.2): the request's directives decide
//! whether a stored answer may be used, the response's whether and for how long it may be kept.
//!
//! Unknown directives are ignored, as the RFC asks; a directive given twice or with a value
//! that does not parse counts as the stricter reading (a `max-age` that is not a number makes
//! the answer stale at once, RFC 9111 4.2.1).

use std::time::Duration;

use http::header::{CACHE_CONTROL, PRAGMA};
use http::HeaderMap;

/// The directives of one message's `Cache-Control` headers (all of them, comma-joined).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directives {
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub max_age: Option<Duration>,
    pub s_maxage: Option<Duration>,
    pub stale_while_revalidate: Option<Duration>,
    pub stale_if_error: Option<Duration>,
}

impl Directives {
    pub fn of(headers: &HeaderMap) -> Self {
        let mut directives = Self::default();
        for value in headers.get_all(CACHE_CONTROL) {
            let Ok(text) = value.to_str() else {
                // Not text: nothing in it can be trusted, so nothing is kept.
                directives.no_store = true;
                continue;
            };
            for item in text.split(',') {
                directives.apply(item.trim());
            }
        }
        // HTTP/1.0's `Pragma: no-cache` on a request with no `Cache-Control` (RFC 9111 5.4).
        if !headers.contains_key(CACHE_CONTROL)
            && headers
                .get_all(PRAGMA)
                .iter()
                .any(|v| v.as_bytes().eq_ignore_ascii_case(b"no-cache"))
        {
            directives.no_cache = true;
        }
        directives
    }

    fn apply(&mut self, item: &str) {
        let (name, value) = match item.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
            None => (item, None),
        };
        let seconds = || {
            value
                .and_then(|v| v.parse::<u64>().ok())
                .map_or(Duration::ZERO, Duration::from_secs)
        };
        // The stricter of two readings of one directive: the shorter lifetime.
        let least = |old: Option<Duration>, new: Duration| Some(old.map_or(new, |o| o.min(new)));
        match name.to_ascii_lowercase().as_str() {
            "no-store" => self.no_store = true,
            // `no-cache="field"` limits what is stored; the edge cache keeps none of it then.
            "no-cache" => self.no_cache = true,
            "private" => self.private = true,
            "public" => self.public = true,
            "must-revalidate" | "proxy-revalidate" => self.must_revalidate = true,
            "max-age" => self.max_age = least(self.max_age, seconds()),
            "s-maxage" => self.s_maxage = least(self.s_maxage, seconds()),
            "stale-while-revalidate" => {
                self.stale_while_revalidate = least(self.stale_while_revalidate, seconds())
            }
            "stale-if-error" => self.stale_if_error = least(self.stale_if_error, seconds()),
            _ => {}
        }
    }

    /// How long a shared cache may serve the answer as fresh: `s-maxage`, else `max-age`
    /// (RFC 9111 4.2.1). No explicit lifetime: not kept (the edge cache uses no heuristics).
    pub fn shared_lifetime(&self) -> Option<Duration> {
        self.s_maxage.or(self.max_age)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn of(values: &[&str]) -> Directives {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(CACHE_CONTROL, HeaderValue::from_str(value).unwrap());
        }
        Directives::of(&headers)
    }

    #[test]
    fn reads_the_catalog_s_public_answers() {
        let d = of(&["public, max-age=5, stale-while-revalidate=30"]);
        assert!(d.public && !d.private && !d.no_store);
        assert_eq!(d.shared_lifetime(), Some(Duration::from_secs(5)));
        assert_eq!(d.stale_while_revalidate, Some(Duration::from_secs(30)));
    }

    #[test]
    fn s_maxage_wins_over_max_age_for_a_shared_cache() {
        let d = of(&["max-age=60", "s-maxage=10"]);
        assert_eq!(d.shared_lifetime(), Some(Duration::from_secs(10)));
    }

    #[test]
    fn the_stricter_reading_wins() {
        assert_eq!(
            of(&["max-age=60, max-age=5"]).max_age,
            Some(Duration::from_secs(5))
        );
        // A lifetime that is not a number is no lifetime at all: stale at once.
        assert_eq!(of(&["max-age=soon"]).max_age, Some(Duration::ZERO));
        assert_eq!(of(&["max-age=\"7\""]).max_age, Some(Duration::from_secs(7)));
    }

    #[test]
    fn names_are_case_insensitive_and_unknown_ones_ignored() {
        let d = of(&["PRIVATE, No-Store, immutable, x-custom=1"]);
        assert!(d.private && d.no_store);
        assert_eq!(d.shared_lifetime(), None);
    }

    #[test]
    fn pragma_no_cache_counts_only_without_cache_control() {
        let mut headers = HeaderMap::new();
        headers.insert(PRAGMA, HeaderValue::from_static("no-cache"));
        assert!(Directives::of(&headers).no_cache);
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("max-age=5"));
        assert!(!Directives::of(&headers).no_cache);
    }

    #[test]
    fn a_value_that_is_not_text_keeps_nothing() {
        let mut headers = HeaderMap::new();
        headers.insert(
            CACHE_CONTROL,
            HeaderValue::from_bytes(b"public, \xff").unwrap(),
        );
        assert!(Directives::of(&headers).no_store);
    }
}
