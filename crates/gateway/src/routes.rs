//! The route table: which requests go to which service, and who may make them.
//!
//! Routes come from a TOML file (`[[routes]]` tables, the same file as `stratus.toml`) and are
//! matched in order; the first whose prefix, and methods if given, fit the request wins. A prefix
//! matches whole path segments: `/api/catalog` matches `/api/catalog` and `/api/catalog/x`, never
//! `/api/catalogue`.

use std::sync::Arc;

use http::Method;

use crate::balance::{Algorithm, Balance, HashOn};
use serde::Deserialize;
use std::path::Path;

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
    prefix: String,
    service: String,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    roles: Vec<String>,
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
}

fn default_retries() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
struct RouteFile {
    #[serde(default)]
    routes: Vec<RouteSpec>,
}

#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    pub prefix: String,
    pub service: String,
    pub methods: Vec<Method>,
    pub roles: Vec<String>,
    pub auth: AuthMode,
    pub balance: Balance,
    pub timeout: Option<std::time::Duration>,
    pub retries: u32,
    pub retry_budget: Arc<RetryBudget>,
    pub metrics: RouteMetrics,
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
    fn matches(&self, method: &Method, path: &str) -> bool {
        let prefix_ok = match path.strip_prefix(self.prefix.as_str()) {
            Some(rest) => rest.is_empty() || rest.starts_with('/') || self.prefix.ends_with('/'),
            None => false,
        };
        prefix_ok && (self.methods.is_empty() || self.methods.contains(method))
    }
}

#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    pub routes: Vec<Route>,
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
            let name = spec
                .name
                .clone()
                .unwrap_or_else(|| format!("{} {}", spec.service, spec.prefix));
            let invalid = |problem: String| RouteError::Invalid {
                index,
                name: name.clone(),
                problem,
            };
            if !spec.prefix.starts_with('/') {
                return Err(invalid(format!(
                    "prefix `{}` must start with '/'",
                    spec.prefix
                )));
            }
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
            let auth = spec.auth.unwrap_or(if spec.roles.is_empty() {
                AuthMode::Optional
            } else {
                AuthMode::Required
            });
            if auth != AuthMode::Required && !spec.roles.is_empty() {
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
            routes.push(Route {
                balance: Balance {
                    algorithm: spec.balance,
                    hash_on,
                },
                timeout,
                retries: spec.retries,
                retry_budget: Arc::new(RetryBudget::default()),
                metrics: RouteMetrics::new(&name, &spec.service),
                name,
                prefix: spec.prefix,
                service: spec.service,
                methods,
                roles: spec.roles,
                auth,
            });
        }
        Ok(Self { routes })
    }

    /// The first route that fits, in file order.
    pub fn find(&self, method: &Method, path: &str) -> Option<&Route> {
        self.routes.iter().find(|route| route.matches(method, path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let table = RouteTable::parse(ROUTES).unwrap();
        let find = |m: Method, p: &str| table.find(&m, p).map(|r| r.name.as_str());
        assert_eq!(
            find(Method::GET, "/api/catalog/products"),
            Some("catalog-read")
        );
        assert_eq!(find(Method::HEAD, "/api/catalog"), Some("catalog-read"));
        assert_eq!(
            find(Method::POST, "/api/catalog/products"),
            Some("catalog-write")
        );
        assert_eq!(find(Method::POST, "/auth/login"), Some("auth /auth"));
        assert_eq!(find(Method::GET, "/api/catalogue"), None);
        assert_eq!(find(Method::GET, "/"), None);
        assert_eq!(
            table.find(&Method::POST, "/api/catalog").unwrap().auth,
            AuthMode::Required
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
        ] {
            let error = RouteTable::parse(text).unwrap_err().to_string();
            assert!(error.contains(expect), "{error}");
        }
    }
}
