/**
 * Optimizer state on disk, in either of the two forms an optimizer's state dict takes
 * (optim/optimizer.ts), and the one function every rank calls to save a checkpoint together.
 *
 *  logical   optimizer.safetensors: `<moment>.<param name>` per parameter, shaped like it
 *            (rank 0 writes it).
 *  sharded   optimizer-rank<R>-of-<N>.safetensors: rank R's flat shard of each moment, next to
 *            zero_layout.json (the FlatShardLayout: which elements of which parameter each shard
 *            holds). Every rank writes its own file, so no rank ever holds full moments. The file
 *            names are the ones ZeRO checkpoints have always used.
 *
 * Either form reads back as logical per-parameter arrays (`readOptimizerMoments()`), so a
 * checkpoint saved under any data-parallel / ZeRO layout resumes under any other.
 */
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { rm } from "node:fs/promises";
import { join } from "node:path";
import { ValueError } from "../core/errors.js";
import { readSafetensors, writeSafetensors, type TensorRecord } from "./safetensors.js";
import { commitCheckpointDir, createCheckpointTempDir, type CommitOptions } from "./atomic.js";
import { type ManifestInfo, type CheckpointManifest } from "./manifest.js";

/** Logical-form optimizer file. */
export const OPTIMIZER_FILE = "optimizer.safetensors";
/** The flat-shard layout next to sharded optimizer files. */
export const SHARD_LAYOUT_FILE = "zero_layout.json";

/** Rank `rank`'s sharded optimizer file: `optimizer-rank00001-of-00004.safetensors`. */
export function optimizerShardFile(rank: number, size: number): string {
  return `optimizer-rank${String(rank).padStart(5, "0")}-of-${String(size).padStart(5, "0")}.safetensors`;
}

/**
 * How flat shards cut parameters (FSDP's flat parameters): each unit is the concatenation of its
 * parameters, padded to a multiple of `size` and cut into equal `shard`-element pieces; rank r
 * holds elements [r*shard, (r+1)*shard) of every unit, the units one after another. `K` names a
 * parameter: its index in memory, its dotted name on disk.
 */
export interface FlatShardLayout<K = string> {
  /** Number of ranks. */
  size: number;
  /** Informational: the ZeRO stage that wrote it. */
  stage?: number;
  units: Array<{ params: K[]; numel: number[]; shard: number }>;
}

/** Optimizer moments as records, in one of the two forms (see the file comment). */
export type OptimizerFiles =
  | { kind: "logical"; /** moment -> parameter name -> record */ moments: Record<string, Record<string, TensorRecord>> }
  | { kind: "sharded"; rank: number; size: number; layout: FlatShardLayout; /** moment -> this rank's flat shard */ shard: Record<string, TensorRecord> };

/** Every file a checkpoint holding `f` must contain (for commit's `expectFiles`). */
export function optimizerFileNames(f: OptimizerFiles): string[] {
  if (f.kind === "logical") return [OPTIMIZER_FILE];
  return [SHARD_LAYOUT_FILE, ...Array.from({ length: f.size }, (_, r) => optimizerShardFile(r, f.size))];
}

/** Writes this rank's part of `f` into `dir` (`isMain`: rank 0, which writes the shared files). */
export async function writeOptimizerFiles(dir: string, f: OptimizerFiles, isMain: boolean): Promise<void> {
  if (f.kind === "logical") {
    if (!isMain) return;
    const records: Record<string, TensorRecord> = {};
    for (const [moment, byName] of Object.entries(f.moments)) for (const [name, r] of Object.entries(byName)) records[`${moment}.${name}`] = r;
    await writeSafetensors(join(dir, OPTIMIZER_FILE), records);
    return;
  }
  await writeSafetensors(join(dir, optimizerShardFile(f.rank, f.size)), f.shard);
  if (isMain) writeFileSync(join(dir, SHARD_LAYOUT_FILE), JSON.stringify(f.layout) + "\n");
}

function f32(data: Uint8Array): Float32Array {
  const copy = new Uint8Array(data.byteLength);
  copy.set(data);
  return new Float32Array(copy.buffer);
}

/**
 * The logical moments stored in checkpoint `dir`, whichever form it holds: moment name -> one
 * Float32Array per parameter of `names` (with `numels` elements each).
 * @example
 * const { exp_avg, exp_avg_sq } = await readOptimizerMoments(dir, names, numels);
 */
export async function readOptimizerMoments(
  dir: string, names: readonly string[], numels: readonly number[], moments: readonly string[] = ["exp_avg", "exp_avg_sq"],
): Promise<Record<string, Float32Array[]>> {
  const pick = (src: Map<string, Float32Array>, moment: string, file: string) => names.map((n, i) => {
    const x = src.get(n);
    if (!x) throw new ValueError(`${file}: missing ${moment}.${n}`);
    if (x.length !== numels[i]) throw new ValueError(`${file}: ${moment}.${n} has ${x.length} elements, the model's parameter has ${numels[i]}`);
    return x;
  });
  const out: Record<string, Float32Array[]> = {};
  const layoutFile = join(dir, SHARD_LAYOUT_FILE);
  if (!existsSync(layoutFile)) {
    const file = join(dir, OPTIMIZER_FILE);
    const { tensors } = await readSafetensors(file);
    for (const moment of moments) {
      const byName = new Map(names.flatMap((n) => {
        const r = tensors.get(`${moment}.${n}`);
        return r ? [[n, f32(r.data)] as const] : [];
      }));
      out[moment] = pick(byName, moment, file);
    }
    return out;
  }
  const layout = JSON.parse(readFileSync(layoutFile, "utf8")) as FlatShardLayout;
  const shards: Record<string, Float32Array[]> = Object.fromEntries(moments.map((m) => [m, []]));
  for (let r = 0; r < layout.size; r++) {
    const file = join(dir, optimizerShardFile(r, layout.size));
    const { tensors } = await readSafetensors(file);
    for (const moment of moments) {
      const t = tensors.get(moment);
      if (!t) throw new ValueError(`${file}: missing ${moment}`);
      shards[moment]!.push(f32(t.data));
    }
  }
  for (const moment of moments) out[moment] = pick(unshard(layout, shards[moment]!), moment, layoutFile);
  return out;
}

/**
 * Rebuilds full per-parameter arrays from every rank's flat shard. `shards[r]` is rank r's
 * shard buffer; returns one Float32Array per parameter name.
 */
export function unshard(layout: FlatShardLayout, shards: Float32Array[]): Map<string, Float32Array> {
  if (shards.length !== layout.size) throw new ValueError(`sharded checkpoint: expected ${layout.size} rank shards, got ${shards.length}`);
  const out = new Map<string, Float32Array>();
  let base = 0;
  for (const u of layout.units) {
    let off = 0;
    u.params.forEach((name, k) => {
      const n = u.numel[k]!;
      const dst = new Float32Array(n);
      for (let e = 0; e < n;) {
        const flat = off + e, r = Math.floor(flat / u.shard), within = flat - r * u.shard;
        const take = Math.min(n - e, u.shard - within);
        const src = shards[r]!;
        if (src.length < base + within + take) throw new ValueError(`sharded checkpoint: rank ${r}'s shard holds ${src.length} elements, the layout needs ${base + within + take}`);
        dst.set(src.subarray(base + within, base + within + take), e);
        e += take;
      }
      out.set(name, dst);
      off += n;
    });
    base += u.shard;
  }
  return out;
}

/**
 * How this process takes part in a save: plain callbacks over the caller's process group, so
 * this layer never talks to MPI. A single process: `{ rank: 0, size: 1, barrier() {}, agree: (x) => x }`.
 */
export interface SaveGroup {
  rank: number;
  size: number;
  /** Waits until every rank got here (a collective). */
  barrier(): void;
  /** Rank 0's `values` on every rank (a collective; small non-negative integers below 2^24). */
  agree(values: number[]): number[];
}

/**
 * Saves one checkpoint from every rank of `group`: all ranks write into one temp dir (its name
 * carries rank 0's pid, so a crashed save is recognised as stale), `write(tmp)` runs on every
 * rank (each writes its own files; it may run collectives), then rank 0 checks `expectFiles`,
 * writes the manifest and commits. Every rank returns after the commit. On failure the temp
 * dir is removed and the previous checkpoint at `dir` stays as it was.
 * @example
 * await saveCheckpointCollective(dir, group, async (tmp) => {
 *   if (group.rank === 0) await writeSafetensors(join(tmp, "model.safetensors"), weights);
 *   await writeOptimizerFiles(tmp, opt, group.rank === 0);
 * }, { step }, { expectFiles: ["model.safetensors", ...optimizerFileNames(opt)] });
 */
export async function saveCheckpointCollective(
  dir: string, group: SaveGroup, write: (tmp: string) => Promise<void>, info: ManifestInfo, opts: CommitOptions = {},
): Promise<CheckpointManifest | null> {
  const [pid, nonce] = group.agree([process.pid, Math.floor(Math.random() * 2 ** 24)]);
  const tmp = await createCheckpointTempDir(dir, { token: `${pid}-${nonce!.toString(16)}` });
  let manifest: CheckpointManifest | null = null;
  try {
    try {
      await write(tmp);
    } finally {
      group.barrier();  // every rank's files are on disk (or a rank failed; rank 0 then finds one missing)
    }
    if (group.rank === 0) manifest = await commitCheckpointDir(tmp, dir, info, opts);
  } catch (err) {
    if (group.rank === 0) await rm(tmp, { recursive: true, force: true }).catch(() => {});
    throw err;
  } finally {
    group.barrier();  // committed before anyone goes on
  }
  return manifest;
}
