/**
 * The Brown corpus as a ready-to-train dataset: the demo and the tests need no download.
 *
 * `ensurePreparedBrown(cacheDir, "gpt2")` tokenizes the 500 documents (~1.2M words) into
 * `<cacheDir>/brown-<tokenizer name>/` the first time, and afterwards reuses that directory as long
 * as its meta.json says it was made with the same tokenizer (by fingerprint) and settings.
 */

import { existsSync } from "node:fs";
import { join } from "node:path";
import { MegalithError } from "../core/errors.js";
import { loadTokenizer } from "../tokenizers/index.js";
import { brownCorpusDocuments } from "./brown.js";
import { readMeta, type PreparedMeta } from "./meta.js";
import { prepareData, tokenizerFingerprint, type DataTokenizer, type DocumentSource } from "./prepare.js";
import { readShardHeader } from "./shards.js";

/**
 * Val fraction used for Brown: 10 of the 500 documents (one in 50, spread over all genres),
 * about 2% of the tokens: enough windows for a stable validation loss at demo block sizes.
 */
export const BROWN_VAL_FRACTION = 0.02;

/** Options for prepareBrown / ensurePreparedBrown. */
export interface BrownPrepareOptions {
  /** Default BROWN_VAL_FRACTION (0.02). */
  valFraction?: number;
  /** Default 100,000,000 (the whole corpus fits one shard per split). */
  shardTokens?: number;
  /** Progress line on stderr. Default true. */
  progress?: boolean;
  /** Recorded in meta.json (prepareBrown only; ensurePreparedBrown records the spec it was given). Default tokenizer.name. */
  tokenizerSpec?: string;
}

/**
 * The Brown corpus as a prepareData input: one document per corpus file.
 * @example await prepareData({ tokenizer, inputs: [brownSource(), "extra.txt"], outDir });
 */
export function brownSource(): DocumentSource {
  const documents = brownCorpusDocuments();
  return { name: "brown", documents, bytes: documents.reduce((s, d) => s + Buffer.byteLength(d, "utf8"), 0) };
}

/**
 * Prepares the Brown corpus into `outDir` (replacing it if it exists).
 * @example const meta = await prepareBrown("data/brown", loadTokenizer("gpt2"));
 */
export async function prepareBrown(outDir: string, tokenizer: DataTokenizer, opts: BrownPrepareOptions = {}): Promise<PreparedMeta> {
  return prepareData({
    tokenizer,
    tokenizerSpec: opts.tokenizerSpec,
    inputs: [brownSource()],
    outDir,
    valFraction: opts.valFraction ?? BROWN_VAL_FRACTION,
    shardTokens: opts.shardTokens,
    progress: opts.progress,
    overwrite: true,
  });
}

/** A directory name for a tokenizer name: letters, digits, '.', '_' and '-' only. */
function slug(name: string): string {
  return name.replace(/[^\w.-]+/g, "_").slice(0, 64) || "tokenizer";
}

/** The cached preparation at `dir` if it is complete and made with these settings, else undefined. */
function reusable(dir: string, tokenizer: DataTokenizer, valFraction: number, shardTokens: number | undefined): PreparedMeta | undefined {
  let meta: PreparedMeta;
  try {
    meta = readMeta(dir);
    for (const split of ["train", "val"] as const) {
      for (const s of meta.splits[split].shards) if (readShardHeader(join(dir, s.file)).tokenCount !== s.tokens) return undefined;
    }
  } catch (err) {
    if (err instanceof MegalithError || (err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw err;
  }
  const t = meta.tokenizer;
  const same =
    t.fingerprint === tokenizerFingerprint(tokenizer) &&
    t.vocabSize === tokenizer.vocabSize &&
    t.eotToken === tokenizer.eotToken &&
    meta.valFraction === valFraction &&
    (shardTokens === undefined || meta.shardTokens === shardTokens) &&
    meta.sources.length === 1 &&
    meta.sources[0].path === "brown";
  return same ? meta : undefined;
}

/**
 * Returns a prepared Brown directory under `cacheDir` for this tokenizer, preparing it on first
 * use and reusing it afterwards (a cache made with another tokenizer or settings is rebuilt).
 * Safe to call from several processes at once (e.g. every data-parallel rank): each prepares into
 * its own temporary directory and the first complete one wins; to avoid the duplicated work,
 * call it on rank 0 and then barrier.
 * @example
 * const { dir } = await ensurePreparedBrown(".megalith/cache", "gpt2");
 * const loader = new TokenLoader({ dir, blockSize: 256, microBatchSize: 8 });
 */
export async function ensurePreparedBrown(
  cacheDir: string,
  tokenizer: "gpt2" | string | DataTokenizer,
  opts: BrownPrepareOptions = {},
): Promise<{ dir: string; meta: PreparedMeta; reused: boolean }> {
  const spec = typeof tokenizer === "string" ? tokenizer : undefined;
  const tok = typeof tokenizer === "string" ? loadTokenizer(tokenizer) : tokenizer;
  const valFraction = opts.valFraction ?? BROWN_VAL_FRACTION;
  const dir = join(cacheDir, `brown-${slug(tok.name)}`);
  const cached = reusable(dir, tok, valFraction, opts.shardTokens);
  if (cached) return { dir, meta: cached, reused: true };
  try {
    const meta = await prepareData({
      tokenizer: tok,
      tokenizerSpec: spec,
      inputs: [brownSource()],
      outDir: dir,
      valFraction,
      shardTokens: opts.shardTokens,
      progress: opts.progress,
      // Replace only a cache that was stale when we looked; if another process installs a
      // fresh one meanwhile, our install fails and the catch below picks theirs up.
      overwrite: existsSync(dir),
    });
    return { dir, meta, reused: false };
  } catch (err) {
    // Another process may have installed the same preparation while we worked.
    const other = reusable(dir, tok, valFraction, opts.shardTokens);
    if (other) return { dir, meta: other, reused: true };
    throw err;
  }
}
