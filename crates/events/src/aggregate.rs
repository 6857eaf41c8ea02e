//! What `/v1/stats`, `/v1/instances` and the live snapshot's stats are computed from: per
//! second and per key, a count, an error count and a latency [`Sketch`], fed by the writer as
//! batches are committed, so a query merges buckets instead of reading the window's records.
//!
//! Keys: (service, instance) and (service, route name), for the hops services handled (a
//! `client` record with a `peer`, a call to a database or cache, is not one: see
//! [`served`]). A service's numbers are its instances' merged (merging sketches is lossless).
//!
//! Time: the last [`SECONDS_KEPT`] seconds are kept per second, so the dashboard's minute and
//! any window up to that long are second-exact; older seconds are rolled up into minutes, kept
//! for the retention, so an hour's window merges 120 + 58 buckets per key, not 3,600. A window
//! longer than [`SECONDS_KEPT`] has its far edge rounded out to the minute. A record is filed
//! under the second it started; one older than the retention is not counted, and one dated
//! more than [`FUTURE`] seconds ahead (a skewed clock) is filed [`FUTURE`] seconds ahead, so no
//! reporter can make the sink keep buckets for a far future.
//!
//! One `std::sync::Mutex` guards it all: the writer holds it for the time it takes to file a
//! committed batch (250-350 ns a record, release), a query for the merge (microseconds a
//! bucket).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::links::{Call, Linker};
use crate::record::Row;
use crate::sketch::{Merger, Point, Sketch};
use crate::stats::{InstanceStats, ServiceStats, Summary};
use crate::topology::{self, Edge, Known, Node, Topology, BROKER};
use stratus_kit::fold::{self, EntryRef};

/// Seconds kept per second before they are rolled up into minutes.
pub const SECONDS_KEPT: i64 = 120;
/// How far ahead of the sink's clock a record may be filed.
pub const FUTURE: i64 = 60;
/// Distinct routes one service keeps per bucket; more are counted under [`OTHER_ROUTES`], so
/// names that are not routes (an OTLP importer's span names) cannot grow the sink without bound.
pub const MAX_ROUTES: usize = 500;
pub const OTHER_ROUTES: &str = "(other)";
/// Distinct instances one service keeps per bucket, and distinct services per bucket: a
/// reporter names its own instance (a service may invent one per record, an OTLP importer
/// brings any), so these are bounded like routes, the excess counted under [`OTHER`].
pub const MAX_INSTANCES: usize = 1_000;
pub const MAX_SERVICES: usize = 1_000;
pub const OTHER: &str = "(other)";
/// Distinct edges (caller, callee) per bucket; more are counted as one from [`OTHER`] to
/// [`OTHER`].
pub const MAX_EDGES: usize = 2_000;

/// Count, errors and latencies of one key over one bucket (or a merge of buckets).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Cell {
    pub count: u64,
    pub errors: u64,
    pub latency: Sketch,
}

impl Cell {
    fn add(&mut self, ok: bool, duration: Point) {
        self.count += 1;
        self.errors += u64::from(!ok);
        self.latency.add_point(duration);
    }

    pub fn merge(&mut self, other: &Cell) {
        self.count += other.count;
        self.errors += other.errors;
        self.latency.merge(&other.latency);
    }

    pub fn summary(&self) -> Summary {
        // Percentiles in ms, to the nanosecond: the sketch's answer is not a whole µs.
        let ms = |p| (self.latency.percentile(p) * 1000.0).round() / 1_000_000.0;
        Summary {
            count: self.count,
            errors: self.errors,
            error_rate: if self.count == 0 {
                0.0
            } else {
                self.errors as f64 / self.count as f64
            },
            p50_ms: ms(50.0),
            p95_ms: ms(95.0),
            p99_ms: ms(99.0),
        }
    }

    fn heap_bytes(&self) -> usize {
        self.latency.heap_bytes()
    }
}

/// One edge's calls over one bucket: the callee's numbers (for a peer, the caller's).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EdgeCell {
    pub calls: Cell,
    /// Calls whose caller the callee knew by its certificate, and of those the ones refused.
    pub mutual_tls: u64,
    pub refused: u64,
    /// For an edge to a peer (a database, a cache): what the peer speaks (`postgres`).
    pub system: Option<Box<str>>,
}

impl EdgeCell {
    fn add(&mut self, call: &Call) {
        self.calls.add(call.ok, Point::of(call.duration_us));
        self.mutual_tls += u64::from(call.mutual_tls);
        self.refused += u64::from(call.refused);
        if self.system.is_none() {
            self.system = call.system.as_deref().map(Into::into);
        }
    }

    fn merge(&mut self, other: &EdgeCell) {
        self.calls.merge(&other.calls);
        self.mutual_tls += other.mutual_tls;
        self.refused += other.refused;
        if self.system.is_none() {
            self.system.clone_from(&other.system);
        }
    }
}

/// Edges by caller, then callee.
type Edges = HashMap<Box<str>, HashMap<Box<str>, EdgeCell>>;

#[derive(Debug, Default, Clone)]
struct ServiceCells {
    instances: HashMap<Box<str>, Cell>,
    routes: HashMap<Box<str>, Cell>,
}

impl ServiceCells {
    fn merge(&mut self, other: &ServiceCells) {
        for (instance, cell) in &other.instances {
            let instance = self.instance_key(instance);
            merge_into(&mut self.instances, &instance, cell);
        }
        for (route, cell) in &other.routes {
            let route = self.route_key(route);
            merge_into(&mut self.routes, &route, cell);
        }
    }

    /// The key a route is counted under in this bucket: itself, or [`OTHER_ROUTES`] when the
    /// bucket already has [`MAX_ROUTES`] others.
    fn route_key(&self, route: &str) -> Box<str> {
        if self.routes.contains_key(route) || self.routes.len() < MAX_ROUTES {
            route.into()
        } else {
            OTHER_ROUTES.into()
        }
    }
}

impl ServiceCells {
    /// The key an instance is counted under in this bucket: itself, or [`OTHER`] when the
    /// bucket already has [`MAX_INSTANCES`] others.
    fn instance_key(&self, instance: &str) -> Box<str> {
        bounded_key(&self.instances, instance, MAX_INSTANCES)
    }
}

/// `key` itself when `cells` has it or room for it, else [`OTHER`].
fn bounded_key<V>(cells: &HashMap<Box<str>, V>, key: &str, max: usize) -> Box<str> {
    if cells.contains_key(key) || cells.len() < max {
        key.into()
    } else {
        OTHER.into()
    }
}

fn merge_into(cells: &mut HashMap<Box<str>, Cell>, key: &str, cell: &Cell) {
    match cells.get_mut(key) {
        Some(mine) => mine.merge(cell),
        None => {
            cells.insert(key.into(), cell.clone());
        }
    }
}

/// One second's or one minute's cells, by service, and its edges.
#[derive(Debug, Default, Clone)]
struct Bucket {
    services: HashMap<Box<str>, ServiceCells>,
    edges: Edges,
    /// How many (caller, callee) cells `edges` holds.
    edge_count: usize,
}

impl Bucket {
    fn add(&mut self, service: &str, instance: &str, route: &str, ok: bool, duration_us: i64) {
        let duration_us = Point::of(duration_us);
        let cells = match self.services.get_mut(service) {
            Some(cells) => cells,
            None => {
                let key = bounded_key(&self.services, service, MAX_SERVICES);
                self.services.entry(key).or_default()
            }
        };
        match cells.instances.get_mut(instance) {
            Some(cell) => cell.add(ok, duration_us),
            None => {
                let key = cells.instance_key(instance);
                cells.instances.entry(key).or_default().add(ok, duration_us);
            }
        }
        match cells.routes.get_mut(route) {
            Some(cell) => cell.add(ok, duration_us),
            None => {
                let key = cells.route_key(route);
                cells.routes.entry(key).or_default().add(ok, duration_us);
            }
        }
    }

    /// Adds a cell of records folded by a reporter: the same keys (and bounds) as
    /// [`Bucket::add`] for each of its records.
    fn merge_cell(&mut self, service: &str, instance: &str, route: &str, cell: &Cell) {
        let key = bounded_key(&self.services, service, MAX_SERVICES);
        let cells = self.services.entry(key).or_default();
        let instance = cells.instance_key(instance);
        merge_into(&mut cells.instances, &instance, cell);
        let route = cells.route_key(route);
        merge_into(&mut cells.routes, &route, cell);
    }

    /// The cell of the edge `from` -> `to`, or of [`OTHER`] -> [`OTHER`] when the bucket holds
    /// [`MAX_EDGES`] others.
    fn edge(&mut self, from: &str, to: &str) -> &mut EdgeCell {
        let known = self
            .edges
            .get(from)
            .is_some_and(|callees| callees.contains_key(to));
        let (from, to) = if known || self.edge_count < MAX_EDGES {
            (from, to)
        } else {
            (OTHER, OTHER)
        };
        let callees = self.edges.entry(from.into()).or_default();
        if !callees.contains_key(to) {
            self.edge_count += 1;
        }
        callees.entry(to.into()).or_default()
    }

    fn merge(&mut self, other: &Bucket) {
        for (from, callees) in &other.edges {
            for (to, cell) in callees {
                self.edge(from, to).merge(cell);
            }
        }
        for (service, cells) in &other.services {
            match self.services.get_mut(service) {
                Some(mine) => mine.merge(cells),
                None => {
                    let key = bounded_key(&self.services, service, MAX_SERVICES);
                    self.services.entry(key).or_default().merge(cells);
                }
            }
        }
    }

    fn keys_and_bytes(&self) -> (usize, usize) {
        let mut keys = 0;
        let mut bytes = 0;
        for (service, cells) in &self.services {
            for (name, cell) in cells.instances.iter().chain(&cells.routes) {
                keys += 1;
                bytes += std::mem::size_of::<Cell>() + cell.heap_bytes() + name.len();
            }
            bytes += service.len() + std::mem::size_of::<ServiceCells>();
        }
        for (from, callees) in &self.edges {
            for (to, cell) in callees {
                keys += 1;
                bytes += std::mem::size_of::<EdgeCell>()
                    + cell.calls.heap_bytes()
                    + from.len()
                    + to.len();
            }
        }
        (keys, bytes)
    }
}

/// Whether a record is a hop a service handled (counted in the stats): not a `client` record
/// with a `peer`, which is the service's calls to a database or cache.
pub fn served(kind: &str, peer: Option<&str>) -> bool {
    !(kind == "client" && peer.is_some())
}

#[derive(Debug)]
struct Inner {
    retention_s: i64,
    /// The newest second the buckets were rolled up for.
    now_s: i64,
    seconds: BTreeMap<i64, Bucket>,
    /// By minute number (unix seconds / 60).
    minutes: BTreeMap<i64, Bucket>,
    /// Places each record's call on the graph as records arrive (crate::links).
    linker: Linker,
    /// The linker's output, reused between batches.
    calls: Vec<Call>,
}

impl Inner {
    /// Rolls seconds older than [`SECONDS_KEPT`] into their minutes and drops minutes past the
    /// retention.
    fn advance(&mut self, now_s: i64) {
        if now_s <= self.now_s {
            return;
        }
        self.now_s = now_s;
        let keep_from = now_s - SECONDS_KEPT;
        let kept = self.seconds.split_off(&keep_from);
        let old = std::mem::replace(&mut self.seconds, kept);
        for (second, bucket) in old {
            self.minutes
                .entry(second.div_euclid(60))
                .or_default()
                .merge(&bucket);
        }
        // A minute goes once all of it is past the retention.
        let first_minute = (now_s - self.retention_s).div_euclid(60);
        self.minutes = self.minutes.split_off(&first_minute);
    }

    fn bucket_for(&mut self, second: i64) -> Option<&mut Bucket> {
        let second = second.min(self.now_s + FUTURE);
        if second < self.now_s - self.retention_s {
            None
        } else if second < self.now_s - SECONDS_KEPT {
            Some(self.minutes.entry(second.div_euclid(60)).or_default())
        } else {
            Some(self.seconds.entry(second).or_default())
        }
    }

    /// Files the calls the linker placed.
    fn file_calls(&mut self) {
        let calls = std::mem::take(&mut self.calls);
        for call in &calls {
            if let Some(bucket) = self.bucket_for(call.started_us.div_euclid(1_000_000)) {
                bucket.edge(&call.from, &call.to).add(call);
            }
        }
        self.calls = calls;
        self.calls.clear();
    }

    /// Files one entry of a reporter's summary (records it folded instead of sending, see
    /// `kit::fold`): into the same cells and edges its records would have gone to.
    fn file_folded(&mut self, entry: &EntryRef<'_>) {
        let (link_kind, link) = entry.link;
        let peer = link_kind == fold::PEER;
        let Some(bucket) = self.bucket_for(entry.second) else {
            return;
        };
        let cell = Cell {
            count: entry.tally.count,
            errors: entry.tally.errors,
            latency: entry.tally.latency.clone(),
        };
        if served(entry.kind, peer.then_some(link)) {
            bucket.merge_cell(entry.service, entry.instance, entry.name, &cell);
        }
        // The edge, by links.rs's rules: a peer's from the caller, the broker's by kind, any
        // other from the caller the hop knew (none when it did not).
        let (from, to, system) = match (entry.kind, link_kind) {
            (_, fold::PEER) => (entry.service, link, Some(entry.name)),
            ("producer", _) => (entry.service, BROKER, None),
            ("consumer", _) => (BROKER, entry.service, None),
            (_, fold::CALLER) if link != entry.service => (link, entry.service, None),
            _ => return,
        };
        let certified = !peer;
        bucket.edge(from, to).merge(&EdgeCell {
            calls: cell,
            mutual_tls: if certified { entry.tally.mutual_tls } else { 0 },
            refused: if certified { entry.tally.refused } else { 0 },
            system: system.map(Into::into),
        });
    }

    /// Files one record: its stats if it is a hop a service handled, and its call.
    fn file_row(&mut self, row: &Row, now_s: i64) {
        if served(&row.kind, row.peer.as_deref()) {
            self.file(
                row.started_us,
                &row.service,
                &row.instance,
                &row.name,
                row.ok,
                row.duration_us,
            );
        }
        self.linker.arrive(row, now_s, &mut self.calls);
    }

    fn file(
        &mut self,
        started_us: i64,
        service: &str,
        instance: &str,
        route: &str,
        ok: bool,
        duration_us: i64,
    ) {
        if let Some(bucket) = self.bucket_for(started_us.div_euclid(1_000_000)) {
            bucket.add(service, instance, route, ok, duration_us);
        }
    }

    /// The buckets of the window starting at `since_s`: its seconds, and when it reaches past
    /// the seconds kept, the minutes it overlaps.
    fn window(&self, since_s: i64) -> impl Iterator<Item = &Bucket> {
        let first_minute = if since_s >= self.now_s - SECONDS_KEPT {
            i64::MAX
        } else {
            since_s.div_euclid(60)
        };
        self.minutes
            .range(first_minute..)
            .chain(self.seconds.range(since_s..))
            .map(|(_, bucket)| bucket)
    }
}

/// Per-second and per-minute aggregates of every stored record: cheap to clone, shared by the
/// writer (which feeds it) and the queries.
#[derive(Debug, Clone)]
pub struct Aggregates {
    inner: Arc<Mutex<Inner>>,
}

/// How much the aggregates hold: for `/metrics`-style reporting and ARCHITECTURE.md's figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    pub second_buckets: usize,
    pub minute_buckets: usize,
    /// (key, bucket) cells, edges among them.
    pub cells: usize,
    pub bytes: usize,
    /// Recent spans whose owners the linker remembers, and records waiting for their callers'.
    pub spans: usize,
    pub waiting: usize,
}

fn now_s() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl Aggregates {
    /// Empty aggregates keeping `retention` of history.
    pub fn new(retention: std::time::Duration) -> Self {
        Self::at(retention, now_s())
    }

    /// As [`Aggregates::new`], with the clock at `now_s` (tests).
    pub fn at(retention: std::time::Duration, now_s: i64) -> Self {
        let retention_s = retention.as_secs().clamp(1, i64::MAX as u64 / 2) as i64;
        Self {
            inner: Arc::new(Mutex::new(Inner {
                retention_s,
                now_s,
                seconds: BTreeMap::new(),
                minutes: BTreeMap::new(),
                linker: Linker::new(now_s),
                calls: Vec::new(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while filing leaves at worst one record half-counted: keep serving.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Files a committed batch.
    pub fn add(&self, rows: &[Row]) {
        self.add_at(rows, now_s());
    }

    /// As [`Aggregates::add`], with the clock at `now_s`.
    pub fn add_at(&self, rows: &[Row], now_s: i64) {
        let mut inner = self.lock();
        inner.advance(now_s);
        for row in rows {
            inner.file_row(row, now_s);
        }
        inner.file_calls();
    }

    /// Files a reporter's summary of folded records.
    pub fn add_folded(&self, entries: &[EntryRef<'_>]) {
        self.add_folded_at(entries, now_s());
    }

    /// As [`Aggregates::add_folded`], with the clock at `now_s`.
    pub fn add_folded_at(&self, entries: &[EntryRef<'_>], now_s: i64) {
        let mut inner = self.lock();
        inner.advance(now_s);
        for entry in entries {
            inner.file_folded(entry);
        }
    }

    /// Per-service and per-instance stats of the records started since `since_us` (the same
    /// shape [`crate::stats::compute`] gives from raw records).
    pub fn stats(&self, since_us: i64) -> Vec<ServiceStats> {
        self.stats_at(since_us, now_s())
    }

    pub fn stats_at(&self, since_us: i64, now_s: i64) -> Vec<ServiceStats> {
        let mut merging: BTreeMap<&str, BTreeMap<&str, (u64, u64, Merger)>> = BTreeMap::new();
        let mut inner = self.lock();
        inner.advance(now_s);
        for bucket in inner.window(since_us.div_euclid(1_000_000)) {
            for (service, cells) in &bucket.services {
                let merged = merging.entry(service).or_default();
                for (instance, cell) in &cells.instances {
                    let (count, errors, latency) = merged.entry(instance).or_default();
                    *count += cell.count;
                    *errors += cell.errors;
                    latency.add(&cell.latency);
                }
            }
        }
        let services = merging.into_iter().map(|(service, instances)| {
            let instances: BTreeMap<&str, Cell> = instances
                .into_iter()
                .map(|(instance, (count, errors, latency))| {
                    let latency = latency.finish();
                    (
                        instance,
                        Cell {
                            count,
                            errors,
                            latency,
                        },
                    )
                })
                .collect();
            (service, instances)
        });
        services
            .map(|(service, instances)| {
                let mut all = Cell::default();
                instances.values().for_each(|cell| all.merge(cell));
                ServiceStats {
                    service: service.to_string(),
                    summary: all.summary(),
                    instances: instances
                        .into_iter()
                        .map(|(instance, cell)| InstanceStats {
                            instance: instance.to_string(),
                            summary: cell.summary(),
                        })
                        .collect(),
                }
            })
            .collect()
    }

    /// Per (service, route) cells of the records started since `since_us`, sorted.
    pub fn routes_at(&self, since_us: i64, now_s: i64) -> BTreeMap<(String, String), Cell> {
        let mut routes: BTreeMap<(String, String), Cell> = BTreeMap::new();
        let mut inner = self.lock();
        inner.advance(now_s);
        for bucket in inner.window(since_us.div_euclid(1_000_000)) {
            for (service, cells) in &bucket.services {
                for (route, cell) in &cells.routes {
                    routes
                        .entry((service.to_string(), route.to_string()))
                        .or_default()
                        .merge(cell);
                }
            }
        }
        routes
    }

    /// Rolls up and drops what the clock says is due, and reports the footprint on `/metrics`:
    /// `events_stats_cells` and `events_stats_bytes`. Once a second, so buckets go on time
    /// even when nothing arrives and nobody asks.
    pub fn tick(&self) {
        self.tick_at(now_s());
        let footprint = self.footprint();
        metrics::gauge!("events_stats_cells").set(footprint.cells as f64);
        metrics::gauge!("events_stats_bytes").set(footprint.bytes as f64);
        metrics::gauge!("events_links_spans").set(footprint.spans as f64);
        metrics::gauge!("events_links_waiting").set(footprint.waiting as f64);
    }

    /// As [`Aggregates::tick`] without the reporting, with the clock at `now_s`: also places
    /// the records that waited too long for their callers' (crate::links).
    pub fn tick_at(&self, now_s: i64) {
        let mut inner = self.lock();
        inner.advance(now_s);
        let mut calls = std::mem::take(&mut inner.calls);
        inner.linker.expire(now_s, &mut calls);
        inner.calls = calls;
        inner.file_calls();
    }

    /// The graph of the calls started since `since_us`: every service that handled a record
    /// (and every one `known` names) a node, callers outside as `clients`, the broker, and
    /// databases and caches as nodes of their own (crate::topology has the rules).
    pub fn topology_at(
        &self,
        since_us: i64,
        now_s: i64,
        window_seconds: f64,
        known: &Known,
    ) -> Topology {
        let mut edges: BTreeMap<(String, String), EdgeCell> = BTreeMap::new();
        let mut services: BTreeMap<String, Cell> = BTreeMap::new();
        {
            let mut inner = self.lock();
            inner.advance(now_s);
            for bucket in inner.window(since_us.div_euclid(1_000_000)) {
                for (service, cells) in &bucket.services {
                    let node = services.entry(service.to_string()).or_default();
                    for cell in cells.instances.values() {
                        node.count += cell.count;
                        node.errors += cell.errors;
                    }
                }
                for (from, callees) in &bucket.edges {
                    for (to, cell) in callees {
                        edges
                            .entry((from.to_string(), to.to_string()))
                            .or_default()
                            .merge(cell);
                    }
                }
            }
        }
        graph(services, edges, window_seconds, known)
    }

    /// How many buckets and cells are held, and their bytes (approximate: the maps' own
    /// overhead is left out).
    pub fn footprint(&self) -> Footprint {
        let inner = self.lock();
        let mut footprint = Footprint {
            second_buckets: inner.seconds.len(),
            minute_buckets: inner.minutes.len(),
            cells: 0,
            bytes: 0,
            spans: 0,
            waiting: 0,
        };
        (footprint.spans, footprint.waiting) = inner.linker.held();
        for bucket in inner.seconds.values().chain(inner.minutes.values()) {
            let (cells, bytes) = bucket.keys_and_bytes();
            footprint.cells += cells;
            footprint.bytes += bytes;
        }
        footprint
    }
}

/// Nodes and edges from a window's merged cells: the shape [`topology::compute`] gives from raw
/// records.
fn graph(
    services: BTreeMap<String, Cell>,
    edges: BTreeMap<(String, String), EdgeCell>,
    window_seconds: f64,
    known: &Known,
) -> Topology {
    let window = window_seconds.max(1e-3);
    let round = |x: f64| (x * 1000.0).round() / 1000.0;
    let node = |id: String, kind: &'static str, count: u64, errors: u64, label| Node {
        kind,
        count,
        rate: round(count as f64 / window),
        errors,
        id,
        label,
    };
    // Peers (databases, caches): their calls, and what they speak.
    let mut peers: BTreeMap<&str, (u64, u64, &str)> = BTreeMap::new();
    for ((_, to), cell) in &edges {
        if let Some(system) = cell.system.as_deref() {
            let peer = peers.entry(to).or_insert((0, 0, system));
            peer.0 += cell.calls.count;
            peer.1 += cell.calls.errors;
        }
    }
    let mut nodes: BTreeMap<String, (u64, u64)> = known
        .services
        .iter()
        .map(|name| (name.clone(), (0, 0)))
        .collect();
    for (service, cell) in &services {
        nodes.insert(service.clone(), (cell.count, cell.errors));
    }
    // A caller of a peer is a node even if it served nothing in the window.
    for ((from, _), cell) in &edges {
        if cell.system.is_some() {
            nodes.entry(from.clone()).or_default();
        }
    }
    let mut out_nodes: Vec<Node> = nodes
        .into_iter()
        // A peer that also reports (a service called like a database) is drawn once, as itself.
        .filter(|(id, _)| !peers.contains_key(id.as_str()))
        .map(|(id, (count, errors))| {
            let kind = if id == topology::DNS {
                "dns"
            } else {
                "service"
            };
            node(id, kind, count, errors, None)
        })
        .collect();
    for (id, (count, errors, system)) in &peers {
        out_nodes.push(node(
            id.to_string(),
            topology::peer_kind(system),
            *count,
            *errors,
            Some(system.to_string()),
        ));
    }
    for (id, kind) in [(topology::CLIENTS, "clients"), (topology::BROKER, "broker")] {
        if edges.keys().any(|(f, t)| f == id || t == id) {
            let label = (id == topology::BROKER)
                .then(|| known.broker.clone())
                .flatten();
            out_nodes.push(node(id.to_string(), kind, 0, 0, label));
        }
    }
    let out_edges = edges
        .into_iter()
        .map(|((from, to), cell)| {
            let summary = cell.calls.summary();
            Edge {
                from,
                to,
                count: summary.count,
                errors: summary.errors,
                rate: round(summary.count as f64 / window),
                error_rate: round(summary.error_rate),
                p99_ms: summary.p99_ms,
                mutual_tls: cell.mutual_tls,
                refused: cell.refused,
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
    use crate::sketch::Rng;
    use crate::stats::percentile;
    use std::time::Duration;

    const NOW: i64 = 1_800_000_000;
    const HOUR: Duration = Duration::from_secs(3600);

    fn row(service: &str, instance: &str, route: &str, ok: bool, second: i64, us: i64) -> Row {
        let mut row = crate::record::validate(crate::record::tests::record()).unwrap();
        row.service = service.into();
        row.instance = instance.into();
        row.name = route.into();
        row.kind = "server".into();
        row.peer = None;
        row.ok = ok;
        row.started_us = second * 1_000_000 + 123;
        row.duration_us = us;
        row
    }

    /// Random records over the last `seconds`: three services, instances and routes each.
    fn random_rows(rng: &mut Rng, n: usize, seconds: i64) -> Vec<Row> {
        (0..n)
            .map(|_| {
                let s = rng.next() % 3;
                row(
                    &format!("s{s}"),
                    &format!("s{s}-{}", rng.next() % 3),
                    &format!("/r{}", rng.next() % 3),
                    !rng.next().is_multiple_of(7),
                    NOW - (rng.next() % seconds as u64) as i64,
                    rng.duration(),
                )
            })
            .collect()
    }

    /// The exact answer: `stats::compute` over the raw records.
    fn recount(rows: &[Row], since_s: i64) -> Vec<ServiceStats> {
        crate::stats::compute(
            rows.iter()
                .filter(|r| r.started_us >= since_s * 1_000_000)
                .map(|r| (r.service.clone(), r.instance.clone(), r.ok, r.duration_us))
                .collect(),
        )
    }

    fn close(got: &Summary, want: &Summary, what: &str) {
        assert_eq!(got.count, want.count, "{what}: count");
        assert_eq!(got.errors, want.errors, "{what}: errors");
        assert_eq!(got.error_rate, want.error_rate, "{what}: error rate");
        for (p, g, w) in [
            (50, got.p50_ms, want.p50_ms),
            (95, got.p95_ms, want.p95_ms),
            (99, got.p99_ms, want.p99_ms),
        ] {
            assert!((g - w).abs() <= 0.01 * w + 1e-9, "{what}: p{p} {g} vs {w}");
        }
    }

    fn same(got: &[ServiceStats], want: &[ServiceStats]) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert_eq!(g.service, w.service);
            close(&g.summary, &w.summary, &g.service);
            assert_eq!(g.instances.len(), w.instances.len());
            for (gi, wi) in g.instances.iter().zip(&w.instances) {
                assert_eq!(gi.instance, wi.instance);
                close(&gi.summary, &wi.summary, &gi.instance);
            }
        }
    }

    #[test]
    fn aggregates_equal_a_recount_of_the_same_records() {
        let mut rng = Rng(0xa99);
        for round in 0..20 {
            let n = 1 + (rng.next() % 20_000) as usize;
            let rows = random_rows(&mut rng, n, 100);
            let aggregates = Aggregates::at(HOUR, NOW);
            for batch in rows.chunks(997) {
                aggregates.add_at(batch, NOW);
            }
            for window in [1, 10, 60, 100] {
                let since = NOW - window + 1;
                let got = aggregates.stats_at(since * 1_000_000, NOW);
                let want = recount(&rows, since);
                assert!(!want.is_empty(), "round {round}");
                same(&got, &want);
            }
        }
    }

    #[test]
    fn routes_are_counted_too() {
        let mut rng = Rng(7);
        let rows = random_rows(&mut rng, 5000, 60);
        let aggregates = Aggregates::at(HOUR, NOW);
        aggregates.add_at(&rows, NOW);
        let routes = aggregates.routes_at((NOW - 60) * 1_000_000, NOW);
        assert_eq!(routes.len(), 9);
        for ((service, route), cell) in routes {
            let mut durations: Vec<i64> = rows
                .iter()
                .filter(|r| r.service == service && r.name == route)
                .map(|r| r.duration_us)
                .collect();
            durations.sort_unstable();
            assert_eq!(cell.count, durations.len() as u64);
            let exact = percentile(&durations, 99.0) as f64;
            let estimate = cell.latency.percentile(99.0);
            assert!((estimate - exact).abs() <= 0.01 * exact);
        }
    }

    #[test]
    fn seconds_merged_equal_the_minutes_they_roll_up_into() {
        let mut rng = Rng(60);
        // Ten whole minutes of records, filed while they are recent (per second).
        let start = (NOW / 60) * 60 - 600;
        let rows: Vec<Row> = random_rows(&mut rng, 30_000, 600)
            .into_iter()
            .map(|mut r| {
                r.started_us -= (NOW - (start + 599)) * 1_000_000;
                r
            })
            .collect();
        let aggregates = Aggregates::at(HOUR, start);
        for second in start..start + 600 {
            let of_second: Vec<Row> = rows
                .iter()
                .filter(|r| r.started_us.div_euclid(1_000_000) == second)
                .cloned()
                .collect();
            aggregates.add_at(&of_second, second);
        }
        let per_second = aggregates.stats_at(start * 1_000_000, start + 600);
        let footprint = aggregates.footprint();
        assert_eq!(footprint.minute_buckets, 8);
        assert_eq!(footprint.second_buckets, 120);
        // Half an hour on: every second has been rolled up into its minute.
        let per_minute = aggregates.stats_at(start * 1_000_000, start + 1800);
        assert_eq!(aggregates.footprint().second_buckets, 0);
        assert_eq!(aggregates.footprint().minute_buckets, 10);
        assert_eq!(per_second, per_minute);
        same(&per_minute, &recount(&rows, start));
    }

    #[test]
    fn the_retention_bounds_what_is_kept() {
        let aggregates = Aggregates::at(Duration::from_secs(600), NOW);
        let rows = [
            row("a", "a-1", "/", true, NOW - 601, 10),
            row("a", "a-1", "/", true, NOW - 300, 10),
            row("a", "a-1", "/", false, NOW + 86_400, 10),
        ];
        aggregates.add_at(&rows, NOW);
        let all = aggregates.stats_at(0, NOW);
        assert_eq!(all[0].summary.count, 2);
        assert_eq!(all[0].summary.errors, 1);
        // The future record was filed a minute ahead, not a day.
        let later = aggregates.stats_at(0, NOW + 700);
        assert_eq!(later[0].summary.count, 1);
        assert!(aggregates.stats_at(0, NOW + 2000).is_empty());
        assert_eq!(aggregates.footprint().cells, 0);
    }

    #[test]
    fn calls_to_databases_are_not_served_hops() {
        let aggregates = Aggregates::at(HOUR, NOW);
        let mut call = row("a", "a-1", "sqlite", true, NOW, 10);
        call.kind = "client".into();
        call.peer = Some("a-db".into());
        let mut served = row("a", "a-1", "/", true, NOW, 10);
        served.peer = Some("spiffe://stratus.local/service/gateway".into());
        aggregates.add_at(&[call, served], NOW);
        assert_eq!(aggregates.stats_at(0, NOW)[0].summary.count, 1);
    }

    #[test]
    fn routes_beyond_the_bound_are_counted_together() {
        let aggregates = Aggregates::at(HOUR, NOW);
        let rows: Vec<Row> = (0..MAX_ROUTES + 10)
            .map(|i| row("a", "a-1", &format!("/{i}"), true, NOW, 10))
            .collect();
        aggregates.add_at(&rows, NOW);
        let routes = aggregates.routes_at(0, NOW);
        assert_eq!(routes.len(), MAX_ROUTES + 1);
        assert_eq!(routes[&("a".into(), OTHER_ROUTES.into())].count, 10);
    }

    #[test]
    fn instances_and_services_beyond_their_bounds_are_counted_together() {
        let aggregates = Aggregates::at(HOUR, NOW);
        let rows: Vec<Row> = (0..MAX_INSTANCES + 10)
            .map(|i| row("a", &format!("a-{i}"), "/", true, NOW, 10))
            .chain((0..MAX_SERVICES + 5).map(|i| row(&format!("s{i}"), "x-1", "/", true, NOW, 10)))
            .collect();
        aggregates.add_at(&rows, NOW);
        let stats = aggregates.stats_at(0, NOW);
        let a = stats.iter().find(|s| s.service == "a").unwrap();
        assert_eq!(
            a.summary.count,
            (MAX_INSTANCES + 10) as u64,
            "counts stay exact"
        );
        assert_eq!(a.instances.len(), MAX_INSTANCES + 1);
        let other = a.instances.iter().find(|i| i.instance == OTHER).unwrap();
        assert_eq!(other.summary.count, 10);
        assert_eq!(
            stats.len(),
            MAX_SERVICES + 1,
            "services, `(other)` among them"
        );
        let others = stats.iter().find(|s| s.service == OTHER).unwrap();
        assert_eq!(
            others.summary.count, 6,
            "`a` took one of the places: six are left over"
        );
    }

    /// Random traces as reporters send them: a gateway record (its parent the browser's span,
    /// or none), the service it called, maybe a service that one called, calls to a database,
    /// messages through the broker; each record an error now and then.
    fn random_traces(rng: &mut Rng, traces: usize) -> Vec<Row> {
        let mut rows = Vec::new();
        let mut span = 0u64;
        let mut next_span =
            |rows: &mut Vec<Row>, parent: Option<u64>, service: &str, kind: &str, rng: &mut Rng| {
                span += 1;
                let mut r = row(
                    service,
                    &format!("{service}-{}", rng.next() % 2),
                    "/r",
                    !rng.next().is_multiple_of(9),
                    NOW - (rng.next() % 50) as i64,
                    rng.duration(),
                );
                r.span_id = format!("{span:016x}");
                r.parent_span_id = parent.map(|p| format!("{p:016x}"));
                r.kind = kind.into();
                r.status = if r.ok { 200 } else { 500 };
                rows.push(r);
                span
            };
        for _ in 0..traces {
            let parent = (!rng.next().is_multiple_of(3))
                .then_some(0xbbbb_0000_0000_0000 + rng.next() % 1000);
            let gateway = next_span(&mut rows, parent, "gateway", "gateway", rng);
            let first = ["catalog", "orders", "auth"][(rng.next() % 3) as usize];
            let served = next_span(&mut rows, Some(gateway), first, "server", rng);
            if rng.next().is_multiple_of(2) {
                let inner = next_span(&mut rows, Some(served), first, "client", rng);
                let called = next_span(&mut rows, Some(inner), "catalog", "server", rng);
                if rng.next().is_multiple_of(2) {
                    let db = next_span(&mut rows, Some(called), "catalog", "client", rng);
                    let call = rows.last_mut().unwrap();
                    call.peer = Some("catalog-db".into());
                    call.name = "sqlite".into();
                    let _ = db;
                }
            }
            if rng.next().is_multiple_of(4) {
                let produced = next_span(&mut rows, Some(served), first, "producer", rng);
                next_span(&mut rows, Some(produced), "notifications", "consumer", rng);
            }
        }
        rows
    }

    fn hop_of(r: &Row) -> crate::store::Hop {
        crate::store::Hop {
            span_id: r.span_id.clone(),
            parent_span_id: r.parent_span_id.clone(),
            service: r.service.clone(),
            instance: r.instance.clone(),
            kind: r.kind.clone(),
            ok: r.ok,
            duration_us: r.duration_us,
            topic: r.topic.clone(),
            name: r.name.clone(),
            peer: r.peer.clone(),
            status: r.status,
        }
    }

    /// The topology kept as records arrive equals the one computed from all of them at once,
    /// whatever order they arrive in (children before parents, as reporters flush).
    #[test]
    fn topology_equals_a_recount_in_any_arrival_order() {
        let mut rng = Rng(0x70b0);
        for round in 0..10 {
            let traces = 1 + (rng.next() % 3000) as usize;
            let rows = random_traces(&mut rng, traces);
            let mut arriving = rows.clone();
            match round % 3 {
                // In order, parents first.
                0 => {}
                // Children first: each trace's records backwards.
                1 => arriving.reverse(),
                // Shuffled.
                _ => {
                    for i in (1..arriving.len()).rev() {
                        arriving.swap(i, (rng.next() % (i as u64 + 1)) as usize);
                    }
                }
            }
            let aggregates = Aggregates::at(HOUR, NOW);
            for batch in arriving.chunks(1 + (rng.next() % 500) as usize) {
                aggregates.add_at(batch, NOW);
            }
            aggregates.tick_at(NOW + crate::links::WAIT);
            let known = Known {
                services: vec!["payments".into()],
                broker: Some("nats".into()),
            };
            let got = aggregates.topology_at(
                (NOW - 100) * 1_000_000,
                NOW + crate::links::WAIT,
                100.0,
                &known,
            );
            let hops: Vec<_> = rows.iter().map(hop_of).collect();
            let want = topology::compute(&hops, 100.0, &known);
            assert_eq!(got.nodes, want.nodes, "round {round}");
            assert_eq!(got.edges.len(), want.edges.len(), "round {round}");
            for (g, w) in got.edges.iter().zip(&want.edges) {
                let what = format!("round {round}: {} -> {}", w.from, w.to);
                assert_eq!((&g.from, &g.to), (&w.from, &w.to), "{what}");
                assert_eq!(
                    (g.count, g.errors, g.rate, g.error_rate),
                    (w.count, w.errors, w.rate, w.error_rate),
                    "{what}"
                );
                assert_eq!(
                    (g.mutual_tls, g.refused),
                    (w.mutual_tls, w.refused),
                    "{what}"
                );
                assert!(
                    (g.p99_ms - w.p99_ms).abs() <= 0.01 * w.p99_ms + 1e-9,
                    "{what}: p99 {} vs {}",
                    g.p99_ms,
                    w.p99_ms
                );
            }
        }
    }

    /// A row as the binary record a reporter would have folded.
    fn record_of(r: &Row) -> stratus_kit::event_wire::RecordRef<'_> {
        stratus_kit::event_wire::RecordRef {
            trace_id: 1,
            span_id: 1,
            parent_span_id: r.parent_span_id.as_ref().map(|_| 1),
            service: &r.service,
            instance: &r.instance,
            kind: &r.kind,
            name: &r.name,
            method: r.method.as_deref(),
            status: r.status as u16,
            ok: r.ok,
            started_us: r.started_us,
            duration_us: r.duration_us as u64,
            retries: None,
            cache: None,
            topic: None,
            breaker: None,
            peer: r.peer.as_deref(),
        }
    }

    /// Records folded by their reporters and merged from summaries give the same stats, routes
    /// and edges as the records themselves: every count exact, the sketches the same (so the
    /// percentiles too). Under mutual TLS, as `up` runs, where a hop knows its caller by
    /// certificate (the record's `peer`), which is what lets a folded hop keep its edge.
    #[test]
    fn folded_records_count_as_the_records_would() {
        let mut rng = Rng(0xf01d);
        for round in 0..6 {
            let traces = 1 + (rng.next() % 2000) as usize;
            let mut rows = random_traces(&mut rng, traces);
            let owners: HashMap<String, String> = rows
                .iter()
                .map(|r| (r.span_id.clone(), r.service.clone()))
                .collect();
            for r in rows.iter_mut().filter(|r| r.kind == "server") {
                let caller = r.parent_span_id.as_ref().and_then(|p| owners.get(p));
                r.peer = caller.map(|c| format!("spiffe://stratus.local/service/{c}"));
                if r.peer.is_some() && rng.next().is_multiple_of(10) {
                    (r.status, r.ok) = (403, true);
                }
            }
            let direct = Aggregates::at(HOUR, NOW);
            direct.add_at(&rows, NOW);
            direct.tick_at(NOW + crate::links::WAIT);

            // Folded by reporters in pieces (one summary per flush), then merged.
            let folded = Aggregates::at(HOUR, NOW);
            for piece in rows.chunks(1 + (rng.next() % 700) as usize) {
                let mut fold = stratus_kit::fold::Fold::default();
                piece.iter().for_each(|r| assert!(fold.add(&record_of(r))));
                let body = fold.encode();
                let entries = stratus_kit::fold::read_summary(&body, 10_000).unwrap();
                crate::record::check_folded(&entries).unwrap();
                folded.add_folded_at(&entries, NOW);
            }
            folded.tick_at(NOW + crate::links::WAIT);

            let since = (NOW - 100) * 1_000_000;
            let later = NOW + crate::links::WAIT;
            assert_eq!(
                folded.stats_at(since, later),
                direct.stats_at(since, later),
                "round {round}"
            );
            assert_eq!(
                folded.routes_at(since, later),
                direct.routes_at(since, later),
                "round {round}"
            );
            let known = Known::default();
            let got = folded.topology_at(since, later, 100.0, &known);
            let want = direct.topology_at(since, later, 100.0, &known);
            assert_eq!(got.nodes, want.nodes, "round {round}");
            assert_eq!(got.edges, want.edges, "round {round}");
            assert!(want.edges.iter().any(|e| e.mutual_tls > 0 && e.refused > 0));
        }
    }

    /// What the aggregates hold at the issue's load (30,000 records a second over 10 services,
    /// 20 instances and 50 routes, latencies log-normal around 2 ms), for ARCHITECTURE.md:
    /// `cargo test -p stratus-events --release footprint -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn footprint_at_thirty_thousand_records_a_second() {
        let mut rng = Rng(30_000);
        let aggregates = Aggregates::at(HOUR, NOW);
        let mut normal = || {
            // Sum of 12 uniforms minus 6: near enough a standard normal.
            (0..12)
                .map(|_| (rng.next() % 1_000_000) as f64 / 1e6)
                .sum::<f64>()
                - 6.0
        };
        let seconds = 240;
        let mut filing = Duration::ZERO;
        for second in NOW..NOW + seconds {
            let rows: Vec<Row> = (0..30_000)
                .map(|i| {
                    let s = i % 10;
                    let us = (2000.0 * (0.6 * normal()).exp()) as i64;
                    let instance = format!("s{s}-{}", i % 2);
                    row(
                        &format!("s{s}"),
                        &instance,
                        &format!("/r{}", i % 5),
                        true,
                        second,
                        us,
                    )
                })
                .collect();
            let started = std::time::Instant::now();
            aggregates.add_at(&rows, second);
            filing += started.elapsed();
        }
        let f = aggregates.footprint();
        let started = std::time::Instant::now();
        let hour = aggregates.stats_at((NOW - 3600) * 1_000_000, NOW + seconds);
        let minute = aggregates.stats_at((NOW + seconds - 60) * 1_000_000, NOW + seconds);
        let querying = started.elapsed();
        assert_eq!(hour.len(), 10);
        assert_eq!(minute.len(), 10);
        let per_second: usize = {
            let inner = aggregates.lock();
            inner
                .seconds
                .values()
                .map(|b| b.keys_and_bytes().1)
                .sum::<usize>()
                / f.second_buckets
        };
        let per_minute: usize = {
            let inner = aggregates.lock();
            inner
                .minutes
                .values()
                .map(|b| b.keys_and_bytes().1)
                .sum::<usize>()
                / f.minute_buckets.max(1)
        };
        println!(
            "{f:?}: {:.0} ns a record filed; a second's bucket {per_second} B ({} B a key), a \
             minute's {per_minute} B ({} B a key); stats over all + over a minute in {querying:?}",
            filing.as_nanos() as f64 / (30_000.0 * seconds as f64),
            per_second / 70,
            per_minute / 70,
        );
    }
}
