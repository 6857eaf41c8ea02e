// What both browser checks share: a headless Chromium (playwright-core driving the machine's
// own, `CHROMIUM` or /usr/bin/chromium) on a fresh profile, one page whose script errors are
// collected, and `fail`, which saves a screenshot, closes the browser and exits non-zero.
import { chromium } from "playwright-core";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export async function open(screenshot) {
  const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
  const profile = mkdtempSync(join(tmpdir(), "stratus-chromium-"));
  // A fresh profile directory (playwright passes it to Chromium as --user-data-dir).
  const browser = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: true,
    viewport: { width: 1440, height: 1000 },
    deviceScaleFactor: 1,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
  const page = browser.pages()[0] || (await browser.newPage());
  const problems = [];
  page.on("pageerror", (error) => problems.push(String(error)));
  page.on("console", (m) => m.type() === "error" && problems.push(m.text()));
  const fail = async (message) => {
    await page.screenshot({ path: screenshot, fullPage: true }).catch(() => {});
    await browser.close();
    console.error(`FAIL: ${message} (screenshot: ${screenshot})`);
    process.exit(1);
  };
  return { browser, page, problems, fail };
}
