/**
 * Logical state across a model-parallel layout: what lets a checkpoint saved at tp=2 x pp=2
 * load in one process (or at dp=2, or tp=2), and `megalith serve` read any of them.
 *
 * Save: `gatherLogical` assembles each named tensor's logical (single-device) form on world
 * rank 0: tensor-parallel shards are all-gathered over tp and joined by their ShardSpec, then
 * each pipeline stage's leader sends its tensors to rank 0 (a header naming them, then the
 * tensors, over the world communicator); so does each expert-parallel rank (its experts carry
 * their logical names; rank 0 keeps the first copy of a name, so the shared tensors the ep
 * ranks also send are ignored). Data-parallel replicas hold the same tensors and take no part
 * (dp coordinate 0 speaks for them).
 *
 * Load: every rank reads the logical files itself and cuts its shards (`shardOfLogical`), so
 * loading needs no communication at all.
 */
import { ValueError } from "../core/errors.js";
import { noGrad } from "../autograd/index.js";
import { Tensor, tensor } from "../tensor/index.js";
import { allGather, recv, send, type ProcessGroup } from "./collectives.js";
import type { DeviceMesh } from "./mesh.js";
import { logicalFromShards, type ShardSpec } from "./tensor_parallel.js";

/** A logical tensor as plain data (float32). */
export interface LogicalTensor {
  shape: number[];
  data: Float32Array;
}

const HEADER_TAG = 7001, TENSOR_TAG = 7002;

/** Joins the tp shards of one local tensor (a collective over tp when the spec splits it). */
function joinOverTp(t: Tensor, spec: ShardSpec, g: ProcessGroup): LogicalTensor {
  return noGrad(() => {
    if (g.size === 1 || spec.kind === "replicated") {
      return { shape: [...t.shape], data: Float32Array.from(t.data() as Float32Array) };
    }
    const src = t.to("float32").contiguous();
    const all = Tensor.empty([g.size, ...t.shape], "float32");
    allGather(src, all, g);
    const parts = Array.from({ length: g.size }, (_, r) => all.select(0, r));
    const full = logicalFromShards(parts, spec);
    const out = { shape: [...full.shape], data: Float32Array.from(full.data() as Float32Array) };
    for (const x of [src, all, full, ...parts]) x.dispose();
    return out;
  });
}

/**
 * The logical form of `named` local tensors (e.g. parameters, or one optimizer moment per
 * parameter) from every stage of the layout, on world rank 0 (null on every other rank).
 * A collective over the mesh: every rank calls it with its own tensors, in its own order.
 * @example
 * const full = await gatherLogical(mesh, plan.specs, model.namedParameters());
 * if (full) writeAll(full);   // rank 0
 */
export async function gatherLogical(mesh: DeviceMesh, specs: ReadonlyMap<string, ShardSpec>, named: ReadonlyArray<readonly [string, Tensor]>): Promise<Map<string, LogicalTensor> | null> {
  if (mesh.coords.dp !== 0) return null;
  const tp = mesh.group("tp");
  const mine = named.map(([name, t]) => [name, joinOverTp(t, specs.get(name) ?? { kind: "replicated" }, tp)] as const);
  if (tp.rank !== 0) return null;
  const world = mesh.world, pp = mesh.sizes.pp, ep = mesh.sizes.ep;
  if (mesh.coords.pp !== 0 || mesh.coords.ep !== 0) {
    const header = new TextEncoder().encode(JSON.stringify(mine.map(([n, l]) => [n, l.shape])));
    const len = tensor([header.length], { dtype: "int32" });
    const bytes = tensor(Int32Array.from(header), { dtype: "int32" });
    send(len, world, 0, { tag: HEADER_TAG });
    send(bytes, world, 0, { tag: HEADER_TAG });
    for (const [, l] of mine) {
      const t = tensor(l.data, { shape: l.shape });
      send(t, world, 0, { tag: TENSOR_TAG });
      t.dispose();
    }
    for (const t of [len, bytes]) t.dispose();
    return null;
  }
  if (world.rank !== 0) throw new ValueError(`gatherLogical: the rank at pp=0, dp=0, ep=0, tp=0 must be world rank 0, got ${world.rank}`);
  const out = new Map<string, LogicalTensor>(mine);
  for (let i = 1; i < pp * ep; i++) {
    const from = mesh.rankAt({ pp: Math.floor(i / ep), dp: 0, ep: i % ep, tp: 0 });
    const len = Tensor.empty([1], "int32");
    recv(len, world, from, { tag: HEADER_TAG });
    const bytes = Tensor.empty([len.item()], "int32");
    recv(bytes, world, from, { tag: HEADER_TAG });
    const list = JSON.parse(new TextDecoder().decode(Uint8Array.from(bytes.data() as Int32Array))) as Array<[string, number[]]>;
    for (const t of [len, bytes]) t.dispose();
    for (const [name, shape] of list) {
      const t = Tensor.empty(shape, "float32");
      recv(t, world, from, { tag: TENSOR_TAG });
      if (!out.has(name)) out.set(name, { shape, data: Float32Array.from(t.data() as Float32Array) });
      t.dispose();
    }
  }
  return out;
}
