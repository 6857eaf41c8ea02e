// Drives the event sink's dashboard in a real Chromium: the topology shows the gateway, the
// catalog and the catalog's database with numbers that change under load, a trace opens into its waterfall, the
// live stream keeps its one snapshot a second while the sink is flooded with records, and a
// screenshot is saved. Run by tests/dashboard.rs with DASHBOARD_URL, SCREENSHOT and CHROMIUM set.
import { open } from "./browser.mjs";

const url = process.env.DASHBOARD_URL;
const screenshot = process.env.SCREENSHOT;
if (!url || !screenshot) throw new Error("DASHBOARD_URL and SCREENSHOT must be set");

const { browser, page, problems, fail } = await open(screenshot);

await page.goto(url);
const edge = '[data-edge="gateway->catalog"] text';
try {
  await page.waitForSelector("#conn.on", { timeout: 15000 });
  await page.waitForSelector("#node-gateway", { timeout: 15000 });
  await page.waitForSelector("#node-catalog", { timeout: 15000 });
  await page.waitForSelector(edge, { timeout: 15000 });
} catch (error) {
  await fail(`the topology never showed gateway -> catalog: ${error.message}`);
}

// The catalog's database is a node of its own (drawn as a database), with a measured edge.
try {
  await page.waitForSelector("#node-catalog-db.database", { timeout: 15000 });
  await page.waitForSelector('[data-edge="catalog->catalog-db"] text', { timeout: 15000 });
} catch (error) {
  await fail(`the topology never showed catalog -> catalog-db: ${error.message}`);
}
const legend = await page.$$eval("#legend .item", (items) => items.map((i) => i.dataset.kind));
if (!legend.includes("database") || !legend.includes("cache")) await fail(`legend: ${JSON.stringify(legend)}`);

// The numbers on the gateway -> catalog edge move while load runs.
const first = await page.textContent(edge);
let second = first;
const deadline = Date.now() + 20000;
while (second === first && Date.now() < deadline) {
  await page.waitForTimeout(250);
  second = await page.textContent(edge);
}
if (second === first) await fail(`the gateway -> catalog edge stayed at "${first}"`);
if (!/\d/.test(first) || !/%/.test(first) || !/ms/.test(first)) await fail(`edge label without figures: "${first}"`);

// Instances: the catalog's instances share its traffic.
const shares = await page.$$eval('[data-service="catalog"] .inst', (rows) => rows.length);
if (shares < 1) await fail("no catalog instances listed");

// A trace through the gateway (its route is catalog-read) opens into a waterfall of both.
const row = page.locator("#traces tr", { hasText: "gateway" }).first();
try {
  await row.waitFor({ timeout: 15000 });
  await row.click();
  await page.waitForFunction(() => document.querySelectorAll("#waterfall .wf-row").length >= 2, null, { timeout: 15000 });
} catch (error) {
  await fail(`no waterfall for a catalog trace: ${error.message}`);
}
const bars = await page.$$eval("#waterfall .wf-row", (rows) => rows.map((r) => ({
  label: r.querySelector(".wf-label").textContent,
  indent: parseFloat(r.querySelector(".wf-label").style.paddingLeft) || 0,
  width: r.querySelector(".wf-bar").getBoundingClientRect().width,
})));
const gateway = bars.find((b) => b.label.startsWith("gateway"));
const catalog = bars.find((b) => b.label.startsWith("catalog"));
if (!gateway || !catalog) await fail(`waterfall rows: ${JSON.stringify(bars)}`);
if (!(catalog.indent > gateway.indent)) await fail(`the catalog span is not under the gateway: ${JSON.stringify(bars)}`);
// The catalog's hop is a request it served (its route), not a call to whoever called it.
if (!bars.some((b) => b.label.startsWith("catalog") && b.label.includes("/api/catalog/products") && !b.label.includes("→")))
  await fail(`the catalog's request is not labelled with its route: ${JSON.stringify(bars)}`);
if (!(gateway.width > 0 && catalog.width > 0)) await fail(`empty bars: ${JSON.stringify(bars)}`);
if (problems.length) await fail(`page errors: ${problems.join("; ")}`);

// The sink is being flooded with records meanwhile: the live stream still brings a snapshot
// every second (it used to stop for seconds under load).
const arrivals = await page.evaluate(async () => {
  const source = new EventSource("/v1/stream");
  const times = [];
  source.addEventListener("snapshot", () => times.push(performance.now()));
  await new Promise((resolve) => setTimeout(resolve, 10000));
  source.close();
  return times;
});
const gaps = arrivals.slice(1).map((t, i) => t - arrivals[i]);
const longest = Math.max(0, ...gaps);
if (arrivals.length < 8 || longest > 2500)
  await fail(`under the flood the stream sent ${arrivals.length} snapshots in 10 s, longest gap ${longest.toFixed(0)} ms`);

await page.waitForTimeout(300);
await page.screenshot({ path: screenshot, fullPage: true });
await browser.close();
console.log(JSON.stringify({ ok: true, first, second, instances: shares, waterfall: bars, snapshots: arrivals.length, longest_gap_ms: Math.round(longest), screenshot }));
