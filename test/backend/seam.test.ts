// The backend seam holds: outside src/backend/ no source file loads a native addon, imports the
// addon's typed surface, or touches raw addresses (`.ptr`, `address + n * size`). Tensors and
// everything above them see buffers, element offsets and dtypes only.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, readdirSync, statSync } from "node:fs";
import { join, relative } from "node:path";

const root = new URL("../..", import.meta.url).pathname;
const src = join(root, "src");

function walk(dir: string): string[] {
  return readdirSync(dir).flatMap((n) => {
    const p = join(dir, n);
    return statSync(p).isDirectory() ? walk(p) : p.endsWith(".ts") ? [p] : [];
  });
}

const files = walk(src).filter((f) => !relative(src, f).startsWith("backend/"));

/** Lines of `text` matching `re`, as "file:line: text", comments excluded. */
function offending(re: RegExp): string[] {
  const out: string[] = [];
  for (const f of files) {
    readFileSync(f, "utf8").split("\n").forEach((line, i) => {
      const code = line.replace(/\/\/.*$/, "");
      if (/^\s*(\*|\/\*)/.test(line)) return;
      if (re.test(code)) out.push(`${relative(root, f)}:${i + 1}: ${line.trim()}`);
    });
  }
  return out;
}

test("no file outside src/backend/ imports the native addon or its typed surface", () => {
  // An addon is a .node file (loaded with createRequire); createRequire for npm packages' data is fine.
  const hits = offending(/from\s+["'][^"']*backend\/(native|native_addon|native_backend|profile)(\/[^"']*)?(\.js)?["']|\.node["'`]|megalith_\w+\.node/);
  assert.deepEqual(hits, [], `these files reach past the Backend interface:\n${hits.join("\n")}`);
});

test("no file outside src/backend/ reads raw addresses or does byte arithmetic on buffers", () => {
  const hits = offending(/\.ptr\b|\baddressOf\b/);
  assert.deepEqual(hits, [], `these lines use raw addresses (take a BufferView, or tensor.at(elements)):\n${hits.join("\n")}`);
});
