/** Tensor element types. float32 computes everywhere; bfloat16/float16 are storage formats
 * (convert with `.to("float32")`); int32 holds indices and targets; int8/uint8 hold quantized
 * weights and masks. */
import { ValueError } from "../core/errors.js";
import { OP_CODES } from "../backend/index.js";

export type DType = "float32" | "bfloat16" | "float16" | "int32" | "int8" | "uint8";

export const DTYPES: readonly DType[] = ["float32", "bfloat16", "float16", "int32", "int8", "uint8"];

const SIZES: Record<DType, number> = { float32: 4, bfloat16: 2, float16: 2, int32: 4, int8: 1, uint8: 1 };

/** Bytes per element. */
export function dtypeSize(dtype: DType): number {
  return SIZES[dtype];
}

/** The native dtype code (native/src/megalith.h DType). */
export function dtypeCode(dtype: DType): number {
  return OP_CODES.DType[dtype];
}

/** Throws a clear error unless `d` names a dtype. */
export function checkDType(d: unknown, where: string): DType {
  if (typeof d === "string" && (DTYPES as readonly string[]).includes(d)) return d as DType;
  throw new ValueError(`${where}: unknown dtype ${JSON.stringify(d)}; expected one of ${DTYPES.join(", ")}`);
}

export function isFloating(d: DType): boolean {
  return d === "float32" || d === "bfloat16" || d === "float16";
}
