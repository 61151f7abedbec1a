/**
 * Activation checkpointing: run a block without keeping its activations, and recompute them
 * during backward (torch.utils.checkpoint, non-reentrant flavour).
 *
 * Forward runs under noGrad, so only the block's inputs and output survive; the recorded node's
 * backward replays the block with grad on, from detached copies of the inputs and with the
 * random generator rewound, so dropout masks match, then backpropagates through the replay.
 * Parameters used inside the block receive their gradients directly during that replay.
 */
import { getRngState, setRngState } from "../core/rng_state.js";
import { Node, type Differentiable, enableGrad, isGradEnabled, noGrad, runBackward, notifyNode } from "./engine.js";

/** What checkpoint needs beyond the engine's interface. */
export interface Checkpointable extends Differentiable {
  detach(): Checkpointable;
}

/**
 * Runs `fn(...inputs)` keeping no intermediate activations; they are recomputed in backward.
 * @example
 * const y = checkpoint((h) => block.forward(h), x);
 */
export function checkpoint<T extends Checkpointable>(fn: (...inputs: T[]) => T, ...inputs: T[]): T {
  if (!isGradEnabled()) return fn(...inputs);
  const rng = getRngState();
  const out = noGrad(() => fn(...inputs));
  const node = new Node(
    "checkpoint",
    inputs.map((t) => (t.requiresGrad ? t : null)),
    (gy) => {
      const after = getRngState();
      setRngState(rng);
      const detached = inputs.map((x) => {
        const d = x.detach() as T;
        d.requiresGrad = x.requiresGrad;
        return d;
      });
      try {
        const replay = enableGrad(() => fn(...detached));
        runBackward(replay, gy.alias());
        replay.dispose();
        return detached.map((d) => {
          const g = d.grad;
          d.grad = null;
          return g;
        });
      } finally {
        for (const d of detached) d.dispose();
        setRngState(after);
      }
    },
    [],
  );
  // Every recorded op, including this one, marks its output as needing grad: parameters inside
  // the block require grad even when the inputs do not.
  out.gradFn = node;
  out.requiresGrad = true;
  notifyNode(node);
  return out;
}
