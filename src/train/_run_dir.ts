/**
 * The trainer's guards around a run directory and a run's size, each a plain function of the
 * config and the files so it is testable without training:
 *
 * - `previousRun` / `clearPreviousRun`: what an earlier run left in out_dir (refused unless
 *   `--resume` or `--overwrite`), and deleting it for `--overwrite`;
 * - `truncateMetrics`: metrics.jsonl cut back to a resumed step, so no step is logged twice;
 * - `checkResumeConfig`: the differences between a checkpoint's config and the current one,
 *   each reported, the ones that break a bit-exact continuation refused;
 * - `checkMemoryBudget`: parameters + gradients + AdamW state against the machine's memory,
 *   before anything is allocated.
 */
import { existsSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { freemem, totalmem } from "node:os";
import { join } from "node:path";
import { ValueError } from "../core/errors.js";
import { TrainConfigSchema, tokensPerStep, type TrainConfig } from "./config.js";

/** What a previous run left in an out_dir. */
export interface PreviousRun {
  /** Entries of out_dir that belong to a run: metrics.jsonl, ckpt-*, final (and their temp names). */
  entries: string[];
  /** "metrics.jsonl (40 rows), 2 checkpoints (newest ckpt-000040), final/" */
  summary: string;
}

const RUN_ENTRY = /^(metrics\.jsonl(\.tmp-.+)?|ckpt-\d+(\.(tmp|old)-.+)?|final(\.(tmp|old)-.+)?)$/;

/**
 * The run files in `outDir`, or null when there are none (missing, empty, or only other files:
 * a config or notes a user keeps beside the run do not count).
 * @example
 * previousRun("runs/x")?.summary // "metrics.jsonl (30 rows), 2 checkpoints (newest ckpt-000030), final/"
 */
export function previousRun(outDir: string): PreviousRun | null {
  let names: string[];
  try {
    names = readdirSync(outDir);
  } catch {
    return null;
  }
  const entries = names.filter((n) => RUN_ENTRY.test(n)).sort();
  if (entries.length === 0) return null;
  const parts: string[] = [];
  if (entries.includes("metrics.jsonl")) {
    let rows = 0;
    try {
      rows = readFileSync(join(outDir, "metrics.jsonl"), "utf8").split("\n").filter((l) => l.trim()).length;
    } catch {
      // unreadable: still a previous run
    }
    parts.push(`metrics.jsonl (${rows} rows)`);
  }
  const ckpts = entries.filter((n) => /^ckpt-\d+$/.test(n));
  if (ckpts.length) parts.push(`${ckpts.length} checkpoint${ckpts.length > 1 ? "s" : ""} (newest ${ckpts[ckpts.length - 1]})`);
  if (entries.includes("final")) parts.push("final/");
  const other = entries.filter((n) => n !== "metrics.jsonl" && n !== "final" && !/^ckpt-\d+$/.test(n)).length;
  if (other) parts.push(`${other} unfinished save${other > 1 ? "s" : ""}`);
  return { entries, summary: parts.join(", ") };
}

/** Deletes a previous run's files (what `--overwrite` promises), leaving anything else in out_dir. */
export function clearPreviousRun(outDir: string, previous: PreviousRun): void {
  for (const n of previous.entries) rmSync(join(outDir, n), { recursive: true, force: true });
}

/**
 * Rewrites metrics.jsonl without the rows logged after `step` optimizer steps: training rows
 * (and skipped-step rows) for steps >= `step`, eval rows for steps > `step` (an eval at `step`
 * ran before that checkpoint was saved), and a torn last line. Written to a temporary name and
 * renamed. Returns the number of rows dropped.
 * @example
 * truncateMetrics("runs/x/metrics.jsonl", 30) // 7: the rows of steps 30..35 and the eval at 35
 */
export function truncateMetrics(file: string, step: number): number {
  if (!existsSync(file)) return 0;
  const lines = readFileSync(file, "utf8").split("\n").filter((l) => l.trim() !== "");
  const keep = lines.filter((l) => {
    let m: { step?: unknown; split?: unknown };
    try {
      m = JSON.parse(l) as typeof m;
    } catch {
      return false;
    }
    if (typeof m.step !== "number") return true;
    return m.split !== undefined ? m.step <= step : m.step < step;
  });
  const dropped = lines.length - keep.length;
  if (dropped === 0) return 0;
  const tmp = `${file}.tmp-${process.pid}`;
  writeFileSync(tmp, keep.map((l) => `${l}\n`).join(""));
  renameSync(tmp, file);
  return dropped;
}

/** Every leaf of a config as dotted key -> JSON text. */
function flatten(x: unknown, prefix = "", out = new Map<string, string>()): Map<string, string> {
  if (x !== null && typeof x === "object" && !Array.isArray(x)) {
    for (const [k, v] of Object.entries(x)) flatten(v, prefix ? `${prefix}.${k}` : k, out);
  } else out.set(prefix, JSON.stringify(x) ?? "(absent)");
  return out;
}

/** Keys that change nothing a resumed run computes: logging, evaluation, saving, speed, layout. */
const HARMLESS = [
  /^out_dir$/, /^parallel\./, /^eval\./, /^checkpoint\./, /^data\.cache_dir$/, /^model\.init_from$/,
  /^train\.(log_interval|peak_flops|max_nonfinite_steps|trace|trace_steps|activation_checkpointing)$/,
];

/** Why changing `key` from `saved` to `now` breaks a bit-exact continuation (null: it does not). */
function breaks(key: string, saved: TrainConfig, now: TrainConfig): string | null {
  if (key === "train.max_steps") {
    return saved.optimizer.decay_steps === null && now.optimizer.decay_steps === null
      ? "the cosine schedule decays over train.max_steps, so every remaining step's learning rate changes (set optimizer.decay_steps to the old max_steps to keep the schedule)"
      : null;
  }
  if (key === "train.micro_batch_size" || key === "train.grad_accum_steps" || key === "parallel.dp") {
    const a = tokensPerStep(saved), b = tokensPerStep(now);
    return a !== b ? `the global batch changes from ${a} to ${b} tokens per step (micro_batch_size x grad_accum_steps x dp x block_size)` : null;
  }
  if (HARMLESS.some((re) => re.test(key))) return null;
  if (key.startsWith("optimizer.")) return "the optimizer's update or learning-rate schedule changes";
  if (key.startsWith("model.")) return "the model differs from the one the checkpoint holds";
  if (key.startsWith("data.")) return "the data differs from what the checkpoint's loader position refers to";
  if (key === "train.seed") return "the seed fixes the data order and dropout masks";
  return "the steps after the checkpoint compute something else";
}

/** Options of `checkResumeConfig()`. */
export interface ResumeConfigOptions {
  /** --allow-config-change: warn about breaking changes instead of refusing them. */
  allow: boolean;
  /** Where the warnings go (the trainer's log). */
  say: (line: string) => void;
  /** The checkpoint directory, named in messages. */
  checkpoint: string;
}

/**
 * Compares the config saved in a checkpoint with the current one: says every difference, and
 * throws a ValueError listing those that break a bit-exact continuation (learning-rate schedule,
 * global batch, seed, model shape, data, precision...) unless `allow`. Layout keys (parallel.*)
 * and logging, eval and checkpoint cadence may change freely: checkpoints are layout-free, and
 * a layout change that keeps the global batch (micro_batch_size x dp) continues the same curve.
 * @example
 * checkResumeConfig(state.config, config, { allow: false, say: console.error, checkpoint: dir });
 */
export function checkResumeConfig(savedRaw: unknown, now: TrainConfig, o: ResumeConfigOptions): void {
  const parsed = TrainConfigSchema.safeParse(savedRaw);
  if (!parsed.success) {
    o.say(`resume: warning: the config in ${o.checkpoint} does not validate against this version (${parsed.error.issues[0]?.message}); not comparing it`);
    return;
  }
  const saved = parsed.data;
  const a = flatten(saved), b = flatten(now);
  const keys = [...new Set([...a.keys(), ...b.keys()])].sort();
  const refused: string[] = [];
  for (const k of keys) {
    const va = a.get(k) ?? "(absent)", vb = b.get(k) ?? "(absent)";
    if (va === vb) continue;
    const why = breaks(k, saved, now);
    o.say(`resume: warning: ${k} differs from the checkpoint's: ${va} -> ${vb}${why ? ` (${why})` : ""}`);
    if (why) refused.push(`${k}: ${va} -> ${vb}: ${why}`);
  }
  if (refused.length && !o.allow) {
    throw new ValueError(`--resume: the config differs from the one ${o.checkpoint} was saved with, in ways that break a bit-exact continuation:\n` +
      `${refused.map((r) => `  ${r}`).join("\n")}\n` +
      "Resume with the checkpoint's values, or pass --allow-config-change to continue anyway.");
  }
}

/**
 * Parameters of a GPT-2 shaped model (with biases; an upper bound without them). With
 * model.moe, every k-th block holds num_experts MLPs and a router instead of one MLP.
 */
export function gptParameterCount(m: TrainConfig["model"]): number {
  const C = m.n_embd;
  const mlp = 8 * C * C + 5 * C;
  const moeLayers = m.moe ? Math.floor(m.n_layer / m.moe.every) : 0;
  const extra = m.moe ? moeLayers * ((m.moe.num_experts - 1) * mlp + C * m.moe.num_experts) : 0;
  return m.vocab_size * C + m.block_size * C + m.n_layer * (12 * C * C + 13 * C) + 2 * C + extra;
}

/**
 * Bytes one rank holds for parameters, gradients and AdamW moments (fp32, 16 per parameter,
 * divided as tp/pp split the model and ZeRO shards it), and a rough floor for the activations
 * a micro-batch keeps for backward: Korthikanti et al.'s s*b*h*(34 + 5*a*s/h) per layer at 16
 * bits, doubled for fp32 (one layer's worth plus the layer inputs under recomputation).
 */
export function trainingStateBytes(c: TrainConfig): { params: number; state: number; activations: number; perRank: number } {
  const params = gptParameterCount(c.model);
  const p = c.parallel, m = c.model;
  const local = params / (p.tp * p.pp);
  const dp = p.dp;
  const weights = 4 * local / (p.zero >= 3 ? dp : 1);
  const grads = 4 * local / (p.zero >= 2 ? dp : 1);
  // parallel.offload "disk": the moments stream from a file, one chunk resident (optim/offload.ts).
  const moments = p.offload === "disk" ? Math.min(8 * local / (p.zero >= 1 ? dp : 1), p.offload_chunk_mb * 2 ** 20) : 8 * local / (p.zero >= 1 ? dp : 1);
  const state = weights + grads + moments;
  const tokens = c.train.micro_batch_size * m.block_size;
  const perLayer = (tokens * (68 * m.n_embd + 10 * m.n_head * m.block_size)) / p.tp;
  const layers = m.n_layer / p.pp;
  const activations = c.train.activation_checkpointing ? perLayer + layers * tokens * m.n_embd * 4 : layers * perLayer;
  return { params, state, activations, perRank: state + activations };
}

/** Memory this process may still use: MemAvailable, capped by a cgroup limit when there is one. */
export function availableBytes(): number {
  let avail = freemem();
  const limit = (process as { constrainedMemory?: () => number | undefined }).constrainedMemory?.();
  if (limit && limit > 0 && limit < totalmem()) avail = Math.min(avail, limit - process.memoryUsage().rss);
  return avail;
}

const gib = (n: number) => `${(n / 2 ** 30).toFixed(n < 2 ** 30 ? 3 : 1)} GiB`;

/**
 * Refuses a config whose parameters, gradients and AdamW state (16 bytes per parameter in
 * fp32, divided as the layout shards them) plus a floor for its activations cannot fit in the
 * memory available, times the ranks sharing this machine. An estimate from below: passing is
 * necessary, not sufficient.
 * @example
 * checkMemoryBudget(config, 1); // throws for model.n_layer=100000
 */
export function checkMemoryBudget(c: TrainConfig, ranksOnMachine = 1, available = availableBytes()): void {
  const { params, state, activations, perRank } = trainingStateBytes(c);
  const need = perRank * Math.max(1, ranksOnMachine);
  if (need <= available) return;
  const m = c.model;
  throw new ValueError(
    `the model is too large for this machine: model.n_layer=${m.n_layer}, n_embd=${m.n_embd}, vocab_size=${m.vocab_size}, block_size=${m.block_size} ` +
      `make ${(params / 1e6).toFixed(1)}M parameters; training them needs at least ${gib(need)}` +
      `${ranksOnMachine > 1 ? ` over the ${ranksOnMachine} ranks on this machine` : ""} (per rank: weights, gradients and AdamW state ${gib(state)}, ` +
      `16 bytes per parameter; activations of a micro-batch ${gib(activations)}), ` +
      `but only ${gib(available)} of ${gib(totalmem())} is available. Shrink the model (model.n_layer, model.n_embd, model.vocab_size) ` +
      "or shard it (parallel.zero, parallel.tp, parallel.pp over more machines; train.activation_checkpointing for activations).",
  );
}
