// `megalith train` and `megalith sample` end to end, as a user runs them (child processes of
// bin/megalith.js): --set overrides, falling loss, a final directory, deterministic sampling,
// and bad flags that exit non-zero with a one-line message instead of a stack trace.
import { test, before } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { tinyData, tinyRawConfig, readMetrics, trainLosses } from "../train/_helpers.js";

const BIN = fileURLToPath(new URL("../../bin/megalith.js", import.meta.url));

interface Result { code: number; stdout: string; stderr: string }

function megalith(...args: string[]): Promise<Result> {
  return new Promise((resolve) => {
    execFile(process.execPath, [BIN, ...args], { env: { ...process.env, MEGALITH_FROM_SOURCE: "1" }, timeout: 60_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === "number" ? (err as { code: number }).code : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

/** Non-zero exit, the message on stderr, and no JavaScript stack trace. */
function assertCleanFailure(r: Result, pattern: RegExp): void {
  assert.notEqual(r.code, 0, `expected failure, got exit 0; stdout: ${r.stdout}`);
  assert.match(r.stderr, pattern);
  assert.doesNotMatch(r.stderr, /^\s+at .+[:(]\d+/m, `stack trace on stderr:\n${r.stderr}`);
}

let root = "";
let configFile = "";
let runDir = "";
let dataDir = "";

before(async () => {
  root = mkdtempSync(join(tmpdir(), "megalith-cli-"));
  process.on("exit", () => rmSync(root, { recursive: true, force: true }));
  const data = await tinyData();
  dataDir = data.dir;
  configFile = join(root, "config.json");
  // The file says 5 steps and a placeholder out_dir; --set overrides both.
  writeFileSync(configFile, JSON.stringify(tinyRawConfig("placeholder-out", data.dir, { train: { max_steps: 5 }, optimizer: { lr: 3e-3, warmup_steps: 3 } }), null, 2));
  runDir = join(root, "run");
});

test("`megalith train --set ...` trains with the overrides: loss falls, final dir written", async () => {
  const r = await megalith("train", "--config", configFile, "--set", `out_dir=${runDir}`, "train.max_steps=30", "--set", "train.log_interval=10", "eval.interval=15");
  assert.equal(r.code, 0, r.stderr);
  const losses = trainLosses(runDir).map((m) => m.loss);
  assert.equal(losses.length, 30, "train.max_steps=30 from --set");
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
  const first = mean(losses.slice(0, 5)), last = mean(losses.slice(-5));
  assert.ok(last < first - 0.5, `loss did not fall: first 5 mean ${first.toFixed(3)}, last 5 mean ${last.toFixed(3)}`);
  assert.deepEqual(readMetrics(runDir).filter((m) => m.split === "val").map((m) => m.step), [15, 30]);
  for (const f of ["config.json", "model.safetensors", "tokenizer.json"]) assert.ok(existsSync(join(runDir, "final", f)), `final/${f}`);
  assert.ok(existsSync(join(runDir, "ckpt-000030", "manifest.json")));
  // Progress goes to stderr: every 10th step and the last.
  assert.match(r.stderr, /step 1\/30 \| loss /);
  assert.match(r.stderr, /step 30\/30 \| loss /);
  assert.match(r.stderr, /done: 30 steps; final model in /);
});

test("`megalith train --resume` continues from the newest checkpoint", async () => {
  assert.ok(existsSync(join(runDir, "ckpt-000030")), "needs the previous test's run");
  // max_steps sets the cosine schedule here (no decay_steps): a change is refused, naming it...
  const refused = await megalith("train", "--config", configFile, "--set", `out_dir=${runDir}`, "train.max_steps=32", "--resume");
  assertCleanFailure(refused, /megalith: error: --resume: the config differs .*\n\s+train\.max_steps: 30 -> 32: the cosine schedule decays over train\.max_steps/);
  assert.match(refused.stderr, /pass --allow-config-change to continue anyway/);
  // ...and continues with --allow-config-change, warning about it.
  const r = await megalith("train", "--config", configFile, "--set", `out_dir=${runDir}`, "train.max_steps=32", "--resume", "--allow-config-change");
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /resume: warning: train\.max_steps differs from the checkpoint's: 30 -> 32/);
  assert.match(r.stderr, /resume: continuing from .*ckpt-000030 \(step 30\)/);
  const steps = trainLosses(runDir).map((m) => m.step);
  assert.deepEqual(steps.slice(-2), [30, 31]);
  // The rows logged before are not repeated: each step once.
  assert.deepEqual(steps, Array.from({ length: 32 }, (_, i) => i));
});

test("`megalith sample --temperature 0` prints the same text twice", async () => {
  const model = join(runDir, "final");
  const args = ["sample", "--model", model, "--prompt", "the cat", "--max-new-tokens", "20", "--temperature", "0"];
  const a = await megalith(...args);
  const b = await megalith(...args);
  assert.equal(a.code, 0, a.stderr);
  assert.equal(b.code, 0, b.stderr);
  assert.ok(a.stdout.startsWith("the cat"), a.stdout);
  assert.ok(a.stdout.length > "the cat\n".length, `nothing generated: ${JSON.stringify(a.stdout)}`);
  assert.equal(a.stdout, b.stdout);
  // Seeded sampling is reproducible too.
  const s = ["sample", "--model", model, "--prompt", "the", "--max-new-tokens", "15", "--temperature", "1.0", "--top-k", "20", "--top-p", "0.9", "--seed", "5"];
  const c = await megalith(...s), d = await megalith(...s);
  assert.equal(c.code, 0, c.stderr);
  assert.equal(c.stdout, d.stdout);
});

test("`megalith train` with bad flags exits non-zero with a clear message", async () => {
  const bad = join(root, "bad-out");
  assertCleanFailure(await megalith("train"), /required option '--config <file>' not specified/);
  assertCleanFailure(await megalith("train", "--config", configFile, "--bogus"), /unknown option '--bogus'/);
  assertCleanFailure(await megalith("train", "--config", join(root, "missing.json")), /megalith: error: config file .*missing\.json not found/);
  assertCleanFailure(await megalith("train", "--config", configFile, "--set", "train.max_steps"), /megalith: error: --set "train\.max_steps": expected key=value/);
  assertCleanFailure(
    await megalith("train", "--config", configFile, "--set", `out_dir=${bad}`, "train.max_steps=abc", "model.n_layrs=3"),
    /megalith: error: invalid --set overrides \(for .*config\.json\):\n\s+--set model\.n_layrs=3: there is no key model\.n_layrs \(did you mean model\.n_layer\?\)\n\s+--set train\.max_steps=abc: expected number, got "abc" \(string\)/,
  );
  assertCleanFailure(await megalith("train", "--config", configFile, "--set", `out_dir=${bad}`, `data.source=${join(root, "nowhere")}`), /is neither "brown" nor a directory prepared by `megalith prepare`/);
  assert.ok(!existsSync(join(bad, "metrics.jsonl")));
});

test("`megalith sample` with bad flags exits non-zero with a clear message", async () => {
  const model = join(runDir, "final");
  assertCleanFailure(await megalith("sample"), /required option '--model <dir>' not specified/);
  assertCleanFailure(await megalith("sample", "--model", model, "--temperature", "hot"), /megalith: error: --temperature must be a number, got "hot"/);
  assertCleanFailure(await megalith("sample", "--model", model, "--max-new-tokens", "1.5"), /--max-new-tokens must be an integer, got "1\.5"/);
  assertCleanFailure(await megalith("sample", "--model", model, "--top-p", "2", "--max-new-tokens", "2"), /topP must be in \(0, 1\], got 2/);
  assertCleanFailure(await megalith("sample", "--model", join(root, "no-model")), /megalith: error: .*no-model\/config\.json: not found/);
  assertCleanFailure(await megalith("sample", "--model", model, "--prompt", ""), /prompt must contain at least one token/);
});

test("`megalith train` with an out_dir that cannot be created exits with a message, not a stack trace", async () => {
  const file = join(root, "a-file");
  writeFileSync(file, "x");
  assertCleanFailure(await megalith("train", "--config", configFile, "--set", `out_dir=${join(file, "sub")}`, "train.max_steps=1"), /megalith: error: .*a-file/);
});
