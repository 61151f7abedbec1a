// Shared by the layout-matrix tests (3D parallelism, expert parallelism): prepare a small
// corpus, train a config under N mpirun ranks (or one process), and compare runs: loss curves
// within 1e-5 relative, final weights within 1e-5 (+1e-5 x magnitude).
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { prepareData, loadTokenizer, readSafetensors } from "../../src/index.js";
import { mpirunArgs } from "../../src/cli/launch.js";

export const haveMpi = spawnSync("mpirun", ["--version"]).status === 0 && existsSync("native/build/Release/megalith_mpi.node");
export const skip = haveMpi ? false : "mpirun or the MPI addon is not available";
const bin = "bin/megalith.js";

/** A small generated corpus prepared with the GPT-2 tokenizer; returns its directory. */
export async function prepare(root: string): Promise<string> {
  const data = join(root, "data");
  const docs = Array.from({ length: 60 }, (_, i) => `Row ${i}: the ${["owl", "fox", "eel", "yak"][i % 4]} counted ${i * 7} stones by the river. `.repeat(5));
  await prepareData({ tokenizer: loadTokenizer("gpt2"), tokenizerSpec: "gpt2", inputs: [{ name: "gen", documents: docs }], outDir: data, valFraction: 0.1, progress: false });
  return data;
}

/** `megalith train` on `ranks` mpirun ranks (1 = a plain process), out_dir = `out`. */
export function train(file: string, out: string, ranks: number, sets: string[], extra: string[] = []): void {
  const args = ["train", "--config", file, "--set", `out_dir=${out}`, ...sets, ...extra];
  const r = ranks === 1
    ? spawnSync(process.execPath, [bin, ...args], { encoding: "utf8", timeout: 300_000 })
    : spawnSync("mpirun", mpirunArgs(ranks, args, undefined, bin), { encoding: "utf8", timeout: 300_000, env: { ...process.env, MEGALITH_NUM_THREADS: "1" } });
  assert.equal(r.status, 0, `${out}: ${r.stderr}`);
}

export function losses(dir: string): number[] {
  return readFileSync(join(dir, "metrics.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l)).filter((m) => m.split === undefined).map((m) => m.loss);
}

export async function compareWeights(a: string, b: string, label: string): Promise<void> {
  const wa = (await readSafetensors(join(a, "model.safetensors"))).tensors;
  const wb = (await readSafetensors(join(b, "model.safetensors"))).tensors;
  assert.deepEqual([...wb.keys()].sort(), [...wa.keys()].sort(), `${label}: the saved tensors differ`);
  for (const [n, rec] of wa) {
    const other = wb.get(n)!;
    assert.deepEqual(other.shape, rec.shape, `${label}: ${n} shape`);
    const x = new Float32Array(new Uint8Array(rec.data).buffer), y = new Float32Array(new Uint8Array(other.data).buffer);
    let err = 0, mag = 0;
    for (let i = 0; i < x.length; i++) { err = Math.max(err, Math.abs(x[i]! - y[i]!)); mag = Math.max(mag, Math.abs(x[i]!)); }
    // Sums run in another order across ranks; Adam divides by sqrt(v), so a last-bit gradient
    // difference becomes up to ~lr * 1e-3 per step: bound it absolutely (parameters are ~1e-2..1).
    assert.ok(err <= 1e-5 + 1e-5 * mag, `${label}: parameter ${n} differs by ${err} (magnitude ${mag})`);
  }
}

export function valLoss(dir: string): number {
  const rows = readFileSync(join(dir, "metrics.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l)).filter((m) => m.split === "val");
  return rows[rows.length - 1].loss;
}

export function assertCurve(a: number[], b: number[], label: string): void {
  assert.equal(b.length, a.length, `${label}: ${b.length} steps logged, expected ${a.length}`);
  a.forEach((v, i) => assert.ok(Math.abs(v - b[i]!) / Math.abs(v) < 1e-5, `${label} step ${i}: ${b[i]} vs single ${v}`));
}
