// Shared helpers for the checkpoint tests: scratch directories, fresh random bytes, and an
// optional /usr/bin/python3 (with numpy, maybe torch) for independent cross-checks.

import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after } from "node:test";

const scratch: string[] = [];
after(() => {
  for (const d of scratch) rmSync(d, { recursive: true, force: true });
});

/** A fresh scratch directory, removed when the test file finishes. */
export function scratchDir(tag = "ckpt"): string {
  const d = mkdtempSync(join(tmpdir(), `megalith-${tag}-`));
  scratch.push(d);
  return d;
}

/** Fresh random bytes (different every run), as a Uint8Array with its own buffer. */
export function randBytes(n: number): Uint8Array {
  return new Uint8Array(randomBytes(n)).slice();
}

/** A random integer in [0, n). */
export function randInt(n: number): number {
  return randomBytes(4).readUInt32LE(0) % n;
}

export const PYTHON = "/usr/bin/python3";

function pythonHas(module: string): boolean {
  const r = spawnSync(PYTHON, ["-c", `import ${module}`], { encoding: "utf8", timeout: 120_000 });
  return r.status === 0;
}

/** Skip reason when python3 + numpy are unavailable, else false (for `test(name, { skip })`). */
export const NO_NUMPY: string | false = pythonHas("numpy") ? false : `${PYTHON} with numpy is not available; skipping the independent Python cross-check`;
/** Skip reason when python3 + torch are unavailable, else false. */
export const NO_TORCH: string | false = NO_NUMPY || (pythonHas("torch") ? false : `${PYTHON} with torch is not available; skipping the PyTorch cross-check`);

/** Runs a Python snippet with `args`, feeding `input` on stdin; returns stdout bytes, throws with stderr on failure. */
export function runPython(code: string, args: string[] = [], input?: Uint8Array): Buffer {
  const r = spawnSync(PYTHON, ["-c", code, ...args], { input, maxBuffer: 1 << 28, timeout: 300_000 });
  if (r.status !== 0) throw new Error(`python failed (status ${r.status}): ${r.stderr?.toString() ?? r.error}`);
  return r.stdout;
}
