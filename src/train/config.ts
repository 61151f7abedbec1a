/**
 * The training config: typed, validated JSON with dotted `--set key=value` overrides.
 *
 * zod validates it (the ecosystem's standard schema library: precise paths in errors, and the
 * TypeScript type is derived from the schema, so the two can never drift apart). Keys are
 * snake_case like the JSON users write. Global batch = micro-batch x accumulation x dp is
 * derived, never asked for twice.
 */
import { readFileSync } from "node:fs";
import { z } from "zod";
import { ValueError, FormatError } from "../core/errors.js";

const posInt = z.number().int().positive();

export const TrainConfigSchema = z
  .object({
    /** Where metrics.jsonl, checkpoints and the final model go. */
    out_dir: z.string().min(1),
    model: z
      .object({
        n_layer: posInt,
        n_head: posInt,
        n_embd: posInt,
        block_size: posInt,
        vocab_size: posInt.default(50304),
        dropout: z.number().min(0).lt(1).default(0),
        bias: z.boolean().default(true),
        /** Load initial weights from a Hugging Face GPT-2 directory instead of random init. */
        init_from: z.string().nullable().default(null),
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
        /** Peak FLOP/s MFU is reported against (default: 2 cores x ~100 GFLOP/s sgemm measured here). */
        peak_flops: z.number().positive().default(200e9),
        /** Consecutive non-finite steps before the run stops. */
        max_nonfinite_steps: posInt.default(5),
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
      if (next === undefined) obj[key] = {};
      else if (typeof next !== "object" || next === null || Array.isArray(next)) {
        throw new ValueError(`--set ${JSON.stringify(s)}: ${key} is not a section`);
      }
      obj = obj[key] as Record<string, unknown>;
    }
    obj[path[path.length - 1]!] = parseValue(path, s.slice(eq + 1));
  }
  return out;
}

/** Validates a raw config; the error lists every problem with its dotted path. */
export function validateConfig(raw: unknown, source = "config"): TrainConfig {
  const r = TrainConfigSchema.safeParse(raw);
  if (!r.success) {
    const lines = r.error.issues.map((i) => `  ${i.path.join(".") || "(root)"}: ${i.message}`);
    throw new ValueError(`${source} is invalid:\n${lines.join("\n")}`);
  }
  const c = r.data;
  if (c.model.n_embd % c.model.n_head !== 0) {
    throw new ValueError(`${source} is invalid:\n  model.n_embd: ${c.model.n_embd} must be divisible by model.n_head (${c.model.n_head})`);
  }
  return c;
}

/** Reads a config file, applies overrides, validates. */
export function loadConfig(file: string, sets: readonly string[] = []): TrainConfig {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(file, "utf8"));
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.code === "ENOENT") throw new ValueError(`config file ${file} not found`);
    throw new FormatError(file, `not valid JSON (${err.message})`);
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) throw new FormatError(file, "must contain a JSON object");
  return validateConfig(applyOverrides(raw as Record<string, unknown>, sets), file);
}

/** Tokens per optimizer step (global batch), derived. */
export function tokensPerStep(c: TrainConfig): number {
  return c.train.micro_batch_size * c.train.grad_accum_steps * c.parallel.dp * c.model.block_size;
}
