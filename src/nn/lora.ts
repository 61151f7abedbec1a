/**
 * LoRA: low-rank adapters on frozen Linear layers (Hu et al. 2021), as a module swap.
 *
 * A targeted Linear W [out, in] (+ b) is replaced in the module tree by a LoRALinear that
 * computes
 *
 *     y = x W^T + b + (dropout(x) A^T B^T) * (alpha / r),    A [r, in], B [out, r]
 *
 * with W and b frozen and only A and B trained. B starts at zero, so a freshly adapted model
 * computes exactly what the base model does; A starts kaiming-uniform(a = sqrt(5)) like
 * nn.Linear's default (and PEFT's), U(-1/sqrt(in), 1/sqrt(in)), drawn from a stream keyed by
 * the seed and the module's name, so initialisation does not depend on creation order.
 *
 * Names. The wrapper registers the base Linear's own `weight` and `bias` tensors (shared, not
 * copied) under the same names, and the adapters as submodules `lora_A` / `lora_B` (PEFT's
 * names, without PEFT's adapter-name level), so `namedParameters()` still yields
 * `h.0.attn.c_attn.weight` for the base and adds `h.0.attn.c_attn.lora_A.weight` and
 * `h.0.attn.c_attn.lora_B.weight`. Code that looks parameters up by name (checkpoints, the HF
 * weight writers) keeps working; a plain model's state dict is the adapted model's minus the
 * `lora_` entries.
 *
 * Orientation: A and B are stored [r, in] and [out, r] whatever the base layer's storage
 * convention; that is PEFT's convention too (its `fan_in_fan_out` only transposes the merged
 * delta for Conv1D bases such as HF GPT-2's). Our Linear is [out, in], so merging adds B @ A
 * directly (see lora_files.ts for the file side).
 *
 * `mergeLoRA` folds every adapter into its base weight (W += B A alpha / r) and puts the plain
 * Linear back: the result is an ordinary model with no LoRA cost at inference. Parameters keep
 * the requiresGrad flags `applyLoRA` gave them (PEFT's merge_and_unload does the same).
 */
import { ValueError, fmtShape } from "../core/errors.js";
import { Tensor, noGradScope } from "./_deps.js";
import { rand } from "../tensor/index.js";
import { Module, type Parameter } from "./module.js";
import { Linear, Dropout, type Projection } from "./layers.js";
import { Expert } from "./moe.js";

/** Hyper-parameters of one LoRA adapter (PEFT's LoraConfig names in comments). */
export interface LoRAConfig {
  /** Rank of the update (r): A is [r, in], B [out, r]. */
  r: number;
  /** Scale numerator (lora_alpha): the update is multiplied by alpha / r. */
  alpha: number;
  /** Dropout on the adapter's input in training (lora_dropout). Default 0. */
  dropout?: number;
}

/** Options of `applyLoRA`. */
export interface LoRAOptions extends LoRAConfig {
  /**
   * Which Linear modules get adapters (target_modules). A list matches a module whose dotted
   * name equals an entry or ends with "." + entry (PEFT's rule): "c_attn" matches every
   * `h.N.attn.c_attn`, "attn.c_proj" only the attention's output projection. A single string
   * is a regular expression that must match the whole name (PEFT's rule for a string).
   */
  targetModules: readonly string[] | string;
  /**
   * Modules that stay fully trainable beside the adapters (modules_to_save), e.g. a task head
   * ("classifier"). An entry matches a module whose name ends with it (PEFT's rule). Default none.
   */
  modulesToSave?: readonly string[];
  /** Seed of the A initialisation; each adapter draws from its own stream. Default 1337. */
  seed?: number;
  /**
   * Also match target names against these names of the same modules (e.g. HF's
   * `transformer.h.0.attn.c_attn` for our `h.0.attn.c_attn`), so a regular expression written
   * for the HF names selects the same modules. Default: our names only.
   */
  aliases?: (name: string) => string;
}

/** What `applyLoRA` did. */
export interface LoRASummary {
  /** Dotted names of the modules that got adapters, in module order. */
  adapters: string[];
  /** Parameter elements that still require grad (adapters + modulesToSave). */
  trainable: number;
  /** All parameter elements of the adapted model (adapters included, as PEFT counts). */
  total: number;
  /** List entries of targetModules that matched no Linear (a typo, or another model's name). */
  unmatched: string[];
}

const DEFAULT_SEED = 1337;

/** A stable per-adapter seed (FNV-1a of the name, mixed with the base seed), as GPT's init does. */
function _loraSeed(base: number, name: string): number {
  let h = 2166136261 ^ base;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 16777619);
  return (h >>> 0) + (base % 2 ** 20) * 2 ** 20;
}

/** Checks r, alpha and dropout; errors name the bad value. */
export function validateLoRAConfig(c: LoRAConfig, where = "LoRA"): Required<LoRAConfig> {
  if (!Number.isInteger(c.r) || c.r < 1) throw new ValueError(`${where}: r must be an integer >= 1, got ${JSON.stringify(c.r)}`);
  if (typeof c.alpha !== "number" || !Number.isFinite(c.alpha) || c.alpha <= 0) {
    throw new ValueError(`${where}: alpha must be a finite number > 0, got ${JSON.stringify(c.alpha)}`);
  }
  const dropout = c.dropout ?? 0;
  if (typeof dropout !== "number" || !(dropout >= 0 && dropout < 1)) throw new ValueError(`${where}: dropout must be in [0, 1), got ${JSON.stringify(c.dropout)}`);
  return { r: c.r, alpha: c.alpha, dropout };
}

/**
 * A frozen Linear plus a trainable low-rank update: y = base(x) + B(A(dropout(x))) * alpha / r.
 * @example
 * const l = new LoRALinear(block.attn.c_attn as Linear, { r: 8, alpha: 16 }, { name: "h.0.attn.c_attn" });
 * block.attn.setModule("c_attn", l);
 * const y = l.forward(x);            // x (B, T, 768) -> y (B, T, 2304); equals the base at init (B = 0)
 */
export class LoRALinear extends Module implements Projection {
  /** The base weight [out, in]: the wrapped Linear's own tensor, frozen. */
  readonly weight: Parameter;
  /** The base bias [out] (shared, frozen), or null. */
  readonly bias: Parameter | null;
  /** Down projection in -> r: weight [r, in], kaiming-uniform init. */
  readonly lora_A: Linear;
  /** Up projection r -> out: weight [out, r], zero init. */
  readonly lora_B: Linear;
  readonly lora_dropout: Dropout;
  readonly r: number;
  readonly alpha: number;
  /** alpha / r: what the update is multiplied by. */
  readonly scaling: number;
  readonly inFeatures: number;
  readonly outFeatures: number;
  /** The Linear this wraps (not registered; its tensors are), handed back by `merge()`. */
  readonly base: Linear;
  private merged = false;

  /**
   * Wraps `base` (whose weight and bias become frozen). `name` keys A's random stream: give
   * the module's dotted name so each adapter gets its own values.
   */
  constructor(base: Linear, config: LoRAConfig, opts: { seed?: number; name?: string } = {}) {
    super();
    const c = validateLoRAConfig(config);
    if (!(base instanceof Linear)) throw new ValueError(`LoRALinear: the base must be a Linear, got ${(base as Module)?.constructor?.name}`);
    this.base = base;
    this.inFeatures = base.inFeatures;
    this.outFeatures = base.outFeatures;
    this.r = c.r;
    this.alpha = c.alpha;
    this.scaling = c.alpha / c.r;
    this.weight = this.param("weight", base.weight, false);
    this.bias = base.bias ? this.param("bias", base.bias, false) : null;
    this.lora_dropout = this.module("lora_dropout", new Dropout(c.dropout));
    this.lora_A = this.module("lora_A", new Linear(this.inFeatures, c.r, { bias: false }));
    this.lora_B = this.module("lora_B", new Linear(c.r, this.outFeatures, { bias: false }));
    const seed = _loraSeed(opts.seed ?? DEFAULT_SEED, `${opts.name ?? ""}.lora_A.weight`);
    noGradScope(() => {
      // kaiming_uniform_(a=sqrt(5)): gain sqrt(2 / (1 + 5)), bound gain * sqrt(3 / fan_in) = 1 / sqrt(fan_in).
      const bound = 1 / Math.sqrt(this.inFeatures);
      const u = rand([c.r, this.inFeatures], { seed });                     // [r, in] in [0, 1)
      const a = u.mul(2 * bound);
      const w = a.sub(bound);
      this.lora_A.weight.copy_(w);
      for (const t of [u, a, w]) t.dispose();
      this.lora_B.weight.zero_();
    });
    // The stand-in takes the mode of the layer it replaces (an eval-mode model stays in eval: no adapter dropout).
    this.train(base.training);
  }

  /** x (..., in) -> (..., out): the frozen base plus the scaled low-rank update. */
  forward(x: Tensor): Tensor {
    if (this.merged) throw new ValueError("LoRALinear.forward: this adapter was merged into its base; use the Linear merge() returned");
    if (x.ndim < 1 || x.shape[x.ndim - 1] !== this.inFeatures) {
      throw new ValueError(`LoRALinear.forward: x must be (..., ${this.inFeatures}), got ${fmtShape(x.shape)}`);
    }
    const y = this.base.forward(x);                                           // (..., out)
    const h = this.training && this.lora_dropout.p > 0 ? this.lora_dropout.forward(x) : x;
    const a = this.lora_A.forward(h);                                         // (..., r)
    const b = this.lora_B.forward(a);                                         // (..., out)
    const s = b.mul(this.scaling);
    // Under autocast both products come out in the same low precision; outside it both are x's dtype.
    const out = y.add(s.dtype === y.dtype ? s : s.to(y.dtype));               // (..., out)
    for (const t of [y, a, b, s]) t.dispose();
    if (h !== x) h.dispose();
    return out;
  }

  /** The update this adapter adds to the base weight: B @ A * alpha / r, [out, in] (no grad). */
  delta(): Tensor {
    return noGradScope(() => {
      const ba = this.lora_B.weight.matmul(this.lora_A.weight);               // [out, r] @ [r, in] = [out, in]
      const d = ba.mul(this.scaling);
      ba.dispose();
      return d;
    });
  }

  /**
   * Folds the update into the base weight in place and returns the base Linear, which then
   * computes what this module computed. The adapters are freed; this module cannot run after.
   */
  merge(): Linear {
    if (this.merged) throw new ValueError("LoRALinear.merge: already merged");
    noGradScope(() => {
      const d = this.delta();                                                 // [out, in]
      const dd = d.dtype === this.weight.dtype ? d : d.to(this.weight.dtype);
      const w = this.weight.add(dd);
      this.weight.copy_(w);
      for (const t of new Set([d, dd, w])) t.dispose();
    });
    this.merged = true;
    for (const p of [this.lora_A.weight, this.lora_B.weight]) {
      p.grad?.dispose();
      p.grad = null;
      p.dispose();
    }
    return this.base;
  }
}

/** Whether `name` is selected by `targets` (PEFT's rules: list = name or dotted suffix; string = full regex). */
function _matches(targets: readonly string[] | string, name: string): string | null {
  if (typeof targets === "string") {
    let re: RegExp;
    try {
      re = new RegExp(`^(?:${targets})$`);
    } catch (e) {
      throw new ValueError(`LoRA: targetModules ${JSON.stringify(targets)} is a string, hence a regular expression, and it does not compile (${(e as Error).message}); pass a list of module names instead`);
    }
    return re.test(name) ? targets : null;
  }
  return targets.find((t) => name === t || name.endsWith(`.${t}`)) ?? null;
}

/** The parent module of a dotted path and the child's own name (registered names may contain dots: "h.0"). */
function _parentOf(model: Module, path: string): { parent: Module; name: string } {
  const target = model.getSubmodule(path);
  for (let dot = path.lastIndexOf("."); dot > 0; dot = path.lastIndexOf(".", dot - 1)) {
    let parent: Module;
    try {
      parent = model.getSubmodule(path.slice(0, dot));
    } catch {
      continue;  // the prefix is not a module path ("h" of "h.0"): try a shorter one
    }
    const name = path.slice(dot + 1);
    if (parent.getSubmodule(name) === target) return { parent, name };
  }
  return { parent: model, name: path };
}

/** "h.0.attn.c_attn", "h.1.attn.c_attn" -> "h.*.attn.c_attn": a short list of a model's Linear names for errors. */
function _namePatterns(names: readonly string[]): string[] {
  return [...new Set(names.map((n) => n.replace(/\.\d+(?=\.|$)/g, ".*")))];
}

/** Linear (and LoRALinear) modules `targets` selects, which list entries matched, and every Linear name. */
function _select(model: Module, targets: readonly string[] | string, aliases?: (name: string) => string): { chosen: string[]; used: Set<string>; linears: string[] } {
  if (typeof targets === "string" ? targets === "" : targets.length === 0) throw new ValueError("LoRA: targetModules is empty; name at least one Linear module (e.g. [\"c_attn\"])");
  const linears = model.namedModules()
    .filter(([n, m]) => n !== "" && (m instanceof Linear || m instanceof LoRALinear) && !/(^|\.)lora_[AB]$/.test(n))
    .map(([n]) => n);
  const chosen: string[] = [];
  const used = new Set<string>();
  for (const name of linears) {
    const hit = _matches(targets, name) ?? (aliases ? _matches(targets, aliases(name)) : null);
    if (hit === null) continue;
    chosen.push(name);
    used.add(hit);
  }
  return { chosen, used, linears };
}

/**
 * The names of the Linear modules `targetModules` selects (applyLoRA's rule; `aliases` as in
 * LoRAOptions), without changing the model. Modules that already carry an adapter count.
 * @example
 * loraTargets(gpt, ["c_attn"]);   // ["h.0.attn.c_attn", "h.1.attn.c_attn", ...]
 */
export function loraTargets(model: Module, targetModules: readonly string[] | string, aliases?: (name: string) => string): string[] {
  return _select(model, targetModules, aliases).chosen;
}

/**
 * Swaps a LoRALinear in for every Linear that `targetModules` selects and freezes every other
 * parameter (requiresGrad false) except those of `modulesToSave`. Train with
 * `trainableParameters(model)`: an optimizer over `model.parameters()` also works (frozen
 * parameters never get a gradient, and AdamW skips those) but keeps state slots for them.
 * @example
 * const s = applyLoRA(model, { r: 8, alpha: 16, dropout: 0.05, targetModules: ["c_attn"] });
 * console.log(`${s.adapters.length} adapters, ${s.trainable} of ${s.total} parameters train`);
 * const opt = new AdamW(trainableParameters(model), { lr: 1e-4 });
 */
export function applyLoRA(model: Module, opts: LoRAOptions): LoRASummary {
  const c = validateLoRAConfig(opts, "applyLoRA");
  const targets = opts.targetModules;
  const { chosen, used, linears } = _select(model, targets, opts.aliases);
  for (const name of chosen) {
    const m = model.getSubmodule(name);
    if (m instanceof LoRALinear) throw new ValueError(`applyLoRA: ${name} already has a LoRA adapter; mergeLoRA(model) first, or load the adapters into a fresh model`);
    if (_parentOf(model, name).parent instanceof Expert) {
      throw new ValueError(`applyLoRA: ${name} is an MoE expert's projection; the MoE layer multiplies the experts' stacked weights directly, so an adapter there would be ignored. Target the attention projections instead`);
    }
  }
  if (chosen.length === 0) {
    throw new ValueError(`applyLoRA: targetModules ${JSON.stringify(targets)} match none of this model's Linear modules: ${JSON.stringify(_namePatterns(linears))}`);
  }
  const save = opts.modulesToSave ?? [];
  const saved = model.namedModules().filter(([n]) => n !== "" && save.some((s) => n === s || n.endsWith(s))).map(([n]) => n);
  const missingSave = save.filter((s) => !saved.some((n) => n === s || n.endsWith(s)));
  if (missingSave.length) throw new ValueError(`applyLoRA: modulesToSave ${JSON.stringify(missingSave)} match no module of this model (modules: ${JSON.stringify(_namePatterns(model.namedModules().map(([n]) => n).filter((n) => n !== "")).slice(0, 40))})`);
  // Everything is checked: from here on the model changes.
  const seed = opts.seed ?? DEFAULT_SEED;
  for (const name of chosen) {
    const { parent, name: child } = _parentOf(model, name);
    const base = parent.getSubmodule(child) as Linear;
    parent.setModule(child, new LoRALinear(base, c, { seed, name }));
  }
  // Freeze everything but the adapters and the modules to save.
  for (const [name, p] of model.namedParameters()) {
    const adapter = /(^|\.)lora_[AB]\.weight$/.test(name);
    const keep = adapter || saved.some((m) => name.startsWith(`${m}.`));
    if (!keep) {
      p.grad?.dispose();
      p.grad = null;
    }
    p.requiresGrad = keep;
  }
  const unmatched = typeof targets === "string" ? [] : targets.filter((t) => !used.has(t));
  const { trainable, total } = countParameters(model);
  return { adapters: chosen, trainable, total, unmatched };
}

/**
 * Folds every LoRA adapter of `model` into its base weight and puts the plain Linears back
 * (PEFT's merge_and_unload). Returns the names of the merged modules. requiresGrad flags are
 * left as they are.
 * @example
 * mergeLoRA(model);
 * await saveGPT(model, "out/merged");     // a plain model directory
 */
export function mergeLoRA(model: Module): string[] {
  const names = loraModules(model).map(([n]) => n);
  for (const name of names) {
    const { parent, name: child } = _parentOf(model, name);
    const lora = parent.getSubmodule(child) as LoRALinear;
    parent.setModule(child, lora.merge());
  }
  return names;
}

/** The model's LoRALinear modules with their dotted names, in module order. */
export function loraModules(model: Module): Array<[string, LoRALinear]> {
  return model.namedModules().filter((e): e is [string, LoRALinear] => e[1] instanceof LoRALinear);
}

/**
 * The parameters that train (requiresGrad), for the optimizer: after `applyLoRA`, the adapters
 * and the modules to save.
 * @example
 * const opt = new AdamW(trainableParameters(model), { lr: 2e-4, weightDecay: 0 });
 */
export function trainableParameters(model: Module): Parameter[] {
  return model.parameters().filter((p) => p.requiresGrad);
}

/** Parameter elements that train and in all (shared tensors counted once). */
export function countParameters(model: Module): { trainable: number; total: number } {
  let trainable = 0, total = 0;
  for (const p of model.parameters()) {
    total += p.numel;
    if (p.requiresGrad) trainable += p.numel;
  }
  return { trainable, total };
}
