// Offloaded AdamW (optim/offload.ts): moments in a scratch file streamed in chunks compute the
// same bits as the in-memory AdamW (and ZeRO's ShardedAdamW) for chunk sizes that cut tensors
// anywhere; the state dict reads back what AdamW holds and loads into either; resident
// optimizer memory is the chunk, not the moments.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, existsSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randn, memoryStats, type Tensor } from "../../src/tensor/index.js";
import { AdamW, OffloadedAdamW, OffloadFile, type Optimizer } from "../../src/optim/index.js";
import { DeviceMesh, FlatShards, ShardedAdamW } from "../../src/parallel/index.js";

const SHAPES: number[][] = [[37, 11], [11], [5, 3, 7], [1], [64, 9], [9]];
const bytes = (t: Tensor) => Buffer.from((t.data() as Float32Array).buffer).toString("base64");
const dir = mkdtempSync(join(tmpdir(), "megalith-offload-"));
test.after(() => rmSync(dir, { recursive: true, force: true }));

/** Fresh parameters (the same values for the same seed), kept across the test. */
function makeParams(seed: number): Tensor[] {
  return SHAPES.map((s, i) => randn(s, { seed: seed + i }).keep());
}

/**
 * Runs `steps` AdamW steps with random gradients (a new lr and clip scale each step; parameter 3
 * gets no gradient on step 1, so it is skipped there) and returns the parameters' bytes after each step.
 */
async function run(opt: Optimizer, params: Tensor[], steps = 4, firstStep = 0): Promise<string[][]> {
  const out: string[][] = [];
  for (let s = firstStep; s < firstStep + steps; s++) {
    params.forEach((p, i) => {
      if (s === 1 && i === 3) return;
      p.grad = randn(p.shape, { seed: 1000 + 31 * s + i }).keep();
    });
    await opt.step({ lr: 1e-2 * (1 + 0.1 * s), gradScale: 0.5 + 0.1 * s });
    opt.zeroGrad();
    out.push(params.map(bytes));
  }
  return out;
}

const numelOf = (shapes: number[][]) => shapes.reduce((a, s) => a + s.reduce((x, y) => x * y, 1), 0);

test("`OffloadedAdamW.step()` equals AdamW bit for bit for chunks of 1, 7, 100 and 1000 elements and larger than the state", async () => {
  const ref = makeParams(1);
  const want = await run(new AdamW(ref, { weightDecay: 0.1, betas: [0.9, 0.95] }), ref);
  const total = numelOf(SHAPES);
  for (const elems of [1, 7, 100, 1000, 4 * total]) {
    const params = makeParams(1);
    const opt = new OffloadedAdamW(params, { weightDecay: 0.1, betas: [0.9, 0.95] }, { path: join(dir, `a-${elems}.bin`), chunkBytes: 8 * elems });
    const got = await run(opt, params);
    assert.deepEqual(got, want, `chunk of ${elems} elements`);
    assert.equal(statSync(opt.file.path).size, 8 * total);
    if (elems === 7) assert.ok(opt.file.timings.chunks >= 4 * Math.floor(total / 7), "every chunk streamed on each step");
    opt.close();
    assert.ok(!existsSync(opt.file.path), "close() deletes the scratch file");
  }
});

test("`OffloadedAdamW.stateDict()` reads back AdamW's moments, and `loadStateDict()` resumes bit-exactly in both directions", async () => {
  const a = makeParams(5), b = makeParams(5);
  const mem = new AdamW(a, { weightDecay: 0.05 });
  const off = new OffloadedAdamW(b, { weightDecay: 0.05 }, { path: join(dir, "sd.bin"), chunkBytes: 8 * 13 });
  await run(mem, a, 3);
  await run(off, b, 3);
  const ms = mem.stateDict(), os = off.stateDict();
  assert.deepEqual(os.state, ms.state);
  for (const k of ["exp_avg", "exp_avg_sq"]) {
    assert.deepEqual(os.moments![k]!.map(bytes), ms.moments![k]!.map(bytes), k);
    assert.ok(ms.moments![k]!.some((t) => (t.data() as Float32Array).some((x) => x !== 0)), "moments are not all zero");
  }
  for (const ts of Object.values(os.moments!)) for (const t of ts) t.dispose();
  // AdamW's state into a new offloaded optimizer (resume with offload), and the offloaded one's into AdamW.
  const c = a.map((p) => p.clone().keep()), d = a.map((p) => p.clone().keep());
  const off2 = new OffloadedAdamW(c, { weightDecay: 0.05 }, { path: join(dir, "sd2.bin"), chunkBytes: 8 * 29 });
  off2.loadStateDict(mem.stateDict());
  const mem2 = new AdamW(d, { weightDecay: 0.05 });
  const osd = off.stateDict();
  mem2.loadStateDict(osd);
  const want = await run(mem, a, 2, 3);
  assert.deepEqual(await run(off2, c, 2, 3), want, "AdamW -> offloaded");
  assert.deepEqual(await run(mem2, d, 2, 3), want, "offloaded -> AdamW");
  off.close();
  off2.close();
});

test("`OffloadedAdamW` keeps one chunk of optimizer state resident instead of the moments", () => {
  const shapes = [[512, 256], [256]];
  const params = shapes.map((s, i) => randn(s, { seed: i }).keep());
  const before = memoryStats().live.optimizer;
  const mem = new AdamW(params);
  const inMemory = memoryStats().live.optimizer - before;
  const chunkBytes = 64 * 1024;
  const off = new OffloadedAdamW(params, {}, { path: join(dir, "mem.bin"), chunkBytes });
  const offloaded = memoryStats().live.optimizer - before - inMemory;
  const psi = numelOf(shapes);
  assert.ok(inMemory >= 8 * psi, `AdamW holds m and v: ${inMemory} bytes for ${psi} parameters`);
  assert.ok(offloaded >= chunkBytes && offloaded < chunkBytes * 1.1, `offloaded: ${offloaded} bytes resident, chunk ${chunkBytes}`);
  assert.equal(off.file.residentBytes, 4 * chunkBytes, "the chunk tensor and three host buffers");
  off.close();
  for (const t of [...mem.m, ...mem.v]) t.dispose();
});

test("`OffloadFile.update()` streams only the chunks its segments touch, and `readRange()` / `writeRange()` cross chunk boundaries", async () => {
  const f = new OffloadFile(50, { path: join(dir, "file.bin"), chunkBytes: 8 * 8 });
  assert.equal(f.chunks, 7);
  const m = Float32Array.from({ length: 50 }, (_, i) => i + 0.5), v = Float32Array.from({ length: 50 }, (_, i) => -i - 0.25);
  f.writeRange(0, m, v);
  const r = f.readRange(13, 20);
  assert.deepEqual([...r.m], [...m.subarray(13, 33)]);
  assert.deepEqual([...r.v], [...v.subarray(13, 33)]);
  const seen: Array<[number, number, number]> = [];
  const readAtFirst: number[] = [];
  await f.update([{ start: 5, len: 6 }, { start: 40, len: 3 }], (seg, from, n, mm, vv) => {
    seen.push([seg.start, from, n]);
    readAtFirst.push(f.timings.bytesRead);
    assert.deepEqual([...(mm.data() as Float32Array)], [...m.subarray(seg.start + from, seg.start + from + n)]);
    mm.mul_(2);
    vv.zero_();
  });
  assert.deepEqual(seen, [[5, 0, 3], [5, 3, 3], [40, 0, 3]]);
  assert.equal(f.timings.chunks, 3, "chunks 0, 1 and 5 only");
  // While chunk 0 is updated, chunk 1's read is already issued (the overlap the pipeline is for).
  assert.equal(readAtFirst[0], 2 * 64, "bytes requested when chunk 0's update runs");
  const after = f.readRange(0, 50);
  for (let i = 0; i < 50; i++) {
    const touched = (i >= 5 && i < 11) || (i >= 40 && i < 43);
    assert.equal(after.m[i], touched ? 2 * m[i]! : m[i]!, `m[${i}]`);
    assert.equal(after.v[i], touched ? 0 : v[i]!, `v[${i}]`);
  }
  assert.throws(() => f.readRange(45, 10), /outside the 50 offloaded elements/);
  await assert.rejects(f.update([{ start: 49, len: 2 }], () => {}), /segment \[49, 51\) is outside/);
  f.close();
  assert.throws(() => f.readRange(0, 1), /is closed/);
});

test("`ShardedAdamW` with offload equals the in-memory ShardedAdamW at ZeRO stages 1 and 2, and its state dict holds the same shards", async () => {
  const group = new DeviceMesh({ dp: 1 }).group("dp");
  for (const stage of [1, 2] as const) {
    const results: string[][][] = [];
    const dicts: string[][] = [];
    for (const offload of [false, true]) {
      const params = makeParams(9);
      const shards = new FlatShards(params, group, [params.slice(0, 2), params.slice(2, 4)]);
      const opt = new ShardedAdamW(shards, { weightDecay: 0.1 }, { stage, ...(offload ? { offload: { path: join(dir, `z${stage}.bin`), chunkBytes: 8 * 37 } } : {}) });
      const steps: string[][] = [];
      for (let s = 0; s < 3; s++) {
        params.forEach((p, i) => { p.grad = randn(p.shape, { seed: 70 + 7 * s + i }).keep(); });
        opt.beforeMicroStep(true);
        await opt.synchronize();
        const { clipCoef } = opt.gradNorm(1);
        await opt.step({ gradScale: clipCoef });
        opt.zeroGrad();
        steps.push(params.map(bytes));
      }
      results.push(steps);
      const sd = opt.stateDict();
      dicts.push(Object.values(sd.shard!.tensors).map(bytes));
      assert.equal(opt.offloaded !== null, offload);
      opt.close();
    }
    assert.deepEqual(results[1], results[0], `ZeRO-${stage}: parameters`);
    assert.deepEqual(dicts[1], dicts[0], `ZeRO-${stage}: moment shards`);
  }
});
