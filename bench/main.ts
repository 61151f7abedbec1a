/**
 * `npm run bench -- <suite> [args]`: runs one benchmark suite, prints a short table and writes
 * the JSON result to bench/results/<suite>.json. Each suite is a module exporting
 * `run(args: string[]): Promise<BenchResult>`.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

export interface BenchResult {
  suite: string;
  /** Machine and settings the numbers were taken with. */
  env: Record<string, unknown>;
  /** One row per measurement; every row has a `name`. */
  rows: Array<Record<string, unknown> & { name: string }>;
}

const suites: Record<string, () => Promise<{ run(args: string[]): Promise<BenchResult> }>> = {
  ops: () => import("./ops.js"),
  tokenizer: () => import("./tokenizer.js"),
  train: () => import("./train.js"),
  serve: () => import("./serve.js"),
  comm: () => import("./comm.js"),
  precision: () => import("./precision.js"),
  parallel: () => import("./parallel.js"),
  bubble: () => import("./bubble.js"),
  plan: () => import("./plan.js"),
  moe: () => import("./moe.js"),
  offload: () => import("./offload.js"),
  finetune: () => import("./finetune.js"),
};

const [suite, ...args] = process.argv.slice(2);
if (!suite || !(suite in suites)) {
  console.error(`usage: npm run bench -- <${Object.keys(suites).join("|")}> [args]; got ${JSON.stringify(suite)}`);
  process.exit(2);
}
const mod = await suites[suite]!();
const result = await mod.run(args);
const here = dirname(fileURLToPath(import.meta.url));
mkdirSync(join(here, "results"), { recursive: true });
const file = join(here, "results", `${suite}.json`);
writeFileSync(file, JSON.stringify(result, null, 2) + "\n");
console.table(result.rows);
console.log(`wrote ${file}`);
