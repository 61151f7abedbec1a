// Tensor-parallel layers against the single-device model, gradient by gradient: each rank
// builds the same seeded GPT twice, applies tensor (and sequence) parallelism to one, runs the
// same batch through both, and compares the loss and every local gradient and weight with the
// matching shard of the reference (tp_worker.ts). Real ranks under mpirun; several seeds, an
// odd vocabulary (padded and masked), and dropout in the replicated region.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { mpirunArgs } from "../../src/cli/launch.js";
import { GPT, tensor, randn, noGrad } from "../../src/index.js";
import { applyTensorParallel, shardOfLogical, logicalFromShards, worldGroup, type ShardSpec } from "../../src/parallel/index.js";

const haveMpi = spawnSync("mpirun", ["--version"]).status === 0 && existsSync("native/build/Release/megalith_mpi.node");

function runWorker(args: string[]): { refLoss: number; tpLoss: number; diffs: Record<string, number> } {
  const r = spawnSync("mpirun", mpirunArgs(2, args, undefined, "test/parallel/_workers/tp_worker.ts", ["--import", "tsx"]), {
    encoding: "utf8", timeout: 120_000, env: { ...process.env, MEGALITH_NUM_THREADS: "1" },
  });
  assert.equal(r.status, 0, r.stderr);
  // mpirun --tag-output prefixes each line with its rank ("[1,0]<stdout>:").
  const line = r.stdout.trim().split("\n").find((l) => l.includes("{\"refLoss\""))!;
  return JSON.parse(line.slice(line.indexOf("{")));
}

const CASES: Array<{ seed: number; sp: boolean; vocab: number; dropout: number }> = [
  { seed: 5, sp: false, vocab: 301, dropout: 0 },
  { seed: 6, sp: true, vocab: 301, dropout: 0 },
  { seed: 7, sp: false, vocab: 256, dropout: 0.1 },
  { seed: 8, sp: true, vocab: 517, dropout: 0 },
];

for (const c of CASES) {
  test(`applyTensorParallel() at tp=2 gives the single-device loss and every gradient shard (seed ${c.seed}, ${c.sp ? "sequence parallel" : "no sp"}, vocab ${c.vocab}, dropout ${c.dropout})`, { skip: haveMpi ? false : "mpirun or the MPI addon is not available" }, () => {
    const out = runWorker([String(c.seed), c.sp ? "sp" : "nosp", String(c.vocab), String(c.dropout)]);
    assert.ok(Math.abs(out.refLoss - out.tpLoss) / out.refLoss < 1e-6, `loss ${out.tpLoss} vs reference ${out.refLoss}`);
    assert.ok(Object.keys(out.diffs).length >= 26, "every parameter was compared");
    for (const [name, d] of Object.entries(out.diffs)) assert.ok(d < 1e-5, `${name}: gradient or weight shard differs by ${d} (relative)`);
  });
}

test("shardOfLogical() and logicalFromShards() invert each other for rows, fused q/k/v rows, padded vocab rows and columns", () => {
  const specs: Array<[ShardSpec, number[]]> = [
    [{ kind: "rows", parts: 1, logicalRows: 8 }, [8, 3]],
    [{ kind: "rows", parts: 3, logicalRows: 12 }, [12, 5]],
    [{ kind: "rows", parts: 1, logicalRows: 7 }, [7, 4]],
    [{ kind: "cols" }, [3, 6]],
    [{ kind: "rows", parts: 3, logicalRows: 12 }, [12]],
  ];
  noGrad(() => {
    for (const [spec, shape] of specs) {
      const full = randn(shape, { seed: shape.length * 31 + shape[0]! });
      const parts = [0, 1].map((r) => shardOfLogical(full, spec, r, 2));
      assert.equal(parts[0]!.shape[0], parts[1]!.shape[0], "every rank holds the same shard shape");
      const back = logicalFromShards(parts, spec);
      assert.deepEqual(back.shape, full.shape);
      assert.deepEqual(Array.from(back.data() as Float32Array), Array.from(full.data() as Float32Array));
      if (spec.kind === "rows" && spec.parts === 3) {
        // Rank 1's q rows are the logical q rows [2, 4): its heads, not rows [4, 8).
        const q1 = parts[1]!.narrow(0, 0, 2), want = full.narrow(0, 2, 2);
        assert.deepEqual(Array.from(q1.data() as Float32Array), Array.from(want.data() as Float32Array));
      }
      if (spec.kind === "rows" && spec.logicalRows === 7) {
        const pad = parts[1]!.narrow(0, 3, 1);
        assert.ok((pad.data() as Float32Array).every((v) => v === 0), "the padded vocabulary row is zero");
      }
    }
  });
});

test("applyTensorParallel() at tp=1 changes nothing, and refuses sequence parallelism without tp", () => {
  const m = new GPT({ nLayer: 1, nHead: 2, nEmbd: 16, blockSize: 8, vocabSize: 40 }, { seed: 3 });
  const before = m.namedParameters().map(([n, p]) => [n, p] as const);
  const plan = applyTensorParallel(m, worldGroup());
  assert.deepEqual(m.namedParameters().map(([n]) => n), before.map(([n]) => n));
  for (const [n, p] of m.namedParameters()) assert.equal(p, before.find(([k]) => k === n)![1], `${n} is the same tensor`);
  assert.ok([...plan.specs.values()].every((s) => s.kind === "replicated"));
  assert.throws(() => applyTensorParallel(m, worldGroup(), { sequenceParallel: true }), /sequence parallelism needs tp > 1/);
  void tensor;
});
