import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { closeSync, openSync, writeSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { rng, tempDir } from "./_helpers.js";

const CHILD = fileURLToPath(new URL("./_prepare_memory_child.ts", import.meta.url));
const MB = 1e6;

/** Writes ~`bytes` of generated paragraphs, as plain text or JSONL, in 1 MB writes. */
function writeCorpus(path: string, bytes: number, jsonl: boolean): void {
  const r = rng(17);
  const words = ["alpha", "beta", "gamma", "delta", "ünïcode", "日本語", "🙂", "42", "don't"];
  const fd = openSync(path, "w");
  let written = 0;
  while (written < bytes) {
    const docs: string[] = [];
    let size = 0;
    while (size < MB) {
      const n = 20 + Math.floor(r() * 400);
      const doc = Array.from({ length: n }, () => words[Math.floor(r() * words.length)] + (r() < 0.05 ? "\n" : " ")).join("");
      docs.push(jsonl ? JSON.stringify({ text: doc }) + "\n" : doc + "\n\n");
      size += doc.length;
    }
    written += writeSync(fd, docs.join(""));
  }
  closeSync(fd);
}

/**
 * Runs a preparation in a fresh process and returns its RSS growth. The child's V8 heap is
 * capped (64 MB old space, 4 MB semi-spaces): uncapped, V8 lets short-lived garbage (the
 * number[] each encode() returns) pile up to ~100 MB before collecting, so RSS would measure GC
 * pacing rather than what the pipeline holds. With the cap, a pipeline that kept the input (a
 * 50 MB file is 100 MB as a JS string, 400 MB as number[] ids) runs out of memory instead of
 * passing, and off-heap leaks (Buffers) still show in the RSS bound.
 */
function preparePeak(input: string, out: string, separator?: string): { growthMB: number; seconds: number; documents: number; tokens: number } {
  const args = ["--max-old-space-size=64", "--max-semi-space-size=4", "--import", "tsx", CHILD, input, out, ...(separator ? [separator] : [])];
  const res = spawnSync(process.execPath, args, { encoding: "utf8" });
  assert.equal(res.status, 0, res.stderr);
  const r = JSON.parse(res.stdout);
  return { growthMB: (r.peakRss - r.baselineRss) / MB, seconds: r.seconds, documents: r.documents, tokens: r.tokens };
}

test("`prepareData()` prepares 50 MB of text or JSONL in constant memory", (t) => {
  const dir = tempDir(t);
  for (const [name, jsonl] of [["corpus.txt", false], ["corpus.jsonl", true]] as const) {
    const input = join(dir, name);
    writeCorpus(input, 50 * MB, jsonl);
    const r = preparePeak(input, join(dir, `out-${name}`), jsonl ? undefined : "\n\n");
    t.diagnostic(`${name}: ${r.documents} documents, ${r.tokens} tokens in ${r.seconds.toFixed(1)} s, peak RSS growth ${r.growthMB.toFixed(0)} MB`);
    assert.ok(r.documents > 10_000);
    assert.ok(r.growthMB < 100, `peak RSS grew by ${r.growthMB.toFixed(0)} MB while preparing 50 MB`);
  }
});
