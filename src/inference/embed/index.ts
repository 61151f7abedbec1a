/**
 * Text embeddings: one vector per input, the mean of the model's final hidden states over the
 * input's tokens (`POST /v1/embeddings` serves these).
 *
 * An `Embedder` is the model-specific part: how a text becomes ids, which special tokens the
 * model adds, and one input's forward pass down to its final hidden states. `embedTexts` is
 * the rest, shared by every model: input checks (empty, bad ids, too long, each naming the
 * input), pooling, optional L2 normalisation, and yielding to the event loop between inputs.
 *
 * - GPT (`gptEmbedder`): hidden states after the final LayerNorm `ln_f` (what the LM head reads;
 *   not the logits), averaged over every token of the input. Causal attention means token t
 *   has seen only tokens <= t, so the mean weighs early tokens' context less than a
 *   bidirectional encoder's would; that is what a decoder's mean pooling is.
 * - BERT (`bertEmbedder`): `[CLS] ids [SEP]`, bidirectional attention over the real tokens,
 *   mean over all of them, [CLS] and [SEP] included: sentence-transformers' mean pooling
 *   averages every position whose attention mask is 1, and its tokenizer sets the mask to 1 on
 *   [CLS] and [SEP].
 *
 * Every input runs alone, as a (1, T) batch with no padding. Batching several inputs into one
 * GEMM would be faster, but a GEMM's result rows may depend on its M (a BLAS picks blockings
 * and thread splits from the shapes), so a vector could change with what it was batched with.
 * Alone, a vector depends on its own ids only: identical inputs give bit-identical vectors in
 * any request and any batch composition. Between inputs `embedTexts` yields to the event loop
 * (setImmediate), so the serving engine's step loop and other requests run in between; the
 * longest the loop is held is one input's forward, about one prefill of that many tokens.
 */
import { ValueError } from "../../core/errors.js";
import { tensor, withScope, type Tensor } from "../../tensor/index.js";
import { noGrad } from "../../autograd/index.js";
import { MoE } from "../../nn/index.js";
import type { GPT } from "../../models/index.js";
import type { Tokenizer } from "../../tokenizers/index.js";

/** The model-specific half of embedding: tokenization and one input's pooled hidden state. */
export interface Embedder {
  /** The model family, for messages ("gpt": a decoder; "bert": an encoder). */
  readonly kind: "gpt" | "bert";
  /** Width of every vector (the model's hidden size). */
  readonly dim: number;
  /** Most tokens the model sees for one input, the special tokens `embed` adds included. */
  readonly maxTokens: number;
  /** Token-id inputs must be integers in [0, vocabSize). */
  readonly vocabSize: number;
  /** Token ids of a text, without special tokens (`embed` adds the model's own). */
  encode(text: string): number[];
  /** Tokens the model sees for an input of these ids (GPT: the ids; BERT: + [CLS] and [SEP]). */
  tokenCount(ids: readonly number[]): number;
  /** One input's final hidden states averaged over its tokens: (dim) float32, not normalised. */
  embed(ids: readonly number[]): Float32Array;
}

/** Options of `embedTexts`. */
export interface EmbedOptions {
  /**
   * Scale each vector to unit L2 length. Default true: OpenAI's embeddings are unit length and
   * clients compare them with dot products (vLLM normalises too); sentence-transformers leaves it
   * to the model's config. A zero vector stays zero.
   */
  normalize?: boolean;
  /** Stops between inputs when aborted (the client left); throws the signal's reason. */
  signal?: AbortSignal;
}

/** What `embedTexts` returns. */
export interface EmbedResult {
  /** One vector per input, in input order. */
  vectors: Float32Array[];
  /** Tokens the model saw over all inputs, special tokens included (OpenAI's usage.prompt_tokens). */
  promptTokens: number;
}

/** Why an input was refused; `index` is its position in the request's list. */
export type EmbeddingInputProblem = "empty" | "invalid_token_id" | "context_length_exceeded";

/** An input `embedTexts` cannot embed: the message names it (`input[3]`) and says what to do. */
export class EmbeddingInputError extends ValueError {
  constructor(message: string, readonly index: number, readonly problem: EmbeddingInputProblem) {
    super(message);
    this.name = "EmbeddingInputError";
  }
}

/**
 * Embeds each input (a text, or token ids as the tokenizer would give them) with `embedder`,
 * one input at a time, yielding to the event loop between inputs. Every input is checked
 * before any is run, so a bad last input costs no model time.
 * @example
 * const e = gptEmbedder(model, loadTokenizer("gpt2"));
 * const { vectors, promptTokens } = await embedTexts(e, ["The jury said", [464, 2068]]);
 * vectors[0].length === model.config.nEmbd;       // unit length by default
 */
export async function embedTexts(embedder: Embedder, inputs: ReadonlyArray<string | readonly number[]>, opts: EmbedOptions = {}): Promise<EmbedResult> {
  const ids = inputs.map((x) => (typeof x === "string" ? embedder.encode(x) : x));
  let promptTokens = 0;
  ids.forEach((t, i) => { promptTokens += _checkInput(embedder, t, i, typeof inputs[i] === "string"); });
  const vectors: Float32Array[] = [];
  for (const t of ids) {
    if (vectors.length > 0) await new Promise((r) => setImmediate(r));
    opts.signal?.throwIfAborted();
    const v = embedder.embed(t);
    vectors.push(opts.normalize === false ? v : l2Normalize(v));
  }
  return { vectors, promptTokens };
}

/** Throws EmbeddingInputError unless input `i` can be embedded; returns its token count. */
function _checkInput(embedder: Embedder, ids: readonly number[], i: number, wasText: boolean): number {
  if (ids.length === 0) {
    throw new EmbeddingInputError(`input[${i}] ${wasText ? "has no tokens (an empty or blank text)" : "is an empty list of token ids"}; every input needs at least one token`, i, "empty");
  }
  if (!wasText) {
    const bad = ids.findIndex((id) => !Number.isInteger(id) || id < 0 || id >= embedder.vocabSize);
    if (bad >= 0) {
      throw new EmbeddingInputError(`input[${i}][${bad}] is ${ids[bad]}, not a token id of this model: ids must be integers from 0 to ${embedder.vocabSize - 1}`, i, "invalid_token_id");
    }
  }
  const n = embedder.tokenCount(ids);
  if (n > embedder.maxTokens) {
    const specials = n - ids.length;
    throw new EmbeddingInputError(
      `input[${i}] has ${n} tokens${specials ? ` (${ids.length} + ${specials} special)` : ""}, but the model's maximum context length is ${embedder.maxTokens} tokens; shorten it`,
      i, "context_length_exceeded");
  }
  return n;
}

/**
 * `v` scaled to unit L2 length (summed in float64), as a new array; a zero vector stays zero.
 * @example
 * l2Normalize(Float32Array.of(3, 4));   // Float32Array [0.6, 0.8]
 */
export function l2Normalize(v: Float32Array): Float32Array {
  let ss = 0;
  for (let j = 0; j < v.length; j++) ss += v[j]! * v[j]!;
  const out = new Float32Array(v.length);
  if (ss === 0) return out;
  const inv = 1 / Math.sqrt(ss);
  for (let j = 0; j < v.length; j++) out[j] = v[j]! * inv;
  return out;
}

/**
 * Mean of the rows of a row-major (T, C) matrix, summed in float64 in row order (so the result
 * is the same whatever else ran); rows where `mask` is 0 are left out.
 * @example
 * meanPool(Float32Array.of(1, 2, 3, 4), 2, 2);   // Float32Array [2, 3]
 */
export function meanPool(rows: Float32Array, T: number, C: number, mask?: ArrayLike<number>): Float32Array {
  if (rows.length !== T * C) throw new ValueError(`meanPool: ${rows.length} values is not T x C = ${T} x ${C}`);
  const acc = new Float64Array(C);
  let n = 0;
  for (let t = 0; t < T; t++) {
    if (mask && !mask[t]) continue;
    n++;
    for (let c = 0, o = t * C; c < C; c++) acc[c] += rows[o + c]!;
  }
  const out = new Float32Array(C);
  if (n > 0) for (let c = 0; c < C; c++) out[c] = acc[c]! / n;
  return out;
}

/** Options of `gptEmbedder`. */
export interface GPTEmbedderOptions {
  /** Most tokens per input. Default and maximum: the model's block size (its learned positions). */
  maxTokens?: number;
}

/**
 * Embeddings from a GPT: the final hidden states after `ln_f`, mean-pooled over the input's
 * tokens (no special tokens are added). Puts the model in eval mode (no dropout), as serving does.
 * Whatever modules the model holds run (bfloat16 weights, int8 projections); the hidden states
 * are read as float32.
 * @example
 * const e = gptEmbedder(model, loadTokenizer("gpt2"));
 * const v = e.embed(e.encode("Hello world"));   // (nEmbd) mean of ln_f(h)
 */
export function gptEmbedder(model: GPT, tokenizer: Tokenizer, opts: GPTEmbedderOptions = {}): Embedder {
  const c = model.config;
  const maxTokens = opts.maxTokens ?? c.blockSize;
  if (!Number.isInteger(maxTokens) || maxTokens < 1 || maxTokens > c.blockSize) {
    throw new ValueError(`gptEmbedder: maxTokens must be an integer in [1, ${c.blockSize}] (the model's block size), got ${maxTokens}`);
  }
  model.eval();
  return {
    kind: "gpt",
    dim: c.nEmbd,
    maxTokens,
    // Ids past the tokenizer's vocabulary (a padded embedding table) have no text: not tokens.
    vocabSize: Math.min(tokenizer.vocabSize, c.vocabSize),
    encode: (text) => tokenizer.encode(text),
    tokenCount: (ids) => ids.length,
    embed(ids) {
      const T = ids.length;
      const rows = noGrad(() => withScope(() => {
        const idx = tensor(Int32Array.from(ids), { shape: [1, T], dtype: "int32" }); // (1, T)
        const x = model.runBlocks(model.embed(idx));                                   // (1, T, C)
        _dropRouterLosses(model);
        return model.ln_f.forward(x).data() as Float32Array;                           // (1, T, C) -> T*C floats
      }));
      return meanPool(rows, T, c.nEmbd);
    },
  };
}

/**
 * The router losses the MoE blocks keep for the training loss, which embedding never uses:
 * disposed now (model.forward would take them in the head; this path stops before it).
 */
function _dropRouterLosses(model: GPT): void {
  for (const b of model.h) {
    if (!(b.mlp instanceof MoE)) continue;
    const l = b.mlp.takeLosses();
    l?.aux.dispose();
    l?.z.dispose();
  }
}

/**
 * What `bertEmbedder` needs of a BERT model: its sizes and `encode` down to the last hidden
 * state. `BertForPreTraining` (models/bert) is one; so is any encoder with the same contract.
 */
export interface BERTEncoderModel {
  readonly config: { readonly nEmbd: number; readonly maxPositions: number; readonly vocabSize: number };
  /** inputIds (B, T) int32 -> last hidden state (B, T, C); no mask = every position is a token. */
  encode(inputIds: Tensor, opts?: { attentionMask?: Tensor | null }): Tensor;
  eval(): unknown;
}

/** Options of `bertEmbedder`. */
export interface BERTEmbedderOptions {
  /** Most tokens per input, [CLS] and [SEP] included. Default and maximum: the model's max_position_embeddings. */
  maxTokens?: number;
}

/**
 * Embeddings from a BERT encoder, as sentence-transformers' mean pooling computes them:
 * `[CLS] ids [SEP]` through the encoder (segment 0, every position attended: one input, no
 * padding), then the mean of the last hidden state over all of those tokens, [CLS] and [SEP]
 * included. Token-id inputs are the ids without specials, as `encode` gives them; [CLS] and
 * [SEP] are added to them too. The tokenizer must have "[CLS]" and "[SEP]" entries (WordPiece).
 * Puts the model in eval mode (no dropout).
 * @example
 * const e = bertEmbedder(await loadBERT(dir), loadTokenizer(dir));
 * const v = e.embed(e.encode("a sentence"));   // (hidden_size) mean over [CLS] a sentence [SEP]
 */
export function bertEmbedder(model: BERTEncoderModel, tokenizer: Tokenizer, opts: BERTEmbedderOptions = {}): Embedder {
  const c = model.config;
  const special = (t: string) => {
    const id = tokenizer.tokenToId(t);
    if (id === undefined) throw new ValueError(`bertEmbedder: the tokenizer ${tokenizer.name} has no ${t} token; a BERT model needs its WordPiece vocabulary (tokenizer.json or vocab.txt in the model directory)`);
    return id;
  };
  const cls = special("[CLS]"), sep = special("[SEP]");
  const maxTokens = opts.maxTokens ?? c.maxPositions;
  if (!Number.isInteger(maxTokens) || maxTokens < 3 || maxTokens > c.maxPositions) {
    throw new ValueError(`bertEmbedder: maxTokens must be an integer in [3, ${c.maxPositions}] (the model's max_position_embeddings; [CLS] and [SEP] take two), got ${maxTokens}`);
  }
  model.eval();
  return {
    kind: "bert",
    dim: c.nEmbd,
    maxTokens,
    vocabSize: Math.min(tokenizer.vocabSize, c.vocabSize),
    encode: (text) => tokenizer.encode(text),
    tokenCount: (ids) => ids.length + 2,
    embed(ids) {
      const T = ids.length + 2;
      const rows = noGrad(() => withScope(() => {
        const idx = tensor(Int32Array.from([cls, ...ids, sep]), { shape: [1, T], dtype: "int32" }); // (1, T)
        return model.encode(idx).data() as Float32Array;                                          // (1, T, C) -> T*C floats
      }));
      return meanPool(rows, T, c.nEmbd);
    },
  };
}
