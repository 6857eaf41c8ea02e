//! Who called whom, decided as records arrive: the topology's edges, kept as aggregates like the
//! stats instead of recomputed from a window's records on every query.
//!
//! A record whose parent span belongs to service A while the record belongs to B is one call
//! A -> B (the rules are [`crate::topology`]'s, which computes the same graph from stored
//! records). The difficulty is order: reporters flush on their own schedules (every 200 ms), and
//! a callee finishes before its caller, so a child's record usually arrives *before* its
//! parent's. The linker therefore remembers, for a few seconds:
//!
//! - **owners**: which service each recent span belongs to (a span id is 8 bytes; the service
//!   an interned `Arc<str>`), in two generations turned every [`OWNER_TURN`], so a span is
//!   known for between one and two turns without a timestamp per entry;
//! - **waiting**: records whose parent has not arrived yet, by parent span. The parent's arrival
//!   places them. One still waiting after [`WAIT`] (a gateway record: [`WAIT_AT_EDGE`], its
//!   parent is usually the browser's) is placed as the window computation would place it: a
//!   gateway record came from `clients`, one whose caller presented a service's certificate
//!   (its `peer`, under mutual TLS) came from that service, any other is left out. The parent's
//!   record may never come because its reporter folded it (`kit::fold`): its summary then
//!   carries the parent's own edge, and the certificate this one's.
//!
//! Memory at 30,000 records a second: owners about 300,000 entries (two 5 s generations), the
//! waiting a few thousand (a flush interval's worth of children).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::record::Row;
use crate::topology::{BROKER, CLIENTS};

/// How long a generation of owners is the current one.
pub const OWNER_TURN: i64 = 5;
/// How long a record waits for its parent's record before it is placed without it.
pub const WAIT: i64 = 10;
/// The same for a gateway record: its parent is normally the caller's own span, which never
/// arrives, so it should count as a call from `clients` soon.
pub const WAIT_AT_EDGE: i64 = 2;
/// Interned names before the table starts over (names then still work, as new copies).
const MAX_NAMES: usize = 10_000;

/// One call placed on the graph, filed under the callee record's start.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub started_us: i64,
    pub from: Arc<str>,
    pub to: Arc<str>,
    pub ok: bool,
    pub duration_us: i64,
    /// The callee knew its caller by certificate (mutual TLS).
    pub mutual_tls: bool,
    /// ... and refused it (403).
    pub refused: bool,
    /// A call to a peer that reports nothing itself (a database, a cache): what it speaks.
    pub system: Option<Arc<str>>,
}

/// A record waiting for its parent's.
#[derive(Debug)]
struct Waiting {
    arrived_s: i64,
    service: Arc<str>,
    gateway: bool,
    started_us: i64,
    ok: bool,
    duration_us: i64,
    mutual_tls: bool,
    refused: bool,
    /// The service the caller's certificate named, if it did.
    caller: Option<Arc<str>>,
}

impl Waiting {
    fn called_by(self, caller: Arc<str>) -> Option<Call> {
        (caller != self.service).then(|| self.placed(caller))
    }

    fn placed(self, from: Arc<str>) -> Call {
        Call {
            started_us: self.started_us,
            from,
            to: self.service,
            ok: self.ok,
            duration_us: self.duration_us,
            mutual_tls: self.mutual_tls,
            refused: self.refused,
            system: None,
        }
    }
}

#[derive(Debug)]
pub struct Linker {
    names: HashSet<Arc<str>>,
    clients: Arc<str>,
    broker: Arc<str>,
    owners: HashMap<u64, Arc<str>>,
    previous_owners: HashMap<u64, Arc<str>>,
    turned_s: i64,
    waiting: HashMap<u64, Vec<Waiting>>,
}

/// A span id as the key it is kept under: its 16 hex digits as a number (records are validated
/// to carry exactly that); anything else hashed.
fn span_key(id: &str) -> u64 {
    u64::from_str_radix(id, 16).unwrap_or_else(|_| {
        use std::hash::{BuildHasher, BuildHasherDefault};
        BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(id)
    })
}

impl Linker {
    pub fn new(now_s: i64) -> Self {
        Self {
            names: HashSet::new(),
            clients: Arc::from(CLIENTS),
            broker: Arc::from(BROKER),
            owners: HashMap::new(),
            previous_owners: HashMap::new(),
            turned_s: now_s,
            waiting: HashMap::new(),
        }
    }

    fn name(&mut self, name: &str) -> Arc<str> {
        if let Some(known) = self.names.get(name) {
            return known.clone();
        }
        if self.names.len() >= MAX_NAMES {
            self.names.clear();
        }
        let name: Arc<str> = Arc::from(name);
        self.names.insert(name.clone());
        name
    }

    fn owner(&self, span: u64) -> Option<&Arc<str>> {
        self.owners
            .get(&span)
            .or_else(|| self.previous_owners.get(&span))
    }

    /// Places one arriving record's call (now, or once its parent arrives), and any waiting
    /// records that named it as their parent.
    pub fn arrive(&mut self, row: &Row, now_s: i64, out: &mut Vec<Call>) {
        self.turn(now_s);
        let service = self.name(&row.service);
        let span = span_key(&row.span_id);
        let call = |from: Arc<str>, to: Arc<str>| Call {
            started_us: row.started_us,
            from,
            to,
            ok: row.ok,
            duration_us: row.duration_us,
            mutual_tls: row.peer.is_some(),
            refused: row.peer.is_some() && row.status == 403,
            system: None,
        };
        match (row.kind.as_str(), row.peer.as_deref()) {
            // A call to a database or cache: an edge to a node of its own, the caller's numbers.
            ("client", Some(peer)) => {
                let peer = self.name(peer);
                out.push(Call {
                    mutual_tls: false,
                    refused: false,
                    system: Some(self.name(&row.name)),
                    ..call(service.clone(), peer)
                });
            }
            ("producer", _) => out.push(call(service.clone(), self.broker.clone())),
            ("consumer", _) => out.push(call(self.broker.clone(), service.clone())),
            _ => match row.parent_span_id.as_deref().map(span_key) {
                None => out.push(call(self.clients.clone(), service.clone())),
                Some(parent) => match self.owner(parent) {
                    Some(caller) if *caller == service => {}
                    Some(caller) => out.push(call(caller.clone(), service.clone())),
                    None => {
                        let caller = row
                            .peer
                            .as_deref()
                            .and_then(stratus_kit::fold::caller_service)
                            .map(|caller| self.name(caller));
                        self.waiting.entry(parent).or_default().push(Waiting {
                            arrived_s: now_s,
                            service: service.clone(),
                            gateway: row.kind == "gateway",
                            started_us: row.started_us,
                            ok: row.ok,
                            duration_us: row.duration_us,
                            mutual_tls: row.peer.is_some(),
                            refused: row.peer.is_some() && row.status == 403,
                            caller,
                        });
                    }
                },
            },
        }
        if let Some(children) = self.waiting.remove(&span) {
            out.extend(
                children
                    .into_iter()
                    .filter_map(|child| child.called_by(service.clone())),
            );
        }
        self.owners.insert(span, service);
    }

    fn turn(&mut self, now_s: i64) {
        if now_s - self.turned_s >= OWNER_TURN {
            self.previous_owners = std::mem::take(&mut self.owners);
            self.turned_s = now_s;
        }
    }

    /// Places the records that waited too long for their parents: a gateway's as a call from
    /// `clients`, any other left out. Once a second.
    pub fn expire(&mut self, now_s: i64, out: &mut Vec<Call>) {
        self.turn(now_s);
        let clients = self.clients.clone();
        self.waiting.retain(|_, children| {
            let mut kept = Vec::new();
            for child in children.drain(..) {
                let waited = now_s - child.arrived_s;
                if child.gateway && waited >= WAIT_AT_EDGE {
                    out.push(child.placed(clients.clone()));
                } else if waited < WAIT {
                    kept.push(child);
                } else if let Some(caller) = child.caller.clone() {
                    out.extend(child.called_by(caller));
                }
            }
            *children = kept;
            !children.is_empty()
        });
    }

    /// Spans remembered and records waiting (for the footprint on `/metrics`).
    pub fn held(&self) -> (usize, usize) {
        (
            self.owners.len() + self.previous_owners.len(),
            self.waiting.values().map(Vec::len).sum(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn row(span: &str, parent: Option<&str>, service: &str, kind: &str) -> Row {
        let mut row = crate::record::validate(crate::record::tests::record()).unwrap();
        row.span_id = span.into();
        row.parent_span_id = parent.map(Into::into);
        row.service = service.into();
        row.kind = kind.into();
        row.peer = None;
        row
    }

    fn edges(calls: &[Call]) -> Vec<(String, String)> {
        let mut edges: Vec<(String, String)> = calls
            .iter()
            .map(|c| (c.from.to_string(), c.to.to_string()))
            .collect();
        edges.sort();
        edges
    }

    fn pair(from: &str, to: &str) -> (String, String) {
        (from.to_string(), to.to_string())
    }

    #[test]
    fn a_child_arriving_first_waits_for_its_parent() {
        let mut linker = Linker::new(0);
        let mut out = Vec::new();
        linker.arrive(
            &row(
                "00000000000000c1",
                Some("00000000000000a1"),
                "catalog",
                "server",
            ),
            0,
            &mut out,
        );
        assert!(out.is_empty(), "the caller is not known yet");
        assert_eq!(linker.held().1, 1);
        linker.arrive(
            &row(
                "00000000000000a1",
                Some("00000000000000f1"),
                "gateway",
                "gateway",
            ),
            0,
            &mut out,
        );
        assert_eq!(edges(&out), vec![pair("gateway", "catalog")]);
        // The gateway's own parent (the browser's span) never arrives: `clients`, soon.
        out.clear();
        linker.expire(1, &mut out);
        assert!(out.is_empty());
        linker.expire(WAIT_AT_EDGE, &mut out);
        assert_eq!(edges(&out), vec![pair(CLIENTS, "gateway")]);
        assert_eq!(linker.held().1, 0);
    }

    #[test]
    fn a_child_arriving_after_its_parent_is_placed_at_once() {
        let mut linker = Linker::new(0);
        let mut out = Vec::new();
        linker.arrive(
            &row("00000000000000a1", None, "gateway", "gateway"),
            0,
            &mut out,
        );
        linker.arrive(
            &row(
                "00000000000000c1",
                Some("00000000000000a1"),
                "catalog",
                "server",
            ),
            3,
            &mut out,
        );
        // An internal span of catalog's own is no edge.
        linker.arrive(
            &row(
                "00000000000000c2",
                Some("00000000000000c1"),
                "catalog",
                "client",
            ),
            3,
            &mut out,
        );
        assert_eq!(
            edges(&out),
            vec![pair(CLIENTS, "gateway"), pair("gateway", "catalog")]
        );
    }

    #[test]
    fn owners_are_forgotten_after_two_turns_and_orphans_left_out() {
        let mut linker = Linker::new(0);
        let mut out = Vec::new();
        linker.arrive(
            &row("00000000000000a1", None, "orders", "server"),
            0,
            &mut out,
        );
        linker.expire(OWNER_TURN, &mut out);
        linker.expire(2 * OWNER_TURN, &mut out);
        out.clear();
        linker.arrive(
            &row(
                "00000000000000c1",
                Some("00000000000000a1"),
                "catalog",
                "server",
            ),
            2 * OWNER_TURN,
            &mut out,
        );
        assert!(out.is_empty());
        linker.expire(2 * OWNER_TURN + WAIT, &mut out);
        assert!(
            out.is_empty(),
            "a server record whose caller never came is left out"
        );
        assert_eq!(linker.held(), (1, 0));
    }

    #[test]
    fn an_orphan_whose_caller_had_a_certificate_is_placed_from_it() {
        let mut linker = Linker::new(0);
        let mut out = Vec::new();
        let mut child = row(
            "00000000000000c1",
            Some("00000000000000a1"),
            "catalog",
            "server",
        );
        child.peer = Some("spiffe://stratus.local/service/gateway".into());
        linker.arrive(&child, 0, &mut out);
        linker.expire(WAIT - 1, &mut out);
        assert!(out.is_empty(), "it waits for its parent first");
        linker.expire(WAIT, &mut out);
        assert_eq!(edges(&out), vec![pair("gateway", "catalog")]);
        assert!(out[0].mutual_tls);
        assert_eq!(linker.held().1, 0);
    }

    #[test]
    fn broker_hops_and_peer_calls_are_placed_at_once() {
        let mut linker = Linker::new(0);
        let mut out = Vec::new();
        linker.arrive(
            &row(
                "00000000000000a1",
                Some("00000000000000ff"),
                "orders",
                "producer",
            ),
            0,
            &mut out,
        );
        linker.arrive(
            &row(
                "00000000000000b1",
                Some("00000000000000a1"),
                "payments",
                "consumer",
            ),
            0,
            &mut out,
        );
        let mut call = row(
            "00000000000000b2",
            Some("00000000000000b1"),
            "payments",
            "client",
        );
        call.peer = Some("payments-db".into());
        call.name = "sqlite".into();
        linker.arrive(&call, 0, &mut out);
        assert_eq!(
            edges(&out),
            vec![
                pair(BROKER, "payments"),
                pair("orders", BROKER),
                pair("payments", "payments-db")
            ]
        );
        assert_eq!(out[2].system.as_deref(), Some("sqlite"));
    }
}
