// Optimizer state on disk: the logical form (optimizer.safetensors) and the sharded form (one
// file per rank + zero_layout.json) read back as the same per-parameter moments, and
// saveCheckpointCollective() in one process commits a checkpoint holding every expected file.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  optimizerFileNames, readOptimizerMoments, saveCheckpointCollective, writeOptimizerFiles, findLatestCheckpoint, checkpointDirName,
  type FlatShardLayout, type OptimizerFiles, type TensorRecord,
} from "../../src/checkpoint/index.js";

const rec = (xs: number[]): TensorRecord => ({ dtype: "F32", shape: [xs.length], data: new Uint8Array(new Float32Array(xs).buffer) });

test("`readOptimizerMoments()` gives the same per-parameter moments from the logical and the sharded form", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "megalith-optfiles-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const names = ["a", "b", "c"], numels = [3, 2, 4];
  const m = [[1, 2, 3], [4, 5], [6, 7, 8, 9]], v = m.map((xs) => xs.map((x) => x * 10));
  const logical: OptimizerFiles = {
    kind: "logical",
    moments: { exp_avg: Object.fromEntries(names.map((n, i) => [n, rec(m[i]!)])), exp_avg_sq: Object.fromEntries(names.map((n, i) => [n, rec(v[i]!)])) },
  };
  const ldir = join(dir, "logical");
  mkdirSync(ldir);
  await writeOptimizerFiles(ldir, logical, true);
  assert.deepEqual(readdirSync(ldir), optimizerFileNames(logical));
  // Two ranks; units [a, c] (7 elements -> shards of 4) and [b] (2 -> 1 each).
  const layout: FlatShardLayout = { size: 2, units: [{ params: ["a", "c"], numel: [3, 4], shard: 4 }, { params: ["b"], numel: [2], shard: 1 }] };
  const flat = (ms: number[][]) => [[...ms[0]!, ...ms[2]!, 0], [...ms[1]!]];
  const shardOf = (ms: number[][], r: number) => [...flat(ms)[0]!.slice(4 * r, 4 * r + 4), flat(ms)[1]![r]!];
  const sdir = join(dir, "sharded");
  mkdirSync(sdir);
  for (const r of [0, 1]) {
    const f: OptimizerFiles = { kind: "sharded", rank: r, size: 2, layout, shard: { exp_avg: rec(shardOf(m, r)), exp_avg_sq: rec(shardOf(v, r)) } };
    await writeOptimizerFiles(sdir, f, r === 0);
  }
  assert.deepEqual(readdirSync(sdir).sort(), optimizerFileNames({ kind: "sharded", rank: 0, size: 2, layout, shard: {} }).sort());
  for (const d of [ldir, sdir]) {
    const got = await readOptimizerMoments(d, names, numels);
    assert.deepEqual(got.exp_avg!.map((x) => [...x]), m, `${d}: exp_avg`);
    assert.deepEqual(got.exp_avg_sq!.map((x) => [...x]), v, `${d}: exp_avg_sq`);
  }
  await assert.rejects(readOptimizerMoments(sdir, names, [3, 2, 5]), /c has 4 elements, the model's parameter has 5/);
});

test("`saveCheckpointCollective()` in one process commits the checkpoint once every expected file exists, and removes the temp dir when one is missing", async (t) => {
  const out = mkdtempSync(join(tmpdir(), "megalith-collective-"));
  t.after(() => rmSync(out, { recursive: true, force: true }));
  const group = { rank: 0, size: 1, barrier() {}, agree: (x: number[]) => x };
  const dir = join(out, checkpointDirName(3));
  await saveCheckpointCollective(dir, group, async (tmp) => writeFileSync(join(tmp, "x.json"), "{}\n"), { step: 3 }, { expectFiles: ["x.json"] });
  assert.equal((await findLatestCheckpoint(out))?.step, 3);
  await assert.rejects(
    saveCheckpointCollective(join(out, checkpointDirName(4)), group, async () => {}, { step: 4 }, { expectFiles: ["missing.json"] }),
    /expected file is missing/,
  );
  assert.deepEqual(readdirSync(out).sort(), ["ckpt-000003"]);
});
