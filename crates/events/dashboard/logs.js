// The dashboard's logs: the logs view, and a trace's log lines under its spans.
//
// The sink keeps every process's log lines: `GET /v1/logs` gives the newest that pass the
// filters (service, instance, level and up, trace id, text), and `GET /v1/logs/stream` follows
// the ones committed from then on (server-sent events, one `logs` event per committed batch).
// The logs view is a form over both: a search fills the table, and with "live tail" on the
// stream adds each new line at the top. A line logged inside a request links to its trace
// (`#trace=<id>`): the waterfall above opens with every line of the trace under the span that
// logged it (crate::log_line: a line's span_id is its hop's record's).
//
// Loaded after app.js, whose helpers (el, $, micros, fmtMs, colour, openTrace) it uses.
"use strict";

// Lines the table keeps; under a live tail the oldest drop off the bottom.
const LOG_ROWS = 500;
// Lines one search asks for (the API answers at most 1,000).
const LOG_SEARCH = 200;
// The most lines of one trace the waterfall shows.
const TRACE_LINES = 1000;
const TRACE_LINK = /^#trace=([0-9a-f]{32})$/;

let tail = null; // the live tail's EventSource, while one is open
let searches = 0; // a search's number: an older search's answer, arriving late, is ignored

// ---- shared by the table and the waterfall ---------------------------------------------------

// "12:04:31.207": a line's time of day, to the millisecond.
function clockOf(line) {
  const at = new Date(micros(line.time) / 1000);
  return at.toLocaleTimeString([], { hour12: false }) + "." + String(at.getMilliseconds()).padStart(3, "0");
}

const levelPill = (level) => el("span", { class: `lvl lvl-${level}` }, level);

// A field's value as shown: text as it is, a fraction to three places (durations), the rest as
// JSON.
function fieldText(value) {
  if (typeof value === "string") return value;
  if (typeof value === "number" && !Number.isInteger(value)) return String(+value.toFixed(3));
  return JSON.stringify(value);
}

// The message, then the fields as key=value.
function messageOf(line) {
  const cell = el("span", { class: "msg" });
  cell.append(el("span", { class: "text" }, line.message || "(no message)"));
  const fields = Object.entries(line.fields || {})
    .map(([k, v]) => `${k}=${fieldText(v)}`)
    .join(" ");
  if (fields) cell.append(el("span", { class: "fields" }, fields));
  return cell;
}

// A link to the line's trace: opens the waterfall (and stays a real link, to copy or share).
function traceLink(id) {
  const link = el("a", { class: "trace-link", href: `#trace=${id}`, title: `open trace ${id}` }, id.slice(0, 8) + "…");
  link.addEventListener("click", (event) => {
    event.preventDefault();
    history.replaceState(null, "", `#trace=${id}`);
    showTrace(id);
  });
  return link;
}

function showTrace(id) {
  openTrace(id);
  document.querySelector(".waterfall").scrollIntoView({ behavior: "smooth", block: "nearest" });
}

// ---- the logs view ---------------------------------------------------------------------------

// The form's filters as query parameters (empty ones left out; a trace id in lower case, as
// the API wants it).
function logFilters() {
  const params = new URLSearchParams();
  for (const [name, id] of [["service", "f-service"], ["instance", "f-instance"], ["level", "f-level"], ["trace_id", "f-trace"], ["q", "f-q"]]) {
    let value = $(id).value.trim();
    if (name === "trace_id") value = value.toLowerCase();
    if (value) params.set(name, value);
  }
  return params;
}

// Lines are told apart by what they carry (they have no id of their own).
const lineKey = (l) => `${l.time}|${l.instance}|${l.span_id}|${l.message}`;

function logRow(line) {
  const row = el("tr", { "data-service": line.service, "data-level": line.level });
  if (line.trace_id) row.dataset.trace = line.trace_id;
  row.append(el("td", { class: "when", title: line.time }, clockOf(line)));
  const level = el("td");
  level.append(levelPill(line.level));
  row.append(level);
  const service = el("td", { class: "svc-name" }, line.service);
  service.style.borderLeft = `3px solid ${colour(line.service)}`;
  row.append(service, el("td", { class: "inst-id", title: line.target }, line.instance));
  const message = el("td", { class: "message" });
  message.append(messageOf(line));
  row.append(message);
  const trace = el("td");
  if (line.trace_id) trace.append(traceLink(line.trace_id));
  row.append(trace);
  return row;
}

function setStatus(text, bad) {
  const status = $("log-status");
  status.textContent = text;
  status.classList.toggle("bad", !!bad);
}

// Newest first: a batch's lines go on top, newest of them first, and the table keeps LOG_ROWS.
function prepend(lines) {
  const body = $("logs");
  const sorted = [...lines].sort((a, b) => micros(b.time) - micros(a.time));
  body.prepend(...sorted.map(logRow));
  while (body.childElementCount > LOG_ROWS) body.lastElementChild.remove();
}

function stopTail() {
  if (tail) tail.close();
  tail = null;
  $("tail-state").className = "conn idle";
  $("tail-state").textContent = "tail off";
}

// The stream is opened before the search, so no line committed in between is missed; what it
// brings before the search answers waits, and is added unless the search already had it.
async function searchLogs() {
  const search = ++searches;
  stopTail();
  const params = logFilters();
  let held = $("f-live").checked ? [] : null;
  if (held) {
    const source = new EventSource(`/v1/logs/stream?${params}`);
    tail = source;
    source.addEventListener("open", () => {
      $("tail-state").className = "conn on";
      $("tail-state").textContent = "tailing";
    });
    source.addEventListener("error", () => {
      $("tail-state").className = "conn off";
      $("tail-state").textContent = "reconnecting…";
    });
    source.addEventListener("logs", (event) => {
      const lines = JSON.parse(event.data);
      if (held) held.push(...lines);
      else prepend(lines);
    });
    source.addEventListener("lagged", (event) => {
      setStatus(`the tail fell behind: ${JSON.parse(event.data).missed_batches} batches of lines missed`, true);
    });
  }
  setStatus("searching…");
  const query = new URLSearchParams(params);
  query.set("limit", LOG_SEARCH);
  let answer;
  try {
    const response = await fetch(`/v1/logs?${query}`);
    answer = response.ok ? await response.json() : { problem: await response.json().catch(() => ({})), status: response.status };
  } catch (error) {
    answer = { problem: { detail: String(error) }, status: 0 };
  }
  if (search !== searches) return;
  if (answer.problem) {
    stopTail();
    setStatus(`search refused: ${answer.problem.detail || answer.problem.title || answer.status}`, true);
    return;
  }
  $("logs").replaceChildren(...answer.logs.map(logRow));
  const seen = new Set(answer.logs.map(lineKey));
  const waiting = held || [];
  held = null;
  prepend(waiting.filter((l) => !seen.has(lineKey(l))));
  const what = params.toString() ? "matching" : "newest";
  setStatus(`${answer.logs.length} ${what} lines${answer.logs.length === LOG_SEARCH ? ` (the newest ${LOG_SEARCH})` : ""}` +
    (tail ? "; new ones appear on top" : ""));
}

// Shows one trace's lines in the logs view (the waterfall's "its lines" link).
function filterByTrace(id) {
  for (const field of ["f-service", "f-instance", "f-level", "f-q"]) $(field).value = "";
  $("f-trace").value = id;
  searchLogs();
  document.querySelector(".logs").scrollIntoView({ behavior: "smooth", block: "nearest" });
}

// ---- a trace's lines in the waterfall -----------------------------------------------------------

// Every line of a trace, oldest first ([] if they cannot be read: the spans still show).
async function traceLines(id) {
  try {
    const response = await fetch(`/v1/logs?trace_id=${id}&limit=${TRACE_LINES}`);
    if (!response.ok) return [];
    return (await response.json()).logs.reverse();
  } catch (_) {
    return [];
  }
}

// Splits a trace's lines by span: those whose span is one of the trace's spans, and the rest
// (logged in the trace outside any stored span).
function linesBySpan(lines, spanIds) {
  const under = new Map();
  const loose = [];
  for (const line of lines) {
    if (line.span_id && spanIds.has(line.span_id)) {
      if (!under.has(line.span_id)) under.set(line.span_id, []);
      under.get(line.span_id).push(line);
    } else {
      loose.push(line);
    }
  }
  return { under, loose };
}

// The lines under one span (or under none: `span` null), each placed in time from the trace's
// start `t0` (microseconds), indented as deep as its span.
function spanLines(lines, span, depth, t0) {
  const box = el("div", { class: "wf-logs", "data-span": span ? span.span_id : "" });
  for (const line of lines) {
    const row = el("div", { class: "wf-log", "data-service": line.service, "data-level": line.level });
    const label = el("div", { class: "wf-log-label" });
    label.style.paddingLeft = `${depth * 14 + 12}px`;
    const offset = (micros(line.time) - t0) / 1000;
    label.append(levelPill(line.level), el("span", { class: "at" }, (offset >= 0 ? "+" : "") + fmtMs(offset)));
    if (!span) label.append(el("b", {}, line.service));
    label.title = `${line.service} (${line.instance}) ${line.target} at ${line.time}`;
    row.append(label, messageOf(line));
    box.append(row);
  }
  return box;
}

// A tick on a span's bar for each of its lines, at the line's time.
function lineMarks(track, lines, t0, total) {
  for (const line of lines) {
    const left = Math.min(100, Math.max(0, ((micros(line.time) - t0) / total) * 100));
    const mark = el("div", { class: `wf-mark lvl-${line.level}`, title: `${line.level}: ${line.message}` });
    mark.style.left = `${left}%`;
    track.append(mark);
  }
}

// ---- start -------------------------------------------------------------------------------------

$("log-filters").addEventListener("submit", (event) => {
  event.preventDefault();
  searchLogs();
});
$("f-level").addEventListener("change", searchLogs);
$("f-live").addEventListener("change", searchLogs);
window.addEventListener("hashchange", () => {
  const link = TRACE_LINK.exec(location.hash);
  if (link) showTrace(link[1]);
});
stopTail();
searchLogs();
{
  const link = TRACE_LINK.exec(location.hash);
  if (link) openTrace(link[1]);
}
