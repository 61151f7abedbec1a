// The training config: zod validation whose errors name the dotted path of every problem,
// `--set key=value` overrides (JSON values when they parse, strings otherwise; string keys keep
// the raw text), and the derived
// global batch.
import { test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { ValueError, FormatError } from "../../src/core/errors.js";
import { applyOverrides, loadConfig, tokensPerStep, validateConfig } from "../../src/train/config.js";
import { tempDir } from "./_helpers.js";

const minimal = () => ({
  out_dir: "runs/x",
  model: { n_layer: 2, n_head: 2, n_embd: 32, block_size: 32 },
  train: { max_steps: 10 },
});

/** Asserts validateConfig(raw) throws a ValueError whose message matches every pattern. */
function rejects(raw: unknown, ...patterns: RegExp[]): string {
  let msg = "";
  assert.throws(() => validateConfig(raw), (e: unknown) => {
    assert.ok(e instanceof ValueError, `expected ValueError, got ${String(e)}`);
    msg = e.message;
    return true;
  });
  for (const p of patterns) assert.match(msg, p);
  return msg;
}

test("`validateConfig` fills documented defaults for a minimal config", () => {
  const c = validateConfig(minimal());
  assert.equal(c.model.vocab_size, 50304);
  assert.equal(c.model.dropout, 0);
  assert.equal(c.model.bias, true);
  assert.equal(c.model.init_from, null);
  assert.deepEqual(c.data, { source: "brown", tokenizer: "gpt2", cache_dir: ".cache/megalith/data" });
  assert.equal(c.train.micro_batch_size, 8);
  assert.equal(c.train.grad_accum_steps, 1);
  assert.equal(c.train.seed, 1337);
  assert.equal(c.train.max_nonfinite_steps, 5);
  assert.equal(c.optimizer.lr, 1e-3);
  assert.deepEqual(c.optimizer.betas, [0.9, 0.95]);
  assert.equal(c.optimizer.decay_steps, null);
  assert.deepEqual(c.eval, { interval: 0, batches: 10 });
  assert.deepEqual(c.checkpoint, { interval: 0, keep: 2 });
  assert.deepEqual(c.parallel, {
    dp: 1, zero: 0, bucket_mb: 25, zero3_prefetch: true, reduce_dtype: "fp32", offload: "none", offload_dir: null, offload_chunk_mb: 32, ep: 1,
    tp: 1, sp: false, pp: 1, pp_schedule: "1f1b", pp_microbatches: null, pp_virtual_stages: 1, pp_layers: null,
  });
  assert.equal(c.train.trace, null);
  assert.equal(c.train.trace_steps, 3);
  assert.equal(c.train.precision, "fp32");
  assert.equal(c.train.activation_checkpointing, false);
  assert.deepEqual(c.train.loss_scale, { initial: 65536, growth_interval: 2000, growth_factor: 2, backoff_factor: 0.5 });
});

test("`validateConfig` rejects an unknown precision, reduce dtype or recomputation mode, naming the key", () => {
  rejects({ ...minimal(), train: { ...(minimal().train as object), precision: "int4" } }, /train\.precision/);
  rejects({ ...minimal(), parallel: { reduce_dtype: "fp8" } }, /parallel\.reduce_dtype/);
  rejects({ ...minimal(), train: { ...(minimal().train as object), activation_checkpointing: "some" } }, /train\.activation_checkpointing/);
  rejects({ ...minimal(), train: { ...(minimal().train as object), loss_scale: { initial: -1 } } }, /train\.loss_scale\.initial/);
});

test("`validateConfig` refuses impossible tensor/sequence/pipeline layouts, naming the keys", () => {
  const m = minimal() as { model: Record<string, unknown>; train: Record<string, unknown> };
  const withP = (parallel: Record<string, unknown>, model: Record<string, unknown> = {}, train: Record<string, unknown> = {}) =>
    ({ ...m, model: { ...m.model, ...model }, train: { ...m.train, ...train }, parallel });
  rejects(withP({ tp: 3 }, { n_head: 4, n_embd: 64 }), /parallel\.tp: model\.n_head \(4\) must be divisible by parallel\.tp \(3\)/);
  rejects(withP({ sp: true }), /parallel\.sp: .*needs parallel\.tp > 1/);
  rejects(withP({ tp: 2, sp: true }, { n_head: 4, n_embd: 64, block_size: 33 }), /parallel\.sp: model\.block_size \(33\) must be divisible by parallel\.tp \(2\)/);
  rejects(withP({ pp: 3 }, { n_layer: 4 }), /parallel\.pp: model\.n_layer \(4\) must be divisible by parallel\.pp \(3\)/);
  rejects(withP({ pp: 2, pp_schedule: "interleaved", pp_virtual_stages: 3 }, { n_layer: 4 }, { grad_accum_steps: 4 }), /parallel\.pp_virtual_stages: model\.n_layer \(4\) must be divisible by parallel\.pp x parallel\.pp_virtual_stages \(2 x 3\)/);
  rejects(withP({ pp: 2, pp_virtual_stages: 2 }, { n_layer: 4 }), /parallel\.pp_virtual_stages: .*"interleaved"/);
  rejects(withP({ pp: 2, pp_layers: [1, 2] }, { n_layer: 4 }), /parallel\.pp_layers: \[1,2\] sums to 3, expected model\.n_layer \(4\)/);
  rejects(withP({ pp: 2, pp_layers: [4] }, { n_layer: 4 }), /parallel\.pp_layers: lists 1 stages, expected 2/);
  rejects(withP({ pp: 2, zero: 2 }, { n_layer: 4 }), /parallel\.zero: ZeRO-2 .*pipeline/);
  rejects(withP({ pp: 2, pp_microbatches: 4 }, { n_layer: 4 }, { grad_accum_steps: 2 }), /parallel\.pp_microbatches: 4 conflicts with train\.grad_accum_steps \(2\)/);
  // pp_microbatches is the accumulation count in a pipeline.
  const ok = validateConfig(withP({ pp: 2, pp_microbatches: 4, pp_layers: [1, 3] }, { n_layer: 4 }));
  assert.equal(ok.train.grad_accum_steps, 4);
});

test("`validateConfig` names the dotted path of a value of the wrong type", () => {
  const raw = minimal();
  (raw.train as Record<string, unknown>).max_steps = "ten";
  rejects(raw, /^config is invalid:/, /train\.max_steps: Expected number, received string/);
  const r2 = minimal();
  (r2.model as Record<string, unknown>).bias = "yes";
  rejects(r2, /model\.bias: Expected boolean, received string/);
  const r3 = { ...minimal(), optimizer: { betas: [0.9] } };
  rejects(r3, /optimizer\.betas/);
  const r4 = { ...minimal(), optimizer: { betas: [0.9, 1.5] } };
  rejects(r4, /optimizer\.betas\.1: Number must be less than 1/);
});

test("`validateConfig` names the dotted path of out-of-range values", () => {
  const bad = (section: string, key: string, value: unknown, pattern: RegExp) => {
    const raw = minimal() as Record<string, Record<string, unknown> | string>;
    raw[section] = { ...(raw[section] as Record<string, unknown> | undefined), [key]: value };
    rejects(raw, new RegExp(`${section}\\.${key}: `), pattern);
  };
  bad("model", "n_layer", 0, /greater than 0/);
  bad("model", "n_head", 1.5, /integer/);
  bad("model", "dropout", 1, /less than 1/);
  bad("train", "micro_batch_size", -1, /greater than 0/);
  bad("optimizer", "lr", 0, /greater than 0/);
  bad("optimizer", "weight_decay", -0.1, /greater than or equal to 0/);
  bad("parallel", "zero", 4, /./);
  bad("parallel", "bucket_mb", 0, /greater than 0/);
  bad("checkpoint", "keep", 0, /greater than 0/);
});

test("`validateConfig` reports unknown keys with the section they are in", () => {
  rejects({ ...minimal(), model: { ...minimal().model, n_layers: 2 } }, /model: Unrecognized key\(s\) in object: 'n_layers'/);
  rejects({ ...minimal(), train: { ...minimal().train, lr: 1e-3 } }, /train: Unrecognized key\(s\) in object: 'lr'/);
  rejects({ ...minimal(), optimiser: {} }, /\(root\): Unrecognized key\(s\) in object: 'optimiser'/);
});

test("`validateConfig` reports missing required keys by path, all at once", () => {
  const msg = rejects({ model: { n_head: 2, n_embd: 32 }, train: {} }, /out_dir: Required/, /model\.n_layer: Required/, /model\.block_size: Required/, /train\.max_steps: Required/);
  assert.equal(msg.split("\n").length, 5, `one line per problem:\n${msg}`);
  rejects({ out_dir: "x", train: { max_steps: 1 } }, /model: Required/);
  rejects([], /\(root\): Expected object, received array/);
});

test("`validateConfig` checks n_embd is divisible by n_head", () => {
  rejects({ ...minimal(), model: { ...minimal().model, n_embd: 30, n_head: 4 } }, /model\.n_embd: 30 must be divisible by model\.n_head \(4\)/);
});

test("`applyOverrides` parses numbers, booleans, null, arrays and strings", () => {
  const raw = minimal();
  const out = applyOverrides(raw, [
    "train.max_steps=20",
    "optimizer.lr=3e-4",
    "model.bias=false",
    "model.init_from=null",
    "optimizer.betas=[0.8, 0.99]",
    "out_dir=runs/with=equals",
    "data.source=some/dir",
    'data.tokenizer="123"',
    "train.seed= 7",
  ]);
  const c = validateConfig(out);
  assert.equal(c.train.max_steps, 20);
  assert.equal(c.optimizer.lr, 3e-4);
  assert.equal(c.model.bias, false);
  assert.equal(c.model.init_from, null);
  assert.deepEqual(c.optimizer.betas, [0.8, 0.99]);
  assert.equal(c.out_dir, "runs/with=equals", "only the first = splits key from value");
  assert.equal(c.data.source, "some/dir");
  assert.equal(c.data.tokenizer, "123", "a JSON string literal stays a string");
  assert.equal(c.train.seed, 7);
  // The input is not mutated; later overrides win.
  assert.equal((raw.train as Record<string, unknown>).max_steps, 10);
  assert.equal((applyOverrides(raw, ["train.max_steps=3", "train.max_steps=4"]).train as Record<string, unknown>).max_steps, 4);
});

test("`applyOverrides` keeps the raw text for string keys: number-, boolean- and null-looking values stay strings", () => {
  // Fresh values each run, so the test cannot pass on one hard-coded case.
  const year = String(1000 + Math.floor(Math.random() * 9000));
  const num = (Math.random() * 100).toFixed(3);
  const c = validateConfig(applyOverrides(minimal(), [
    `out_dir=${year}`,
    `data.source=${num}`,
    "data.tokenizer=true",
    "data.cache_dir=[1]",
    `model.init_from=${year}`,
  ]));
  assert.equal(c.out_dir, year);
  assert.equal(c.data.source, num);
  assert.equal(c.data.tokenizer, "true");
  assert.equal(c.data.cache_dir, "[1]");
  assert.equal(c.model.init_from, year);
  // A quoted JSON string is unquoted; null stays null only where the key is nullable.
  assert.equal(validateConfig(applyOverrides(minimal(), [`out_dir="${year}"`])).out_dir, year);
  assert.equal(validateConfig(applyOverrides(minimal(), ["out_dir=null"])).out_dir, "null");
  assert.equal(validateConfig(applyOverrides({ ...minimal(), model: { ...minimal().model, init_from: "x" } }, ["model.init_from=null"])).model.init_from, null);
  // Non-string keys still parse JSON, and a string where a number belongs is still named.
  assert.equal(validateConfig(applyOverrides(minimal(), [`train.max_steps=${year}`])).train.max_steps, Number(year));
  rejects(applyOverrides(minimal(), ["train.max_steps=ten"]), /train\.max_steps: Expected number, received string/);
});

test("`loadConfig` with --set out_dir=<digits> loads (the CLI path of the override)", (t) => {
  const dir = tempDir(t);
  const file = join(dir, "cfg.json");
  writeFileSync(file, JSON.stringify(minimal()));
  const year = String(2000 + Math.floor(Math.random() * 100));
  assert.equal(loadConfig(file, [`out_dir=${year}`]).out_dir, year);
});

test("`applyOverrides` rejects malformed --set items with a message showing the item", () => {
  const bad = (s: string, pattern: RegExp) => assert.throws(() => applyOverrides(minimal(), [s]), (e: unknown) => e instanceof ValueError && pattern.test(e.message));
  bad("train.max_steps", /--set "train\.max_steps": expected key=value, e\.g\. --set train\.max_steps=20/);
  bad("=5", /--set "=5": expected key=value/);
  bad("train..max_steps=5", /--set "train\.\.max_steps=5": invalid key path/);
  bad("__proto__.polluted=1", /invalid key path/);
  bad("train.max_steps.x=1", /--set "train\.max_steps\.x=1": max_steps is not a section/);
  assert.equal(({} as Record<string, unknown>).polluted, undefined);
});

test("`applyOverrides` creates unknown sections so validation names them", () => {
  rejects(applyOverrides(minimal(), ["model.n_layrs=3"]), /model: Unrecognized key\(s\) in object: 'n_layrs'/);
  rejects(applyOverrides(minimal(), ["trian.max_steps=3"]), /\(root\): Unrecognized key\(s\) in object: 'trian'/);
  // A missing (defaulted) section is created by the override and then filled with defaults.
  assert.equal(validateConfig(applyOverrides(minimal(), ["eval.interval=5"])).eval.batches, 10);
});

test("`tokensPerStep` derives the global batch: micro-batch x accumulation x dp x block_size", () => {
  const c = validateConfig({ ...minimal(), train: { max_steps: 1, micro_batch_size: 4, grad_accum_steps: 3 }, parallel: { dp: 2 } });
  assert.equal(tokensPerStep(c), 4 * 3 * 2 * 32);
  assert.equal(tokensPerStep(validateConfig(minimal())), 8 * 1 * 1 * 32);
});

test("`loadConfig` reads a file, applies --set, and names the file in errors", (t) => {
  const dir = tempDir(t);
  const file = join(dir, "cfg.json");
  writeFileSync(file, JSON.stringify(minimal()));
  const c = loadConfig(file, ["train.max_steps=3", "model.dropout=0.1"]);
  assert.equal(c.train.max_steps, 3);
  assert.equal(c.model.dropout, 0.1);
  // A bad --set value names the override, its value and what was expected, not the file.
  assert.throws(() => loadConfig(file, ["train.max_steps=0"]), (e: unknown) => e instanceof ValueError && e.message.startsWith(`invalid --set override (for ${file}):`) && /--set train\.max_steps=0: Number must be greater than 0/.test(e.message));
  assert.throws(() => loadConfig(join(dir, "nope.json")), (e: unknown) => e instanceof ValueError && /config file .*nope\.json not found/.test(e.message));
  writeFileSync(file, "{ not json");
  assert.throws(() => loadConfig(file), (e: unknown) => e instanceof FormatError && e.file === file && /not valid JSON/.test(e.message));
  writeFileSync(file, "[1, 2]");
  assert.throws(() => loadConfig(file), (e: unknown) => e instanceof FormatError && /must contain a JSON object/.test(e.message));
});

test("configs/tiny.json in the repository validates", () => {
  const c = loadConfig("configs/tiny.json");
  assert.equal(c.model.n_layer, 2);
  assert.ok(tokensPerStep(c) > 0);
});
