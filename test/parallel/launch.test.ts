// `megalith launch -n 2 -- train ...` runs the trainer on two ranks; a config whose dp does not
// match the number of ranks fails with a message saying both.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const haveMpi = spawnSync("mpirun", ["--version"]).status === 0 && existsSync("native/build/Release/megalith_mpi.node");

test("`megalith launch -n 2 -- train` trains data-parallel and rank 0 writes the metrics", { skip: haveMpi ? false : "mpirun or the MPI addon is not available" }, () => {
  const out = mkdtempSync(join(tmpdir(), "megalith-launch-"));
  try {
    const common = ["train", "--config", "configs/tiny.json", "--set", `out_dir=${out}`, "train.max_steps=3", "train.micro_batch_size=4", "checkpoint.interval=0", "eval.batches=1"];
    const r = spawnSync(process.execPath, ["bin/megalith.js", "launch", "-n", "2", "--", ...common, "parallel.dp=2"], { encoding: "utf8", timeout: 180_000 });
    assert.equal(r.status, 0, r.stderr);
    const lines = readFileSync(join(out, "metrics.jsonl"), "utf8").trim().split("\n");
    assert.equal(lines.filter((l) => !l.includes('"split"')).length, 3, "one line per step, from rank 0 only");
    const bad = spawnSync(process.execPath, ["bin/megalith.js", "launch", "-n", "2", "--", ...common, "parallel.dp=3"], { encoding: "utf8", timeout: 180_000 });
    assert.notEqual(bad.status, 0);
    assert.match(bad.stderr + bad.stdout, /dp=3.*must equal the number of ranks \(2\)/);
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});
