/**
 * Checkpoints of model-parallel layouts (tp > 1 or pp > 1), in the logical form: the files are
 * exactly what one process would write (model.safetensors with HF names, optimizer.safetensors
 * with one moment tensor per logical parameter), so any layout, `megalith sample` and
 * `megalith serve` load them. Saving gathers the shards to world rank 0 (parallel/
 * logical_state.ts); loading reads the files on every rank and cuts this rank's shards.
 *
 * Nothing here knows the model: the logical tensors, keyed by parameter name, fill the task's
 * single-device twin of its model (`TrainTask.logicalModel`), and the task writes that twin in
 * its own format (`records`, `saveModelDir`: GPT-2's or BERT's names) or loads the files into
 * it (`loadWeights`), from which each rank cuts its shards.
 *
 * (Data parallelism alone keeps its own sharded ZeRO files: there every rank writes its shard
 * and no rank holds full moments. Here the shards of tp/pp are joined on rank 0, which then
 * briefly holds the whole model and its moments: fine on one machine, the thing to replace by
 * per-stage files for models that do not fit one host.)
 */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { noGrad } from "../autograd/index.js";
import { ValueError } from "../core/errors.js";
import { tensor, type Tensor } from "../tensor/index.js";
import { writeSafetensors, readOptimizerMoments, unshard, type TensorRecord } from "../checkpoint/index.js";
import { allGather, gatherLogical, shardOfLogical, ExpertShardedAdamW, type Parallelized, type ParallelModel, type ShardSpec } from "../parallel/index.js";
import type { Optimizer } from "../optim/index.js";
import type { TrainTask } from "./task.js";

/** What a logical checkpoint needs from the task: its model's single-device twin and file formats. */
export type LogicalTask = Pick<TrainTask, "kind" | "logicalModel" | "records" | "hfConfig" | "loadWeights" | "saveModelDir">;

/** A fresh single-device model of the task's architecture; an error names the task that has none. */
function twinOf(task: LogicalTask): ParallelModel {
  if (!task.logicalModel) throw new ValueError(`the ${task.kind} task has no logical model for model-parallel checkpoints; run it with parallel.tp=1, parallel.pp=1 and parallel.ep=1`);
  return task.logicalModel();
}

/** Whether the layout splits the model itself (tp, pp or ep), so checkpoints go through this file. */
export function isModelParallel(p: Parallelized): boolean {
  return p.mesh.sizes.tp > 1 || p.mesh.sizes.pp > 1 || p.mesh.sizes.ep > 1;
}

const MOMENTS = ["exp_avg", "exp_avg_sq"] as const;

/** A full single-device model holding the gathered logical parameters (rank 0), else null. A collective. */
async function gatherModel(p: Parallelized, task: LogicalTask): Promise<ParallelModel | null> {
  const full = await p.withFullParams(() => gatherLogical(p.mesh, p.tensorParallel.specs, p.model.namedParameters()));
  if (!full) return null;
  const model = twinOf(task);
  noGrad(() => {
    for (const [name, param] of model.namedParameters()) {
      const l = full.get(name);
      if (!l) throw new Error(`checkpoint: no rank sent parameter ${name}`);
      const t = tensor(l.data, { shape: l.shape });
      param.copy_(t);
      t.dispose();
    }
  });
  return model;
}

/** This rank's moments, one tensor per local parameter (gathered over dp from ZeRO shards). */
function localMoments(opt: Optimizer, names: readonly string[], shapes: ReadonlyArray<readonly number[]>): Record<string, Tensor[]> {
  if (opt instanceof ExpertShardedAdamW) {
    // Expert parallelism under ZeRO-1: each part's shards over its own group, back in model order.
    const out: Record<string, Tensor[]> = Object.fromEntries(MOMENTS.map((m) => [m, [] as Tensor[]]));
    const index = new Map(opt.params.map((p, i) => [p, i]));
    for (const part of opt.parts) {
      const ids = part.params.map((p) => index.get(p)!);
      const got = localMoments(part, ids.map((i) => names[i]!), ids.map((i) => shapes[i]!));
      for (const m of MOMENTS) ids.forEach((i, k) => { out[m]![i] = got[m]![k]!; });
    }
    return out;
  }
  const sd = opt.stateDict();
  if (sd.moments) return sd.moments;
  const { layout, tensors, size } = sd.shard!;
  const named = { ...layout, units: layout.units.map((u) => ({ ...u, params: u.params.map((i) => names[i]!) })) };
  const out: Record<string, Tensor[]> = {};
  for (const m of MOMENTS) {
    const shard = tensors[m]!;
    const all = tensor(new Float32Array(shard.numel * size));
    allGather(shard, all, (opt as unknown as { group: Parallelized["dpGroup"] }).group);
    const flat = all.data() as Float32Array;
    all.dispose();
    const perRank = Array.from({ length: size }, (_, r) => flat.subarray(r * shard.numel, (r + 1) * shard.numel));
    const byName = unshard(named, perRank);
    out[m] = names.map((n, i) => tensor(byName.get(n)!, { shape: [...shapes[i]!] }));
  }
  return out;
}

/** Logical moments, moment -> parameter name -> record, on rank 0 (null elsewhere). A collective. */
async function gatherMoments(p: Parallelized): Promise<Record<string, Record<string, TensorRecord>> | null> {
  const named = p.model.namedParameters();
  const local = localMoments(p.optimizer, named.map(([n]) => n), named.map(([, t]) => t.shape));
  const out: Record<string, Record<string, TensorRecord>> = {};
  let isRoot = false;
  for (const m of MOMENTS) {
    const full = await gatherLogical(p.mesh, p.tensorParallel.specs, named.map(([n], i) => [n, local[m]![i]!] as const));
    if (!full) continue;
    isRoot = true;
    out[m] = Object.fromEntries([...full].map(([n, l]) => [n, { dtype: "F32", shape: l.shape, data: new Uint8Array(l.data.buffer, l.data.byteOffset, l.data.byteLength) } as TensorRecord]));
  }
  if (!p.optimizer.stateDict().moments) for (const ts of Object.values(local)) for (const t of ts) t.dispose();
  return isRoot ? out : null;
}

/**
 * Writes the logical model (with `modelDir`, the task's complete model directory; with
 * `checkpointDir`, its weights, the optimizer moments, config.json and the trainer state) from
 * every rank's shards. A collective over the world: rank 0 writes.
 * @example
 * await saveLogicalCheckpoint(parallel, task, { checkpointDir: tmp, isMain: rank === 0, trainerState });
 */
export async function saveLogicalCheckpoint(
  p: Parallelized, task: LogicalTask,
  o: { modelDir?: string; checkpointDir?: string; isMain: boolean; trainerState?: unknown },
): Promise<void> {
  const model = await gatherModel(p, task);
  const moments = o.checkpointDir ? await gatherMoments(p) : null;
  if (!o.isMain || !model) return;
  if (o.modelDir) await task.saveModelDir(o.modelDir, model);
  if (o.checkpointDir) {
    await writeSafetensors(join(o.checkpointDir, "model.safetensors"), task.records(model), { format: "pt" });
    const records: Record<string, TensorRecord> = {};
    for (const [m, byName] of Object.entries(moments ?? {})) for (const [n, r] of Object.entries(byName)) records[`${m}.${n}`] = r;
    await writeSafetensors(join(o.checkpointDir, "optimizer.safetensors"), records);
    writeFileSync(join(o.checkpointDir, "config.json"), JSON.stringify(task.hfConfig(), null, 2) + "\n");
    writeFileSync(join(o.checkpointDir, "trainer_state.json"), JSON.stringify(o.trainerState, null, 2) + "\n");
  }
  for (const t of model.parameters()) t.dispose();
}

/**
 * Loads a logical checkpoint directory into this rank's shards: parameters (through
 * `withFullParams` under ZeRO-3) and, when the directory has them, the optimizer moments.
 * Every rank reads the files itself; no communication beyond ZeRO's.
 */
export async function restoreLogical(p: Parallelized, task: LogicalTask, dir: string, state: Parameters<Optimizer["loadStateDict"]>[0]["state"]): Promise<void> {
  const full = twinOf(task);
  await task.loadWeights(dir, full);
  const logical = new Map(full.namedParameters());
  const { rank, size } = p.tensorParallel.group;
  const specOf = (n: string): ShardSpec => p.tensorParallel.specs.get(n) ?? { kind: "replicated" };
  await p.withFullParams(() => noGrad(() => {
    for (const [name, param] of p.model.namedParameters()) {
      const s = shardOfLogical(logical.get(name)!, specOf(name), rank, size);
      param.copy_(s);
      s.dispose();
    }
  }), { writeBack: true });
  const named = p.model.namedParameters();
  const names = named.map(([n]) => n);
  const stored = await readOptimizerMoments(dir, names, names.map((n) => logical.get(n)!.numel));
  noGrad(() => {
    const moments = Object.fromEntries(Object.entries(stored).map(([k, xs]) => [k, xs.map((x, i) => {
      const full1 = tensor(x, { shape: logical.get(names[i]!)!.shape });
      const s = shardOfLogical(full1, specOf(names[i]!), rank, size);
      full1.dispose();
      return s;
    })]));
    p.optimizer.loadStateDict({ state, moments });
    for (const ts of Object.values(moments)) for (const t of ts) t.dispose();
  });
  for (const t of full.parameters()) t.dispose();
}
