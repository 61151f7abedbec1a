// Sequence parallelism's point is memory: Korthikanti et al. 2022, Table 2, per layer in bytes
// of a 16-bit format with selective recomputation: 34sbh on one device, sbh(10 + 24/t) under
// tensor parallelism (the layernorm/dropout region, 10sbh, stays whole on every rank), 34sbh/t
// with sequence parallelism (that region split too). Measured from the allocator in fp32
// (every figure doubled). The table's 34 counts two 1-byte dropout masks (2sbh, 2sbh/t under
// sp) that we never store (they are regenerated from the counter RNG), so they are taken out.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { mpirunArgs } from "../../src/cli/launch.js";

const haveMpi = spawnSync("mpirun", ["--version"]).status === 0 && existsSync("native/build/Release/megalith_mpi.node");

for (const [s, b, h, a] of [[128, 4, 64, 4], [64, 2, 96, 6]] as const) {
  test(`activation bytes per layer: one device 34sbh, tp=2 sbh(10 + 24/t), tp=2 + sp 34sbh/t, within 10% (fp32, selective, s=${s} b=${b} h=${h} a=${a})`, { skip: haveMpi ? false : "mpirun or the MPI addon is not available" }, () => {
    const r = spawnSync("mpirun", mpirunArgs(2, ["selective", String(s), String(b), String(h), String(a)], undefined, "test/parallel/_workers/sp_memory_worker.ts", ["--import", "tsx"]), {
      encoding: "utf8", timeout: 180_000, env: { ...process.env, MEGALITH_NUM_THREADS: "1" },
    });
    assert.equal(r.status, 0, r.stderr);
    const line = r.stdout.split("\n").find((l) => l.includes("\"sbh\""))!;
    const m = JSON.parse(line.slice(line.indexOf("{"))) as { single: number; tp: number; sp: number; sbh: number };
    const t = 2, sbh = m.sbh, fp32 = 2;
    const want = { single: fp32 * (34 - 2) * sbh, tp: fp32 * (10 + 24 / t - 2) * sbh, sp: fp32 * (34 / t - 2 / t) * sbh };
    for (const k of ["single", "tp", "sp"] as const) {
      assert.ok(Math.abs(m[k] - want[k]) / want[k] <= 0.1, `${k}: measured ${(m[k] / sbh).toFixed(2)} sbh, formula ${(want[k] / sbh).toFixed(2)} sbh`);
    }
    // The layernorm/dropout region shrinks by t: what sp saves over tp is (10 - 2) sbh x (1 - 1/t), doubled for fp32.
    const saved = m.tp - m.sp, wantSaved = fp32 * (10 - 2) * (1 - 1 / t) * sbh;
    assert.ok(Math.abs(saved - wantSaved) / wantSaved <= 0.1, `sp saves ${(saved / sbh).toFixed(2)} sbh over tp, formula ${(wantSaved / sbh).toFixed(2)} sbh`);
  });
}
