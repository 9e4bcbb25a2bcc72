#!/usr/bin/env node
// Drive the demo page in a headless Chromium (the system's /usr/bin/chromium via playwright-core; no browser is
// ever downloaded) and print what it generated as JSON:
//
//   node deploy/web/headless.js "http://127.0.0.1:8000/web/?package=/packages/tiny/&prompt=def%20&greedy=1&autorun=1" \
//        [--screenshot page.png] [--timeout 120] [--chromium /usr/bin/chromium]
//
// Output: {"status": "done" | "error" | ..., "result": {text, tokenIds, promptIds, finishReason, stats},
//          "error": ..., "outside_requests": [URLs the page tried to load from anywhere but the page's own host]}
// Requests to other hosts are blocked (so a CDN dependency fails loudly). Exit 0 only when the page finished.

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";

import { chromium } from "playwright-core";

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    screenshot: { type: "string" },
    timeout: { type: "string", default: "180" },
    chromium: { type: "string", default: process.env.CHROMIUM ?? "/usr/bin/chromium" },
  },
});
if (positionals.length !== 1) {
  console.error("usage: node deploy/web/headless.js URL [--screenshot FILE] [--timeout SECONDS] [--chromium PATH]");
  process.exit(2);
}
const url = new URL(positionals[0]);
const timeoutMs = Number(values.timeout) * 1000;

const userDataDir = mkdtempSync(path.join(tmpdir(), "rwkv-chromium-"));
const args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
  "--disable-component-update", "--disable-sync"];
let context;
let exitCode = 1;
try {
  // launchPersistentContext is how playwright takes a --user-data-dir: a fresh, empty profile per run.
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: values.chromium, headless: true, args, viewport: { width: 1000, height: 640 }, timeout: 60000,
  });
  const outside = [];
  await context.route("**/*", (route) => {
    const target = new URL(route.request().url());
    if (target.host === url.host || target.protocol === "data:" || target.protocol === "blob:") return route.continue();
    outside.push(target.href);
    return route.abort();
  });
  const page = context.pages()[0] ?? (await context.newPage());
  page.on("console", (msg) => {
    if (msg.type() === "error" || msg.type() === "warning") console.error(`[page ${msg.type()}] ${msg.text()}`);
  });
  page.on("pageerror", (err) => console.error(`[page exception] ${err.message}`));
  // The server may still be starting (e.g. started in the background just before): retry for a few seconds.
  for (let attempt = 0; ; attempt++) {
    try {
      await page.goto(url.href);
      break;
    } catch (err) {
      if (attempt >= 40 || !String(err.message).includes("ERR_CONNECTION_REFUSED")) throw err;
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
  }
  const finished = "window.rwkvDemo && (window.rwkvDemo.status === 'done' || window.rwkvDemo.status === 'error')";
  let timedOut = false;
  await page.waitForFunction(finished, null, { timeout: timeoutMs, polling: 100 }).catch(() => {
    timedOut = true;
  });
  const demo = await page.evaluate("window.rwkvDemo ? {status: window.rwkvDemo.status, result: window.rwkvDemo.result, error: window.rwkvDemo.error} : null");
  if (values.screenshot) await page.screenshot({ path: values.screenshot, fullPage: true });
  const report = { status: demo?.status ?? "no-page-state", result: demo?.result ?? null, error: timedOut ? `timed out after ${values.timeout} s` : demo?.error ?? null, outside_requests: outside };
  process.stdout.write(JSON.stringify(report) + "\n");
  exitCode = report.status === "done" && !timedOut ? 0 : 1;
} catch (err) {
  process.stdout.write(JSON.stringify({ status: "launch-error", error: String(err.message).split("\n")[0] }) + "\n");
} finally {
  await context?.close().catch(() => {});
  rmSync(userDataDir, { recursive: true, force: true });
}
process.exit(exitCode);
