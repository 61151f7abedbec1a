/**
 * A plain float64 reference for every Megalith tensor op, and a finite-difference gradient
 * checker built on it.
 *
 * Everything here is written for reading, not speed: row-major Float64Arrays, explicit index
 * loops, no views and no kernels. Tests compare Megalith's float32 kernels against these on
 * fresh random inputs (test/_util/check.ts holds the tolerances and the comparison).
 *
 * Conventions follow PyTorch: broadcasting is NumPy's, negative dims count from the end,
 * matmul promotes 1-D operands, cross-entropy's mean divides by the non-ignored count, causal
 * attention is top-left aligned (query i sees keys j <= i).
 *
 * Gradients: `numGrad` differentiates any reference function by central differences in
 * float64 (h = 1e-6: truncation ~h^2, round-off ~1e-16/h, both far below float32's 6e-8).
 * Where that costs too much (matmul, attention) the reference also has a hand-derived
 * gradient, and test/_util/reference.test.ts checks each one against `numGrad`.
 */

/** A dense float64 array in row-major order. */
export interface Arr {
  shape: number[];
  data: Float64Array;
}

// ---- shapes and indexing --------------------------------------------------------------------

export function numel(shape: readonly number[]): number {
  return shape.reduce((p, s) => p * s, 1);
}

export function stridesOf(shape: readonly number[]): number[] {
  const st = new Array<number>(shape.length);
  let acc = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    st[i] = acc;
    acc *= shape[i]!;
  }
  return st;
}

/** The multi-index of flat position `i` in `shape`. */
export function unravel(i: number, shape: readonly number[]): number[] {
  const idx = new Array<number>(shape.length);
  for (let d = shape.length - 1; d >= 0; d--) {
    const s = shape[d]!;
    idx[d] = s === 0 ? 0 : i % s;
    i = s === 0 ? 0 : Math.floor(i / s);
  }
  return idx;
}

/**
 * Calls fn(idx, i) for every multi-index of `shape` in row-major order; `idx` is one array
 * updated in place (copy it to keep it). Cheaper than unravel() per element.
 */
export function forEachIndex(shape: readonly number[], fn: (idx: number[], i: number) => void): void {
  const n = numel(shape);
  const idx = new Array<number>(shape.length).fill(0);
  for (let i = 0; i < n; i++) {
    fn(idx, i);
    for (let d = shape.length - 1; d >= 0; d--) {
      if (++idx[d]! < shape[d]!) break;
      idx[d] = 0;
    }
  }
}

export function normDim(d: number, ndim: number): number {
  const n = Math.max(ndim, 1);
  if (d < -n || d >= n) throw new Error(`reference: dim ${d} out of range for ${ndim} dims`);
  return d < 0 ? d + n : d;
}

export function arr(shape: readonly number[], data?: ArrayLike<number>): Arr {
  const n = numel(shape);
  const out = new Float64Array(n);
  if (data) {
    if (data.length !== n) throw new Error(`reference: shape [${shape}] needs ${n} values, got ${data.length}`);
    out.set(data);
  }
  return { shape: [...shape], data: out };
}

export function full(shape: readonly number[], v: number): Arr {
  const a = arr(shape);
  a.data.fill(v);
  return a;
}

/** Rounds every element to float32 (what the input looks like after tensor()). */
export function fround(a: Arr): Arr {
  return { shape: [...a.shape], data: a.data.map((v) => Math.fround(v)) };
}

export function broadcastShape(a: readonly number[], b: readonly number[]): number[] {
  const n = Math.max(a.length, b.length);
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const da = a[a.length - n + i] ?? 1;
    const db = b[b.length - n + i] ?? 1;
    if (da !== db && da !== 1 && db !== 1) throw new Error(`reference: cannot broadcast [${a}] and [${b}]`);
    out.push(da === 1 ? db : da);
  }
  return out;
}

/** Reads `a` at a multi-index of a (possibly larger) broadcast shape. */
function readBroadcast(a: Arr, idx: readonly number[]): number {
  const off = idx.length - a.shape.length;
  let flat = 0;
  for (let d = 0; d < a.shape.length; d++) {
    const s = a.shape[d]!;
    flat = flat * s + (s === 1 ? 0 : idx[off + d]!);
  }
  return a.data[flat]!;
}

// ---- elementwise ------------------------------------------------------------------------------

export function map(a: Arr, f: (x: number, i: number) => number): Arr {
  return { shape: [...a.shape], data: a.data.map(f) };
}

/** Broadcasting binary op. */
export function zip(a: Arr, b: Arr, f: (x: number, y: number) => number): Arr {
  const shape = broadcastShape(a.shape, b.shape);
  const out = arr(shape);
  forEachIndex(shape, (idx, i) => { out.data[i] = f(readBroadcast(a, idx), readBroadcast(b, idx)); });
  return out;
}

/** torch.where(cond != 0, a, b) with broadcasting. */
export function where(c: Arr, a: Arr, b: Arr): Arr {
  const shape = broadcastShape(broadcastShape(c.shape, a.shape), b.shape);
  const out = arr(shape);
  forEachIndex(shape, (idx, i) => { out.data[i] = readBroadcast(c, idx) !== 0 ? readBroadcast(a, idx) : readBroadcast(b, idx); });
  return out;
}

export const add = (a: Arr, b: Arr): Arr => zip(a, b, (x, y) => x + y);
export const sub = (a: Arr, b: Arr): Arr => zip(a, b, (x, y) => x - y);
export const mul = (a: Arr, b: Arr): Arr => zip(a, b, (x, y) => x * y);
export const div = (a: Arr, b: Arr): Arr => zip(a, b, (x, y) => x / y);
export const scalar = (v: number): Arr => arr([], [v]);

/** erf to ~1e-15: Maclaurin series below 1.5, a continued fraction for erfc above (each where it is accurate). */
export function erf(x: number): number {
  const ax = Math.abs(x);
  if (ax < 1.5) {
    let term = x, sum = x;
    for (let n = 1; n < 200; n++) {
      term *= (-x * x) / n;
      const t = term / (2 * n + 1);
      sum += t;
      if (Math.abs(t) < 1e-17 * Math.abs(sum)) break;
    }
    return (2 / Math.sqrt(Math.PI)) * sum;
  }
  // erfc(x) = exp(-x^2)/sqrt(pi) * 1/(x + 1/2/(x + 1/(x + 3/2/(x + ...))))
  let f = ax;
  for (let k = 200; k >= 1; k--) f = ax + k / 2 / f;
  const erfc = Math.exp(-ax * ax) / Math.sqrt(Math.PI) / f;
  return Math.sign(x) * (1 - erfc);
}

export const sigmoid = (x: number): number => 1 / (1 + Math.exp(-x));
export const silu = (x: number): number => x * sigmoid(x);
export const geluErf = (x: number): number => 0.5 * x * (1 + erf(x / Math.SQRT2));
export const geluTanh = (x: number): number => 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3)));
export const relu = (x: number): number => (x > 0 ? x : 0);
export const clamp = (x: number, lo: number, hi: number): number => Math.min(Math.max(x, lo), hi);

/** Scalar functions by Megalith method name, for table-driven tests. */
export const UNARY: Record<string, (x: number) => number> = {
  neg: (x) => -x, exp: Math.exp, log: Math.log, sqrt: Math.sqrt, rsqrt: (x) => 1 / Math.sqrt(x), tanh: Math.tanh,
  relu, sigmoid, silu, abs: Math.abs, square: (x) => x * x, reciprocal: (x) => 1 / x,
  geluErf, geluTanh, erf, sin: Math.sin, cos: Math.cos,
};

// ---- views (as copies) ------------------------------------------------------------------------

export function reshape(a: Arr, shape: readonly number[]): Arr {
  const s = [...shape];
  const inf = s.indexOf(-1);
  if (inf >= 0) s[inf] = a.data.length / numel(s.filter((_, i) => i !== inf));
  if (numel(s) !== a.data.length) throw new Error(`reference: cannot reshape [${a.shape}] to [${shape}]`);
  return { shape: s, data: a.data.slice() };
}

export function permute(a: Arr, dims: readonly number[]): Arr {
  const d = dims.map((x) => normDim(x, a.shape.length));
  const shape = d.map((i) => a.shape[i]!);
  const st = stridesOf(a.shape);
  const out = arr(shape);
  const pst = d.map((k) => st[k]!);
  forEachIndex(shape, (idx, i) => {
    let src = 0;
    for (let k = 0; k < idx.length; k++) src += idx[k]! * pst[k]!;
    out.data[i] = a.data[src]!;
  });
  return out;
}

export function transpose(a: Arr, i: number, j: number): Arr {
  const p = a.shape.map((_, k) => k);
  const di = normDim(i, a.shape.length), dj = normDim(j, a.shape.length);
  [p[di], p[dj]] = [p[dj]!, p[di]!];
  return permute(a, p);
}

/** a[..., start:end:step, ...] along `dim` (PyTorch clamping of start/end). */
export function slice(a: Arr, dim: number, start: number, end?: number, step = 1): Arr {
  const d = normDim(dim, a.shape.length);
  const n = a.shape[d]!;
  let s = start < 0 ? start + n : start;
  let e = end === undefined ? n : end < 0 ? end + n : end;
  s = Math.min(Math.max(s, 0), n);
  e = Math.min(Math.max(e, s), n);
  const len = Math.ceil((e - s) / step);
  const shape = [...a.shape];
  shape[d] = len;
  const st = stridesOf(a.shape);
  const out = arr(shape);
  forEachIndex(shape, (idx, i) => {
    let src = 0;
    for (let k = 0; k < idx.length; k++) src += (k === d ? s + idx[k]! * step : idx[k]!) * st[k]!;
    out.data[i] = a.data[src]!;
  });
  return out;
}

export function select(a: Arr, dim: number, index: number): Arr {
  const d = normDim(dim, a.shape.length);
  const i = index < 0 ? index + a.shape[d]! : index;
  const s = slice(a, d, i, i + 1);
  return reshape(s, a.shape.filter((_, k) => k !== d));
}

export function expand(a: Arr, shape: readonly number[]): Arr {
  const target = shape.map((s, i) => (s === -1 ? a.shape[i - (shape.length - a.shape.length)]! : s));
  return zip(a, full(target, 0), (x) => x);
}

export function cat(list: readonly Arr[], dim: number): Arr {
  const d = normDim(dim, list[0]!.shape.length);
  const shape = [...list[0]!.shape];
  shape[d] = list.reduce((p, a) => p + a.shape[d]!, 0);
  const out = arr(shape);
  const ost = stridesOf(shape);
  let base = 0;
  for (const a of list) {
    for (let i = 0; i < a.data.length; i++) {
      const idx = unravel(i, a.shape);
      idx[d] = idx[d]! + base;
      let o = 0;
      for (let k = 0; k < idx.length; k++) o += idx[k]! * ost[k]!;
      out.data[o] = a.data[i]!;
    }
    base += a.shape[d]!;
  }
  return out;
}

export function stack(list: readonly Arr[], dim: number): Arr {
  const d = normDim(dim, list[0]!.shape.length + 1);
  return cat(list.map((a) => reshape(a, [...a.shape.slice(0, d), 1, ...a.shape.slice(d)])), d);
}

// ---- reductions -------------------------------------------------------------------------------

function reduceDims(a: Arr, dims: number | number[] | null | undefined): number[] {
  if (dims == null) return a.shape.map((_, i) => i);
  return (Array.isArray(dims) ? dims : [dims]).map((d) => normDim(d, a.shape.length));
}

/**
 * Folds every group of elements that differ only in `dims` with `f(acc, x, r)` (r: the
 * position within the group, row-major over the reduced dims).
 */
export function reduce(a: Arr, dims: number | number[] | null | undefined, keepdim: boolean,
  init: number, f: (acc: number, x: number, r: number) => number): Arr {
  const ds = reduceDims(a, dims);
  const outShape = a.shape.map((s, i) => (ds.includes(i) ? 1 : s));
  const out = full(outShape, init);
  const rShape = ds.map((d) => a.shape[d]!);
  const reduced = a.shape.map((_, i) => ds.includes(i));
  forEachIndex(a.shape, (idx, i) => {
    let o = 0, r = 0;
    for (let k = 0; k < idx.length; k++) o = o * outShape[k]! + (reduced[k] ? 0 : idx[k]!);
    for (let k = 0; k < ds.length; k++) r = r * rShape[k]! + idx[ds[k]!]!;
    out.data[o] = f(out.data[o]!, a.data[i]!, r);
  });
  return keepdim ? out : { shape: a.shape.filter((_, i) => !ds.includes(i)), data: out.data };
}

export const sum = (a: Arr, dims?: number | number[] | null, keepdim = false): Arr => reduce(a, dims, keepdim, 0, (s, x) => s + x);

export function mean(a: Arr, dims?: number | number[] | null, keepdim = false): Arr {
  const n = numel(reduceDims(a, dims).map((d) => a.shape[d]!));
  return map(sum(a, dims, keepdim), (v) => v / n);
}

/** torch.var with `correction` (1 = Bessel). */
export function variance(a: Arr, dims?: number | number[] | null, correction = 1, keepdim = false): Arr {
  const n = numel(reduceDims(a, dims).map((d) => a.shape[d]!));
  const mu = mean(a, dims, true);
  const sq = map(sub(a, mu), (v) => v * v);
  return map(sum(sq, dims, keepdim), (v) => v / Math.max(n - correction, 0));
}

/** Max (or min) along one dim, with the first index of the extreme value. */
export function maxDim(a: Arr, dim: number, keepdim = false, kind: "max" | "min" = "max"): { values: Arr; indices: Arr } {
  const better = kind === "max" ? (x: number, y: number) => x > y : (x: number, y: number) => x < y;
  let bestIdx: number[] = [];
  const values = reduce(a, dim, keepdim, NaN, (acc, x, r) => {
    void r;
    return Number.isNaN(acc) || better(x, acc) ? x : acc;
  });
  // second pass for the index of the first occurrence
  const d = normDim(dim, a.shape.length);
  const outShape = a.shape.map((s, i) => (i === d ? 1 : s));
  bestIdx = new Array(numel(outShape)).fill(-1);
  const bestVal = new Array(numel(outShape)).fill(NaN);
  forEachIndex(a.shape, (idx, i) => {
    let o = 0;
    for (let k = 0; k < idx.length; k++) o = o * outShape[k]! + (k === d ? 0 : idx[k]!);
    if (bestIdx[o] === -1 || better(a.data[i]!, bestVal[o])) {
      bestIdx[o] = idx[d]!;
      bestVal[o] = a.data[i]!;
    }
  });
  const indices = { shape: values.shape, data: Float64Array.from(bestIdx) };
  return { values, indices };
}

export function cumsum(a: Arr, dim: number): Arr {
  const d = normDim(dim, a.shape.length);
  const out = arr(a.shape, a.data);
  const st = stridesOf(a.shape);
  for (let i = 0; i < out.data.length; i++) {
    const idx = unravel(i, a.shape);
    if (idx[d]! > 0) out.data[i] = out.data[i]! + out.data[i - st[d]!]!;
  }
  return out;
}

/** The k largest (or smallest) along `dim`, sorted, ties by lower index. */
export function topk(a: Arr, k: number, dim = -1, largest = true): { values: Arr; indices: Arr } {
  const d = normDim(dim, a.shape.length);
  const last = transpose(a, d, -1);
  const n = last.shape[last.shape.length - 1]!;
  const rows = last.data.length / Math.max(n, 1);
  const vshape = [...last.shape.slice(0, -1), k];
  const values = arr(vshape), indices = arr(vshape);
  for (let r = 0; r < rows; r++) {
    const order = Array.from({ length: n }, (_, i) => i);
    const row = last.data.subarray(r * n, r * n + n);
    order.sort((i, j) => (row[i] !== row[j] ? (largest ? row[j]! - row[i]! : row[i]! - row[j]!) : i - j));
    for (let j = 0; j < k; j++) {
      values.data[r * k + j] = row[order[j]!]!;
      indices.data[r * k + j] = order[j]!;
    }
  }
  return { values: transpose(values, d, -1), indices: transpose(indices, d, -1) };
}

// ---- linear algebra ---------------------------------------------------------------------------

/** torch.matmul: 1-D operands promoted then squeezed; batch dims broadcast. */
export function matmul(a: Arr, b: Arr): Arr {
  const a2 = a.shape.length === 1 ? reshape(a, [1, a.shape[0]!]) : a;
  const b2 = b.shape.length === 1 ? reshape(b, [b.shape[0]!, 1]) : b;
  const M = a2.shape[a2.shape.length - 2]!, K = a2.shape[a2.shape.length - 1]!, N = b2.shape[b2.shape.length - 1]!;
  if (b2.shape[b2.shape.length - 2] !== K) throw new Error(`reference: matmul inner dims [${a.shape}] @ [${b.shape}]`);
  const batch = broadcastShape(a2.shape.slice(0, -2), b2.shape.slice(0, -2));
  const out = arr([...batch, M, N]);
  const nb = numel(batch);
  for (let bi = 0; bi < nb; bi++) {
    const bidx = unravel(bi, batch);
    const aoff = batchOffset(a2, bidx), boff = batchOffset(b2, bidx);
    for (let m = 0; m < M; m++) {
      for (let n = 0; n < N; n++) {
        let s = 0;
        for (let k = 0; k < K; k++) s += a2.data[aoff + m * K + k]! * b2.data[boff + k * N + n]!;
        out.data[bi * M * N + m * N + n] = s;
      }
    }
  }
  let shape = [...batch, M, N];
  if (a.shape.length === 1) shape = shape.filter((_, i) => i !== shape.length - 2);
  if (b.shape.length === 1) shape = shape.slice(0, -1);
  return { shape, data: out.data };
}

function batchOffset(a: Arr, bidx: readonly number[]): number {
  const nbd = a.shape.length - 2;
  const off = bidx.length - nbd;
  let flat = 0;
  for (let d = 0; d < nbd; d++) flat = flat * a.shape[d]! + (a.shape[d] === 1 ? 0 : bidx[off + d]!);
  return flat * a.shape[nbd]! * a.shape[nbd + 1]!;
}

/** Sums a broadcast gradient back to `shape`. */
export function sumTo(g: Arr, shape: readonly number[]): Arr {
  let r = g;
  const lead = g.shape.length - shape.length;
  if (lead > 0) r = sum(r, Array.from({ length: lead }, (_, i) => i));
  const dims = shape.map((s, i) => (s === 1 && r.shape[i] !== 1 ? i : -1)).filter((i) => i >= 0);
  if (dims.length) r = sum(r, dims, true);
  return reshape(r, shape);
}

/** Hand-derived gradients of matmul for 2-D+ operands: ga = gy b^T, gb = a^T gy, summed over broadcast. */
export function matmulBackward(a: Arr, b: Arr, gy: Arr): { ga: Arr; gb: Arr } {
  const a2 = a.shape.length === 1 ? reshape(a, [1, a.shape[0]!]) : a;
  const b2 = b.shape.length === 1 ? reshape(b, [b.shape[0]!, 1]) : b;
  const batch = broadcastShape(a2.shape.slice(0, -2), b2.shape.slice(0, -2));
  const M = a2.shape[a2.shape.length - 2]!, N = b2.shape[b2.shape.length - 1]!;
  const g2 = reshape(gy, [...batch, M, N]);
  const ga = sumTo(matmul(g2, transpose(b2, -1, -2)), a2.shape);
  const gb = sumTo(matmul(transpose(a2, -1, -2), g2), b2.shape);
  return { ga: reshape(ga, a.shape), gb: reshape(gb, b.shape) };
}

/** x @ w^T + b (torch.nn.functional.linear). */
export function linear(x: Arr, w: Arr, b?: Arr | null): Arr {
  const y = matmul(x, transpose(w, 0, 1));
  return b ? add(y, b) : y;
}

// ---- neural-network ops -------------------------------------------------------------------------

/** Applies `f(row) -> row` to every 1-D slice along `dim`. */
function alongDim(a: Arr, dim: number, f: (row: number[]) => number[]): Arr {
  const d = normDim(dim, a.shape.length);
  const isLast = d === a.shape.length - 1;
  const last = isLast ? a : transpose(a, d, -1);
  const n = last.shape[last.shape.length - 1]!;
  const out = arr(last.shape);
  for (let r = 0; r * n < last.data.length; r++) {
    const y = f(Array.from(last.data.subarray(r * n, r * n + n)));
    out.data.set(y, r * n);
  }
  return isLast ? out : transpose(out, d, -1);
}

export function softmax(a: Arr, dim = -1): Arr {
  if (a.shape.length === 0) return arr([], [1]);
  return alongDim(a, dim, (row) => {
    const m = Math.max(...row);
    const e = row.map((v) => Math.exp(v - m));
    const s = e.reduce((p, q) => p + q, 0);
    return e.map((v) => v / s);
  });
}

export function logSoftmax(a: Arr, dim = -1): Arr {
  if (a.shape.length === 0) return arr([], [0]);
  return alongDim(a, dim, (row) => {
    const m = Math.max(...row);
    const lse = m + Math.log(row.reduce((p, v) => p + Math.exp(v - m), 0));
    return row.map((v) => v - lse);
  });
}

function trailing(x: Arr, normalizedShape: readonly number[]): { rows: number; cols: number } {
  const cols = numel(normalizedShape);
  return { rows: x.data.length / cols, cols };
}

export function layerNorm(x: Arr, normalizedShape: readonly number[], w?: Arr | null, b?: Arr | null, eps = 1e-5): Arr {
  const { rows, cols } = trailing(x, normalizedShape);
  const out = arr(x.shape);
  for (let r = 0; r < rows; r++) {
    const row = x.data.subarray(r * cols, r * cols + cols);
    const mu = row.reduce((p, v) => p + v, 0) / cols;
    const v = row.reduce((p, q) => p + (q - mu) ** 2, 0) / cols;
    const rs = 1 / Math.sqrt(v + eps);
    for (let i = 0; i < cols; i++) out.data[r * cols + i] = (row[i]! - mu) * rs * (w ? w.data[i]! : 1) + (b ? b.data[i]! : 0);
  }
  return out;
}

export function rmsNorm(x: Arr, normalizedShape: readonly number[], w?: Arr | null, eps = 1e-6): Arr {
  const { rows, cols } = trailing(x, normalizedShape);
  const out = arr(x.shape);
  for (let r = 0; r < rows; r++) {
    const row = x.data.subarray(r * cols, r * cols + cols);
    const rs = 1 / Math.sqrt(row.reduce((p, v) => p + v * v, 0) / cols + eps);
    for (let i = 0; i < cols; i++) out.data[r * cols + i] = row[i]! * rs * (w ? w.data[i]! : 1);
  }
  return out;
}

/** Rows of `w` [V, C] picked by integer indices of shape `idxShape`. */
export function embedding(idx: ArrayLike<number>, idxShape: readonly number[], w: Arr): Arr {
  const [V, C] = w.shape as [number, number];
  const out = arr([...idxShape, C]);
  for (let i = 0; i < idx.length; i++) {
    const row = idx[i]!;
    if (row < 0 || row >= V) throw new Error(`reference: embedding index ${row} out of range`);
    for (let c = 0; c < C; c++) out.data[i * C + c] = w.data[row * C + c]!;
  }
  return out;
}

/** The gradient of embedding w.r.t. the table: scatter-add of gy rows. */
export function embeddingBackward(idx: ArrayLike<number>, gy: Arr, V: number): Arr {
  const C = gy.shape[gy.shape.length - 1]!;
  const gw = arr([V, C]);
  for (let i = 0; i < idx.length; i++) for (let c = 0; c < C; c++) gw.data[idx[i]! * C + c] += gy.data[i * C + c]!;
  return gw;
}

export interface CrossEntropyRefOptions {
  ignoreIndex?: number;
  reduction?: "mean" | "sum" | "none";
  labelSmoothing?: number;
}

/**
 * torch.nn.functional.cross_entropy for logits [N, C], [C] or [N, C, d...] and integer targets.
 * With smoothing s: loss = (1 - s) * nll + s * mean_c(-log p_c); ignored rows count nowhere.
 */
export function crossEntropy(logits: Arr, targets: ArrayLike<number>, opts: CrossEntropyRefOptions = {}): Arr {
  const ignore = opts.ignoreIndex ?? -100, red = opts.reduction ?? "mean", s = opts.labelSmoothing ?? 0;
  let x2 = logits;
  let tShape: number[] = logits.shape.length === 1 ? [] : [logits.shape[0]!];
  if (logits.shape.length > 2) {
    const nd = logits.shape.length;
    x2 = permute(logits, [0, ...Array.from({ length: nd - 2 }, (_, i) => i + 2), 1]);
    tShape = [logits.shape[0]!, ...logits.shape.slice(2)];
  }
  const C = logits.shape.length === 1 ? logits.shape[0]! : logits.shape[1]!;
  const rows = x2.data.length / C;
  const lp = logSoftmax(reshape(x2, [rows, C]), -1);
  const losses = arr(tShape);
  let count = 0;
  for (let r = 0; r < rows; r++) {
    const t = targets[r]!;
    if (t === ignore) continue;
    count++;
    let smooth = 0;
    for (let c = 0; c < C; c++) smooth -= lp.data[r * C + c]!;
    losses.data[r] = (1 - s) * -lp.data[r * C + t]! + (s * smooth) / C;
  }
  if (red === "none") return losses;
  const total = losses.data.reduce((p, v) => p + v, 0);
  return scalar(red === "sum" ? total : total / count);
}

/**
 * Hand-derived gradient of crossEntropy w.r.t. logits [N, C] (or [C]) for an output gradient gy
 * (a scalar for mean/sum, [N] for none): (softmax - (1 - s) onehot - s / C) * scale per row,
 * zero on ignored rows; scale = gy (sum), gy / count (mean) or gy[r] (none).
 */
export function crossEntropyBackward(logits: Arr, targets: ArrayLike<number>, gy: Arr, opts: CrossEntropyRefOptions = {}): Arr {
  const ignore = opts.ignoreIndex ?? -100, red = opts.reduction ?? "mean", s = opts.labelSmoothing ?? 0;
  const C = logits.shape[logits.shape.length - 1]!;
  const rows = logits.data.length / C;
  const p = softmax(reshape(logits, [rows, C]), -1);
  let count = 0;
  for (let r = 0; r < rows; r++) if (targets[r] !== ignore) count++;
  const g = arr(logits.shape);
  for (let r = 0; r < rows; r++) {
    const t = targets[r]!;
    if (t === ignore) continue;
    const scale = red === "none" ? gy.data[r]! : red === "sum" ? gy.data[0]! : gy.data[0]! / count;
    for (let c = 0; c < C; c++) g.data[r * C + c] = (p.data[r * C + c]! - (c === t ? 1 - s : 0) - s / C) * scale;
  }
  return g;
}

export interface AttentionRefOptions {
  /** Additive float mask, broadcast to [..., T, S]. */
  mask?: Arr | null;
  /** Boolean mask (nonzero = may attend), broadcast to [..., T, S]. */
  boolMask?: Arr | null;
  isCausal?: boolean;
  scale?: number;
}

/** The attention probabilities P [..., T, S] (the reference builds them explicitly). */
export function attentionProbs(q: Arr, k: Arr, opts: AttentionRefOptions = {}): Arr {
  const D = q.shape[q.shape.length - 1]!;
  const T = q.shape[q.shape.length - 2]!, S = k.shape[k.shape.length - 2]!;
  const scale = opts.scale ?? 1 / Math.sqrt(D);
  let scores = map(matmul(q, transpose(k, -1, -2)), (v) => v * scale);
  if (opts.mask) scores = add(scores, opts.mask);
  if (opts.boolMask) scores = where(opts.boolMask, scores, scalar(-Infinity));
  if (opts.isCausal) {
    const keep = arr([T, S]);
    for (let i = 0; i < T; i++) for (let j = 0; j < S; j++) keep.data[i * S + j] = j <= i ? 1 : 0;
    scores = where(keep, scores, scalar(-Infinity));
  }
  return softmax(scores, -1);
}

export function attention(q: Arr, k: Arr, v: Arr, opts: AttentionRefOptions = {}): Arr {
  return matmul(attentionProbs(q, k, opts), v);
}

/**
 * Hand-derived attention gradients (FlashAttention's identities, written out plainly):
 * dV = P^T dO, dP = dO V^T, dS = P * (dP - rowsum(dP * P)), dQ = scale dS K, dK = scale dS^T Q.
 */
export function attentionBackward(q: Arr, k: Arr, v: Arr, go: Arr, opts: AttentionRefOptions = {}): { gq: Arr; gk: Arr; gv: Arr } {
  const D = q.shape[q.shape.length - 1]!;
  const scale = opts.scale ?? 1 / Math.sqrt(D);
  const P = attentionProbs(q, k, opts);
  const gv = matmul(transpose(P, -1, -2), go);
  const dP = matmul(go, transpose(v, -1, -2));
  const rowDot = sum(mul(dP, P), -1, true);
  const dS = mul(P, sub(dP, rowDot));
  const gq = map(matmul(dS, k), (x) => x * scale);
  const gk = map(matmul(transpose(dS, -1, -2), q), (x) => x * scale);
  return { gq, gk, gv };
}

// ---- finite differences ---------------------------------------------------------------------------

/**
 * Gradients of L = sum(f(inputs) * gy) w.r.t. each input listed in `wrt` (default: all), by
 * central differences in float64. Cost: 2 * numel(inputs) evaluations of f, so keep shapes small.
 */
export function numGrad(f: (...xs: Arr[]) => Arr, inputs: readonly Arr[], gy: Arr, wrt?: readonly number[], h = 1e-6): Arr[] {
  const which = wrt ?? inputs.map((_, i) => i);
  // Differences are taken per output element before weighting, so large constant outputs
  // (masked fills of -1e9 or -Infinity) do not swamp the difference in round-off.
  const eval_ = (xs: Arr[]): Float64Array => {
    const y = f(...xs);
    if (y.data.length !== gy.data.length) throw new Error(`numGrad: f gave [${y.shape}] but gy is [${gy.shape}]`);
    return y.data.slice();  // f may return (a view of) its input, which is mutated next
  };
  const out: Arr[] = [];
  for (const w of which) {
    const xs = inputs.map((x) => arr(x.shape, x.data));
    const x = xs[w]!;
    const g = arr(x.shape);
    for (let i = 0; i < x.data.length; i++) {
      const v = x.data[i]!;
      const step = h * Math.max(1, Math.abs(v));
      x.data[i] = v + step;
      const yp = eval_(xs);
      x.data[i] = v - step;
      const ym = eval_(xs);
      x.data[i] = v;
      let s = 0;
      for (let j = 0; j < yp.length; j++) if (yp[j] !== ym[j]) s += (yp[j]! - ym[j]!) * gy.data[j]!;
      g.data[i] = s / (2 * step);
    }
    out.push(g);
  }
  return out;
}

// ---- number formats -------------------------------------------------------------------------------

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** float32 -> bfloat16 -> float32, round to nearest even on the 16 dropped bits (NaN stays NaN). */
export function bf16Round(x: number): number {
  f32[0] = x;
  if (Number.isNaN(f32[0])) return NaN;
  const u = u32[0]!;
  const upper = u >>> 16, lower = u & 0xffff;
  let r = upper;
  if (lower > 0x8000 || (lower === 0x8000 && (upper & 1) === 1)) r = upper + 1;
  u32[0] = (r << 16) >>> 0;
  return f32[0];
}

/** float32 -> IEEE half -> float32 with round to nearest even (overflow to +-Infinity). */
export function f16Round(x: number): number {
  const v = Math.fround(x);
  if (!Number.isFinite(v)) return v;
  const a = Math.abs(v);
  if (a >= 65520) return Math.sign(v) * Infinity;
  // spacing of half values around a: 2^(e-10) for normals, 2^-24 for subnormals
  let e = a === 0 ? -15 : Math.floor(Math.log2(a));
  if (a !== 0 && 2 ** e > a) e--;
  if (a !== 0 && 2 ** (e + 1) <= a) e++;
  const ulp = 2 ** (Math.max(e, -14) - 10);
  const q = a / ulp;
  let n = Math.floor(q);
  const rest = q - n;
  if (rest > 0.5 || (rest === 0.5 && n % 2 === 1)) n += 1;
  return Math.sign(v) * n * ulp;
}
