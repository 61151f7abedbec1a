// The curves without a browser: metrics rows -> points (series.ts), the incremental reader of a
// growing metrics.jsonl (runs.ts), and the SVG plot (svg.ts): one path per curve, with exactly
// the points of metrics.jsonl.
import { test } from "node:test";
import assert from "node:assert/strict";
import { appendFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CHARTS, MetricsTail, collectCharts, niceTicks, readRuns, renderSvg, resolveRuns, rowsToPoints, watchRuns } from "../../src/dashboard/index.js";
import { expectedPoints, runRows, toJsonl, trainRow } from "./_metrics.js";

test("rowsToPoints() gives every series of CHARTS exactly the rows' values", () => {
  const rows = runRows(12);
  const got = rowsToPoints(rows);
  for (const chart of CHARTS) {
    chart.series.forEach((s, i) => {
      const sp = got.find((p) => p.chart === chart.id && p.series === i);
      assert.deepEqual(sp?.points ?? [], expectedPoints(rows, s.key, s.kind), `${chart.id}/${s.label}`);
    });
  }
  // The skipped step feeds the loss-scale curve only.
  assert.ok(got.find((p) => p.chart === "loss_scale")!.points.some(([x, y]) => x === 3 && y === 32768));
  assert.ok(!got.find((p) => p.chart === "loss" && p.series === 0)!.points.some(([x]) => x === 3));
});

test("rowsToPoints() leaves out non-finite values and rows without a step", () => {
  const got = rowsToPoints([{ step: 0, loss: NaN, lr: 1 }, { loss: 3 }, { step: 1, loss: null, lr: 2 }]);
  assert.deepEqual(got, [{ chart: "lr", series: 0, points: [[0, 1], [1, 2]] }]);
});

test("MetricsTail.read() returns complete new lines only, and a reset after truncation", () => {
  const dir = mkdtempSync(join(tmpdir(), "megalith-tail-"));
  try {
    const file = join(dir, "metrics.jsonl");
    const tail = new MetricsTail(file);
    assert.deepEqual(tail.read(), { reset: false, rows: [] }, "a missing file reads as no rows");
    writeFileSync(file, toJsonl([trainRow(0), trainRow(1)]) + '{"step": 2, "lo');
    assert.deepEqual(tail.read().rows.map((r) => r.step), [0, 1]);
    appendFileSync(file, 'ss": 9}\n');
    assert.deepEqual(tail.read(), { reset: false, rows: [{ step: 2, loss: 9 }] }, "the torn line is read once complete");
    assert.deepEqual(tail.read(), { reset: false, rows: [] });
    writeFileSync(file, toJsonl([trainRow(0)]));  // --resume truncated the file
    assert.deepEqual(tail.read(), { reset: true, rows: [trainRow(0)] });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("watchRuns() reports the whole file, then each appended line", async () => {
  const dir = mkdtempSync(join(tmpdir(), "megalith-watch-"));
  try {
    const file = join(dir, "metrics.jsonl");
    writeFileSync(file, toJsonl([trainRow(0)]));
    const seen: number[] = [];
    const stop = watchRuns(resolveRuns([dir]), (_i, r) => seen.push(...r.rows.map((x) => x.step as number)), { pollMs: 50 });
    appendFileSync(file, toJsonl([trainRow(1)]));
    for (let i = 0; i < 100 && seen.length < 2; i++) await new Promise((r) => setTimeout(r, 20));
    stop();
    assert.deepEqual(seen, [0, 1]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("resolveRuns() expands a folder of runs and names runs that share a base name by path", () => {
  const root = mkdtempSync(join(tmpdir(), "megalith-runs-"));
  try {
    for (const d of ["a/x", "b/x", "a/y"]) {
      mkdirSync(join(root, d), { recursive: true });
      writeFileSync(join(root, d, "metrics.jsonl"), "");
    }
    assert.deepEqual(resolveRuns([join(root, "a")]).map((r) => r.name), ["x", "y"]);
    assert.deepEqual(resolveRuns([join(root, "a/x"), join(root, "b/x")]).map((r) => r.name), [join(root, "a/x"), join(root, "b/x")]);
    assert.throws(() => resolveRuns([join(root, "nothing")], { requireMetrics: true }), /no metrics.jsonl there/);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test("renderSvg() draws one path per series with the right number of points", () => {
  const runs = [{ name: "a", rows: runRows(12) }, { name: "b", rows: runRows(7, 1) }];
  const svg = renderSvg(runs);
  assert.match(svg, /^<svg xmlns="http:\/\/www.w3.org\/2000\/svg" width="1200" height="\d+"/);
  const paths = [...svg.matchAll(/<path class="series" data-run="([^"]*)" data-label="([^"]*)" data-points="(\d+)" d="([^"]*)"/g)];
  const expected = CHARTS.flatMap((c) => runs.flatMap((r) => c.series.map((s) => ({ run: r.name, label: `${r.name}: ${s.label}`, n: expectedPoints(r.rows, s.key, s.kind).length }))))
    .filter((e) => e.n > 0);
  assert.equal(paths.length, expected.length);
  for (const e of expected) {
    const p = paths.find((m) => m[1] === e.run && m[2] === e.label);
    assert.ok(p, `a path for ${e.label}`);
    assert.equal(Number(p[3]), e.n, `${e.label}: data-points`);
    assert.equal((p[4]!.match(/[ML]/g) ?? []).length, e.n, `${e.label}: one M/L command per point`);
  }
  assert.equal(collectCharts(runs).length, CHARTS.length, "every chart has data in these rows");
});

test("renderSvg() places points by value: the lowest loss is the lowest point", () => {
  const rows = [0, 1, 2].map((s) => trainRow(s));
  const svg = renderSvg([{ name: "r", rows }]);
  const d = /data-label="train loss" data-points="3" d="([^"]*)"/.exec(svg)![1]!;
  const ys = [...d.matchAll(/[ML][\d.]+ ([\d.]+)/g)].map((m) => Number(m[1]));
  assert.ok(ys[0]! < ys[1]! && ys[1]! < ys[2]!, `loss falls, so y (downwards in SVG) grows: ${ys}`);
  assert.ok(readRuns([]).length === 0);
  assert.deepEqual(niceTicks(0, 10), [0, 2, 4, 6, 8, 10]);
});
