/**
 * The autograd engine: graph nodes, grad mode, and the backward traversal.
 *
 * The engine is generic over the values it differentiates (anything implementing
 * `Differentiable`), so it imports nothing from the tensor layer; tensor ops record nodes
 * through `recordNode` and look their gradient up in one table (src/tensor/gradients.ts).
 *
 * Memory: JavaScript has no reference counting, so the engine frees eagerly. Each node holds
 * the tensors it saved for backward; they are released as soon as that node's backward has
 * run, and every intermediate gradient is disposed once consumed. After `backward()` the graph
 * is gone (PyTorch's default retain_graph=False).
 */

/** What the engine needs from a differentiable value (the Tensor implements it). */
export interface Differentiable {
  requiresGrad: boolean;
  gradFn: Node | null;
  /** Accumulated gradient of a leaf. */
  grad: Differentiable | null;
  /** Adds `g` into this leaf's `.grad` (taking ownership of `g`). */
  accumulateGrad(g: Differentiable): void;
  /** Called once per backward when this leaf's gradient is complete. */
  gradReadyHooks?: Array<(self: Differentiable) => void>;
  /** A new handle on the same storage, owned by whoever takes it (refcounted). */
  alias(): Differentiable;
  /** this + other, for summing gradients that reach one node twice. */
  plus(other: Differentiable): Differentiable;
  dispose(): void;
}

/** One recorded op: how to turn the gradient of its output into gradients of its inputs. */
export class Node {
  /** Op name, the key of its gradient in the table. */
  readonly op: string;
  /** The op's inputs (null where an input needs no gradient). */
  readonly inputs: Array<Differentiable | null>;
  /** Computes input gradients from the output gradient; null entries mean "no gradient". */
  private backwardFn: ((gy: Differentiable) => Array<Differentiable | null>) | null;
  /** Saved values released after backward (or when the graph is dropped). */
  private saved: Differentiable[];
  /** Scope bookkeeping: a node created inside a scope is released when the scope ends. */
  released = false;

  constructor(
    op: string,
    inputs: Array<Differentiable | null>,
    backwardFn: (gy: Differentiable) => Array<Differentiable | null>,
    saved: Differentiable[],
  ) {
    this.op = op;
    this.inputs = inputs;
    this.backwardFn = backwardFn;
    this.saved = saved;
  }

  /** Runs this node's gradient, then frees what it saved. */
  apply(gy: Differentiable): Array<Differentiable | null> {
    if (!this.backwardFn) {
      throw new Error(
        `autograd: the graph through '${this.op}' was already freed (backward was called twice, ` +
          "or the scope that created it ended). Recompute the forward pass before calling backward again.",
      );
    }
    const grads = this.backwardFn(gy);
    this.release();
    return grads;
  }

  /** Drops saved values (idempotent). */
  release(): void {
    if (this.released) return;
    this.released = true;
    for (const s of this.saved) s.dispose();
    this.saved = [];
    this.backwardFn = null;
  }
}

// ---- grad mode -------------------------------------------------------------------------------

let gradEnabled = true;

/** Whether ops currently record the graph. */
export function isGradEnabled(): boolean {
  return gradEnabled;
}

/**
 * Runs `fn` without recording the graph (torch.no_grad()).
 * @example
 * const logits = noGrad(() => model.forward(idx).logits);
 */
export function noGrad<T>(fn: () => T): T {
  const prev = gradEnabled;
  gradEnabled = false;
  try {
    return fn();
  } finally {
    gradEnabled = prev;
  }
}

/** Runs `fn` with graph recording on (inside a noGrad region, e.g. checkpoint recompute). */
export function enableGrad<T>(fn: () => T): T {
  const prev = gradEnabled;
  gradEnabled = true;
  try {
    return fn();
  } finally {
    gradEnabled = prev;
  }
}

// Node observers let scopes release nodes created inside them (see src/tensor/scope.ts).
type NodeObserver = (node: Node) => void;
let nodeObserver: NodeObserver | null = null;

/** Installs the function told about every new node (the tensor scope stack). Returns the previous one. */
export function setNodeObserver(obs: NodeObserver | null): NodeObserver | null {
  const prev = nodeObserver;
  nodeObserver = obs;
  return prev;
}

/** Tells the scope stack about a node built outside recordNode (checkpoint). */
export function notifyNode(node: Node): void {
  nodeObserver?.(node);
}

/**
 * Records `op` producing `out` if grad mode is on and any input requires grad.
 * Returns `out` (now with `gradFn` set and `requiresGrad` true) for chaining.
 */
export function recordNode<T extends Differentiable>(
  op: string,
  out: T,
  inputs: Array<Differentiable | null | undefined>,
  backwardFn: (gy: Differentiable) => Array<Differentiable | null>,
  saved: Differentiable[] = [],
): T {
  if (!gradEnabled && tracer) traceInputs(inputs);
  const needs = gradEnabled && inputs.some((t) => t != null && t.requiresGrad);
  if (!needs) {
    for (const s of saved) s.dispose();
    return out;
  }
  const node = new Node(
    op,
    inputs.map((t) => (t != null && t.requiresGrad ? t : null)),
    backwardFn,
    saved,
  );
  out.gradFn = node;
  out.requiresGrad = true;
  nodeObserver?.(node);
  return out;
}

/** Whether gradient saving is needed for an op with these inputs (avoid saving otherwise). */
export function needsGrad(...inputs: Array<Differentiable | null | undefined | number>): boolean {
  if (!gradEnabled) {
    if (tracer) traceInputs(inputs);
    return false;
  }
  for (const t of inputs) if (t != null && typeof t !== "number" && t.requiresGrad) return true;
  return false;
}

// ---- tracing what a no-grad region differentiates through --------------------------------------

// Activation checkpointing runs its forward under noGrad, yet its node must list every value
// that will receive a gradient when the block is replayed (the parameters it uses), so the
// backward traversal counts their edges and fires their gradient-ready hooks once, after the
// last contribution. Ops report their inputs through needsGrad/recordNode even under noGrad,
// which is where the tracer listens.
let tracer: Set<Differentiable> | null = null;

function traceInputs(inputs: ReadonlyArray<Differentiable | null | undefined | number>): void {
  for (const t of inputs) if (t != null && typeof t !== "number" && t.requiresGrad) tracer!.add(t);
}

/**
 * Runs `fn` under noGrad and returns its result with every value requiring grad that an op
 * inside read (leaves such as parameters, and outside non-leaves): the values a grad-mode
 * replay of `fn` would send gradients to. Nests (an inner trace's values also reach the outer).
 */
export function traceNoGrad<T>(fn: () => T): { result: T; used: Set<Differentiable> } {
  const prev = tracer;
  const used = new Set<Differentiable>();
  tracer = used;
  try {
    return { result: noGrad(fn), used };
  } finally {
    tracer = prev;
    if (prev) for (const t of used) prev.add(t);
  }
}

// ---- backward ---------------------------------------------------------------------------------

/**
 * Backpropagates from `root` with output gradient `gradRoot` (ownership passes to the engine).
 * Leaves accumulate into `.grad`; gradient-ready hooks fire as each leaf completes.
 *
 * Values in `capture` are treated as the edge of the graph: their gradients are not accumulated
 * (no `.grad`, no hooks) nor propagated further, but summed and returned, owned by the caller
 * (checkpoint's replay hands them to the enclosing backward this way).
 */
export function runBackward(
  root: Differentiable,
  gradRoot: Differentiable,
  capture?: ReadonlySet<Differentiable>,
): Map<Differentiable, Differentiable> {
  const prev = gradEnabled;
  gradEnabled = false;  // gradients are computed without recording (no create_graph)
  const captured = new Map<Differentiable, Differentiable>();
  backwardDepth++;
  try {
    backwardImpl(root, gradRoot, capture ?? new Set(), captured);
  } catch (e) {
    for (const g of captured.values()) g.dispose();
    throw e;
  } finally {
    backwardDepth--;
    gradEnabled = prev;
  }
  return captured;
}

let backwardDepth = 0;

/**
 * Whether a backward pass is running: code called from a gradient function, e.g. a block that
 * activation checkpointing replays. FSDP's units use it to tell a replay from a forward.
 */
export function isBackwardRunning(): boolean {
  return backwardDepth > 0;
}

function backwardImpl(
  root: Differentiable,
  gradRoot: Differentiable,
  capture: ReadonlySet<Differentiable>,
  captured: Map<Differentiable, Differentiable>,
): void {
  if (capture.has(root)) {
    captured.set(root, gradRoot);
    return;
  }
  if (!root.gradFn) {
    if (root.requiresGrad) {
      root.accumulateGrad(gradRoot);
      fireHooks(root);
      return;
    }
    gradRoot.dispose();
    throw new Error("backward: the tensor does not require grad and has no grad_fn (was it computed under noGrad, or from inputs without requiresGrad?)");
  }
  // Topological order by iterative DFS; count how many edges reach each leaf so hooks know
  // when a leaf's gradient is complete.
  const order: Node[] = [];
  const visited = new Set<Node>();
  const leafEdges = new Map<Differentiable, number>();
  const stack: Array<[Node, number]> = [[root.gradFn, 0]];
  visited.add(root.gradFn);
  while (stack.length) {
    const top = stack[stack.length - 1]!;
    const [node, i] = top;
    if (i < node.inputs.length) {
      top[1]++;
      const inp = node.inputs[i];
      if (!inp || capture.has(inp)) continue;
      if (inp.gradFn) {
        if (!visited.has(inp.gradFn)) {
          visited.add(inp.gradFn);
          stack.push([inp.gradFn, 0]);
        }
      } else {
        leafEdges.set(inp, (leafEdges.get(inp) ?? 0) + 1);
      }
    } else {
      stack.pop();
      order.push(node);
    }
  }
  // A leaf's hooks fire when its last edge is done, if any edge brought a gradient (an edge can
  // bring none: a node unreachable from the root's gradient, or a gradient function's null).
  const gotGrad = new Set<Differentiable>();
  const leafEdgeDone = (leaf: Differentiable): void => {
    const left = (leafEdges.get(leaf) ?? 1) - 1;
    leafEdges.set(leaf, left);
    if (left === 0 && gotGrad.has(leaf)) fireHooks(leaf);
  };
  const pending = new Map<Node, Differentiable>();
  pending.set(root.gradFn, gradRoot);
  for (let n = order.length - 1; n >= 0; n--) {
    const node = order[n]!;
    const gy = pending.get(node);
    pending.delete(node);
    if (!gy) {
      node.release();  // unreachable from root's gradient (e.g. a discarded output)
      for (const inp of node.inputs) if (inp && !inp.gradFn && !capture.has(inp)) leafEdgeDone(inp);
      continue;
    }
    let grads: Array<Differentiable | null>;
    try {
      grads = node.apply(gy);
    } catch (e) {
      gy.dispose();
      for (const g of pending.values()) g.dispose();
      for (const rest of order) rest.release();
      throw e;
    }
    // The engine owns gy and whatever the gradient function returned (which may be gy itself,
    // or one tensor for two inputs): each consumer gets its own refcounted handle, then the
    // originals are released once.
    const owned = new Set<Differentiable>([gy]);
    for (const g of grads) if (g) owned.add(g);
    for (let i = 0; i < node.inputs.length; i++) {
      const inp = node.inputs[i];
      if (!inp) continue;
      const gi = grads[i];
      const isLeaf = !inp.gradFn && !capture.has(inp);
      if (!gi) {
        if (isLeaf) leafEdgeDone(inp);
        continue;
      }
      const g = gi.alias();
      if (capture.has(inp)) {
        const prev = captured.get(inp);
        if (prev) {
          captured.set(inp, prev.plus(g));
          prev.dispose();
          g.dispose();
        } else {
          captured.set(inp, g);
        }
      } else if (inp.gradFn) {
        const prev = pending.get(inp.gradFn);
        if (prev) {
          pending.set(inp.gradFn, prev.plus(g));
          prev.dispose();
          g.dispose();
        } else {
          pending.set(inp.gradFn, g);
        }
      } else {
        inp.accumulateGrad(g);
        gotGrad.add(inp);
        leafEdgeDone(inp);
      }
    }
    for (const g of owned) g.dispose();
  }
  // Tensors that were aliased still hold their own refs; gy handles are disposed above.
}

function fireHooks(leaf: Differentiable): void {
  if (leaf.gradReadyHooks) for (const h of leaf.gradReadyHooks) h(leaf);
}
