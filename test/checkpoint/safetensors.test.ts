import assert from "node:assert/strict";
import { open, readdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { test } from "node:test";
import { ValueError } from "../../src/core/errors.js";
import {
  bf16BytesToFloat32,
  dtypeElementSize,
  f16BytesToFloat32,
  openSafetensors,
  readSafetensors,
  SAFETENSORS_DTYPES,
  writeSafetensors,
  type SafetensorsDtype,
  type TensorRecord,
} from "../../src/checkpoint/index.js";
import { readFully, writeFully } from "../../src/checkpoint/_fs.js";
import { NO_NUMPY, randBytes, randInt, runPython, scratchDir } from "./_helpers.js";

const SHAPES: number[][] = [[], [0], [1], [7], [3, 5], [2, 0, 4], [2, 3, 4], [1, 1, 1, 9]];

function numel(shape: number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

function randomRecord(dtype: SafetensorsDtype, shape: number[]): TensorRecord {
  const data = randBytes(numel(shape) * dtypeElementSize(dtype));
  if (dtype === "BOOL") for (let i = 0; i < data.length; i++) data[i]! &= 1;
  return { dtype, shape, data };
}

/** Every dtype x every shape, plus one tensor of random length per dtype, under unique names. */
function randomTensors(): Record<string, TensorRecord> {
  const out: Record<string, TensorRecord> = {};
  for (const dtype of SAFETENSORS_DTYPES) {
    SHAPES.forEach((shape, i) => (out[`${dtype.toLowerCase()}.t${i}`] = randomRecord(dtype, shape)));
    out[`${dtype.toLowerCase()}.rand`] = randomRecord(dtype, [1 + randInt(50), 1 + randInt(5)]);
  }
  return out;
}

function headerOf(bytes: Uint8Array): { n: number; json: Record<string, any> } {
  const n = Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(0, true));
  return { n, json: JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n))) };
}

test("`writeSafetensors()` / `readSafetensors()` round-trip every dtype and shape, with metadata", async () => {
  const dir = scratchDir();
  const path = join(dir, "model.safetensors");
  const tensors = randomTensors();
  const metadata: Record<string, string> = { format: "pt", note: "ünïcödé ✓" };
  Object.defineProperty(metadata, "__proto__", { value: "not a prototype", enumerable: true });
  await writeSafetensors(path, tensors, metadata);

  const back = await readSafetensors(path);
  assert.deepEqual(back.metadata, metadata);
  assert.equal(back.tensors.size, Object.keys(tensors).length);
  for (const [name, t] of Object.entries(tensors)) {
    const r = back.tensors.get(name);
    assert.ok(r, `missing ${name}`);
    assert.equal(r.dtype, t.dtype, name);
    assert.deepEqual(r.shape, t.shape, name);
    assert.deepEqual(r.data, t.data, name);
  }
  // Only the final file is left behind: the temp file was renamed.
  assert.deepEqual(await readdir(dir), ["model.safetensors"]);
});

test("`writeSafetensors()` writes an 8-aligned header and naturally aligned tensors, deterministically", async () => {
  const dir = scratchDir();
  const tensors = randomTensors();
  const reversed = Object.fromEntries(Object.entries(tensors).reverse());
  await writeSafetensors(join(dir, "a.safetensors"), tensors, { k: "v" });
  await writeSafetensors(join(dir, "b.safetensors"), new Map(Object.entries(reversed)), { k: "v" });
  const a = await readFile(join(dir, "a.safetensors"));
  const b = await readFile(join(dir, "b.safetensors"));
  assert.ok(a.equals(b), "insertion order must not change the bytes");

  const { n, json } = headerOf(a);
  assert.equal(n % 8, 0);
  assert.ok(a.subarray(8, 8 + n).toString("latin1").trimEnd().endsWith("}"), "padding is trailing spaces");
  for (const [name, info] of Object.entries(json)) {
    if (name === "__metadata__") continue;
    assert.equal(info.data_offsets[0] % dtypeElementSize(info.dtype), 0, `${name} is aligned`);
  }
});

test("`writeSafetensors()` produces the exact bytes the safetensors spec describes", async () => {
  // Reference built by hand from the spec: u64 LE header length, compact JSON padded with spaces
  // to a multiple of 8, then the tensors back to back (widest dtype first, then by name).
  const a = new Float32Array([1.5, -2]);
  const b = new Uint8Array([1, 2, 3]);
  const c = new Int16Array([-1]);
  const json =
    '{"__metadata__":{"format":"pt"},' +
    '"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},' +
    '"c":{"dtype":"I16","shape":[],"data_offsets":[8,10]},' +
    '"b":{"dtype":"U8","shape":[3],"data_offsets":[10,13]}}';
  const padded = json + " ".repeat((8 - (json.length % 8)) % 8);
  const expected = Buffer.concat([
    (() => {
      const h = Buffer.alloc(8);
      h.writeBigUInt64LE(BigInt(padded.length));
      return h;
    })(),
    Buffer.from(padded, "utf8"),
    Buffer.from(a.buffer),
    Buffer.from(c.buffer),
    Buffer.from(b),
  ]);
  const path = join(scratchDir(), "ref.safetensors");
  await writeSafetensors(
    path,
    {
      b: { dtype: "U8", shape: [3], data: b },
      a: { dtype: "F32", shape: [2], data: new Uint8Array(a.buffer) },
      c: { dtype: "I16", shape: [], data: new Uint8Array(c.buffer) },
    },
    { format: "pt" },
  );
  assert.deepEqual(await readFile(path), expected);
});

test("`readSafetensors()` reads a hand-built file with an unpadded, spaced header in any key order", async () => {
  const path = join(scratchDir(), "hand.safetensors");
  const json = '{"z": {"data_offsets": [4, 6], "shape": [1, 1], "dtype": "BF16"}, "__metadata__": {}, "y": {"dtype": "I32", "shape": [1], "data_offsets": [0, 4]}}';
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  await writeFile(path, Buffer.concat([len, Buffer.from(json), Buffer.from([0xff, 0xff, 0xff, 0x7f, 0x80, 0x3f])]));
  const { metadata, tensors } = await readSafetensors(path);
  assert.deepEqual(metadata, {});
  assert.deepEqual([...tensors.keys()], ["y", "z"], "data-section order");
  const y = tensors.get("y")!;
  assert.equal(new DataView(y.data.buffer).getInt32(0, true), 2 ** 31 - 1);
  assert.deepEqual(bf16BytesToFloat32(tensors.get("z")!.data), new Float32Array([1]));
  assert.deepEqual(tensors.get("z")!.shape, [1, 1]);
});

test("`openSafetensors()` reads single tensors lazily and `readSafetensors()` honours names", async () => {
  const path = join(scratchDir(), "lazy.safetensors");
  const tensors = randomTensors();
  await writeSafetensors(path, tensors);
  const f = await openSafetensors(path);
  try {
    assert.equal(f.dataStart % 8, 0);
    assert.equal(f.tensors.size, Object.keys(tensors).length);
    const info = f.tensors.get("f32.t4")!;
    assert.deepEqual(info.shape, [3, 5]);
    assert.equal(info.dataOffsets[1] - info.dataOffsets[0], 60);
    const [x, y] = await Promise.all([f.read("f32.t4"), f.read("bf16.t6")]);
    assert.deepEqual(x, tensors["f32.t4"]);
    assert.deepEqual(y, tensors["bf16.t6"]);
    await assert.rejects(f.read("nope"), (e: Error) => e instanceof ValueError && e.message.includes('"nope"') && e.message.includes(path));
  } finally {
    await f.close();
  }
  await assert.rejects(f.read("f32.t4"), /after close/);

  const some = await readSafetensors(path, { names: ["i64.t2", "bool.t3"] });
  assert.deepEqual([...some.tensors.keys()], ["i64.t2", "bool.t3"]);
  assert.deepEqual(some.tensors.get("i64.t2"), tensors["i64.t2"]);
});

test("`writeSafetensors()` rejects records whose dtype, shape or byte length is wrong", async () => {
  const dir = scratchDir();
  const path = join(dir, "bad.safetensors");
  const cases: [Record<string, unknown>, RegExp][] = [
    [{ x: { dtype: "F32", shape: [2], data: new Uint8Array(7) } }, /"x".*needs 8 bytes but data has 7/],
    [{ x: { dtype: "F8", shape: [2], data: new Uint8Array(2) } }, /unknown dtype "F8"/],
    [{ x: { dtype: "U8", shape: [-1], data: new Uint8Array(0) } }, /shape \[-1\]/],
    [{ x: { dtype: "U8", shape: [1.5], data: new Uint8Array(0) } }, /shape \[1.5\]/],
    [{ __metadata__: { dtype: "U8", shape: [], data: new Uint8Array(1) } }, /invalid tensor name "__metadata__"/],
    [{ x: { dtype: "U8", shape: [1], data: [1] } }, /Uint8Array/],
  ];
  for (const [tensors, re] of cases) {
    await assert.rejects(writeSafetensors(path, tensors as Record<string, TensorRecord>), (e: Error) => e instanceof ValueError && re.test(e.message));
  }
  await assert.rejects(writeSafetensors(path, {}, { n: 1 as unknown as string }), /metadata "n" must be a string/);
  await assert.rejects(writeSafetensors(join(dir, "no/such/dir/x.safetensors"), {}), /ENOENT/);
  assert.deepEqual(await readdir(dir), [], "no temp files left behind");
});

test("`writeSafetensors()` replaces an existing file atomically", async () => {
  const path = join(scratchDir(), "m.safetensors");
  await writeSafetensors(path, { a: { dtype: "U8", shape: [1], data: new Uint8Array([1]) } });
  await writeSafetensors(path, { b: { dtype: "U8", shape: [2], data: new Uint8Array([2, 3]) } });
  const { tensors } = await readSafetensors(path);
  assert.deepEqual([...tensors.keys()], ["b"]);
});

test("`writeFully()` / `readFully()` move data in bounded chunks at arbitrary positions", async () => {
  const path = join(scratchDir(), "chunks.bin");
  const data = randBytes(1000 + randInt(1000));
  const fh = await open(path, "w+");
  try {
    await writeFully(fh, data, 13, 7);
    const back = new Uint8Array(data.length);
    assert.equal(await readFully(fh, back, 13, 5), data.length);
    assert.deepEqual(back, data);
    const past = new Uint8Array(100);
    assert.equal(await readFully(fh, past, 13 + data.length - 40, 3), 40, "short read at end of file");
  } finally {
    await fh.close();
  }
});

test("`openSafetensors()` reads tensors that lie beyond 4 GiB in a (sparse) file", async () => {
  // A 5 GiB U8 tensor followed by a small one: the header and the tail are real bytes, the rest
  // is a hole in a sparse file, so this costs no disk. It checks offsets past 2^32 are exact.
  const big = 5 * 2 ** 30;
  const tail = randBytes(24);
  const json = JSON.stringify({
    big: { dtype: "U8", shape: [big], data_offsets: [0, big] },
    tail: { dtype: "F64", shape: [3], data_offsets: [big, big + 24] },
  });
  const n = Math.ceil(json.length / 8) * 8;
  const head = Buffer.alloc(8 + n, 0x20);
  head.writeBigUInt64LE(BigInt(n));
  head.write(json, 8);
  const path = join(scratchDir(), "sparse.safetensors");
  const fh = await open(path, "w");
  try {
    await writeFully(fh, head, 0);
    await writeFully(fh, tail, 8 + n + big);
  } finally {
    await fh.close();
  }
  const f = await openSafetensors(path);
  try {
    assert.deepEqual(f.tensors.get("big")!.shape, [big]);
    assert.deepEqual((await f.read("tail")).data, tail);
  } finally {
    await f.close();
  }
});

// --- Independent cross-check with Python (json + struct + numpy; no safetensors package) ------

const PY_PARSER = String.raw`
import json, struct, sys
import numpy as np
NP = {'F64': '<f8', 'F32': '<f4', 'F16': '<f2', 'I64': '<i8', 'I32': '<i4', 'I16': '<i2', 'I8': 'i1', 'U8': 'u1', 'BOOL': '?'}

def dump(buf):
    (n,) = struct.unpack('<Q', buf[:8])
    header = json.loads(buf[8:8 + n].decode('utf-8'))
    meta = header.pop('__metadata__', {})
    data = buf[8 + n:]
    out = {}
    for name, info in header.items():
        b, e = info['data_offsets']
        raw = data[b:e]
        if info['dtype'] == 'BF16':
            arr = (np.frombuffer(raw, dtype='<u2').astype('<u4') << 16).view('<f4')
        else:
            arr = np.frombuffer(raw, dtype=NP[info['dtype']])
        arr = arr.reshape(info['shape'])
        flat = arr.reshape(-1)
        if arr.dtype.kind == 'f':
            vals = [repr(float(v)) for v in flat]
        else:
            vals = [str(int(v)) for v in flat]
        out[name] = {'dtype': info['dtype'], 'shape': list(arr.shape), 'values': vals}
    return {'metadata': meta, 'tensors': out}

def write(path):
    # Insertion order, metadata last, default json separators, no padding: legal but unlike ours.
    rng = np.random.default_rng()
    arrays = {
        'h.f32': ('F32', rng.standard_normal((3, 4)).astype('<f4')),
        'h.f64': ('F64', rng.standard_normal(5).astype('<f8')),
        'h.f16': ('F16', rng.standard_normal((2, 2)).astype('<f2')),
        'h.bf16': ('BF16', (rng.standard_normal(6).astype('<f4').view('<u4') >> 16).astype('<u2')),
        'h.i64': ('I64', rng.integers(-2**62, 2**62, size=(2, 3), dtype='<i8')),
        'h.i32': ('I32', rng.integers(-2**31, 2**31, size=4, dtype='<i4')),
        'h.i16': ('I16', rng.integers(-2**15, 2**15, size=(), dtype='<i2')),
        'h.i8': ('I8', rng.integers(-128, 128, size=(0, 3), dtype='i1')),
        'h.u8': ('U8', rng.integers(0, 256, size=7, dtype='u1')),
        'h.bool': ('BOOL', rng.integers(0, 2, size=5).astype('?')),
    }
    header, chunks, off = {}, [], 0
    for name, (dt, a) in arrays.items():
        raw = a.tobytes()
        header[name] = {'dtype': dt, 'shape': list(a.shape), 'data_offsets': [off, off + len(raw)]}
        chunks.append(raw)
        off += len(raw)
    header['__metadata__'] = {'format': 'np', 'who': 'python'}
    h = json.dumps(header).encode('utf-8')
    with open(path, 'wb') as f:
        f.write(struct.pack('<Q', len(h)) + h + b''.join(chunks))

if sys.argv[1] == 'write':
    write(sys.argv[2])
with open(sys.argv[2], 'rb') as f:
    print(json.dumps(dump(f.read())))
`;

/** Decodes raw little-endian bytes to the strings/numbers the Python parser prints. */
function decodeValues(t: TensorRecord): (string | number)[] {
  const dv = new DataView(t.data.buffer, t.data.byteOffset, t.data.byteLength);
  const n = numel(t.shape);
  const out: (string | number)[] = [];
  if (t.dtype === "BF16") return [...bf16BytesToFloat32(t.data)];
  if (t.dtype === "F16") return [...f16BytesToFloat32(t.data)];
  for (let i = 0; i < n; i++) {
    switch (t.dtype) {
      case "F64": out.push(dv.getFloat64(8 * i, true)); break;
      case "F32": out.push(dv.getFloat32(4 * i, true)); break;
      case "I64": out.push(dv.getBigInt64(8 * i, true).toString()); break;
      case "I32": out.push(String(dv.getInt32(4 * i, true))); break;
      case "I16": out.push(String(dv.getInt16(2 * i, true))); break;
      case "I8": out.push(String(dv.getInt8(i))); break;
      case "U8": case "BOOL": out.push(String(dv.getUint8(i))); break;
    }
  }
  return out;
}

function pyFloat(s: string): number {
  return s === "nan" ? NaN : s === "inf" ? Infinity : s === "-inf" ? -Infinity : Number(s);
}

function assertSameValues(name: string, ours: TensorRecord, py: { dtype: string; shape: number[]; values: string[] }): void {
  assert.equal(py.dtype, ours.dtype, name);
  assert.deepEqual(py.shape, ours.shape, name);
  const mine = decodeValues(ours);
  assert.equal(py.values.length, mine.length, name);
  for (let i = 0; i < mine.length; i++) {
    const m = mine[i]!;
    if (typeof m === "number") {
      const p = pyFloat(py.values[i]!);
      assert.ok(Object.is(m, p) || (Number.isNaN(m) && Number.isNaN(p)), `${name}[${i}]: ours ${m}, python ${py.values[i]}`);
    } else {
      assert.equal(m, py.values[i], `${name}[${i}]`);
    }
  }
}

test("a file from `writeSafetensors()` parses with an independent Python reader to the same values", { skip: NO_NUMPY }, async () => {
  const path = join(scratchDir(), "ours.safetensors");
  const tensors = randomTensors();
  await writeSafetensors(path, tensors, { format: "pt", step: "12" });
  const py = JSON.parse(runPython(PY_PARSER, ["read", path]).toString("utf8"));
  assert.deepEqual(py.metadata, { format: "pt", step: "12" });
  assert.deepEqual(Object.keys(py.tensors).sort(), Object.keys(tensors).sort());
  for (const [name, t] of Object.entries(tensors)) assertSameValues(name, t, py.tensors[name]);
});

test("`readSafetensors()` reads a file written by Python (json + struct + numpy) to the same values", { skip: NO_NUMPY }, async () => {
  const path = join(scratchDir(), "python.safetensors");
  const py = JSON.parse(runPython(PY_PARSER, ["write", path]).toString("utf8"));
  const { metadata, tensors } = await readSafetensors(path);
  assert.deepEqual(metadata, { format: "np", who: "python" });
  assert.deepEqual([...tensors.keys()].sort(), Object.keys(py.tensors).sort());
  for (const [name, t] of tensors) assertSameValues(name, t, py.tensors[name]);
});
