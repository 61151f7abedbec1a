/**
 * The safetensors file format (https://github.com/huggingface/safetensors), read and written
 * exactly, so weights move to and from the Python world.
 *
 * Layout: an 8-byte little-endian unsigned header length N, then N bytes of UTF-8 JSON
 * `{"__metadata__": {str: str}, name: {"dtype", "shape", "data_offsets": [begin, end]}, ...}`
 * (we pad it with spaces so the data starts 8-byte aligned), then the data section. Offsets are
 * relative to the start of the data section; tensors must tile it exactly, with no overlaps and
 * no holes (the spec forbids holes so a file cannot smuggle a second format inside it).
 *
 * This layer knows nothing about Tensor: it moves plain `{dtype, shape, data}` records whose
 * `data` holds the raw little-endian bytes. Big files are written and read one tensor at a time
 * through a file handle, never as one giant buffer, so files over 2 GiB work.
 */

import { open, rename, unlink, type FileHandle } from "node:fs/promises";
import { dirname } from "node:path";
import { FormatError, ValueError, fmtShape } from "../core/errors.js";
import { dtypeElementSize, isSafetensorsDtype, SAFETENSORS_DTYPES, shapeNumel, type SafetensorsDtype } from "./_dtype.js";
import { fsyncDir, readFully, uniqueSuffix, writeFully } from "./_fs.js";

/** One tensor as raw bytes. `data.length === product(shape) * elementSize(dtype)`. */
export interface TensorRecord {
  /** Element type, e.g. "F32" or "BF16". */
  dtype: SafetensorsDtype;
  /** Dimensions; `[]` is a scalar (one element), a 0 anywhere means no elements. */
  shape: number[];
  /** The elements, little-endian, row-major. */
  data: Uint8Array;
}

/** Where one tensor lives in a file, as declared by the header. */
export interface SafetensorsTensorInfo {
  dtype: SafetensorsDtype;
  shape: number[];
  /** `[begin, end)` byte range relative to the start of the data section. */
  dataOffsets: [number, number];
}

/** A whole file read into memory by `readSafetensors()`. */
export interface SafetensorsContents {
  /** The `__metadata__` map (empty when the file has none). */
  metadata: Record<string, string>;
  /** Tensors by name, in data-section order. */
  tensors: Map<string, TensorRecord>;
}

/** An open file from `openSafetensors()`: the parsed header plus on-demand tensor reads. */
export interface SafetensorsFile {
  /** The path it was opened from (used in error messages). */
  path: string;
  /** The `__metadata__` map (empty when the file has none). */
  metadata: Record<string, string>;
  /** Every tensor's dtype, shape and byte range, in data-section order. */
  tensors: Map<string, SafetensorsTensorInfo>;
  /** Absolute file offset of the data section (8 + header length). */
  dataStart: number;
  /** Reads one tensor's bytes (only those bytes) from disk. Safe to call concurrently. */
  read(name: string): Promise<TensorRecord>;
  /** Closes the file handle. Further `read()` calls throw. */
  close(): Promise<void>;
}

/** Options for `readSafetensors()`. */
export interface ReadSafetensorsOptions {
  /** Read only these tensors (each must exist). Default: all of them. */
  names?: readonly string[];
}

/** The reader refuses headers longer than this, like the reference implementation (100 MB). */
export const SAFETENSORS_MAX_HEADER_BYTES = 100_000_000;

const METADATA_KEY = "__metadata__";

// ---------------------------------------------------------------------------------------------
// Writing

/** Validates one record for the writer; throws ValueError naming the tensor. */
function checkRecord(name: string, t: TensorRecord): void {
  if (name === "" || name === METADATA_KEY) throw new ValueError(`writeSafetensors: invalid tensor name ${JSON.stringify(name)}`);
  if (!isSafetensorsDtype(t.dtype)) {
    throw new ValueError(`writeSafetensors: tensor ${JSON.stringify(name)} has unknown dtype ${JSON.stringify(t.dtype)}; expected one of ${SAFETENSORS_DTYPES.join(", ")}`);
  }
  if (!Array.isArray(t.shape) || !t.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw new ValueError(`writeSafetensors: tensor ${JSON.stringify(name)} has shape ${JSON.stringify(t.shape)}; expected an array of non-negative integers`);
  }
  if (!(t.data instanceof Uint8Array)) throw new ValueError(`writeSafetensors: tensor ${JSON.stringify(name)} data must be a Uint8Array of raw bytes`);
  const want = shapeNumel(t.shape) * dtypeElementSize(t.dtype);
  if (t.data.length !== want) {
    throw new ValueError(`writeSafetensors: tensor ${JSON.stringify(name)} (${t.dtype}, shape ${fmtShape(t.shape)}) needs ${want} bytes but data has ${t.data.length}`);
  }
}

/**
 * Builds the header bytes (length prefix + padded JSON) and the data layout. Tensors are laid out
 * widest dtype first, then by name (code-unit order): deterministic, and every tensor starts at a
 * multiple of its element size, so a reader can view the bytes as a typed array in place.
 */
function planLayout(
  tensors: ReadonlyMap<string, TensorRecord>,
  metadata: Record<string, string> | undefined,
): { prefix: Uint8Array; order: [string, TensorRecord, number][] } {
  const entries = [...tensors.entries()];
  for (const [name, t] of entries) checkRecord(name, t);
  entries.sort(([a, ta], [b, tb]) => dtypeElementSize(tb.dtype) - dtypeElementSize(ta.dtype) || (a < b ? -1 : a > b ? 1 : 0));
  const header: [string, unknown][] = [];
  if (metadata !== undefined) {
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== "string") throw new ValueError(`writeSafetensors: metadata ${JSON.stringify(k)} must be a string, got ${typeof v}`);
    }
    if (Object.keys(metadata).length > 0) header.push([METADATA_KEY, metadata]);
  }
  const order: [string, TensorRecord, number][] = [];
  let offset = 0;
  for (const [name, t] of entries) {
    header.push([name, { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + t.data.length] }]);
    order.push([name, t, offset]);
    offset += t.data.length;
  }
  // Object.fromEntries defines own properties, so even a tensor named "__proto__" survives.
  const json = new TextEncoder().encode(JSON.stringify(Object.fromEntries(header)));
  const n = Math.ceil(json.length / 8) * 8;
  const prefix = new Uint8Array(8 + n).fill(0x20); // spaces are valid trailing JSON whitespace
  new DataView(prefix.buffer).setBigUint64(0, BigInt(n), true);
  prefix.set(json, 8);
  return { prefix, order };
}

/**
 * Writes `tensors` to `path` in safetensors format, atomically: the bytes go to a temporary
 * name in the same directory, are fsynced, then renamed over `path`. A crash leaves either the
 * old file or the new one, never a torn one. Tensors are written one at a time (no giant
 * buffer), so files larger than 2 GiB are fine.
 *
 * @example
 * await writeSafetensors("model.safetensors", {
 *   "wte.weight": { dtype: "F32", shape: [2, 3], data: new Uint8Array(new Float32Array(6).buffer) },
 * }, { format: "pt" });
 */
export async function writeSafetensors(
  path: string,
  tensors: Record<string, TensorRecord> | ReadonlyMap<string, TensorRecord>,
  metadata?: Record<string, string>,
): Promise<void> {
  const map = tensors instanceof Map ? tensors : new Map(Object.entries(tensors));
  const { prefix, order } = planLayout(map, metadata);
  const tmp = `${path}.tmp-${uniqueSuffix()}`;
  const fh = await open(tmp, "wx");
  let closed = false;
  try {
    await writeFully(fh, prefix, 0);
    for (const [, t, offset] of order) await writeFully(fh, t.data, prefix.length + offset);
    await fh.sync();
    closed = true;
    await fh.close();
    await rename(tmp, path);
  } catch (err) {
    if (!closed) await fh.close().catch(() => {});
    await unlink(tmp).catch(() => {});
    throw err;
  }
  await fsyncDir(dirname(path));
}

// ---------------------------------------------------------------------------------------------
// Reading

function describe(x: unknown): string {
  if (x === null) return "null";
  if (Array.isArray(x)) return "an array";
  return typeof x === "object" ? "an object" : `${typeof x} ${JSON.stringify(x)}`;
}

function isNonNegInt(x: unknown): x is number {
  return typeof x === "number" && Number.isSafeInteger(x) && x >= 0;
}

/**
 * Validates the parsed header against the data-section size. Every problem is a FormatError
 * naming the file, the tensor and what is wrong.
 */
function parseHeader(file: string, headerBytes: Uint8Array, dataBytes: number): { metadata: Record<string, string>; tensors: Map<string, SafetensorsTensorInfo> } {
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(headerBytes);
  } catch {
    throw new FormatError(file, "safetensors header is not valid UTF-8 (corrupted, or not a safetensors file)");
  }
  let root: unknown;
  try {
    root = JSON.parse(text);
  } catch (err) {
    throw new FormatError(file, `safetensors header is not valid JSON (${(err as Error).message}); the file is corrupted or not a safetensors file`);
  }
  if (typeof root !== "object" || root === null || Array.isArray(root)) {
    throw new FormatError(file, `safetensors header must be a JSON object, got ${describe(root)}`);
  }

  let metadata: Record<string, string> = {};
  const infos: [string, SafetensorsTensorInfo][] = [];
  for (const [name, entry] of Object.entries(root)) {
    if (name === METADATA_KEY) {
      if (typeof entry !== "object" || entry === null || Array.isArray(entry)) {
        throw new FormatError(file, `"__metadata__" must be an object of string -> string, got ${describe(entry)}`);
      }
      for (const [k, v] of Object.entries(entry)) {
        if (typeof v !== "string") throw new FormatError(file, `"__metadata__" must map strings to strings, but ${JSON.stringify(k)} is ${describe(v)}`);
      }
      metadata = Object.fromEntries(Object.entries(entry as Record<string, string>));
      continue;
    }
    const what = `tensor ${JSON.stringify(name)}`;
    if (typeof entry !== "object" || entry === null || Array.isArray(entry)) {
      throw new FormatError(file, `${what}: header entry must be an object with dtype, shape and data_offsets, got ${describe(entry)}`);
    }
    const { dtype, shape, data_offsets: offsets } = entry as Record<string, unknown>;
    if (!isSafetensorsDtype(dtype)) {
      throw new FormatError(file, `${what}: unknown dtype ${JSON.stringify(dtype)}; supported: ${SAFETENSORS_DTYPES.join(", ")}`);
    }
    if (!Array.isArray(shape) || !shape.every(isNonNegInt)) {
      throw new FormatError(file, `${what}: shape must be an array of non-negative integers, got ${JSON.stringify(shape)}`);
    }
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isNonNegInt) || offsets[0] > offsets[1]) {
      throw new FormatError(file, `${what}: data_offsets must be [begin, end] with 0 <= begin <= end, got ${JSON.stringify(offsets)}`);
    }
    const [begin, end] = offsets as [number, number];
    const numel = shapeNumel(shape);
    const want = numel < 0 ? -1 : numel * dtypeElementSize(dtype);
    if (end - begin !== want) {
      throw new FormatError(
        file,
        `${what}: data_offsets [${begin}, ${end}] span ${end - begin} bytes but ${dtype} with shape ${fmtShape(shape)} needs ` +
          `${want < 0 ? "more than 2^53" : want} bytes (dtype/shape agreement)`,
      );
    }
    if (end > dataBytes) {
      throw new FormatError(file, `${what}: data_offsets [${begin}, ${end}] are out of bounds of the ${dataBytes}-byte data section (file truncated?)`);
    }
    infos.push([name, { dtype, shape: [...shape], dataOffsets: [begin, end] }]);
  }

  // The tensors must tile [0, dataBytes) exactly. Duplicate JSON keys (JSON.parse keeps the last)
  // also surface here, as the dropped entry's bytes become a hole.
  infos.sort(([, a], [, b]) => a.dataOffsets[0] - b.dataOffsets[0] || a.dataOffsets[1] - b.dataOffsets[1]);
  let covered = 0;
  let prev = "";
  for (const [name, info] of infos) {
    const [begin, end] = info.dataOffsets;
    if (begin < covered) {
      throw new FormatError(file, `tensors ${JSON.stringify(prev)} and ${JSON.stringify(name)} overlap (${JSON.stringify(name)} starts at ${begin}, before ${covered})`);
    }
    if (begin > covered) {
      throw new FormatError(file, `bytes [${covered}, ${begin}) of the data section belong to no tensor (holes are not allowed by the safetensors spec)`);
    }
    if (end > begin) {
      covered = end;
      prev = name;
    }
  }
  if (covered !== dataBytes) {
    throw new FormatError(file, `bytes [${covered}, ${dataBytes}) at the end of the data section belong to no tensor (trailing data, or a damaged header)`);
  }
  return { metadata, tensors: new Map(infos) };
}

/**
 * Opens a safetensors file and validates its header, without reading any tensor data. Use it
 * for big files: `read(name)` fetches one tensor's bytes at a time. Call `close()` when done.
 * Throws FormatError (naming the file and the problem) for truncated or malformed files.
 *
 * @example
 * const f = await openSafetensors("model.safetensors");
 * try {
 *   for (const [name, info] of f.tensors) console.log(name, info.dtype, info.shape);
 *   const wte = await f.read("wte.weight"); // { dtype, shape, data }
 * } finally {
 *   await f.close();
 * }
 */
export async function openSafetensors(path: string): Promise<SafetensorsFile> {
  const fh: FileHandle = await open(path, "r");
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new FormatError(path, "not a regular file");
    const size = st.size;
    if (size < 8) throw new FormatError(path, `file is ${size} bytes, shorter than the 8-byte safetensors header length (truncated or not a safetensors file)`);
    const lenBytes = new Uint8Array(8);
    await readFully(fh, lenBytes, 0);
    const n = new DataView(lenBytes.buffer).getBigUint64(0, true);
    if (n > BigInt(SAFETENSORS_MAX_HEADER_BYTES)) {
      throw new FormatError(path, `header length ${n} exceeds the ${SAFETENSORS_MAX_HEADER_BYTES}-byte cap (corrupted, or not a safetensors file)`);
    }
    const headerLen = Number(n);
    if (8 + headerLen > size) {
      throw new FormatError(path, `header length ${headerLen} runs past the end of the ${size}-byte file (truncated?)`);
    }
    const headerBytes = new Uint8Array(headerLen);
    if ((await readFully(fh, headerBytes, 8)) < headerLen) throw new FormatError(path, "file ended while reading the header (truncated?)");
    const dataStart = 8 + headerLen;
    const { metadata, tensors } = parseHeader(path, headerBytes, size - dataStart);

    let closed = false;
    return {
      path,
      metadata,
      tensors,
      dataStart,
      async read(name: string): Promise<TensorRecord> {
        if (closed) throw new ValueError(`${path}: read(${JSON.stringify(name)}) after close()`);
        const info = tensors.get(name);
        if (info === undefined) {
          const some = [...tensors.keys()].slice(0, 8).join(", ");
          throw new ValueError(`${path}: no tensor named ${JSON.stringify(name)} (it has ${tensors.size}: ${some}${tensors.size > 8 ? ", ..." : ""})`);
        }
        const [begin, end] = info.dataOffsets;
        const data = new Uint8Array(end - begin);
        if ((await readFully(fh, data, dataStart + begin)) < data.length) {
          throw new FormatError(path, `file ended while reading tensor ${JSON.stringify(name)} (truncated after it was opened?)`);
        }
        return { dtype: info.dtype, shape: [...info.shape], data };
      },
      async close(): Promise<void> {
        if (closed) return;
        closed = true;
        await fh.close();
      },
    };
  } catch (err) {
    await fh.close();
    throw err;
  }
}

/**
 * Reads a whole safetensors file (or the tensors named in `options.names`) into memory. Each
 * tensor gets its own freshly allocated, aligned buffer. For files too big to hold at once, use
 * `openSafetensors()`.
 *
 * @example
 * const { metadata, tensors } = await readSafetensors("model.safetensors");
 * const w = tensors.get("wte.weight")!; // { dtype: "F32", shape: [50257, 768], data: Uint8Array }
 * const values = new Float32Array(w.data.buffer, w.data.byteOffset, w.data.length / 4);
 */
export async function readSafetensors(path: string, options: ReadSafetensorsOptions = {}): Promise<SafetensorsContents> {
  const f = await openSafetensors(path);
  try {
    const names = options.names ?? [...f.tensors.keys()];
    const tensors = new Map<string, TensorRecord>();
    for (const name of names) tensors.set(name, await f.read(name));
    return { metadata: f.metadata, tensors };
  } finally {
    await f.close();
  }
}
