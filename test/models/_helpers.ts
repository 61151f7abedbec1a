/** Tiny GPTs for model tests: small vocab, sharpened logits so greedy choices have clear margins. */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { TestContext } from "node:test";
import { GPT, type GPTConfig } from "../../src/models/index.js";
import { noGrad } from "../../src/autograd/index.js";
import { tensor, withScope } from "../../src/tensor/index.js";

export const TINY: GPTConfig = { nLayer: 2, nHead: 2, nEmbd: 32, blockSize: 32, vocabSize: 64 };

/**
 * A tiny GPT in eval mode. GPT-2 init at this size makes near-uniform logits and greedy decoding
 * that repeats one token, so the token embedding (x10) and the blocks' projection weights (x20)
 * are scaled up: logits spread out and greedy text varies from step to step.
 */
export function tinyGPT(config: Partial<GPTConfig> = {}, seed = 3): GPT {
  const m = new GPT({ ...TINY, ...config }, { seed });
  noGrad(() => {
    for (const [name, p] of m.namedParameters()) {
      const f = name === "wte.weight" ? 10 : /^h\.\d+\.(attn|mlp)\.\w+\.weight$/.test(name) ? 20 : 1;
      if (f === 1) continue;
      const w = p.mul(f);
      p.copy_(w);
      w.dispose();
    }
  });
  m.eval();
  return m;
}

/** Deterministic token ids in [0, vocab). */
export function ids(n: number, vocab = TINY.vocabSize, seed = 1): number[] {
  const out: number[] = [];
  let s = seed;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    out.push((s >>> 8) % vocab);
  }
  return out;
}

/** Logits (V) at the last position of a full, cache-free forward over `seq`. */
export function lastLogits(model: GPT, seq: readonly number[]): Float32Array {
  return noGrad(() => withScope(() => {
    const x = tensor(Int32Array.from(seq), { shape: [1, seq.length], dtype: "int32" });
    const logits = model.forward(x).logits;
    return Float32Array.from(logits.select(1, seq.length - 1).data() as Float32Array);
  }));
}

export function argmax(a: ArrayLike<number>): number {
  let b = 0;
  for (let i = 1; i < a.length; i++) if (a[i]! > a[b]!) b = i;
  return b;
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} != ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

export function tempDir(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), "megalith-models-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}
