//! Deployment strategies by instance version: a weighted canary, A/B by header or cookie,
//! blue-green, and the automatic rollback of a canary whose error rate is too high.
//!
//! Every instance registers with a version (`STRATUS_VERSION`, by default the crate's version),
//! and a route may say how its traffic is split between two of them:
//!
//! ```toml
//! split = { stable = "1.0", canary = "1.1", canary_weight = 10 }          # canary: 10% to 1.1
//! split = { stable = "1.0", canary = "2.0", canary_header = "x-variant: b" } # A/B by header
//! split = { stable = "1.0", canary = "2.0", canary_cookie = "variant=b" }    # A/B by cookie
//! split = { stable = "2.0" }                                    # blue-green: all to 2.0
//! ```
//!
//! A request goes to the canary when it carries the header or cookie (always, whatever the
//! weight), or when its turn in the weighted sequence comes up; everything else goes to
//! `stable`. The weighted sequence is a counter, not a coin: 10% is exactly one request in ten,
//! evenly spaced (as Bresenham draws a line), so a small sample is already on target. A version
//! with no live instance is never a black hole: its traffic falls back to the other version, then
//! to every instance of the service.
//!
//! The split of a route lives in its [`Deployment`], which is shared by every copy of the route
//! table. The admin API changes it in place (`PUT /v1/routes/{name}/split`,
//! `POST /v1/routes/{name}/rollback`), and a reloaded route file keeps a route's deployment
//! (with whatever the API or a rollback did to it) as long as the file's `split` for that route
//! did not change; when it did, the file wins. So an unrelated edit never brings back a canary
//! that was rolled back.
//!
//! The request path reads the plan through an `ArcSwapOption` (a few atomic operations), looks
//! up the version's precomputed pool (`InstancePool::version`), and, for a canary, bumps two counters;
//! nothing is allocated. [`crate::route::canary::watch`] samples those counters a few times a second and rolls a
//! canary back when its error rate over the window exceeds `max_error_rate`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::upstream::instances::InstancePool;

/// How often the canary watch (`canary.rs`) looks at every canary's error rate.
pub const CHECK_EVERY: Duration = Duration::from_millis(250);
/// Versions are registry versions: 1-64 characters.
const MAX_VERSION: usize = 64;

/// `split = { ... }` on a route: in the route file, or the JSON body of
/// `PUT /v1/routes/{name}/split`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitSpec {
    /// The version that gets every request not sent to the canary.
    pub stable: String,
    /// The version under trial.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<String>,
    /// Percentage (0-100, fractions allowed) of the other requests sent to the canary.
    #[serde(default)]
    pub canary_weight: f64,
    /// `"name: value"`: a request with this header goes to the canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_header: Option<String>,
    /// `"name=value"`: a request with this cookie goes to the canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_cookie: Option<String>,
    /// Roll the canary back when more than this share of its answers fail (5xx, or no answer).
    #[serde(default = "default_max_error_rate")]
    pub max_error_rate: f64,
    /// ... over this window ...
    #[serde(default = "default_window")]
    pub window: String,
    /// ... once it has answered at least this many requests in the window.
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
}

fn default_max_error_rate() -> f64 {
    0.05
}

fn default_window() -> String {
    "10s".into()
}

fn default_min_requests() -> u64 {
    20
}

/// Which side of a split a request went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    Stable,
    Canary,
    /// No split, or neither version has a live instance: any instance of the service.
    Any,
}

/// A validated split, with everything the request path needs precomputed.
#[derive(Debug)]
pub struct Plan {
    pub spec: SplitSpec,
    canary: Option<String>,
    /// Canary share in hundredths of a percent (0-10,000).
    weight_bp: u64,
    header: Option<(HeaderName, HeaderValue)>,
    cookie: Option<(String, String)>,
    window: Duration,
}

impl Plan {
    pub fn new(spec: SplitSpec) -> Result<Self, String> {
        let version = |field: &str, v: &str| {
            if v.is_empty() || v.len() > MAX_VERSION {
                Err(format!(
                    "{field} must be a version of 1-{MAX_VERSION} characters"
                ))
            } else {
                Ok(())
            }
        };
        version("stable", &spec.stable)?;
        if let Some(canary) = &spec.canary {
            version("canary", canary)?;
            if *canary == spec.stable {
                return Err("canary must differ from stable".into());
            }
        }
        if !(0.0..=100.0).contains(&spec.canary_weight) {
            return Err("canary_weight must be a percentage from 0 to 100".into());
        }
        let header = match &spec.canary_header {
            None => None,
            Some(text) => {
                let (name, value) = text
                    .split_once(':')
                    .ok_or("canary_header must look like \"x-variant: b\"")?;
                let name = HeaderName::from_bytes(name.trim().as_bytes())
                    .map_err(|_| format!("`{}` is not a header name", name.trim()))?;
                let value = HeaderValue::from_str(value.trim())
                    .map_err(|_| "the canary_header value is not a valid header value")?;
                Some((name, value))
            }
        };
        let cookie = match &spec.canary_cookie {
            None => None,
            Some(text) => match text.split_once('=') {
                Some((name, value))
                    if !name.trim().is_empty()
                        && !text.contains([';', ' ', ','])
                        && !value.is_empty() =>
                {
                    Some((name.trim().to_string(), value.to_string()))
                }
                _ => return Err("canary_cookie must look like \"variant=b\"".into()),
            },
        };
        let routes_to_canary = spec.canary_weight > 0.0 || header.is_some() || cookie.is_some();
        if routes_to_canary && spec.canary.is_none() {
            return Err(
                "canary_weight, canary_header and canary_cookie need a canary version".into(),
            );
        }
        if !(spec.max_error_rate > 0.0 && spec.max_error_rate <= 1.0) {
            return Err("max_error_rate must be above 0 and at most 1".into());
        }
        if spec.min_requests == 0 {
            return Err("min_requests must be at least 1".into());
        }
        let window =
            stratus_kit::duration::parse(&spec.window).map_err(|e| format!("window: {e}"))?;
        if !(Duration::from_secs(1)..=Duration::from_secs(600)).contains(&window) {
            return Err("window must be from 1s to 600s".into());
        }
        Ok(Self {
            canary: spec.canary.clone(),
            weight_bp: (spec.canary_weight * 100.0).round() as u64,
            header,
            cookie,
            window,
            spec,
        })
    }

    /// Whether this request asks for the canary by header or cookie.
    fn asks_for_canary(&self, headers: &HeaderMap) -> bool {
        if let Some((name, value)) = &self.header {
            if headers.get(name) == Some(value) {
                return true;
            }
        }
        if let Some((name, value)) = &self.cookie {
            let found = headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|h| h.to_str().ok())
                .flat_map(|h| h.split(';'))
                .filter_map(|pair| pair.trim().split_once('='))
                .any(|(n, v)| n == name && v.trim_matches('"') == value);
            if found {
                return true;
            }
        }
        false
    }

    /// The same plan with the canary off: every request to `stable`.
    fn stable_only(&self) -> Self {
        let spec = SplitSpec {
            canary: None,
            canary_weight: 0.0,
            canary_header: None,
            canary_cookie: None,
            ..self.spec.clone()
        };
        Self {
            canary: None,
            weight_bp: 0,
            header: None,
            cookie: None,
            window: self.window,
            spec,
        }
    }
}

/// Requests a side of the split answered, and how many of them failed.
#[derive(Debug, Default)]
pub struct Tally {
    requests: AtomicU64,
    errors: AtomicU64,
}

impl Tally {
    fn record(&self, error: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if error {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn read(&self) -> (u64, u64) {
        (
            self.requests.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        )
    }
}

/// Who set the split in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    File,
    Admin,
    Rollback,
}

/// A canary taken out of rotation.
#[derive(Debug, Clone, Serialize)]
pub struct Rollback {
    pub at: String,
    /// `error_rate` (automatic) or `manual`.
    pub reason: &'static str,
    pub canary: String,
    pub stable: String,
    /// The canary's error rate and request count over the window (automatic rollbacks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
}

#[derive(Debug)]
struct State {
    source: Source,
    changed_at: String,
    /// Bumped on every change of plan, so the error-rate window starts again.
    generation: u64,
    sampled_generation: u64,
    /// (when, canary requests, canary errors), oldest first, covering the window.
    samples: VecDeque<(Instant, u64, u64)>,
    last_rollback: Option<Rollback>,
    rollbacks: u64,
}

/// A route's split between versions, and what the gateway has seen of each side.
#[derive(Debug)]
pub struct Deployment {
    /// The `split` as the route file has it, to tell on reload whether the file changed it.
    file_spec: Option<SplitSpec>,
    plan: ArcSwapOption<Plan>,
    /// Position in the weighted sequence.
    sequence: AtomicU64,
    pub stable: Tally,
    pub canary: Tally,
    state: Mutex<State>,
}

impl Deployment {
    pub fn new(file_spec: Option<SplitSpec>) -> Result<Self, String> {
        let plan = file_spec.clone().map(Plan::new).transpose()?;
        Ok(Self {
            file_spec,
            plan: ArcSwapOption::from_pointee(plan),
            sequence: AtomicU64::new(0),
            stable: Tally::default(),
            canary: Tally::default(),
            state: Mutex::new(State {
                source: Source::File,
                changed_at: stratus_kit::now_rfc3339(),
                generation: 0,
                sampled_generation: 0,
                samples: VecDeque::new(),
                last_rollback: None,
                rollbacks: 0,
            }),
        })
    }

    /// Whether a reloaded route with `file_spec` may keep this deployment (the file did not
    /// change the route's split).
    pub fn same_file_spec(&self, file_spec: &Option<SplitSpec>) -> bool {
        self.file_spec == *file_spec
    }

    /// The `split` the route file gave this route.
    pub fn file_spec(&self) -> &Option<SplitSpec> {
        &self.file_spec
    }

    pub fn plan(&self) -> Option<Arc<Plan>> {
        self.plan.load_full()
    }

    /// The pool a request should be balanced over, and which side of the split that is.
    pub fn choose<'p>(
        &self,
        headers: &HeaderMap,
        pool: &'p InstancePool,
    ) -> (&'p InstancePool, Group) {
        let plan = self.plan.load();
        let Some(plan) = plan.as_deref() else {
            return (pool, Group::Any);
        };
        let wants_canary = match &plan.canary {
            None => false,
            Some(_) => plan.asks_for_canary(headers) || self.weighted_turn(plan.weight_bp),
        };
        let stable = pool.version(&plan.spec.stable);
        let canary = plan.canary.as_deref().and_then(|v| pool.version(v));
        let (first, second) = if wants_canary {
            ((canary, Group::Canary), (stable, Group::Stable))
        } else {
            ((stable, Group::Stable), (canary, Group::Canary))
        };
        match (first, second) {
            ((Some(p), group), _) | (_, (Some(p), group)) => (p, group),
            _ => (pool, Group::Any),
        }
    }

    /// Whether the next request in the weighted sequence is the canary's: request n is when
    /// floor((n + 1) w) > floor(n w), w the share, so shares are exact and evenly spaced.
    fn weighted_turn(&self, weight_bp: u64) -> bool {
        match weight_bp {
            0 => false,
            10_000.. => true,
            w => {
                let n = self.sequence.fetch_add(1, Ordering::Relaxed) % 10_000;
                (n + 1) * w / 10_000 > n * w / 10_000
            }
        }
    }

    /// Counts one answer (or failure to answer) from a side of the split.
    pub fn record(&self, group: Group, error: bool) {
        match group {
            Group::Stable => self.stable.record(error),
            Group::Canary => self.canary.record(error),
            Group::Any => {}
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Puts a new split in force (None: no split, every instance), from the admin API.
    pub fn set(&self, spec: Option<SplitSpec>) -> Result<(), String> {
        let plan = spec.map(Plan::new).transpose()?;
        let mut state = self.lock();
        self.plan.store(plan.map(Arc::new));
        state.source = Source::Admin;
        state.changed_at = stratus_kit::now_rfc3339();
        state.generation += 1;
        Ok(())
    }

    /// Sends every request to `stable` at once. `Err` when there is no canary to take out.
    pub fn rollback(&self) -> Result<Rollback, String> {
        let mut state = self.lock();
        self.roll_back(&mut state, "manual", None)
    }

    fn roll_back(
        &self,
        state: &mut State,
        reason: &'static str,
        measured: Option<(f64, u64)>,
    ) -> Result<Rollback, String> {
        let plan = self.plan.load_full();
        let Some(plan) = plan.filter(|p| p.canary.is_some()) else {
            return Err("this route has no canary to roll back".into());
        };
        self.plan.store(Some(Arc::new(plan.stable_only())));
        let rollback = Rollback {
            at: stratus_kit::now_rfc3339(),
            reason,
            canary: plan.canary.clone().unwrap_or_default(),
            stable: plan.spec.stable.clone(),
            error_rate: measured.map(|m| m.0),
            requests: measured.map(|m| m.1),
        };
        state.source = Source::Rollback;
        state.changed_at = rollback.at.clone();
        state.generation += 1;
        state.last_rollback = Some(rollback.clone());
        state.rollbacks += 1;
        Ok(rollback)
    }

    /// Samples the canary's counters; rolls it back when its error rate over the window is
    /// above the plan's limit. Returns the rollback it made, if any.
    pub fn check(&self, now: Instant) -> Option<Rollback> {
        let plan = self.plan.load_full()?;
        plan.canary.as_ref()?;
        let mut state = self.lock();
        if state.sampled_generation != state.generation {
            state.samples.clear();
            state.sampled_generation = state.generation;
        }
        let (requests, errors) = self.canary.read();
        state.samples.push_back((now, requests, errors));
        // Keep the newest sample at or before the start of the window as the baseline.
        while state.samples.len() > 2 && now.duration_since(state.samples[1].0) >= plan.window {
            state.samples.pop_front();
        }
        let &(_, base_requests, base_errors) = state.samples.front()?;
        let (window_requests, window_errors) = (requests - base_requests, errors - base_errors);
        if window_requests < plan.spec.min_requests {
            return None;
        }
        let rate = window_errors as f64 / window_requests as f64;
        if rate <= plan.spec.max_error_rate {
            return None;
        }
        self.roll_back(&mut state, "error_rate", Some((rate, window_requests)))
            .ok()
    }

    /// The admin API's view: the split in force, who set it, both sides' counts, the last
    /// rollback.
    pub fn describe(&self) -> Value {
        let plan = self.plan.load_full();
        let state = self.lock();
        let (stable_requests, stable_errors) = self.stable.read();
        let (canary_requests, canary_errors) = self.canary.read();
        json!({
            "split": plan.as_ref().map(|p| &p.spec),
            "source": state.source,
            "changed_at": state.changed_at,
            "requests": {
                "stable": {"total": stable_requests, "errors": stable_errors},
                "canary": {"total": canary_requests, "errors": canary_errors},
            },
            "rollbacks": state.rollbacks,
            "last_rollback": state.last_rollback,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::instances::tests::versioned_pool;

    fn spec(text: &str) -> SplitSpec {
        toml::from_str::<toml::Value>(&format!("split = {text}"))
            .unwrap()
            .get("split")
            .unwrap()
            .clone()
            .try_into()
            .unwrap()
    }

    fn deployment(text: &str) -> Deployment {
        Deployment::new(Some(spec(text))).unwrap()
    }

    fn share_of_canary(deployment: &Deployment, pool: &InstancePool, requests: usize) -> usize {
        let headers = HeaderMap::new();
        (0..requests)
            .filter(|_| deployment.choose(&headers, pool).1 == Group::Canary)
            .count()
    }

    #[test]
    fn the_weighted_sequence_is_exact_and_even() {
        let pool = versioned_pool(&[("a", "1.0"), ("b", "1.0"), ("c", "1.1")]);
        let canary = deployment(r#"{ stable = "1.0", canary = "1.1", canary_weight = 10 }"#);
        assert_eq!(share_of_canary(&canary, &pool, 10_000), 1_000);
        // Evenly spaced: every run of ten requests has exactly one canary request.
        for _ in 0..20 {
            assert_eq!(share_of_canary(&canary, &pool, 10), 1);
        }
        let fraction = deployment(r#"{ stable = "1.0", canary = "1.1", canary_weight = 2.5 }"#);
        assert_eq!(share_of_canary(&fraction, &pool, 10_000), 250);
        let all = deployment(r#"{ stable = "1.0", canary = "1.1", canary_weight = 100 }"#);
        assert_eq!(share_of_canary(&all, &pool, 100), 100);
    }

    #[test]
    fn canary_requests_land_on_canary_instances_only() {
        let pool = versioned_pool(&[("a", "1.0"), ("b", "1.0"), ("c", "1.1")]);
        let canary = deployment(r#"{ stable = "1.0", canary = "1.1", canary_weight = 50 }"#);
        let headers = HeaderMap::new();
        let balance = crate::upstream::balance::Balance::default();
        for _ in 0..100 {
            let (chosen, group) = canary.choose(&headers, &pool);
            let endpoint = chosen.pick(&balance, None, None).unwrap();
            let expected = if group == Group::Canary { "1.1" } else { "1.0" };
            assert_eq!(endpoint.version, expected);
        }
    }

    #[test]
    fn header_and_cookie_choose_the_canary_deterministically() {
        let pool = versioned_pool(&[("a", "1.0"), ("b", "2.0")]);
        let ab = deployment(
            r#"{ stable = "1.0", canary = "2.0", canary_header = "x-variant: b", canary_cookie = "variant=b" }"#,
        );
        let mut with_header = HeaderMap::new();
        with_header.insert("x-variant", HeaderValue::from_static("b"));
        let mut with_cookie = HeaderMap::new();
        with_cookie.insert(
            http::header::COOKIE,
            HeaderValue::from_static("theme=dark; variant=b"),
        );
        let mut other = HeaderMap::new();
        other.insert("x-variant", HeaderValue::from_static("a"));
        other.insert(http::header::COOKIE, HeaderValue::from_static("variant=bb"));
        for _ in 0..100 {
            assert_eq!(ab.choose(&with_header, &pool).1, Group::Canary);
            assert_eq!(ab.choose(&with_cookie, &pool).1, Group::Canary);
            assert_eq!(ab.choose(&other, &pool).1, Group::Stable);
            assert_eq!(ab.choose(&HeaderMap::new(), &pool).1, Group::Stable);
        }
    }

    #[test]
    fn a_version_without_instances_falls_back() {
        let pool = versioned_pool(&[("a", "1.0"), ("b", "1.0")]);
        let headers = HeaderMap::new();
        let canary = deployment(r#"{ stable = "1.0", canary = "9.9", canary_weight = 100 }"#);
        assert_eq!(canary.choose(&headers, &pool).1, Group::Stable);
        let gone = deployment(r#"{ stable = "0.1" }"#);
        let (chosen, group) = gone.choose(&headers, &pool);
        assert_eq!((chosen.endpoints.len(), group), (2, Group::Any));
    }

    #[test]
    fn a_failing_canary_is_rolled_back_once_the_window_has_enough_requests() {
        let canary = deployment(
            r#"{ stable = "1.0", canary = "1.1", canary_weight = 10, min_requests = 20 }"#,
        );
        let start = Instant::now();
        assert!(canary.check(start).is_none());
        for _ in 0..19 {
            canary.record(Group::Canary, true);
        }
        assert!(
            canary.check(start + CHECK_EVERY).is_none(),
            "too few requests"
        );
        canary.record(Group::Canary, true);
        let rollback = canary.check(start + CHECK_EVERY * 2).unwrap();
        assert_eq!(rollback.reason, "error_rate");
        assert_eq!(rollback.requests, Some(20));
        let plan = canary.plan().unwrap();
        assert_eq!((plan.canary.as_deref(), plan.weight_bp), (None, 0));
        assert!(canary.check(start + CHECK_EVERY * 3).is_none());
        assert_eq!(canary.describe()["source"], "rollback");
        assert!(canary.rollback().is_err(), "nothing left to roll back");
    }

    #[test]
    fn a_healthy_canary_stays_and_old_errors_leave_the_window() {
        let canary = deployment(
            r#"{ stable = "1.0", canary = "1.1", canary_weight = 10, window = "2s", min_requests = 10 }"#,
        );
        let start = Instant::now();
        canary.check(start);
        for _ in 0..10 {
            canary.record(Group::Canary, true);
        }
        // Not checked while the errors happened (say the canary was failing before a fix);
        // a window later, only the good answers since count.
        let later = start + Duration::from_secs(3);
        canary.check(later);
        for _ in 0..100 {
            canary.record(Group::Canary, false);
        }
        canary.check(later + Duration::from_secs(1));
        assert!(canary.check(later + Duration::from_secs(3)).is_none());
        for _ in 0..3 {
            canary.record(Group::Canary, true);
        }
        assert!(
            canary.check(later + Duration::from_secs(4)).is_none(),
            "3 errors in 103 is under 5%"
        );
    }

    #[test]
    fn invalid_splits_are_refused_with_a_reason() {
        for (text, expect) in [
            (r#"{ stable = "" }"#, "stable must be"),
            (r#"{ stable = "1", canary = "1" }"#, "must differ"),
            (r#"{ stable = "1", canary_weight = 10 }"#, "need a canary"),
            (
                r#"{ stable = "1", canary = "2", canary_weight = 101 }"#,
                "percentage",
            ),
            (
                r#"{ stable = "1", canary = "2", canary_header = "x-variant" }"#,
                "canary_header",
            ),
            (
                r#"{ stable = "1", canary = "2", canary_cookie = "v" }"#,
                "canary_cookie",
            ),
            (
                r#"{ stable = "1", canary = "2", max_error_rate = 0 }"#,
                "max_error_rate",
            ),
            (r#"{ stable = "1", canary = "2", window = "1h" }"#, "window"),
            (
                r#"{ stable = "1", canary = "2", min_requests = 0 }"#,
                "min_requests",
            ),
        ] {
            let error = Deployment::new(Some(spec(text))).unwrap_err();
            assert!(error.contains(expect), "{text}: {error}");
        }
    }
}
