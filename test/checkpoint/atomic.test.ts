import assert from "node:assert/strict";
import { mkdir, open, readdir, readFile, rename, rm, truncate, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { test } from "node:test";
import { FormatError, ValueError } from "../../src/core/errors.js";
import {
  checkpointDirName,
  commitCheckpointDir,
  createCheckpointTempDir,
  findLatestCheckpoint,
  listCheckpoints,
  MANIFEST_NAME,
  pruneCheckpoints,
  readSafetensors,
  verifyCheckpointDir,
  writeCheckpointDir,
  writeDirAtomic,
  writeSafetensors,
  type TensorRecord,
} from "../../src/checkpoint/index.js";
import { randBytes, randInt, scratchDir } from "./_helpers.js";

function weights(): Record<string, TensorRecord> {
  return {
    "wte.weight": { dtype: "F32", shape: [4, 8], data: randBytes(128) },
    "ln.bias": { dtype: "BF16", shape: [8], data: randBytes(16) },
  };
}

/** Saves a small checkpoint for `step` the way a trainer would. */
async function save(outDir: string, step: number, w = weights()): Promise<string> {
  const dir = join(outDir, checkpointDirName(step));
  await writeCheckpointDir(dir, async (tmp) => {
    await writeSafetensors(join(tmp, "model.safetensors"), w);
    await mkdir(join(tmp, "optim"));
    await writeFile(join(tmp, "optim", "state.json"), JSON.stringify({ step }));
  }, { step, config: { nLayer: 2 } });
  return dir;
}

async function flipByte(path: string): Promise<void> {
  const fh = await open(path, "r+");
  try {
    const { size } = await fh.stat();
    const pos = randInt(size);
    const b = new Uint8Array(1);
    await fh.read(b, 0, 1, pos);
    b[0]! ^= 1 << randInt(8);
    await fh.write(b, 0, 1, pos);
  } finally {
    await fh.close();
  }
}

function isFormatError(re: RegExp, file?: string) {
  return (e: Error) => {
    assert.ok(e instanceof FormatError, `expected FormatError, got ${e.name}: ${e.message}`);
    if (file !== undefined) assert.ok(e.message.startsWith(`${file}: `), `message should name ${file}: ${e.message}`);
    assert.match(e.message, re);
    return true;
  };
}

test("`checkpointDirName()` zero-pads steps and rejects bad ones", () => {
  assert.equal(checkpointDirName(100), "ckpt-000100");
  assert.equal(checkpointDirName(0, "step_"), "step_000000");
  assert.equal(checkpointDirName(12345678), "ckpt-12345678");
  assert.throws(() => checkpointDirName(-1), ValueError);
  assert.throws(() => checkpointDirName(1.5), ValueError);
});

test("`writeCheckpointDir()` commits files plus a manifest that `verifyCheckpointDir()` accepts", async () => {
  const out = scratchDir();
  const w = weights();
  const dir = await save(out, 100, w);
  assert.deepEqual(await readdir(out), ["ckpt-000100"], "no temp dir left behind");

  const manifest = await verifyCheckpointDir(dir, { checksums: true });
  assert.equal(manifest.format, "megalith-checkpoint");
  assert.equal(manifest.version, 1);
  assert.ok(!Number.isNaN(Date.parse(manifest.created)));
  assert.equal(manifest.step, 100);
  assert.deepEqual(manifest.config, { nLayer: 2 });
  assert.deepEqual(manifest.files.map((f) => f.path), ["model.safetensors", "optim/state.json"]);
  for (const f of manifest.files) assert.match(f.sha256, /^[0-9a-f]{64}$/);
  assert.deepEqual(JSON.parse(await readFile(join(dir, MANIFEST_NAME), "utf8")), manifest);

  const { tensors } = await readSafetensors(join(dir, "model.safetensors"));
  assert.deepEqual(tensors.get("wte.weight"), w["wte.weight"]);

  const latest = await findLatestCheckpoint(out);
  assert.equal(latest?.dir, dir);
  assert.equal(latest?.step, 100);
});

test("an interrupted save leaves the previous checkpoint as the latest", async () => {
  const out = scratchDir();
  const dir100 = await save(out, 100);
  // 1. writeContents throws half-way: the temp dir is cleaned up and the error propagates.
  await assert.rejects(
    writeCheckpointDir(join(out, checkpointDirName(200)), async (tmp) => {
      await writeFile(join(tmp, "model.safetensors"), randBytes(100));
      throw new Error("disk full (simulated)");
    }, { step: 200 }),
    /disk full/,
  );
  assert.deepEqual(await readdir(out), ["ckpt-000100"]);
  // 2. A crash leaves temp dirs behind, even one whose manifest was already written.
  const crashed = await createCheckpointTempDir(join(out, checkpointDirName(300)));
  await writeFile(join(crashed, "model.safetensors"), randBytes(64));
  const crashedLate = join(out, "ckpt-000400.tmp-99999999-deadbeef");
  await mkdir(crashedLate);
  await writeFile(join(crashedLate, "model.safetensors"), randBytes(64));
  await writeFile(join(crashedLate, MANIFEST_NAME), JSON.stringify({ format: "megalith-checkpoint", version: 1, created: "x", files: [] }));
  // 3. A directory with the final name but no manifest (e.g. copied by hand, half-way).
  const noManifest = join(out, checkpointDirName(500));
  await mkdir(noManifest);
  await writeFile(join(noManifest, "model.safetensors"), randBytes(64));

  const skipped: string[] = [];
  const latest = await findLatestCheckpoint(out, { checksums: true, onSkip: (d, e) => skipped.push(`${d}: ${e.message}`) });
  assert.equal(latest?.dir, dir100);
  await verifyCheckpointDir(latest!.dir, { checksums: true });
  assert.equal(skipped.length, 1);
  assert.match(skipped[0]!, /ckpt-000500: manifest\.json missing — the save was interrupted/);
  await assert.rejects(verifyCheckpointDir(noManifest), isFormatError(/manifest\.json missing — the save was interrupted/, noManifest));
  assert.deepEqual((await listCheckpoints(out)).map((c) => c.step), [100]);
});

test("`verifyCheckpointDir()` catches a flipped byte only with checksums, naming the file", async () => {
  const out = scratchDir();
  const dir100 = await save(out, 100);
  const dir200 = await save(out, 200);
  const model = join(dir200, "model.safetensors");
  await flipByte(model);
  await verifyCheckpointDir(dir200, { checksums: false }); // same size: sizes alone cannot tell
  await assert.rejects(verifyCheckpointDir(dir200, { checksums: true }), isFormatError(/sha256 [0-9a-f]{64} != [0-9a-f]{64} in manifest\.json \(the file is corrupted\)/, model));
  assert.equal((await findLatestCheckpoint(out, { checksums: true }))?.dir, dir100);
  assert.equal((await findLatestCheckpoint(out))?.dir, dir200);
});

test("`verifyCheckpointDir()` reports truncated, missing and damaged files", async () => {
  const out = scratchDir();
  const dir = await save(out, 7);
  const model = join(dir, "model.safetensors");
  const { files } = await verifyCheckpointDir(dir);
  const size = files.find((f) => f.path === "model.safetensors")!.bytes;
  await truncate(model, size - 3);
  await assert.rejects(verifyCheckpointDir(dir), isFormatError(new RegExp(`size ${size - 3} != ${size} in manifest\\.json \\(truncated`), model));
  await rm(model);
  await assert.rejects(verifyCheckpointDir(dir), isFormatError(/listed in manifest\.json but missing/, model));
  assert.equal(await findLatestCheckpoint(out), null);

  const manifestPath = join(dir, MANIFEST_NAME);
  const good = JSON.parse(await readFile(manifestPath, "utf8"));
  const bad: [unknown, RegExp][] = [
    ["{ not json", /not valid JSON/],
    [[], /must be a JSON object/],
    [{ ...good, format: "other" }, /format is "other", expected "megalith-checkpoint"/],
    [{ ...good, version: 2 }, /version 2 is newer than this Megalith reads \(1\); upgrade Megalith/],
    [{ ...good, version: "1" }, /version "1" is not a positive integer/],
    [{ ...good, files: {} }, /"files" must be an array/],
    [{ ...good, files: [{ path: "../escape", bytes: 1, sha256: "0".repeat(64) }] }, /files\[0\] must be/],
    [{ ...good, files: [{ path: "/abs", bytes: 1, sha256: "0".repeat(64) }] }, /files\[0\] must be/],
    [{ ...good, files: [{ path: "a", bytes: -1, sha256: "0".repeat(64) }] }, /files\[0\] must be/],
    [{ ...good, files: [{ path: "a", bytes: 1, sha256: "xyz" }] }, /files\[0\] must be/],
    [{ ...good, files: [good.files[1], good.files[1]] }, /twice/],
  ];
  for (const [m, re] of bad) {
    await writeFile(manifestPath, typeof m === "string" ? m : JSON.stringify(m));
    await assert.rejects(verifyCheckpointDir(dir), isFormatError(re, manifestPath));
  }
  await assert.rejects(verifyCheckpointDir(join(out, "nope")), isFormatError(/does not exist/));
});

test("`writeCheckpointDir()` replaces an existing step, and a crash mid-replace still leaves a loadable copy", async () => {
  const out = scratchDir();
  const w1 = weights();
  const w2 = weights();
  const dir = await save(out, 100, w1);
  await save(out, 100, w2);
  assert.deepEqual(await readdir(out), ["ckpt-000100"], "the previous copy is deleted once the new one is in place");
  assert.deepEqual((await readSafetensors(join(dir, "model.safetensors"))).tensors.get("ln.bias"), w2["ln.bias"]);

  // Crash between "rename old away" and "rename new in": only the .old- copy exists.
  const old = join(out, "ckpt-000100.old-99999999-0badf00d");
  await rename(dir, old);
  assert.equal((await findLatestCheckpoint(out))?.dir, old);
  // The final name exists but is incomplete: the .old- copy is still the one used.
  await mkdir(dir);
  assert.equal((await findLatestCheckpoint(out))?.dir, old);
  assert.deepEqual(await pruneCheckpoints(out, 1), [], "the only complete copy of a step is never pruned");
  // Once a complete ckpt-000100 exists again, pruning removes the leftover.
  await rm(dir, { recursive: true });
  await save(out, 100);
  assert.equal((await findLatestCheckpoint(out))?.dir, dir);
  assert.deepEqual(await pruneCheckpoints(out, 1), [old]);
  assert.deepEqual(await readdir(out), ["ckpt-000100"]);
});

test("several writers share one temp dir and `commitCheckpointDir()` seals it after the barrier", async () => {
  const out = scratchDir();
  const final = join(out, checkpointDirName(40));
  const world = 4;
  const shard = (r: number) => `model-rank${String(r).padStart(5, "0")}.safetensors`;
  const expectFiles = Array.from({ length: world }, (_, r) => shard(r));

  // Every "rank" derives the same temp dir from a shared token, concurrently.
  const dirs = await Promise.all(Array.from({ length: world }, () => createCheckpointTempDir(final, { token: "run7-step40" })));
  assert.ok(dirs.every((d) => d === `${final}.tmp-run7-step40`));
  const tmp = dirs[0]!;
  const shards = Array.from({ length: world }, () => weights());
  // Rank 3 has not finished: committing now must fail and commit nothing.
  await Promise.all([0, 1, 2].map((r) => writeSafetensors(join(tmp, shard(r)), shards[r]!)));
  await assert.rejects(commitCheckpointDir(tmp, final, { step: 40 }, { expectFiles }), (e: Error) => e instanceof ValueError && /model-rank00003.*barrier/.test(e.message));
  assert.equal(await findLatestCheckpoint(out), null);
  // After the barrier, rank 0 commits.
  await writeSafetensors(join(tmp, shard(3)), shards[3]!);
  const manifest = await commitCheckpointDir(tmp, final, { step: 40, world }, { expectFiles });
  assert.deepEqual(manifest.files.map((f) => f.path), expectFiles);
  const latest = await findLatestCheckpoint(out, { checksums: true });
  assert.equal(latest?.dir, final);
  assert.equal(latest?.manifest.world, world);
  for (let r = 0; r < world; r++) {
    assert.deepEqual((await readSafetensors(join(final, shard(r)))).tensors.get("wte.weight"), shards[r]!["wte.weight"]);
  }
  await assert.rejects(createCheckpointTempDir(final, { token: "../x" }), ValueError);
});

test("`commitCheckpointDir()` refuses reserved fields, a caller-written manifest and unserializable info", async () => {
  const out = scratchDir();
  const final = join(out, checkpointDirName(1));
  const tmp = await createCheckpointTempDir(final);
  await assert.rejects(commitCheckpointDir(tmp, final, { files: [] }), /"files" is reserved/);
  await assert.rejects(commitCheckpointDir(tmp, final, { step: 1n }), /JSON-serializable/);
  await writeFile(join(tmp, MANIFEST_NAME), "{}");
  await assert.rejects(commitCheckpointDir(tmp, final, { step: 1 }), /manifest\.json is written by the checkpoint commit/);
  assert.equal(await findLatestCheckpoint(out), null);
});

test("`findLatestCheckpoint()` compares steps numerically, honours the prefix, and handles a missing dir", async () => {
  const out = scratchDir();
  await save(out, 999_999);
  await save(out, 1_000_000);
  await save(out, 5);
  assert.equal((await findLatestCheckpoint(out))?.step, 1_000_000);
  assert.deepEqual((await listCheckpoints(out)).map((c) => c.step), [5, 999_999, 1_000_000]);
  assert.equal(await findLatestCheckpoint(out, { prefix: "step_" }), null);
  await writeCheckpointDir(join(out, checkpointDirName(3, "step_")), () => {}, { step: 3 });
  assert.equal((await findLatestCheckpoint(out, { prefix: "step_" }))?.step, 3);
  assert.equal((await findLatestCheckpoint(out, "step_"))?.step, 3);
  assert.equal(await findLatestCheckpoint(join(out, "does-not-exist")), null);
});

test("`pruneCheckpoints()` keeps the newest complete checkpoints and removes stale temp dirs", async () => {
  const out = scratchDir();
  for (const step of [100, 200, 300, 400, 500]) await save(out, step);
  const damaged = join(out, checkpointDirName(50));
  await mkdir(damaged); // no manifest: left for a human
  const deadTmp = join(out, "ckpt-000600.tmp-99999999-00000001"); // pid that cannot exist
  const ownTmp = await createCheckpointTempDir(join(out, checkpointDirName(700)));
  const recentTmp = join(out, "ckpt-000600.tmp-run7-step600"); // token-named, fresh
  for (const d of [deadTmp, recentTmp]) await mkdir(d);

  const removed = await pruneCheckpoints(out, 2);
  assert.deepEqual(removed.sort(), ["ckpt-000100", "ckpt-000200", "ckpt-000300", "ckpt-000600.tmp-99999999-00000001"].map((n) => join(out, n)));
  assert.deepEqual((await readdir(out)).sort(), ["ckpt-000050", "ckpt-000400", "ckpt-000500", "ckpt-000600.tmp-run7-step600", ownTmp.slice(out.length + 1)].sort());

  // With no grace period, the token-named temp dir is stale too; our own never is.
  assert.deepEqual(await pruneCheckpoints(out, 2, { staleTempAgeMs: 0 }), [recentTmp]);
  assert.deepEqual((await listCheckpoints(out)).map((c) => c.step), [400, 500]);
  await assert.rejects(pruneCheckpoints(out, 0), ValueError);
});

test("`pruneCheckpoints({ current })` never deletes the step just saved, nor counts or touches higher steps", async () => {
  const out = await scratchDir();
  // Another run's checkpoints at 100 and 200; this run has saved 10, 20, 30.
  for (const s of [100, 200, 10, 20, 30]) await save(out, s);
  // Without `current`, keep=2 would keep 100 and 200 and delete the 30 just saved: the old defect.
  const removed = await pruneCheckpoints(out, 2, { current: 30 });
  assert.deepEqual(removed.map((p) => p.slice(out.length + 1)).sort(), ["ckpt-000010"]);
  assert.deepEqual((await listCheckpoints(out)).map((c) => c.step), [20, 30, 100, 200]);
  await pruneCheckpoints(out, 1, { current: 30 });
  assert.deepEqual((await listCheckpoints(out)).map((c) => c.step), [30, 100, 200]);
});

test("`writeDirAtomic()` replaces a directory whole, and leaves it untouched when writing fails", async () => {
  const out = await scratchDir();
  const dir = join(out, "final");
  await writeDirAtomic(dir, async (tmp) => {
    assert.ok(tmp.startsWith(`${dir}.tmp-`));
    await writeFile(join(tmp, "a.txt"), "one");
  });
  assert.equal(await readFile(join(dir, "a.txt"), "utf8"), "one");
  await writeDirAtomic(dir, async (tmp) => {
    await writeFile(join(tmp, "b.txt"), "two");
  });
  assert.deepEqual(await readdir(dir), ["b.txt"], "the old directory's files are gone with it");
  await assert.rejects(writeDirAtomic(dir, async (tmp) => {
    await writeFile(join(tmp, "c.txt"), "half");
    throw new Error("disk full");
  }), /disk full/);
  assert.deepEqual(await readdir(dir), ["b.txt"]);
  assert.deepEqual((await readdir(out)).sort(), ["final"], "no temp or old directory is left behind");
});
