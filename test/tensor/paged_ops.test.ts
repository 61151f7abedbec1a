// The paged KV-cache ops as tensor functions: kvCacheWrite puts each token's row into its slot,
// pagedAttention matches a float64 reference of ragged causal attention read through block
// tables, and both refuse bad shapes and out-of-range indices with errors naming the value.
import { test } from "node:test";
import assert from "node:assert/strict";
import { tensor, randn, zeros, kvCacheWrite, pagedAttention, matmulInt8, quantizeInt8Rowwise } from "../../src/tensor/index.js";

const int32 = (a: number[], shape?: number[]) => tensor(Int32Array.from(a), { dtype: "int32", ...(shape ? { shape } : {}) });

test("`kvCacheWrite()` writes token t's k and v rows into slot slots[t], from strided inputs", () => {
  const H = 2, D = 3, C = H * D, S = 12;
  const kPool = zeros([S, H, D]), vPool = zeros([S, H, D]);
  const kv = randn([4, 2 * C], { seed: 5 });
  const [k, v] = kv.split(C, -1);                                              // 2 x (4, C), strided views
  const slots = [7, 0, 11, 3];
  kvCacheWrite(kPool, vPool, k!, v!, int32(slots));
  const kp = kPool.data() as Float32Array, vp = vPool.data() as Float32Array, src = kv.data() as Float32Array;
  for (let s = 0; s < S; s++) {
    const t = slots.indexOf(s);
    for (let c = 0; c < C; c++) {
      assert.equal(kp[s * C + c], t < 0 ? 0 : src[t * 2 * C + c], `k slot ${s}`);
      assert.equal(vp[s * C + c], t < 0 ? 0 : src[t * 2 * C + C + c], `v slot ${s}`);
    }
  }
  assert.throws(() => kvCacheWrite(kPool, vPool, k!, v!, int32([7, 0, 12, 3])), /kvCacheWrite: slot 12 of token 2 is outside the pool of 12 slots/);
  assert.throws(() => kvCacheWrite(kPool, vPool, k!, v!, int32([7, 0, 1])), /kvCacheWrite: slots must be int32 \(4\)/);
  assert.throws(() => kvCacheWrite(kPool, vPool, randn([4, 5]), v!, int32(slots)), /kvCacheWrite: k must be floating \(N, 6\)/);
  assert.throws(() => kvCacheWrite(kPool, zeros([S, H, D + 1]), k!, v!, int32(slots)), /vPool must be a contiguous float32 pool like kPool/);
});

test("`pagedAttention()` matches a float64 reference of ragged causal attention through block tables", () => {
  const H = 2, D = 4, C = H * D, bs = 2, numBlocks = 8, S = numBlocks * bs;
  const kPool = randn([S, H, D], { seed: 1 }), vPool = randn([S, H, D], { seed: 2 });
  // Sequence 0 has 5 positions in blocks [6, 1, 4], sequence 1 has 3 in [2, 7]; the batch asks
  // for positions 4, 2 of sequence 0 and 0, 2 of sequence 1.
  const tables = [[6, 1, 4], [2, 7, 0]];
  const seq = [0, 1, 0, 1], pos = [4, 0, 2, 2];
  const q = randn([4, C], { seed: 3 });
  const scale = 1 / Math.sqrt(D);
  const out = pagedAttention(q, kPool, vPool, int32(tables.flat(), [2, 3]), bs, int32(seq), int32(pos), scale).data() as Float32Array;
  const kp = kPool.data() as Float32Array, vp = vPool.data() as Float32Array, qd = q.data() as Float32Array;
  for (let t = 0; t < 4; t++) {
    for (let h = 0; h < H; h++) {
      const slot = (p: number) => tables[seq[t]!]![Math.floor(p / bs)]! * bs + (p % bs);
      const scores: number[] = [];
      for (let p = 0; p <= pos[t]!; p++) {
        let dot = 0;
        for (let d = 0; d < D; d++) dot += qd[t * C + h * D + d]! * kp[slot(p) * C + h * D + d]!;
        scores.push(dot * scale);
      }
      const m = Math.max(...scores);
      const w = scores.map((s) => Math.exp(s - m));
      const z = w.reduce((a, b) => a + b, 0);
      for (let d = 0; d < D; d++) {
        let ref = 0;
        for (let p = 0; p <= pos[t]!; p++) ref += (w[p]! / z) * vp[slot(p) * C + h * D + d]!;
        assert.ok(Math.abs(out[t * C + h * D + d]! - ref) < 1e-5, `token ${t} head ${h} dim ${d}: ${out[t * C + h * D + d]} vs ${ref}`);
      }
    }
  }
  const tablesT = int32(tables.flat(), [2, 3]);
  assert.throws(() => pagedAttention(q, kPool, vPool, int32([6, 1, 9, 2, 7, 0], [2, 3]), bs, int32(seq), int32(pos), scale), /block id 9 \(sequence 0, block 2\) is outside the pool's 8 blocks/);
  assert.throws(() => pagedAttention(q, kPool, vPool, tablesT, bs, int32([0, 2, 0, 1]), int32(pos), scale), /seq 2 of token 1 is outside the 2 rows of blockTables/);
  assert.throws(() => pagedAttention(q, kPool, vPool, tablesT, bs, int32(seq), int32([6, 0, 2, 2]), scale), /position 6 of token 0 needs more than the 3 blocks of a table row/);
  assert.throws(() => pagedAttention(q, kPool, vPool, tablesT, 3, int32(seq), int32(pos), scale), /blockSize must be a positive integer dividing the pool's 16 slots, got 3/);
});

test("`matmulInt8()` and `quantizeInt8Rowwise()` check dtypes and shapes", () => {
  const { q, scales } = quantizeInt8Rowwise(randn([5, 7], { seed: 4 }));
  assert.equal(q.dtype, "int8");
  assert.deepEqual(scales.shape, [5]);
  assert.deepEqual(matmulInt8(randn([2, 3, 7]), q, scales, null).shape, [2, 3, 5]);
  assert.throws(() => matmulInt8(randn([2, 6]), q, scales, null), /matmulInt8: x must be floating \(\.\.\., 7\)/);
  assert.throws(() => matmulInt8(randn([2, 7]), q, zeros([4]), null), /scales must be contiguous float32 \[5\]/);
  assert.throws(() => quantizeInt8Rowwise(randn([5])), /quantizeInt8Rowwise: w must be a floating \[rows, cols\] tensor/);
});
