// Resume is bit-exact: 20 steps straight and 10 + resume + 10 give identical losses, with
// dropout, gradient accumulation and a warmup + cosine schedule in play.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Trainer, validateConfig, prepareData, loadTokenizer } from "../../src/index.js";
import { readSafetensors } from "../../src/checkpoint/index.js";

async function dataset(root: string): Promise<string> {
  const docs = Array.from({ length: 60 }, (_, i) => `Document ${i}: the ${["quick", "lazy", "brown"][i % 3]} fox number ${i * 7} jumps over ${i % 5} dogs. `.repeat(6));
  const dir = join(root, "data");
  await prepareData({ tokenizer: loadTokenizer("gpt2"), tokenizerSpec: "gpt2", inputs: [{ name: "gen", documents: docs }], outDir: dir, valFraction: 0.1, progress: false });
  return dir;
}

function config(outDir: string, data: string, maxSteps: number) {
  return validateConfig({
    out_dir: outDir,
    model: { n_layer: 2, n_head: 2, n_embd: 32, block_size: 32, vocab_size: 50304, dropout: 0.1 },
    data: { source: data },
    train: { max_steps: maxSteps, micro_batch_size: 2, grad_accum_steps: 2, seed: 7, log_interval: 100 },
    optimizer: { lr: 3e-3, warmup_steps: 3, decay_steps: 20 },
    eval: { interval: 0, batches: 2 },
    checkpoint: { interval: 10, keep: 3 },
  });
}

function losses(outDir: string): number[] {
  return readFileSync(join(outDir, "metrics.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l)).filter((m) => m.split === undefined).map((m) => m.loss);
}

test("`Trainer` resumed from a checkpoint reproduces the uninterrupted run exactly", async () => {
  const root = mkdtempSync(join(tmpdir(), "megalith-resume-"));
  try {
    const data = await dataset(root);
    const straight = new Trainer(config(join(root, "a"), data, 20), { log: false });
    await straight.setup();
    await straight.run();

    const first = new Trainer(config(join(root, "b"), data, 10), { log: false });
    await first.setup();
    await first.run();
    const second = new Trainer(config(join(root, "b"), data, 20), { log: false, resume: true });
    await second.setup();
    assert.equal(second.step, 10, "resumed at the checkpoint's step");
    await second.run();

    const a = losses(join(root, "a")), b = losses(join(root, "b"));
    assert.equal(a.length, 20);
    assert.deepEqual(b, a, "losses of 10 + resume + 10 equal the straight 20 bit for bit");
    const wa = (await readSafetensors(join(root, "a", "final", "model.safetensors"))).tensors;
    const wb = (await readSafetensors(join(root, "b", "final", "model.safetensors"))).tensors;
    for (const [name, r] of wa) assert.ok(Buffer.from(r.data).equals(Buffer.from(wb.get(name)!.data)), `final ${name} identical`);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
