//! The route table: which requests go to which service, and who may make them.
//!
//! Routes come from a TOML file (`[[routes]]` tables, the same file as `stratus.toml`) and are
//! matched in order; the first that fits the request wins. A route matches on its path (one of
//! `prefix`, exact `path`, or `regex`) and, when given, the `methods`, the `host` (exact or
//! `*.example.com`) and `headers` (exact values). A prefix matches whole path segments:
//! `/api/catalog` matches `/api/catalog` and `/api/catalog/x`, never `/api/catalogue`.
//!
//! Requests go to instances over HTTP/1.1, from a pool of keep-alive connections, unless the
//! route says `upstream_protocol = "h2c"`: then over HTTP/2 in cleartext (prior knowledge), one
//! multiplexed connection per instance, with bodies streamed both ways and trailers passed back.
//! gRPC calls (`content-type: application/grpc...` over HTTP/2) take that path whatever the
//! route says, since gRPC needs HTTP/2 and trailers; a gRPC call the gateway cannot forward is
//! answered in gRPC's own form (`grpc-status` 14 when no instance is there, 4 on a timeout).

use std::collections::BTreeMap;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::route::deploy::{Deployment, SplitSpec};
use crate::route::index::{self, PathKey, RouteIndex};
use crate::route::ratelimit::{RateLimitSpec, RateLimiter};
use crate::upstream::balance::{Algorithm, Balance, HashOn};
use serde::Deserialize;
use std::path::Path;

/// How the gateway talks to a route's instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 over pooled keep-alive connections; bodies up to STRATUS_MAX_BODY are read
    /// whole first, so a failed request can be retried elsewhere.
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge over cleartext: streamed bodies and trailers (gRPC).
    H2c,
}

/// Who must present a token on a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// No token is checked.
    None,
    /// A token is optional, but one that is present must be valid.
    Optional,
    /// A valid token is required.
    Required,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteSpec {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    prefix: Option<String>,
    /// An exact path.
    #[serde(default)]
    path: Option<String>,
    /// A regular expression the whole path must match.
    #[serde(default)]
    regex: Option<String>,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// Remove the prefix before forwarding (`/api/x/items` -> `/items`).
    #[serde(default)]
    strip_prefix: bool,
    #[serde(default)]
    rate_limit: Option<RateLimitSpec>,
    service: String,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    roles: Vec<String>,
    /// Alternatives to the roles: a caller with any of these permissions may pass too.
    #[serde(default)]
    permissions: Vec<String>,
    #[serde(default)]
    auth: Option<AuthMode>,
    #[serde(default)]
    balance: Algorithm,
    #[serde(default)]
    hash_on: Option<String>,
    /// Upstream timeout for this route, e.g. "2s" (default: STRATUS_UPSTREAM_TIMEOUT).
    #[serde(default)]
    timeout: Option<String>,
    /// How many times a failed request may be retried on another instance (default 1).
    #[serde(default = "default_retries")]
    retries: u32,
    /// How traffic is split between versions of the service (see `deploy.rs`).
    #[serde(default)]
    split: Option<SplitSpec>,
    /// `"http1"` (default) or `"h2c"`.
    #[serde(default)]
    upstream_protocol: UpstreamProtocol,
    /// The edge cache for this route's GET and HEAD answers (see `edge_cache`).
    #[serde(default)]
    cache: Option<crate::edge_cache::CacheSpec>,
}

fn default_retries() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
struct RouteFile {
    #[serde(default)]
    routes: Vec<RouteSpec>,
    #[serde(default)]
    tcp: Vec<TcpSpec>,
}

/// `[[tcp]]`: a plain TCP (layer 4) listener that balances whole connections across a service's
/// instances, without looking inside them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TcpSpec {
    listen: String,
    service: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpRoute {
    pub listen: std::net::SocketAddr,
    pub service: String,
}

/// How a route matches the request path.
#[derive(Debug, Clone)]
pub enum PathMatch {
    Prefix(String),
    Exact(String),
    Regex(regex::Regex),
}

impl PathMatch {
    fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Prefix(prefix) => match path.strip_prefix(prefix.as_str()) {
                Some(rest) => rest.is_empty() || rest.starts_with('/') || prefix.ends_with('/'),
                None => false,
            },
            PathMatch::Exact(exact) => path == exact,
            PathMatch::Regex(regex) => regex.is_match(path),
        }
    }

    /// How the route index files this match.
    fn key(&self) -> PathKey<'_> {
        match self {
            PathMatch::Prefix(prefix) => PathKey::Prefix(prefix),
            PathMatch::Exact(exact) => PathKey::Exact(exact),
            PathMatch::Regex(_) => PathKey::Any,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            PathMatch::Prefix(prefix) => format!("prefix {prefix}"),
            PathMatch::Exact(exact) => format!("path {exact}"),
            PathMatch::Regex(regex) => format!("regex {}", regex.as_str()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    /// `name` as event records carry it, encoded once.
    pub event_name: stratus_kit::event_wire::Encoded,
    pub path: PathMatch,
    /// Lower-case host, or `.example.com` for `*.example.com`.
    pub host: Option<String>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub strip_prefix: bool,
    pub rate_limit: Option<Arc<RateLimiter>>,
    pub service: String,
    pub methods: Vec<Method>,
    pub roles: Vec<String>,
    pub permissions: Vec<String>,
    pub auth: AuthMode,
    pub balance: Balance,
    pub timeout: Option<std::time::Duration>,
    pub retries: u32,
    pub retry_budget: Arc<RetryBudget>,
    pub metrics: RouteMetrics,
    /// The split between versions in force, shared with the reloaded tables that keep it.
    pub deployment: Arc<Deployment>,
    /// HTTP/2 (h2c) to the instances rather than HTTP/1.1.
    pub h2c: bool,
    /// The edge cache's settings for this route (None: answers are not kept).
    pub cache: Option<crate::edge_cache::RouteCache>,
}

/// Retries may add at most 20% to a route's load (Finagle's retry budget), so when an upstream
/// is failing, retries cannot multiply the traffic that is hurting it. Every request deposits a
/// fifth of a retry; a retry withdraws a whole one; the balance is capped at ten.
#[derive(Debug)]
pub struct RetryBudget {
    milli_retries: std::sync::atomic::AtomicI64,
}

const BUDGET_CAP: i64 = 10_000;

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            milli_retries: std::sync::atomic::AtomicI64::new(BUDGET_CAP),
        }
    }
}

impl RetryBudget {
    pub fn deposit(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let _ = self.milli_retries.fetch_update(Relaxed, Relaxed, |b| {
            (b < BUDGET_CAP).then(|| (b + 200).min(BUDGET_CAP))
        });
    }

    pub fn withdraw(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        self.milli_retries
            .fetch_update(Relaxed, Relaxed, |b| (b >= 1000).then_some(b - 1000))
            .is_ok()
    }
}

/// A route's metric handles, registered once when the table is loaded, so the request path
/// only bumps atomics instead of building label sets and looking them up.
///
/// A handle is bound to the recorder there is when it is made, for good: made before
/// `stratus_kit::metrics::install()` it counts into nothing, and `/metrics` never shows the
/// route. So making one without the recorder installed is a bug, and debug builds (every test)
/// stop on it.
#[derive(Clone)]
pub struct RouteMetrics {
    /// Responses by status class: 1xx, 2xx, 3xx, 4xx, 5xx.
    by_class: [metrics::Counter; 5],
    duration: metrics::Histogram,
    pub retries: metrics::Counter,
    pub upstream_failures: metrics::Counter,
}

impl RouteMetrics {
    fn new(route: &str, service: &str) -> Self {
        debug_assert!(
            stratus_kit::metrics::installed(),
            "route {route}: metric handles made before stratus_kit::metrics::install() never reach /metrics"
        );
        let class = |c: &'static str| metrics::counter!("gateway_requests_total", "route" => route.to_string(), "class" => c);
        Self {
            by_class: [
                class("1xx"),
                class("2xx"),
                class("3xx"),
                class("4xx"),
                class("5xx"),
            ],
            duration: metrics::histogram!("gateway_request_duration_seconds", "route" => route.to_string()),
            retries: metrics::counter!("gateway_retries_total", "service" => service.to_string()),
            upstream_failures: metrics::counter!("gateway_upstream_failures_total", "service" => service.to_string()),
        }
    }

    pub fn record(&self, status: u16, seconds: f64) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.by_class[class].increment(1);
        self.duration.record(seconds);
    }
}

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RouteMetrics")
    }
}

impl Route {
    fn matches(&self, request: &RequestView<'_>) -> bool {
        self.allows(request.method) && self.matches_all_but_method(request)
    }

    fn allows(&self, method: &Method) -> bool {
        self.methods.is_empty() || self.methods.contains(method)
    }

    fn matches_all_but_method(&self, request: &RequestView<'_>) -> bool {
        self.path.matches(request.path)
            && self
                .host
                .as_deref()
                .is_none_or(|host| match host.strip_prefix('.') {
                    Some(suffix) => request
                        .host
                        .is_some_and(|h| h.len() > suffix.len() + 1 && h.ends_with(host)),
                    None => request.host == Some(host),
                })
            && self
                .headers
                .iter()
                .all(|(name, value)| request.headers.get(name) == Some(value))
    }

    /// The path to send upstream: with the prefix removed when `strip_prefix` is set.
    pub fn upstream_path<'a>(&self, path_and_query: &'a str) -> std::borrow::Cow<'a, str> {
        match (&self.path, self.strip_prefix) {
            (PathMatch::Prefix(prefix), true) => {
                let rest = path_and_query
                    .strip_prefix(prefix.trim_end_matches('/'))
                    .unwrap_or(path_and_query);
                if rest.starts_with('/') {
                    rest.into()
                } else {
                    format!("/{rest}").into()
                }
            }
            _ => path_and_query.into(),
        }
    }
}

/// The parts of a request that routing looks at.
pub struct RequestView<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    /// Lower case, without the port.
    pub host: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    pub routes: Vec<Route>,
    /// Whether any route matches on the host (so the request path knows to look at it).
    pub matches_hosts: bool,
    /// Whether any route keeps answers in the edge cache (so writes know to purge).
    pub caches: bool,
    /// Layer-4 listeners; bound at start-up (a reload does not change them).
    pub tcp: Vec<TcpRoute>,
    /// The routes by what their paths can match, for tables too long to scan on every request
    /// (`None` up to [`index::LINEAR_UP_TO`] routes). Built with `routes`, which nothing
    /// reorders or extends afterwards.
    index: Option<RouteIndex>,
}

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("parsing the routes: {0}")]
    Parse(String),
    #[error("route {index} ({name}): {problem}")]
    Invalid {
        index: usize,
        name: String,
        problem: String,
    },
}

impl RouteTable {
    pub fn from_file(path: &Path) -> Result<Self, RouteError> {
        let text = std::fs::read_to_string(path).map_err(|source| RouteError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Self, RouteError> {
        let file: RouteFile = toml::from_str(text).map_err(|e| RouteError::Parse(e.to_string()))?;
        let mut routes = Vec::with_capacity(file.routes.len());
        for (index, spec) in file.routes.into_iter().enumerate() {
            let name = spec.name.clone().unwrap_or_else(|| {
                let rule = spec
                    .prefix
                    .as_ref()
                    .or(spec.path.as_ref())
                    .or(spec.regex.as_ref());
                format!("{} {}", spec.service, rule.map_or("", |r| r.as_str()))
            });
            let invalid = |problem: String| RouteError::Invalid {
                index,
                name: name.clone(),
                problem,
            };
            let path = match (&spec.prefix, &spec.path, &spec.regex) {
                (Some(prefix), None, None) if prefix.starts_with('/') => {
                    PathMatch::Prefix(prefix.clone())
                }
                (Some(prefix), None, None) => {
                    return Err(invalid(format!("prefix `{prefix}` must start with '/'")))
                }
                (None, Some(exact), None) if exact.starts_with('/') => {
                    PathMatch::Exact(exact.clone())
                }
                (None, Some(exact), None) => {
                    return Err(invalid(format!("path `{exact}` must start with '/'")))
                }
                (None, None, Some(pattern)) => {
                    let anchored = format!("^(?:{pattern})$");
                    PathMatch::Regex(
                        regex::Regex::new(&anchored)
                            .map_err(|e| invalid(format!("regex `{pattern}`: {e}")))?,
                    )
                }
                _ => return Err(invalid("give exactly one of prefix, path or regex".into())),
            };
            if spec.strip_prefix && !matches!(path, PathMatch::Prefix(_)) {
                return Err(invalid("strip_prefix needs a prefix".into()));
            }
            let host = spec.host.as_ref().map(|h| {
                let h = h.to_ascii_lowercase();
                h.strip_prefix('*').map(str::to_string).unwrap_or(h)
            });
            let headers = spec
                .headers
                .iter()
                .map(|(name, value)| {
                    let name = HeaderName::from_bytes(name.as_bytes())
                        .map_err(|_| invalid(format!("`{name}` is not a header name")))?;
                    let value = HeaderValue::from_str(value).map_err(|_| {
                        invalid(format!("the value of header `{name}` is not valid"))
                    })?;
                    Ok((name, value))
                })
                .collect::<Result<Vec<_>, RouteError>>()?;
            let rate_limit = match &spec.rate_limit {
                Some(limit) => Some(Arc::new(RateLimiter::new(limit).map_err(invalid)?)),
                None => None,
            };
            if spec.service.is_empty() {
                return Err(invalid("service must not be empty".into()));
            }
            let methods = spec
                .methods
                .iter()
                .map(|m| {
                    Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                        .map_err(|_| invalid(format!("`{m}` is not an HTTP method")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let auth =
                spec.auth
                    .unwrap_or(if spec.roles.is_empty() && spec.permissions.is_empty() {
                        AuthMode::Optional
                    } else {
                        AuthMode::Required
                    });
            if auth != AuthMode::Required && !(spec.roles.is_empty() && spec.permissions.is_empty())
            {
                return Err(invalid(
                    "a route with roles needs auth = \"required\"".into(),
                ));
            }
            let hash_on = match &spec.hash_on {
                Some(text) => HashOn::parse(text).map_err(invalid)?,
                None => HashOn::ClientIp,
            };
            if spec.hash_on.is_some() && spec.balance != Algorithm::ConsistentHash {
                return Err(invalid(
                    "hash_on only applies to balance = \"consistent_hash\"".into(),
                ));
            }
            let timeout = match &spec.timeout {
                Some(text) => Some(stratus_kit::duration::parse(text).map_err(invalid)?),
                None => None,
            };
            if spec.retries > 5 {
                return Err(invalid("retries may be at most 5".into()));
            }
            let deployment = Arc::new(
                Deployment::new(spec.split.clone()).map_err(|e| invalid(format!("split: {e}")))?,
            );
            let cache = match &spec.cache {
                Some(_) if spec.upstream_protocol == UpstreamProtocol::H2c => {
                    return Err(invalid(
                        "cache applies to HTTP/1.1 routes, not upstream_protocol = \"h2c\"".into(),
                    ));
                }
                Some(cache) => {
                    Some(crate::edge_cache::RouteCache::new(&name, cache).map_err(invalid)?)
                }
                None => None,
            };
            routes.push(Route {
                cache,
                h2c: spec.upstream_protocol == UpstreamProtocol::H2c,
                deployment,
                balance: Balance {
                    algorithm: spec.balance,
                    hash_on,
                },
                timeout,
                retries: spec.retries,
                retry_budget: Arc::new(RetryBudget::default()),
                metrics: RouteMetrics::new(&name, &spec.service),
                event_name: stratus_kit::event_wire::Encoded::text(&name),
                name,
                path,
                host,
                headers,
                strip_prefix: spec.strip_prefix,
                rate_limit,
                service: spec.service,
                methods,
                roles: spec.roles,
                permissions: spec.permissions,
                auth,
            });
        }
        let tcp = file
            .tcp
            .into_iter()
            .enumerate()
            .map(|(index, spec)| {
                let listen = spec.listen.parse().map_err(|_| RouteError::Invalid {
                    index,
                    name: format!("tcp {}", spec.listen),
                    problem: "listen must be an address like 127.0.0.1:9400".into(),
                })?;
                Ok(TcpRoute {
                    listen,
                    service: spec.service,
                })
            })
            .collect::<Result<Vec<_>, RouteError>>()?;
        let matches_hosts = routes.iter().any(|r| r.host.is_some());
        let caches = routes.iter().any(|r| r.cache.is_some());
        let index = (routes.len() > index::LINEAR_UP_TO)
            .then(|| RouteIndex::new(routes.iter().map(|r| r.path.key())));
        Ok(Self {
            routes,
            tcp,
            matches_hosts,
            caches,
            index,
        })
    }

    /// Whether some route that keeps answers in the edge cache matches `path` (whatever its
    /// methods, host or headers): a write there may have changed what is kept.
    pub fn caches_path(&self, path: &str) -> bool {
        self.caches
            && self
                .routes
                .iter()
                .any(|route| route.cache.is_some() && route.path.matches(path))
    }

    /// Keeps the deployments of `previous` for the routes whose name and file `split` did not
    /// change, so what the admin API or a rollback did survives an unrelated edit of the file.
    pub fn carry_over(&mut self, previous: &RouteTable) {
        for route in &mut self.routes {
            let kept = previous.routes.iter().find(|old| {
                old.name == route.name
                    && old.deployment.same_file_spec(route.deployment.file_spec())
            });
            if let Some(old) = kept {
                route.deployment = old.deployment.clone();
            }
        }
    }

    /// The route named `name`.
    pub fn named(&self, name: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.name == name)
    }

    /// The first route that fits, in file order.
    pub fn find(&self, request: &RequestView<'_>) -> Option<&Route> {
        match &self.index {
            None => self.routes.iter().find(|route| route.matches(request)),
            Some(index) => index
                .first(request.path, |position| {
                    self.routes
                        .get(position)
                        .is_some_and(|r| r.matches(request))
                })
                .and_then(|position| self.routes.get(position)),
        }
    }

    /// For a request no route took: the methods that routes matching it in every other respect
    /// accept (empty when none does, so the answer is 404 rather than 405). Off the hot path:
    /// only asked after [`RouteTable::find`] came back empty.
    pub fn allowed_methods(&self, request: &RequestView<'_>) -> Vec<Method> {
        let mut allowed: Vec<Method> = Vec::new();
        for route in self
            .routes
            .iter()
            .filter(|r| r.matches_all_but_method(request))
        {
            for method in &route.methods {
                if !allowed.contains(method) {
                    allowed.push(method.clone());
                }
            }
        }
        allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The route table as start-up makes it: after the process's recorder is installed.
    fn parse(text: &str) -> Result<RouteTable, RouteError> {
        stratus_kit::metrics::install();
        RouteTable::parse(text)
    }

    /// The index answers what trying every route in file order answers: random tables long
    /// enough to be indexed (prefixes with and without a trailing `/`, exact paths, regexes,
    /// routes for some methods or one host only, the same path twice) against random paths.
    #[test]
    fn the_index_finds_what_trying_every_route_finds() {
        let segments = ["a", "b", "api", "v1", "a.b", ""];
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let random_path = |next: &mut dyn FnMut(usize) -> usize| {
            let mut path = String::new();
            for _ in 0..1 + next(4) {
                path.push('/');
                path.push_str(segments[next(segments.len())]);
            }
            if next(4) == 0 {
                path.push('/');
            }
            path
        };
        let headers = HeaderMap::new();
        let mut indexed = 0;
        for _ in 0..300 {
            let count = index::LINEAR_UP_TO + 1 + next(40);
            let mut text = String::new();
            for i in 0..count {
                let path = random_path(&mut next);
                let matcher = match next(8) {
                    0 => format!("path = \"{path}\""),
                    1 => format!("regex = \"{path}(/x)?\""),
                    _ => format!("prefix = \"{path}\""),
                };
                let methods = if next(4) == 0 {
                    "methods = [\"POST\"]\n"
                } else {
                    ""
                };
                let host = if next(6) == 0 {
                    "host = \"shop.example\"\n"
                } else {
                    ""
                };
                text += &format!(
                    "[[routes]]\nname = \"r{i}\"\n{matcher}\nservice = \"s{i}\"\n{methods}{host}"
                );
            }
            let table = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
            indexed += usize::from(table.index.is_some());
            for _ in 0..200 {
                let path = random_path(&mut next);
                for method in [Method::GET, Method::POST] {
                    for host in [None, Some("shop.example")] {
                        let request = RequestView {
                            method: &method,
                            path: &path,
                            host,
                            headers: &headers,
                        };
                        let scanned = table.routes.iter().find(|r| r.matches(&request));
                        assert_eq!(
                            table.find(&request).map(|r| &r.name),
                            scanned.map(|r| &r.name),
                            "{method} {path} (host {host:?}) in\n{text}"
                        );
                    }
                }
            }
        }
        assert_eq!(
            indexed, 300,
            "every table here is long enough to be indexed"
        );
    }

    #[test]
    fn upstream_protocol_is_http1_unless_a_route_asks_for_h2c() {
        let table = parse(
            "[[routes]]\nprefix = \"/a\"\nservice = \"a\"\n\
             [[routes]]\nprefix = \"/b\"\nservice = \"b\"\nupstream_protocol = \"h2c\"\n",
        )
        .unwrap();
        assert!(!table.routes[0].h2c);
        assert!(table.routes[1].h2c);
        let refused =
            parse("[[routes]]\nprefix = \"/c\"\nservice = \"c\"\nupstream_protocol = \"h3\"\n")
                .unwrap_err()
                .to_string();
        assert!(
            refused.contains("h3") && refused.contains("h2c"),
            "{refused}"
        );
    }

    #[test]
    fn a_path_served_only_for_other_methods_names_them() {
        let table = parse(
            "[[routes]]\nprefix = \"/api/report\"\nservice = \"r\"\nmethods = [\"GET\", \"HEAD\"]\n\
             [[routes]]\nprefix = \"/api/report\"\nservice = \"w\"\nmethods = [\"POST\", \"GET\"]\n",
        )
        .unwrap();
        let headers = HeaderMap::new();
        let delete = Method::DELETE;
        let view = |path| RequestView {
            method: &delete,
            path,
            host: None,
            headers: &headers,
        };
        assert!(table.find(&view("/api/report/1")).is_none());
        assert_eq!(
            table.allowed_methods(&view("/api/report/1")),
            [Method::GET, Method::HEAD, Method::POST]
        );
        assert!(table.allowed_methods(&view("/elsewhere")).is_empty());
    }

    const ROUTES: &str = r#"
        [[routes]]
        prefix = "/auth"
        service = "auth"
        auth = "none"

        [[routes]]
        name = "catalog-read"
        prefix = "/api/catalog"
        methods = ["GET", "head"]
        service = "catalog"

        [[routes]]
        name = "catalog-write"
        prefix = "/api/catalog"
        service = "catalog"
        roles = ["admin"]
    "#;

    #[test]
    fn first_match_by_prefix_and_method() {
        let table = parse(ROUTES).unwrap();
        let headers = HeaderMap::new();
        let find = |m: Method, p: &str| {
            let view = RequestView {
                method: &m,
                path: p,
                host: None,
                headers: &headers,
            };
            table.find(&view).map(|r| r.name.clone())
        };
        assert_eq!(
            find(Method::GET, "/api/catalog/products").as_deref(),
            Some("catalog-read")
        );
        assert_eq!(
            find(Method::HEAD, "/api/catalog").as_deref(),
            Some("catalog-read")
        );
        assert_eq!(
            find(Method::POST, "/api/catalog/products").as_deref(),
            Some("catalog-write")
        );
        assert_eq!(
            find(Method::POST, "/auth/login").as_deref(),
            Some("auth /auth")
        );
        assert_eq!(find(Method::GET, "/api/catalogue").as_deref(), None);
        assert_eq!(find(Method::GET, "/").as_deref(), None);
        let view = RequestView {
            method: &Method::POST,
            path: "/api/catalog",
            host: None,
            headers: &headers,
        };
        assert_eq!(table.find(&view).unwrap().auth, AuthMode::Required);
    }

    #[test]
    fn exact_regex_host_and_header_matching() {
        let table = parse(
            r#"
            [[routes]]
            name = "canary"
            prefix = "/"
            headers = { x-canary = "yes" }
            service = "web-v2"

            [[routes]]
            name = "admin-host"
            prefix = "/"
            host = "admin.example.com"
            service = "admin"

            [[routes]]
            name = "tenant"
            prefix = "/"
            host = "*.tenants.example.com"
            service = "tenant"

            [[routes]]
            name = "item"
            regex = "/items/[0-9]+"
            service = "items"

            [[routes]]
            name = "exact"
            path = "/health"
            service = "web"
        "#,
        )
        .unwrap();
        let mut canary = HeaderMap::new();
        canary.insert("x-canary", HeaderValue::from_static("yes"));
        let none = HeaderMap::new();
        let find = |path: &str, host: Option<&str>, headers: &HeaderMap| {
            let view = RequestView {
                method: &Method::GET,
                path,
                host,
                headers,
            };
            table.find(&view).map(|r| r.name.clone())
        };
        assert_eq!(find("/anything", None, &canary).as_deref(), Some("canary"));
        assert_eq!(
            find("/anything", Some("admin.example.com"), &none).as_deref(),
            Some("admin-host")
        );
        assert_eq!(
            find("/x", Some("acme.tenants.example.com"), &none).as_deref(),
            Some("tenant")
        );
        assert_eq!(find("/x", Some("tenants.example.com"), &none), None);
        assert_eq!(find("/items/42", None, &none).as_deref(), Some("item"));
        assert_eq!(
            find("/items/42/extra", None, &none),
            None,
            "regexes match the whole path"
        );
        assert_eq!(find("/items/abc", None, &none), None);
        assert_eq!(find("/health", None, &none).as_deref(), Some("exact"));
        assert_eq!(find("/health/deep", None, &none), None);
    }

    #[test]
    fn strip_prefix_rewrites_the_upstream_path() {
        let table = parse(
            "[[routes]]\nprefix = \"/api/things\"\nservice = \"things\"\nstrip_prefix = true\n",
        )
        .unwrap();
        let route = &table.routes[0];
        assert_eq!(route.upstream_path("/api/things/42?x=1"), "/42?x=1");
        assert_eq!(route.upstream_path("/api/things"), "/");
        assert_eq!(route.upstream_path("/api/things?x=1"), "/?x=1");
    }

    #[test]
    fn a_reload_keeps_a_deployment_unless_the_file_changed_its_split() {
        let file = |weight: u32, timeout: &str| {
            format!(
                "[[routes]]\nname = \"web\"\nprefix = \"/\"\nservice = \"web\"\ntimeout = \"{timeout}\"\n\
                 split = {{ stable = \"1\", canary = \"2\", canary_weight = {weight} }}\n"
            )
        };
        let first = parse(&file(10, "1s")).unwrap();
        first.routes[0].deployment.rollback().unwrap();
        // Another setting changed: the rolled-back deployment stays.
        let mut second = parse(&file(10, "2s")).unwrap();
        second.carry_over(&first);
        assert!(Arc::ptr_eq(
            &first.routes[0].deployment,
            &second.routes[0].deployment
        ));
        // The split itself changed: the file wins.
        let mut third = parse(&file(20, "2s")).unwrap();
        third.carry_over(&second);
        assert!(!Arc::ptr_eq(
            &second.routes[0].deployment,
            &third.routes[0].deployment
        ));
        assert_eq!(
            third.routes[0]
                .deployment
                .plan()
                .unwrap()
                .spec
                .canary_weight,
            20.0
        );
    }

    #[test]
    fn the_retry_budget_allows_about_one_retry_in_five_requests() {
        let budget = RetryBudget::default();
        let mut granted = 0;
        for _ in 0..1000 {
            budget.deposit();
            granted += usize::from(budget.withdraw());
        }
        // Ten saved up at the start, then one per five requests.
        assert!((200..=215).contains(&granted), "{granted}");
    }

    #[test]
    fn invalid_files_are_refused_with_a_reason() {
        for (text, expect) in [
            ("[[routes]]\nprefix = \"api\"\nservice = \"x\"", "must start with '/'"),
            ("[[routes]]\nprefix = \"/a\"\nservice = \"x\"\nmethods = [\"G T\"]", "not an HTTP method"),
            ("[[routes]]\nprefix = \"/a\"\nservice = \"x\"\nroles = [\"admin\"]\nauth = \"none\"", "needs auth"),
            ("[[routes]]\nprefix = \"/a\"\nservice = \"x\"\ncolour = 1", "unknown field"),
            ("[[routes]\n", "parsing"),
            ("[[routes]]\nprefix = \"/a\"\nservice = \"x\"\nbalance = \"fastest\"", "unknown variant"),
            ("[[routes]]\nprefix = \"/a\"\nservice = \"x\"\nhash_on = \"ip\"", "only applies"),
            ("[[routes]]\nservice = \"x\"", "exactly one of"),
            ("[[routes]]\nprefix = \"/a\"\npath = \"/a\"\nservice = \"x\"", "exactly one of"),
            ("[[routes]]\nregex = \"/a(\"\nservice = \"x\"", "regex"),
            ("[[routes]]\npath = \"/a\"\nservice = \"x\"\nstrip_prefix = true", "needs a prefix"),
            ("[[routes]]\nprefix = \"/a\"\nservice = \"x\"\nrate_limit = { requests_per_second = 0 }", "above 0"),
            ("[[routes]]\nprefix = \"/a\"\nservice = \"x\"\nsplit = { stable = \"1\", canary_weight = 5 }", "split: "),
            ("[[routes]]\nprefix = \"/a\"\nservice = \"x\"\nsplit = { stable = \"1\", colour = 5 }", "unknown field"),
        ] {
            let error = parse(text).unwrap_err().to_string();
            assert!(error.contains(expect), "{error}");
        }
    }
}
