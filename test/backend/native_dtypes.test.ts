// The addon's bfloat16 and float16 kernels against float64 references, called directly (no
// tensor layer): fresh random inputs (never zeros) rounded to the dtype, the reference computed
// in float64 from the rounded values, every kernel set. Tolerances: |got - ref| <= tol * (|ref|
// + rms(ref)), with tol 1.6e-2 for bfloat16 (8 significant bits; a result rounds once, by up to
// 2^-9) and 2e-3 for float16 (11 bits). Where a float64 reference would restate a long kernel
// (attention and norm backward, the int8 matmul) the reference is the float32 kernel on the same
// rounded inputs, itself pinned against float64 in test/tensor and test/inference.
import { test } from "node:test";
import assert from "node:assert/strict";

import { DTypeCode, native } from "../../src/backend/native_addon.js";
import type { KernelDType } from "../../src/backend/kernels.js";
import { KERNEL_SETS, Rng, seedFor, seedNote, withKernelSet } from "../_util/check.js";

type Dt = "bfloat16" | "float16";
const DTYPES: Dt[] = ["bfloat16", "float16"];
const TOL: Record<Dt | "float32", number> = { bfloat16: 1.6e-2, float16: 2e-3, float32: 1e-5 };
const ESIZE: Record<KernelDType, number> = { float32: 4, bfloat16: 2, float16: 2, int32: 4, int8: 1, uint8: 1 };

/** Buffers of one case, freed together. */
class Bufs {
  private live: Array<[number, number]> = [];
  alloc(n: number, dt: KernelDType): number {
    const bytes = Math.max(1, n) * ESIZE[dt];
    const p = native.alloc(bytes, 0);
    this.live.push([p, bytes]);
    return p;
  }
  /** A dtype buffer holding `values` rounded to dt; returns it and the rounded values. */
  input(values: ArrayLike<number>, dt: KernelDType): { p: number; v: Float64Array } {
    const n = values.length;
    const f = this.alloc(n, "float32");
    native.write(f, Float32Array.from(values));
    if (dt === "float32") return { p: f, v: Float64Array.from(new Float32Array(native.read(f, n * 4))) };
    const p = this.alloc(n, dt);
    native.cast(DTypeCode.float32, f, DTypeCode[dt], p, n);
    return { p, v: this.read(p, n, dt) };
  }
  int32(values: ArrayLike<number>): number {
    const p = this.alloc(values.length, "int32");
    native.write(p, Int32Array.from(values));
    return p;
  }
  /** An output buffer, pre-filled with a non-zero pattern so unwritten elements show. */
  output(n: number, dt: KernelDType): number {
    return this.input(new Float32Array(n).fill(-123.5), dt).p;
  }
  read(p: number, n: number, dt: KernelDType): Float64Array {
    if (dt === "float32") return Float64Array.from(new Float32Array(native.read(p, n * 4)));
    const f = this.alloc(n, "float32");
    native.cast(DTypeCode[dt], p, DTypeCode.float32, f, n);
    return Float64Array.from(new Float32Array(native.read(f, n * 4)));
  }
  free(): void {
    for (const [p, b] of this.live) native.free(p, b);
    this.live = [];
  }
}

function randn(rng: Rng, n: number, scale = 1): number[] {
  return Array.from({ length: n }, () => {
    let x = rng.normal() * scale;
    if (Math.abs(x) < 1e-3 * scale) x = 1e-3 * scale * (x < 0 ? -1 : 1);  // never zero
    return x;
  });
}

function close(got: ArrayLike<number>, ref: ArrayLike<number>, tol: number, what: string): void {
  assert.equal(got.length, ref.length, `${what}: length`);
  let ss = 0;
  for (let i = 0; i < ref.length; i++) ss += ref[i]! ** 2;
  const rms = Math.sqrt(ss / Math.max(1, ref.length));
  for (let i = 0; i < ref.length; i++) {
    const err = Math.abs(got[i]! - ref[i]!);
    if (!(err <= tol * (Math.abs(ref[i]!) + rms) + 1e-30)) {
      assert.fail(`${what}: element ${i}: got ${got[i]}, expected ${ref[i]} (|diff| ${err.toExponential(2)}, tol ${tol} * (|ref| + rms ${rms.toExponential(2)}))`);
    }
  }
}

type Outputs = Record<string, Float64Array>;

/**
 * Runs `body` on every kernel set: each run checks itself against its reference, and the sets'
 * outputs must agree with each other to within one rounding of the dtype.
 */
function acrossSets(label: string, dt: Dt, body: (b: Bufs, rng: Rng, what: string) => Outputs): void {
  const seed = seedFor(`${label} ${dt}`);
  const results: Array<[string, Outputs]> = [];
  for (const ks of KERNEL_SETS) {
    const b = new Bufs();
    try {
      results.push([ks, withKernelSet(ks, () => body(b, new Rng(seed), `${label} ${dt} (${ks}; ${seedNote(seed)})`))]);
    } finally {
      b.free();
    }
  }
  const [ks0, out0] = results[0]!;
  for (const [ks, out] of results.slice(1))
    for (const k of Object.keys(out0)) close(out[k]!, out0[k]!, TOL[dt] / 2, `${label} ${dt}: ${k} of ${ks} vs ${ks0}`);
}

const sigmoid = (x: number) => 1 / (1 + Math.exp(-x));
function erf(x: number): number {  // Abramowitz-Stegun 7.1.26 is too coarse; use a series/continued fraction
  const t = 1 / (1 + 0.5 * Math.abs(x));
  const y = 1 - t * Math.exp(-x * x - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806 +
    t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))));
  return x >= 0 ? y : -y;
}
const geluTanh = (x: number) => 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3)));

for (const dt of DTYPES) {
  test(`\`binary\` (${dt}) matches float64 for each op, with broadcasting strides`, () => {
    const ops: Array<[string, number, (a: number, b: number) => number]> = [
      ["add", 0, (a, b) => a + b], ["sub", 1, (a, b) => a - b], ["mul", 2, (a, b) => a * b], ["div", 3, (a, b) => a / b],
      ["pow", 4, (a, b) => Math.abs(a) ** b], ["max", 5, Math.max], ["min", 6, Math.min], ["lt", 9, (a, b) => (a < b ? 1 : 0)],
    ];
    for (const [name, op, f] of ops) {
      acrossSets(`binary ${name}`, dt, (b, rng, what) => {
        const [A, B, C] = [3, 5, 7];
        let av = randn(rng, A * B * C);
        // pow: bases in [0.25, ~4] and exponents in [-2, 2], so every result fits float16 (max 65504).
        if (name === "pow") av = av.map((x) => 0.25 + Math.abs(x));
        const bv = randn(rng, B).map((x) => (name === "div" ? Math.sign(x) * (0.5 + Math.abs(x)) : name === "pow" ? Math.max(-2, Math.min(2, x)) : x));
        const a = b.input(av, dt), bb = b.input(bv, dt), out = b.output(A * B * C, dt);
        native.binary(op, a.p, [B * C, C, 1], bb.p, [0, 1, 0], out, [A, B, C], dt);
        const got = b.read(out, A * B * C, dt);
        const ref = Float64Array.from({ length: A * B * C }, (_, i) => f(a.v[i]!, bb.v[Math.floor(i / C) % B]!));
        close(got, ref, TOL[dt], what);
        return { out: got };
      });
    }
  });

  test(`\`unary\` and \`unaryBackward\` (${dt}) match float64`, () => {
    type U = [string, number, (x: number) => number, ((x: number, y: number) => number) | null, boolean];
    const ops: U[] = [
      ["exp", 1, Math.exp, (_x, y) => y, false], ["log", 2, Math.log, (x) => 1 / x, true], ["tanh", 5, Math.tanh, (_x, y) => 1 - y * y, false],
      ["sqrt", 3, Math.sqrt, (_x, y) => 0.5 / y, true], ["geluTanh", 7, geluTanh, null, false],
      ["geluErf", 8, (x) => 0.5 * x * (1 + erf(x / Math.SQRT2)), (x) => 0.5 * (1 + erf(x / Math.SQRT2)) + x * Math.exp(-0.5 * x * x) / Math.sqrt(2 * Math.PI), false],
      ["silu", 9, (x) => x * sigmoid(x), (x) => sigmoid(x) * (1 + x * (1 - sigmoid(x))), false],
      ["sigmoid", 10, sigmoid, (_x, y) => y * (1 - y), false], ["mulScalar", 13, (x) => 1.75 * x, null, false],
      ["clamp", 17, (x) => Math.min(0.5, Math.max(-0.5, x)), null, false], ["sin", 22, Math.sin, (x) => Math.cos(x), false],
    ];
    for (const [name, op, f, df, positive] of ops) {
      acrossSets(`unary ${name}`, dt, (b, rng, what) => {
        const n = 1000;
        let xv = randn(rng, n);
        if (positive) xv = xv.map((x) => 0.1 + Math.abs(x));
        const x = b.input(xv, dt), y = b.output(n, dt);
        const [pa, pb] = name === "mulScalar" ? [1.75, 0] : name === "clamp" ? [-0.5, 0.5] : [0, 0];
        native.unary(op, x.p, y, n, pa, pb, dt);
        const got = b.read(y, n, dt);
        close(got, Array.from(x.v, f), TOL[dt], `${what} forward`);
        const out: Outputs = { y: got };
        if (df) {
          const gy = b.input(randn(rng, n), dt), gx = b.output(n, dt);
          native.unaryBackward(op, x.p, y, gy.p, gx, n, pa, pb, dt);
          const g = b.read(gx, n, dt);
          // the kernel may use the rounded y; so does the reference
          close(g, Array.from(x.v, (xi, i) => gy.v[i]! * df(xi, got[i]!)), 2 * TOL[dt], `${what} backward`);
          out.gx = g;
        }
        return out;
      });
    }
  });

  test(`\`where\`, \`reduce\`, \`argReduce\`, \`cumsum\` and \`topk\` (${dt}) match float64`, () => {
    acrossSets("where", dt, (b, rng, what) => {
      const n = 60;
      const cv = Array.from({ length: n }, () => (rng.next() < 0.5 ? 1 : 0));
      const c = b.input(cv, "float32"), x = b.input(randn(rng, n), dt), y = b.input(randn(rng, 6), dt), out = b.output(n, dt);
      native.where(c.p, [1], x.p, [1], y.p, [0], out, [n], dt);  // y broadcast: one value... of 6 (first)
      const got = b.read(out, n, dt);
      close(got, cv.map((ci, i) => (ci ? x.v[i]! : y.v[0]!)), 0, what);
      return { out: got };
    });
    for (const [A, R, B] of [[4, 300, 1], [3, 50, 40]] as const) {
      for (const [name, op] of [["sum", 0], ["max", 1], ["min", 2], ["sumSq", 3]] as const) {
        for (const odt of [dt, "float32"] as const) {
          acrossSets(`reduce ${name} [${A},${R},${B}] -> ${odt}`, dt, (b, rng, what) => {
            const x = b.input(randn(rng, A * R * B), dt), out = b.output(A * B, odt);
            native.reduce(op, x.p, out, A, R, B, 0.5, dt, odt);
            const ref = new Float64Array(A * B);
            for (let a = 0; a < A; a++)
              for (let bb = 0; bb < B; bb++) {
                let acc = op === 1 ? -Infinity : op === 2 ? Infinity : 0;
                for (let r = 0; r < R; r++) {
                  const v = x.v[(a * R + r) * B + bb]!;
                  acc = op === 0 ? acc + v : op === 3 ? acc + v * v : op === 1 ? Math.max(acc, v) : Math.min(acc, v);
                }
                ref[a * B + bb] = 0.5 * acc;
              }
            const got = b.read(out, A * B, odt);
            // a sum of R terms: float32 accumulation, one final rounding to odt
            close(got, ref, odt === "float32" ? 1e-4 : TOL[dt], what);
            return { out: got };
          });
        }
      }
    }
    acrossSets("argReduce / topk", dt, (b, rng, what) => {
      const rows = 5, cols = 40, k = 6;
      // distinct small integers: exact in both dtypes, so no ties after rounding
      const xv: number[] = [];
      for (let r = 0; r < rows; r++) xv.push(...rng.shuffle(Array.from({ length: cols }, (_, i) => i - 17.5)));
      const x = b.input(xv, dt);
      const vals = b.output(rows, dt), idx = b.int32(new Array(rows).fill(-1));
      native.argReduce(0, x.p, vals, idx, rows, cols, 1, dt);
      const gi = new Int32Array(native.read(idx, rows * 4));
      const tv = b.output(rows * k, dt), ti = b.int32(new Array(rows * k).fill(-1));
      native.topk(x.p, tv, ti, rows, cols, k, true, dt);
      const gtv = b.read(tv, rows * k, dt), gti = new Int32Array(native.read(ti, rows * k * 4));
      for (let r = 0; r < rows; r++) {
        const row = xv.slice(r * cols, (r + 1) * cols);
        const order = row.map((v, i) => [v, i] as const).sort((p, q) => q[0] - p[0]);
        assert.equal(gi[r], order[0]![1], `${what}: argmax row ${r}`);
        for (let j = 0; j < k; j++) {
          assert.equal(gti[r * k + j], order[j]![1], `${what}: topk index row ${r} #${j}`);
          assert.equal(gtv[r * k + j], order[j]![0], `${what}: topk value row ${r} #${j}`);
        }
      }
      return { vals: b.read(vals, rows, dt), topk: gtv };
    });
    for (const reverse of [false, true]) {
      acrossSets(`cumsum reverse=${reverse}`, dt, (b, rng, what) => {
        const [A, R, B] = [2, 30, 3];
        const x = b.input(randn(rng, A * R * B), dt), y = b.output(A * R * B, dt);
        native.cumsum(x.p, y, A, R, B, reverse, dt);
        const ref = new Float64Array(A * R * B);
        for (let a = 0; a < A; a++)
          for (let bb = 0; bb < B; bb++) {
            let acc = 0;
            for (let rr = 0; rr < R; rr++) {
              const r = reverse ? R - 1 - rr : rr;
              acc += x.v[(a * R + r) * B + bb]!;
              ref[(a * R + r) * B + bb] = acc;
            }
          }
        const got = b.read(y, A * R * B, dt);
        close(got, ref, TOL[dt], what);
        return { y: got };
      });
    }
  });
}

/** The float32 kernel on the same rounded inputs, as the reference for long kernels. */
function f32Of(b: Bufs, v: Float64Array): number {
  return b.input(v, "float32").p;
}

for (const dt of DTYPES) {
  test(`\`softmaxForward\`/\`softmaxBackward\` (${dt}) match float64, y in dtype or float32`, () => {
    for (const log of [false, true]) {
      for (const odt of [dt, "float32"] as const) {
        acrossSets(`softmax log=${log} -> ${odt}`, dt, (b, rng, what) => {
          const rows = 6, cols = 77;
          const x = b.input(randn(rng, rows * cols, 2), dt), y = b.output(rows * cols, odt);
          native.softmaxForward(x.p, y, rows, cols, log, dt, odt);
          const ref = new Float64Array(rows * cols);
          for (let r = 0; r < rows; r++) {
            const row = x.v.subarray(r * cols, (r + 1) * cols);
            const m = Math.max(...row);
            const s = row.reduce((acc, v) => acc + Math.exp(v - m), 0);
            for (let i = 0; i < cols; i++) ref[r * cols + i] = log ? row[i]! - m - Math.log(s) : Math.exp(row[i]! - m) / s;
          }
          const got = b.read(y, rows * cols, odt);
          close(got, ref, odt === "float32" ? 1e-4 : TOL[dt], `${what} forward`);
          // backward from the (rounded) y the kernel produced
          const gy = b.input(randn(rng, rows * cols), odt), gx = b.output(rows * cols, odt);
          native.softmaxBackward(y, gy.p, gx, rows, cols, log, odt, odt);
          const gref = new Float64Array(rows * cols);
          for (let r = 0; r < rows; r++) {
            let dot = 0;
            for (let i = 0; i < cols; i++) dot += log ? gy.v[r * cols + i]! : gy.v[r * cols + i]! * got[r * cols + i]!;
            for (let i = 0; i < cols; i++) {
              const yi = got[r * cols + i]!, gi = gy.v[r * cols + i]!;
              gref[r * cols + i] = log ? gi - Math.exp(yi) * dot : yi * (gi - dot);
            }
          }
          const g = b.read(gx, rows * cols, odt);
          close(g, gref, odt === "float32" ? 1e-3 : 2 * TOL[dt], `${what} backward`);
          return { y: got, gx: g };
        });
      }
    }
  });

  test(`\`layerNorm\`/\`rmsNorm\` forward and backward (${dt}), weights in dtype or float32`, () => {
    for (const wdt of [dt, "float32"] as const) {
      acrossSets(`layerNorm w=${wdt}`, dt, (b, rng, what) => {
        const rows = 5, cols = 96, eps = 1e-5;
        const x = b.input(randn(rng, rows * cols, 3).map((v) => v + 1), dt);
        const w = b.input(randn(rng, cols).map((v) => 1 + 0.3 * v), wdt), bias = b.input(randn(rng, cols, 0.2), wdt);
        const y = b.output(rows * cols, dt), mean = b.output(rows, "float32"), rstd = b.output(rows, "float32");
        native.layerNormForward(x.p, w.p, bias.p, y, mean, rstd, rows, cols, eps, dt, wdt);
        const ref = new Float64Array(rows * cols), mref = new Float64Array(rows), rref = new Float64Array(rows);
        for (let r = 0; r < rows; r++) {
          const row = x.v.subarray(r * cols, (r + 1) * cols);
          const mu = row.reduce((a, v) => a + v, 0) / cols;
          const va = row.reduce((a, v) => a + (v - mu) ** 2, 0) / cols;
          mref[r] = mu;
          rref[r] = 1 / Math.sqrt(va + eps);
          for (let i = 0; i < cols; i++) ref[r * cols + i] = (row[i]! - mu) * rref[r]! * w.v[i]! + bias.v[i]!;
        }
        const got = b.read(y, rows * cols, dt);
        close(got, ref, TOL[dt], `${what} y`);
        close(b.read(mean, rows, "float32"), mref, 1e-5, `${what} mean`);
        close(b.read(rstd, rows, "float32"), rref, 1e-4, `${what} rstd`);
        // backward against the float32 kernel on the same rounded inputs
        const gy = b.input(randn(rng, rows * cols), dt);
        const gx = b.output(rows * cols, dt), gw = b.output(cols, wdt), gb = b.output(cols, wdt);
        native.layerNormBackward(x.p, w.p, mean, rstd, gy.p, gx, gw, gb, rows, cols, dt, wdt);
        const gx32 = b.output(rows * cols, "float32"), gw32 = b.output(cols, "float32"), gb32 = b.output(cols, "float32");
        native.layerNormBackward(f32Of(b, x.v), f32Of(b, w.v), mean, rstd, f32Of(b, gy.v), gx32, gw32, gb32, rows, cols, "float32", "float32");
        const out = { gx: b.read(gx, rows * cols, dt), gw: b.read(gw, cols, wdt), gb: b.read(gb, cols, wdt) };
        close(out.gx, b.read(gx32, rows * cols, "float32"), TOL[dt], `${what} gx`);
        close(out.gw, b.read(gw32, cols, "float32"), TOL[wdt], `${what} gw`);
        close(out.gb, b.read(gb32, cols, "float32"), TOL[wdt], `${what} gb`);
        return { y: got, ...out };
      });
      acrossSets(`rmsNorm w=${wdt}`, dt, (b, rng, what) => {
        const rows = 4, cols = 64, eps = 1e-6;
        const x = b.input(randn(rng, rows * cols), dt), w = b.input(randn(rng, cols).map((v) => 1 + 0.3 * v), wdt);
        const y = b.output(rows * cols, dt), rstd = b.output(rows, "float32");
        native.rmsNormForward(x.p, w.p, y, rstd, rows, cols, eps, dt, wdt);
        const ref = new Float64Array(rows * cols);
        for (let r = 0; r < rows; r++) {
          const row = x.v.subarray(r * cols, (r + 1) * cols);
          const rs = 1 / Math.sqrt(row.reduce((a, v) => a + v * v, 0) / cols + eps);
          for (let i = 0; i < cols; i++) ref[r * cols + i] = row[i]! * rs * w.v[i]!;
        }
        const got = b.read(y, rows * cols, dt);
        close(got, ref, TOL[dt], `${what} y`);
        const gy = b.input(randn(rng, rows * cols), dt), gx = b.output(rows * cols, dt), gw = b.output(cols, wdt);
        native.rmsNormBackward(x.p, w.p, rstd, gy.p, gx, gw, rows, cols, dt, wdt);
        const gx32 = b.output(rows * cols, "float32"), gw32 = b.output(cols, "float32");
        native.rmsNormBackward(f32Of(b, x.v), f32Of(b, w.v), rstd, f32Of(b, gy.v), gx32, gw32, rows, cols, "float32", "float32");
        const out = { gx: b.read(gx, rows * cols, dt), gw: b.read(gw, cols, wdt) };
        close(out.gx, b.read(gx32, rows * cols, "float32"), TOL[dt], `${what} gx`);
        close(out.gw, b.read(gw32, cols, "float32"), TOL[wdt], `${what} gw`);
        return { y: got, ...out };
      });
    }
  });

  test(`\`embedding\`, \`crossEntropy\` and \`adamw\` (${dt}) match float64`, () => {
    acrossSets("embedding", dt, (b, rng, what) => {
      const V = 20, dim = 24, n = 9;
      const w = b.input(randn(rng, V * dim), dt);
      const ids = Array.from({ length: n }, (_, i) => (i < 3 ? 7 : rng.int(0, V)));  // 7 repeats
      const idx = b.int32(ids), out = b.output(n * dim, dt);
      assert.equal(native.embeddingForward(w.p, idx, out, n, dim, V, dt), -1);
      const got = b.read(out, n * dim, dt);
      close(got, Float64Array.from({ length: n * dim }, (_, i) => w.v[ids[Math.floor(i / dim)]! * dim + (i % dim)]!), 0, `${what} forward`);
      assert.equal(native.embeddingForward(w.p, b.int32([0, V]), out, 2, dim, V, dt), 1, `${what}: out-of-range position`);
      const gout = b.input(randn(rng, n * dim), dt), gw = b.input(randn(rng, V * dim), dt);
      const ref = Float64Array.from(gw.v);
      for (let i = 0; i < n; i++) for (let j = 0; j < dim; j++) ref[ids[i]! * dim + j] += gout.v[i * dim + j]!;
      native.embeddingBackward(gout.p, idx, gw.p, n, dim, dt);
      const g = b.read(gw.p, V * dim, dt);
      close(g, ref, 2 * TOL[dt], `${what} backward`);  // each += rounds in 16 bits
      return { out: got, gw: g };
    });
    acrossSets("crossEntropy", dt, (b, rng, what) => {
      const rows = 6, V = 50, ignore = -100, smoothing = 0.1;
      const x = b.input(randn(rng, rows * V, 2), dt);
      const tg = Array.from({ length: rows }, (_, r) => (r === 2 ? ignore : rng.int(0, V)));
      const t = b.int32(tg), loss = b.output(rows, "float32"), lse = b.output(rows, "float32");
      assert.equal(native.crossEntropyForward(x.p, t, loss, lse, rows, V, ignore, smoothing, dt), -1);
      const lref = new Float64Array(rows), sref = new Float64Array(rows);
      for (let r = 0; r < rows; r++) {
        if (tg[r] === ignore) continue;
        const row = x.v.subarray(r * V, (r + 1) * V);
        const m = Math.max(...row);
        sref[r] = m + Math.log(row.reduce((a, v) => a + Math.exp(v - m), 0));
        const mean = row.reduce((a, v) => a + v, 0) / V;
        lref[r] = (1 - smoothing) * (sref[r]! - row[tg[r]!]!) + smoothing * (sref[r]! - mean);
      }
      const gl = b.read(loss, rows, "float32"), gs = b.read(lse, rows, "float32");
      close(gl, lref, 1e-4, `${what} loss`);
      close(gs, sref, 1e-5, `${what} lse`);
      const glog = b.output(rows * V, dt);
      native.crossEntropyBackward(x.p, t, lse, null, 0.25, glog, rows, V, ignore, smoothing, dt);
      const gref = new Float64Array(rows * V);
      for (let r = 0; r < rows; r++) {
        if (tg[r] === ignore) continue;
        for (let i = 0; i < V; i++) gref[r * V + i] = (Math.exp(x.v[r * V + i]! - sref[r]!) - smoothing / V - (i === tg[r] ? 1 - smoothing : 0)) * 0.25;
      }
      const g = b.read(glog, rows * V, dt);
      close(g, gref, TOL[dt], `${what} backward`);
      return { loss: gl, g };
    });
    for (const gdt of [dt, "float32"] as const) {
      acrossSets(`adamw g=${gdt}`, dt, (b, rng, what) => {
        const n = 500, lr = 1e-2, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.1, bc1 = 1 - b1 ** 3, bc2 = 1 - b2 ** 3, gs = 0.5;
        const p = b.input(randn(rng, n), dt), g = b.input(randn(rng, n), gdt);
        const m = b.input(randn(rng, n, 0.1), "float32"), v = b.input(randn(rng, n, 0.1).map((x) => x * x), "float32");
        native.adamw(p.p, g.p, m.p, v.p, n, lr, b1, b2, eps, wd, bc1, bc2, gs, dt, gdt);
        const pref = new Float64Array(n), mref = new Float64Array(n);
        for (let i = 0; i < n; i++) {
          const gi = g.v[i]! * gs, mi = b1 * m.v[i]! + (1 - b1) * gi, vi = b2 * v.v[i]! + (1 - b2) * gi * gi;
          mref[i] = mi;
          pref[i] = p.v[i]! * (1 - lr * wd) - (lr / bc1) * mi / (Math.sqrt(vi) / Math.sqrt(bc2) + eps);
        }
        const gp = b.read(p.p, n, dt), gm = b.read(m.p, n, "float32");
        close(gp, pref, TOL[dt], `${what} p`);
        close(gm, mref, 1e-5, `${what} m`);
        return { p: gp, m: gm };
      });
    }
  });

  test(`\`attentionForward\`/\`attentionBackward\` and \`pagedAttention\`/\`kvCacheWrite\` (${dt})`, () => {
    for (const causal of [true, false]) {
      acrossSets(`attention causal=${causal}`, dt, (b, rng, what) => {
        const BH = 3, T = 17, S = causal ? 17 : 23, D = 16, scale = 1 / Math.sqrt(D);
        const q = b.input(randn(rng, BH * T * D), dt), k = b.input(randn(rng, BH * S * D), dt), v = b.input(randn(rng, BH * S * D), dt);
        const o = b.output(BH * T * D, dt), lse = b.output(BH * T, "float32");
        native.attentionForward(q.p, k.p, v.p, o, lse, BH, T, S, D, scale, causal, dt);
        const ref = new Float64Array(BH * T * D);
        for (let h = 0; h < BH; h++)
          for (let t = 0; t < T; t++) {
            const s: number[] = [];
            for (let j = 0; j < S; j++) {
              if (causal && j > t) break;
              let d = 0;
              for (let c = 0; c < D; c++) d += q.v[(h * T + t) * D + c]! * k.v[(h * S + j) * D + c]!;
              s.push(d * scale);
            }
            const m = Math.max(...s), z = s.reduce((a, x) => a + Math.exp(x - m), 0);
            for (let c = 0; c < D; c++) {
              let acc = 0;
              for (let j = 0; j < s.length; j++) acc += Math.exp(s[j]! - m) / z * v.v[(h * S + j) * D + c]!;
              ref[(h * T + t) * D + c] = acc;
            }
          }
        const got = b.read(o, BH * T * D, dt);
        close(got, ref, TOL[dt], `${what} forward`);
        const go = b.input(randn(rng, BH * T * D), dt);
        const gq = b.output(BH * T * D, dt), gk = b.output(BH * S * D, dt), gv = b.output(BH * S * D, dt);
        native.attentionBackward(q.p, k.p, v.p, o, go.p, lse, gq, gk, gv, BH, T, S, D, scale, causal, dt);
        const g32 = [b.output(BH * T * D, "float32"), b.output(BH * S * D, "float32"), b.output(BH * S * D, "float32")] as const;
        native.attentionBackward(f32Of(b, q.v), f32Of(b, k.v), f32Of(b, v.v), f32Of(b, got), f32Of(b, go.v), lse, g32[0], g32[1], g32[2], BH, T, S, D, scale, causal, "float32");
        const out: Outputs = { o: got };
        for (const [name, p, p32, n] of [["gq", gq, g32[0], BH * T * D], ["gk", gk, g32[1], BH * S * D], ["gv", gv, g32[2], BH * S * D]] as const) {
          out[name] = b.read(p, n, dt);
          close(out[name]!, b.read(p32, n, "float32"), TOL[dt], `${what} ${name}`);
        }
        return out;
      });
    }
    for (const cdt of [dt, "float32"] as const) {
      acrossSets(`paged attention cache=${cdt}`, dt, (b, rng, what) => {
        const H = 2, D = 8, blockSize = 4, numBlocks = 6, maxBlocks = 3, rowN = H * D;
        const kc = b.output(numBlocks * blockSize * rowN, cdt), vc = b.output(numBlocks * blockSize * rowN, cdt);
        // two sequences of 7 and 5 tokens; blocks [4, 1] and [2, 5]
        const tables = [4, 1, 0, 2, 5, 0];
        const lens = [7, 5];
        const slots: number[] = [], seqOf: number[] = [], posOf: number[] = [];
        for (let s = 0; s < 2; s++)
          for (let p = 0; p < lens[s]!; p++) { slots.push(tables[s * maxBlocks + Math.floor(p / blockSize)]! * blockSize + (p % blockSize)); seqOf.push(s); posOf.push(p); }
        const n = slots.length;
        const kn = b.input(randn(rng, n * rowN), dt), vn = b.input(randn(rng, n * rowN), dt);
        native.kvCacheWrite(kc, vc, kn.p, vn.p, b.int32(slots), n, rowN, cdt, dt);
        const kcv = b.read(kc, numBlocks * blockSize * rowN, cdt);
        for (let t = 0; t < n; t++) for (let c = 0; c < rowN; c++) assert.equal(kcv[slots[t]! * rowN + c], kn.v[t * rowN + c], `${what}: cache row ${t}`);
        const q = b.input(randn(rng, n * rowN), dt), out = b.output(n * rowN, dt), scale = 0.35;
        native.pagedAttention(q.p, kc, vc, b.int32(tables), maxBlocks, blockSize, b.int32(seqOf), b.int32(posOf), out, n, H, D, scale, dt, cdt);
        const ref = new Float64Array(n * rowN);
        for (let t = 0; t < n; t++)
          for (let h = 0; h < H; h++) {
            const ts = Array.from({ length: posOf[t]! + 1 }, (_, j) => slots.findIndex((_s, u) => seqOf[u] === seqOf[t] && posOf[u] === j));
            const s = ts.map((u) => { let d = 0; for (let c = 0; c < D; c++) d += q.v[(t * H + h) * D + c]! * kn.v[(u * H + h) * D + c]!; return d * scale; });
            const m = Math.max(...s), z = s.reduce((a, x) => a + Math.exp(x - m), 0);
            for (let c = 0; c < D; c++) ref[(t * H + h) * D + c] = ts.reduce((a, u, j) => a + Math.exp(s[j]! - m) / z * vn.v[(u * H + h) * D + c]!, 0);
          }
        const got = b.read(out, n * rowN, dt);
        close(got, ref, TOL[dt], `${what} output`);
        return { out: got };
      });
    }
  });

  test(`\`quantInt8Rowwise\`/\`matmulInt8\`, \`random\` and \`dropout\` (${dt})`, () => {
    acrossSets("int8", dt, (b, rng, what) => {
      const M = 5, N = 12, K = 40;
      const w = b.input(randn(rng, N * K), dt), q = b.alloc(N * K, "int8"), sc = b.output(N, "float32");
      native.quantInt8Rowwise(w.p, q, sc, N, K, dt);
      const q32 = b.alloc(N * K, "int8"), sc32 = b.output(N, "float32");
      native.quantInt8Rowwise(f32Of(b, w.v), q32, sc32, N, K, "float32");
      assert.deepEqual(new Int8Array(native.read(q, N * K)), new Int8Array(native.read(q32, N * K)), `${what}: int8 weights`);
      const x = b.input(randn(rng, M * K), dt), bias = b.input(randn(rng, N), dt), y = b.output(M * N, dt), y32 = b.output(M * N, "float32");
      native.matmulInt8(x.p, q, sc, bias.p, y, M, N, K, dt);
      native.matmulInt8(f32Of(b, x.v), q32, sc32, f32Of(b, bias.v), y32, M, N, K, "float32");
      const got = b.read(y, M * N, dt);
      close(got, b.read(y32, M * N, "float32"), TOL[dt], `${what} matmul`);
      return { y: got };
    });
    acrossSets("random/dropout", dt, (b, rng, what) => {
      const n = 1000, seed = rng.int(1, 1 << 30);
      for (const kind of [0, 1]) {
        const o = b.output(n, dt), o32 = b.output(n, "float32");
        native.random(kind, seed, 12, o, n, -1, 2, dt);
        native.random(kind, seed, 12, o32, n, -1, 2, "float32");
        // the 16-bit draw is the float32 draw rounded once
        assert.deepEqual(b.read(o, n, dt), b.input(b.read(o32, n, "float32"), dt).v, `${what}: random kind ${kind}`);
      }
      const x = b.input(randn(rng, n), dt), y = b.output(n, dt), y32 = b.output(n, "float32");
      native.dropout(seed, 5, 0.25, x.p, y, n, dt);
      native.dropout(seed, 5, 0.25, f32Of(b, x.v), y32, n, "float32");
      const got = b.read(y, n, dt);
      assert.deepEqual(got, b.input(b.read(y32, n, "float32"), dt).v, `${what}: dropout`);
      return { y: got };
    });
  });

  test(`\`gemm\` (${dt}) matches float64 for every transpose, alpha/beta, batch strides and output dtype`, () => {
    for (const [ta, tb] of [[false, false], [true, false], [false, true], [true, true]] as const) {
      for (const odt of [dt, "float32"] as const) {
        acrossSets(`gemm ta=${ta} tb=${tb} -> ${odt}`, dt, (b, rng, what) => {
          const M = 19, N = 23, K = 37, batch = 3, alpha = 0.75, beta = 0.5;
          const lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 2, ldc = N + 1;
          const sa = (ta ? K : M) * lda, sb = 0 /* B shared across the batch */, sc = M * ldc + 5;
          const A = b.input(randn(rng, batch * sa), dt), B = b.input(randn(rng, (tb ? N : K) * ldb), dt);
          const C = b.input(randn(rng, batch * sc), odt);
          const ref = Float64Array.from(C.v);
          for (let bt = 0; bt < batch; bt++)
            for (let i = 0; i < M; i++)
              for (let j = 0; j < N; j++) {
                let acc = 0;
                for (let kk = 0; kk < K; kk++) {
                  const a = A.v[bt * sa + (ta ? kk * lda + i : i * lda + kk)]!;
                  const bv = B.v[bt * sb + (tb ? j * ldb + kk : kk * ldb + j)]!;
                  acc += a * bv;
                }
                ref[bt * sc + i * ldc + j] = alpha * acc + beta * C.v[bt * sc + i * ldc + j]!;
              }
          native.gemm(ta, tb, M, N, K, alpha, A.p, lda, sa, B.p, ldb, sb, beta, C.p, ldc, sc, batch, dt, odt);
          const got = b.read(C.p, batch * sc, odt);
          close(got, ref, odt === "float32" ? 1e-4 : TOL[dt], what);
          return { c: got };
        });
      }
    }
  });
}

test("16-bit kernels refuse dtypes the table does not list, naming kernel and dtype", () => {
  const b = new Bufs();
  try {
    const p = b.output(4, "float32");
    assert.throws(() => native.unary(0, p, p, 4, 0, 0, "int32"), /native unary: dtype int32 is not implemented \(implemented: float32, bfloat16, float16\)/);
    assert.throws(() => native.gemm(false, false, 1, 1, 1, 1, p, 1, 0, p, 1, 0, 0, p, 1, 0, 1, "bfloat16", "float16"), /native gemm: outDtype float16 is not implemented \(implemented: float32, bfloat16\)/);
  } finally {
    b.free();
  }
});
