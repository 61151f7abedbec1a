// Bytes each rank sends per step, counted by the collectives layer (commStats), against the
// formulas of Megatron's papers: tensor parallelism moves 4 all-reduces of b·s·h per layer per
// forward + backward (Shoeybi et al. 2019); sequence parallelism the same volume as 4
// all-gathers + 4 reduce-scatters (Korthikanti et al. 2022); a pipeline sends b·s·h per
// micro-batch per stage boundary each way (Narayanan et al. 2021). The per-layer terms are
// isolated by running 1 and 2 layers; the totals are checked exactly too.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { mpirunArgs } from "../../src/cli/launch.js";

const haveMpi = spawnSync("mpirun", ["--version"]).status === 0 && existsSync("native/build/Release/megalith_mpi.node");
const skip = haveMpi ? false : "mpirun or the MPI addon is not available";

type Counts = Record<"allReduce" | "allGather" | "reduceScatter" | "send" | "recv" | "broadcast", number>;
interface Out { B: number; T: number; C: number; V: number; nLayer: number; m: number; ranks: Counts[] }

function run(layout: string, nLayer: number, m = 1): Out {
  const r = spawnSync("mpirun", mpirunArgs(2, [layout, String(nLayer), String(m)], undefined, "test/parallel/_workers/comm_worker.ts", ["--import", "tsx"]), {
    encoding: "utf8", timeout: 120_000, env: { ...process.env, MEGALITH_NUM_THREADS: "1" },
  });
  assert.equal(r.status, 0, r.stderr);
  const line = r.stdout.trim().split("\n").find((l) => l.includes("{\"B\""))!;
  return JSON.parse(line.slice(line.indexOf("{")));
}

test("tensor parallelism all-reduces 4 x b·s·h per layer per forward + backward (plus the embedding, head and vocab-parallel loss)", { skip }, () => {
  const one = run("tp", 1), two = run("tp", 2);
  const bsh = one.B * one.T * one.C * 4;   // float32 bytes
  for (let r = 0; r < 2; r++) {
    assert.equal(two.ranks[r]!.allReduce - one.ranks[r]!.allReduce, 4 * bsh, `rank ${r}: per-layer all-reduce bytes`);
    // Embedding all-reduce (forward) + head input (backward) + the loss's max, sum and target logit per token.
    assert.equal(one.ranks[r]!.allReduce, 4 * bsh + 2 * bsh + 3 * one.B * one.T * 4, `rank ${r}: total all-reduce bytes at 1 layer`);
    assert.equal(one.ranks[r]!.allGather + one.ranks[r]!.reduceScatter, 0);
  }
});

test("sequence parallelism replaces them with the same volume of all-gathers and reduce-scatters (4 + 4 x b·s·h per layer), plus the 2 re-gathers of stored shards", { skip }, () => {
  const one = run("tp_sp", 1), two = run("tp_sp", 2);
  const bsh = one.B * one.T * one.C * 4;
  for (let r = 0; r < 2; r++) {
    // 4 all-gathers and 4 reduce-scatters replace the 4 all-reduces; the column-parallel layers
    // keep only their token shard and gather it again in backward (Korthikanti §4.2.2): 2 more.
    assert.equal(two.ranks[r]!.allGather - one.ranks[r]!.allGather, (4 + 2) * bsh, `rank ${r}: per-layer all-gather bytes`);
    assert.equal(two.ranks[r]!.reduceScatter - one.ranks[r]!.reduceScatter, 4 * bsh, `rank ${r}: per-layer reduce-scatter bytes`);
    // Only the replicated parameters used on token shards are all-reduced: 2 layernorms (weight, bias) and 2 row-parallel biases.
    assert.equal(two.ranks[r]!.allReduce - one.ranks[r]!.allReduce, 6 * one.C * 4, `rank ${r}: per-layer all-reduce bytes (parameter gradients only)`);
  }
});

test("a 2-stage pipeline sends b·s·h per micro-batch across its boundary, activations forward and gradients back", { skip }, () => {
  const m = 4, out = run("pp", 2, m);
  const bsh = out.B * out.T * out.C * 4;
  for (let r = 0; r < 2; r++) {
    assert.equal(out.ranks[r]!.send, m * bsh, `stage ${r}: bytes sent`);
    assert.equal(out.ranks[r]!.recv, m * bsh, `stage ${r}: bytes received`);
    // The tied embedding's gradient is summed between the first and last stage once per step.
    assert.equal(out.ranks[r]!.allReduce, out.V * out.C * 4, `stage ${r}: tied-embedding all-reduce`);
  }
});
