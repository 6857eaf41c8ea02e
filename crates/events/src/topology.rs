//! The live topology: who calls whom, how often, how often it fails and how slowly, derived from
//! parent and child spans.
//!
//! A record whose parent span belongs to service A while the record itself belongs to B is one
//! call A -> B. A record with no parent at all, or a gateway record whose parent is not in the
//! window (the caller's own span), came from outside: `clients` -> B. Any other record whose
//! parent is not (yet) in the window is left out: reporters flush on their own schedules, so a
//! callee's record often arrives before its caller's. Message hops go through the broker: a
//! `producer` record is A -> `broker`, a `consumer` record is `broker` -> B. The edge's numbers are the callee's records: count, rate over the window,
//! errors and p99 latency.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::stats::percentile;
use crate::store::Hop;

/// The node that stands for callers outside the system (browsers, scripts).
pub const CLIENTS: &str = "clients";
/// The node that stands for the message broker.
pub const BROKER: &str = "broker";

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
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Node {
    pub id: String,
    /// `clients`, `service` or `broker`.
    pub kind: &'static str,
    /// Records this node handled in the window (0 for clients and the broker).
    pub count: u64,
    pub rate: f64,
    pub errors: u64,
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
}

/// Builds the graph of one window's hops. `extra` names services that exist (from the registry)
/// even if they handled nothing in the window.
pub fn compute(hops: &[Hop], window_seconds: f64, extra: &[String]) -> Topology {
    let owner: HashMap<&str, &str> = hops
        .iter()
        .map(|h| (h.span_id.as_str(), h.service.as_str()))
        .collect();
    let mut edges: BTreeMap<(String, String), Tally> = BTreeMap::new();
    let mut nodes: BTreeMap<String, Tally> = BTreeMap::new();
    for name in extra {
        nodes.entry(name.clone()).or_default();
    }
    for hop in hops {
        let node = nodes.entry(hop.service.clone()).or_default();
        node.durations.push(hop.duration_us);
        node.errors += u64::from(!hop.ok);
        let (from, to) = match hop.kind.as_str() {
            "producer" => (hop.service.as_str(), BROKER),
            "consumer" => (BROKER, hop.service.as_str()),
            _ => match hop.parent_span_id.as_deref().map(|p| owner.get(p)) {
                Some(Some(parent)) if *parent == hop.service => continue,
                Some(Some(parent)) => (*parent, hop.service.as_str()),
                None => (CLIENTS, hop.service.as_str()),
                Some(None) if hop.kind == "gateway" => (CLIENTS, hop.service.as_str()),
                Some(None) => continue,
            },
        };
        let tally = edges.entry((from.to_string(), to.to_string())).or_default();
        tally.durations.push(hop.duration_us);
        tally.errors += u64::from(!hop.ok);
    }
    let window = window_seconds.max(1e-3);
    let round = |x: f64| (x * 1000.0).round() / 1000.0;
    let mut out_nodes: Vec<Node> = nodes
        .into_iter()
        .map(|(id, tally)| Node {
            kind: "service",
            count: tally.durations.len() as u64,
            rate: round(tally.durations.len() as f64 / window),
            errors: tally.errors,
            id,
        })
        .collect();
    for (id, kind) in [(CLIENTS, "clients"), (BROKER, "broker")] {
        if edges.keys().any(|(f, t)| f == id || t == id) {
            out_nodes.push(Node {
                id: id.to_string(),
                kind,
                count: 0,
                rate: 0.0,
                errors: 0,
            });
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
        let topology = compute(&hops, 2.0, &["auth".to_string()]);
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
}
