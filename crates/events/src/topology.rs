//! The live topology: who calls whom, how often, how often it fails and how slowly, derived from
//! parent and child spans.
//!
//! A record whose parent span belongs to service A while the record itself belongs to B is one
//! call A -> B. A record with no parent at all, or a gateway record whose parent is not in the
//! window (the caller's own span), came from outside: `clients` -> B. Any other record whose
//! parent is not (yet) in the window is left out: reporters flush on their own schedules, so a
//! callee's record often arrives before its caller's. Message hops go through the broker: a
//! `producer` record is A -> `broker`, a `consumer` record is `broker` -> B. A `client` record
//! with a `peer` is A's calls to something that reports nothing itself, a database or a cache:
//! A -> peer, and the peer is a node of its own. The edge's numbers are the callee's records
//! (for a peer, the caller's `client` records): count, rate over the window, errors and p99
//! latency.
//!
//! A call whose callee's record names its caller's identity (`peer` on a served record) was
//! mutually authenticated: the edge counts those (`mutual_tls`), and the ones refused with a 403
//! (`refused`: an intention, or the callee's own authorization, said no).
//!
//! Node kinds: `clients`, `service`, `broker`, `dns` (the service called `dns`: `stratus serve
//! dns` reports each query), and for peers [`peer_kind`] of the record's name: `cache` for
//! `redis` (and memcached, valkey), `dns` for `dns`, `database` for anything else (`sqlite`,
//! `postgres`).

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::stats::percentile;
use crate::store::Hop;
use stratus_kit::fold::caller_service;

/// The node that stands for callers outside the system (browsers, scripts).
pub const CLIENTS: &str = stratus_kit::fold::CLIENTS;
/// The node that stands for the message broker.
pub const BROKER: &str = "broker";
/// The service name the DNS server reports under.
pub const DNS: &str = "dns";

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Edge {
    pub from: String,
    pub to: String,
    pub count: u64,
    pub errors: u64,
    /// Calls per second over the window.
    pub rate: f64,
    pub error_rate: f64,
    pub p99_ms: f64,
    /// Calls whose caller the callee knew by its certificate (mutual TLS).
    pub mutual_tls: u64,
    /// Of those, calls refused with a 403.
    pub refused: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Node {
    pub id: String,
    /// `clients`, `service`, `broker`, `dns`, `database` or `cache`.
    pub kind: &'static str,
    /// Records this node handled in the window (for a database or cache, the calls made to it;
    /// 0 for clients and the broker).
    pub count: u64,
    pub rate: f64,
    pub errors: u64,
    /// What the node is, where known: the broker's backend (`nats`, `sqlite`), a database's
    /// (`sqlite`, `postgres`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Topology {
    pub window_seconds: f64,
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
}

#[derive(Default)]
struct Tally {
    durations: Vec<i64>,
    errors: u64,
    mutual_tls: u64,
    refused: u64,
}

impl Tally {
    fn add(&mut self, hop: &Hop) {
        self.durations.push(hop.duration_us);
        self.errors += u64::from(!hop.ok);
    }

    /// A served call: also whether its caller was known by certificate, and refused.
    fn add_served(&mut self, hop: &Hop) {
        self.add(hop);
        if hop.peer.is_some() {
            self.mutual_tls += 1;
            self.refused += u64::from(hop.status == 403);
        }
    }
}

/// The kind of node a peer is, from what its calls are named (the system they speak).
pub fn peer_kind(system: &str) -> &'static str {
    match system {
        "redis" | "valkey" | "memcached" => "cache",
        "dns" => "dns",
        _ => "database",
    }
}

/// What the topology knows beyond the hops: services that exist (from the registry) even if
/// they handled nothing in the window, and which broker the instances use.
#[derive(Debug, Default, Clone)]
pub struct Known {
    pub services: Vec<String>,
    /// The broker's backend, from the instances' registration metadata (`broker`).
    pub broker: Option<String>,
}

/// Builds the graph of one window's hops.
pub fn compute(hops: &[Hop], window_seconds: f64, known: &Known) -> Topology {
    let owner: HashMap<&str, &str> = hops
        .iter()
        .map(|h| (h.span_id.as_str(), h.service.as_str()))
        .collect();
    let mut edges: BTreeMap<(String, String), Tally> = BTreeMap::new();
    let mut nodes: BTreeMap<String, Tally> = BTreeMap::new();
    // Peers: their calls, and what they are (kind, and the system as the label).
    let mut peers: BTreeMap<String, (Tally, &'static str, String)> = BTreeMap::new();
    for name in &known.services {
        nodes.entry(name.clone()).or_default();
    }
    for hop in hops {
        if let (Some(peer), "client") = (hop.peer.as_deref(), hop.kind.as_str()) {
            // A call to a database or cache: counted for the callee, not as a hop the caller
            // served.
            let entry = peers
                .entry(peer.to_string())
                .or_insert_with(|| (Tally::default(), peer_kind(&hop.name), hop.name.clone()));
            entry.0.add(hop);
            nodes.entry(hop.service.clone()).or_default();
            edges
                .entry((hop.service.clone(), peer.to_string()))
                .or_default()
                .add(hop);
            continue;
        }
        nodes.entry(hop.service.clone()).or_default().add(hop);
        let (from, to) = match hop.kind.as_str() {
            "producer" => (hop.service.as_str(), BROKER),
            "consumer" => (BROKER, hop.service.as_str()),
            _ => match hop.parent_span_id.as_deref().map(|p| owner.get(p)) {
                Some(Some(parent)) if *parent == hop.service => continue,
                Some(Some(parent)) => (*parent, hop.service.as_str()),
                None => (CLIENTS, hop.service.as_str()),
                Some(None) if hop.kind == "gateway" => (CLIENTS, hop.service.as_str()),
                // The parent's record is missing (its reporter folded it into a summary, see
                // kit::fold): the caller the hop knew by certificate, if any.
                Some(None) => match hop.peer.as_deref().and_then(caller_service) {
                    Some(caller) if caller != hop.service => (caller, hop.service.as_str()),
                    _ => continue,
                },
            },
        };
        edges
            .entry((from.to_string(), to.to_string()))
            .or_default()
            .add_served(hop);
    }
    let window = window_seconds.max(1e-3);
    let round = |x: f64| (x * 1000.0).round() / 1000.0;
    let node = |id: String, kind: &'static str, tally: &Tally, label: Option<String>| Node {
        kind,
        count: tally.durations.len() as u64,
        rate: round(tally.durations.len() as f64 / window),
        errors: tally.errors,
        id,
        label,
    };
    let mut out_nodes: Vec<Node> = nodes
        .into_iter()
        // A peer that also reports (a service called like a database) is drawn once, as itself.
        .filter(|(id, _)| !peers.contains_key(id))
        .map(|(id, tally)| {
            let kind = if id == DNS { "dns" } else { "service" };
            node(id, kind, &tally, None)
        })
        .collect();
    for (id, (tally, kind, system)) in &peers {
        out_nodes.push(node(id.clone(), kind, tally, Some(system.clone())));
    }
    for (id, kind) in [(CLIENTS, "clients"), (BROKER, "broker")] {
        if edges.keys().any(|(f, t)| f == id || t == id) {
            let label = (id == BROKER).then(|| known.broker.clone()).flatten();
            out_nodes.push(node(id.to_string(), kind, &Tally::default(), label));
        }
    }
    let out_edges = edges
        .into_iter()
        .map(|((from, to), mut tally)| {
            tally.durations.sort_unstable();
            let count = tally.durations.len() as u64;
            Edge {
                from,
                to,
                count,
                errors: tally.errors,
                rate: round(count as f64 / window),
                error_rate: round(tally.errors as f64 / count.max(1) as f64),
                p99_ms: percentile(&tally.durations, 99.0) as f64 / 1000.0,
                mutual_tls: tally.mutual_tls,
                refused: tally.refused,
            }
        })
        .collect();
    Topology {
        window_seconds,
        nodes: out_nodes,
        edges: out_edges,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hop(span: &str, parent: Option<&str>, service: &str, kind: &str, ok: bool, us: i64) -> Hop {
        Hop {
            span_id: span.into(),
            parent_span_id: parent.map(Into::into),
            service: service.into(),
            instance: format!("{service}-1"),
            kind: kind.into(),
            ok,
            duration_us: us,
            topic: None,
            name: "/x".into(),
            peer: None,
            status: if ok { 200 } else { 500 },
        }
    }

    fn call(
        span: &str,
        parent: &str,
        service: &str,
        peer: &str,
        system: &str,
        ok: bool,
        us: i64,
    ) -> Hop {
        Hop {
            name: system.into(),
            peer: Some(peer.into()),
            ..hop(span, Some(parent), service, "client", ok, us)
        }
    }

    fn known(services: &[&str]) -> Known {
        Known {
            services: services.iter().map(|s| s.to_string()).collect(),
            broker: None,
        }
    }

    #[test]
    fn edges_follow_parent_spans() {
        let hops = vec![
            hop("g1", Some("browser"), "gateway", "gateway", true, 3000),
            hop("c1", Some("g1"), "catalog", "server", true, 2000),
            hop("g2", None, "gateway", "gateway", false, 9000),
            hop("c2", Some("g2"), "catalog", "server", false, 8000),
            hop("c3", Some("c2"), "catalog", "client", true, 10),
            // The caller's record has not arrived yet: no edge, not a client call.
            hop("c4", Some("late"), "catalog", "server", true, 10),
            hop("o1", Some("x"), "orders", "producer", true, 100),
            hop("n1", Some("o1"), "notifications", "consumer", true, 200),
        ];
        let topology = compute(&hops, 2.0, &known(&["auth"]));
        let edge = |from: &str, to: &str| {
            topology
                .edges
                .iter()
                .find(|e| e.from == from && e.to == to)
                .cloned()
                .unwrap_or_else(|| panic!("no edge {from} -> {to}"))
        };
        let front = edge(CLIENTS, "gateway");
        assert_eq!((front.count, front.errors, front.rate), (2, 1, 1.0));
        assert_eq!(front.p99_ms, 9.0);
        let back = edge("gateway", "catalog");
        assert_eq!((back.count, back.errors, back.error_rate), (2, 1, 0.5));
        assert_eq!(edge("orders", BROKER).count, 1);
        assert_eq!(edge(BROKER, "notifications").count, 1);
        // catalog -> catalog (an internal span) is no edge.
        assert!(!topology.edges.iter().any(|e| e.from == e.to));
        assert_eq!(topology.edges.len(), 4);
        let ids: Vec<&str> = topology.nodes.iter().map(|n| n.id.as_str()).collect();
        for id in ["auth", "catalog", "gateway", CLIENTS, BROKER] {
            assert!(ids.contains(&id), "{id} in {ids:?}");
        }
        let catalog = topology.nodes.iter().find(|n| n.id == "catalog").unwrap();
        assert_eq!((catalog.count, catalog.errors), (4, 1));
        assert!(!topology
            .edges
            .iter()
            .any(|e| e.from == CLIENTS && e.to == "catalog"));
    }

    /// Calls to databases and caches are edges to nodes of their own, with the callers' numbers;
    /// they do not count as requests the caller served.
    #[test]
    fn peers_are_nodes_with_measured_edges() {
        let hops = vec![
            hop("g1", None, "gateway", "gateway", true, 3000),
            hop("o1", Some("g1"), "orders", "server", true, 2000),
            call("d1", "o1", "orders", "orders-db", "postgres", true, 400),
            hop("g2", None, "gateway", "gateway", true, 3000),
            hop("o2", Some("g2"), "orders", "server", false, 2000),
            call("d2", "o2", "orders", "orders-db", "postgres", false, 1500),
            hop("c1", Some("g1"), "catalog", "server", true, 900),
            call("r1", "c1", "catalog", "redis", "redis", true, 100),
            call("d3", "c1", "catalog", "catalog-db", "sqlite", true, 300),
            // The broker: a consumer hop, and a call from the consumer's handler.
            hop("p1", Some("o1"), "payments", "consumer", true, 500),
            call("d4", "p1", "payments", "payments-db", "sqlite", true, 200),
            // The DNS server reports each query as a server record with no parent.
            hop("q1", None, "dns", "server", true, 50),
        ];
        let topology = compute(
            &hops,
            1.0,
            &Known {
                services: vec![],
                broker: Some("nats".into()),
            },
        );
        let edge = |from: &str, to: &str| {
            topology
                .edges
                .iter()
                .find(|e| e.from == from && e.to == to)
                .cloned()
                .unwrap_or_else(|| panic!("no edge {from} -> {to} in {:?}", topology.edges))
        };
        let node = |id: &str| {
            topology
                .nodes
                .iter()
                .find(|n| n.id == id)
                .cloned()
                .unwrap_or_else(|| panic!("no node {id}"))
        };
        let db = edge("orders", "orders-db");
        assert_eq!((db.count, db.errors, db.error_rate), (2, 1, 0.5));
        assert_eq!(db.p99_ms, 1.5);
        assert_eq!(edge("catalog", "redis").count, 1);
        assert_eq!(edge("catalog", "catalog-db").count, 1);
        assert_eq!(edge("payments", "payments-db").count, 1);
        assert_eq!(edge(BROKER, "payments").count, 1);
        assert_eq!(edge(CLIENTS, "dns").count, 1);
        assert_eq!(edge(CLIENTS, "gateway").count, 2);

        let orders_db = node("orders-db");
        assert_eq!(orders_db.kind, "database");
        assert_eq!((orders_db.count, orders_db.errors), (2, 1));
        assert_eq!(orders_db.label.as_deref(), Some("postgres"));
        assert_eq!(node("catalog-db").label.as_deref(), Some("sqlite"));
        assert_eq!(node("redis").kind, "cache");
        assert_eq!(node("dns").kind, "dns");
        assert_eq!(node(BROKER).label.as_deref(), Some("nats"));
        // The orders service served two requests; its database calls are not among them.
        let orders = node("orders");
        assert_eq!(
            (orders.kind, orders.count, orders.errors),
            ("service", 2, 1)
        );
        assert_eq!(node("catalog").count, 1);
    }

    #[test]
    fn edges_count_mutually_authenticated_and_refused_calls() {
        let orders = "spiffe://stratus.local/service/orders";
        let profile = "spiffe://stratus.local/service/profile";
        let hops = vec![
            hop("a", None, "orders", "server", true, 100),
            Hop {
                peer: Some(orders.into()),
                ..hop("b", Some("a"), "catalog", "server", true, 100)
            },
            hop("c", None, "profile", "server", true, 100),
            Hop {
                peer: Some(profile.into()),
                status: 403,
                ..hop("d", Some("c"), "catalog", "server", true, 100)
            },
            hop("e", None, "gateway", "gateway", true, 100),
            hop("f", Some("e"), "catalog", "server", true, 100),
        ];
        let topology = compute(&hops, 10.0, &Known::default());
        let edge = |from: &str| {
            topology
                .edges
                .iter()
                .find(|e| e.from == from && e.to == "catalog")
                .unwrap()
                .clone()
        };
        assert_eq!((edge("orders").mutual_tls, edge("orders").refused), (1, 0));
        assert_eq!(
            (edge("profile").mutual_tls, edge("profile").refused),
            (1, 1)
        );
        assert_eq!(
            (edge("gateway").mutual_tls, edge("gateway").refused),
            (0, 0)
        );
    }

    #[test]
    fn peer_kinds_follow_what_the_peer_speaks() {
        assert_eq!(peer_kind("sqlite"), "database");
        assert_eq!(peer_kind("postgres"), "database");
        assert_eq!(peer_kind("redis"), "cache");
        assert_eq!(peer_kind("dns"), "dns");
    }
}
