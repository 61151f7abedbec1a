import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ValueError } from "../../src/core/errors.js";
import type { PreparedMeta } from "../../src/data/meta.js";
import { prepareMlmData } from "../../src/data/mlm_prepare.js";
import { MlmLoader, mlmEvalBatches, mlmEvalBatchCount, type MlmBatch } from "../../src/data/mlm_loader.js";
import { MLM_IGNORE_INDEX, maskExample, maskingVocab } from "../../src/data/mlm_masking.js";
import { SPECIAL, numberedCorpus, readExamples, wordTokenizer, type StoredExample } from "./_mlm_helpers.js";

let root = "";
/** ~2,500 documents, ~5,000 examples of <= 64 tokens (> 200k maskable tokens): for statistics. */
let big = { dir: "", meta: undefined as unknown as PreparedMeta, examples: [] as StoredExample[] };
/** ~100 documents: for order, resume and sharding. */
let small = { dir: "", meta: undefined as unknown as PreparedMeta, examples: [] as StoredExample[] };
const T_BIG = 64;
const T_SMALL = 24;

before(async () => {
  root = mkdtempSync(join(tmpdir(), "megalith-mlm-"));
  const prep = async (docs: number, seed: number, maxSeqLen: number, name: string): Promise<typeof big> => {
    const corpus = numberedCorpus(docs, seed);
    const dir = join(root, name);
    const meta = await prepareMlmData({ progress: false, tokenizer: wordTokenizer(corpus.words), inputs: [{ name, documents: corpus.docs }], outDir: dir, maxSeqLen, valFraction: 0.1 });
    return { dir, meta, examples: readExamples(dir, meta, "train") };
  };
  big = await prep(2500, 21, T_BIG, "big");
  small = await prep(100, 22, T_SMALL, "small");
});
after(() => rmSync(root, { recursive: true, force: true }));

/** Row `b` of a (B, T) array. */
const row = (a: Int32Array, b: number, T: number): number[] => Array.from(a.subarray(b * T, (b + 1) * T));

/** Row `b` of a batch, every array, as plain JSON (for comparisons). */
function rowOf(batch: MlmBatch, b: number): unknown {
  const T = batch.seqLen;
  return {
    inputIds: row(batch.inputIds, b, T),
    tokenTypeIds: row(batch.tokenTypeIds, b, T),
    attentionMask: row(batch.attentionMask, b, T),
    mlmLabels: row(batch.mlmLabels, b, T),
    nsp: batch.nspLabels[b],
    sample: batch.sampleIds[b],
    example: batch.exampleIds[b],
  };
}
const rowsOf = (batch: MlmBatch): unknown[] => Array.from({ length: batch.rows }, (_, b) => rowOf(batch, b));

test("`MlmLoader.nextBatch()` masks 15% of the maskable tokens over 200k+ tokens, 80/10/10, never a special token, labels -100 exactly where unselected", () => {
  const loader = new MlmLoader({ dir: big.dir, microBatchSize: 50, seed: 3 });
  const N = loader.examplesPerEpoch;
  const vocabSize = big.meta.tokenizer.vocabSize;
  let candidates = 0;
  let selected = 0;
  let masked = 0;
  let randomized = 0;
  let kept = 0;
  let randomLow = 0;
  for (let step = 0; step * 50 < N; step++) {
    const batch = loader.nextBatch();
    assert.equal(batch.seqLen, T_BIG);
    for (let b = 0; b < batch.rows; b++) {
      const ex = big.examples[batch.exampleIds[b]];
      let rowCandidates = 0;
      let rowSelected = 0;
      for (let t = 0; t < T_BIG; t++) {
        const i = b * T_BIG + t;
        const original = t < ex.tokens.length ? ex.tokens[t] : SPECIAL.pad;
        const label = batch.mlmLabels[i];
        const special = original === SPECIAL.cls || original === SPECIAL.sep || original === SPECIAL.pad;
        if (!special) rowCandidates++;
        if (label === MLM_IGNORE_INDEX) {
          assert.equal(batch.inputIds[i], original, "an unselected token is unchanged");
          continue;
        }
        assert.ok(!special, `special token ${original} selected at ${t}`);
        assert.equal(label, original, "the label is the original id");
        rowSelected++;
        const id = batch.inputIds[i];
        if (id === SPECIAL.mask) masked++;
        else if (id === original) kept++;
        else {
          randomized++;
          assert.ok(id >= 5 && id < vocabSize, `random replacement ${id} is not a non-special id`);
          if (id < vocabSize / 2) randomLow++;
        }
      }
      // An exact count per example, rounded at random: never more than one off 15%.
      assert.ok(Math.abs(rowSelected - 0.15 * rowCandidates) < 1, `${rowSelected} of ${rowCandidates} selected`);
      candidates += rowCandidates;
      selected += rowSelected;
    }
  }
  assert.ok(candidates >= 100_000, `${candidates} maskable tokens`);
  const pct = (x: number, of: number): number => (100 * x) / of;
  assert.ok(Math.abs(pct(selected, candidates) - 15) <= 0.5, `selected ${pct(selected, candidates)}%`);
  assert.ok(Math.abs(pct(masked, selected) - 80) <= 1, `[MASK] ${pct(masked, selected)}%`);
  assert.ok(Math.abs(pct(randomized, selected) - 10) <= 1, `random ${pct(randomized, selected)}%`);
  assert.ok(Math.abs(pct(kept, selected) - 10) <= 1, `unchanged ${pct(kept, selected)}%`);
  // Replacements are spread over the whole vocabulary, not clustered at low ids.
  assert.ok(Math.abs(randomLow / randomized - 0.5) < 0.05, `${randomLow} of ${randomized} replacements in the lower half`);
  loader.close();
});

test("`MlmLoader.nextBatch()` lays out [CLS] A [SEP] B [SEP] with type ids 0 then 1, attention 1 then 0, [PAD] and -100 on padding", () => {
  const loader = new MlmLoader({ dir: small.dir, microBatchSize: 8, seed: 5 });
  const T = T_SMALL;
  let padded = 0;
  let nsp = 0;
  for (let step = 0; step < 6; step++) {
    const batch = loader.nextBatch();
    assert.equal(batch.rows, 8);
    assert.equal(batch.inputIds.length, 8 * T);
    for (let b = 0; b < 8; b++) {
      const ex = small.examples[batch.exampleIds[b]];
      const L = ex.tokens.length;
      const bStart = ex.a.length + 2;
      assert.ok(L <= T);
      assert.equal(batch.nspLabels[b], ex.nspLabel);
      nsp += ex.nspLabel;
      assert.deepEqual(row(batch.tokenTypeIds, b, T), Array.from({ length: T }, (_, t) => (t >= bStart && t < L ? 1 : 0)));
      assert.deepEqual(row(batch.attentionMask, b, T), Array.from({ length: T }, (_, t) => (t < L ? 1 : 0)));
      const ids = row(batch.inputIds, b, T);
      const labels = row(batch.mlmLabels, b, T);
      assert.equal(ids[0], SPECIAL.cls);
      assert.equal(ids[bStart - 1], SPECIAL.sep);
      assert.equal(ids[L - 1], SPECIAL.sep);
      // Undoing the masks gives back the stored example, then padding.
      const unmasked = ids.map((id, t) => (labels[t] === MLM_IGNORE_INDEX ? id : labels[t]));
      assert.deepEqual(unmasked, [...ex.tokens, ...Array<number>(T - L).fill(SPECIAL.pad)]);
      assert.ok(labels.slice(L).every((l) => l === MLM_IGNORE_INDEX));
      if (L < T) padded++;
    }
  }
  assert.ok(padded > 0, "some rows are padded");
  assert.ok(nsp > 0 && nsp < 48, "both next-sentence labels occur");
  loader.close();
});

test("`MlmLoader.restore()` continues with the same batches and masks, across an epoch boundary and into another layout", () => {
  const opts = { dir: small.dir, microBatchSize: 16, seed: 9 };
  const a = new MlmLoader(opts);
  const N = a.examplesPerEpoch;
  const k = Math.ceil(N / 16) - 1; // the next few batches cross into epoch 1
  for (let i = 0; i < k; i++) a.nextBatch();
  const saved = JSON.parse(JSON.stringify(a.state())) as ReturnType<MlmLoader["state"]>;
  const expected = Array.from({ length: 4 }, () => a.nextBatch());
  assert.ok(expected[3].epoch >= 1, "the compared batches reach the second epoch");
  const b = new MlmLoader(opts);
  b.restore(saved);
  for (const batch of expected) assert.deepEqual(rowsOf(b.nextBatch()), rowsOf(batch));
  // The same state restored into two ranks of 8 rows: their rows, concatenated, are the same.
  const ranks = [0, 1].map((rank) => new MlmLoader({ ...opts, microBatchSize: 8, rank, worldSize: 2 }));
  for (const r of ranks) r.restore(saved);
  for (const batch of expected) assert.deepEqual([...rowsOf(ranks[0].nextBatch()), ...rowsOf(ranks[1].nextBatch())], rowsOf(batch));
  for (const l of [a, b, ...ranks]) l.close();
});

test("`MlmLoader` data-parallel ranks read what one process reads, with the same mask per example", () => {
  const one = new MlmLoader({ dir: small.dir, microBatchSize: 6, seed: 4 });
  const ranks = [0, 1, 2].map((rank) => new MlmLoader({ dir: small.dir, microBatchSize: 2, seed: 4, rank, worldSize: 3 }));
  for (let step = 0; step < 40; step++) {
    const whole = one.nextBatch();
    const parts = ranks.map((r) => r.nextBatch());
    assert.deepEqual(parts.flatMap(rowsOf), rowsOf(whole), `step ${step}`);
  }
  for (const l of [one, ...ranks]) l.close();
});

test("`MlmLoader` masks are keyed by (seed, epoch, example): the same whatever the order, fresh each epoch, reproducible across runs", () => {
  const shuffled = new MlmLoader({ dir: small.dir, microBatchSize: 5, seed: 2 });
  const ordered = new MlmLoader({ dir: small.dir, microBatchSize: 5, seed: 2, shuffle: false });
  const N = shuffled.examplesPerEpoch;
  const steps = Math.floor(N / 5);
  const byExample = (loader: MlmLoader): Map<number, unknown> => {
    const m = new Map<number, unknown>();
    for (let s = 0; s < steps; s++) {
      const batch = loader.nextBatch();
      for (let b = 0; b < batch.rows; b++) {
        const { sample: _s, ...rest } = rowOf(batch, b) as { sample: number };
        m.set(batch.exampleIds[b], rest);
      }
    }
    return m;
  };
  const x = byExample(shuffled);
  const y = byExample(ordered);
  let common = 0;
  for (const [e, r] of x) {
    if (!y.has(e)) continue;
    assert.deepEqual(r, y.get(e), `example ${e}`);
    common++;
  }
  assert.ok(common > N / 2, `${common} examples compared`);
  // Epoch 1 masks the same examples differently (dynamic masking).
  const again = new MlmLoader({ dir: small.dir, microBatchSize: 5, seed: 2, shuffle: false });
  const epoch0 = again.nextBatch();
  again.restore({ ...again.state(), position: N });
  const epoch1 = again.nextBatch();
  assert.deepEqual(Array.from(epoch1.exampleIds), Array.from(epoch0.exampleIds));
  assert.notDeepEqual(Array.from(epoch1.mlmLabels), Array.from(epoch0.mlmLabels));
  // A second run with the same seed draws the same; another seed other masks and order.
  const rerun = new MlmLoader({ dir: small.dir, microBatchSize: 5, seed: 2 });
  assert.deepEqual(byExample(rerun), x);
  const other = new MlmLoader({ dir: small.dir, microBatchSize: 5, seed: 3 });
  assert.notDeepEqual(rowsOf(other.nextBatch()), rowsOf(new MlmLoader({ dir: small.dir, microBatchSize: 5, seed: 2 }).nextBatch()));
  for (const l of [shuffled, ordered, again, rerun, other]) l.close();
});

test("`MlmLoader.restore()` refuses a state saved with another seed, masking rule or dataset", () => {
  const loader = new MlmLoader({ dir: small.dir, microBatchSize: 4, seed: 1 });
  const state = loader.state();
  assert.throws(() => loader.restore({ ...state, seed: 2 }), (err: Error) => err instanceof ValueError && /saved with seed = 2, this loader has 1/.test(err.message));
  assert.throws(() => loader.restore({ ...state, masking: { ...state.masking, maskProb: 0.2 } }), /saved with masking/);
  assert.throws(() => loader.restore({ ...state, examples: state.examples + 1 }), /prepared data differs/);
  assert.throws(() => loader.restore({ kind: "megalith-token-loader" } as never), /not an MlmLoader state/);
  assert.throws(() => new MlmLoader({ dir: small.dir, microBatchSize: 4, masking: { maskTokenFraction: 0.95, randomTokenFraction: 0.1 } }), /at most 1/);
  loader.close();
});

test("`mlmEvalBatches()` yields the same examples and masks on every call, sharded over ranks; `mlmEvalBatchCount()` counts them", () => {
  const N = small.meta.mlm!.splits.val.examples;
  assert.ok(N >= 8, `${N} val examples`);
  const count = mlmEvalBatchCount({ dir: small.dir, microBatchSize: 2 });
  assert.equal(count, Math.floor(N / 2));
  const all = (seed = 0): unknown[] => [...mlmEvalBatches({ dir: small.dir, microBatchSize: 2, seed })].flatMap(rowsOf);
  const first = all();
  assert.equal(first.length, 2 * count);
  assert.deepEqual(all(), first);
  assert.notDeepEqual(all(1), first, "another seed, other masks");
  const twoRanks = [0, 1].map((rank) => [...mlmEvalBatches({ dir: small.dir, microBatchSize: 1, rank, worldSize: 2 })]);
  const interleaved = twoRanks[0].flatMap((batch, step) => [...rowsOf(batch), ...rowsOf(twoRanks[1][step])]);
  assert.deepEqual(interleaved, first);
  // A few batches spread over the split rather than its start.
  const few = [...mlmEvalBatches({ dir: small.dir, microBatchSize: 2, numBatches: 2 })];
  assert.equal(few.length, 2);
  assert.ok(few[1].exampleIds[1] > N / 2);
  assert.throws(() => mlmEvalBatches({ dir: small.dir, microBatchSize: 2, numBatches: count + 1 }), /numBatches must be an integer in \[1, \d+\]/);
});

test("`maskExample()` never selects specials, and on an example of only specials selects nothing", () => {
  const vocab = maskingVocab({ cls: 2, sep: 3, mask: 4, pad: 0, unk: 1 }, 50);
  assert.equal(vocab.replacements.length, 45);
  assert.ok(!vocab.replacements.includes(1), "[UNK] is never a replacement");
  const specials = Int32Array.from([2, 1, 3, 1, 3, 0, 0]);
  const labels = new Int32Array(specials.length);
  assert.equal(maskExample(specials, labels, vocab, { seed: 1, epoch: 0, example: 0 }), 0);
  assert.deepEqual(Array.from(labels), Array(7).fill(MLM_IGNORE_INDEX));
  const ids = Int32Array.from([2, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 3]);
  const before = Array.from(ids);
  const k = maskExample(ids, new Int32Array(ids.length), vocab, { seed: 1, epoch: 0, example: 7 }, { maskProb: 1, maskTokenFraction: 1, randomTokenFraction: 0 });
  assert.equal(k, 16);
  assert.deepEqual(Array.from(ids), before.map((id) => (id === 2 || id === 3 ? id : 4)));
});
