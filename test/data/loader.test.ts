import { test } from "node:test";
import assert from "node:assert/strict";
import { truncateSync, writeFileSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { FormatError, ValueError } from "../../src/core/errors.js";
import { evalBatches, TokenLoader, type Batch, type TokenLoaderOptions } from "../../src/data/loader.js";
import { readMeta } from "../../src/data/meta.js";
import { prepareData } from "../../src/data/prepare.js";
import { readShard, SHARD_HEADER_BYTES } from "../../src/data/shards.js";
import { IndexPermutation } from "../../src/data/_permutation.js";
import { byteTokenizer, makeDocs, tempDir } from "./_helpers.js";

const T = 16;

/** A prepared dir of ~25k byte tokens in shards of 1000 (so windows come from many shards). */
async function prepared(t: { after(fn: () => void): void }): Promise<string> {
  const dir = join(tempDir(t), "data");
  await prepareData({
    tokenizer: byteTokenizer(),
    inputs: [{ name: "gen", documents: makeDocs(120, 9) }],
    outDir: dir,
    valFraction: 0.1,
    shardTokens: 1000,
    progress: false,
  });
  return dir;
}

function take(loader: TokenLoader, steps: number): Batch[] {
  return Array.from({ length: steps }, () => loader.nextBatch());
}

function open(dir: string, opts: Partial<TokenLoaderOptions> = {}): TokenLoader {
  const l = new TokenLoader({ dir, blockSize: T, microBatchSize: 4, seed: 1, ...opts });
  return l;
}

/** Every window of a split as a string key, in file order. */
function allWindows(dir: string, split: "train" | "val"): string[] {
  const out: string[] = [];
  for (const s of readMeta(dir).splits[split].shards) {
    const { tokens } = readShard(join(dir, s.file));
    for (let j = 0; (j + 1) * T + 1 <= tokens.length; j++) out.push(Array.from(tokens.subarray(j * T, j * T + T + 1)).join(","));
  }
  return out;
}

/** The windows of a batch as keys (inputs plus the last target). */
function batchWindows(b: Batch): string[] {
  return Array.from({ length: b.batchSize }, (_, r) => {
    const row = Array.from(b.inputs.subarray(r * T, r * T + T));
    return [...row, b.targets[r * T + T - 1]].join(",");
  });
}

test("`IndexPermutation` is a bijection on [0, n) that depends on its key", () => {
  for (const n of [1, 2, 3, 5, 16, 17, 100, 1000, 4097]) {
    const p = new IndexPermutation(n, [7, 0, 0]);
    const seen = new Set(Array.from({ length: n }, (_, i) => p.at(i)));
    assert.equal(seen.size, n);
    assert.ok([...seen].every((x) => x >= 0 && x < n));
  }
  const a = Array.from({ length: 100 }, (_, i) => new IndexPermutation(100, [1, 0, 0]).at(i));
  const b = Array.from({ length: 100 }, (_, i) => new IndexPermutation(100, [1, 0, 1]).at(i));
  assert.notDeepEqual(a, b);
  assert.notDeepEqual(a, Array.from({ length: 100 }, (_, i) => i));
  // Works far beyond 32 bits without materialising anything.
  const big = new IndexPermutation(2 ** 40 + 3, [1, 2]);
  assert.ok(big.at(2 ** 40 + 2) < 2 ** 40 + 3);
});

test("`TokenLoader.nextBatch()` yields (B, T) windows whose targets are the inputs shifted by one", async (t) => {
  const dir = await prepared(t);
  const loader = open(dir);
  t.after(() => loader.close());
  const windows = new Set(allWindows(dir, "train"));
  for (const b of take(loader, 20)) {
    assert.equal(b.inputs.length, 4 * T);
    assert.equal(b.targets.length, 4 * T);
    assert.ok(b.inputs instanceof Int32Array && b.targets instanceof Int32Array);
    for (let r = 0; r < 4; r++) {
      for (let i = 0; i < T - 1; i++) assert.equal(b.targets[r * T + i], b.inputs[r * T + i + 1]);
    }
    for (const w of batchWindows(b)) assert.ok(windows.has(w), "each row is a window of the shards at a multiple of T");
  }
});

test("`TokenLoader` covers every window once per epoch, in a new shuffled order each epoch", async (t) => {
  const dir = await prepared(t);
  const expected = allWindows(dir, "train");
  const N = expected.length;
  const loader = open(dir, { microBatchSize: 1 });
  assert.equal(loader.windowsPerEpoch, N);
  const epoch0 = take(loader, N).flatMap(batchWindows);
  const epoch1 = take(loader, N).flatMap(batchWindows);
  assert.deepEqual([...epoch0].sort(), [...expected].sort());
  assert.deepEqual([...epoch1].sort(), [...expected].sort());
  assert.notDeepEqual(epoch0, expected, "shuffled");
  assert.notDeepEqual(epoch0, epoch1, "each epoch has its own order");
  assert.equal(loader.epoch, 2);

  const ordered = open(dir, { microBatchSize: 1, shuffle: false });
  assert.deepEqual(take(ordered, N).flatMap(batchWindows), expected);
});

test("`TokenLoader` gives the same batches for the same seed and different ones for another seed", async (t) => {
  const dir = await prepared(t);
  const a = take(open(dir, { seed: 42 }), 10);
  const b = take(open(dir, { seed: 42 }), 10);
  const c = take(open(dir, { seed: 43 }), 10);
  assert.deepEqual(a, b);
  assert.notDeepEqual(a.map((x) => x.inputs), c.map((x) => x.inputs));
});

test("`TokenLoader.restore()` continues exactly where `state()` was taken, across epochs", async (t) => {
  const dir = await prepared(t);
  const N = open(dir).windowsPerEpoch;
  const steps = Math.ceil((1.5 * N) / 4); // runs into the second epoch
  const full = take(open(dir), 2 * steps);

  const first = open(dir);
  take(first, steps);
  const saved = JSON.parse(JSON.stringify(first.state()));
  assert.deepEqual(saved, first.state());
  assert.equal(saved.position, steps * 4);
  const resumed = open(dir);
  resumed.restore(saved);
  assert.deepEqual(take(resumed, steps), full.slice(steps));
});

test("`TokenLoader` shards by rank: ranks' batches concatenated equal the single-process batch of B * worldSize", async (t) => {
  const dir = await prepared(t);
  const N = open(dir).windowsPerEpoch;
  const steps = Math.ceil((2.5 * N) / 6); // several epochs, global batch not dividing N
  const single = take(open(dir, { microBatchSize: 6, seed: 5 }), steps);
  for (const worldSize of [2, 3]) {
    const B = 6 / worldSize;
    const ranks = Array.from({ length: worldSize }, (_, rank) => take(open(dir, { microBatchSize: B, seed: 5, rank, worldSize }), steps));
    for (let s = 0; s < steps; s++) {
      const inputs = Int32Array.from(ranks.flatMap((r) => Array.from(r[s].inputs)));
      const targets = Int32Array.from(ranks.flatMap((r) => Array.from(r[s].targets)));
      assert.deepEqual(inputs, single[s].inputs, `worldSize ${worldSize}, step ${s}`);
      assert.deepEqual(targets, single[s].targets);
    }
  }
  // A state saved by the single process resumes on two ranks (the state is layout-free).
  const one = open(dir, { microBatchSize: 6, seed: 5 });
  take(one, 3);
  const r1 = open(dir, { microBatchSize: 3, seed: 5, rank: 1, worldSize: 2 });
  r1.restore(one.state());
  assert.deepEqual(r1.nextBatch().inputs, single[3].inputs.subarray(3 * T));
});

test("`TokenLoader.restore()` rejects a state from another seed, split, blockSize or dataset", async (t) => {
  const dir = await prepared(t);
  const state = open(dir).state();
  assert.throws(() => open(dir, { seed: 2 }).restore(state), /saved with seed = 1, this loader has 2/);
  assert.throws(() => open(dir, { blockSize: 8 }).restore(state), /blockSize = 16/);
  assert.throws(() => open(dir, { split: "val" }).restore(state), /split = "train"/);
  assert.throws(() => open(dir).restore({ ...state, windows: 3 }), /prepared data differs/);
  assert.throws(() => open(dir).restore({ position: 3 } as never), /not a TokenLoader state/);
  assert.throws(() => open(dir, { rank: 2, worldSize: 2 }), ValueError);
  assert.throws(() => open(dir, { microBatchSize: 0 }), ValueError);
  assert.throws(() => open(dir, { blockSize: 100_000 }), /not enough for one window of blockSize \+ 1 = 100001 tokens/);
});

test("`evalBatches()` is deterministic, spread over the val split, and sharded like the loader", async (t) => {
  const dir = await prepared(t);
  const valWindows = allWindows(dir, "val");
  const N = valWindows.length;
  const all = [...evalBatches({ dir, blockSize: T, microBatchSize: 2 })];
  assert.equal(all.length, Math.floor(N / 2));
  assert.deepEqual(all.flatMap(batchWindows), valWindows.slice(0, 2 * all.length), "all batches: every window in order");

  const few = [...evalBatches({ dir, blockSize: T, microBatchSize: 2, numBatches: 3 })];
  assert.equal(few.length, 3);
  assert.deepEqual(few, [...evalBatches({ dir, blockSize: T, microBatchSize: 2, numBatches: 3 })]);
  const fewWindows = few.flatMap(batchWindows);
  assert.deepEqual(fewWindows, [0, 1, 2, 3, 4, 5].map((k) => valWindows[Math.floor((k * N) / 6)]));

  const r0 = [...evalBatches({ dir, blockSize: T, microBatchSize: 1, numBatches: 3, rank: 0, worldSize: 2 })];
  const r1 = [...evalBatches({ dir, blockSize: T, microBatchSize: 1, numBatches: 3, rank: 1, worldSize: 2 })];
  for (let s = 0; s < 3; s++) assert.deepEqual([...batchWindows(r0[s]), ...batchWindows(r1[s])], batchWindows(few[s]));

  assert.throws(() => evalBatches({ dir, blockSize: T, microBatchSize: 2, numBatches: N }), /numBatches must be an integer in \[1, \d+\]/);
});

test("`TokenLoader` rejects a truncated shard or one that disagrees with meta.json, naming the file", async (t) => {
  const dir = await prepared(t);
  const shard = join(dir, "train_000002.bin");
  const bytes = readFileSync(shard);
  truncateSync(shard, bytes.length - 3);
  assert.throws(
    () => open(dir),
    (err: unknown) => err instanceof FormatError && err.file === shard && /bytes \(truncated\)/.test(err.message),
  );
  // A whole shard with another token count than meta.json says (mixed preparations).
  const shorter = Buffer.from(bytes.subarray(0, bytes.length - 2 * 10));
  shorter.writeBigUInt64LE(BigInt((shorter.length - SHARD_HEADER_BYTES) / 2), 16);
  writeFileSync(shard, shorter);
  assert.throws(() => open(dir), /train_000002\.bin: header \(990 uint16 tokens, eot 256\) does not match meta\.json \(1000 uint16 tokens/);
});
