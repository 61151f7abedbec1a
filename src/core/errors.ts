/**
 * Errors raised by Megalith. Every error names what was wrong, with the offending value, and
 * what was expected, so a user can fix the call without reading our source.
 */

/** Base class for all Megalith errors. `code` is a stable machine-readable tag. */
export class MegalithError extends Error {
  readonly code: string;
  constructor(message: string, code = "megalith_error") {
    super(message);
    this.name = "MegalithError";
    this.code = code;
  }
}

/** A shape/dtype/argument mismatch in a tensor op. The message starts with the op name. */
export class ShapeError extends MegalithError {
  constructor(op: string, message: string) {
    super(`${op}: ${message}`, "shape_error");
    this.name = "ShapeError";
  }
}

/** A value outside its allowed range or of the wrong kind (configs, CLI flags, op arguments). */
export class ValueError extends MegalithError {
  constructor(message: string) {
    super(message, "value_error");
    this.name = "ValueError";
  }
}

/** A file that exists but cannot be used: truncated, corrupted, wrong magic/version. */
export class FormatError extends MegalithError {
  readonly file: string;
  constructor(file: string, message: string) {
    super(`${file}: ${message}`, "format_error");
    this.name = "FormatError";
    this.file = file;
  }
}

/** Formats a shape like PyTorch does: [2, 3, 4]. */
export function fmtShape(shape: readonly number[]): string {
  return `[${shape.join(", ")}]`;
}

/** Throws a ValueError unless `cond` holds. */
export function check(cond: unknown, message: string | (() => string)): asserts cond {
  if (!cond) throw new ValueError(typeof message === "string" ? message : message());
}
