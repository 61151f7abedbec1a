// `megalith launch -n 2 -- train ...` runs the trainer on two ranks; a config whose dp does not
// match the number of ranks fails with a message saying both; failures keep their rank and code.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { mpirunArgs } from "../../src/cli/launch.js";

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

test("mpirunArgs() has the container-safe flags, forwards MEGALITH_ settings, and ends with node <script> <args>", () => {
  process.env.MEGALITH_COLLECTIVE_TIMEOUT_S = "30";
  try {
    const a = mpirunArgs(3, ["train", "--config", "c.json"], "hosts.txt", "bin/megalith.js");
    for (const flag of ["--allow-run-as-root", "--oversubscribe", "--tag-output"]) assert.ok(a.includes(flag), flag);
    assert.equal(a[a.indexOf("--bind-to") + 1], "none");
    assert.equal(a[a.indexOf("btl") + 1], "self,vader,tcp");
    assert.equal(a[a.indexOf("--hostfile") + 1], "hosts.txt");
    assert.equal(a[a.indexOf("-np") + 1], "3");
    assert.ok(a.join(" ").includes("-x MEGALITH_COLLECTIVE_TIMEOUT_S"));
    assert.deepEqual(a.slice(-5), [process.execPath, "bin/megalith.js", "train", "--config", "c.json"]);
  } finally {
    delete process.env.MEGALITH_COLLECTIVE_TIMEOUT_S;
  }
});

test("`megalith launch` shows each rank's error tagged with its rank and exits with the job's code", { skip: haveMpi ? false : "mpirun or the MPI addon is not available" }, () => {
  const r = spawnSync(process.execPath, ["bin/megalith.js", "launch", "-n", "2", "--", "train", "--config", "/nonexistent/megalith.json"], { encoding: "utf8", timeout: 60_000 });
  assert.equal(r.status, 2, r.stderr);
  assert.match(r.stderr, /\[\d+,0\]<stderr>:megalith: error: config file \/nonexistent\/megalith.json not found/);
  assert.match(r.stderr, /\[\d+,1\]<stderr>:megalith: error: config file/);
  assert.match(r.stderr, /megalith launch: the job failed \(mpirun exit code 2\)/);
  const bad = spawnSync(process.execPath, ["bin/megalith.js", "launch", "-n", "0", "--", "train"], { encoding: "utf8", timeout: 60_000 });
  assert.notEqual(bad.status, 0);
  assert.match(bad.stderr, /--np must be a positive integer, got "0"/);
});
