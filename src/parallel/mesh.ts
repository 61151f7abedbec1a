/**
 * A device mesh: the ranks of a group (normally the world) laid out on named axes, pp x dp x
 * ep x tp, with tp innermost, so tensor-parallel peers are neighbouring ranks (the same node
 * when mpirun fills nodes slot by slot) and pipeline stages are the outermost blocks:
 *
 *   rank = ((pp_i * dp + dp_i) * ep + ep_i) * tp + tp_i
 *
 * `group(axis)` is the process group of the ranks that differ from this one only along that
 * axis (e.g. with dp=2 x tp=2: tp groups {0,1} {2,3}, dp groups {0,2} {1,3}). "axis" always
 * means a mesh axis; "dim" a tensor dimension. Pass the mesh explicitly to what needs it.
 */
import { ValueError } from "../core/errors.js";
import { splitGroup, worldGroup, type ProcessGroup } from "./collectives.js";

export type Axis = "dp" | "tp" | "pp" | "ep";
/** The axes, outermost first. */
export const MESH_AXES: readonly Axis[] = ["pp", "dp", "ep", "tp"];

export class DeviceMesh {
  /** The group laid out on the mesh. */
  readonly world: ProcessGroup;
  /** Ranks along each axis (1 for an axis not given). */
  readonly sizes: Readonly<Record<Axis, number>>;
  /** This rank's coordinate on each axis. */
  readonly coords: Readonly<Record<Axis, number>>;
  private readonly groups = new Map<Axis, ProcessGroup>();
  private readonly dataGroup_: ProcessGroup;

  /**
   * Lays `world`'s ranks out on the axes; the product of the sizes must equal `world.size`.
   * A collective over `world`: every rank constructs the same mesh at the same point.
   * @example
   * const mesh = new DeviceMesh({ dp: 2, tp: 2 });  // under mpirun -np 4
   * allReduce(grad, mesh.group("dp"), { op: "avg" });
   */
  constructor(sizes: Partial<Record<Axis, number>>, world: ProcessGroup = worldGroup()) {
    for (const [a, n] of Object.entries(sizes)) {
      if (!(MESH_AXES as readonly string[]).includes(a)) throw new ValueError(`mesh: unknown axis ${JSON.stringify(a)}; the axes are ${MESH_AXES.join(", ")}`);
      if (n !== undefined && (!Number.isInteger(n) || n < 1)) throw new ValueError(`mesh: axis ${a} must have a positive integer size, got ${n}`);
    }
    this.world = world;
    this.sizes = { pp: sizes.pp ?? 1, dp: sizes.dp ?? 1, ep: sizes.ep ?? 1, tp: sizes.tp ?? 1 };
    const product = MESH_AXES.reduce((p, a) => p * this.sizes[a], 1);
    if (product !== world.size) {
      throw new ValueError(`mesh: the product of the axes (${MESH_AXES.map((a) => `${a}=${this.sizes[a]}`).join(" x ")} = ${product}) must equal the number of ranks (${world.size}); ` +
        `start ${product} ranks (megalith launch -n ${product}) or change the axis sizes`);
    }
    this.coords = this.coordsOf(world.rank);
    // Every axis group is split here, in one fixed order: a split is a collective over the
    // world, and creating groups lazily would let ranks split in different orders.
    for (const a of MESH_AXES) this.groups.set(a, this.split(a));
    this.dataGroup_ = this.splitData();
  }

  /**
   * The ranks that differ from this one along dp or ep (rank dp_i * ep + ep_i): the data-parallel
   * group of everything but the experts, and of the data loader. Expert parallelism splits the
   * data-parallel ranks into ep x dp: every one of them reads its own data, experts are sharded
   * over ep and replicated over dp. With ep = 1 it is `group("dp")`.
   * @example
   * allReduce(loss, mesh.dataGroup(), "avg");   // the global batch's loss
   */
  dataGroup(): ProcessGroup {
    return this.dataGroup_;
  }

  /**
   * The group of ranks that differ from this one only along `axis`.
   * @example
   * const tp = mesh.group("tp");  // tp.rank === mesh.coords.tp
   */
  group(axis: Axis): ProcessGroup {
    const g = this.groups.get(axis);
    if (!g) throw new ValueError(`mesh: unknown axis ${JSON.stringify(axis)}; the axes are ${MESH_AXES.join(", ")}`);
    return g;
  }

  /** Each axis's coordinate of a rank of `world`. */
  coordsOf(rank: number): Record<Axis, number> {
    if (!Number.isInteger(rank) || rank < 0 || rank >= this.world.size) throw new ValueError(`mesh: rank ${rank} is outside 0..${this.world.size - 1}`);
    const c = {} as Record<Axis, number>;
    let r = rank;
    for (let i = MESH_AXES.length - 1; i >= 0; i--) {
      const a = MESH_AXES[i]!;
      c[a] = r % this.sizes[a];
      r = Math.floor(r / this.sizes[a]);
    }
    return c;
  }

  /** The rank of `world` at the given coordinates (axes left out: this rank's coordinate). */
  rankAt(coords: Partial<Record<Axis, number>>): number {
    let r = 0;
    for (const a of MESH_AXES) {
      const c = coords[a] ?? this.coords[a];
      if (!Number.isInteger(c) || c < 0 || c >= this.sizes[a]) throw new ValueError(`mesh: coordinate ${a}=${c} is outside 0..${this.sizes[a] - 1}`);
      r = r * this.sizes[a] + c;
    }
    return r;
  }

  /** "dp=2 x tp=2" (axes of size 1 left out). */
  toString(): string {
    const parts = MESH_AXES.filter((a) => this.sizes[a] > 1).map((a) => `${a}=${this.sizes[a]}`);
    return parts.length ? parts.join(" x ") : "single rank";
  }

  /** The dp x ep group (see `dataGroup`); split here, after the axis groups, in the same fixed order on every rank. */
  private splitData(): ProcessGroup {
    const { dp, ep } = this.sizes;
    if (ep === 1) return this.group("dp");
    if (dp === 1) return this.group("ep");
    if (dp * ep === this.world.size) return { ...this.world, name: "dp x ep" };
    const color = this.coords.pp * this.sizes.tp + this.coords.tp;
    return splitGroup(this.world, color, this.coords.dp * ep + this.coords.ep, "dp x ep");
  }

  private split(axis: Axis): ProcessGroup {
    const w = this.world;
    if (this.sizes[axis] === 1) return { rank: 0, size: 1, handle: -1, name: axis, worldRanks: [w.worldRanks?.[w.rank] ?? w.rank] };
    if (this.sizes[axis] === w.size) return { ...w, name: axis };
    // Color: this rank's coordinates on every other axis; key: its coordinate on this one.
    let color = 0;
    for (const a of MESH_AXES) if (a !== axis) color = color * this.sizes[a] + this.coords[a];
    return splitGroup(w, color, this.coords[axis], axis);
  }
}
