// Expert parallelism reproduces the single-process run, under real mpirun ranks: ep=2 (2 ranks)
// and ep=2 x dp=2 (4 ranks) train 12 steps and must follow the single process's loss curve and
// end with its parameters (fp32: 1e-5 relative).
//
// What is equal, precisely: with ep, capacity is computed on each rank's own tokens (DeepSpeed:
// each source rank may send each expert ceil(cf * N_local * k / E) tokens), and the router's
// aux loss is each rank's own E * sum f_e P_e, averaged over ranks by the gradient average.
// So an ep run equals one process that runs each rank's micro-batch as its own micro-step:
// every layout below reads one row per micro-step (micro_batch_size=1) and the same 4 rows per
// step (single: 4 accumulation steps; ep=2: 2 per rank; ep=2 x dp=2: 1 per rank), and then
// even token dropping (capacity_factor 1.0, top-2) and the aux loss match exactly. One
// process running the 4 rows as one batch of 4 would route with 4x the capacity and another
// aux loss: a different model, not a layout of this one. It is the same model only when
// nothing drops and the aux loss is off (the last test): top-2 with capacity_factor = E gives
// every expert room for every token, and the z-loss and cross-entropy are token means.
import { test } from "node:test";
import assert from "node:assert/strict";
import { cpSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { readSafetensors } from "../../src/index.js";
import { skip, prepare, train, losses, assertCurve, compareWeights as compareLayoutWeights } from "./_layouts.js";
import { GPT } from "../../src/models/index.js";
import { MoE } from "../../src/nn/index.js";
import { tensor, manualSeed } from "../../src/tensor/index.js";
import { loadConfig } from "../../src/train/config.js";


/** Two MoE configs: top-2 with dropping active (cf 1.0) in every block; top-1 (cf 1.25) in every 2nd block, no biases, clipping active. */
const CONFIGS = [
  {
    name: "top2_dropping",
    model: { n_layer: 2, n_head: 2, n_embd: 32, block_size: 16, vocab_size: 50304, moe: { num_experts: 4, top_k: 2, capacity_factor: 1.0, aux_loss_coef: 0.01, z_loss_coef: 0.001 } },
    train: { micro_batch_size: 1, grad_accum_steps: 4, seed: 5, grad_clip: 1.0 },
  },
  {
    name: "top1_every2",
    model: { n_layer: 2, n_head: 2, n_embd: 32, block_size: 16, vocab_size: 50304, bias: false, moe: { num_experts: 4, top_k: 1, capacity_factor: 1.25, every: 2 } },
    train: { micro_batch_size: 1, grad_accum_steps: 4, seed: 17, grad_clip: 0.05 },
  },
];

/** The layouts: each keeps 4 rows per step, one row per micro-step per rank. */
const LAYOUTS: Array<{ name: string; ranks: number; sets: string[] }> = [
  { name: "ep2", ranks: 2, sets: ["parallel.dp=2", "parallel.ep=2", "train.grad_accum_steps=2"] },
  { name: "ep2_dp2", ranks: 4, sets: ["parallel.dp=4", "parallel.ep=2", "train.grad_accum_steps=1"] },
  // ZeRO-1: the shared parameters' state sharded over dp x ep, the experts' over dp.
  { name: "ep2_zero1", ranks: 2, sets: ["parallel.dp=2", "parallel.ep=2", "train.grad_accum_steps=2", "parallel.zero=1"] },
  { name: "ep2_dp2_zero1", ranks: 4, sets: ["parallel.dp=4", "parallel.ep=2", "train.grad_accum_steps=1", "parallel.zero=1"] },
];

function writeConfig(root: string, data: string, c: { name: string; model: object; train: object }, extra: Record<string, unknown> = {}): string {
  const cfg = {
    out_dir: "x", model: c.model, data: { source: data },
    train: { max_steps: 12, log_interval: 100, ...c.train }, optimizer: { lr: 3e-3, warmup_steps: 2, decay_steps: 16 },
    eval: { interval: 0, batches: 1 }, checkpoint: { interval: 0, keep: 3 }, ...extra,
  };
  const file = join(root, `cfg_${c.name}.json`);
  writeFileSync(file, JSON.stringify(cfg));
  return file;
}

/** The shared comparison, plus: every expert is saved under its logical name. */
async function compareWeights(a: string, b: string, label: string): Promise<void> {
  const names = [...(await readSafetensors(join(a, "model.safetensors"))).tensors.keys()];
  assert.ok(names.some((n) => /mlp\.experts\.3\./.test(n)), `${label}: every expert is saved under its logical name`);
  await compareLayoutWeights(a, b, label);
}

test("parallel.ep is validated with errors naming the key", () => {
  const root = mkdtempSync(join(tmpdir(), "megalith-ep-cfg-"));
  try {
    const file = writeConfig(root, "brown", CONFIGS[0]!);
    const refuses = (sets: string[], re: RegExp) => assert.throws(() => loadConfig(file, sets), re);
    refuses(["parallel.dp=3", "parallel.ep=3"], /parallel\.ep.*num_experts \(4\) must be divisible by parallel\.ep \(3\)/s);
    refuses(["parallel.dp=2", "parallel.ep=4"], /parallel\.ep.*4 must divide parallel\.dp \(2\)/s);
    refuses(["parallel.dp=2", "parallel.ep=2", "model.moe=null"], /parallel\.ep.*model\.moe.*null/s);
    refuses(["parallel.dp=2", "parallel.ep=2", "parallel.zero=2"], /parallel\.ep.*ZeRO stages 0 and 1/s);
    assert.equal(loadConfig(file, ["parallel.dp=4", "parallel.ep=2"]).parallel.ep, 2);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test("the top2_dropping config drops routing choices at one row per batch (so the layouts below compare with dropping active)", () => {
  manualSeed(5);
  const m = new GPT({ nLayer: 2, nHead: 2, nEmbd: 32, blockSize: 16, vocabSize: 50304, moe: { numExperts: 4, topK: 2, capacityFactor: 1.0 } }, { seed: 5 });
  m.train();
  const x = tensor(Int32Array.from({ length: 16 }, (_, i) => (i * 7919) % 50000), { shape: [1, 16], dtype: "int32" });
  m.forward(x, x);
  const dropped = m.h.map((b) => (b.mlp instanceof MoE ? b.mlp.lastStats!.droppedFraction : 0));
  assert.ok(dropped.some((d) => d > 0), `no choice dropped: ${JSON.stringify(dropped)}`);
});

for (const c of CONFIGS) {
  test(`ep=2 and ep=2 x dp=2, with DDP and ZeRO-1, reproduce one process running each rank's micro-batch as its own micro-step (${c.name})`, { skip }, async () => {
    const root = mkdtempSync(join(tmpdir(), `megalith-ep-${c.name}-`));
    try {
      const file = writeConfig(root, await prepare(root), c);
      train(file, join(root, "single"), 1, []);
      const ref = losses(join(root, "single"));
      for (const l of LAYOUTS) {
        train(file, join(root, l.name), l.ranks, l.sets);
        assertCurve(ref, losses(join(root, l.name)), `${c.name}/${l.name}`);
        await compareWeights(join(root, "single", "final"), join(root, l.name, "final"), `${c.name}/${l.name}`);
      }
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
}

test("with nothing dropped (top-2, capacity_factor = num_experts) and no aux loss, ep=2 equals one process running the ranks' rows as one batch", { skip }, async () => {
  const root = mkdtempSync(join(tmpdir(), "megalith-ep-nodrop-"));
  try {
    const c = { ...CONFIGS[0]!, model: { ...CONFIGS[0]!.model, moe: { num_experts: 4, top_k: 2, capacity_factor: 4, aux_loss_coef: 0, z_loss_coef: 0.001 } } };
    const file = writeConfig(root, await prepare(root), c);
    // One process: micro-batches of 2 rows; ep=2: 1 row per rank, the same 2 rows per micro-step.
    train(file, join(root, "single"), 1, ["train.micro_batch_size=2", "train.grad_accum_steps=2"]);
    train(file, join(root, "ep2"), 2, ["parallel.dp=2", "parallel.ep=2", "train.grad_accum_steps=2"]);
    assertCurve(losses(join(root, "single")), losses(join(root, "ep2")), "no-drop ep2");
    await compareWeights(join(root, "single", "final"), join(root, "ep2", "final"), "no-drop ep2");
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test("checkpoints saved at ep=2 (DDP and ZeRO-1) hold logical files and resume in one process and at ep=2 x dp=2 on the uninterrupted curve", { skip }, async () => {
  const root = mkdtempSync(join(tmpdir(), "megalith-ep-resume-"));
  try {
    const c = CONFIGS[0]!;
    const file = writeConfig(root, await prepare(root), c, { checkpoint: { interval: 6, keep: 3 } });
    train(file, join(root, "single"), 1, []);
    const ref = losses(join(root, "single"));
    const saves: Array<[string, number, string[]]> = [["ep2", 2, LAYOUTS[0]!.sets], ["ep2_zero1", 2, LAYOUTS[2]!.sets]];
    for (const [saveName, saveRanks, saveSets] of saves) {
      train(file, join(root, saveName), saveRanks, saveSets);
      const saved = join(root, saveName, "ckpt-000006");
      assert.ok(existsSync(join(saved, "model.safetensors")) && existsSync(join(saved, "optimizer.safetensors")), `${saveName}: the ep checkpoint holds logical model and optimizer files`);
      const names = [...(await readSafetensors(join(saved, "model.safetensors"))).tensors.keys()];
      for (let j = 0; j < 4; j++) assert.ok(names.some((n) => n.includes(`mlp.experts.${j}.c_fc.weight`)), `${saveName}: expert ${j} is in the checkpoint`);
      const resumes: Array<[string, number, string[]]> = [["one", 1, []], ["ep2_dp2", 4, LAYOUTS[1]!.sets], ["ep2_dp2_zero1", 4, LAYOUTS[3]!.sets]];
      for (const [name, ranks, sets] of resumes) {
        const out = join(root, `resume_${saveName}_at_${name}`);
        mkdirSync(out, { recursive: true });
        cpSync(saved, join(out, "ckpt-000006"), { recursive: true });
        train(file, out, ranks, sets, ["--resume"]);
        assertCurve(ref.slice(6), losses(out), `${saveName} resumed at ${name}`);
        await compareWeights(join(root, "single", "final"), join(out, "final"), `${saveName} resumed at ${name}`);
      }
    }
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
