// train.trace end to end: `megalith launch -n 2 -- train` with a 2-stage pipeline writes one
// trace per rank for the first train.trace_steps steps, and launch merges them into the path
// the config names: both ranks as processes, forward and backward spans for every micro-batch,
// the stages' waits as idle, point-to-point transfers on the communication thread, optimizer
// spans and step marks.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { skip, prepare } from "./_layouts.js";
import type { TraceEvent } from "../../src/core/trace.js";

test("`megalith launch` merges the ranks' train.trace files: per-rank forward/backward per micro-batch, idle waits, send/recv, optimizer, steps", { skip }, async () => {
  const root = mkdtempSync(join(tmpdir(), "megalith-trace-"));
  try {
    const data = await prepare(root);
    const cfg = {
      out_dir: join(root, "run"), model: { n_layer: 2, n_head: 2, n_embd: 32, block_size: 32, vocab_size: 50304 }, data: { source: data },
      train: { max_steps: 3, micro_batch_size: 2, grad_accum_steps: 4, log_interval: 100, trace: join(root, "trace.json"), trace_steps: 2 },
      eval: { interval: 0, batches: 1 }, parallel: { pp: 2 },
    };
    const file = join(root, "cfg.json");
    writeFileSync(file, JSON.stringify(cfg));
    const r = spawnSync(process.execPath, ["bin/megalith.js", "launch", "-n", "2", "--", "train", "--config", file], { encoding: "utf8", timeout: 180_000 });
    assert.equal(r.status, 0, r.stderr);
    assert.ok(existsSync(join(root, "trace.json")), `no merged trace: ${r.stderr.slice(-500)}`);
    const ev = (JSON.parse(readFileSync(join(root, "trace.json"), "utf8")) as { traceEvents: TraceEvent[] }).traceEvents;
    const spans = ev.filter((e) => e.ph === "X");
    const pids = [...new Set(spans.map((e) => e.pid))].sort();
    assert.deepEqual(pids, [0, 1], "both ranks are in the merged trace");
    for (const pid of pids) {
      const mine = spans.filter((e) => e.pid === pid);
      const count = (cat: string) => mine.filter((e) => e.cat === cat).length;
      // 2 traced steps x 4 micro-batches, one chunk per stage.
      assert.equal(count("forward"), 8, `rank ${pid}: forward spans`);
      assert.equal(count("backward"), 8, `rank ${pid}: backward spans`);
      assert.equal(count("optimizer"), 2, `rank ${pid}: optimizer spans`);
      assert.ok(count("idle") >= 1, `rank ${pid}: the pipeline's waits show as idle`);
      assert.ok(mine.some((e) => (e.cat === "send" || e.cat === "recv") && e.tid === 1), `rank ${pid}: transfers on the communication thread`);
      assert.equal(ev.filter((e) => e.pid === pid && e.ph === "i").length >= 2, true, `rank ${pid}: step marks`);
    }
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
