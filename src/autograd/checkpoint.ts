/**
 * Activation checkpointing: run a block without keeping its activations, and recompute them
 * during backward (torch.utils.checkpoint, non-reentrant flavour).
 *
 * Forward: the block runs under noGrad inside a memory scope, so everything it allocates except
 * its output is freed as soon as it returns; the node keeps only its own handles on the inputs
 * (saved like any op's activations, so the caller may dispose its handles). While it runs, the
 * engine traces which values requiring grad the block reads (its parameters, or tensors from
 * outside it captured by the closure); the node lists them as inputs next to the block's
 * arguments, so the enclosing backward counts their edges like any other.
 *
 * Backward: the node replays the block with grad on, from detached copies of the inputs and with
 * the random generator rewound (so dropout masks match), inside a memory scope, and
 * backpropagates through the replay with the traced values and the copies as its edge: their
 * gradients come back to the enclosing backward instead of being accumulated by the replay. So
 * a parameter used both inside and outside the block gets one complete gradient and its
 * gradient-ready hook fires once, after the last contribution, as without checkpointing.
 *
 * Trade-off: a value the block reads through an op that reports no inputs under noGrad would be
 * missed by the trace; the replay then accumulates into it directly (and fires its hooks then).
 * Every op in src/tensor reports its inputs (test/autograd/checkpoint.test.ts checks models).
 */
import { getRngState, setRngState } from "../core/rng_state.js";
import { getAutocastState, setAutocastState } from "../core/autocast_state.js";
import { ValueError } from "../core/errors.js";
import { Node, type Differentiable, enableGrad, isGradEnabled, runBackward, notifyNode, traceNoGrad } from "./engine.js";

/** What checkpoint needs beyond the engine's interface (the Tensor implements it). */
export interface Checkpointable extends Differentiable {
  /** A handle on the same data, cut from the graph. */
  detach(): Checkpointable;
  /** A handle owned by an autograd node: it survives the caller's dispose() and every scope. */
  saveForBackward(): Checkpointable;
  /**
   * Runs `fn` in a memory scope: everything created inside is freed when it returns, except its
   * result (the tensor layer's withScope; autograd imports no tensor code).
   */
  scoped<R>(fn: () => R): R;
}

/**
 * Runs `fn(...inputs)` keeping no intermediate activations; they are recomputed in backward.
 * Only the inputs (held by the node) and the output stay alive between forward and backward.
 * @example
 * const y = checkpoint((h) => block.forward(h), x);
 */
export function checkpoint<T extends Checkpointable>(fn: (...inputs: T[]) => T, ...inputs: T[]): T {
  const first = inputs[0];
  if (!first) throw new ValueError("checkpoint: pass the block's inputs as arguments (got none), e.g. checkpoint((h) => block.forward(h), x)");
  // Under noGrad there is nothing to recompute; the block's temporaries are still freed on return.
  if (!isGradEnabled()) return first.scoped(() => fn(...inputs));
  const rng = getRngState();
  // The replay computes in the dtype the forward did (torch.utils.checkpoint restores autocast too).
  const autocast = getAutocastState();
  const { result: out, used } = traceNoGrad(() =>
    first.scoped(() => {
      const y = fn(...inputs);
      // An input returned unchanged must not get this node as its gradFn: return a new handle.
      return inputs.includes(y) ? (y.alias() as T) : y;
    }),
  );
  // Values the block differentiates through besides its arguments (parameters, captured tensors).
  const extras = [...used].filter((t) => !inputs.includes(t as T));
  if (!inputs.some((t) => t.requiresGrad) && extras.length === 0) return out;
  const saved = inputs.map((t) => t.saveForBackward() as T);
  const needs = inputs.map((t) => t.requiresGrad);
  const node = new Node(
    "checkpoint",
    [...inputs.map((t) => (t.requiresGrad ? t : null)), ...extras],
    (gy) => replayBackward((...xs: T[]) => {
      const prev = setAutocastState(autocast);
      try {
        return fn(...xs);
      } finally {
        setAutocastState(prev);
      }
    }, needs, saved, extras, rng, gy),
    saved,
  );
  out.gradFn = node;
  out.requiresGrad = true;
  notifyNode(node);
  return out;
}

/** Recomputes the block with grad on and returns the gradients of the node's inputs. */
function replayBackward<T extends Checkpointable>(
  fn: (...inputs: T[]) => T,
  needs: readonly boolean[],
  saved: readonly T[],
  extras: readonly Differentiable[],
  rng: ReturnType<typeof getRngState>,
  gy: Differentiable,
): Array<Differentiable | null> {
  const after = getRngState();
  setRngState(rng);
  try {
    return saved[0]!.scoped(() => {
      const detached = saved.map((s, i) => {
        const d = s.detach() as T;
        d.requiresGrad = needs[i]!;
        return d;
      });
      const edge = new Set<Differentiable>([...detached.filter((d) => d.requiresGrad), ...extras]);
      const replay = enableGrad(() => fn(...detached));
      const grads = runBackward(replay, gy.alias(), edge);
      // Returned from the scope, so they survive it; the engine disposes them once consumed.
      return [...detached.map((d) => (d.requiresGrad ? grads.get(d) ?? null : null)), ...extras.map((t) => grads.get(t) ?? null)];
    });
  } finally {
    setRngState(after);
  }
}
