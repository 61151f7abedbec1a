// Careless and hostile inputs to the CLI end with one `megalith: error:` line and exit code 2,
// never a stack trace: a directory as --config, a used out_dir, a model far too large, a native
// allocation failure, a model file symlinked out of its directory (followed for model.init_from
// only with --allow-symlinks). And `megalith --version`.
import { test, before } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { tinyData, tinyRawConfig } from "../train/_helpers.js";

const BIN = fileURLToPath(new URL("../../bin/megalith.js", import.meta.url));
const PKG = JSON.parse(readFileSync(fileURLToPath(new URL("../../package.json", import.meta.url)), "utf8")) as { version: string };

interface Result { code: number; stdout: string; stderr: string }

function megalith(...args: string[]): Promise<Result> {
  return new Promise((resolve) => {
    execFile(process.execPath, [BIN, ...args], { env: { ...process.env, MEGALITH_FROM_SOURCE: "1" }, timeout: 60_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === "number" ? (err as { code: number }).code : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

/** Exit 2, exactly one line on stderr matching `pattern`, no JavaScript stack trace. */
function assertOneLineError(r: Result, pattern: RegExp): void {
  assert.equal(r.code, 2, `exit ${r.code}; stderr:\n${r.stderr}`);
  assert.doesNotMatch(r.stderr, /^\s+at .+[:(]\d+/m, `stack trace on stderr:\n${r.stderr}`);
  const lines = r.stderr.trim().split("\n").filter((l) => !l.startsWith("data:"));
  assert.equal(lines.length, 1, `one line expected:\n${r.stderr}`);
  assert.match(lines[0]!, pattern);
}

let root = "";
let configFile = "";

before(async () => {
  root = mkdtempSync(join(tmpdir(), "megalith-cli-errors-"));
  process.on("exit", () => rmSync(root, { recursive: true, force: true }));
  const data = await tinyData();
  configFile = join(root, "config.json");
  writeFileSync(configFile, JSON.stringify(tinyRawConfig(join(root, "run"), data.dir, { train: { max_steps: 2 } }), null, 2));
});

test("`megalith --version` prints the package version", async () => {
  const r = await megalith("--version");
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout.trim(), PKG.version);
});

test("`megalith train --config DIR` says it is a directory", async () => {
  assertOneLineError(await megalith("train", "--config", root), /^megalith: error: --config .* is a directory; pass a JSON file, e\.g\. .*config\.json \(it holds config\.json\)$/);
});

test("`megalith train` into a used out_dir is refused, offering --resume and --overwrite; --overwrite starts again", async () => {
  const out = join(root, "used");
  const first = await megalith("train", "--config", configFile, "--set", `out_dir=${out}`);
  assert.equal(first.code, 0, first.stderr);
  assertOneLineError(await megalith("train", "--config", configFile, "--set", `out_dir=${out}`),
    /^megalith: error: out_dir .*used already holds a run \(metrics\.jsonl \(\d+ rows\), 1 checkpoint \(newest ckpt-000002\), final\/\)\. Pass --resume to continue it, or --overwrite to delete it and start again/);
  const again = await megalith("train", "--config", configFile, "--set", `out_dir=${out}`, "--overwrite");
  assert.equal(again.code, 0, again.stderr);
  assert.match(again.stderr, /overwrite: deleted the previous run in /);
});

test("a model far too large is refused before allocation with the numbers (model.n_layer=100000)", async () => {
  const t0 = Date.now();
  const r = await megalith("train", "--config", configFile, "--set", `out_dir=${join(root, "huge")}`, "model.n_layer=100000", "model.n_embd=256");
  assertOneLineError(r, /^megalith: error: the model is too large for this machine: model\.n_layer=100000, n_embd=256, .* make \d+\.\dM parameters; training them needs at least [\d.]+ GiB .* but only [\d.]+ GiB of [\d.]+ GiB is available\. Shrink the model/);
  assert.ok(Date.now() - t0 < 30_000);
});

test("model.vocab_size=2000000000 is refused with the numbers, not a stack trace", async () => {
  assertOneLineError(await megalith("train", "--config", configFile, "--set", `out_dir=${join(root, "vocab")}`, "model.vocab_size=2000000000"),
    /^megalith: error: the model is too large for this machine: .*vocab_size=2000000000/);
});

test("a native allocation failure (a model directory claiming a 2e9-token vocabulary) is one line, exit 2", async () => {
  const dir = join(root, "absurd-model");
  mkdirSync(dir);
  writeFileSync(join(dir, "config.json"), JSON.stringify({ n_layer: 1, n_head: 1, n_embd: 64, n_positions: 8, vocab_size: 2_000_000_000 }));
  const r = await megalith("sample", "--model", dir, "--tokenizer", "gpt2", "--prompt", "hi", "--max-new-tokens", "1");
  assertOneLineError(r, /^megalith: error: (native: )?alloc: out of memory allocating \d+ bytes$/);
});

test("`megalith sample` refuses a model.safetensors symlinked outside the model directory unless --allow-symlinks", async () => {
  const train = await megalith("train", "--config", configFile, "--set", `out_dir=${join(root, "src-run")}`);
  assert.equal(train.code, 0, train.stderr);
  const dir = join(root, "linked-model");
  mkdirSync(dir);
  for (const f of ["config.json", "tokenizer.json"]) writeFileSync(join(dir, f), readFileSync(join(root, "src-run", "final", f)));
  symlinkSync(join(root, "src-run", "final", "model.safetensors"), join(dir, "model.safetensors"));
  assertOneLineError(await megalith("sample", "--model", dir, "--prompt", "the", "--max-new-tokens", "2"),
    /^megalith: error: .*linked-model\/model\.safetensors is a symlink to .*src-run\/final\/model\.safetensors, outside the model directory .*--allow-symlinks/);
  const followed = await megalith("sample", "--model", dir, "--prompt", "the", "--max-new-tokens", "2", "--temperature", "0", "--allow-symlinks");
  assert.equal(followed.code, 0, followed.stderr);
  // Training from it (model.init_from) too, unless --allow-symlinks.
  const init = ["train", "--config", configFile, "--set", `out_dir=${join(root, "from-link")}`, `model.init_from=${dir}`];
  assertOneLineError(await megalith(...init), /^megalith: error: .*linked-model\/model\.safetensors is a symlink to .*, outside the model directory/);
  const allowed = await megalith(...init, "--allow-symlinks");
  assert.equal(allowed.code, 0, allowed.stderr);
});
