/**
 * BERT for pre-training (masked language modelling + next-sentence prediction), in one file,
 * top-down in dependency order like models/gpt/model.ts.
 *
 * Shape legend: B batch, T sequence length, C hidden width (hidden_size), H heads, D head width
 * (C / H), I intermediate width, V vocabulary size, M the labelled (masked) positions of a batch.
 *
 * The module tree spells Hugging Face's BertForPreTraining names directly
 * (`bert.encoder.layer.0.attention.self.query.weight`, `cls.predictions.transform.dense.bias`...),
 * every Linear in nn.Linear's [out, in] layout as HF's, so a state dict maps one-to-one onto HF
 * checkpoints. The MLM decoder is tied to the word embeddings and holds only its own bias
 * (`cls.predictions.bias`), as HF's tied `cls.predictions.decoder.{weight,bias}` do.
 *
 * Differences from GPT: post-LayerNorm blocks (LN(x + sublayer(x))), exact (erf) GELU,
 * bidirectional attention with a key padding mask, token-type embeddings, and two heads.
 * The model knows nothing about parallelism or precision.
 */
import { ValueError, fmtShape } from "../../core/errors.js";
import {
  Tensor, F, Module, Linear, Embedding, LayerNorm, Dropout, zeros, tensor, noGrad, checkpoint, withRandomStream, type Parameter, type Projection,
} from "./_deps.js";

/** Architecture hyper-parameters (HF config.json names in comments). */
export interface BERTConfig {
  /** Transformer layers (num_hidden_layers). */
  nLayer: number;
  /** Attention heads (num_attention_heads). */
  nHead: number;
  /** Hidden width (hidden_size). */
  nEmbd: number;
  /** MLP width (intermediate_size). Default 4 * nEmbd. */
  intermediateSize?: number;
  /** Learned positions (max_position_embeddings). */
  maxPositions: number;
  /** Vocabulary size (vocab_size). */
  vocabSize: number;
  /** Token types, i.e. segments (type_vocab_size). Default 2. */
  typeVocabSize?: number;
  /**
   * Dropout on the embeddings and on each sublayer's output (hidden_dropout_prob). Default 0,
   * like GPTConfig, not HF's 0.1: a run asks for dropout explicitly.
   */
  dropout?: number;
  /** Dropout on the attention probabilities (attention_probs_dropout_prob). Default: `dropout`. */
  attentionDropout?: number;
  /** LayerNorm epsilon (layer_norm_eps). Default 1e-12, HF's. */
  layerNormEpsilon?: number;
  /** Padding token id (pad_token_id): its word-embedding row starts at zero. null: none. Default 0. */
  padTokenId?: number | null;
  /** Std of the normal initialisation of Linear and Embedding weights (initializer_range). Default 0.02. */
  initializerRange?: number;
}

/** A config with every default filled in. */
export type ResolvedBERTConfig = Required<BERTConfig>;

/** What is recomputed in backward instead of stored: "full" (or true) a whole layer, "selective" the attention core. */
export type BERTActivationCheckpointing = boolean | "full" | "selective";

export interface BERTOptions {
  /** Seed for parameter initialisation; each parameter draws from its own stream. Default 1337. */
  seed?: number;
  /** Activation recomputation in training (see BERTActivationCheckpointing). Default false. */
  activationCheckpointing?: BERTActivationCheckpointing;
}

/**
 * Validates a config and fills defaults; errors name the bad field and value.
 * @example
 * const cfg = resolveBERTConfig({ nLayer: 2, nHead: 4, nEmbd: 32, maxPositions: 64, vocabSize: 101 });
 * cfg.intermediateSize;  // 128
 */
export function resolveBERTConfig(c: BERTConfig): ResolvedBERTConfig {
  const bad = (k: string, want: string, v: unknown) => new ValueError(`BERT config: ${k} must be ${want}, got ${JSON.stringify(v)}`);
  const int = (k: keyof BERTConfig, v: unknown, min = 1) => {
    if (typeof v !== "number" || !Number.isInteger(v) || v < min) throw bad(k, `an integer >= ${min}`, v);
  };
  int("nLayer", c.nLayer);
  int("nHead", c.nHead);
  int("nEmbd", c.nEmbd);
  int("maxPositions", c.maxPositions);
  int("vocabSize", c.vocabSize);
  if (c.nEmbd % c.nHead !== 0) throw new ValueError(`BERT config: nEmbd (${c.nEmbd}) must be divisible by nHead (${c.nHead})`);
  const r: ResolvedBERTConfig = {
    ...c,
    intermediateSize: c.intermediateSize ?? 4 * c.nEmbd,
    typeVocabSize: c.typeVocabSize ?? 2,
    dropout: c.dropout ?? 0,
    attentionDropout: c.attentionDropout ?? c.dropout ?? 0,
    layerNormEpsilon: c.layerNormEpsilon ?? 1e-12,
    padTokenId: c.padTokenId === undefined ? 0 : c.padTokenId,
    initializerRange: c.initializerRange ?? 0.02,
  };
  int("intermediateSize", r.intermediateSize);
  int("typeVocabSize", r.typeVocabSize);
  for (const k of ["dropout", "attentionDropout"] as const) if (!(typeof r[k] === "number" && r[k] >= 0 && r[k] < 1)) throw bad(k, "a number in [0, 1)", r[k]);
  if (!(typeof r.layerNormEpsilon === "number" && r.layerNormEpsilon > 0)) throw bad("layerNormEpsilon", "a number > 0", r.layerNormEpsilon);
  if (!(typeof r.initializerRange === "number" && r.initializerRange > 0)) throw bad("initializerRange", "a number > 0", r.initializerRange);
  const pad = r.padTokenId;
  if (pad !== null && !(Number.isInteger(pad) && pad >= 0 && pad < r.vocabSize)) throw bad("padTokenId", `null or an integer in [0, ${r.vocabSize})`, pad);
  return r;
}

/**
 * A stable per-parameter seed (the same hash as GPT's): initialisation never depends on creation
 * order or parallel layout.
 */
function _paramSeed(base: number, name: string): number {
  let h = 2166136261 ^ base;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 16777619);
  return (h >>> 0) + base * 2 ** 20;
}

/**
 * Where a layer's parameters draw their initial values: the seed, and the dotted HF name of the
 * module being built, so each Linear and Embedding weight is drawn N(0, initializerRange) from
 * its own stream at construction (HF's _init_weights; biases 0, LayerNorms 1 and 0).
 */
interface _Init {
  seed: number;
  std: number;
}

function _linear(inF: number, outF: number, init: _Init, name: string): Linear {
  return new Linear(inF, outF, { seed: _paramSeed(init.seed, `${name}.weight`), std: init.std });
}

/** Frees the handles a forward no longer needs (what backward needs, the ops have saved). */
function _free(...ts: Array<Tensor | null>): void {
  for (const t of ts) t?.dispose();
}

// ---- embeddings -------------------------------------------------------------------------------

/** word + position + token-type embeddings, then LayerNorm and dropout (HF BertEmbeddings). */
export class BertEmbeddings extends Module {
  readonly word_embeddings: Embedding;
  readonly position_embeddings: Embedding;
  readonly token_type_embeddings: Embedding;
  readonly LayerNorm: LayerNorm;
  readonly dropout: Dropout;
  constructor(readonly cfg: ResolvedBERTConfig, init: _Init, prefix: string) {
    super();
    const emb = (name: string, rows: number) =>
      this.module(name, new Embedding(rows, cfg.nEmbd, { seed: _paramSeed(init.seed, `${prefix}.${name}.weight`), std: init.std }));
    this.word_embeddings = emb("word_embeddings", cfg.vocabSize);
    this.position_embeddings = emb("position_embeddings", cfg.maxPositions);
    this.token_type_embeddings = emb("token_type_embeddings", cfg.typeVocabSize);
    this.LayerNorm = this.module("LayerNorm", new LayerNorm(cfg.nEmbd, cfg.layerNormEpsilon));
    this.dropout = this.module("dropout", new Dropout(cfg.dropout));
    // HF zeroes the padding row (nn.Embedding's padding_idx) at init; unlike padding_idx, the row
    // still trains here, as it does in HF once the MLM decoder (tied to this table) touches it.
    const pad = cfg.padTokenId;
    if (pad !== null) noGrad(() => { const row = this.word_embeddings.weight.select(0, pad); row.zero_(); row.dispose(); });
  }

  /** inputIds, tokenTypeIds: (B, T) int32 -> (B, T, C). */
  forward(inputIds: Tensor, tokenTypeIds: Tensor): Tensor {
    const T = inputIds.shape[1]!;
    const posData = new Int32Array(T);
    for (let i = 0; i < T; i++) posData[i] = i;
    const pos = tensor(posData, { shape: [T], dtype: "int32" });               // (T)
    const w = this.word_embeddings.forward(inputIds);                          // (B, T, C)
    const tt = this.token_type_embeddings.forward(tokenTypeIds);               // (B, T, C)
    const p = this.position_embeddings.forward(pos);                           // (T, C)
    const wt = w.add(tt);
    const e = wt.add(p);                                                       // (B, T, C)
    _free(pos, w, tt, p, wt);
    const x = this.LayerNorm.forward(e);                                       // (B, T, C)
    e.dispose();
    if (this.cfg.dropout === 0) return x;
    const y = this.dropout.forward(x);
    x.dispose();
    return y;
  }
}

// ---- encoder layer ----------------------------------------------------------------------------

/**
 * Bidirectional multi-head self-attention (HF BertSelfAttention) with separate q, k, v
 * projections. `mask` is additive, (B, 1, 1, T) in the activations' dtype: 0 for tokens, the
 * dtype's lowest value for padding, as HF's extended attention mask.
 */
export class BertSelfAttention extends Module {
  readonly query: Projection;
  readonly key: Projection;
  readonly value: Projection;
  readonly dropout: Dropout;
  constructor(readonly cfg: ResolvedBERTConfig, init: _Init, prefix: string) {
    super();
    const C = cfg.nEmbd;
    this.query = this.module("query", _linear(C, C, init, `${prefix}.query`));
    this.key = this.module("key", _linear(C, C, init, `${prefix}.key`));
    this.value = this.module("value", _linear(C, C, init, `${prefix}.value`));
    this.dropout = this.module("dropout", new Dropout(cfg.attentionDropout));
  }

  forward(x: Tensor, mask: Tensor | null, recomputeCore = false): Tensor {
    const [B, T] = x.shape as [number, number, number];
    // The width W comes from the projections' output, not the config: a module swap may hand
    // this layer a slice of the heads (a tensor-parallel shard holds nHead / tp whole heads).
    const D = this.cfg.nEmbd / this.cfg.nHead;
    const heads = (lin: Projection) => {
      const y = lin.forward(x);                                               // (B, T, W), W = H D
      const H = y.shape[2]! / D;
      const v = y.view([B, T, H, D]);
      const h = v.transpose(1, 2);                                            // (B, H, T, D)
      _free(y, v);
      return h;
    };
    const q = heads(this.query), k = heads(this.key), v = heads(this.value);
    const W = q.shape[1]! * D;
    const core = (qh: Tensor, kh: Tensor, vh: Tensor, m: Tensor | null = null) => {
      const y = this.attend(qh, kh, vh, m);                                   // (B, H, T, D)
      const yt = y.transpose(1, 2);
      const out = yt.reshape([B, T, W]);                                      // (B, T, W)
      _free(y, yt);
      return out;
    };
    // Selective recomputation keeps only q, k, v and replays the core (scores, softmax, the
    // (B, H, T, T) probabilities) in backward: the largest activations of a layer at long T.
    // The mask goes in as an input, so the node holds it until the replay.
    const out = !recomputeCore ? core(q, k, v, mask)
      : mask ? checkpoint(core, q, k, v, mask) : checkpoint((a: Tensor, b: Tensor, c: Tensor) => core(a, b, c), q, k, v);
    _free(q, k, v);
    return out;
  }

  /** softmax(q k^T / sqrt(D) + mask) v, with dropout on the probabilities in training. */
  private attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | null): Tensor {
    const drop = this.training && this.cfg.attentionDropout > 0;
    // Without a mask or dropout, the fused kernel (no T x T tensor kept for backward).
    if (!mask && !drop) return F.scaledDotProductAttention(q, k, v);          // (B, H, T, D)
    const kt = k.transpose(-1, -2);                                          // (B, H, D, T)
    const raw = q.matmul(kt);                                                // (B, H, T, T)
    const scaled = raw.mul(1 / Math.sqrt(q.shape[3]!));
    const scores = mask ? scaled.add(mask) : scaled;                         // (B, H, T, T)
    const probs = F.softmax(scores, -1);
    _free(kt, raw, scaled === scores ? null : scaled, scores);
    const p = drop ? this.dropout.forward(probs) : probs;
    if (p !== probs) probs.dispose();
    const y = p.matmul(v);                                                   // (B, H, T, D)
    p.dispose();
    return y;
  }
}

/** LayerNorm(dropout(dense(h)) + residual): the post-LN sublayer output (HF BertSelfOutput / BertOutput). */
export class BertResidualOutput extends Module {
  readonly dense: Projection;
  readonly LayerNorm: LayerNorm;
  readonly dropout: Dropout;
  constructor(readonly cfg: ResolvedBERTConfig, inFeatures: number, init: _Init, prefix: string) {
    super();
    this.dense = this.module("dense", _linear(inFeatures, cfg.nEmbd, init, `${prefix}.dense`));
    this.LayerNorm = this.module("LayerNorm", new LayerNorm(cfg.nEmbd, cfg.layerNormEpsilon));
    this.dropout = this.module("dropout", new Dropout(cfg.dropout));
  }

  forward(h: Tensor, residual: Tensor): Tensor {
    let y = this.dense.forward(h);                                           // (B, T, C)
    if (this.cfg.dropout > 0) { const d = this.dropout.forward(y); y.dispose(); y = d; }
    const s = y.add(residual);                                               // (B, T, C)
    y.dispose();
    const out = this.LayerNorm.forward(s);                                   // (B, T, C)
    s.dispose();
    return out;
  }
}

/** Self-attention and its output sublayer (HF BertAttention: `attention.self`, `attention.output`). */
export class BertAttention extends Module {
  readonly self: BertSelfAttention;
  readonly output: BertResidualOutput;
  constructor(cfg: ResolvedBERTConfig, init: _Init, prefix: string) {
    super();
    this.self = this.module("self", new BertSelfAttention(cfg, init, `${prefix}.self`));
    this.output = this.module("output", new BertResidualOutput(cfg, cfg.nEmbd, init, `${prefix}.output`));
  }

  forward(x: Tensor, mask: Tensor | null, recomputeCore = false): Tensor {
    const a = this.self.forward(x, mask, recomputeCore);                     // (B, T, C)
    const out = this.output.forward(a, x);                                   // (B, T, C)
    a.dispose();
    return out;
  }
}

/** dense C -> I then exact GELU (HF BertIntermediate, hidden_act "gelu"). */
export class BertIntermediate extends Module {
  readonly dense: Projection;
  constructor(cfg: ResolvedBERTConfig, init: _Init, prefix: string) {
    super();
    this.dense = this.module("dense", _linear(cfg.nEmbd, cfg.intermediateSize, init, `${prefix}.dense`));
  }

  forward(x: Tensor): Tensor {
    const h = this.dense.forward(x);                                         // (B, T, I)
    const g = F.gelu(h);                                                     // (B, T, I)
    h.dispose();
    return g;
  }
}

/** One post-LN encoder layer: a = LN(x + attn(x)), then LN(a + mlp(a)) (HF BertLayer). */
export class BertLayer extends Module {
  readonly attention: BertAttention;
  readonly intermediate: BertIntermediate;
  readonly output: BertResidualOutput;
  constructor(cfg: ResolvedBERTConfig, init: _Init, prefix: string, readonly layer = 0) {
    super();
    this.attention = this.module("attention", new BertAttention(cfg, init, `${prefix}.attention`));
    this.intermediate = this.module("intermediate", new BertIntermediate(cfg, init, `${prefix}.intermediate`));
    this.output = this.module("output", new BertResidualOutput(cfg, cfg.intermediateSize, init, `${prefix}.output`));
  }

  forward(x: Tensor, mask: Tensor | null, recomputeCore = false): Tensor {
    const a = this.attention.forward(x, mask, recomputeCore);                // (B, T, C)
    const h = this.intermediate.forward(a);                                  // (B, T, I)
    const out = this.output.forward(h, a);                                   // (B, T, C)
    _free(a, h);
    return out;
  }
}

// ---- encoder, pooler, heads ---------------------------------------------------------------------

/** Options of `encode()`. */
export interface BERTEncodeOptions {
  /** (B, T) int32 segment ids in [0, typeVocabSize). Default all 0. */
  tokenTypeIds?: Tensor | null;
  /** (B, T), 1 (nonzero) = token, 0 = padding: padded keys get zero attention weight. Default all 1. */
  attentionMask?: Tensor | null;
}

/** The stack of encoder layers, registered as `layer.{i}` (HF BertEncoder). */
export class BertEncoder extends Module {
  readonly layer: BertLayer[] = [];
  constructor(cfg: ResolvedBERTConfig, init: _Init, prefix: string) {
    super();
    for (let i = 0; i < cfg.nLayer; i++) this.layer.push(this.module(`layer.${i}`, new BertLayer(cfg, init, `${prefix}.layer.${i}`, i)));
  }
}

/** tanh(dense(h[:, 0])): the [CLS] summary the NSP head reads (HF BertPooler). */
export class BertPooler extends Module {
  readonly dense: Linear;
  constructor(cfg: ResolvedBERTConfig, init: _Init, prefix: string) {
    super();
    this.dense = this.module("dense", _linear(cfg.nEmbd, cfg.nEmbd, init, `${prefix}.dense`));
  }

  /** hidden (B, T, C) -> (B, C). */
  forward(hidden: Tensor): Tensor {
    const first = hidden.select(1, 0);                                       // (B, C)
    const d = this.dense.forward(first);                                     // (B, C)
    const out = d.tanh();
    _free(first, d);
    return out;
  }
}

/**
 * The encoder: embeddings, post-LN layers and the pooler (HF BertModel; its names sit under
 * `bert.` in BertForPreTraining). `prefix` is the dotted name it sits under ("bert" there, ""
 * alone): each parameter draws its initial values from its full name.
 * @example
 * const encoder = new BertModel({ nLayer: 2, nHead: 4, nEmbd: 32, maxPositions: 64, vocabSize: 101 });
 * const h = encoder.encode(ids, { attentionMask });   // (B, T, C)
 * const cls = encoder.pool(h);                        // (B, C)
 */
export class BertModel extends Module {
  readonly config: ResolvedBERTConfig;
  readonly embeddings: BertEmbeddings;
  readonly encoder: BertEncoder;
  readonly pooler: BertPooler;
  activationCheckpointing: BERTActivationCheckpointing;

  constructor(config: BERTConfig, opts: BERTOptions = {}, prefix = "") {
    super();
    const cfg = resolveBERTConfig(config);
    this.config = cfg;
    this.activationCheckpointing = opts.activationCheckpointing ?? false;
    const init: _Init = { seed: opts.seed ?? 1337, std: cfg.initializerRange };
    const p = prefix ? `${prefix}.` : "";
    this.embeddings = this.module("embeddings", new BertEmbeddings(cfg, init, `${p}embeddings`));
    this.encoder = this.module("encoder", new BertEncoder(cfg, init, `${p}encoder`));
    this.pooler = this.module("pooler", new BertPooler(cfg, init, `${p}pooler`));
  }

  /**
   * inputIds (B, T) int32 -> the last hidden state (B, T, C). Random draws (dropout) come from
   * the embeddings' stream (key 0) and each layer's (key 1 + layer), so masks do not depend on
   * which process runs what.
   */
  encode(inputIds: Tensor, opts: BERTEncodeOptions = {}): Tensor {
    const [B, T] = this._checkIds("inputIds", inputIds, null);
    if (T > this.config.maxPositions) throw new ValueError(`BERT.encode: sequence length ${T} exceeds max_position_embeddings ${this.config.maxPositions}`);
    if (opts.tokenTypeIds) this._checkIds("tokenTypeIds", opts.tokenTypeIds, [B, T]);
    const types = opts.tokenTypeIds ? opts.tokenTypeIds.alias() : tensor(new Int32Array(B * T), { shape: [B, T], dtype: "int32" });
    let x = withRandomStream(0, () => this.embeddings.forward(inputIds, types));   // (B, T, C)
    types.dispose();
    const mask = opts.attentionMask ? this._extendedMask(opts.attentionMask, B, T, x.dtype) : null;   // (B, 1, 1, T)
    const ac = this.training ? this.activationCheckpointing : false;
    const full = ac === true || ac === "full", selective = ac === "selective";
    for (const layer of this.encoder.layer) {
      const h = x;
      // Under full recomputation the mask is a checkpoint input, so the node holds it until the replay.
      x = withRandomStream(1 + layer.layer, () => !full ? layer.forward(h, mask, selective)
        : mask ? checkpoint((y: Tensor, m: Tensor) => layer.forward(y, m), h, mask)
        : checkpoint((y: Tensor) => layer.forward(y, null), h));              // (B, T, C)
      h.dispose();
    }
    mask?.dispose();
    return x;
  }

  /** hidden (B, T, C) -> pooled (B, C) = tanh(dense(hidden[:, 0])). */
  pool(hidden: Tensor): Tensor {
    return this.pooler.forward(hidden);
  }

  private _checkIds(what: string, t: Tensor, want: [number, number] | null): [number, number] {
    if (t.dtype !== "int32" || t.ndim !== 2 || (want && (t.shape[0] !== want[0] || t.shape[1] !== want[1]))) {
      throw new ValueError(`BERT.encode: ${what} must be an int32 tensor of shape ${want ? fmtShape(want) : "(B, T)"}, got ${t.dtype} ${fmtShape(t.shape)}`);
    }
    return [t.shape[0]!, t.shape[1]!];
  }

  /**
   * The (B, T) keep-mask as HF's additive (B, 1, 1, T) mask in the activations' dtype: 0 for
   * tokens, the dtype's lowest finite value for padding (not -inf, so a fully padded row
   * attends uniformly instead of producing NaN). null when nothing is padded: the fused
   * attention kernel then runs.
   */
  private _extendedMask(m: Tensor, B: number, T: number, dtype: Tensor["dtype"]): Tensor | null {
    if (m.ndim !== 2 || m.shape[0] !== B || m.shape[1] !== T) {
      throw new ValueError(`BERT.encode: attentionMask must have the shape of inputIds [${B}, ${T}] (1 = token, 0 = padding), got ${fmtShape(m.shape)}`);
    }
    const keep = m.data();
    const lowest = dtype === "bfloat16" ? -3.3895313892515355e38 : dtype === "float16" ? -65504 : -3.4028234663852886e38;
    const add = new Float32Array(B * T);
    let padded = false;
    for (let i = 0; i < add.length; i++) if (keep[i] === 0) { add[i] = lowest; padded = true; }
    if (!padded) return null;
    const f = tensor(add, { shape: [B, 1, 1, T] });
    if (dtype === "float32") return f;
    const c = f.to(dtype);
    f.dispose();
    return c;
  }
}

/** dense, GELU, LayerNorm on the hidden rows before the decoder (HF BertPredictionHeadTransform). */
export class BertPredictionHeadTransform extends Module {
  readonly dense: Linear;
  readonly LayerNorm: LayerNorm;
  constructor(cfg: ResolvedBERTConfig, init: _Init, prefix: string) {
    super();
    this.dense = this.module("dense", _linear(cfg.nEmbd, cfg.nEmbd, init, `${prefix}.dense`));
    this.LayerNorm = this.module("LayerNorm", new LayerNorm(cfg.nEmbd, cfg.layerNormEpsilon));
  }

  /** h (..., C) -> (..., C). */
  forward(h: Tensor): Tensor {
    const d = this.dense.forward(h);
    const g = F.gelu(d);
    const out = this.LayerNorm.forward(g);
    _free(d, g);
    return out;
  }
}

/** MLM head: transform (dense, GELU, LayerNorm), then the decoder tied to the word embeddings plus `bias` (HF BertLMPredictionHead). */
export class BertLMPredictionHead extends Module {
  readonly transform: BertPredictionHeadTransform;
  /** The decoder's own bias (V); its weight is the word-embedding table, not a parameter here. */
  readonly bias: Parameter;
  constructor(cfg: ResolvedBERTConfig, init: _Init, prefix: string, readonly decoderWeight: Parameter) {
    super();
    this.transform = this.module("transform", new BertPredictionHeadTransform(cfg, init, `${prefix}.transform`));
    this.bias = this.param("bias", zeros([cfg.vocabSize]));
  }

  /** h (..., C) -> logits (..., V) = transform(h) @ word_embeddings^T + bias. */
  forward(h: Tensor): Tensor {
    const n = this.transform.forward(h);                                     // (..., C)
    const logits = F.linear(n, this.decoderWeight, this.bias);               // (..., V)
    n.dispose();
    return logits;
  }
}

/** Both pre-training heads (HF BertPreTrainingHeads: `cls.predictions`, `cls.seq_relationship`). */
export class BertPreTrainingHeads extends Module {
  readonly predictions: BertLMPredictionHead;
  /** pooled (B, C) -> (B, 2): is-next (0) / random (1) logits. */
  readonly seq_relationship: Linear;
  constructor(cfg: ResolvedBERTConfig, init: _Init, wordEmbeddings: Parameter) {
    super();
    this.predictions = this.module("predictions", new BertLMPredictionHead(cfg, init, "cls.predictions", wordEmbeddings));
    this.seq_relationship = this.module("seq_relationship", _linear(cfg.nEmbd, 2, init, "cls.seq_relationship"));
  }
}

// ---- the model -----------------------------------------------------------------------------------

/** Options of `BertForPreTraining.forward()`. */
export interface BERTForwardOptions extends BERTEncodeOptions {
  /** (B, T) int32 MLM targets, -100 = not predicted (HF `labels`). */
  mlmLabels?: Tensor | null;
  /** (B) int32 NSP targets: 0 = B follows A, 1 = random (HF `next_sentence_label`); -100 = ignore. */
  nspLabels?: Tensor | null;
  /**
   * With mlmLabels: compute the (B, T, V) logits at every position (HF's output) instead of only
   * at the M labelled positions. Default false: the vocabulary projection, the largest matmul
   * of the step, runs on ~15% of the tokens (NVIDIA's BERT does the same); the loss is the same.
   */
  fullLogits?: boolean;
}

export interface BERTOutput {
  /**
   * MLM logits: (B, T, V); with mlmLabels and not fullLogits, (M, V) at the labelled positions
   * `mlmPositions`, in row-major (b, t) order.
   */
  predictionLogits: Tensor;
  /** The flattened (b * T + t) indices of predictionLogits' rows when they are gathered, else null. */
  mlmPositions: Tensor | null;
  /** (B, 2) NSP logits. */
  seqRelationshipLogits: Tensor;
  /** mlmLoss + nspLoss (HF's total_loss) over the labels given; null without labels. */
  loss: Tensor | null;
  /** Mean cross-entropy over the labelled positions (0, with zero gradients, when there are none). */
  mlmLoss: Tensor | null;
  /** Mean cross-entropy of the NSP logits. */
  nspLoss: Tensor | null;
  /** (B, T, C) last hidden state. */
  hidden: Tensor;
}

/**
 * BERT with both pre-training heads (HF BertForPreTraining): post-LN encoder, GELU, learned
 * positions, token types, the MLM head tied to the word embeddings, pooler + NSP head.
 * @example
 * const model = new BertForPreTraining({ nLayer: 2, nHead: 4, nEmbd: 32, maxPositions: 64, vocabSize: 101 });
 * const out = model.forward(ids, { tokenTypeIds, attentionMask, mlmLabels, nspLabels });
 * out.loss!.backward();                                 // out.predictionLogits: (M, V), labelled rows only
 * const h = model.encode(ids, { attentionMask });       // (B, T, C) features
 */
export class BertForPreTraining extends Module {
  readonly config: ResolvedBERTConfig;
  readonly bert: BertModel;
  readonly cls: BertPreTrainingHeads;

  constructor(config: BERTConfig, opts: BERTOptions = {}) {
    super();
    this.bert = this.module("bert", new BertModel(config, opts, "bert"));
    this.config = this.bert.config;
    const init: _Init = { seed: opts.seed ?? 1337, std: this.config.initializerRange };
    this.cls = this.module("cls", new BertPreTrainingHeads(this.config, init, this.bert.embeddings.word_embeddings.weight));
  }

  /** The encoder layers, in order: the ZeRO/FSDP units of parallelize() (a BlockModel). */
  get blocks(): readonly BertLayer[] {
    return this.bert.encoder.layer;
  }

  get activationCheckpointing(): BERTActivationCheckpointing {
    return this.bert.activationCheckpointing;
  }

  set activationCheckpointing(ac: BERTActivationCheckpointing) {
    this.bert.activationCheckpointing = ac;
  }

  /** inputIds (B, T) int32 -> last hidden state (B, T, C); see BertModel.encode. */
  encode(inputIds: Tensor, opts: BERTEncodeOptions = {}): Tensor {
    return this.bert.encode(inputIds, opts);
  }

  /** hidden (B, T, C) -> (B, C) tanh(dense(hidden[:, 0])). */
  pool(hidden: Tensor): Tensor {
    return this.bert.pool(hidden);
  }

  /** The MLM head on hidden rows: (..., C) -> (..., V). */
  mlmLogits(hidden: Tensor): Tensor {
    return this.cls.predictions.forward(hidden);
  }

  /** Logits of both heads and, with labels, the losses (see BERTForwardOptions). */
  forward(inputIds: Tensor, opts: BERTForwardOptions = {}): BERTOutput {
    const hidden = this.encode(inputIds, opts);                              // (B, T, C)
    const [B, T] = hidden.shape as [number, number, number];
    const pooled = this.pool(hidden);                                        // (B, C)
    const seqRelationshipLogits = this.cls.seq_relationship.forward(pooled); // (B, 2)
    pooled.dispose();

    let predictionLogits: Tensor, mlmPositions: Tensor | null = null, mlmLoss: Tensor | null = null;
    const labels = opts.mlmLabels ?? null;
    if (labels && (labels.dtype !== "int32" || labels.ndim !== 2 || labels.shape[0] !== B || labels.shape[1] !== T)) {
      throw new ValueError(`BertForPreTraining.forward: mlmLabels must be int32 of the shape of inputIds [${B}, ${T}], got ${labels.dtype} ${fmtShape(labels.shape)}`);
    }
    if (!labels || opts.fullLogits) {
      predictionLogits = this.mlmLogits(hidden);                             // (B, T, V)
      if (labels) {
        const V = this.config.vocabSize;
        const rows = predictionLogits.view([B * T, V]), flat = labels.view([B * T]);
        mlmLoss = F.crossEntropy(rows, flat);
        _free(rows, flat);
      }
    } else {
      ({ logits: predictionLogits, positions: mlmPositions, loss: mlmLoss } = this._gatheredMLM(hidden, labels));
    }

    let nspLoss: Tensor | null = null;
    const nsp = opts.nspLabels ?? null;
    if (nsp) {
      if (nsp.dtype !== "int32" || nsp.ndim !== 1 || nsp.shape[0] !== B) {
        throw new ValueError(`BertForPreTraining.forward: nspLabels must be int32 of shape [${B}], got ${nsp.dtype} ${fmtShape(nsp.shape)}`);
      }
      nspLoss = F.crossEntropy(seqRelationshipLogits, nsp);
    }
    // With one kind of label only, loss is that loss (the same tensor).
    const loss = mlmLoss && nspLoss ? mlmLoss.add(nspLoss) : mlmLoss ?? nspLoss;
    return { predictionLogits, mlmPositions, seqRelationshipLogits, loss, mlmLoss, nspLoss, hidden };
  }

  /**
   * The MLM head at the labelled positions only: gathers the M rows of hidden whose label is
   * not -100 (an embedding lookup into the (B*T, C) rows, whose gradient scatters back), then
   * logits (M, V) and their mean cross-entropy. With no labelled position, row 0 is taken with
   * an ignored target and a summed loss: 0, with zero gradients, so every head parameter still
   * gets a gradient (data-parallel reductions expect one).
   */
  private _gatheredMLM(hidden: Tensor, labels: Tensor): { logits: Tensor; positions: Tensor; loss: Tensor } {
    const [B, T, C] = hidden.shape as [number, number, number];
    const lab = labels.data() as Int32Array;
    const pos: number[] = [], tgt: number[] = [];
    for (let i = 0; i < lab.length; i++) if (lab[i] !== -100) { pos.push(i); tgt.push(lab[i]!); }
    const empty = pos.length === 0;
    if (empty) { pos.push(0); tgt.push(-100); }
    const positions = tensor(Int32Array.from(pos), { shape: [pos.length], dtype: "int32" });   // (M)
    const targets = tensor(Int32Array.from(tgt), { shape: [tgt.length], dtype: "int32" });     // (M)
    const flat = hidden.reshape([B * T, C]);                                 // (B*T, C)
    const rows = F.embedding(positions, flat);                               // (M, C) gather
    const logits = this.mlmLogits(rows);                                     // (M, V)
    const loss = F.crossEntropy(logits, targets, { reduction: empty ? "sum" : "mean" });
    _free(flat, rows, targets);
    return { logits, positions, loss };
  }

  /**
   * Model FLOPs per token for training (forward + backward = 3x forward), PaLM's accounting as
   * GPT's: 6 x the parameters each token goes through, plus attention's 12 L T C. The MLM head
   * (transform and the V x C decoder) runs on `predictedFraction` of the tokens (0.15 with
   * BERT's masking and the gathered head; 1 with fullLogits); the pooler and NSP head once per
   * sequence. The embedding lookups are not matmuls and are not counted.
   */
  flopsPerToken(T = this.config.maxPositions, predictedFraction = 0.15): number {
    const c = this.config;
    const count = (prefix: string) => this.namedParameters().filter(([n]) => n.startsWith(prefix)).reduce((s, [, p]) => s + p.numel, 0);
    const perToken = count("bert.encoder.") + count("bert.embeddings.LayerNorm.");
    const head = count("cls.predictions.") + c.vocabSize * c.nEmbd;   // + the tied decoder weight
    const perSequence = count("bert.pooler.") + count("cls.seq_relationship.");
    return 6 * (perToken + predictedFraction * head + perSequence / T) + 12 * c.nLayer * c.nEmbd * T;
  }
}
