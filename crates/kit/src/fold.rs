//! What a reporter could not send, kept as counts: so the sink's stats and edges still count
//! every request when the records themselves are lost.
//!
//! A reporter's queue is bounded (it must never slow a request), and the sink stores only so
//! many records a second; past that, records used to be dropped, and the sink's per-second
//! aggregates counted only what arrived. Now a record that does not fit the queue, or a batch
//! the sink could not be reached with or refused for overload, is *folded*: added to a small
//! summary per (second started, service, instance, kind, name, link) of a count, an error count,
//! the mutual-TLS and refused counts the topology shows, and a latency [`Sketch`], the same
//! sketch the sink's aggregates keep. The summary travels to the sink with the next flush
//! (`POST /v1/summaries`, [`CONTENT_TYPE`]), which merges it into the same cells as if the
//! records had arrived: counts exact, percentiles within the sketch's 1%. The trace itself (ids,
//! the waterfall) is what is lost.
//!
//! The *link* is what the sink needs to place the hop on the graph without the record's
//! parent: for a call to a database or cache the peer it called; for any other hop its caller,
//! when the hop knows it (a gateway hop and a hop without a parent come from `clients`; under
//! mutual TLS the caller's certificate names its service); otherwise none, and the sink counts
//! the hop in the stats but places no edge for it.
//!
//! Bounded: at most [`MAX_KEYS`] keys, and nothing older than [`SECONDS_KEPT`] (a sink away
//! that long); past either bound a record is dropped and counted
//! (`events_dropped_total{reason="fold_full"}`).
//!
//! ```text
//! summary = "SSU1" entry*
//! entry   = second:i64 count:u64 errors:u64 mutual_tls:u64 refused:u64 link_kind:u8
//!           sketch service instance kind name link                        (5 texts)
//! sketch  = zeros:u64 buckets:u16 (index:u16 count:u32 lo:u32 hi:u32)*
//! text    = length:u16 UTF-8 bytes (link: length 0 when link_kind is 0)
//! ```
//!
//! `link_kind`: 0 none, 1 the caller's service, 2 a peer (the link names a database or cache).
//! Integers little-endian, as in [`crate::event_wire`].

use std::collections::HashMap;

use crate::event_wire::{text, RecordRef, WireError};
use crate::sketch::{Sketch, SketchError};

/// The media type of a summary.
pub const CONTENT_TYPE: &str = "application/vnd.stratus.summary";
/// The first four bytes of a summary (the format's version is the digit).
pub const MAGIC: &[u8; 4] = b"SSU1";
/// Keys a reporter folds into before it drops.
pub const MAX_KEYS: usize = 4_096;
/// Seconds a folded key waits for the sink before it is dropped.
pub const SECONDS_KEPT: i64 = 600;
/// The most records one entry of a summary may count: a billion hops of one key in one second
/// is beyond any reporter, and the bound keeps the sink's sums far from overflowing.
pub const MAX_ENTRY_COUNT: u64 = 1_000_000_000;
/// The caller of a hop that came from outside (the topology's `clients` node).
pub const CLIENTS: &str = "clients";

/// `link_kind` on the wire: no link, the caller's service, a peer.
pub const NO_LINK: u8 = 0;
pub const CALLER: u8 = 1;
pub const PEER: u8 = 2;

/// How a folded hop is placed on the graph.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Link {
    /// Not known: counted in the stats, no edge.
    None,
    /// The service (or `clients`) that called the hop.
    Caller(Box<str>),
    /// The database or cache a `client` hop called; the hop's name says what it speaks.
    Peer(Box<str>),
}

impl Link {
    fn code(&self) -> u8 {
        match self {
            Link::None => NO_LINK,
            Link::Caller(_) => CALLER,
            Link::Peer(_) => PEER,
        }
    }

    fn name(&self) -> &str {
        match self {
            Link::None => "",
            Link::Caller(name) | Link::Peer(name) => name,
        }
    }

    /// The link of one record (see the module's notes).
    pub fn of(record: &RecordRef<'_>) -> Link {
        match (record.kind, record.peer) {
            ("client", Some(peer)) => Link::Peer(peer.into()),
            // The broker's edges follow from the kind alone.
            ("producer" | "consumer", _) => Link::None,
            ("gateway", _) => Link::Caller(CLIENTS.into()),
            _ if record.parent_span_id.is_none() => Link::Caller(CLIENTS.into()),
            (_, Some(peer)) => caller_service(peer).map_or(Link::None, |s| Link::Caller(s.into())),
            _ => Link::None,
        }
    }
}

/// The service a caller's SPIFFE ID names (`spiffe://<domain>/service/<name>`), if it is one.
pub fn caller_service(uri: &str) -> Option<&str> {
    let path = uri.strip_prefix("spiffe://")?;
    let (_, path) = path.split_once('/')?;
    let name = path.strip_prefix("service/")?;
    (!name.is_empty() && !name.contains('/')).then_some(name)
}

/// What one summary key holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub second: i64,
    pub service: Box<str>,
    pub instance: Box<str>,
    pub kind: Box<str>,
    pub name: Box<str>,
    pub link: Link,
}

/// The hops of one key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tally {
    pub count: u64,
    pub errors: u64,
    /// Hops whose caller was known by its certificate, and of those the ones refused (403).
    pub mutual_tls: u64,
    pub refused: u64,
    pub latency: Sketch,
}

impl Tally {
    pub fn merge(&mut self, other: &Tally) {
        self.count += other.count;
        self.errors += other.errors;
        self.mutual_tls += other.mutual_tls;
        self.refused += other.refused;
        self.latency.merge(&other.latency);
    }
}

/// A reporter's summary of folded records.
#[derive(Debug, Default)]
pub struct Fold {
    keys: HashMap<Key, Tally>,
    records: u64,
}

impl Fold {
    /// Records folded and not sent yet.
    pub fn records(&self) -> u64 {
        self.records
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Folds one record; false when it does not fit ([`MAX_KEYS`]): the caller counts it lost.
    pub fn add(&mut self, record: &RecordRef<'_>) -> bool {
        let key = Key {
            second: record.started_us.div_euclid(1_000_000),
            service: record.service.into(),
            instance: record.instance.into(),
            kind: record.kind.into(),
            name: record.name.into(),
            link: Link::of(record),
        };
        let certified = record.peer.is_some() && !matches!(key.link, Link::Peer(_));
        let Some(tally) = self.slot(key) else {
            return false;
        };
        tally.count += 1;
        tally.errors += u64::from(!record.ok);
        tally.mutual_tls += u64::from(certified);
        tally.refused += u64::from(certified && record.status == 403);
        tally
            .latency
            .add(record.duration_us.min(i64::MAX as u64) as i64);
        self.records += 1;
        true
    }

    /// The key's tally, a new one if there is room.
    fn slot(&mut self, key: Key) -> Option<&mut Tally> {
        if !self.keys.contains_key(&key) && self.keys.len() >= MAX_KEYS {
            return None;
        }
        Some(self.keys.entry(key).or_default())
    }

    /// Takes another summary back in (one the sink could not be reached with); returns the
    /// records that did not fit.
    pub fn absorb(&mut self, other: Fold) -> u64 {
        let mut lost = 0;
        for (key, tally) in other.keys {
            match self.slot(key) {
                Some(mine) => {
                    mine.merge(&tally);
                    self.records += tally.count;
                }
                None => lost += tally.count,
            }
        }
        lost
    }

    /// Drops the keys of seconds before `now_s - SECONDS_KEPT`; returns their records.
    pub fn expire(&mut self, now_s: i64) -> u64 {
        let mut lost = 0;
        self.keys.retain(|key, tally| {
            let keep = key.second >= now_s - SECONDS_KEPT;
            if !keep {
                lost += tally.count;
            }
            keep
        });
        self.records -= lost;
        lost
    }

    pub fn entries(&self) -> impl Iterator<Item = (&Key, &Tally)> {
        self.keys.iter()
    }

    /// The summary in its wire form, [`MAGIC`] first.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        for (key, tally) in &self.keys {
            out.extend_from_slice(&key.second.to_le_bytes());
            for n in [tally.count, tally.errors, tally.mutual_tls, tally.refused] {
                out.extend_from_slice(&n.to_le_bytes());
            }
            out.push(key.link.code());
            tally.latency.write(&mut out);
            for value in [&key.service, &key.instance, &key.kind, &key.name] {
                text(&mut out, value);
            }
            text(&mut out, key.link.name());
        }
        out
    }
}

/// One entry of a summary as read, its texts borrowed from the body.
#[derive(Debug, Clone, PartialEq)]
pub struct EntryRef<'a> {
    pub second: i64,
    pub service: &'a str,
    pub instance: &'a str,
    pub kind: &'a str,
    pub name: &'a str,
    /// 0 none, 1 caller, 2 peer, with its name.
    pub link: (u8, &'a str),
    pub tally: Tally,
}

/// Why a body is not a summary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SummaryError {
    #[error("a summary starts with \"SSU1\"")]
    Magic,
    #[error("entry {entry}: {reason}")]
    Entry { entry: usize, reason: String },
    #[error("a summary may carry at most {max} entries")]
    TooMany { max: usize },
}

/// The entries of a summary, at most `max`. Checks the framing and the counts' consistency
/// (errors, mutual TLS and refused within the count; the sketch holding exactly the count);
/// what the texts may be is the reader's business.
pub fn read_summary(body: &[u8], max: usize) -> Result<Vec<EntryRef<'_>>, SummaryError> {
    let mut rest = body.strip_prefix(MAGIC).ok_or(SummaryError::Magic)?;
    let mut entries = Vec::new();
    while !rest.is_empty() {
        if entries.len() == max {
            return Err(SummaryError::TooMany { max });
        }
        let entry = entries.len();
        let fail = |reason: String| SummaryError::Entry { entry, reason };
        let (read, tail) = read_entry(rest).map_err(|e| fail(e.to_string()))?;
        let tally = &read.tally;
        if tally.count > MAX_ENTRY_COUNT {
            return Err(fail(format!("count must be at most {MAX_ENTRY_COUNT}")));
        }
        if tally.count == 0
            || tally.errors > tally.count
            || tally.mutual_tls > tally.count
            || tally.refused > tally.mutual_tls
            || tally.latency.count() != tally.count
        {
            return Err(fail(
                "counts disagree (errors, mutual_tls, refused and the sketch must fit the count)"
                    .into(),
            ));
        }
        if read.link.0 > PEER || (read.link.0 == NO_LINK) != read.link.1.is_empty() {
            return Err(fail(
                "link_kind must be 0 (no link), 1 or 2 with a link".into(),
            ));
        }
        entries.push(read);
        rest = tail;
    }
    Ok(entries)
}

#[derive(Debug, thiserror::Error)]
enum EntryError {
    #[error("the body ends inside it")]
    Truncated,
    #[error("{0}")]
    Sketch(#[from] SketchError),
    #[error("{0}")]
    Text(#[from] WireError),
}

fn read_entry(body: &[u8]) -> Result<(EntryRef<'_>, &[u8]), EntryError> {
    const FIXED: usize = 8 * 5 + 1;
    if body.len() < FIXED {
        return Err(EntryError::Truncated);
    }
    let (fixed, rest) = body.split_at(FIXED);
    let n = |at: usize| u64::from_le_bytes(fixed[at..at + 8].try_into().unwrap_or([0; 8]));
    let (latency, rest) = Sketch::read(rest)?;
    let mut reader = crate::event_wire::TextReader::new(rest);
    let entry = EntryRef {
        second: n(0) as i64,
        tally: Tally {
            count: n(8),
            errors: n(16),
            mutual_tls: n(24),
            refused: n(32),
            latency,
        },
        service: reader.text("service")?,
        instance: reader.text("instance")?,
        kind: reader.text("kind")?,
        name: reader.text("name")?,
        link: (fixed[40], reader.text("link")?),
    };
    Ok((entry, reader.rest()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sketch::Rng;

    fn record<'a>(kind: &'a str, name: &'a str, peer: Option<&'a str>) -> RecordRef<'a> {
        RecordRef {
            trace_id: 1,
            span_id: 2,
            parent_span_id: Some(3),
            service: "catalog",
            instance: "c-1",
            kind,
            name,
            method: Some("GET"),
            status: 200,
            ok: true,
            started_us: 1_800_000_000_250_000,
            duration_us: 1500,
            retries: None,
            cache: None,
            topic: None,
            breaker: None,
            peer,
        }
    }

    #[test]
    fn links_follow_the_topology_rules() {
        let caller = "spiffe://stratus.local/service/orders";
        assert_eq!(
            Link::of(&record("server", "/p", Some(caller))),
            Link::Caller("orders".into())
        );
        assert_eq!(Link::of(&record("server", "/p", None)), Link::None);
        let from_outside = RecordRef {
            parent_span_id: None,
            ..record("server", "/p", None)
        };
        assert_eq!(Link::of(&from_outside), Link::Caller(CLIENTS.into()));
        assert_eq!(
            Link::of(&record("gateway", "catalog", None)),
            Link::Caller(CLIENTS.into())
        );
        assert_eq!(
            Link::of(&record("client", "sqlite", Some("catalog-db"))),
            Link::Peer("catalog-db".into())
        );
        assert_eq!(
            Link::of(&record("producer", "order.placed", None)),
            Link::None
        );
        let operator = "spiffe://stratus.local/operator/alice";
        assert_eq!(
            Link::of(&record("server", "/p", Some(operator))),
            Link::None
        );
    }

    /// Folding many records and sending the summary gives the same tallies (and the same
    /// sketch) as feeding every value directly.
    #[test]
    fn a_folded_summary_reads_back_as_a_direct_feed() {
        let mut rng = Rng(0xf01d);
        let mut fold = Fold::default();
        let mut direct: HashMap<(i64, String, u8), Tally> = HashMap::new();
        let caller = "spiffe://stratus.local/service/gateway";
        for _ in 0..20_000 {
            let second = 1_800_000_000 + (rng.next() % 5) as i64;
            let route = format!("/r{}", rng.next() % 4);
            let status = [200, 200, 403, 500][(rng.next() % 4) as usize];
            let duration = rng.duration().max(0) as u64;
            let peer = rng.next().is_multiple_of(2).then_some(caller);
            let record = RecordRef {
                started_us: second * 1_000_000 + (rng.next() % 1_000_000) as i64,
                duration_us: duration,
                status,
                ok: status < 500,
                ..record("server", &route, peer)
            };
            assert!(fold.add(&record));
            let tally = direct
                .entry((second, route, u8::from(peer.is_some())))
                .or_default();
            tally.count += 1;
            tally.errors += u64::from(status >= 500);
            tally.mutual_tls += u64::from(peer.is_some());
            tally.refused += u64::from(peer.is_some() && status == 403);
            tally.latency.add(duration as i64);
        }
        assert_eq!(fold.records(), 20_000);
        let body = fold.encode();
        let entries = read_summary(&body, 10_000).unwrap();
        assert_eq!(entries.len(), direct.len());
        for entry in entries {
            let key = (entry.second, entry.name.to_string(), entry.link.0);
            assert_eq!(entry.tally, direct[&key], "{key:?}");
            assert_eq!(
                (entry.service, entry.instance, entry.kind),
                ("catalog", "c-1", "server")
            );
        }
    }

    #[test]
    fn keys_and_seconds_are_bounded() {
        let mut fold = Fold::default();
        let names: Vec<String> = (0..MAX_KEYS + 10).map(|i| format!("/r{i}")).collect();
        let added = names
            .iter()
            .filter(|name| fold.add(&record("server", name, None)))
            .count();
        assert_eq!(added, MAX_KEYS);
        // A key already held still takes records.
        assert!(fold.add(&record("server", "/r0", None)));
        assert_eq!(fold.records(), MAX_KEYS as u64 + 1);
        let mut more = Fold::default();
        more.add(&record("server", "/new", None));
        more.add(&record("server", "/r1", None));
        assert_eq!(fold.absorb(more), 1);
        assert_eq!(fold.records(), MAX_KEYS as u64 + 2);
        // Everything was started at 1_800_000_000.
        assert_eq!(fold.expire(1_800_000_000 + SECONDS_KEPT), 0);
        assert_eq!(
            fold.expire(1_800_000_001 + SECONDS_KEPT),
            MAX_KEYS as u64 + 2
        );
        assert!(fold.is_empty());
        assert_eq!(fold.records(), 0);
    }

    #[test]
    fn bad_summaries_are_refused() {
        let mut fold = Fold::default();
        fold.add(&record("server", "/p", None));
        let good = fold.encode();
        assert_eq!(read_summary(&good, 10).unwrap().len(), 1);
        assert_eq!(read_summary(b"SEV1", 10), Err(SummaryError::Magic));
        assert!(read_summary(&good[..good.len() - 1], 10).is_err());
        assert_eq!(
            read_summary(&good, 0),
            Err(SummaryError::TooMany { max: 0 })
        );
        // Errors beyond the count.
        let mut bad = good.clone();
        bad[4 + 16] = 9;
        assert!(matches!(
            read_summary(&bad, 10),
            Err(SummaryError::Entry { entry: 0, .. })
        ));
        // A count the sketch does not hold.
        let mut bad = good.clone();
        bad[4 + 8] = 2;
        assert!(read_summary(&bad, 10).is_err());
        // A count past the bound (the sketch's zeros say so too).
        let mut huge = Fold::default();
        huge.add(&RecordRef {
            duration_us: 0,
            ..record("server", "/p", None)
        });
        let mut huge = huge.encode();
        let count = (MAX_ENTRY_COUNT + 1).to_le_bytes();
        huge[4 + 8..4 + 16].copy_from_slice(&count);
        huge[4 + 41..4 + 49].copy_from_slice(&count);
        assert!(matches!(
            read_summary(&huge, 10),
            Err(SummaryError::Entry { entry: 0, .. })
        ));
        huge[4 + 41..4 + 49].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(
            read_summary(&huge, 10).is_err(),
            "zeros past the sketch's bound"
        );
        // A link kind past 2.
        let mut bad = good;
        bad[4 + 40] = 3;
        assert!(read_summary(&bad, 10).is_err());
    }

    #[test]
    fn caller_services_come_from_service_ids_only() {
        assert_eq!(caller_service("spiffe://d/service/orders"), Some("orders"));
        assert_eq!(caller_service("spiffe://d/operator/alice"), None);
        assert_eq!(caller_service("spiffe://d/service/"), None);
        assert_eq!(caller_service("orders"), None);
    }
}
