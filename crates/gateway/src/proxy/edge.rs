//! The edge cache's part of the request path (the rules are `crate::edge_cache`'s):
//!
//! ```text
//! route has a cache? ─ plan ─> lookup ─ fresh ───────────────> answer (x-cache: hit)
//!                                 ├─ stale-while-revalidate ─> answer (x-cache: stale) + refresh
//!                                 └─ miss: lead the key's flight, or wait for its leader
//!                     forward ─> keep (body read whole) ─────> answer (x-cache: miss)
//!                            └─> 5xx with a stale entry ────> answer (x-cache: stale)
//! a write that succeeded ─> purge its path and the surrogate keys its answer names
//! ```
//!
//! A refresh (`stale-while-revalidate`) is a request of the gateway's own, sent from a task on
//! the worker that served the stale answer, as the flight's leader.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, IF_MODIFIED_SINCE, IF_NONE_MATCH};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Body as _;
use stratus_kit::trace::TraceContext;
use stratus_kit::Problem;

use super::{problem, routing_host, Body, Proxy};
use crate::edge_cache::{
    self, EdgeCache, Entry, Flight, Freshness, Key, Lead, Outcome, Plan, Purge, RouteCache,
    SURROGATE_KEY, X_CACHE,
};
use crate::headers::{self, ClientConnection};
use crate::route::routes::{RequestView, Route, RouteTable};

/// What the lookup found.
pub(super) enum Lookup {
    /// An answer from the cache.
    Answered(Response<Body>, Outcome),
    /// Go to an instance.
    Fetch(Miss),
}

/// A miss on its way to an instance.
pub(super) struct Miss {
    /// This request fetches for every concurrent miss of its key.
    lead: Option<Lead<Key>>,
    /// A stored answer past its use that may stand in if the instance fails.
    stale: Option<Arc<Entry>>,
    /// The cache's generation when the fetch began (see `EdgeCache::insert`).
    began: u64,
}

impl Miss {
    /// A fetch with no flight and nothing stale, beginning now.
    pub(super) fn alone(cache: &EdgeCache) -> Self {
        Self {
            lead: None,
            stale: None,
            began: cache.begin(),
        }
    }
}

/// The key's host: the request's `Host` (or its target's authority).
pub(super) fn plan(cache: &RouteCache, parts: &Parts) -> Plan {
    let host = headers::client_host(parts);
    let host = host.as_ref().and_then(|h| h.to_str().ok());
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    edge_cache::plan(cache, &parts.method, host, target, &parts.headers)
}

fn answered(
    entry: &Entry,
    now: Instant,
    how: &'static str,
    parts: &Parts,
    head: bool,
    outcome: Outcome,
) -> Lookup {
    let response = entry
        .respond(now, how, &parts.headers, head)
        .map(Either::Right);
    Lookup::Answered(response, outcome)
}

impl Proxy {
    /// Answers from the cache when it can; otherwise says how to fetch.
    pub(super) async fn edge_lookup(
        &self,
        route: &Route,
        plan: &Plan,
        parts: &Parts,
        client: &ClientConnection,
    ) -> Lookup {
        let Plan::Read {
            key,
            head,
            fetch_fresh,
            credentials,
        } = plan
        else {
            return Lookup::Fetch(Miss::alone(&self.shared.edge_cache));
        };
        let store = &self.shared.edge_cache;
        if *fetch_fresh {
            return Lookup::Fetch(Miss::alone(store));
        }
        let now = Instant::now();
        let mut stale = None;
        if let Some(entry) = store.get(key, &parts.headers, *credentials) {
            match entry.freshness(now) {
                Freshness::Fresh => {
                    return answered(&entry, now, "hit", parts, *head, Outcome::Hit)
                }
                Freshness::StaleWhileRevalidate => {
                    self.refresh_later(key, *credentials, parts, client);
                    return answered(&entry, now, "stale", parts, *head, Outcome::Stale);
                }
                Freshness::StaleIfError => stale = Some(entry),
                Freshness::Expired => {}
            }
        }
        let began = store.begin();
        if *head {
            // A HEAD's answer has no body to keep: it neither leads nor waits.
            return Lookup::Fetch(Miss {
                lead: None,
                stale,
                began,
            });
        }
        match store.join(key) {
            Flight::Lead(lead) => Lookup::Fetch(Miss {
                lead: Some(lead),
                stale,
                began,
            }),
            Flight::Follow(waiting) => {
                let wait = route.timeout.unwrap_or(self.shared.settings.timeout);
                let _ = tokio::time::timeout(wait, edge_cache::landed(waiting)).await;
                let now = Instant::now();
                if let Some(entry) = store.get(key, &parts.headers, *credentials) {
                    if entry.freshness(now) == Freshness::Fresh {
                        return answered(&entry, now, "hit", parts, *head, Outcome::Hit);
                    }
                }
                // The leader's answer was not kept: fetch alone.
                Lookup::Fetch(Miss {
                    lead: None,
                    stale,
                    began: store.begin(),
                })
            }
        }
    }

    /// After an instance answered a read: keeps the answer when it may be kept, or puts a
    /// stale one in place of a failure.
    pub(super) async fn edge_keep(
        &self,
        cache: &RouteCache,
        plan: &Plan,
        request: &HeaderMap,
        response: Response<Body>,
        miss: Miss,
    ) -> (Response<Body>, Outcome) {
        let Plan::Read {
            key,
            head,
            credentials,
            ..
        } = plan
        else {
            return (response, Outcome::Bypass);
        };
        let now = Instant::now();
        let status = response.status();
        if status.is_server_error() {
            if let Some(stale) = miss.stale.filter(|entry| entry.usable_on_error(now)) {
                let response = stale
                    .respond(now, "stale", request, *head)
                    .map(Either::Right);
                return (response, Outcome::Stale);
            }
            return (response, Outcome::Miss);
        }
        let length = response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .or(response.body().size_hint().exact());
        let keep = if *head {
            None
        } else {
            edge_cache::storable(
                cache,
                *credentials,
                request,
                status,
                response.headers(),
                length,
            )
        };
        let Some(storable) = keep else {
            return (marked(response, "miss"), Outcome::Miss);
        };
        let (parts, body) = response.into_parts();
        let body = match read_whole(body, cache.max_object).await {
            Ok(body) => body,
            Err(broken) => return (problem(broken), Outcome::Miss),
        };
        let entry = storable.into_entry(parts.status, parts.headers.clone(), body.clone());
        self.shared
            .edge_cache
            .insert(key.clone(), entry, miss.began);
        // Stored: the followers find it.
        drop(miss.lead);
        let response = Response::from_parts(parts, Either::Right(Full::new(body)));
        (marked(response, "miss"), Outcome::Miss)
    }

    /// A write that succeeded purges what it wrote (RFC 9111 4.4: the target's path, when a
    /// caching route covers it) and the answers tagged with the surrogate keys its own answer
    /// names. Other gateways get the same purges (`purge_relay.rs`).
    pub(super) fn edge_purge_after_write(
        &self,
        routes: &RouteTable,
        method: &Method,
        path: &str,
        response: &mut Response<Body>,
    ) {
        if method.is_safe() {
            return;
        }
        let status = response.status();
        if !(status.is_success() || status.is_redirection()) {
            return;
        }
        if routes.caches_path(path) {
            self.shared.purge(Purge::Path(path.to_owned()), false);
        }
        let tags = edge_cache::tags_of(response.headers());
        if !tags.is_empty() {
            self.shared.purge(Purge::Tags(tags), false);
        }
        response.headers_mut().remove(&SURROGATE_KEY);
    }

    /// Fetches a fresh answer for a stale one, unless a fetch of the key is under way.
    fn refresh_later(
        &self,
        key: &Key,
        credentials: bool,
        parts: &Parts,
        client: &ClientConnection,
    ) {
        let Some(me) = self.me.upgrade() else {
            return;
        };
        let Flight::Lead(lead) = self.shared.edge_cache.join(key) else {
            return;
        };
        let began = self.shared.edge_cache.begin();
        let mut request = Request::new(());
        *request.method_mut() = Method::GET;
        *request.uri_mut() = parts.uri.clone();
        *request.version_mut() = parts.version;
        *request.headers_mut() = parts.headers.clone();
        let (mut parts, ()) = request.into_parts();
        // The refresh wants the whole answer, not the triggering client's 304.
        parts.headers.remove(IF_NONE_MATCH);
        parts.headers.remove(IF_MODIFIED_SINCE);
        let plan = Plan::Read {
            key: key.clone(),
            head: false,
            fetch_fresh: true,
            credentials,
        };
        let client = client.clone();
        tokio::spawn(async move { me.refresh(plan, lead, began, parts, client).await });
    }

    async fn refresh(
        &self,
        plan: Plan,
        lead: Lead<Key>,
        began: u64,
        mut parts: Parts,
        client: ClientConnection,
    ) {
        let routes = self.shared.routes.load_full();
        let host = routing_host(&routes, &parts);
        let view = RequestView {
            method: &parts.method,
            path: parts.uri.path(),
            host: host.as_deref(),
            headers: &parts.headers,
        };
        // The table may have been reloaded since: the route decides again.
        let Some(route) = routes.find(&view) else {
            return;
        };
        let Some(cache) = &route.cache else {
            return;
        };
        let request_headers = parts.headers.clone();
        headers::strip_hop_by_hop(&mut parts.headers);
        let trace = TraceContext::new_root();
        let traceparent = trace.header_bytes();
        let request_id =
            HeaderValue::from_bytes(&traceparent[3..35]).unwrap_or(HeaderValue::from_static("-"));
        let host = headers::client_host(&parts);
        let forwarding = headers::Forwarding {
            client: &client,
            headers: &parts.headers,
            host: host.as_ref(),
            request_id: &request_id,
            traceparent: &traceparent,
        };
        let mut retries = 0;
        let response = self
            .forward(
                route,
                &parts,
                &forwarding,
                Bytes::new(),
                None,
                client.peer.ip(),
                &mut retries,
            )
            .await;
        let miss = Miss {
            lead: Some(lead),
            stale: None,
            began,
        };
        let (response, _) = self
            .edge_keep(cache, &plan, &request_headers, response, miss)
            .await;
        // An answer not kept is read to its end, so its connection goes back to the pool.
        let _ = Limited::new(response.into_body(), cache.max_object)
            .collect()
            .await;
    }
}

fn marked(mut response: Response<Body>, how: &'static str) -> Response<Body> {
    let headers = response.headers_mut();
    headers.remove(&SURROGATE_KEY);
    headers.insert(X_CACHE.clone(), HeaderValue::from_static(how));
    response
}

/// Reads an answer's body whole (it is known to be at most `max` bytes).
async fn read_whole(body: Body, max: usize) -> Result<Bytes, Problem> {
    match Limited::new(body, max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(_) => Err(Problem::new(
            StatusCode::BAD_GATEWAY,
            "the instance's answer broke off before its end",
        )),
    }
}
