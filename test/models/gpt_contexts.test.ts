// One GPT forward, three attention contexts: dense causal over whole sequences, a contiguous KV
// cache fed token by token and in chunks, and paged KV pools over ragged batches of several
// sequences that share a prefix's blocks; all give the same logits. The int8 module swap runs
// through the same contexts, within int8's tolerance of float32.
import { test } from "node:test";
import assert from "node:assert/strict";
import { GPT } from "../../src/models/index.js";
import { noGrad } from "../../src/autograd/index.js";
import { tensor, zeros, withScope, type Tensor } from "../../src/tensor/index.js";
import { type PagedContext } from "../../src/nn/index.js";
import { quantizeModelInt8, dequantizeModel } from "../../src/inference/quant/index.js";
import { ids, tinyGPT } from "./_helpers.js";

const V = 64;

/** max |a - b| / max |b| over all elements. */
function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) {
    num = Math.max(num, Math.abs(a[i]! - b[i]!));
    den = Math.max(den, Math.abs(b[i]!));
  }
  return num / den;
}

/** Every position's logits of a dense causal forward over `seq`: T rows of V. */
function dense(model: GPT, seq: readonly number[]): Float32Array[] {
  return noGrad(() => withScope(() => {
    const logits = model.forward(tensor(Int32Array.from(seq), { shape: [1, seq.length], dtype: "int32" })).logits;  // (1, T, V)
    const flat = logits.data() as Float32Array;
    return seq.map((_, t) => flat.slice(t * V, (t + 1) * V));
  }));
}

/** The same logits through a KV cache, fed in chunks of the given sizes. */
function cached(model: GPT, seq: readonly number[], chunks: readonly number[]): Float32Array[] {
  const kv = model.newKVCache();
  const rows: Float32Array[] = [];
  try {
    let at = 0;
    for (const n of chunks) {
      const part = seq.slice(at, at + n);
      at += n;
      noGrad(() => withScope(() => {
        const x = tensor(Int32Array.from(part), { shape: [1, part.length], dtype: "int32" });
        const flat = model.forward(x, null, { kind: "kv", cache: kv }).logits.data() as Float32Array;   // (1, n, V)
        for (let t = 0; t < part.length; t++) rows.push(flat.slice(t * V, (t + 1) * V));
      }));
    }
    assert.equal(at, seq.length);
    assert.equal(kv.length, seq.length);
  } finally {
    GPT.disposeKVCache(kv);
  }
  return rows;
}

/** Paged KV pools for `model` and a way to run ragged steps through them. */
function pagedRunner(model: GPT, numBlocks: number, blockSize: number) {
  const c = model.config, H = c.nHead, D = c.nEmbd / c.nHead;
  const kCache: Tensor[] = [], vCache: Tensor[] = [];
  for (let l = 0; l < c.nLayer; l++) {
    kCache.push(zeros([numBlocks * blockSize, H, D]).keep());
    vCache.push(zeros([numBlocks * blockSize, H, D]).keep());
  }
  /**
   * One ragged step: for each [sequence, first position, count], feed those tokens of
   * seqs[sequence]; returns each fed token's logits row, or only `rows` of them when given.
   */
  const step = (tables: number[][], seqs: number[][], parts: Array<[number, number, number]>, rows?: number[]): Float32Array[] => {
    const tokens: number[] = [], positions: number[] = [], seqIndex: number[] = [], slots: number[] = [];
    for (const [s, from, count] of parts) {
      for (let p = from; p < from + count; p++) {
        tokens.push(seqs[s]![p]!);
        positions.push(p);
        seqIndex.push(s);
        slots.push(tables[s]![Math.floor(p / blockSize)]! * blockSize + (p % blockSize));
      }
    }
    const maxBlocks = Math.max(...tables.map((t) => t.length));
    return noGrad(() => withScope(() => {
      const ctx: PagedContext = {
        kind: "paged", kCache, vCache, blockSize,
        blockTables: tensor(Int32Array.from(tables.flatMap((t) => [...t, ...new Array(maxBlocks - t.length).fill(0)])), { shape: [tables.length, maxBlocks], dtype: "int32" }),
        slotMapping: tensor(Int32Array.from(slots), { dtype: "int32" }),
        positions: tensor(Int32Array.from(positions), { dtype: "int32" }),
        seqIndex: tensor(Int32Array.from(seqIndex), { dtype: "int32" }),
        ...(rows ? { logitsRows: tensor(Int32Array.from(rows), { dtype: "int32" }) } : {}),
      };
      const logits = model.forward(tensor(Int32Array.from(tokens), { shape: [1, tokens.length], dtype: "int32" }), null, ctx).logits;
      assert.deepEqual(logits.shape, rows ? [rows.length, V] : [1, tokens.length, V]);
      const flat = logits.data() as Float32Array;
      return Array.from({ length: rows ? rows.length : tokens.length }, (_, i) => flat.slice(i * V, (i + 1) * V));
    }));
  };
  const dispose = () => [...kCache, ...vCache].forEach((t) => t.dispose());
  return { step, dispose };
}

// Three sequences: 0 and 1 share an 8-token prefix (two full blocks of 4), 2 is unrelated.
const prefix = ids(8, V, 21);
const SEQS = [[...prefix, ...ids(6, V, 22)], [...prefix, ...ids(5, V, 23)], ids(9, V, 24)];
// Block tables: sequence 1 reuses sequence 0's two prefix blocks (prefix caching), then its own.
const TABLES = [[9, 2, 14, 5], [9, 2, 7, 11], [0, 12, 3]];

/** Runs SEQS through the paged context in three ragged steps; returns every position's logits per sequence. */
function pagedAll(model: GPT): Float32Array[][] {
  const runner = pagedRunner(model, 16, 4);
  try {
    const out: Float32Array[][] = [[], [], []];
    const collect = (parts: Array<[number, number, number]>, rows: Float32Array[]) => {
      let i = 0;
      for (const [s, , count] of parts) for (let j = 0; j < count; j++) out[s]!.push(rows[i++]!);
    };
    // Step 1: sequence 0's prefix and 3 more (a prefill chunk) beside sequence 2's first 5.
    let parts: Array<[number, number, number]> = [[0, 0, 11], [2, 0, 5]];
    collect(parts, runner.step(TABLES, SEQS, parts));
    // Step 2: sequence 1 starts after the shared prefix (its blocks 9 and 2 already hold it:
    // the prefix was computed once, as sequence 0's), sequence 0 decodes one token, sequence 2
    // finishes its prompt.
    out[1]!.push(...out[0]!.slice(0, 8));
    parts = [[1, 8, 5], [0, 11, 1], [2, 5, 4]];
    collect(parts, runner.step(TABLES, SEQS, parts));
    // Step 3: the rest of sequence 0.
    parts = [[0, 12, 2]];
    collect(parts, runner.step(TABLES, SEQS, parts));
    return out;
  } finally {
    runner.dispose();
  }
}

test("`GPT.forward()` gives the same logits on the causal, kv and paged contexts", () => {
  const model = tinyGPT();
  const ref = SEQS.map((s) => dense(model, s));
  SEQS.forEach((s, i) => {
    const tokenByToken = cached(model, s, s.map(() => 1));
    const chunks = cached(model, s, [3, 1, s.length - 6, 2]);
    for (let t = 0; t < s.length; t++) {
      assert.ok(relErr(tokenByToken[t]!, ref[i]![t]!) < 1e-5, `seq ${i} position ${t}: kv token by token ${relErr(tokenByToken[t]!, ref[i]![t]!)}`);
      assert.ok(relErr(chunks[t]!, ref[i]![t]!) < 1e-5, `seq ${i} position ${t}: kv in chunks ${relErr(chunks[t]!, ref[i]![t]!)}`);
    }
  });
  const paged = pagedAll(model);
  SEQS.forEach((s, i) => {
    assert.equal(paged[i]!.length, s.length);
    for (let t = 0; t < s.length; t++) {
      const e = relErr(paged[i]![t]!, ref[i]![t]!);
      assert.ok(e < 1e-5, `seq ${i} position ${t}: paged vs dense ${e}`);
    }
  });
  // The shared prefix: sequence 1's dense logits over the prefix are sequence 0's.
  for (let t = 0; t < 8; t++) assert.deepEqual(ref[1]![t], ref[0]![t]);
});

test("`GPT.forward()` with logitsRows applies the head to the selected rows only, on every context", () => {
  const model = tinyGPT();
  const seq = SEQS[0]!;
  const ref = dense(model, seq);
  const rows = [seq.length - 1, 2, 5];
  const sel = noGrad(() => withScope(() => {
    const x = tensor(Int32Array.from(seq), { shape: [1, seq.length], dtype: "int32" });
    const logits = model.forward(x, null, { kind: "causal", logitsRows: tensor(Int32Array.from(rows), { dtype: "int32" }) }).logits;
    assert.deepEqual(logits.shape, [3, V]);
    return logits.data() as Float32Array;
  }));
  rows.forEach((r, i) => assert.ok(relErr(sel.subarray(i * V, (i + 1) * V), ref[r]!) < 1e-5, `row ${r}`));
  // Paged: a ragged batch of two sequences, sampling each one's last token.
  const runner = pagedRunner(model, 16, 4);
  try {
    const got = runner.step(TABLES, SEQS, [[0, 0, 14], [2, 0, 9]], [13, 22]);
    assert.ok(relErr(got[0]!, ref[13]!) < 1e-5);
    assert.ok(relErr(got[1]!, dense(model, SEQS[2]!)[8]!) < 1e-5);
  } finally {
    runner.dispose();
  }
  const x = tensor(Int32Array.from(seq), { shape: [1, seq.length], dtype: "int32" });
  assert.throws(() => model.forward(x, x, { kind: "causal", logitsRows: tensor(Int32Array.of(0), { dtype: "int32" }) }), /targets and logitsRows cannot be combined/);
});

test("`GPT.forward()` after the int8 module swap runs the same three contexts, within int8's tolerance of float32", () => {
  const model = tinyGPT();
  const fp32 = SEQS.map((s) => dense(model, s));
  quantizeModelInt8(model, { lmHead: true });
  try {
    const int8 = SEQS.map((s) => dense(model, s));
    const paged = pagedAll(model);
    SEQS.forEach((s, i) => {
      const kv = cached(model, s, [4, s.length - 4]);
      for (let t = 0; t < s.length; t++) {
        // int8 against float32: the tolerance of test/inference/quant.test.ts.
        const e = relErr(int8[i]![t]!, fp32[i]![t]!);
        assert.ok(e < 5e-2 && e > 0, `seq ${i} position ${t}: int8 vs fp32 ${e}`);
        assert.ok(relErr(kv[t]!, int8[i]![t]!) < 1e-5, `seq ${i} position ${t}: int8 kv vs int8 dense`);
        assert.ok(relErr(paged[i]![t]!, int8[i]![t]!) < 1e-5, `seq ${i} position ${t}: int8 paged vs int8 dense`);
      }
    });
  } finally {
    dequantizeModel(model);
  }
});
