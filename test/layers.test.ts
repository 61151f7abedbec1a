// The layer rule of docs/LAYOUT.md: imports only point down, no cycles between folders.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";

test("check-layers.mjs finds no upward imports or folder cycles", () => {
  const r = spawnSync(process.execPath, ["scripts/check-layers.mjs"], { encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
});
