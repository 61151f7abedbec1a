// Random numbers: Megalith's counter-based Philox streams checked value by value against a JS
// Philox (test/_util/philox.ts), seeds and offsets, the global generator's state, sample
// statistics, randint, and dropout masks (reproducible from (seed, offset), about 1-p kept).
import { test } from "node:test";
import assert from "node:assert/strict";
import * as M from "../../src/index.js";
import { F } from "../../src/index.js";
import { dropoutKeeps, normalAt, uniformAt } from "../_util/philox.js";
import { assertClose, configs, seedFor, seedNote, withConfig, randArr, toTensor } from "../_util/check.js";

const seed = seedFor("random") % 1_000_000;

test("`rand({seed, offset})` equals the Philox reference bit for bit, at any offset (also unaligned) and thread count", () => {
  for (const cfg of configs()) {
    withConfig(cfg, () => {
      for (const offset of [0, 3, 4, 1001]) {
        const got = M.rand([37], { seed, offset }).data();
        const want = Array.from({ length: 37 }, (_, i) => uniformAt(seed, offset + i));
        assertClose(got, want, { what: `rand offset ${offset} [${cfg.label}]`, rtol: 0, atol: 0, seed });
      }
    });
  }
});

test("`randn({seed, offset})` equals the Philox + Box-Muller reference (float32 rounding), at odd offsets too", () => {
  for (const offset of [0, 1, 6, 12345]) {
    const got = M.randn([33], { seed, offset }).data();
    const want = Array.from({ length: 33 }, (_, i) => Math.fround(normalAt(seed, offset + i)));
    assertClose(got, want, { what: `randn offset ${offset}`, rtol: 1e-6, atol: 1e-6, seed });
  }
  // a large tensor goes through the thread pool in chunks: still position-keyed
  const big = M.randn([70000], { seed }).data();
  for (const i of [0, 16383, 16384, 40000, 69999]) assert.ok(Math.abs(big[i]! - normalAt(seed, i)) < 1e-6, `randn position ${i} (${seedNote(seed)})`);
});

test("`randn()` with the same seed reproduces; distinct seeds and distinct offsets give distinct values; offsets shift the stream", () => {
  const a = M.randn([64], { seed }).data(), b = M.randn([64], { seed }).data();
  assert.deepEqual(a, b);
  const c = M.randn([64], { seed: seed + 1 }).data();
  assert.ok(a.some((v, i) => v !== c[i]), "another seed must differ");
  const d = M.randn([64], { seed, offset: 64 }).data();
  assert.ok(d.every((v) => !a.includes(v)), "disjoint offset ranges share no value");
  const e = M.randn([60], { seed, offset: 4 }).data();
  assert.deepEqual(Array.from(e), Array.from(a.subarray(4)), "offset 4 reads positions 4.. of the same stream");
});

test("1e5 samples: `randn` has mean ~0 and std ~1, `normal(shape, 3, 0.5)` ~3/0.5, `rand` ~U[0, 1)", () => {
  const stats = (x: ArrayLike<number>) => {
    let s = 0, q = 0, lo = Infinity, hi = -Infinity;
    for (let i = 0; i < x.length; i++) { s += x[i]!; q += x[i]! * x[i]!; lo = Math.min(lo, x[i]!); hi = Math.max(hi, x[i]!); }
    const mean = s / x.length;
    return { mean, std: Math.sqrt(q / x.length - mean * mean), lo, hi };
  };
  const n = 100_000;
  // 6 sigma: the standard error of the mean is 1/sqrt(n) ~ 0.0032, of the std ~ 0.0022
  const z = stats(M.randn([n], { seed }).data());
  assert.ok(Math.abs(z.mean) < 0.02 && Math.abs(z.std - 1) < 0.015, `randn mean ${z.mean} std ${z.std} (${seedNote(seed)})`);
  const g = stats(M.normal([n], 3, 0.5, { seed: seed + 1 }).data());
  assert.ok(Math.abs(g.mean - 3) < 0.01 && Math.abs(g.std - 0.5) < 0.008, `normal mean ${g.mean} std ${g.std}`);
  const u = stats(M.rand([n], { seed: seed + 2 }).data());
  assert.ok(u.lo >= 0 && u.hi < 1, `rand range [${u.lo}, ${u.hi}]`);
  assert.ok(Math.abs(u.mean - 0.5) < 0.006 && Math.abs(u.std - Math.sqrt(1 / 12)) < 0.005, `rand mean ${u.mean} std ${u.std}`);
});

test("`randint(lo, hi, shape)` gives int32 values in [lo, hi) covering the range about evenly", () => {
  const r = M.randint(-3, 4, [7000], { seed });
  assert.equal(r.dtype, "int32");
  const counts = new Map<number, number>();
  for (const v of r.data()) counts.set(v, (counts.get(v) ?? 0) + 1);
  assert.deepEqual([...counts.keys()].sort((a, b) => a - b), [-3, -2, -1, 0, 1, 2, 3]);
  for (const [v, c] of counts) assert.ok(Math.abs(c - 1000) < 150, `value ${v} drawn ${c} times of 7000 (${seedNote(seed)})`);
  assert.deepEqual(M.randint(0, 5, [2, 3], { seed }).shape, [2, 3]);
});

test("the global generator: `manualSeed` reproduces a sequence, draws advance it, `getRngState/setRngState` rewind it", () => {
  M.manualSeed(seed);
  const a = M.randn([5]).data(), b = M.randn([5]).data();
  assert.ok(a.some((v, i) => v !== b[i]), "consecutive draws differ");
  M.manualSeed(seed);
  assert.deepEqual(M.randn([5]).data(), a);
  const st = M.getRngState();
  const c = M.rand([9]).data();
  M.setRngState(st);
  assert.deepEqual(M.rand([9]).data(), c);
  // the global stream is the same stream as {seed, offset}: draws reserve multiples of 4
  M.manualSeed(seed);
  M.randn([5]);
  assert.deepEqual(M.getRngState(), { seed, offset: 8 });
  assert.deepEqual(M.randn([3]).data(), M.randn([3], { seed, offset: 8 }).data());
});

test("dropout masks match the Philox reference from (seed, offset), scale kept values by 1/(1-p), and backward reuses the mask", () => {
  for (const cfg of configs()) {
    withConfig(cfg, () => {
      for (const [p, offset] of [[0.1, 0], [0.5, 6], [0.9, 40001]] as Array<[number, number]>) {
        const n = 20000;
        const xa = randArr([n], seed, { awayFrom: [0], gap: 1e-3 });
        const x = toTensor(xa, { requiresGrad: true });
        const y = F.dropout(x, p, true, { seed, offset });
        const yd = y.data();
        let kept = 0;
        for (let i = 0; i < n; i++) {
          const keep = dropoutKeeps(seed, offset + i, p);
          if (keep) kept++;
          const want = keep ? Math.fround(xa.data[i]! * Math.fround(1 / (1 - p))) : 0;
          if (Math.abs(yd[i]! - want) > 1e-6 * Math.abs(want)) {
            assert.fail(`dropout p=${p} offset ${offset} position ${i}: got ${yd[i]}, expected ${want} [${cfg.label}] (${seedNote(seed)})`);
          }
        }
        // 5 sigma of a binomial(n, 1-p) count
        const sd = Math.sqrt(n * p * (1 - p));
        assert.ok(Math.abs(kept - n * (1 - p)) < 5 * sd, `dropout p=${p} kept ${kept} of ${n}`);
        y.backward(M.ones([n]));
        const g = x.grad!.data();
        for (let i = 0; i < n; i++) assert.equal(g[i] !== 0, yd[i] !== 0, `dropout gradient mask at ${i}`);
        const again = F.dropout(toTensor(xa), p, true, { seed, offset }).data();
        assert.deepEqual(again, yd, "same (seed, offset), same mask");
      }
    });
  }
});

test("dropout draws consecutive offsets from the global generator, so two calls differ and manualSeed replays them", () => {
  const x = M.ones([100]);
  M.manualSeed(seed);
  const a = F.dropout(x, 0.5).data(), b = F.dropout(x, 0.5).data();
  assert.ok(a.some((v, i) => v !== b[i]));
  M.manualSeed(seed);
  assert.deepEqual(F.dropout(x, 0.5).data(), a);
});

test("dropout with p = 0 or training = false is the identity and still passes gradients; p = 1 zeroes everything", () => {
  const x = toTensor(randArr([3, 4], seed), { requiresGrad: true });
  for (const y of [F.dropout(x, 0), F.dropout(x, 0.7, false)]) {
    assert.deepEqual(y.data(), x.data());
    y.mul(2).sum().backward();
    assertClose(x.grad!, new Array(12).fill(2), { what: "gradient through identity dropout", rtol: 0, atol: 0 });
    x.grad = null;
  }
  assert.deepEqual(Array.from(F.dropout(x, 1).data()), new Array(12).fill(0));
  assert.throws(() => F.dropout(x, 1.5), /dropout: probability must be in \[0, 1\], got 1.5/);
});

test("`nn.Dropout` drops in training mode and is the identity after eval()", () => {
  const d = new M.Dropout(0.5);
  const x = M.ones([1000]);
  const t = d.forward(x).data();
  assert.ok(t.some((v) => v === 0) && t.some((v) => v === 2));
  d.eval();
  assert.deepEqual(d.forward(x).data(), x.data());
});
