/**
 * Regions: the collectives autograd must see, as conjugate pairs (Megatron's
 * tensor_parallel/mappings.py). Each is an op whose backward is its forward's conjugate:
 *
 *   copyToRegion            forward identity          backward all-reduce (sum)
 *   reduceFromRegion        forward all-reduce (sum)  backward identity
 *   gatherFromSequence      forward all-gather (seq)  backward reduce-scatter (seq)
 *   reduceScatterToSequence forward reduce-scatter    backward all-gather (seq)
 *
 * "Sequence" is dim 1 of a (B, T, C) activation: rank r of the group holds tokens
 * [r T/n, (r+1) T/n). MPI gathers and scatters whole contiguous blocks, so the ops move the
 * group axis to the front ((n, B, T/n, C) blocks) and back; for B = 1 that is free.
 *
 * Every op is the identity (a new handle, still in the graph) at group size 1, so one model
 * path serves every layout. These are the only communication of tensor and sequence
 * parallelism: a layer built from them needs no hook or post-step sync.
 */
import { ValueError, fmtShape } from "../core/errors.js";
import { recordNode, noGrad } from "../autograd/index.js";
import { Tensor } from "../tensor/index.js";
import { allGather, allReduce, reduceScatter, type ProcessGroup } from "./collectives.js";

/** A contiguous copy outside autograd (collectives work in place on whole buffers). */
function owned(t: Tensor): Tensor {
  return noGrad(() => t.clone());
}

function allReduced(t: Tensor, g: ProcessGroup): Tensor {
  const out = owned(t);
  allReduce(out, g, "sum");
  return out;
}

function checkSeq(op: string, x: Tensor, n: number, whole: boolean): void {
  if (x.ndim < 2) throw new ValueError(`${op}: expected an activation (B, T, ...), got shape ${fmtShape(x.shape)}`);
  if (whole && x.shape[1]! % n !== 0) {
    throw new ValueError(`${op}: the sequence length ${x.shape[1]} must be divisible by the group size ${n} (sequence parallelism shards tokens evenly)`);
  }
}

/** x (B, T/n, ...) on every rank -> (B, T, ...), rank order along dim 1. Outside autograd. */
export function gatherSeqRaw(x: Tensor, g: ProcessGroup): Tensor {
  const n = g.size;
  const [B, Tl, ...rest] = x.shape as number[];
  return noGrad(() => {
    const src = x.contiguous();
    const blocks = Tensor.empty([n, B!, Tl!, ...rest], x.dtype);              // (n, B, T/n, ...)
    allGather(src, blocks, g);
    src.dispose();
    const moved = blocks.transpose(0, 1);                                     // (B, n, T/n, ...)
    const out = moved.reshape([B!, n * Tl!, ...rest]);                        // (B, T, ...) (a copy)
    moved.dispose();
    blocks.dispose();
    return out;
  });
}

/** x (B, T, ...) -> this rank's (B, T/n, ...) of the sum over ranks. Outside autograd. */
export function reduceScatterSeqRaw(x: Tensor, g: ProcessGroup): Tensor {
  const n = g.size;
  const [B, T, ...rest] = x.shape as number[];
  const Tl = T! / n;
  return noGrad(() => {
    const v = x.reshape([B!, n, Tl, ...rest]);                                // (B, n, T/n, ...)
    const moved = v.transpose(0, 1);                                          // (n, B, T/n, ...)
    const blocks = moved.contiguous();
    const out = Tensor.empty([B!, Tl, ...rest], x.dtype);
    reduceScatter(blocks, out, g, "sum");
    for (const t of [v, moved, blocks]) t.dispose();
    return out;
  });
}

/**
 * Identity forward, all-reduce (sum) backward: where a replicated activation enters a region
 * whose ranks each compute a part of its consumers (a column-parallel linear's input). Also
 * wraps a replicated parameter used on a shard of the tokens (sequence parallelism), so each
 * rank's partial gradient becomes the full one before it reaches `.grad`.
 * @example
 * const y = F.linear(copyToRegion(x, tp), wShard, bShard);   // (B, T, out/tp)
 */
export function copyToRegion(x: Tensor, g: ProcessGroup): Tensor {
  if (g.size === 1) return noGradIdentity(x);
  return recordNode("tp_copy", x.alias(), [x], (gy) => [allReduced(gy as Tensor, g)]);
}

/**
 * All-reduce (sum) forward, identity backward: the partial outputs of a row-parallel linear
 * (or a vocabulary-parallel lookup) become the full activation on every rank.
 */
export function reduceFromRegion(x: Tensor, g: ProcessGroup): Tensor {
  if (g.size === 1) return noGradIdentity(x);
  return recordNode("tp_reduce", allReduced(x, g), [x], (gy) => [(gy as Tensor).alias()]);
}

/**
 * All-gather along the sequence forward, reduce-scatter backward: sequence-parallel tokens
 * (B, T/n, C) become the whole sequence (B, T, C) in front of a column-parallel linear.
 */
export function gatherFromSequence(x: Tensor, g: ProcessGroup): Tensor {
  if (g.size === 1) return noGradIdentity(x);
  checkSeq("gatherFromSequence", x, g.size, false);
  return recordNode("sp_gather", gatherSeqRaw(x, g), [x], (gy) => [reduceScatterSeqRaw(gy as Tensor, g)]);
}

/**
 * Reduce-scatter along the sequence forward, all-gather backward: a row-parallel linear's
 * partial (B, T, C) becomes this rank's summed tokens (B, T/n, C).
 */
export function reduceScatterToSequence(x: Tensor, g: ProcessGroup): Tensor {
  if (g.size === 1) return noGradIdentity(x);
  checkSeq("reduceScatterToSequence", x, g.size, true);
  return recordNode("sp_reduce_scatter", reduceScatterSeqRaw(x, g), [x], (gy) => [gatherSeqRaw(gy as Tensor, g)]);
}

/** The group-of-one form of every region: a new handle in the graph, gradient passed through. */
function noGradIdentity(x: Tensor): Tensor {
  return recordNode("identity", x.alias(), [x], (gy) => [(gy as Tensor).alias()]);
}
