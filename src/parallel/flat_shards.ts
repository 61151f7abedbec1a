/**
 * FlatShards: how ZeRO cuts parameters across a data-parallel group, laid out the way PyTorch
 * FSDP lays out its flat parameters. Shared by the sharded optimizer (which keeps AdamW's state
 * and the gradient shards in this layout) and FSDP's units (which keep the parameters in it).
 *
 * Parameters are grouped into units (one per transformer block and a root unit for the rest).
 * Each unit is one flat index space, padded to a multiple of the group size and cut into equal
 * shards: rank r owns elements [r*s, (r+1)*s) of every unit, and a rank's shard buffers hold
 * its shards of all units one after another (`unit.base` is where each starts). Elements move
 * between parameters and shard buffers through tensor views, never byte addresses.
 */
import { ValueError } from "../core/errors.js";
import { Tensor } from "../tensor/index.js";
import type { FlatShardLayout } from "../checkpoint/index.js";
import { allGather, type ProcessGroup } from "./collectives.js";
import { copyRange, flatRange, zeroRange } from "./_views.js";

/** A run of a parameter's elements inside this rank's shard of a unit. */
export interface ShardPiece {
  /** Index into `params`. */
  param: number;
  /** First element within the parameter. */
  start: number;
  len: number;
  /** Position within the unit's shard. */
  shardOffset: number;
}

/** One flat unit. */
export interface ShardUnit {
  /** Position in `units` (the root unit, if any, is 0). */
  index: number;
  /** Indices into `params`. */
  params: number[];
  /** Flat offset of each parameter within the unit. */
  offsets: number[];
  numel: number;
  /** Elements per rank: numel padded up to a multiple of the group size, / size. */
  shard: number;
  /** Offset of this unit's shard in the rank's shard buffers. */
  base: number;
  /** This rank's pieces of the unit's parameters. */
  pieces: ShardPiece[];
}

/**
 * @example
 * const shards = new FlatShards(model.parameters(), dpGroup, model.h.map((b) => b.parameters()));
 * shards.units[0].shard;  // elements of the root unit each rank holds
 */
export class FlatShards {
  readonly params: Tensor[];
  readonly group: ProcessGroup;
  readonly units: ShardUnit[] = [];
  /** Elements of this rank's shard, over all units. */
  readonly shardSize: number;
  private readonly unitByParam = new Map<Tensor, ShardUnit>();

  /**
   * `groups`: parameters sharded (and, with FSDP, gathered) together, e.g. one per transformer
   * block. Parameters in no group form a root unit, placed first. Default: one unit.
   */
  constructor(params: Tensor[], group: ProcessGroup, groups: Tensor[][] = []) {
    this.params = params;
    this.group = group;
    for (const p of params) {
      if (p.dtype !== "float32" || !p.isContiguous || p.offset !== 0) {
        throw new ValueError(`ZeRO: parameter ${p.name ?? ""} must be a contiguous float32 tensor that owns its storage`);
      }
    }
    const index = new Map(params.map((p, i) => [p, i]));
    const ids: number[][] = [];
    const taken = new Set<number>();
    for (const g of groups) {
      const unit = g.map((p) => {
        const i = index.get(p);
        if (i === undefined) throw new ValueError(`ZeRO: unit parameter ${p.name ?? ""} is not among the optimizer's parameters`);
        if (taken.has(i)) throw new ValueError(`ZeRO: parameter ${p.name ?? i} is in two units`);
        taken.add(i);
        return i;
      });
      if (unit.length) ids.push(unit);
    }
    const rest = params.map((_, i) => i).filter((i) => !taken.has(i));
    if (rest.length) ids.unshift(rest);
    const { rank, size } = group;
    let base = 0;
    for (const unitIds of ids) {
      const offsets: number[] = [];
      let n = 0;
      for (const i of unitIds) { offsets.push(n); n += params[i]!.numel; }
      const shard = Math.ceil(n / size);
      const lo = rank * shard, hi = Math.min(n, lo + shard);
      const pieces: ShardPiece[] = [];
      unitIds.forEach((i, k) => {
        const a = Math.max(lo, offsets[k]!), b = Math.min(hi, offsets[k]! + params[i]!.numel);
        if (a < b) pieces.push({ param: i, start: a - offsets[k]!, len: b - a, shardOffset: a - lo });
      });
      const u: ShardUnit = { index: this.units.length, params: unitIds, offsets, numel: n, shard, base, pieces };
      this.units.push(u);
      for (const i of unitIds) this.unitByParam.set(params[i]!, u);
      base += shard;
    }
    this.shardSize = base;
  }

  /** The unit holding parameter `p`. */
  unitOf(p: Tensor): ShardUnit | undefined {
    return this.unitByParam.get(p);
  }

  /** The layout record (parameter indices), for checkpoints any other layout can load. */
  layout(stage?: number): FlatShardLayout<number> {
    return {
      size: this.group.size, ...(stage !== undefined ? { stage } : {}),
      units: this.units.map((u) => ({ params: [...u.params], numel: u.params.map((i) => this.params[i]!.numel), shard: u.shard })),
    };
  }

  /** A view of unit `u`'s shard inside a rank-shard buffer (`shardSize` elements). The caller disposes it. */
  shardOf(buffer: Tensor, u: ShardUnit): Tensor {
    return flatRange(buffer, u.base, u.shard);
  }

  /** Writes this rank's elements of unit `u`, read from `src(param)`, into `dst` (u.shard elements, padding zeroed). */
  pack(u: ShardUnit, dst: Tensor, src: (param: number) => Tensor): void {
    zeroRange(dst, 0, u.shard);
    for (const pc of u.pieces) copyRange(dst, pc.shardOffset, src(pc.param), pc.start, pc.len);
  }

  /** Copies each parameter's range of a gathered unit (`full`: the padded flat space) into `dst(param)`. */
  unpack(u: ShardUnit, full: Tensor, dst: (param: number) => Tensor): void {
    u.params.forEach((i, k) => copyRange(dst(i), 0, full, u.offsets[k]!, this.params[i]!.numel));
  }

  /** All-gathers unit `u` from every rank's `shard` (u.shard elements) over `group` and unpacks it into `dst(param)`. */
  gather(u: ShardUnit, shard: Tensor, dst: (param: number) => Tensor, group: ProcessGroup = this.group): void {
    const full = Tensor.empty([u.shard * this.group.size]);
    allGather(shard, full, group);
    this.unpack(u, full, dst);
    full.dispose();
  }
}
