/**
 * The training config: typed, validated JSON with dotted `--set key=value` overrides.
 *
 * zod validates it (the ecosystem's standard schema library: precise paths in errors, and the
 * TypeScript type is derived from the schema, so the two can never drift apart). Keys are
 * snake_case like the JSON users write. Global batch = micro-batch x accumulation x dp is
 * derived, never asked for twice.
 */
import { readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { z } from "zod";
import { ValueError, FormatError } from "../core/errors.js";
import type { GPTMoEConfig } from "../models/index.js";

const posInt = z.number().int().positive();

export const TrainConfigSchema = z
  .object({
    /** Where metrics.jsonl, checkpoints and the final model go. */
    out_dir: z.string().min(1),
    model: z
      .object({
        /** The architecture: "gpt" (decoder, language modelling) or "bert" (encoder, MLM + NSP pretraining). */
        type: z.enum(["gpt", "bert"]).default("gpt"),
        n_layer: posInt,
        n_head: posInt,
        n_embd: posInt,
        block_size: posInt,
        vocab_size: posInt.default(50304),
        dropout: z.number().min(0).lt(1).default(0),
        bias: z.boolean().default(true),
        /** BERT: the feed-forward width (null = 4 x n_embd). */
        intermediate_size: posInt.nullable().default(null),
        /** BERT: token-type (segment) vocabulary: 2 for sentence pairs. */
        type_vocab_size: posInt.default(2),
        /** Load initial weights from a model directory (ours or Hugging Face GPT-2 / BERT) instead of random init. */
        init_from: z.string().nullable().default(null),
        /** Mixture of experts in the MLP slot (src/nn/moe.ts); null = dense. */
        moe: z
          .object({
            /** Experts per MoE layer. */
            num_experts: posInt,
            /** Experts per token: 1 (Switch) or 2 (GShard, Mixtral). */
            top_k: z.union([z.literal(1), z.literal(2)]),
            /** Training: slots per expert = ceil(capacity_factor x tokens x top_k / num_experts); the overflow is dropped. */
            capacity_factor: z.number().positive().default(1.25),
            /** The capacity factor in eval, generation and serving. */
            eval_capacity_factor: z.number().positive().default(2.0),
            /** Weight of the load-balancing loss (Switch/GShard) in the training loss. */
            aux_loss_coef: z.number().nonnegative().finite().default(0.01),
            /** Weight of the router z-loss (ST-MoE) in the training loss. */
            z_loss_coef: z.number().nonnegative().finite().default(0.001),
            /** An MoE MLP in every k-th block (blocks k-1, 2k-1, ...); 1 = every block. */
            every: posInt.default(1),
            /** Training: router input times U(1 - j, 1 + j) noise. */
            router_jitter: z.number().min(0).lt(1).default(0),
          })
          .strict()
          .nullable()
          .default(null),
      })
      .strict(),
    data: z
      .object({
        /** "brown" (built in, prepared on first use) or a directory made by `megalith prepare`. */
        source: z.string().min(1).default("brown"),
        /** Tokenizer for the built-in source: "gpt2" or a tokenizer.json path. */
        tokenizer: z.string().default("gpt2"),
        /** Cache for prepared built-in sources. */
        cache_dir: z.string().default(".cache/megalith/data"),
      })
      .strict()
      .default({}),
    train: z
      .object({
        max_steps: posInt,
        micro_batch_size: posInt.default(8),
        grad_accum_steps: posInt.default(1),
        seed: z.number().int().nonnegative().default(1337),
        /** Global gradient-norm clip (0 disables). */
        grad_clip: z.number().nonnegative().default(1.0),
        log_interval: posInt.default(1),
        /** Recompute activations in backward: false, true / "full" (whole blocks), "selective" (the attention core only). */
        activation_checkpointing: z.union([z.boolean(), z.enum(["full", "selective"])]).default(false),
        /** Mixed precision: compute and stored activations in bf16 or fp16 (fp32 master weights and optimizer state). */
        precision: z.enum(["fp32", "bf16", "fp16"]).default("fp32"),
        /** fp16 dynamic loss scaling: initial scale, x growth_factor after growth_interval finite steps, x backoff_factor and skip on overflow. */
        loss_scale: z
          .object({
            initial: z.number().positive().finite().default(2 ** 16),
            growth_interval: posInt.default(2000),
            growth_factor: z.number().gt(1).default(2),
            backoff_factor: z.number().gt(0).lt(1).default(0.5),
          })
          .strict()
          .default({}),
        /**
         * Peak FLOP/s MFU is reported against. null (default) = this machine's: the planner's
         * profile when present, else a ~300 ms GEMM measurement cached per CPU, threads and
         * dtype (src/train/peak_flops.ts).
         */
        peak_flops: z.number().positive().nullable().default(null),
        /** Consecutive non-finite steps before the run stops. */
        max_nonfinite_steps: posInt.default(5),
        /**
         * Write a Chrome/Perfetto trace (chrome://tracing, ui.perfetto.dev) of the first
         * `trace_steps` steps: forward, backward, send/recv, all-reduce, optimizer, idle. Each rank
         * writes `<path>.rank<r>.json`; `megalith launch` merges them into `<path>`. null = off.
         */
        trace: z.string().min(1).nullable().default(null),
        /** Steps traced when `trace` is set. */
        trace_steps: posInt.default(3),
      })
      .strict(),
    optimizer: z
      .object({
        lr: z.number().positive().default(1e-3),
        min_lr: z.number().nonnegative().nullable().default(null),
        warmup_steps: z.number().int().nonnegative().default(0),
        /** Step where cosine decay reaches min_lr; null = max_steps. */
        decay_steps: posInt.nullable().default(null),
        betas: z.tuple([z.number().min(0).lt(1), z.number().min(0).lt(1)]).default([0.9, 0.95]),
        eps: z.number().nonnegative().default(1e-8),
        weight_decay: z.number().nonnegative().default(0.1),
      })
      .strict()
      .default({}),
    eval: z
      .object({
        /** Evaluate on the validation split every N steps (0 = only at the end). */
        interval: z.number().int().nonnegative().default(0),
        batches: posInt.default(10),
      })
      .strict()
      .default({}),
    checkpoint: z
      .object({
        /** Save every N steps (0 = only at the end). */
        interval: z.number().int().nonnegative().default(0),
        /** Complete checkpoints kept in out_dir. */
        keep: posInt.default(2),
      })
      .strict()
      .default({}),
    /**
     * Fine-tuning (`megalith finetune`): a task on labelled data instead of pretraining. null =
     * pretraining (language modelling for GPT, MLM + NSP for BERT) on `data`.
     */
    finetune: z
      .object({
        /** "classify": a sequence-classification head; "sft": loss on completion tokens only. */
        task: z.enum(["classify", "sft"]),
        /** A JSONL file (or CSV for classify). */
        data: z.string().min(1),
        /** classify: the text column / key. */
        text_field: z.string().min(1).default("text"),
        /** classify: the label column / key (strings or integers). */
        label_field: z.string().min(1).default("label"),
        /** sft: the prompt and completion keys ({prompt, completion} rows), or a chat `messages` list. */
        prompt_field: z.string().min(1).default("prompt"),
        completion_field: z.string().min(1).default("completion"),
        messages_field: z.string().min(1).default("messages"),
        /** Fraction of examples held out (seeded shuffle by train.seed) for evaluation. */
        val_fraction: z.number().min(0).lt(1).default(0.2),
        /** Tokens per example (longer ones are truncated); null = model.block_size. */
        max_len: posInt.nullable().default(null),
        /** classify pooling: "auto" ([CLS] pooler for BERT, last token for GPT), "cls", "last" or "mean". */
        pooling: z.enum(["auto", "cls", "last", "mean"]).default("auto"),
        /** LoRA adapters (PEFT layout): only adapters and the task head train. null = full fine-tuning. */
        lora: z
          .object({
            r: posInt.default(8),
            alpha: z.number().positive().default(16),
            dropout: z.number().min(0).lt(1).default(0),
            /** Linear module names to adapt (null = the attention projections: c_attn for GPT, query/value for BERT). */
            target_modules: z.array(z.string().min(1)).min(1).nullable().default(null),
          })
          .strict()
          .nullable()
          .default(null),
      })
      .strict()
      .nullable()
      .default(null),
    parallel: z
      .object({
        /** Data-parallel size; the product of all axes must equal the number of ranks. */
        dp: posInt.default(1),
        /** ZeRO stage: 0 (plain DP), 1, 2 or 3. */
        zero: z.union([z.literal(0), z.literal(1), z.literal(2), z.literal(3)]).default(0),
        /** Data parallel (zero = 0): MiB of gradients per all-reduce bucket (PyTorch DDP's bucket_cap_mb). */
        bucket_mb: z.number().positive().default(25),
        /** ZeRO-3: gather the next block's parameters while the current one computes. */
        zero3_prefetch: z.boolean().default(true),
        /** dtype of data-parallel gradient reductions: fp32, or bf16 to halve the bytes on the wire. */
        reduce_dtype: z.enum(["fp32", "bf16"]).default("fp32"),
        /**
         * ZeRO-Infinity-style offload of AdamW's moments (src/optim/offload.ts): "none" keeps them in
         * memory; "disk" keeps each rank's (shard of) m and v in a scratch file, streamed in chunks.
         */
        offload: z.enum(["none", "disk"]).default("none"),
        /** Directory of the offload files, one per rank (null = <out_dir>/offload). */
        offload_dir: z.string().min(1).nullable().default(null),
        /** MiB of optimizer state (m and v) per streamed chunk: resident memory is 4 chunks (one tensor, three host buffers). */
        offload_chunk_mb: z.number().positive().max(1024).default(32),
        /**
         * Expert-parallel size (model.moe): each MoE layer's experts are split over ep ranks and
         * replicated over dp / ep (DeepSpeed-MoE, Megatron); ep divides dp, and every one of the
         * dp ranks still reads its own data. With ZeRO stages 0 and 1.
         */
        ep: posInt.default(1),
        /** Tensor-parallel size (Megatron 1D: heads, MLP and vocabulary split over tp ranks). */
        tp: posInt.default(1),
        /** Sequence parallelism in the layernorm/dropout regions (needs tp > 1). */
        sp: z.boolean().default(false),
        /** Pipeline stages. dp x tp x pp must equal the number of ranks. */
        pp: posInt.default(1),
        /** Pipeline schedule: GPipe, 1F1B (PipeDream-Flush), or interleaved 1F1B. */
        pp_schedule: z.enum(["gpipe", "1f1b", "interleaved"]).default("1f1b"),
        /** Micro-batches per step in the pipeline (null = train.grad_accum_steps; set, it is the accumulation count). */
        pp_microbatches: posInt.nullable().default(null),
        /** Interleaved schedule: model chunks per rank (v). */
        pp_virtual_stages: posInt.default(1),
        /** Explicit layers per stage, e.g. [3, 5] (null = an even split). */
        pp_layers: z.array(posInt).nullable().default(null),
      })
      .strict()
      .default({}),
  })
  .strict();

export type TrainConfig = z.infer<typeof TrainConfigSchema>;

/** Strips default/optional/nullable wrappers; `nullable` records whether null is accepted. */
function unwrapSchema(schema: z.ZodTypeAny): { inner: z.ZodTypeAny; nullable: boolean } {
  let s = schema;
  let nullable = false;
  for (;;) {
    if (s instanceof z.ZodDefault) s = s.removeDefault();
    else if (s instanceof z.ZodOptional) s = s.unwrap();
    else if (s instanceof z.ZodNullable) {
      nullable = true;
      s = s.unwrap();
    } else if (s instanceof z.ZodEffects) s = s.innerType();
    else return { inner: s, nullable };
  }
}

/** The schema of the value at a dotted path, or undefined for keys the schema does not know. */
function schemaAt(path: readonly string[]): z.ZodTypeAny | undefined {
  let s: z.ZodTypeAny = TrainConfigSchema;
  for (const key of path) {
    const { inner } = unwrapSchema(s);
    if (!(inner instanceof z.ZodObject)) return undefined;
    const shape = inner.shape as Record<string, z.ZodTypeAny>;
    if (!Object.hasOwn(shape, key)) return undefined;
    s = shape[key]!;
  }
  return s;
}

/**
 * Parses a `--set` value. For a key whose schema is a string (out_dir, data.source...), the raw
 * text is the value: `out_dir=2024` is the directory "2024", not a number that then fails
 * validation. A quoted JSON string is still unquoted, and `null` stays null where the key is
 * nullable (model.init_from=null). Every other key gets JSON when it parses (numbers, booleans,
 * null, arrays), else the raw string, which validation then reports with its path.
 */
function parseValue(path: readonly string[], raw: string): unknown {
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw);
  } catch {
    return raw;
  }
  const schema = schemaAt(path);
  if (schema) {
    const { inner, nullable } = unwrapSchema(schema);
    if (inner instanceof z.ZodString && typeof parsed !== "string" && !(parsed === null && nullable)) return raw;
  }
  return parsed;
}

/**
 * Applies dotted overrides ("train.max_steps=20") to a raw config object (before validation).
 * Unknown top-level sections are created so validation reports them with their path.
 */
export function applyOverrides(raw: Record<string, unknown>, sets: readonly string[]): Record<string, unknown> {
  const out = structuredClone(raw);
  for (const s of sets) {
    const eq = s.indexOf("=");
    if (eq <= 0) throw new ValueError(`--set ${JSON.stringify(s)}: expected key=value, e.g. --set train.max_steps=20`);
    const path = s.slice(0, eq).split(".");
    if (path.some((p) => p === "" || p === "__proto__" || p === "constructor" || p === "prototype")) {
      throw new ValueError(`--set ${JSON.stringify(s)}: invalid key path`);
    }
    let obj: Record<string, unknown> = out;
    for (const key of path.slice(0, -1)) {
      const next = obj[key];
      if (next === undefined || next === null) obj[key] = {};  // a key inside an unset section (model.moe=null) creates it
      else if (typeof next !== "object" || next === null || Array.isArray(next)) {
        throw new ValueError(`--set ${JSON.stringify(s)}: ${key} is not a section`);
      }
      obj = obj[key] as Record<string, unknown>;
    }
    obj[path[path.length - 1]!] = parseValue(path, s.slice(eq + 1));
  }
  return out;
}

/** A `--set key=value` item split into its dotted key and raw value text. */
interface Override {
  item: string;
  key: string;
  value: string;
}

function parseOverrideItems(sets: readonly string[]): Override[] {
  return sets.flatMap((item) => {
    const eq = item.indexOf("=");
    return eq > 0 ? [{ item, key: item.slice(0, eq), value: item.slice(eq + 1) }] : [];
  });
}

/** The last override that set `path` (or a section above it), if any: the one a problem is about. */
function overrideFor(path: string, overrides: readonly Override[]): Override | undefined {
  for (let i = overrides.length - 1; i >= 0; i--) {
    const o = overrides[i]!;
    if (path === o.key || path.startsWith(`${o.key}.`)) return o;
  }
  return undefined;
}

/** Edit distance, for "did you mean" on unknown keys. */
function editDistance(a: string, b: string): number {
  const d = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let prev = d[0]!;
    d[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const cur = d[j]!;
      d[j] = Math.min(d[j]! + 1, d[j - 1]! + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = cur;
    }
  }
  return d[b.length]!;
}

/** One problem as a line: `  --set k=v: ...` when an override caused it, else `  dotted.path: ...`. */
function issueLines(issue: z.ZodIssue, overrides: readonly Override[]): Array<{ line: string; fromOverride: boolean }> {
  const path = issue.path.join(".");
  if (issue.code === "unrecognized_keys") {
    // One line per unknown key, so an unknown key typed in --set names that --set item.
    return issue.keys.map((k) => {
      const full = path ? `${path}.${k}` : k;
      const o = overrideFor(full, overrides);
      const section = schemaAt(issue.path.map(String));
      const known = section ? unwrapSchema(section).inner : undefined;
      const keys = known instanceof z.ZodObject ? Object.keys(known.shape as object) : [];
      const near = keys.map((c) => [c, editDistance(k, c)] as const).filter(([, dist]) => dist <= 2).sort((a, b) => a[1] - b[1])[0]?.[0];
      const hint = near ? ` (did you mean ${path ? `${path}.` : ""}${near}?)` : keys.length ? ` (${path || "the config"} has ${keys.join(", ")})` : "";
      return o
        ? { line: `  --set ${o.item}: there is no key ${full}${hint}`, fromOverride: true }
        : { line: `  ${path || "(root)"}: Unrecognized key(s) in object: '${k}'${hint}`, fromOverride: false };
    });
  }
  const o = overrideFor(path, overrides);
  if (!o) return [{ line: `  ${path || "(root)"}: ${issue.message}`, fromOverride: false }];
  const expected = issue.code === "invalid_type" ? `expected ${issue.expected}, got ${JSON.stringify(o.value)} (${issue.received})` : issue.message;
  return [{ line: `  --set ${o.item}: ${path === o.key ? "" : `${path}: `}${expected}`, fromOverride: true }];
}

/** The error for a list of problems: the header names the file, the overrides, or both. */
function invalidConfig(source: string, lines: ReadonlyArray<{ line: string; fromOverride: boolean }>): ValueError {
  const fromOverrides = lines.filter((l) => l.fromOverride).length;
  const header = fromOverrides === 0 ? `${source} is invalid:`
    : fromOverrides === lines.length ? `invalid --set override${fromOverrides > 1 ? "s" : ""} (for ${source}):`
      : `${source} with its --set overrides is invalid:`;
  return new ValueError(`${header}\n${lines.map((l) => l.line).join("\n")}`);
}

/**
 * Validates a raw config; the error lists every problem with its dotted path. Problems caused by
 * one of `overrides` (the `--set` items already applied to `raw`) name that item, its value and
 * what was expected, instead of blaming the file.
 */
export function validateConfig(raw: unknown, source = "config", overrides: readonly string[] = []): TrainConfig {
  const items = parseOverrideItems(overrides);
  const r = TrainConfigSchema.safeParse(raw);
  if (!r.success) throw invalidConfig(source, r.error.issues.flatMap((i) => issueLines(i, items)));
  const c = r.data;
  // `also`: other keys the check reads, so an override of any of them is the one named.
  const bad = (key: string, msg: string, also: readonly string[] = []): never => {
    const o = [key, ...also].map((k) => overrideFor(k, items)).find((x) => x !== undefined);
    throw invalidConfig(source, [o ? { line: `  --set ${o.item}: ${key}: ${msg}`, fromOverride: true } : { line: `  ${key}: ${msg}`, fromOverride: false }]);
  };
  if (c.model.n_embd % c.model.n_head !== 0) bad("model.n_embd", `${c.model.n_embd} must be divisible by model.n_head (${c.model.n_head})`, ["model.n_head"]);
  const p = c.parallel;
  // BERT and fine-tuning run with data parallelism and ZeRO (the pp/ep stages are GPT's); BERT
  // pretraining and BERT classifiers also with tensor parallelism (parallel/tensor_parallel_bert.ts).
  const notGptLm = c.model.type === "bert" ? "model.type \"bert\"" : c.finetune ? `finetune.task "${c.finetune.task}"` : null;
  if (notGptLm) {
    const bertTp = c.model.type === "bert" && (!c.finetune || c.finetune.task === "classify");
    for (const axis of bertTp ? (["pp", "ep"] as const) : (["tp", "pp", "ep"] as const)) {
      if (p[axis] > 1) bad(`parallel.${axis}`, `${notGptLm} runs with data parallelism and ZeRO${bertTp ? " and tensor parallelism (parallel.tp)" : " only"}; use parallel.${axis}=1 (got ${p[axis]})`);
    }
    if (p.sp) bad("parallel.sp", `${notGptLm} has no sequence parallelism; use parallel.sp=false`);
    if (p.tp > 1 && c.finetune?.lora) bad("finetune.lora", `LoRA adapters do not combine with tensor parallelism (parallel.tp=${p.tp}); use parallel.tp=1 with LoRA`, ["parallel.tp"]);
  }
  if (c.model.type === "bert" && c.model.moe) bad("model.moe", "BERT has no mixture-of-experts layers; use model.moe=null with model.type \"bert\"", ["model.type"]);
  if (c.finetune?.task === "sft" && c.model.type === "bert") bad("finetune.task", "sft trains a causal language model; it needs model.type \"gpt\"", ["model.type"]);
  if (c.finetune?.lora && p.zero === 3) bad("finetune.lora", "ZeRO-3 shards every parameter, frozen ones included; use parallel.zero 0, 1 or 2 with LoRA", ["parallel.zero"]);
  const moe = c.model.moe;
  if (moe) {
    if (moe.top_k > moe.num_experts) bad("model.moe.top_k", `${moe.top_k} exceeds model.moe.num_experts (${moe.num_experts})`, ["model.moe.num_experts"]);
    if (moe.every > c.model.n_layer) bad("model.moe.every", `${moe.every} exceeds model.n_layer (${c.model.n_layer}): no block would hold experts`, ["model.n_layer"]);
    // tp replicates the MoE MLPs (parallel/tensor_parallel.ts); each pp stage backpropagates its own router losses (pipeline.ts).
    if (p.sp) bad("model.moe", `sequence parallelism would route token shards through the tp-replicated experts (a capacity per shard, not per batch); use parallel.sp=false with model.moe`, ["parallel.sp"]);
    if (p.ep > 1 && (p.tp > 1 || p.pp > 1)) bad("parallel.ep", `expert parallelism (parallel.ep=${p.ep}) does not combine with tensor or pipeline parallelism yet (parallel.tp=${p.tp}, parallel.pp=${p.pp}); use parallel.ep=1 there (the experts are then replicated)`, ["parallel.tp", "parallel.pp"]);
    const ac = c.train.activation_checkpointing;
    if (ac === true || ac === "full") bad("model.moe", `full activation checkpointing frees the router losses of each block; use train.activation_checkpointing "selective" or false with MoE`, ["train.activation_checkpointing"]);
  }
  if (p.ep > 1) {
    if (!moe) return bad("parallel.ep", `expert parallelism (parallel.ep=${p.ep}) shards the experts of model.moe, which is null (a dense model); set model.moe or parallel.ep=1`, ["model.moe"]);
    if (moe.num_experts % p.ep !== 0) bad("parallel.ep", `model.moe.num_experts (${moe.num_experts}) must be divisible by parallel.ep (${p.ep}): each expert-parallel rank holds the same number of experts`, ["model.moe.num_experts"]);
    if (p.dp % p.ep !== 0) bad("parallel.ep", `${p.ep} must divide parallel.dp (${p.dp}): the expert-parallel ranks are a subset of the data-parallel ones (experts replicated over dp / ep)`, ["parallel.dp"]);
    if (p.zero >= 2) bad("parallel.ep", `expert parallelism combines with ZeRO stages 0 and 1 only (parallel.zero=${p.zero}); use parallel.zero=0 or 1 with parallel.ep=${p.ep}`, ["parallel.zero"]);
  }
  if (p.tp > 1 && c.model.n_head % p.tp !== 0) bad("parallel.tp", `model.n_head (${c.model.n_head}) must be divisible by parallel.tp (${p.tp}): each tensor-parallel rank holds whole heads`, ["model.n_head"]);
  if (p.tp > 1 && c.model.type === "bert" && c.model.intermediate_size !== null) {
    if (c.model.intermediate_size % p.tp !== 0) bad("parallel.tp", `model.intermediate_size (${c.model.intermediate_size}) must be divisible by parallel.tp (${p.tp}): each tensor-parallel rank holds intermediate_size / tp hidden units`, ["model.intermediate_size"]);
  } else if (p.tp > 1 && (4 * c.model.n_embd) % p.tp !== 0) bad("parallel.tp", `the MLP width 4 x model.n_embd (${4 * c.model.n_embd}) must be divisible by parallel.tp (${p.tp})`, ["model.n_embd"]);
  if (p.sp && p.tp === 1) bad("parallel.sp", "sequence parallelism shards along tensor-parallel ranks: it needs parallel.tp > 1");
  if (p.sp && c.model.block_size % p.tp !== 0) bad("parallel.sp", `model.block_size (${c.model.block_size}) must be divisible by parallel.tp (${p.tp}) to shard the sequence`, ["model.block_size"]);
  if (p.pp_microbatches !== null && p.pp > 1) {
    if (c.train.grad_accum_steps !== 1 && c.train.grad_accum_steps !== p.pp_microbatches) {
      bad("parallel.pp_microbatches", `${p.pp_microbatches} conflicts with train.grad_accum_steps (${c.train.grad_accum_steps}): in a pipeline the micro-batches are the accumulation steps; set one of them`);
    }
    c.train.grad_accum_steps = p.pp_microbatches;
  }
  if (p.pp_virtual_stages > 1 && p.pp_schedule !== "interleaved") bad("parallel.pp_virtual_stages", `${p.pp_virtual_stages} model chunks per rank need parallel.pp_schedule "interleaved" (got "${p.pp_schedule}")`);
  if (p.pp > 1) {
    const v = p.pp_schedule === "interleaved" ? p.pp_virtual_stages : 1;
    const chunks = p.pp * v;
    if (p.pp_layers !== null) {
      if (p.pp_layers.length !== chunks) bad("parallel.pp_layers", `lists ${p.pp_layers.length} stages, expected ${chunks} (parallel.pp${v > 1 ? " x parallel.pp_virtual_stages" : ""})`);
      const sum = p.pp_layers.reduce((a, b) => a + b, 0);
      if (sum !== c.model.n_layer) bad("parallel.pp_layers", `${JSON.stringify(p.pp_layers)} sums to ${sum}, expected model.n_layer (${c.model.n_layer})`);
    } else if (c.model.n_layer % chunks !== 0) {
      bad(v > 1 ? "parallel.pp_virtual_stages" : "parallel.pp", `model.n_layer (${c.model.n_layer}) must be divisible by ${v > 1 ? `parallel.pp x parallel.pp_virtual_stages (${p.pp} x ${v})` : `parallel.pp (${p.pp})`}, or give parallel.pp_layers`);
    }
    if (p.pp_schedule === "interleaved" && v < 2) bad("parallel.pp_virtual_stages", `the interleaved schedule needs at least 2 model chunks per rank, got ${v}`);
    if (p.pp_schedule === "interleaved" && c.train.grad_accum_steps % p.pp !== 0) bad("parallel.pp_microbatches", `the interleaved schedule needs micro-batches (${c.train.grad_accum_steps}) divisible by parallel.pp (${p.pp})`);
    if (p.zero >= 2) bad("parallel.zero", `ZeRO-${p.zero} shards gradients every micro-batch, which pipeline parallelism cannot combine with (as in DeepSpeed); use parallel.zero=1 or 0 with parallel.pp=${p.pp}`);
  } else if (p.pp_layers !== null && p.pp_layers.length !== 1) bad("parallel.pp_layers", `lists ${p.pp_layers.length} stages but parallel.pp is 1`);
  if (p.offload === "disk") {
    // Offload streams the optimizer's flat state; the tp/pp/ep optimizers and checkpoints are other paths.
    for (const axis of ["tp", "pp", "ep"] as const) {
      if (p[axis] > 1) bad("parallel.offload", `"disk" offloads the optimizer of data-parallel and ZeRO layouts only; it does not combine with parallel.${axis}=${p[axis]} yet (use parallel.offload "none" or parallel.${axis}=1)`, [`parallel.${axis}`]);
    }
  }
  return c;
}

/**
 * The model's MoE section as the GPT config wants it (GPTConfig.moe), or null for a dense model.
 * @example
 * new GPT({ ...dims, moe: moeConfigOf(c) });
 */
export function moeConfigOf(c: TrainConfig): GPTMoEConfig | null {
  const m = c.model.moe;
  if (!m) return null;
  return {
    numExperts: m.num_experts, topK: m.top_k, capacityFactor: m.capacity_factor, evalCapacityFactor: m.eval_capacity_factor,
    auxLossCoef: m.aux_loss_coef, zLossCoef: m.z_loss_coef, every: m.every, routerJitter: m.router_jitter,
  };
}

/** Ranks the config's layout needs: dp x tp x pp (ep splits dp, it adds no ranks). */
export function worldSizeOf(c: TrainConfig): number {
  return c.parallel.dp * c.parallel.tp * c.parallel.pp;
}

/** Reads a config file, applies overrides, validates. */
export function loadConfig(file: string, sets: readonly string[] = []): TrainConfig {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(file, "utf8"));
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.code === "ENOENT") throw new ValueError(`config file ${file} not found`);
    if (err.code === "EISDIR") throw new ValueError(`--config ${file} is a directory; pass a JSON file${configsIn(file)}`);
    if (err.code) throw new ValueError(`config file ${file} cannot be read: ${err.message}`);
    throw new FormatError(file, `not valid JSON (${err.message})`);
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) throw new FormatError(file, "must contain a JSON object");
  return validateConfig(applyOverrides(raw as Record<string, unknown>, sets), file, sets);
}

/** ", e.g. DIR/a.json (it holds a.json, b.json)" for a directory holding JSON files, else "". */
function configsIn(dir: string): string {
  let names: string[] = [];
  try {
    names = readdirSync(dir).filter((n) => n.endsWith(".json")).sort();
  } catch {
    return "";
  }
  return names.length ? `, e.g. ${join(dir, names[0]!)} (it holds ${names.slice(0, 6).join(", ")}${names.length > 6 ? ", ..." : ""})` : "";
}

/** Tokens per optimizer step (global batch), derived. */
export function tokensPerStep(c: TrainConfig): number {
  return c.train.micro_batch_size * c.train.grad_accum_steps * c.parallel.dp * c.model.block_size;
}
