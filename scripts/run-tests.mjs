#!/usr/bin/env node
// Runs every test/**/*.test.ts with node's built-in test runner (TypeScript via tsx).
// Test files run one at a time: the machine has 2 cores and most suites use both.
import { readdirSync, statSync } from "node:fs";
import { join, relative } from "node:path";
import { spawnSync } from "node:child_process";

const root = new URL("..", import.meta.url).pathname;
function walk(dir) {
  const out = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...walk(p));
    else if (name.endsWith(".test.ts")) out.push(p);
  }
  return out;
}
const filter = process.argv.slice(2);
let files = walk(join(root, "test")).sort();
if (filter.length) files = files.filter((f) => filter.some((s) => f.includes(s)));
if (!files.length) {
  console.error(`no test files matched ${filter.join(" ")}`);
  process.exit(1);
}
const res = spawnSync(
  process.execPath,
  ["--import", "tsx", "--test", "--test-concurrency=1", "--test-reporter=spec", ...files.map((f) => relative(root, f))],
  { cwd: root, stdio: "inherit" },
);
process.exit(res.status ?? 1);
