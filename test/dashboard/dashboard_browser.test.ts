// `megalith dashboard` end to end, as a user runs it: the CLI serves two runs, headless Chromium
// (Debian's chromium through playwright-core) loads the page without console errors, the chart
// uPlot draws holds exactly metrics.jsonl's points (read from window.__megalith, which exposes
// the arrays handed to uPlot), and a line appended to metrics.jsonl becomes a new point.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { appendFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import type { Page } from "playwright-core";
import { findChromium, launchChromium, type HeadlessBrowser } from "../../src/dashboard/index.js";
import { expectedPoints, runRows, toJsonl, trainRow } from "./_metrics.js";

const BIN = fileURLToPath(new URL("../../bin/megalith.js", import.meta.url));
const chromium = findChromium();
const skip = chromium ? false : "no Chromium at /usr/bin/chromium (scripts/setup.sh installs Debian's chromium); the page is not tested";

interface Plotted { labels: string[]; data: Array<Array<number | null>> }

let root = "", url = "";
let server: ChildProcess | undefined;
let browser: HeadlessBrowser | undefined;
let page: Page | undefined;
const consoleErrors: string[] = [];

before(async () => {
  if (skip) return;
  root = mkdtempSync(join(tmpdir(), "megalith-dash-"));
  for (const [name, n, k] of [["base", 12, 0], ["bf16", 8, 1]] as const) {
    mkdirSync(join(root, name));
    writeFileSync(join(root, name, "metrics.jsonl"), toJsonl(runRows(n, k)));
  }
  server = spawn(process.execPath, [BIN, "dashboard", join(root, "base"), join(root, "bf16"), "--port", "0"], {
    env: { ...process.env, MEGALITH_FROM_SOURCE: "1" }, stdio: ["ignore", "pipe", "pipe"],
  });
  url = await new Promise<string>((resolve, reject) => {
    let out = "", err = "";
    server!.stdout!.on("data", (d: Buffer) => {
      out += d;
      const m = /dashboard at (http:\/\/\S+)/.exec(out);
      if (m) resolve(m[1]!);
    });
    server!.stderr!.on("data", (d: Buffer) => (err += d));
    server!.on("exit", (code) => reject(new Error(`megalith dashboard exited ${code}: ${err}`)));
  });
  browser = await launchChromium();
  page = await browser.context.newPage();
  page.on("console", (m) => { if (m.type() === "error" || m.type() === "warning") consoleErrors.push(`${m.type()}: ${m.text()}`); });
  page.on("pageerror", (e) => consoleErrors.push(`pageerror: ${e.message}`));
  page.on("requestfailed", (r) => consoleErrors.push(`requestfailed: ${r.url()}`));
  await page.goto(url);
  await page.waitForFunction(() => (globalThis as unknown as { __megalith?: { ready: boolean } }).__megalith?.ready === true, null, { timeout: 20_000 });
});

after(async () => {
  await browser?.close();
  server?.kill("SIGTERM");
  if (root) rmSync(root, { recursive: true, force: true });
});

const plotted = (id: string): Promise<Plotted | undefined> =>
  page!.evaluate((chart) => (globalThis as unknown as { __megalith: { plotted: Record<string, Plotted> } }).__megalith.plotted[chart], id);

/** The (x, y) pairs uPlot holds for one legend label (its aligned x column, nulls dropped). */
function pointsOf(p: Plotted, label: string): Array<[number, number]> {
  const col = p.labels.indexOf(label);
  assert.ok(col >= 0, `a series labelled ${JSON.stringify(label)} among ${JSON.stringify(p.labels)}`);
  const out: Array<[number, number]> = [];
  p.data[0]!.forEach((x, i) => {
    const y = p.data[col + 1]![i];
    if (y !== null && y !== undefined) out.push([x as number, y]);
  });
  return out;
}

test("the dashboard page loads without console errors and draws a canvas per chart", { skip }, async () => {
  assert.deepEqual(consoleErrors, []);
  assert.equal(await page!.title(), "megalith dashboard");
  const canvases = await page!.locator("section.chart:not([hidden]) canvas").count();
  assert.ok(canvases >= 8, `a uPlot canvas per chart with data, got ${canvases}`);
  assert.match(await page!.locator("#runs").innerText(), /base \(step 11, loss .*bf16 \(step 7/);
});

test("the plotted points equal metrics.jsonl for every series of both runs", { skip }, async () => {
  const runs = [["base", runRows(12, 0)], ["bf16", runRows(8, 1)]] as const;
  const specs: Array<[string, string, string, "train" | "val"]> = [
    ["loss", "train loss", "loss", "train"], ["loss", "val loss", "loss", "val"], ["val_bpb", "val bpb", "val_bpb", "val"],
    ["lr", "lr", "lr", "train"], ["tokens_per_s", "tokens/s", "tokens_per_s", "train"], ["mfu", "MFU", "mfu", "train"],
    ["memory", "params", "mem_params_mb", "train"], ["memory", "activations (peak)", "mem_act_peak_mb", "train"],
    ["memory", "total (peak)", "mem_peak_mb", "train"], ["loss_scale", "loss scale", "loss_scale", "train"], ["grad_norm", "grad norm", "grad_norm", "train"],
  ];
  for (const [chart, label, key, kind] of specs) {
    const p = await plotted(chart);
    assert.ok(p, `chart ${chart} is plotted`);
    for (const [run, rows] of runs) assert.deepEqual(pointsOf(p, `${run}: ${label}`), expectedPoints(rows, key, kind), `${chart} / ${run}: ${label}`);
  }
});

test("a line appended to metrics.jsonl becomes a new point on the page", { skip }, async () => {
  const before = (await page!.evaluate(() => (globalThis as unknown as { __megalith: { updates: number } }).__megalith.updates));
  const row = trainRow(12);
  appendFileSync(join(root, "base", "metrics.jsonl"), JSON.stringify(row) + "\n");
  await page!.waitForFunction((n) => (globalThis as unknown as { __megalith: { updates: number } }).__megalith.updates > n, before, { timeout: 10_000 });
  const loss = pointsOf((await plotted("loss"))!, "base: train loss");
  assert.equal(loss.length, 12, "11 train steps (one was skipped) + the new one");
  assert.deepEqual(loss.at(-1), [12, row.loss]);
  assert.deepEqual(pointsOf((await plotted("tokens_per_s"))!, "base: tokens/s").at(-1), [12, row.tokens_per_s]);
  assert.deepEqual(consoleErrors, []);
});
