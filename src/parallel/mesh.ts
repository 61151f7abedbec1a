/** A device mesh with named axes over the world's ranks; passed explicitly to what needs it. */
import { ValueError } from "../core/errors.js";
import { splitGroup, worldGroup, type ProcessGroup } from "./collectives.js";

export type Axis = "dp" | "tp" | "pp" | "ep";
const AXES: Axis[] = ["pp", "dp", "ep", "tp"];  // tp innermost: neighbours share a node

export class DeviceMesh {
  readonly world: ProcessGroup;
  readonly sizes: Record<Axis, number>;
  readonly coords: Record<Axis, number>;
  private readonly groups = new Map<Axis, ProcessGroup>();

  constructor(sizes: Partial<Record<Axis, number>>, world: ProcessGroup = worldGroup()) {
    this.world = world;
    this.sizes = { dp: sizes.dp ?? 1, tp: sizes.tp ?? 1, pp: sizes.pp ?? 1, ep: sizes.ep ?? 1 };
    const product = AXES.reduce((p, a) => p * this.sizes[a], 1);
    if (product !== world.size) {
      throw new ValueError(`mesh: the product of the axes (${AXES.map((a) => `${a}=${this.sizes[a]}`).join(" x ")} = ${product}) must equal the number of ranks (${world.size})`);
    }
    let r = world.rank;
    const coords = {} as Record<Axis, number>;
    for (let i = AXES.length - 1; i >= 0; i--) {
      const a = AXES[i]!;
      coords[a] = r % this.sizes[a];
      r = Math.floor(r / this.sizes[a]);
    }
    this.coords = coords;
  }

  /** The group of ranks that differ from this one only along `axis`. */
  group(axis: Axis): ProcessGroup {
    const cached = this.groups.get(axis);
    if (cached) return cached;
    if (this.sizes[axis] === this.world.size) {
      this.groups.set(axis, this.world);
      return this.world;
    }
    // Color: the coordinates on every other axis; key: the coordinate on this one.
    let color = 0;
    for (const a of AXES) if (a !== axis) color = color * this.sizes[a] + this.coords[a];
    const g = splitGroup(this.world, color, this.coords[axis]);
    this.groups.set(axis, g);
    return g;
  }
}
