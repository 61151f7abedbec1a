/**
 * Autocast: a scoped compute-dtype policy for mixed-precision training (torch.autocast).
 *
 * Inside `withAutocast("bfloat16", fn)` the matrix products (matmul, and so every Linear and
 * the LM head) cast their floating operands to the low dtype, and embedding lookups return
 * the low dtype; every other op follows its inputs' dtype. So a model written for float32
 * runs with its activations — and what autograd saves of them — in bfloat16 (or float16),
 * while its parameters stay float32 "master weights": each cast is recorded, so gradients
 * arrive in float32 in each parameter's `.grad`. The kernels keep softmax, layer-norm
 * statistics and the loss in float32 (see nn_ops.ts), and the loss comes out float32.
 *
 * The policy is scoped like grad mode (`noGrad`): nothing outside the scope changes, and the
 * model code never mentions a dtype.
 */
import { ValueError } from "../core/errors.js";
import { getAutocastState, setAutocastState } from "../core/autocast_state.js";
import type { DType } from "./dtype.js";

/** The low compute dtype in force, or null outside any autocast scope. */
export function autocastDtype(): DType | null {
  return getAutocastState() as DType | null;
}

/**
 * Runs `fn` with matmuls and embeddings computing in `dtype` ("float32" or null turns autocast off).
 * @example
 * const { loss } = withAutocast("bfloat16", () => model.forward(idx, targets)); // loss is float32
 * loss!.backward();                                                             // float32 .grad
 */
export function withAutocast<T>(dtype: DType | null, fn: () => T): T {
  if (dtype !== null && dtype !== "float32" && dtype !== "bfloat16" && dtype !== "float16") {
    throw new ValueError(`withAutocast: dtype must be "bfloat16", "float16" or "float32", got ${JSON.stringify(dtype)}`);
  }
  const prev = setAutocastState(dtype === "float32" ? null : dtype);
  try {
    return fn();
  } finally {
    setAutocastState(prev);
  }
}
