// Drives the dashboard's logs in a real Chromium, after an order for a product that does not
// exist was sent through the gateway under a known trace (tests/dashboard.rs): the logs view,
// filtered by that trace, lists the gateway's line and orders' line, and a text filter keeps
// only orders'; a line's trace link opens the waterfall with each line under the span that
// logged it (the gateway's under the gateway's span, orders' under orders'), a tick on each
// span's bar; a live tail of the gateway's lines adds the lines of requests made meanwhile;
// and a screenshot is saved.
//
// Run with DASHBOARD_URL, SCREENSHOT, CHROMIUM, TRACE (the trace id), GATEWAY_SPAN and
// ORDERS_SPAN (the span ids of the gateway's and orders' records of that trace).
import { open } from "./browser.mjs";

const { DASHBOARD_URL: url, SCREENSHOT: screenshot, TRACE: trace } = process.env;
const spans = { gateway: process.env.GATEWAY_SPAN, orders: process.env.ORDERS_SPAN };
if (!url || !screenshot || !trace || !spans.gateway || !spans.orders)
  throw new Error("DASHBOARD_URL, SCREENSHOT, TRACE, GATEWAY_SPAN and ORDERS_SPAN must be set");

const { browser, page, problems, fail } = await open(screenshot);
const rows = () => page.$$eval("#logs tr", (trs) => trs.map((tr) => ({
  service: tr.dataset.service,
  level: tr.dataset.level,
  trace: tr.dataset.trace || null,
  text: tr.querySelector(".message").textContent,
})));
// Searches once the previous search has answered (its status line no longer "searching…").
const search = async () => {
  await page.click("#log-filters button[type=submit]");
  await page.waitForFunction(() => !/searching/.test(document.getElementById("log-status").textContent), null, { timeout: 15000 });
};

await page.goto(url);
try {
  await page.waitForSelector("#conn.on", { timeout: 15000 });
  await page.waitForSelector("#log-filters", { timeout: 15000 });
} catch (error) {
  await fail(`the dashboard did not load: ${error.message}`);
}

// The logs view, by trace: both services' lines, each linking to the trace.
await page.fill("#f-trace", trace.toUpperCase()); // typed in upper case: the page lowers it
await search();
const traced = await rows();
const gatewayRow = traced.find((r) => r.service === "gateway");
const ordersRow = traced.find((r) => r.service === "orders");
if (!gatewayRow || !ordersRow) await fail(`the trace's lines in the logs view: ${JSON.stringify(traced)}`);
if (traced.some((r) => r.trace !== trace)) await fail(`a line of another trace: ${JSON.stringify(traced)}`);
if (!gatewayRow.text.includes("request refused by the service") || !gatewayRow.text.includes("status=422"))
  await fail(`the gateway's line: ${JSON.stringify(gatewayRow)}`);
if (!ordersRow.text.includes("order refused: the catalog has no such product") || !ordersRow.text.includes("product=no-such-product"))
  await fail(`orders' line: ${JSON.stringify(ordersRow)}`);

// A text filter on top: only orders' line names the product.
await page.fill("#f-q", "no-such-product");
await search();
const named = await rows();
if (named.length < 1 || named.some((r) => r.service !== "orders")) await fail(`text filter: ${JSON.stringify(named)}`);
// A bad filter is refused with the sink's reason, and nothing else changes. (Chromium reports
// the 400 on the console: that one is expected.)
await page.fill("#f-q", "");
await page.fill("#f-trace", "not-a-trace");
const before400 = problems.length;
await search();
const refusal = await page.textContent("#log-status");
if (!/refused/.test(refusal) || !/trace_id/.test(refusal)) await fail(`a bad trace id: "${refusal}"`);
const expected = problems.splice(before400).filter((p) => !/status of 400/.test(p));
if (expected.length) await fail(`page errors on a refused search: ${expected.join("; ")}`);
await page.fill("#f-trace", trace);
await search();

// The orders line's trace link opens the waterfall with the lines under their spans.
try {
  await page.click(`#logs tr[data-service="orders"] a.trace-link`);
  await page.waitForFunction((id) => document.getElementById("trace-id").textContent.startsWith(id), trace, { timeout: 15000 });
  await page.waitForSelector(`#waterfall .wf-logs[data-span="${spans.orders}"] .wf-log`, { timeout: 15000 });
} catch (error) {
  await fail(`the trace link did not open the waterfall with its lines: ${error.message}`);
}
if (!page.url().endsWith(`#trace=${trace}`)) await fail(`the address does not name the trace: ${page.url()}`);
const waterfall = await page.$$eval("#waterfall > div", (blocks) => blocks.map((b) => ({
  kind: b.className,
  span: b.dataset.span || null,
  service: b.dataset.service || null,
  marks: b.querySelectorAll(".wf-mark").length,
  lines: [...b.querySelectorAll(".wf-log")].map((l) => ({ service: l.dataset.service, text: l.textContent })),
})));
for (const [service, span] of Object.entries(spans)) {
  const at = waterfall.findIndex((b) => b.kind === "wf-row" && b.span === span);
  if (at < 0) await fail(`no ${service} span ${span} in the waterfall: ${JSON.stringify(waterfall)}`);
  const row = waterfall[at];
  const under = waterfall[at + 1];
  // The span's own lines follow its bar, and only its service's lines are there.
  if (!under || under.kind !== "wf-logs" || under.span !== span || !under.lines.length)
    await fail(`no lines under the ${service} span: ${JSON.stringify(waterfall)}`);
  if (under.lines.some((l) => l.service !== service)) await fail(`another service's line under ${service}: ${JSON.stringify(under)}`);
  if (row.service !== service || row.marks !== under.lines.length)
    await fail(`the ${service} bar's ticks: ${JSON.stringify(row)} for ${under.lines.length} lines`);
}
const gatewayLines = waterfall.find((b) => b.kind === "wf-logs" && b.span === spans.gateway).lines;
const ordersLines = waterfall.find((b) => b.kind === "wf-logs" && b.span === spans.orders).lines;
if (!gatewayLines.some((l) => l.text.includes("request refused by the service")))
  await fail(`the gateway span's lines: ${JSON.stringify(gatewayLines)}`);
if (!ordersLines.some((l) => l.text.includes("no such product")))
  await fail(`the orders span's lines: ${JSON.stringify(ordersLines)}`);
const header = await page.textContent("#trace-id");
if (!/\d+ log lines?/.test(header)) await fail(`the trace's header: "${header}"`);

await page.locator(".waterfall").scrollIntoViewIfNeeded();
await page.waitForTimeout(300);
await page.screenshot({ path: screenshot, fullPage: true });

// A live tail of the gateway's lines: the requests made meanwhile (tests/dashboard.rs keeps
// sending some) appear on top without another search.
await page.fill("#f-trace", "");
await page.fill("#f-service", "gateway");
await page.check("#f-live");
try {
  await page.waitForSelector("#tail-state.on", { timeout: 15000 });
  await page.waitForFunction(() => /new ones appear on top/.test(document.getElementById("log-status").textContent), null, { timeout: 15000 });
} catch (error) {
  await fail(`the live tail did not start: ${error.message}`);
}
const before = (await rows()).length;
const newest = await page.textContent("#logs tr:first-child .message").catch(() => "");
let after = before;
const deadline = Date.now() + 20000;
while (after <= before && Date.now() < deadline) {
  await page.waitForTimeout(250);
  after = (await rows()).length;
}
if (after <= before) await fail(`the live tail added no line in 20 s (${before} rows)`);
const tailed = await rows();
if (tailed.some((r) => r.service !== "gateway")) await fail(`the tail let another service through: ${JSON.stringify(tailed.slice(0, 5))}`);
if (problems.length) await fail(`page errors: ${problems.join("; ")}`);

await browser.close();
console.log(JSON.stringify({
  ok: true, screenshot, traced: traced.length,
  under_gateway: gatewayLines.length, under_orders: ordersLines.length,
  tail: { before, after, newest_before: newest.slice(0, 80) },
}));
