// BERT pretraining and fine-tuning under data, ZeRO and tensor parallelism, as data: each layout
// (dp=2 with ZeRO 0..3; tp=2, dp=2 x tp=2) reproduces the single-process MLM + NSP loss curve
// and final weights, on two seeds; classifiers fine-tuned at dp=2 with ZeRO-1 and at tp=2
// reproduce the single process too, and a tp=2 checkpoint (the files one process writes)
// resumes in one process and at tp=2. Masks are keyed by (seed, epoch, example), and dropout
// by position, so every rank draws the single process's masks (a tp rank its heads' part).
import { test } from "node:test";
import assert from "node:assert/strict";
import { cpSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadTokenizer, type WordPiece } from "../../src/tokenizers/index.js";
import { prepareMlmData } from "../../src/data/index.js";
import { skip, train, losses, valLoss, assertCurve, compareWeights } from "./_layouts.js";

interface Layout { name: string; ranks: number; sets: string[] }

/**
 * The single process accumulates 2 micro-batches of 2 examples; dp=2 gives each rank one of
 * them (rank r takes the r-th micro-batch of the global order), so the same examples are
 * averaged in the same groups (MLM's loss is a mean over each micro-batch's masked tokens).
 */
const DP2 = ["train.grad_accum_steps=1"];

const LAYOUTS: Layout[] = [
  { name: "dp2 (DDP)", ranks: 2, sets: ["parallel.dp=2", ...DP2] },
  { name: "dp2 ZeRO-1", ranks: 2, sets: ["parallel.dp=2", "parallel.zero=1", ...DP2] },
  { name: "dp2 ZeRO-2", ranks: 2, sets: ["parallel.dp=2", "parallel.zero=2", ...DP2] },
  { name: "dp2 ZeRO-3", ranks: 2, sets: ["parallel.dp=2", "parallel.zero=3", ...DP2] },
];
/** Tensor parallelism: heads and intermediate units split over 2 ranks (n_head 2 and 4 below). */
const TP_LAYOUTS: Layout[] = [
  { name: "tp2", ranks: 2, sets: ["parallel.tp=2"] },
  { name: "dp2 x tp2 (DDP)", ranks: 4, sets: ["parallel.dp=2", "parallel.tp=2", ...DP2] },
  { name: "dp2 x tp2 ZeRO-1", ranks: 4, sets: ["parallel.dp=2", "parallel.tp=2", "parallel.zero=1", ...DP2] },
];
/**
 * Each seed runs the single process, half of the data-parallel layouts (all four are covered),
 * tp2 and one of the dp2 x tp2 layouts; the seeds differ in head count too.
 */
const SEEDS: Array<[number, string[], Layout[]]> = [
  [11, ["model.n_head=2"], [LAYOUTS[0]!, LAYOUTS[2]!, TP_LAYOUTS[0]!, TP_LAYOUTS[1]!]],
  [23, ["model.n_head=4"], [LAYOUTS[1]!, LAYOUTS[3]!, TP_LAYOUTS[0]!, TP_LAYOUTS[2]!]],
];

/** A JSON file's contents. */
function jsonOf(file: string): unknown {
  return JSON.parse(readFileSync(file, "utf8"));
}

test("BERT MLM + NSP at dp=2 with ZeRO 0-3, tp=2 and dp=2 x tp=2 reproduces the single-process run (two seeds); dp=2 ZeRO-1 and tp=2 BERT classifiers too; a tp=2 checkpoint resumes in one process and at tp=2", { skip }, async () => {
  const root = mkdtempSync(join(tmpdir(), "megalith-bert-layouts-"));
  try {
    const docs = Array.from({ length: 40 }, (_, i) =>
      Array.from({ length: 12 }, (_, j) => `The ${["owl", "fox", "eel", "yak"][(i + j) % 4]} number ${i} counted ${i * 7 + j} stones by the river.`).join(" "));
    const data = join(root, "mlm");
    await prepareMlmData({ inputs: [{ name: "gen", documents: docs }], outDir: data, tokenizer: loadTokenizer("bert-base-uncased") as WordPiece, tokenizerSpec: "bert-base-uncased", maxSeqLen: 32, valFraction: 0.1, progress: false });
    const file = join(root, "bert.json");
    writeFileSync(file, JSON.stringify({
      out_dir: "unused", model: { type: "bert", n_layer: 2, n_head: 2, n_embd: 32, block_size: 32, vocab_size: 30522, dropout: 0.1 },
      data: { source: data }, train: { max_steps: 5, micro_batch_size: 2, grad_accum_steps: 2, log_interval: 100 }, optimizer: { lr: 2e-3 },
      eval: { batches: 2 }, checkpoint: { interval: 3, keep: 3 },
    }));
    for (const [seed, model, layouts] of SEEDS) {
      const single = join(root, `single-${seed}`);
      train(file, single, 1, [`train.seed=${seed}`, ...model]);
      const ref = losses(single);
      for (const l of layouts) {
        const out = join(root, `${l.name.replace(/\W+/g, "_")}-${seed}`);
        train(file, out, l.ranks, [`train.seed=${seed}`, ...model, ...l.sets]);
        assertCurve(ref, losses(out), `BERT ${l.name} seed ${seed}`);
        await compareWeights(join(single, "final"), join(out, "final"), `BERT ${l.name} seed ${seed}`);
        if (l.sets.includes("parallel.tp=2")) {
          // Logical checkpoints: the files one process writes, config.json included.
          for (const ckpt of ["ckpt-000003", "ckpt-000005"]) {
            assert.deepEqual(readdirSync(join(out, ckpt)).sort(), readdirSync(join(single, ckpt)).sort(), `BERT ${l.name} seed ${seed}: ${ckpt} files`);
            assert.deepEqual(jsonOf(join(out, ckpt, "config.json")), jsonOf(join(single, ckpt, "config.json")), `BERT ${l.name} seed ${seed}: ${ckpt}/config.json`);
            await compareWeights(join(single, ckpt), join(out, ckpt), `BERT ${l.name} seed ${seed} ${ckpt}`);
          }
          assert.deepEqual(jsonOf(join(out, "final", "config.json")), jsonOf(join(single, "final", "config.json")), `BERT ${l.name} seed ${seed}: final/config.json`);
        }
        // Evaluation runs through the layout too; dp layouts evaluate other batches.
        if (!l.sets.some((x) => x.startsWith("parallel.dp="))) {
          const a = valLoss(single), b = valLoss(out);
          assert.ok(Math.abs(a - b) / a < 1e-5, `BERT ${l.name} seed ${seed}: val loss ${b} vs single ${a}`);
        }
      }
    }
    // The tp=2 run's step-3 checkpoint continues the single-process curve in one process and at tp=2.
    for (const [name, ranks, sets] of [["one", 1, []], ["tp2", 2, ["parallel.tp=2"]]] as Array<[string, number, string[]]>) {
      const out = join(root, `resume-${name}`);
      mkdirSync(out, { recursive: true });
      cpSync(join(root, "tp2-11", "ckpt-000003"), join(out, "ckpt-000003"), { recursive: true });
      train(file, out, ranks, ["train.seed=11", "model.n_head=2", ...sets], ["--resume"]);
      assertCurve(losses(join(root, "single-11")).slice(3), losses(out), `BERT tp2 checkpoint resumed at ${name}`);
      await compareWeights(join(root, "single-11", "final"), join(out, "final"), `BERT tp2 checkpoint resumed at ${name}`);
    }
    // Fine-tuning: a classifier from the pretrained BERT, one process vs dp=2 ZeRO-1.
    const rows = Array.from({ length: 64 }, (_, i) => JSON.stringify({ text: `the ${i % 2 ? "owl" : "fox"} counted ${i} stones`, label: i % 2 ? "owl" : "fox" }));
    const cls = join(root, "cls.jsonl");
    writeFileSync(cls, rows.join("\n") + "\n");
    const ft = join(root, "ft.json");
    writeFileSync(ft, JSON.stringify({
      out_dir: "unused", model: { type: "bert", n_layer: 2, n_head: 2, n_embd: 32, block_size: 32, vocab_size: 30522, init_from: join(root, "single-11", "final") },
      train: { max_steps: 4, micro_batch_size: 2, grad_accum_steps: 2, log_interval: 100, seed: 5 }, optimizer: { lr: 1e-3 }, eval: { batches: 100 },
      finetune: { task: "classify", data: cls, max_len: 16 },
    }));
    train(ft, join(root, "ft-single"), 1, []);
    const classifierLayouts: Layout[] = [
      { name: "dp2 ZeRO-1", ranks: 2, sets: ["parallel.dp=2", "parallel.zero=1", ...DP2] },
      { name: "tp2", ranks: 2, sets: ["parallel.tp=2"] },
    ];
    for (const l of classifierLayouts) {
      const out = join(root, `ft-${l.name.replace(/\W+/g, "_")}`);
      train(ft, out, l.ranks, l.sets);
      assertCurve(losses(join(root, "ft-single")), losses(out), `BERT classifier ${l.name}`);
      await compareWeights(join(root, "ft-single", "final"), join(out, "final"), `BERT classifier ${l.name}`);
      assert.deepEqual(jsonOf(join(out, "final", "config.json")), jsonOf(join(root, "ft-single", "final", "config.json")), `BERT classifier ${l.name}: final/config.json`);
    }
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
