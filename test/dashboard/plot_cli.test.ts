// `megalith plot` as a user runs it: an SVG with one path per curve holding metrics.jsonl's
// points, a PNG with a valid header and the SVG's size, and clear errors for bad paths.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { findChromium } from "../../src/dashboard/index.js";
import { expectedPoints, runRows, toJsonl } from "./_metrics.js";

const BIN = fileURLToPath(new URL("../../bin/megalith.js", import.meta.url));

function megalith(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [BIN, ...args], { env: { ...process.env, MEGALITH_FROM_SOURCE: "1" }, timeout: 60_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

let root = "";
before(() => {
  root = mkdtempSync(join(tmpdir(), "megalith-plot-"));
  mkdirSync(join(root, "run"));
  writeFileSync(join(root, "run", "metrics.jsonl"), toJsonl(runRows(20)));
});
after(() => rmSync(root, { recursive: true, force: true }));

test("megalith plot --out x.svg writes one path per series with the run's points", async () => {
  const out = join(root, "curves.svg");
  const r = await megalith("plot", join(root, "run"), "--out", out);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /plot: 8 charts, 13 curves from run \(24 rows\)/);
  const svg = readFileSync(out, "utf8");
  const paths = [...svg.matchAll(/<path class="series" data-run="run" data-label="([^"]*)" data-points="(\d+)" d="([^"]*)"/g)];
  assert.equal(paths.length, 13);
  const rows = runRows(20);
  const count = (label: string): number => (paths.find((p) => p[1] === label)![3]!.match(/[ML]/g) ?? []).length;
  assert.equal(count("train loss"), expectedPoints(rows, "loss", "train").length);
  assert.equal(count("val loss"), 4);
  assert.equal(count("loss scale"), 20, "the skipped step's loss scale is a point too");
});

test("megalith plot --out x.png writes a PNG of the SVG's size", { skip: findChromium() ? false : "no Chromium at /usr/bin/chromium (scripts/setup.sh installs it)" }, async () => {
  const out = join(root, "curves.png");
  const r = await megalith("plot", join(root, "run"), "--out", out, "--width", "900");
  assert.equal(r.code, 0, r.stderr);
  const png = readFileSync(out);
  assert.deepEqual([...png.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a], "PNG signature");
  assert.equal(png.subarray(12, 16).toString("latin1"), "IHDR");
  assert.equal(png.readUInt32BE(16), 900, "width");
  assert.equal(png.readUInt32BE(20), 36 + 4 * 280, "height: header + 4 rows of 2 panels");
  assert.ok(png.length > 10_000, `a drawn image, ${png.length} bytes`);
});

test("megalith plot refuses a directory without metrics and an unknown extension", async () => {
  const r1 = await megalith("plot", join(root, "missing"), "--out", join(root, "x.svg"));
  assert.equal(r1.code, 2);
  assert.match(r1.stderr, /megalith: error: .*missing: no metrics.jsonl there/);
  const r2 = await megalith("plot", join(root, "run"), "--out", join(root, "x.jpg"));
  assert.equal(r2.code, 2);
  assert.match(r2.stderr, /must end in .svg or .png/);
});
