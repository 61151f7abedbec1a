// parallel.offload "disk" under ZeRO across ranks: each of dp=2 mpirun ranks streams its own
// shard of the moments from its own file, and the run logs the same losses (===) and saves the
// same per-rank optimizer shards (byte for byte) as ZeRO without offload; ZeRO-3 (parameters
// sharded too) likewise. Identical checkpoint bytes are what make resuming (into any layout, with
// or without offload) the path test/parallel/zero_checkpoint.test.ts already covers.
import { test, before } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { skip, train, losses } from "./_layouts.js";
import { tinyData, tinyRawConfig } from "../train/_helpers.js";

// The sources, not a compiled dist/ that may predate them (spawned ranks inherit this).
process.env.MEGALITH_FROM_SOURCE = "1";
let root = "";
let file = "";
before(async () => {
  root = mkdtempSync(join(tmpdir(), "megalith-offload-mpi-"));
  process.on("exit", () => rmSync(root, { recursive: true, force: true }));
  const data = (await tinyData()).dir;
  file = join(root, "config.json");
  writeFileSync(file, JSON.stringify(tinyRawConfig("placeholder", data, {
    train: { max_steps: 6, micro_batch_size: 2, grad_accum_steps: 2 },
    optimizer: { lr: 3e-3, min_lr: 3e-4, warmup_steps: 2, decay_steps: 12 },
    checkpoint: { interval: 3, keep: 2 },
  })));
});

const shard = (out: string, r: number) => readFileSync(join(out, "ckpt-000006", `optimizer-rank0000${r}-of-00002.safetensors`));

test("dp=2 ZeRO-2 and ZeRO-3 with parallel.offload=disk equal ZeRO without offload: losses, each rank's optimizer shard", { skip }, () => {
  for (const zero of [2, 3]) {
    const mem = join(root, `z${zero}-mem`), disk = join(root, `z${zero}-disk`);
    const sets = ["parallel.dp=2", `parallel.zero=${zero}`];
    train(file, mem, 2, sets);
    train(file, disk, 2, [...sets, "parallel.offload=disk", "parallel.offload_chunk_mb=0.004"]);
    assert.equal(losses(mem).length, 6);
    assert.deepEqual(losses(disk), losses(mem), `ZeRO-${zero}: losses`);
    for (const r of [0, 1]) {
      assert.ok(shard(disk, r).equals(shard(mem, r)), `ZeRO-${zero}: rank ${r}'s optimizer shard`);
      assert.ok(existsSync(join(disk, "offload", `adamw-moments-rank0000${r}.bin`)), `ZeRO-${zero}: rank ${r}'s offload file`);
    }
  }
});
