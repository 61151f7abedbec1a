#!/usr/bin/env node
// Checks the import graph of src/: no file-level import cycles across folders, and imports
// only point down the layer order below (docs/LAYOUT.md explains it). Exit 1 on violations.
import { readFileSync, readdirSync, statSync } from "node:fs";
import { join, dirname, relative, resolve } from "node:path";

const root = resolve(new URL("..", import.meta.url).pathname, "src");
// Lower index = lower layer. A folder may import its own layer or any lower one.
const LAYERS = [
  ["core"],
  ["backend"],
  ["autograd"],
  ["tensor"],
  ["tokenizers", "checkpoint"],
  ["data", "nn"],
  ["optim", "models", "inference"],
  ["parallel"],
  ["train", "serve", "dashboard", "plan"],
  ["cli"],
  ["index.ts"],
];
// tokenizers and data depend on core only (STYLE.md); the inference scheduler and KV block
// manager are pure bookkeeping and never import tensor code.
const ONLY = {
  tokenizers: ["core", "tokenizers"],
  data: ["core", "tokenizers", "data"],
  "inference/kv_cache": ["core", "inference/kv_cache"],
  "inference/scheduler": ["core", "inference/kv_cache", "inference/scheduler"],
};
const layerOf = (top) => LAYERS.findIndex((l) => l.includes(top));

function walk(dir) {
  return readdirSync(dir).flatMap((n) => {
    const p = join(dir, n);
    return statSync(p).isDirectory() ? walk(p) : p.endsWith(".ts") ? [p] : [];
  });
}

const files = walk(root);
const edges = new Map();
const problems = [];
for (const f of files) {
  const src = readFileSync(f, "utf8");
  const deps = [];
  for (const m of src.matchAll(/(?:import|export)\s[^'"]*?from\s+["'](\.[^"']+)["']/g)) {
    const target = resolve(dirname(f), m[1].replace(/\.js$/, ".ts"));
    deps.push(target);
  }
  edges.set(f, deps);
  const rel = relative(root, f);
  const top = rel.includes("/") ? rel.split("/")[0] : rel;
  for (const d of deps) {
    const drel = relative(root, d);
    const dtop = drel.includes("/") ? drel.split("/")[0] : drel;
    if (layerOf(top) < 0) problems.push(`${rel}: folder '${top}' is not in the layer list (scripts/check-layers.mjs)`);
    else if (layerOf(dtop) > layerOf(top)) problems.push(`${rel} imports ${drel}: '${top}' may not import the higher layer '${dtop}'`);
    for (const [scope, allowed] of Object.entries(ONLY)) {
      if (rel.startsWith(scope + "/") && !allowed.some((a) => drel.startsWith(a + "/") || drel === a)) {
        problems.push(`${rel} imports ${drel}: '${scope}' may only import ${allowed.join(", ")}`);
      }
    }
  }
}
// Cycles between folders (file-level cycles inside one folder are allowed: a class and its ops).
const folderOf = (f) => dirname(relative(root, f));
const fedges = new Map();
for (const [f, deps] of edges) {
  const a = folderOf(f);
  for (const d of deps) {
    const b = folderOf(d);
    if (a === b) continue;
    if (!fedges.has(a)) fedges.set(a, new Set());
    fedges.get(a).add(b);
  }
}
const state = new Map();
function dfs(n, path) {
  state.set(n, 1);
  for (const m of fedges.get(n) ?? []) {
    if (state.get(m) === 1) problems.push(`import cycle between folders: ${[...path, n, m].join(" -> ")}`);
    else if (!state.has(m)) dfs(m, [...path, n]);
  }
  state.set(n, 2);
}
for (const n of fedges.keys()) if (!state.has(n)) dfs(n, []);

if (problems.length) {
  console.error(`layer check: ${problems.length} problem(s)\n` + [...new Set(problems)].join("\n"));
  process.exit(1);
}
console.log(`layer check: ${files.length} files, imports point down, no folder cycles`);
