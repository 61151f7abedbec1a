/**
 * Test helpers for the training loop: a tiny generated corpus with a small trained BPE
 * tokenizer (vocab 300), prepared once per process into a temp dir, and tiny configs.
 * Everything lives under os.tmpdir(); nothing is written into the repository.
 */
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { TestContext } from "node:test";
import { prepareData } from "../../src/data/prepare.js";
import { trainBpe } from "../../src/tokenizers/index.js";
import { validateConfig, type TrainConfig } from "../../src/train/config.js";

/** A temp dir removed when the test ends. */
export function tempDir(t: TestContext, prefix = "megalith-train-"): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Deterministic PRNG (mulberry32) for generated text. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const WORDS = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "to", "park", "and", "saw", "bird", "in", "tree", "big", "red", "ball", "with", "boy"];

/** Simple, learnable sentences: loss falls quickly on them. */
export function corpus(docs = 120, seed = 7): string[] {
  const r = rng(seed);
  const out: string[] = [];
  for (let d = 0; d < docs; d++) {
    const sentences: string[] = [];
    const n = 3 + Math.floor(r() * 4);
    for (let s = 0; s < n; s++) {
      const len = 4 + Math.floor(r() * 6);
      const w: string[] = [];
      for (let i = 0; i < len; i++) w.push(WORDS[Math.floor(r() * WORDS.length)]!);
      sentences.push(w.join(" ") + ".");
    }
    out.push(sentences.join(" "));
  }
  return out;
}

/** Model vocab for the tiny tokenizer (300 ids, padded). */
export const TINY_VOCAB = 320;

export interface TinyData {
  /** Prepared directory (data.source). */
  dir: string;
  /** tokenizer.json path. */
  tokenizer: string;
}

let cached: Promise<TinyData> | null = null;

/** A prepared dataset (train + val) with its tokenizer, made once per test process. */
export function tinyData(): Promise<TinyData> {
  cached ??= (async () => {
    const root = mkdtempSync(join(tmpdir(), "megalith-tinydata-"));
    process.on("exit", () => rmSync(root, { recursive: true, force: true }));
    const docs = corpus();
    const tok = await trainBpe({ texts: docs, vocabSize: 300, progress: false, name: "tiny" });
    const tokenizer = join(root, "tokenizer.json");
    tok.save(tokenizer);
    const dir = join(root, "prepared");
    await prepareData({ tokenizer: tok, tokenizerSpec: tokenizer, inputs: [{ name: "tiny", documents: docs }], outDir: dir, valFraction: 0.1, progress: false });
    return { dir, tokenizer };
  })();
  return cached;
}

/** Raw (unvalidated) tiny config; override sections with `patch`. */
export function tinyRawConfig(outDir: string, dataDir: string, patch: Record<string, Record<string, unknown>> = {}): Record<string, unknown> {
  const base: Record<string, Record<string, unknown>> = {
    model: { n_layer: 2, n_head: 2, n_embd: 32, block_size: 32, vocab_size: TINY_VOCAB, dropout: 0 },
    data: { source: dataDir },
    train: { max_steps: 10, micro_batch_size: 4, grad_accum_steps: 1, seed: 1337, log_interval: 1 },
    optimizer: { lr: 3e-3, warmup_steps: 2 },
    eval: { interval: 0, batches: 2 },
    checkpoint: { interval: 0, keep: 2 },
  };
  for (const [k, v] of Object.entries(patch)) base[k] = { ...base[k], ...v };
  return { out_dir: outDir, ...base };
}

/** Validated tiny config. */
export function tinyConfig(outDir: string, dataDir: string, patch: Record<string, Record<string, unknown>> = {}): TrainConfig {
  return validateConfig(tinyRawConfig(outDir, dataDir, patch));
}

/** The lines of metrics.jsonl. */
export function readMetrics(outDir: string): Array<Record<string, unknown>> {
  return readFileSync(join(outDir, "metrics.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l) as Record<string, unknown>);
}

/** Training-step lines (no eval lines, no skipped steps). */
export function trainLosses(outDir: string): Array<{ step: number; loss: number }> {
  return readMetrics(outDir)
    .filter((m) => m.split === undefined && m.skipped === undefined)
    .map((m) => ({ step: m.step as number, loss: m.loss as number }));
}
