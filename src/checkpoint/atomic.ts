/**
 * Atomic checkpoint directories: write everything under a temporary name, write manifest.json
 * last, fsync, then rename into place. At every instant the output directory holds a loadable
 * checkpoint, and anything that is not one (a temp dir, a directory with no or a damaged
 * manifest) is skipped by `findLatestCheckpoint()`.
 *
 * Names inside an output directory (prefix "ckpt-"):
 *   ckpt-000100                 a committed checkpoint (step zero-padded to 6 digits)
 *   ckpt-000100.tmp-<suffix>    a save in progress, or one that crashed (never loaded)
 *   ckpt-000100.old-<suffix>    the previous ckpt-000100 while it is being replaced; loaded only
 *                               if ckpt-000100 itself is missing or invalid (a crash mid-swap)
 *
 * Saving from several processes (distributed checkpoints, one shard file per rank):
 *   1. Every rank needs the same temp dir. Either rank 0 calls `createCheckpointTempDir(final)`
 *      and broadcasts the returned path, or every rank calls
 *      `createCheckpointTempDir(final, { token })` with a token unique to this save attempt that
 *      all ranks agree on (e.g. a run id fixed at launch plus the step); that call is idempotent.
 *   2. Each rank writes its own files into the temp dir (distinct names, e.g.
 *      `model-rank00003.safetensors`; `writeSafetensors` fsyncs them).
 *   3. Barrier (the caller's job: this layer does not talk to other ranks).
 *   4. Rank 0 calls `commitCheckpointDir(tmp, final, info, { expectFiles })`; `expectFiles`
 *      lists every shard, so a rank that failed to write is caught instead of committed around.
 */

import { mkdir, open, readdir, rename, rm, stat } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { ValueError } from "../core/errors.js";
import { fsyncDir, listTree, uniqueSuffix, writeFully } from "./_fs.js";
import { buildManifest, MANIFEST_NAME, verifyCheckpointDir, type CheckpointManifest, type ManifestInfo } from "./manifest.js";

/** Options for `createCheckpointTempDir()`. */
export interface CreateTempDirOptions {
  /**
   * Deterministic temp-dir suffix shared by all ranks of one save attempt (letters, digits,
   * `_ . -`). With a token the call is idempotent, so every rank may call it. Default: a fresh
   * `<pid>-<random>` suffix, created exclusively.
   */
  token?: string;
}

/** Options for `commitCheckpointDir()`. */
export interface CommitOptions {
  /** Paths (relative to the temp dir) that must exist before committing, e.g. every rank's shard. */
  expectFiles?: readonly string[];
}

/** A committed, verified checkpoint found in an output directory. */
export interface CheckpointEntry {
  /** Training step parsed from the directory name. */
  step: number;
  /** The directory to load from (normally `<outDir>/ckpt-<step>`). */
  dir: string;
  /** Its verified manifest. */
  manifest: CheckpointManifest;
}

/** Options for `listCheckpoints()` / `findLatestCheckpoint()`. */
export interface FindCheckpointOptions {
  /** Directory-name prefix before the step. Default "ckpt-". */
  prefix?: string;
  /** Verify sha256 of every file too (reads every byte). Default false: sizes only. */
  checksums?: boolean;
  /** Called for each checkpoint-named directory that is skipped, with the reason (for logging). */
  onSkip?: (dir: string, reason: Error) => void;
}

/** Options for `pruneCheckpoints()`. */
export interface PruneOptions {
  /** Directory-name prefix before the step. Default "ckpt-". */
  prefix?: string;
  /**
   * A temp dir is stale, and removed, once it is this old (by mtime), or at once if its name
   * carries the pid of a process that no longer exists on this machine. Temp dirs of this
   * process are never removed. Default: one hour.
   */
  staleTempAgeMs?: number;
  /**
   * The step the caller has just saved (and reported). It is never removed, and only steps at
   * or below it count towards `keep`: a directory with a higher step belongs to some other run
   * (a used out_dir, or a newer checkpoint a resume skipped as damaged), and keeping "the
   * newest" by number would otherwise delete the checkpoint just written. Higher steps are left
   * alone. Default: none (the `keep` highest steps are kept).
   */
  current?: number;
}

const DEFAULT_PREFIX = "ckpt-";

/**
 * The directory name for `step`: `checkpointDirName(100) === "ckpt-000100"`. Zero-padding keeps
 * `ls` in step order; steps past 999999 just get longer names (we compare numerically).
 *
 * @example
 * const dir = join(outDir, checkpointDirName(step)); // "out/ckpt-000100"
 */
export function checkpointDirName(step: number, prefix = DEFAULT_PREFIX): string {
  if (!Number.isSafeInteger(step) || step < 0) throw new ValueError(`checkpoint step must be a non-negative integer, got ${step}`);
  return `${prefix}${String(step).padStart(6, "0")}`;
}

/**
 * Creates the temporary directory a checkpoint destined for `finalDir` is written into:
 * `<finalDir>.tmp-<pid>-<random>` (or `<finalDir>.tmp-<token>`), creating parents as needed.
 *
 * @example
 * const tmp = await createCheckpointTempDir("out/ckpt-000100");
 * await writeSafetensors(join(tmp, "model.safetensors"), tensors);
 * await commitCheckpointDir(tmp, "out/ckpt-000100", { step: 100 });
 */
export async function createCheckpointTempDir(finalDir: string, options: CreateTempDirOptions = {}): Promise<string> {
  const { token } = options;
  if (token !== undefined && !/^[A-Za-z0-9_.-]+$/.test(token)) {
    throw new ValueError(`createCheckpointTempDir: token ${JSON.stringify(token)} must be letters, digits, "_", "." or "-"`);
  }
  await mkdir(dirname(finalDir), { recursive: true });
  const tmp = `${finalDir}.tmp-${token ?? uniqueSuffix()}`;
  if (token === undefined) await mkdir(tmp);
  else await mkdir(tmp, { recursive: true });
  return tmp;
}

/**
 * Seals `tmpDir` as a checkpoint and moves it to `finalDir`: hashes and fsyncs every file,
 * writes manifest.json last (fields: format, version, created, your `info`, files), fsyncs, and
 * renames. An existing `finalDir` is first renamed to `<finalDir>.old-<suffix>` and deleted only
 * after the new one is in place, so a crash at any point leaves a loadable checkpoint.
 *
 * @example
 * // rank 0, after a barrier that every rank passed once its shard was written:
 * await commitCheckpointDir(tmp, "out/ckpt-000100", { step: 100, config }, {
 *   expectFiles: ranks.map((r) => `model-rank${String(r).padStart(5, "0")}.safetensors`),
 * });
 */
export async function commitCheckpointDir(
  tmpDir: string,
  finalDir: string,
  info: ManifestInfo,
  options: CommitOptions = {},
): Promise<CheckpointManifest> {
  for (const rel of options.expectFiles ?? []) {
    const st = await stat(join(tmpDir, rel)).catch(() => null);
    if (st === null || !st.isFile()) {
      throw new ValueError(`${join(tmpDir, rel)}: expected file is missing; did every rank finish writing (and pass the barrier) before the commit?`);
    }
  }
  const { manifest, subdirs } = await buildManifest(tmpDir, info);
  const fh = await open(join(tmpDir, MANIFEST_NAME), "wx");
  try {
    await writeFully(fh, new TextEncoder().encode(JSON.stringify(manifest, null, 2) + "\n"), 0);
    await fh.sync();
  } finally {
    await fh.close();
  }
  for (const d of subdirs.reverse()) await fsyncDir(d); // deepest first
  await fsyncDir(tmpDir);

  await replaceDir(tmpDir, finalDir);
  return manifest;
}

/**
 * Writes a checkpoint directory atomically: `writeContents(tmpDir)` writes the files, then the
 * directory is committed with `commitCheckpointDir()`. If `writeContents` throws, the temp dir
 * is removed and the previous checkpoint at `dir` (if any) is untouched.
 *
 * @example
 * await writeCheckpointDir(join(outDir, checkpointDirName(step)), async (tmp) => {
 *   await writeSafetensors(join(tmp, "model.safetensors"), weights);
 *   await writeSafetensors(join(tmp, "optimizer.safetensors"), optimizerState);
 * }, { step, config });
 */
export async function writeCheckpointDir(
  dir: string,
  writeContents: (tmpDir: string) => Promise<void> | void,
  info: ManifestInfo,
): Promise<CheckpointManifest> {
  const tmp = await createCheckpointTempDir(dir);
  try {
    await writeContents(tmp);
    return await commitCheckpointDir(tmp, dir, info);
  } catch (err) {
    await rm(tmp, { recursive: true, force: true }).catch(() => {});
    throw err;
  }
}

/**
 * Writes a plain directory (no manifest; e.g. an exported model directory) atomically:
 * `writeContents(tmp)` fills `<dir>.tmp-<pid>-<hex>`, every file is fsynced, and the directory
 * is renamed to `dir`. An existing `dir` is moved aside first and deleted once the new one is in
 * place, so readers see the old directory or the new one, never a mix or a half-written file.
 * If `writeContents` throws, the temp dir is removed and `dir` is untouched.
 *
 * @example
 * await writeDirAtomic("runs/x/final", async (tmp) => { await model.savePretrained(tmp); });
 */
export async function writeDirAtomic(dir: string, writeContents: (tmpDir: string) => Promise<void> | void): Promise<void> {
  const tmp = await createCheckpointTempDir(dir);
  try {
    await writeContents(tmp);
    const { files, dirs } = await listTree(tmp);
    for (const f of files) {
      const fh = await open(join(tmp, f), "r+");
      try {
        await fh.sync();
      } finally {
        await fh.close();
      }
    }
    for (const d of dirs.reverse()) await fsyncDir(d);
    await fsyncDir(tmp);
    await replaceDir(tmp, dir);
  } catch (err) {
    await rm(tmp, { recursive: true, force: true }).catch(() => {});
    throw err;
  }
}

/** Renames `tmpDir` to `finalDir`, moving an existing `finalDir` aside first and deleting it after. */
async function replaceDir(tmpDir: string, finalDir: string): Promise<void> {
  const parent = dirname(finalDir);
  const existing = await stat(finalDir).catch(() => null);
  if (existing === null) {
    await rename(tmpDir, finalDir);
    await fsyncDir(parent);
    return;
  }
  const old = `${finalDir}.old-${uniqueSuffix()}`;
  await rename(finalDir, old);
  try {
    await rename(tmpDir, finalDir);
  } catch (err) {
    await rename(old, finalDir).catch(() => {}); // put the previous one back
    throw err;
  }
  await fsyncDir(parent);
  await rm(old, { recursive: true, force: true });
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

type Named = { name: string; step: number; kind: "final" | "tmp" | "old"; suffix: string };

/** Checkpoint-related directory names in `outDir` (no checks beyond the name). */
async function scan(outDir: string, prefix: string): Promise<Named[]> {
  let ents;
  try {
    ents = await readdir(outDir, { withFileTypes: true });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw err;
  }
  const re = new RegExp(`^${escapeRegExp(prefix)}(\\d+)(?:\\.(tmp|old)-(.+))?$`);
  const out: Named[] = [];
  for (const e of ents) {
    const m = e.isDirectory() ? re.exec(e.name) : null;
    if (m) out.push({ name: e.name, step: Number(m[1]), kind: (m[2] as "tmp" | "old" | undefined) ?? "final", suffix: m[3] ?? "" });
  }
  return out.sort((a, b) => a.step - b.step || (a.name < b.name ? -1 : 1));
}

/**
 * Every complete checkpoint in `outDir`, oldest step first. A step counts if `<prefix><step>`
 * verifies, or, failing that (a crash mid-replace), one of its `.old-` siblings does. Temp dirs
 * are never returned. `options` may also be just the directory-name prefix.
 *
 * @example
 * for (const c of await listCheckpoints("out")) console.log(c.step, c.dir);
 */
export async function listCheckpoints(outDir: string, options: FindCheckpointOptions | string = {}): Promise<CheckpointEntry[]> {
  if (typeof options === "string") options = { prefix: options }; // findLatestCheckpoint(outDir, "ckpt-")
  const prefix = options.prefix ?? DEFAULT_PREFIX;
  const byStep = new Map<number, Named[]>();
  for (const n of await scan(outDir, prefix)) {
    if (n.kind === "tmp") continue;
    byStep.set(n.step, [...(byStep.get(n.step) ?? []), n]);
  }
  const out: CheckpointEntry[] = [];
  for (const [step, names] of byStep) {
    // The final name first, then .old- fallbacks.
    names.sort((a, b) => (a.kind === b.kind ? 0 : a.kind === "final" ? -1 : 1));
    for (const n of names) {
      const dir = join(outDir, n.name);
      try {
        const manifest = await verifyCheckpointDir(dir, { checksums: options.checksums ?? false });
        out.push({ step, dir, manifest });
        break;
      } catch (err) {
        options.onSkip?.(dir, err as Error);
      }
    }
  }
  return out.sort((a, b) => a.step - b.step);
}

/**
 * The complete checkpoint with the highest step in `outDir`, or null if there is none (or
 * `outDir` does not exist). Temp dirs and directories whose manifest is missing, damaged or
 * disagrees with the files on disk are skipped (reported through `onSkip`). `options` may also
 * be just the directory-name prefix.
 *
 * @example
 * const latest = await findLatestCheckpoint("out", { onSkip: (d, e) => console.warn(`skipping ${d}: ${e.message}`) });
 * if (latest) startStep = latest.step; // load from latest.dir
 */
export async function findLatestCheckpoint(outDir: string, options: FindCheckpointOptions | string = {}): Promise<CheckpointEntry | null> {
  const all = await listCheckpoints(outDir, options);
  return all.length > 0 ? all[all.length - 1]! : null;
}

function pidIsDead(suffix: string): boolean {
  const m = /^(\d+)-[0-9a-f]+$/.exec(suffix);
  if (!m) return false;
  const pid = Number(m[1]);
  if (pid === process.pid) return false;
  try {
    process.kill(pid, 0);
    return false;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "ESRCH";
  }
}

/**
 * Removes complete checkpoints older than the newest `keep`, stale temp dirs (see
 * `PruneOptions.staleTempAgeMs`), and `.old-` leftovers whose replacement is complete. Every
 * directory of a dropped step goes; a step with no complete checkpoint is never dropped, so
 * damaged directories are left for a human to inspect. Returns the removed paths.
 *
 * @example
 * await writeCheckpointDir(join(outDir, checkpointDirName(step)), write, { step });
 * await pruneCheckpoints(outDir, 3); // keep the three newest
 */
export async function pruneCheckpoints(outDir: string, keep: number, options: PruneOptions = {}): Promise<string[]> {
  if (!Number.isSafeInteger(keep) || keep < 1) throw new ValueError(`pruneCheckpoints: keep must be an integer >= 1, got ${keep}`);
  const prefix = options.prefix ?? DEFAULT_PREFIX;
  const staleMs = options.staleTempAgeMs ?? 60 * 60 * 1000;
  const complete = await listCheckpoints(outDir, { prefix });
  // Steps whose final-named dir verified: their .old- leftovers are no longer needed.
  const finalOk = new Set(complete.filter((c) => !basename(c.dir).includes(".old-")).map((c) => c.step));
  const current = options.current;
  const ours = current === undefined ? complete : complete.filter((c) => c.step <= current);
  const dropSteps = new Set(ours.slice(0, Math.max(0, ours.length - keep)).map((c) => c.step));
  if (current !== undefined) dropSteps.delete(current);

  const removed: string[] = [];
  const now = Date.now();
  for (const n of await scan(outDir, prefix)) {
    const path = join(outDir, n.name);
    let remove = false;
    if (n.kind === "tmp") {
      const own = n.suffix.startsWith(`${process.pid}-`);
      const st = await stat(path).catch(() => null);
      remove = !own && st !== null && (now - st.mtimeMs >= staleMs || pidIsDead(n.suffix));
    } else if (dropSteps.has(n.step)) {
      remove = true; // an old step: its final dir and any .old- siblings go together
    } else if (n.kind === "old") {
      remove = finalOk.has(n.step);
    }
    if (remove) {
      await rm(path, { recursive: true, force: true });
      removed.push(path);
    }
  }
  return removed;
}
