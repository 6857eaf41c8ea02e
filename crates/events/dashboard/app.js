// The Stratus dashboard: a live view of the event sink's last minute.
//
// One EventSource (`/v1/stream`) delivers a snapshot a second: the topology (nodes and edges
// with rate, error rate and p99), each service's instances (registry health and share of
// traffic), recent traces and recent errors. A click on a trace fetches `/v1/traces/{id}` and
// its log lines and draws its waterfall (logs.js: the logs view, and the lines under each
// span). No framework: the page redraws its parts from each snapshot.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const PLATFORM = new Set(["registry", "events"]);
const PALETTE = ["#5aa9ff", "#9b7bff", "#3ecf8e", "#f5b841", "#ff8f6b", "#4dd0e1", "#e57dd8"];
const $ = (id) => document.getElementById(id);
let selectedTrace = null;

function el(tag, attrs = {}, text) {
  const node = tag.startsWith("svg:")
    ? document.createElementNS(SVG, tag.slice(4))
    : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

const fmtRate = (r) => (r >= 100 ? r.toFixed(0) : r >= 10 ? r.toFixed(1) : r.toFixed(2)) + "/s";
const fmtPct = (r) => (r * 100).toFixed(r > 0 && r < 0.1 ? 1 : 0) + "%";
const fmtMs = (ms) => (ms >= 100 ? ms.toFixed(0) : ms >= 10 ? ms.toFixed(1) : ms.toFixed(2)) + " ms";
const safeId = (s) => s.replace(/[^a-zA-Z0-9_-]/g, "_");

function colour(service) {
  let h = 0;
  for (const c of service) h = (h * 31 + c.charCodeAt(0)) >>> 0;
  return PALETTE[h % PALETTE.length];
}

// Microseconds since the epoch from RFC 3339 (Date keeps only milliseconds).
function micros(text) {
  const m = /\.(\d+)/.exec(text);
  const frac = m ? Number((m[1] + "000000").slice(0, 6)) : 0;
  return Date.parse(text.replace(/\.\d+/, "")) * 1000 + frac;
}

// ---- topology -------------------------------------------------------------------------------

// Layers, left to right: clients and DNS, the gateway (the platform's registry and sink under
// it), auth, the services (by how deep behind the gateway they are called), and last what the
// services use: databases, caches and the broker.
const BACKING = new Set(["database", "cache", "broker"]);
const rank = (kind, id) => (kind === "dns" || PLATFORM.has(id) ? 1 : 0);
function layout(topology) {
  const kinds = new Map(topology.nodes.map((n) => [n.id, n.kind]));
  const kindOf = (id) => kinds.get(id) || (id === "clients" ? "clients" : id === "dns" ? "dns" : "service");
  const ids = topology.nodes.map((n) => n.id);
  if (ids.includes("dns") && !ids.includes("clients")) ids.push("clients");
  // Service-to-service calls only: a broker or a database is never a step deeper.
  const next = new Map();
  for (const e of topology.edges) {
    if (BACKING.has(kindOf(e.from)) || BACKING.has(kindOf(e.to))) continue;
    if (!next.has(e.from)) next.set(e.from, []);
    next.get(e.from).push(e.to);
  }
  const depth = new Map([["clients", 0]]);
  const queue = ["clients"];
  while (queue.length) {
    const at = queue.shift();
    for (const to of next.get(at) || []) {
      if (!depth.has(to) && depth.get(at) < 6) {
        depth.set(to, depth.get(at) + 1);
        queue.push(to);
      }
    }
  }
  const column = new Map();
  for (const id of ids) {
    const kind = kindOf(id);
    if (kind === "clients" || kind === "dns") column.set(id, 0);
    else if (id === "gateway" || PLATFORM.has(id)) column.set(id, 1);
    else if (id === "auth") column.set(id, 2);
    else if (!BACKING.has(kind)) column.set(id, 3 + Math.max(0, (depth.get(id) || 2) - 2));
  }
  const last = Math.max(3, ...column.values()) + 1;
  for (const id of ids) if (!column.has(id)) column.set(id, last);
  const columns = [];
  for (const id of ids) {
    const c = column.get(id);
    (columns[c] = columns[c] || []).push(id);
  }
  const order = { broker: 0, cache: 1, database: 2 };
  return columns.filter(Boolean).map((c) => c.sort((a, b) =>
    rank(kindOf(a), a) - rank(kindOf(b), b) ||
    (order[kindOf(a)] ?? 0) - (order[kindOf(b)] ?? 0) || a.localeCompare(b)));
}

// How each kind of node is drawn: a rounded box (services), a cylinder (databases), a pill
// (caches), a box with a double border (the broker), a dashed box (clients) or a hexagon (DNS). The legend under the graph uses the same shapes.
function nodeShape(kind, w, h) {
  const shapes = [];
  if (kind === "database") {
    const ry = 7;
    shapes.push(el("svg:path", {
      class: "shape",
      d: `M0,${ry} A${w / 2},${ry} 0 0 1 ${w},${ry} V${h - ry} A${w / 2},${ry} 0 0 1 0,${h - ry} Z`,
    }));
    shapes.push(el("svg:path", { class: "rim", d: `M0,${ry} A${w / 2},${ry} 0 0 0 ${w},${ry}` }));
  } else if (kind === "cache") {
    shapes.push(el("svg:rect", { class: "shape", width: w, height: h, rx: h / 2 }));
  } else if (kind === "dns") {
    const c = 12;
    shapes.push(el("svg:path", {
      class: "shape",
      d: `M${c},0 H${w - c} L${w},${h / 2} L${w - c},${h} H${c} L0,${h / 2} Z`,
    }));
  } else {
    shapes.push(el("svg:rect", { class: "shape", width: w, height: h, rx: 10 }));
    if (kind === "broker") {
      shapes.push(el("svg:rect", { class: "rim", x: 3, y: 3, width: w - 6, height: h - 6, rx: 8 }));
    }
  }
  return shapes;
}

const LEGEND = [
  ["clients", "clients"], ["dns", "DNS"], ["service", "service"],
  ["database", "database"], ["cache", "cache"], ["broker", "broker"],
];
function drawLegend() {
  const root = $("legend");
  if (!root || root.childElementCount) return;
  for (const [kind, text] of LEGEND) {
    const item = el("span", { class: "item", "data-kind": kind });
    const svg = el("svg:svg", { width: 30, height: 16, viewBox: "0 0 30 16" });
    const g = el("svg:g", { class: `node ${kind}` });
    g.append(...nodeShape(kind, 30, 16));
    svg.append(g);
    item.append(svg, el("span", {}, text));
    root.append(item);
  }
}

function drawTopology(topology, instances) {
  const svg = $("graph");
  const columns = layout(topology);
  // Tall enough for the fullest column (the databases, with many services).
  const rows = Math.max(1, ...columns.map((c) => c.length));
  svg.style.height = `${Math.max(420, rows * 64)}px`;
  const width = svg.clientWidth || 900;
  const height = svg.clientHeight || 420;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.replaceChildren();
  const colW = (width - 20) / Math.max(1, columns.length);
  const nodeW = Math.min(150, colW * 0.56), nodeH = 52;
  const pos = new Map();
  columns.forEach((ids, c) => {
    const gapY = height / ids.length;
    ids.forEach((id, r) => pos.set(id, {
      x: 10 + c * colW + (colW - nodeW) / 2,
      y: gapY * r + gapY / 2 - nodeH / 2,
    }));
  });
  const byId = new Map(topology.nodes.map((n) => [n.id, n]));
  const health = new Map(instances.map((s) => [s.service, s.instances]));
  const maxRate = Math.max(1, ...topology.edges.map((e) => e.rate));

  const edgeLayer = el("svg:g"), labelLayer = el("svg:g"), nodeLayer = el("svg:g");
  svg.append(edgeLayer, nodeLayer, labelLayer);
  const curve = (a, b) => {
    if (Math.abs(a.x - b.x) < 1) {
      // Within one column (clients -> DNS): bottom of one to the top of the other.
      const x = a.x + nodeW / 2;
      const [y1, y2] = a.y < b.y ? [a.y + nodeH, b.y] : [a.y, b.y + nodeH];
      return { d: `M${x},${y1} L${x},${y2}`, mx: x, my: (y1 + y2) / 2 };
    }
    const x1 = a.x + nodeW, y1 = a.y + nodeH / 2, x2 = b.x, y2 = b.y + nodeH / 2;
    const mx = (x1 + x2) / 2;
    return { d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}`, mx, my: (y1 + y2) / 2 };
  };
  const edges = [...topology.edges];
  if (pos.has("dns") && pos.has("gateway")) edges.push({ from: "dns", to: "gateway", resolve: true });
  for (const e of edges) {
    const a = pos.get(e.from), b = pos.get(e.to);
    if (!a || !b) continue;
    const { d, mx, my } = curve(a, b);
    const bad = !e.resolve && (e.error_rate >= 0.01 || e.refused > 0);
    // Every call on the edge mutually authenticated: drawn solid with a lock in its label.
    const mtls = !e.resolve && e.count > 0 && e.mutual_tls === e.count;
    const g = el("svg:g", {
      class: "edge" + (bad ? " err" : "") + (e.resolve ? " resolve" : "") + (mtls ? " mtls" : ""),
      id: `edge-${safeId(e.from)}-${safeId(e.to)}`,
      "data-from": e.from, "data-to": e.to,
    });
    const w = e.resolve ? 1.5 : 1.5 + 5 * Math.sqrt(e.rate / maxRate);
    g.append(el("svg:path", { d, "stroke-width": w.toFixed(1), "marker-end": "" }));
    edgeLayer.append(g);
    const label = el("svg:g", { class: "edge-label", "data-edge": `${e.from}->${e.to}` });
    const text = el("svg:text", { x: mx, y: my - 2, "text-anchor": "middle" });
    if (e.resolve) {
      text.textContent = "resolves";
    } else {
      // rate / error rate · p99 (the card's title says which is which; the tooltip spells it out)
      text.append(el("svg:tspan", { class: "rate" }, (mtls ? "🔒 " : "") + fmtRate(e.rate)));
      text.append(el("svg:tspan", { class: e.errors ? "err" : "", x: mx, dy: 13 }, fmtPct(e.error_rate)));
      text.append(el("svg:tspan", { class: "p99" }, " · " + fmtMs(e.p99_ms)));
      if (e.refused) text.append(el("svg:tspan", { class: "err", x: mx, dy: 13 }, `${e.refused} refused`));
      label.append(el("svg:title", {}, `${e.from} → ${e.to}: ${e.count} calls in the window, ` +
        `${fmtRate(e.rate)}, ${e.errors} errors (${fmtPct(e.error_rate)}), p99 ${fmtMs(e.p99_ms)}; ` +
        `${e.mutual_tls || 0} mutually authenticated (mTLS), ${e.refused || 0} refused`));
    }
    label.append(el("svg:rect", { rx: 6 }), text);
    labelLayer.append(label);
  }
  for (const [id, p] of pos) {
    const n = byId.get(id) || { id, kind: id === "clients" ? "clients" : id === "dns" ? "dns" : "service", rate: 0, count: 0 };
    const live = health.get(id) || [];
    const registered = live.filter((i) => i.health !== "gone");
    const g = el("svg:g", {
      "data-rate": n.rate,
      class: `node ${n.kind}` + (n.count === 0 && n.kind === "service" ? " idle" : ""),
      id: `node-${safeId(id)}`, transform: `translate(${p.x},${p.y})`,
    });
    g.append(...nodeShape(n.kind, nodeW, nodeH));
    const room = Math.max(4, Math.floor((nodeW - 20) / 7.5));
    g.append(el("svg:text", { class: "name", x: 12, y: 22 }, id.length > room ? id.slice(0, room - 1) + "…" : id));
    g.append(el("svg:title", {}, n.label ? `${id} (${n.kind}: ${n.label})` : `${id} (${n.kind})`));
    const stat = n.kind === "service" || n.kind === "dns"
      ? (n.count ? fmtRate(n.rate) : "idle")
      : n.kind === "clients" ? "outside callers"
      : n.kind === "broker" ? (n.label ? `messages · ${n.label}` : "messages")
      : `${n.label || n.kind} · ${fmtRate(n.rate)}`;
    g.append(el("svg:text", { class: "stat", x: 12, y: 41 }, stat));
    registered.slice(0, 8).forEach((inst, i) => {
      const fill = { passing: "#3ecf8e", warning: "#f5b841", critical: "#f0616d" }[inst.health] || "#8a96ad";
      const dot = el("svg:circle", { cx: nodeW - 12 - i * 10, cy: nodeH - 15, r: 3.5, fill });
      dot.append(el("svg:title", {}, `${inst.id}: ${inst.health}`));
      g.append(dot);
    });
    nodeLayer.append(g);
  }
  // Size each label's background to its text once laid out.
  for (const label of labelLayer.children) {
    const box = label.querySelector("text").getBBox();
    const rect = label.querySelector("rect");
    rect.setAttribute("x", box.x - 6); rect.setAttribute("y", box.y - 3);
    rect.setAttribute("width", box.width + 12); rect.setAttribute("height", box.height + 6);
  }
}

// ---- instances, traces, errors ---------------------------------------------------------------

function drawInstances(services) {
  const root = $("instances");
  root.replaceChildren();
  for (const s of services) {
    if (!s.instances.length) continue;
    const box = el("div", { class: "svc", "data-service": s.service });
    const head = el("div", { class: "svc-head" }, s.service);
    head.append(el("span", {}, `${s.count} req · ${s.instances.filter((i) => i.health !== "gone").length} up`));
    box.append(head);
    for (const i of s.instances) {
      const row = el("div", { class: "inst", title: [i.address, i.version].filter(Boolean).join(" · ") });
      row.append(el("div", { class: `dot ${i.health}`, title: i.health }));
      row.append(el("div", { class: "id" }, i.id));
      const bar = el("div", { class: "bar" });
      bar.append(el("div", { style: `width:${(i.share * 100).toFixed(1)}%` }));
      row.append(bar);
      row.append(el("div", { class: "pct" }, fmtPct(i.share)));
      box.append(row);
    }
    root.append(box);
  }
}

function drawTraces(traces) {
  const body = $("traces");
  body.replaceChildren();
  for (const t of traces) {
    const row = el("tr", { "data-trace": t.trace_id });
    if (t.trace_id === selectedTrace) row.classList.add("selected");
    const when = new Date(t.started_us / 1000).toLocaleTimeString();
    row.append(el("td", {}, when), el("td", { title: t.trace_id }, `${t.service} ${t.name}`));
    row.append(el("td", { class: "num" }, t.spans), el("td", { class: "num" }, fmtMs(t.duration_us / 1000)));
    const status = el("td");
    status.append(el("span", { class: t.errors ? "pill bad" : "pill good" }, t.errors ? `${t.errors} err` : "ok"));
    row.append(status);
    row.addEventListener("click", () => openTrace(t.trace_id));
    body.append(row);
  }
}

function drawErrors(errors) {
  const list = $("errors");
  list.replaceChildren();
  if (!errors.length) list.append(el("li", { class: "none" }, "No errors in the window."));
  for (const e of errors) {
    const li = el("li");
    li.append(el("span", { class: "when" }, new Date(micros(e.started_at) / 1000).toLocaleTimeString()));
    li.append(el("span", { class: "pill bad" }, String(e.status)));
    li.append(el("span", {}, `${e.service} ${e.method || ""} ${e.name}`));
    li.append(el("span", { class: "when" }, e.instance));
    list.append(li);
  }
}

// ---- waterfall ---------------------------------------------------------------------------------

// The trace's spans and its log lines, fetched together; a trace whose spans are gone (pruned,
// or never reported) still shows its lines.
async function openTrace(id) {
  selectedTrace = id;
  for (const row of document.querySelectorAll("#traces tr")) {
    row.classList.toggle("selected", row.dataset.trace === id);
  }
  const [response, lines] = await Promise.all([fetch(`/v1/traces/${id}`), traceLines(id)]);
  if (selectedTrace !== id) return; // another trace was picked meanwhile
  const head = $("trace-id");
  head.replaceChildren(id);
  const root = $("waterfall");
  if (!response.ok && !lines.length) {
    root.className = "empty";
    root.textContent = `Could not load the trace (${response.status}).`;
    return;
  }
  const records = response.ok ? (await response.json()).records : [];
  if (lines.length) {
    const all = el("a", { href: "#", class: "lines-link" }, `${lines.length} log line${lines.length === 1 ? "" : "s"}`);
    all.addEventListener("click", (event) => { event.preventDefault(); filterByTrace(id); });
    head.append(" · ", all);
  }
  drawWaterfall(records, lines);
}

// Spans as bars, parents above their children; under each span the log lines it logged (a
// tick on its bar for each), and at the end the trace's lines that name no span of it.
function drawWaterfall(records, lines = []) {
  const root = $("waterfall");
  root.className = "";
  root.replaceChildren();
  const spans = records.map((r) => ({ ...r, start: micros(r.started_at) }));
  const byId = new Map(spans.map((s) => [s.span_id, s]));
  const depthOf = (s, seen = 0) => {
    const parent = s.parent_span_id && byId.get(s.parent_span_id);
    return parent && seen < 32 ? 1 + depthOf(parent, seen + 1) : 0;
  };
  // Parents before children: depth-first from the roots, each level in start order.
  const children = new Map();
  const roots = [];
  for (const s of spans.sort((a, b) => a.start - b.start)) {
    const parent = s.parent_span_id && byId.get(s.parent_span_id);
    if (parent) (children.get(parent.span_id) || children.set(parent.span_id, []).get(parent.span_id)).push(s);
    else roots.push(s);
  }
  const ordered = [];
  const visit = (s) => { ordered.push(s); (children.get(s.span_id) || []).forEach(visit); };
  roots.forEach(visit);
  // The axis covers the spans and the lines alike (a line may be logged after its span ends).
  const times = lines.map((l) => micros(l.time));
  const t0 = Math.min(...spans.map((s) => s.start), ...times);
  const t1 = Math.max(t0, ...spans.map((s) => s.start + s.duration_us), ...times);
  const total = Math.max(1, t1 - t0);
  const { under, loose } = linesBySpan(lines, byId);
  const axis = el("div", { class: "wf-axis" });
  for (const q of [0, 0.25, 0.5, 0.75, 1]) axis.append(el("span", {}, fmtMs((total * q) / 1000)));
  root.append(axis);
  if (!spans.length) root.append(el("div", { class: "wf-note" }, "No spans are stored for this trace: its log lines only."));
  for (const s of ordered) {
    const row = el("div", { class: "wf-row", "data-span": s.span_id, "data-service": s.service });
    const label = el("div", { class: "wf-label" });
    const depth = depthOf(s);
    label.style.paddingLeft = `${depth * 14}px`;
    // A call to a database or cache names the node it called: "orders → orders-db (sqlite)".
    // A request served names its caller instead (its SPIFFE ID, under the mesh): a tooltip.
    const call = s.kind === "client" && s.peer;
    const what = call ? ` → ${s.peer} (${s.name})` : ` ${s.method || ""} ${s.name}`;
    label.append(el("b", {}, s.service), el("span", {}, what));
    const caller = !call && s.peer ? ` from ${s.peer}` : "";
    label.title = `${s.service} (${s.instance}) ${s.kind} ${s.status}${caller}`;
    const track = el("div", { class: "wf-track" });
    const left = ((s.start - t0) / total) * 100;
    const width = Math.max(0.4, (s.duration_us / total) * 100);
    const bar = el("div", { class: "wf-bar" + (s.ok ? "" : " err") });
    bar.style.left = `${left}%`;
    bar.style.width = `${width}%`;
    bar.style.background = colour(s.service);
    const time = el("span", { class: "wf-time" }, fmtMs(s.duration_us / 1000) + (s.status ? ` · ${s.status}` : ""));
    if (left + width > 70) {
      time.classList.add("inside");
      time.style.right = `${Math.max(0, 100 - left - width)}%`;
    } else {
      time.style.left = `${left + width}%`;
    }
    track.append(bar, time);
    const mine = under.get(s.span_id) || [];
    lineMarks(track, mine, t0, total);
    row.append(label, track);
    root.append(row);
    if (mine.length) root.append(spanLines(mine, s, depth, t0));
  }
  if (loose.length) {
    root.append(el("div", { class: "wf-loose" }, "In the trace, under none of its spans"));
    root.append(spanLines(loose, null, 0, t0));
  }
}

// ---- the live feed -----------------------------------------------------------------------------

let latest = null;
function render() {
  if (!latest) return;
  $("clock").textContent = new Date(micros(latest.time) / 1000).toLocaleTimeString();
  $("window").textContent = `last ${latest.window_seconds} s`;
  drawLegend();
  drawTopology(latest.topology, latest.instances);
  drawInstances(latest.instances);
  drawTraces(latest.traces);
  drawErrors(latest.errors);
}

function connect() {
  const source = new EventSource("/v1/stream");
  const conn = $("conn");
  source.addEventListener("open", () => { conn.textContent = "live"; conn.className = "conn on"; });
  source.addEventListener("error", () => { conn.textContent = "reconnecting…"; conn.className = "conn off"; });
  source.addEventListener("snapshot", (event) => {
    latest = JSON.parse(event.data);
    render();
  });
}

window.addEventListener("resize", render);
connect();
