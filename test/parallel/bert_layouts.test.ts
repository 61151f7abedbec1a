// BERT pretraining and fine-tuning under data parallelism and ZeRO, as data: each layout
// (dp=2 with ZeRO 0..3) reproduces the single-process MLM + NSP loss curve and final weights,
// on two seeds; a classifier fine-tuned at dp=2 with ZeRO-1 reproduces the single process too.
// Masks are keyed by (seed, epoch, example), so every rank draws the single process's masks.
import { test } from "node:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadTokenizer, type WordPiece } from "../../src/tokenizers/index.js";
import { prepareMlmData } from "../../src/data/index.js";
import { skip, train, losses, assertCurve, compareWeights } from "./_layouts.js";

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
/** Each seed runs the single process and half of the layouts (all four are covered). */
const SEEDS: Array<[number, Layout[]]> = [[11, [LAYOUTS[0]!, LAYOUTS[2]!]], [23, [LAYOUTS[1]!, LAYOUTS[3]!]]];

test("BERT MLM + NSP at dp=2 with ZeRO 0-3 reproduces the single-process run (two seeds); a dp=2 ZeRO-1 BERT classifier too", { skip }, async () => {
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
      eval: { batches: 2 },
    }));
    for (const [seed, layouts] of SEEDS) {
      const single = join(root, `single-${seed}`);
      train(file, single, 1, [`train.seed=${seed}`]);
      const ref = losses(single);
      for (const l of layouts) {
        const out = join(root, `${l.name.replace(/\W+/g, "_")}-${seed}`);
        train(file, out, l.ranks, [`train.seed=${seed}`, ...l.sets]);
        assertCurve(ref, losses(out), `BERT ${l.name} seed ${seed}`);
        await compareWeights(join(single, "final"), join(out, "final"), `BERT ${l.name} seed ${seed}`);
      }
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
    train(ft, join(root, "ft-dp2"), 2, ["parallel.dp=2", "parallel.zero=1", ...DP2]);
    assertCurve(losses(join(root, "ft-single")), losses(join(root, "ft-dp2")), "BERT classifier dp2 ZeRO-1");
    await compareWeights(join(root, "ft-single", "final"), join(root, "ft-dp2", "final"), "BERT classifier dp2 ZeRO-1");
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
