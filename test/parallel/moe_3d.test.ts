// Mixture of experts under tensor and pipeline parallelism reproduces the single-process run,
// under real mpirun ranks. The matrix is data, as in layouts_3d.test.ts: each layout trains the
// same 12 steps from the same seed and global batch as one process, and must follow its loss
// curve (the reported loss includes every stage's router losses), its val loss and its final
// parameters (fp32: 1e-5 relative). Two configs with different seeds, routing (top-2 with
// capacity dropping active in every block; top-1 in every 2nd block, no biases, clipping).
//
// Why these are the same model, exactly: pp and tp leave each micro-batch whole, so every MoE
// layer routes the same N tokens with the same capacity as one process. Under pp each stage
// backpropagates its own blocks' router losses (their gradients are local to each layer); under
// tp the MoE MLPs are replicated, every tp rank routing the same tokens the same way.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { skip, prepare, train, losses, valLoss, assertCurve, compareWeights } from "./_layouts.js";

interface Layout { name: string; ranks: number; sets: string[] }
const LAYOUTS: Layout[] = [
  { name: "pp2_1f1b", ranks: 2, sets: ["parallel.pp=2", "parallel.pp_schedule=1f1b"] },
  { name: "pp2_interleaved_v2", ranks: 2, sets: ["parallel.pp=2", "parallel.pp_schedule=interleaved", "parallel.pp_virtual_stages=2"] },
  { name: "tp2", ranks: 2, sets: ["parallel.tp=2"] },
  { name: "tp2_pp2", ranks: 4, sets: ["parallel.tp=2", "parallel.pp=2"] },
];

const CONFIGS = [
  {
    name: "top2_dropping",
    model: { n_layer: 4, n_head: 2, n_embd: 32, block_size: 16, vocab_size: 50304, moe: { num_experts: 4, top_k: 2, capacity_factor: 1.0, aux_loss_coef: 0.05, z_loss_coef: 0.01 } },
    train: { micro_batch_size: 2, grad_accum_steps: 2, seed: 5, grad_clip: 1.0 },
  },
  {
    name: "top1_every2",
    model: { n_layer: 4, n_head: 2, n_embd: 32, block_size: 16, vocab_size: 50304, bias: false, moe: { num_experts: 4, top_k: 1, capacity_factor: 1.25, every: 2 } },
    train: { micro_batch_size: 2, grad_accum_steps: 2, seed: 17, grad_clip: 0.05 },
  },
];

function writeConfig(root: string, data: string, c: (typeof CONFIGS)[number]): string {
  const cfg = {
    out_dir: "x", model: c.model, data: { source: data },
    train: { max_steps: 12, log_interval: 100, ...c.train }, optimizer: { lr: 3e-3, warmup_steps: 2, decay_steps: 16 },
    eval: { interval: 0, batches: 1 }, checkpoint: { interval: 0, keep: 3 },
  };
  const file = join(root, `cfg_${c.name}.json`);
  writeFileSync(file, JSON.stringify(cfg));
  return file;
}

for (const c of CONFIGS) {
  test(`MoE under pp (1f1b, interleaved), tp and tp x pp reproduces one process, config ${c.name}`, { skip }, async () => {
    const root = mkdtempSync(join(tmpdir(), `megalith-moe3d-${c.name}-`));
    try {
      const file = writeConfig(root, await prepare(root), c);
      train(file, join(root, "single"), 1, []);
      const ref = losses(join(root, "single"));
      for (const l of LAYOUTS) {
        train(file, join(root, l.name), l.ranks, l.sets);
        assertCurve(ref, losses(join(root, l.name)), `${c.name}/${l.name}`);
        const a = valLoss(join(root, "single")), b = valLoss(join(root, l.name));
        assert.ok(Math.abs(a - b) / a < 1e-5, `${c.name}/${l.name}: val loss ${b} vs single ${a}`);
        await compareWeights(join(root, "single", "final"), join(root, l.name, "final"), `${c.name}/${l.name}`);
      }
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
}
