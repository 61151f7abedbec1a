// Mixed precision under data parallelism: dp=2 DDP, ZeRO-1 and ZeRO-3 in bf16 (and ZeRO-1 with
// bf16 gradient reductions) train the same 12 steps as one bf16 process with the same global
// batch, within bf16's tolerance, for two seeds. bf16 rounds each rank's partial weight
// gradients, so the bits differ from one process; the losses stay within 1-2%.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { prepareData, loadTokenizer } from "../../src/index.js";
import { mpirunArgs } from "../../src/cli/launch.js";

const haveMpi = spawnSync("mpirun", ["--version"]).status === 0 && existsSync("native/build/Release/megalith_mpi.node");

function losses(dir: string): number[] {
  return readFileSync(join(dir, "metrics.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l)).filter((m) => m.split === undefined && m.skipped === undefined).map((m) => m.loss);
}

const LAYOUTS: Array<[string, string[]]> = [
  ["dp2", ["parallel.dp=2", "train.micro_batch_size=2"]],
  ["dp2_zero1", ["parallel.dp=2", "parallel.zero=1", "train.micro_batch_size=2"]],
  ["dp2_zero3", ["parallel.dp=2", "parallel.zero=3", "train.micro_batch_size=2"]],
  ["dp2_zero1_reduce_bf16", ["parallel.dp=2", "parallel.zero=1", "parallel.reduce_dtype=bf16", "train.micro_batch_size=2"]],
];

for (const seed of [11, 23]) {
  test(`bf16 layouts (dp=2 DDP, ZeRO-1, ZeRO-3, bf16 reductions) follow one bf16 process within bf16 tolerance (seed ${seed})`, { skip: haveMpi ? false : "mpirun or the MPI addon is not available" }, async () => {
    const root = mkdtempSync(join(tmpdir(), "megalith-bf16dp-"));
    try {
      const data = join(root, "data");
      const docs = Array.from({ length: 50 }, (_, i) => `Line ${i} says the ${["cat", "dog", "bird"][i % 3]} ate ${i} seeds today. `.repeat(6));
      await prepareData({ tokenizer: loadTokenizer("gpt2"), tokenizerSpec: "gpt2", inputs: [{ name: "gen", documents: docs }], outDir: data, valFraction: 0.1, progress: false });
      const cfg = {
        out_dir: "x", model: { n_layer: 2, n_head: 2, n_embd: 32, block_size: 32, vocab_size: 50304 }, data: { source: data },
        train: { max_steps: 12, micro_batch_size: 4, seed, log_interval: 100, precision: "bf16" }, optimizer: { lr: 3e-3, warmup_steps: 2, decay_steps: 12 },
        eval: { interval: 0, batches: 1 }, checkpoint: { interval: 0, keep: 1 },
      };
      const file = join(root, "cfg.json");
      writeFileSync(file, JSON.stringify(cfg));
      const bin = "bin/megalith.js";
      const single = spawnSync(process.execPath, [bin, "train", "--config", file, "--set", `out_dir=${join(root, "single")}`], { encoding: "utf8", timeout: 240_000 });
      assert.equal(single.status, 0, single.stderr);
      const a = losses(join(root, "single"));
      assert.equal(a.length, 12);
      for (const [name, sets] of LAYOUTS) {
        const r = spawnSync("mpirun", mpirunArgs(2, ["train", "--config", file, "--set", `out_dir=${join(root, name)}`, ...sets], undefined, bin), {
          encoding: "utf8", timeout: 240_000, env: { ...process.env, MEGALITH_NUM_THREADS: "1" },
        });
        assert.equal(r.status, 0, `${name}: ${r.stderr}`);
        const b = losses(join(root, name));
        assert.equal(b.length, a.length, name);
        a.forEach((v, i) => assert.ok(Math.abs(v - b[i]!) / v < 2e-2, `${name} step ${i + 1}: ${b[i]} vs one process ${v}`));
        assert.ok(Math.abs(a[11]! - b[11]!) / a[11]! < 1e-2, `${name}: final loss ${b[11]} vs ${a[11]}`);
      }
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
}
