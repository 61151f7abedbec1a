// `megalith plan` as a user runs it (spawned, from source): JSON with the documented fields,
// the human table, errors for a missing calibration; and `calibrate()` in-process at tiny sizes.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const BIN = fileURLToPath(new URL("../../bin/megalith.js", import.meta.url));
const CONFIG = fileURLToPath(new URL("../../configs/tiny.json", import.meta.url));

function megalith(args: string[], env: Record<string, string>): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [BIN, ...args], { env: { ...process.env, MEGALITH_FROM_SOURCE: "1", ...env }, timeout: 60_000 },
      (err, stdout, stderr) => resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr }));
  });
}

test("megalith plan --config configs/tiny.json --world 4 --json returns the documented fields", { timeout: 70_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), "megalith-plan-"));
  try {
    const r = await megalith(["plan", "--config", CONFIG, "--world", "4", "--json"], { MEGALITH_PLAN_PROFILE: join(dir, "none.json") });
    assert.equal(r.code, 0, r.stderr);
    const p = JSON.parse(r.stdout);
    assert.equal(p.world, 4);
    assert.equal(p.hardware.name, "a100-80g", "no calibration: the default is a100-80g");
    for (const k of ["parameters", "n_layer", "n_embd", "n_head", "block_size", "vocab_size", "global_batch", "precision"]) assert.ok(k in p.model, k);
    assert.ok(Array.isArray(p.layouts) && p.layouts.length > 0 && Array.isArray(p.refused) && Array.isArray(p.explanation));
    for (const x of p.layouts) {
      for (const k of ["dp", "tp", "pp", "sp", "zero", "recompute", "schedule", "virtualStages", "microBatchSize", "microBatches"]) assert.ok(k in x.layout, k);
      for (const k of ["parameters", "gradients", "optimizer", "activations", "communication_buffers", "total"]) assert.equal(typeof x.memory[k], "number", k);
      for (const k of ["dp_all_reduce", "dp_reduce_scatter", "dp_all_gather", "tp_all_reduce", "sp_all_gather", "sp_reduce_scatter", "pp_send_recv"]) assert.equal(typeof x.comm_bytes[k], "number", k);
      assert.equal(typeof x.fits, "boolean");
      assert.ok(x.bubble >= 0 && x.flops.model > 0 && x.flops.hardware >= x.flops.model && x.step_time.total > 0 && x.mfu > 0);
      assert.equal(x.layout.dp * x.layout.tp * x.layout.pp, 4);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("megalith plan prints a table with cpu-this from a calibration file, and names the fix when there is none", { timeout: 70_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), "megalith-plan-"));
  try {
    const missing = await megalith(["plan", "--config", CONFIG, "--world", "2", "--hardware", "cpu-this"], { MEGALITH_PLAN_PROFILE: join(dir, "none.json") });
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /megalith plan --calibrate/);
    const file = join(dir, "profile.json");
    writeFileSync(file, JSON.stringify({ version: 1, measured_at: "2025-01-01T00:00:00Z", cpu: "test cpu", threads: 2, memory_bytes: 8e9, gemm_flops: { float32: 2e11 }, gemm_shapes: [], memory_bandwidth: 2e10, collectives: null }));
    const r = await megalith(["plan", "--config", CONFIG, "--world", "2"], { MEGALITH_PLAN_PROFILE: file });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /on 2 ranks of cpu-this/);
    assert.match(r.stdout, /#\s+layout\s+mem\/rank\s+fits/);
    assert.match(r.stdout, /first choice: dp/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("calibrate() measures GEMM FLOP/s per dtype and copy bandwidth, collectives left null", async () => {
  const { calibrate } = await import("../../src/plan/calibrate.js");
  const rec = calibrate({ budgetMs: 20, shapes: [[64, 64, 64]], dtypes: ["float32"], copyBytes: 1 << 20 });
  assert.equal(rec.version, 1);
  assert.ok(rec.gemm_flops.float32! > 1e6 && rec.memory_bandwidth > 1e6 && rec.memory_bytes > 0);
  assert.equal(rec.collectives, null);
});
