/**
 * Backends: where tensor memory lives and kernels run. `backend` is the one in use; today the
 * native CPU backend (a GPU backend would be chosen here, behind the same interface).
 */
export type { Backend, BackendInfo, BackendMemoryStats, BufferView, DeviceBuffer, DType } from "./backend.js";
export { KERNELS, OP_CODES, type KernelName, type KernelArgs, type KernelFns, type KernelSpec, type ArgKind, type KernelDType } from "./kernels.js";
import { nativeBackend } from "./native_backend.js";
import { OP_CODES } from "./kernels.js";
import type { Backend } from "./backend.js";

/** The active backend. */
export const backend: Backend = nativeBackend;

export const { BinaryOp, UnaryOp, ReduceOp, ArgReduceOp, RandomKind } = OP_CODES;
