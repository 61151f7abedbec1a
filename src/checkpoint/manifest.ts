/**
 * The checkpoint manifest: `manifest.json`, written last into a checkpoint directory. It lists
 * every other file with its size and sha256, plus whatever the caller records (step, config, RNG
 * and data-loader state, the logical tensor list). Its presence, complete and valid, is what
 * makes a directory a checkpoint: a directory without one is never loaded.
 *
 * ```json
 * {
 *   "format": "megalith-checkpoint",
 *   "version": 1,
 *   "created": "2025-01-01T12:00:00.000Z",
 *   "step": 100,
 *   "files": [{ "path": "model.safetensors", "bytes": 497759232, "sha256": "9f86d0..." }]
 * }
 * ```
 */

import { readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import { FormatError, ValueError } from "../core/errors.js";
import { hashFile, listTree } from "./_fs.js";

/** The manifest's file name inside a checkpoint directory. */
export const MANIFEST_NAME = "manifest.json";
/** Value of the manifest's `format` field. */
export const MANIFEST_FORMAT = "megalith-checkpoint";
/** The manifest version this code writes, and the newest it reads. */
export const MANIFEST_VERSION = 1;

/** One file of a checkpoint, as recorded in the manifest. */
export interface ManifestFile {
  /** Path relative to the checkpoint directory, '/'-separated (e.g. "model.safetensors"). */
  path: string;
  /** Size in bytes. */
  bytes: number;
  /** Lower-case hex sha256 of the contents. */
  sha256: string;
}

/**
 * Caller fields stored in the manifest next to the reserved ones (`format`, `version`,
 * `created`, `files`). Anything JSON-serializable: step, config, RNG state, tensor list, ...
 */
export type ManifestInfo = Record<string, unknown>;

/** A parsed manifest: the reserved fields plus the caller's fields. */
export interface CheckpointManifest {
  format: typeof MANIFEST_FORMAT;
  version: number;
  /** ISO-8601 time the checkpoint was committed. */
  created: string;
  /** Every file of the checkpoint except manifest.json, sorted by path. */
  files: ManifestFile[];
  /** Caller fields, e.g. `step`, `config`. */
  [field: string]: unknown;
}

/** Options for `verifyCheckpointDir()`. */
export interface VerifyOptions {
  /** Also re-hash every file and compare sha256 (reads every byte). Default: false (sizes only). */
  checksums?: boolean;
}

const RESERVED = ["format", "version", "created", "files"];

/**
 * Hashes every file under `dir` (fsyncing each) and builds the manifest object. Refuses caller
 * fields that collide with reserved ones or are not JSON-serializable, and a pre-existing
 * manifest.json (it is ours to write).
 */
export async function buildManifest(dir: string, info: ManifestInfo): Promise<{ manifest: CheckpointManifest; subdirs: string[] }> {
  for (const key of RESERVED) {
    if (Object.prototype.hasOwnProperty.call(info, key)) throw new ValueError(`checkpoint manifest field ${JSON.stringify(key)} is reserved; rename it`);
  }
  try {
    JSON.stringify(info);
  } catch (err) {
    throw new ValueError(`checkpoint manifest fields must be JSON-serializable: ${(err as Error).message}`);
  }
  const { files, dirs } = await listTree(dir);
  if (files.includes(MANIFEST_NAME)) throw new ValueError(`${join(dir, MANIFEST_NAME)}: already exists; manifest.json is written by the checkpoint commit, not by the caller`);
  const entries: ManifestFile[] = [];
  for (const path of files) entries.push({ path, ...(await hashFile(join(dir, path), true)) });
  const manifest: CheckpointManifest = { format: MANIFEST_FORMAT, version: MANIFEST_VERSION, created: new Date().toISOString(), ...info, files: entries };
  return { manifest, subdirs: dirs };
}

function isSafeRelPath(p: string): boolean {
  if (p === "" || p.startsWith("/") || p.includes("\\") || p.includes("\0")) return false;
  return p.split("/").every((seg) => seg !== "" && seg !== "." && seg !== "..");
}

/** Parses and validates manifest text; `file` names it in errors. */
export function parseManifest(file: string, text: string): CheckpointManifest {
  let m: unknown;
  try {
    m = JSON.parse(text);
  } catch (err) {
    throw new FormatError(file, `not valid JSON (${(err as Error).message}); the checkpoint is damaged`);
  }
  if (typeof m !== "object" || m === null || Array.isArray(m)) throw new FormatError(file, "must be a JSON object");
  const r = m as Record<string, unknown>;
  if (r.format !== MANIFEST_FORMAT) throw new FormatError(file, `format is ${JSON.stringify(r.format)}, expected ${JSON.stringify(MANIFEST_FORMAT)}`);
  if (typeof r.version !== "number" || !Number.isInteger(r.version) || r.version < 1) {
    throw new FormatError(file, `version ${JSON.stringify(r.version)} is not a positive integer`);
  }
  if (r.version > MANIFEST_VERSION) {
    throw new FormatError(file, `version ${r.version} is newer than this Megalith reads (${MANIFEST_VERSION}); upgrade Megalith to load this checkpoint`);
  }
  if (typeof r.created !== "string") throw new FormatError(file, `"created" must be a string, got ${JSON.stringify(r.created)}`);
  if (!Array.isArray(r.files)) throw new FormatError(file, `"files" must be an array, got ${JSON.stringify(r.files)}`);
  const seen = new Set<string>();
  r.files.forEach((f: unknown, i: number) => {
    const e = f as Partial<ManifestFile> | null;
    const ok =
      typeof e === "object" && e !== null &&
      typeof e.path === "string" && isSafeRelPath(e.path) && e.path !== MANIFEST_NAME &&
      typeof e.bytes === "number" && Number.isSafeInteger(e.bytes) && e.bytes >= 0 &&
      typeof e.sha256 === "string" && /^[0-9a-f]{64}$/.test(e.sha256);
    if (!ok) throw new FormatError(file, `files[${i}] must be {path (relative, no ".."), bytes (integer >= 0), sha256 (64 hex)}, got ${JSON.stringify(f)}`);
    if (seen.has(e.path!)) throw new FormatError(file, `files lists ${JSON.stringify(e.path)} twice`);
    seen.add(e.path!);
  });
  return r as CheckpointManifest;
}

/**
 * Checks that `dir` is a complete checkpoint: manifest.json exists, parses, has a supported
 * version, and every listed file exists with the recorded size (and, with `checksums`, the
 * recorded sha256). Returns the manifest; throws FormatError naming the file and the problem.
 * Files present in `dir` but not listed are ignored (loaders only read listed files).
 *
 * @example
 * const manifest = await verifyCheckpointDir("out/ckpt-000100", { checksums: true });
 * console.log(manifest.step, manifest.files.map((f) => f.path));
 */
export async function verifyCheckpointDir(dir: string, options: VerifyOptions = {}): Promise<CheckpointManifest> {
  const dst = await stat(dir).catch(() => null);
  if (dst === null) throw new FormatError(dir, "checkpoint directory does not exist");
  if (!dst.isDirectory()) throw new FormatError(dir, "not a directory; a checkpoint is a directory with a manifest.json");
  const manifestPath = join(dir, MANIFEST_NAME);
  let text: string;
  try {
    text = await readFile(manifestPath, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") {
      throw new FormatError(dir, `${MANIFEST_NAME} missing — the save was interrupted (or this is not a Megalith checkpoint); it cannot be loaded`);
    }
    throw err;
  }
  const manifest = parseManifest(manifestPath, text);
  for (const f of manifest.files) {
    const path = join(dir, f.path);
    const st = await stat(path).catch(() => null);
    if (st === null || !st.isFile()) throw new FormatError(path, `listed in ${MANIFEST_NAME} but ${st === null ? "missing" : "not a regular file"}`);
    if (st.size !== f.bytes) throw new FormatError(path, `size ${st.size} != ${f.bytes} in ${MANIFEST_NAME} (truncated or overwritten?)`);
  }
  if (options.checksums) {
    for (const f of manifest.files) {
      const path = join(dir, f.path);
      const { sha256 } = await hashFile(path);
      if (sha256 !== f.sha256) throw new FormatError(path, `sha256 ${sha256} != ${f.sha256} in ${MANIFEST_NAME} (the file is corrupted)`);
    }
  }
  return manifest;
}
