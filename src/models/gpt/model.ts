/**
 * GPT-2, in one file, top-down in dependency order (nanoGPT's model.py shape).
 *
 * Shape legend: B batch, T sequence length, C embedding width (n_embd), H heads,
 * D head width (C / H), V vocabulary size.
 *
 * Parameter names follow Hugging Face's GPT2Model (`wte.weight`, `h.0.attn.c_attn.weight`...),
 * so a state dict maps one-to-one onto HF checkpoints; the only difference is that our linear
 * weights are [out, in] (PyTorch nn.Linear) where HF's Conv1D stores [in, out] (see weights.ts).
 * The model knows nothing about parallelism or precision.
 *
 * The forward is written once. Training, KV-cache generation and paged serving differ only in
 * the attention context passed down to every block (nn/attention.ts); int8 serving swaps
 * modules (Int8Linear for the projections, a head module for the tied LM head) and runs this
 * same code. In the paged context, T is N, the tokens of a ragged batch, fed as (1, N).
 */
import { ValueError, fmtShape } from "../../core/errors.js";
import {
  Tensor, F, Module, Linear, Embedding, LayerNorm, Dropout, normal, zeros, ones, checkpoint, noGrad, withRandomStream,
  causalAttention, contextPositions, advanceContext, isKVCache, CAUSAL, MoE,
  type Projection, type AttentionContext, type KVCache, type RouterLosses,
} from "./_deps.js";

export type { KVCache, AttentionContext } from "./_deps.js";

/** Architecture hyper-parameters (HF config.json names in comments). */
export interface GPTConfig {
  /** Transformer blocks (n_layer). */
  nLayer: number;
  /** Attention heads (n_head). */
  nHead: number;
  /** Embedding width (n_embd). */
  nEmbd: number;
  /** Maximum context length (n_positions). */
  blockSize: number;
  /** Vocabulary size (vocab_size). */
  vocabSize: number;
  /** Dropout probability on embeddings, attention output and MLP output. Default 0. */
  dropout?: number;
  /** Biases in linear layers and LayerNorms (GPT-2: true). Default true. */
  bias?: boolean;
  /** LayerNorm epsilon (layer_norm_epsilon). Default 1e-5. */
  layerNormEpsilon?: number;
  /** Mixture of experts in the MLP slot of some blocks (nn/moe.ts). Default null (dense). */
  moe?: GPTMoEConfig | null;
}

/** A sparse MLP's hyper-parameters (the training config's `model.moe`, camelCased). */
export interface GPTMoEConfig {
  /** Experts per MoE layer. */
  numExperts: number;
  /** Experts per token: 1 or 2. */
  topK: 1 | 2;
  /** Training capacity factor: slots per expert = ceil(factor * tokens * k / experts). Default 1.25. */
  capacityFactor?: number;
  /** Capacity factor in eval mode (eval, generation, serving). Default 2.0. */
  evalCapacityFactor?: number;
  /** Weight of the load-balancing loss in the training loss. Default 0.01. */
  auxLossCoef?: number;
  /** Weight of the router z-loss in the training loss. Default 0.001. */
  zLossCoef?: number;
  /** Blocks i with (i + 1) % every === 0 get the MoE MLP (1: all; 2: blocks 1, 3, ...). Default 1. */
  every?: number;
  /** Multiplicative router-input noise U(1 - j, 1 + j) in training. Default 0. */
  routerJitter?: number;
}

/** A config with every default filled in, the MoE section's included. */
export type ResolvedGPTConfig = Required<GPTConfig> & { moe: Required<GPTMoEConfig> | null };

/** Whether block `layer` holds a mixture of experts under `cfg`. */
export function isMoELayer(cfg: ResolvedGPTConfig, layer: number): boolean {
  return cfg.moe !== null && (layer + 1) % cfg.moe.every === 0;
}

export interface GPTOptions {
  /** Seed for parameter initialisation; each parameter draws from its own stream. Default 1337. */
  seed?: number;
  /**
   * Activation recomputation in training: "full" (or true) keeps only each block's input and
   * recomputes the block in backward; "selective" recomputes only the attention core
   * (Korthikanti et al. 2022). Default false.
   */
  activationCheckpointing?: ActivationCheckpointing;
}

/** What is recomputed in backward instead of stored (see GPTOptions). */
export type ActivationCheckpointing = boolean | "full" | "selective";

/** Validates a config and fills defaults; errors name the bad field. */
export function resolveGPTConfig(c: GPTConfig): ResolvedGPTConfig {
  const need = (k: keyof GPTConfig, v: unknown, min = 1) => {
    if (typeof v !== "number" || !Number.isInteger(v) || v < min) {
      throw new ValueError(`GPT config: ${k} must be an integer >= ${min}, got ${JSON.stringify(v)}`);
    }
  };
  need("nLayer", c.nLayer);
  need("nHead", c.nHead);
  need("nEmbd", c.nEmbd);
  need("blockSize", c.blockSize);
  need("vocabSize", c.vocabSize);
  if (c.nEmbd % c.nHead !== 0) throw new ValueError(`GPT config: nEmbd (${c.nEmbd}) must be divisible by nHead (${c.nHead})`);
  const dropout = c.dropout ?? 0;
  if (!(dropout >= 0 && dropout < 1)) throw new ValueError(`GPT config: dropout must be in [0, 1), got ${dropout}`);
  return { ...c, dropout, bias: c.bias ?? true, layerNormEpsilon: c.layerNormEpsilon ?? 1e-5, moe: resolveMoE(c.moe ?? null) };
}

function resolveMoE(m: GPTMoEConfig | null): Required<GPTMoEConfig> | null {
  if (m === null) return null;
  const r: Required<GPTMoEConfig> = {
    numExperts: m.numExperts, topK: m.topK, capacityFactor: m.capacityFactor ?? 1.25, evalCapacityFactor: m.evalCapacityFactor ?? 2.0,
    auxLossCoef: m.auxLossCoef ?? 0.01, zLossCoef: m.zLossCoef ?? 0.001, every: m.every ?? 1, routerJitter: m.routerJitter ?? 0,
  };
  const bad = (k: string, want: string, v: unknown) => new ValueError(`GPT config: moe.${k} must be ${want}, got ${JSON.stringify(v)}`);
  if (!Number.isInteger(r.numExperts) || r.numExperts < 1) throw bad("numExperts", "an integer >= 1", r.numExperts);
  if (r.topK !== 1 && r.topK !== 2) throw bad("topK", "1 or 2", r.topK);
  if (r.topK > r.numExperts) throw bad("topK", `at most numExperts (${r.numExperts})`, r.topK);
  if (!Number.isInteger(r.every) || r.every < 1) throw bad("every", "an integer >= 1", r.every);
  for (const k of ["capacityFactor", "evalCapacityFactor"] as const) if (!(r[k] > 0)) throw bad(k, "> 0", r[k]);
  for (const k of ["auxLossCoef", "zLossCoef"] as const) if (!(r[k] >= 0 && Number.isFinite(r[k]))) throw bad(k, "a finite number >= 0", r[k]);
  if (!(r.routerJitter >= 0 && r.routerJitter < 1)) throw bad("routerJitter", "in [0, 1)", r.routerJitter);
  return r;
}

/** A stable per-parameter seed: initialisation never depends on creation order or layout. */
function paramSeed(base: number, name: string): number {
  let h = 2166136261 ^ base;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 16777619);
  return (h >>> 0) + base * 2 ** 20;
}

/** Re-initialises a Linear the GPT-2 way: N(0, std) weights, zero bias. */
function initLinear(l: Linear, std: number, seed: number, name: string): void {
  noGrad(() => {
    const w = normal(l.weight.shape, 0, std, { seed: paramSeed(seed, name) });
    l.weight.copy_(w);
    w.dispose();
    l.bias?.zero_();
  });
}

// ---- blocks ----------------------------------------------------------------------------------

/**
 * Multi-head causal self-attention with one fused QKV projection. Where keys and values come
 * from (dense, KV cache, paged pools) is the context's business (nn/attention.ts); `layer`
 * says which of the context's per-layer caches is this one's.
 */
export class CausalSelfAttention extends Module {
  readonly c_attn: Projection;
  readonly c_proj: Projection;
  readonly resid_dropout: Dropout;
  constructor(readonly cfg: Required<GPTConfig>, readonly layer = 0) {
    super();
    this.c_attn = this.module("c_attn", new Linear(cfg.nEmbd, 3 * cfg.nEmbd, { bias: cfg.bias }));
    this.c_proj = this.module("c_proj", new Linear(cfg.nEmbd, cfg.nEmbd, { bias: cfg.bias }));
    this.resid_dropout = this.module("resid_dropout", new Dropout(cfg.dropout));
  }

  forward(x: Tensor, ctx: AttentionContext = CAUSAL): Tensor {
    // The width comes from the projection's output, not the config: a module swap may hand
    // this layer a slice of the heads (a tensor-parallel shard holds nHead / tp whole heads).
    const qkv = this.c_attn.forward(x);                                        // (B, T, 3C)
    const C = qkv.shape[qkv.ndim - 1]! / 3;
    const H = C / (this.cfg.nEmbd / this.cfg.nHead);
    const [q, k, v] = qkv.split(C, -1);                                       // 3 x (B, T, C)
    const y = causalAttention(q!, k!, v!, H, ctx, this.layer);                // (B, T, C)
    const out = this.c_proj.forward(y);                                        // (B, T, C)
    return this.cfg.dropout > 0 ? this.resid_dropout.forward(out) : out;
  }
}

/** Position-wise MLP: C -> 4C -> GELU(tanh) -> C. */
export class MLP extends Module {
  readonly c_fc: Projection;
  readonly c_proj: Projection;
  readonly dropout: Dropout;
  constructor(readonly cfg: Required<GPTConfig>) {
    super();
    this.c_fc = this.module("c_fc", new Linear(cfg.nEmbd, 4 * cfg.nEmbd, { bias: cfg.bias }));
    this.c_proj = this.module("c_proj", new Linear(4 * cfg.nEmbd, cfg.nEmbd, { bias: cfg.bias }));
    this.dropout = this.module("dropout", new Dropout(cfg.dropout));
  }

  forward(x: Tensor): Tensor {
    const h = F.gelu(this.c_fc.forward(x), { approximate: "tanh" });          // (B, T, 4C)
    const out = this.c_proj.forward(h);                                        // (B, T, C)
    return this.cfg.dropout > 0 ? this.dropout.forward(out) : out;
  }
}

/**
 * Pre-LayerNorm transformer block: x + attn(ln_1(x)), then + mlp(ln_2(x)). The MLP slot holds a
 * mixture of experts (nn/moe.ts) in the blocks `model.moe` picks (isMoELayer).
 */
export class Block extends Module {
  readonly ln_1: LayerNorm;
  readonly attn: CausalSelfAttention;
  readonly ln_2: LayerNorm;
  readonly mlp: MLP | MoE;
  constructor(cfg: ResolvedGPTConfig, readonly layer = 0) {
    super();
    this.ln_1 = this.module("ln_1", new LayerNorm(cfg.nEmbd, cfg.layerNormEpsilon, { bias: cfg.bias }));
    this.attn = this.module("attn", new CausalSelfAttention(cfg, layer));
    this.ln_2 = this.module("ln_2", new LayerNorm(cfg.nEmbd, cfg.layerNormEpsilon, { bias: cfg.bias }));
    const moe = cfg.moe;
    this.mlp = this.module("mlp", moe && isMoELayer(cfg, layer)
      ? new MoE({
        nEmbd: cfg.nEmbd, numExperts: moe.numExperts, topK: moe.topK, capacityFactor: moe.capacityFactor,
        evalCapacityFactor: moe.evalCapacityFactor, routerJitter: moe.routerJitter, bias: cfg.bias, dropout: cfg.dropout,
      })
      : new MLP(cfg));
  }

  forward(x: Tensor, ctx: AttentionContext = CAUSAL): Tensor {
    // Handles are released as soon as the block is done with them: what backward needs, the
    // ops have saved; the rest (e.g. the branch outputs, which the residual adds do not keep)
    // is freed now instead of at the end of the step's scope, so activation memory is what
    // autograd holds (the figure Korthikanti et al. count).
    const h1 = this.ln_1.forward(x);                                           // (B, T, C)
    const a = this.attn.forward(h1, ctx);                                      // (B, T, C)
    const x1 = x.add(a);
    h1.dispose();
    a.dispose();
    const h2 = this.ln_2.forward(x1);
    const m = this.mlp.forward(h2);                                            // (B, T, C)
    const out = x1.add(m);                                                     // (B, T, C)
    for (const t of [h2, m, x1]) t.dispose();
    return out;
  }
}

// ---- the model -----------------------------------------------------------------------------------

export interface GPTOutput {
  /** (B, T, V) next-token logits; (S, V) for the context's `logitsRows` when it has them. */
  logits: Tensor;
  /**
   * The training loss, when targets were given: the mean cross-entropy over targets (ignore
   * index -100), plus, with MoE layers, auxLossCoef x auxLoss + zLossCoef x zLoss.
   */
  loss: Tensor | null;
  /** MoE models with targets: the cross-entropy alone (the loss without the router terms). */
  lmLoss?: Tensor;
  /** MoE models with targets: the load-balancing losses summed over MoE layers, unscaled. */
  auxLoss?: Tensor;
  /** MoE models with targets: the router z-losses summed over MoE layers, unscaled. */
  zLoss?: Tensor;
}

/**
 * GPT-2: token + learned position embeddings, pre-LN blocks, final LayerNorm, LM head tied to
 * the token embedding (unless a head module is set: `setLmHead`).
 * @example
 * const model = new GPT({ nLayer: 2, nHead: 2, nEmbd: 64, blockSize: 64, vocabSize: 50257 });
 * const { logits, loss } = model.forward(idx, targets);                  // dense causal
 * const kv = model.newKVCache();
 * model.forward(prompt, null, { kind: "kv", cache: kv });                // then one token at a time
 */
export class GPT extends Module {
  readonly config: ResolvedGPTConfig;
  readonly wte: Embedding;
  readonly wpe: Embedding;
  readonly h: Block[];
  readonly ln_f: LayerNorm;
  /** Dropout on the embeddings (nanoGPT's `transformer.drop`). */
  readonly drop: Dropout;
  /** The LM head module (C -> V); null = tied to the token embedding, logits = h @ wte^T. */
  readonly lm_head: Projection | null = null;
  activationCheckpointing: ActivationCheckpointing;
  /**
   * The training loss over logits rows (N, V) and targets (N) (ignore index -100); null = mean
   * cross-entropy. A stand-in computes the same value from another form of the logits (e.g.
   * the vocabulary-parallel cross-entropy over vocabulary shards).
   */
  lossFunction: ((logits: Tensor, targets: Tensor) => Tensor) | null = null;

  constructor(config: GPTConfig, opts: GPTOptions = {}) {
    super();
    const cfg = resolveGPTConfig(config);
    this.config = cfg;
    this.activationCheckpointing = opts.activationCheckpointing ?? false;
    const seed = opts.seed ?? 1337;
    this.wte = this.module("wte", new Embedding(cfg.vocabSize, cfg.nEmbd, { seed: paramSeed(seed, "wte.weight") }));
    this.wpe = this.module("wpe", new Embedding(cfg.blockSize, cfg.nEmbd, { seed: paramSeed(seed, "wpe.weight") }));
    this.h = [];
    for (let i = 0; i < cfg.nLayer; i++) this.h.push(this.module(`h.${i}`, new Block(cfg, i)));
    this.ln_f = this.module("ln_f", new LayerNorm(cfg.nEmbd, cfg.layerNormEpsilon, { bias: cfg.bias }));
    this.drop = this.module("drop", new Dropout(cfg.dropout));
    // GPT-2 init: N(0, 0.02) everywhere, residual projections scaled by 1/sqrt(2 n_layer).
    const projStd = 0.02 / Math.sqrt(2 * cfg.nLayer);
    this.h.forEach((b, i) => {
      initLinear(b.attn.c_attn as Linear, 0.02, seed, `h.${i}.attn.c_attn.weight`);
      initLinear(b.attn.c_proj as Linear, projStd, seed, `h.${i}.attn.c_proj.weight`);
      if (b.mlp instanceof MoE) {
        initLinear(b.mlp.gate, 0.02, seed, `h.${i}.mlp.gate.weight`);
        b.mlp.experts.forEach((e, j) => {
          initLinear(e.c_fc as Linear, 0.02, seed, `h.${i}.mlp.experts.${j}.c_fc.weight`);
          initLinear(e.c_proj as Linear, projStd, seed, `h.${i}.mlp.experts.${j}.c_proj.weight`);
        });
        return;
      }
      initLinear(b.mlp.c_fc as Linear, 0.02, seed, `h.${i}.mlp.c_fc.weight`);
      initLinear(b.mlp.c_proj as Linear, projStd, seed, `h.${i}.mlp.c_proj.weight`);
    });
  }

  /**
   * idx: (B, T) int32 token ids; targets: (B, T) int32 (-100 = ignore); ctx: where attention
   * gets its keys and positions (nn/attention.ts; default dense causal). A bare KVCache as the
   * third argument means `{kind: "kv", cache}`: idx then holds only the new tokens. With the
   * paged kind, idx is a ragged batch (1, N). With `ctx.logitsRows`, logits are (S, V) for
   * those rows of the flattened (B * T) tokens only.
   */
  forward(idx: Tensor, targets?: Tensor | null, ctxIn: AttentionContext | KVCache = CAUSAL): GPTOutput {
    const ctx: AttentionContext = isKVCache(ctxIn) ? { kind: "kv", cache: ctxIn } : ctxIn;
    const T = idx.shape[1]!;
    let x = this.embed(idx, ctx);                                               // (B, T, C)
    x = this.runBlocks(x, ctx);                                                 // (B, T, C)
    advanceContext(ctx, T);
    if (targets && (targets.ndim !== 2 || targets.shape[0] !== idx.shape[0] || targets.shape[1] !== T)) {
      throw new ValueError(`GPT.forward: targets shape ${fmtShape(targets.shape)} must equal idx shape ${fmtShape(idx.shape)}`);
    }
    return this.addRouterLosses(this.head(x, targets ?? null, ctx));
  }

  /**
   * With MoE layers: takes the router losses the blocks left behind and, when there is a loss,
   * adds auxLossCoef x sum(aux) + zLossCoef x sum(z) to it (reported apart as auxLoss/zLoss).
   * The losses travel beside the activations, so this needs the blocks to have run in this
   * process without full activation checkpointing (which frees them; the config refuses it).
   */
  private addRouterLosses(out: GPTOutput): GPTOutput {
    const r = this.takeRouterLosses();
    if (!r) return out;
    if (!out.loss) {
      for (const t of [r.auxLoss, r.zLoss, r.term]) t.dispose();
      return out;
    }
    const loss = out.loss.add(r.term);
    r.term.dispose();
    return { logits: out.logits, loss, lmLoss: out.loss, auxLoss: r.auxLoss, zLoss: r.zLoss };
  }

  /**
   * Takes the router losses the MoE layers among `blocks` left behind in their last forward
   * (so they are not added twice): `auxLoss` and `zLoss` summed over those layers, unscaled, and
   * `term` = auxLossCoef x auxLoss + zLossCoef x zLoss, what the training loss adds. null for a
   * dense model or when none is pending. A pipeline stage takes its own blocks' term and
   * backpropagates it beside its activations (the router gradients are local to each layer).
   * @example
   * const r = model.takeRouterLosses(stageBlocks);   // after runBlocks(h, CAUSAL, stageBlocks)
   * if (r) total = total.add(r.term);
   */
  takeRouterLosses(blocks: readonly Block[] = this.h): { auxLoss: Tensor; zLoss: Tensor; term: Tensor } | null {
    const moe = this.config.moe;
    if (!moe) return null;
    const taken = blocks.flatMap((b) => (b.mlp instanceof MoE ? [b.mlp.takeLosses()] : []));
    const losses = taken.filter((l): l is RouterLosses => l !== null);
    if (losses.length === 0) return null;
    const sum = (ts: Tensor[]) => ts.slice(1).reduce((acc, t) => { const s = acc.add(t); acc.dispose(); t.dispose(); return s; }, ts[0]!);
    const auxLoss = sum(losses.map((l) => l.aux));
    const zLoss = sum(losses.map((l) => l.z));
    const a = auxLoss.mul(moe.auxLossCoef), z = zLoss.mul(moe.zLossCoef);
    const term = a.add(z);
    a.dispose();
    z.dispose();
    return { auxLoss, zLoss, term };
  }

  // The forward in its three parts, in order. `forward` chains them; a pipeline stage runs the
  // parts it holds (the embedding on the first stage, some blocks, the head on the last).

  /**
   * Token + position embeddings (+ dropout): idx (B, T) int32 -> (B, T, C). Random draws come
   * from the embeddings' own stream (key 0) and each block's from key 1 + its layer index, so
   * dropout masks do not depend on which parts of the model a process runs.
   */
  embed(idx: Tensor, ctx: AttentionContext = CAUSAL): Tensor {
    return withRandomStream(0, () => this.embedTokens(idx, ctx));
  }

  private embedTokens(idx: Tensor, ctx: AttentionContext): Tensor {
    if (idx.dtype !== "int32" || idx.ndim !== 2) {
      throw new ValueError(`GPT.forward: idx must be an int32 tensor of shape (B, T), got ${idx.dtype} ${fmtShape(idx.shape)}`);
    }
    const T = idx.shape[1]!;
    const pos = contextPositions(ctx, T, this.config.blockSize, "GPT.forward"); // (T)
    const tok = this.wte.forward(idx);                                        // (B, T, C)
    const pe = this.wpe.forward(pos);                                         // (T, C)
    let x = tok.add(pe);                                                      // (B, T, C)
    pos.dispose();
    if (this.config.dropout > 0) x = this.drop.forward(x);
    return x;
  }

  /** The transformer blocks (default: all of `h`, in order), with activation checkpointing in training. */
  runBlocks(x: Tensor, ctx: AttentionContext = CAUSAL, blocks: readonly Block[] = this.h): Tensor {
    const ac = this.training && ctx.kind === "causal" ? this.activationCheckpointing : false;
    const full = ac === true || ac === "full";
    if (full && this.config.moe) throw new ValueError("GPT: full activation checkpointing would free the MoE router losses; use \"selective\" or none with model.moe");
    const bctx: AttentionContext = ac === "selective" && ctx.kind === "causal" ? { ...ctx, recomputeCore: true } : ctx;
    for (const block of blocks) {
      const h = x;
      x = withRandomStream(1 + block.layer, () => full ? checkpoint((y: Tensor) => block.forward(y, bctx), h) : block.forward(h, bctx));   // (B, T, C)
    }
    return x;
  }

  /**
   * Final LayerNorm, LM head and (with targets) the loss: x (B, T, C) -> logits (B, T, V), or
   * (S, V) for the context's `logitsRows`. The loss is `lossFunction` over (B*T, V) rows.
   */
  head(x: Tensor, targets: Tensor | null, ctx: AttentionContext = CAUSAL): GPTOutput {
    if (ctx.logitsRows) {
      if (targets) throw new ValueError("GPT.forward: targets and logitsRows cannot be combined (the loss needs every row)");
      const C = x.shape[x.ndim - 1]!;
      x = F.embedding(ctx.logitsRows, x.view([x.numel / C, C]));                // (S, C) gather
    }
    const logits = this.lmHead(this.ln_f.forward(x));                          // (B, T, V) or (S, V)
    if (!targets) return { logits, loss: null };
    const V = logits.shape[logits.ndim - 1]!;
    const rows = logits.view([logits.numel / V, V]), flat = targets.view([targets.numel]);
    if (rows.shape[0] !== flat.shape[0]) {
      throw new ValueError(`GPT.forward: targets hold ${flat.shape[0]} tokens, the logits ${rows.shape[0]} rows`);
    }
    const loss = this.lossFunction ? this.lossFunction(rows, flat) : F.crossEntropy(rows, flat);
    return { logits, loss };
  }

  /** The LM head: h (..., C) -> logits (..., V), through `lm_head` when set, else tied to wte. */
  lmHead(h: Tensor): Tensor {
    return this.lm_head ? this.lm_head.forward(h) : h.matmul(this.wte.weight.t());
  }

  /**
   * Sets (or with null, unsets) a head module in place of the tied embedding, e.g. an int8
   * copy of wte (`quantizeModelInt8(model, {lmHead: true})`). Registered as `lm_head`.
   */
  setLmHead(head: Projection | null): void {
    if (head && (head.inFeatures !== this.config.nEmbd || head.outFeatures !== this.config.vocabSize)) {
      throw new ValueError(`GPT.setLmHead: the head must map ${this.config.nEmbd} -> ${this.config.vocabSize}, got ${head.inFeatures} -> ${head.outFeatures}`);
    }
    this.setModule("lm_head", head);
  }

  /** An empty KV cache for incremental decoding. */
  newKVCache(): KVCache {
    return { k: new Array(this.config.nLayer).fill(null), v: new Array(this.config.nLayer).fill(null), length: 0 };
  }

  /** Frees a KV cache's tensors. */
  static disposeKVCache(kv: KVCache): void {
    for (const t of [...kv.k, ...kv.v]) t?.dispose();
    kv.k.fill(null);
    kv.v.fill(null);
    kv.length = 0;
  }

  /**
   * Model FLOPs per token for training (forward + backward = 3x forward): 6N for the
   * parameter matmuls plus attention's 12 L T C (PaLM's accounting, as in nanoGPT's MFU).
   */
  flopsPerToken(T = this.config.blockSize): number {
    const c = this.config;
    const nonEmbedding = this.numParameters() - c.blockSize * c.nEmbd;
    return 6 * nonEmbedding + 12 * c.nLayer * c.nEmbd * T;
  }
}

// Keep zeros/ones imported for readers looking for the init helpers used by layers.
void zeros;
void ones;
