import assert from "node:assert/strict";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { test } from "node:test";
import { FormatError } from "../../src/core/errors.js";
import { openSafetensors, readSafetensors, writeSafetensors } from "../../src/checkpoint/index.js";
import { randBytes, randInt, scratchDir } from "./_helpers.js";

const dir = scratchDir("corrupt");
let counter = 0;

/** Writes `u64 length | header | data` (length defaults to the header's byte length). */
async function rawFile(header: string | Uint8Array, data: Uint8Array = new Uint8Array(0), length?: bigint): Promise<string> {
  const h = typeof header === "string" ? Buffer.from(header, "utf8") : Buffer.from(header);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(length ?? BigInt(h.length));
  const path = join(dir, `case-${counter++}.safetensors`);
  await writeFile(path, Buffer.concat([len, h, data]));
  return path;
}

/** Asserts reading `path` fails with a FormatError whose message names the file and matches `re`. */
async function assertRejects(path: string, re: RegExp): Promise<void> {
  await assert.rejects(readSafetensors(path), (e: Error) => {
    assert.ok(e instanceof FormatError, `expected FormatError, got ${e.name}: ${e.message}`);
    assert.ok(e.message.startsWith(`${path}: `), `message should name the file: ${e.message}`);
    assert.match(e.message, re);
    return true;
  });
}

const t = (shape: number[], begin: number, end: number, dtype = "F32") => ({ dtype, shape, data_offsets: [begin, end] });

test("`readSafetensors()` rejects files shorter than the 8-byte length prefix", async () => {
  for (const n of [0, 1, 7]) {
    const path = join(dir, `short-${n}.safetensors`);
    await writeFile(path, randBytes(n));
    await assertRejects(path, new RegExp(`file is ${n} bytes, shorter than the 8-byte`));
  }
});

test("`readSafetensors()` rejects a header length over the cap or past the end of the file", async () => {
  await assertRejects(await rawFile("{}", undefined, 2n ** 64n - 1n), /header length 18446744073709551615 exceeds the 100000000-byte cap/);
  await assertRejects(await rawFile("{}", undefined, 100_000_001n), /exceeds the 100000000-byte cap/);
  await assertRejects(await rawFile("{}", undefined, 3n), /header length 3 runs past the end of the 10-byte file/);
});

test("`readSafetensors()` rejects a header that is not UTF-8, not JSON, or not an object", async () => {
  await assertRejects(await rawFile(new Uint8Array([0x7b, 0xff, 0xfe, 0x7d])), /not valid UTF-8/);
  await assertRejects(await rawFile('{"a": '), /not valid JSON/);
  await assertRejects(await rawFile(""), /not valid JSON/);
  await assertRejects(await rawFile("[1, 2]"), /must be a JSON object, got an array/);
  await assertRejects(await rawFile("null"), /must be a JSON object, got null/);
  await assertRejects(await rawFile("42"), /must be a JSON object, got number 42/);
  await assertRejects(await rawFile('{"a": 3}'), /tensor "a": header entry must be an object/);
});

test("`readSafetensors()` rejects a bad `__metadata__`", async () => {
  await assertRejects(await rawFile('{"__metadata__": ["x"]}'), /"__metadata__" must be an object of string -> string, got an array/);
  await assertRejects(await rawFile('{"__metadata__": {"step": 5}}'), /"__metadata__" must map strings to strings, but "step" is number 5/);
  await assertRejects(await rawFile('{"__metadata__": {"a": null}}'), /"a" is null/);
});

test("`readSafetensors()` rejects unknown dtypes and malformed shapes", async () => {
  const four = new Uint8Array(4);
  await assertRejects(await rawFile(JSON.stringify({ a: t([1], 0, 4, "F8_E4M3") }), four), /tensor "a": unknown dtype "F8_E4M3"/);
  await assertRejects(await rawFile(JSON.stringify({ a: t([1], 0, 4, "f32") }), four), /unknown dtype "f32"/);
  await assertRejects(await rawFile(JSON.stringify({ a: { shape: [1], data_offsets: [0, 4] } }), four), /unknown dtype undefined/);
  for (const shape of ["[-1]", "[1.5]", '["1"]', "null", "[null]", "[9007199254740993]"]) {
    await assertRejects(await rawFile(`{"a": {"dtype": "F32", "shape": ${shape}, "data_offsets": [0, 4]}}`, four), /tensor "a": shape must be an array of non-negative integers/);
  }
});

test("`readSafetensors()` rejects data_offsets that are not [begin, end] with begin <= end", async () => {
  const eight = new Uint8Array(8);
  for (const off of ["[0]", "[0, 4, 8]", "[4, 0]", "[-4, 0]", "[0.5, 4.5]", '["0", "4"]', "null", "{}"]) {
    await assertRejects(await rawFile(`{"a": {"dtype": "F32", "shape": [1], "data_offsets": ${off}}}`, eight), /tensor "a": data_offsets must be \[begin, end\]/);
  }
});

test("`readSafetensors()` rejects byte ranges that disagree with dtype and shape", async () => {
  await assertRejects(await rawFile(JSON.stringify({ w: t([2, 3], 0, 20) }), new Uint8Array(20)), /tensor "w": data_offsets \[0, 20\] span 20 bytes but F32 with shape \[2, 3\] needs 24 bytes \(dtype\/shape agreement\)/);
  await assertRejects(await rawFile(JSON.stringify({ w: t([], 0, 0) })), /needs 4 bytes/);
  await assertRejects(await rawFile(JSON.stringify({ w: t([0], 0, 4) }), new Uint8Array(4)), /needs 0 bytes/);
  await assertRejects(await rawFile(JSON.stringify({ w: t([2 ** 30, 2 ** 30], 0, 4) }), new Uint8Array(4)), /needs 4611686018427387904 bytes|more than 2\^53/);
});

test("`readSafetensors()` rejects offsets out of bounds of the data section (truncated data)", async () => {
  await assertRejects(await rawFile(JSON.stringify({ a: t([2], 0, 8), b: t([2], 8, 16) }), new Uint8Array(12)), /tensor "b": data_offsets \[8, 16\] are out of bounds of the 12-byte data section/);
});

test("`readSafetensors()` rejects overlapping tensors, holes and trailing bytes", async () => {
  await assertRejects(await rawFile(JSON.stringify({ a: t([2], 0, 8), b: t([2], 4, 12) }), new Uint8Array(12)), /tensors "a" and "b" overlap/);
  await assertRejects(await rawFile(JSON.stringify({ a: t([2], 0, 8), b: t([2], 0, 8) }), new Uint8Array(8)), /overlap/);
  await assertRejects(await rawFile(JSON.stringify({ a: t([2], 0, 8), z: t([0], 4, 4) }), new Uint8Array(8)), /overlap/);
  await assertRejects(await rawFile(JSON.stringify({ a: t([1], 0, 4), b: t([1], 8, 12) }), new Uint8Array(12)), /bytes \[4, 8\) of the data section belong to no tensor/);
  await assertRejects(await rawFile(JSON.stringify({ b: t([1], 4, 8) }), new Uint8Array(8)), /bytes \[0, 4\) of the data section belong to no tensor/);
  await assertRejects(await rawFile(JSON.stringify({ a: t([1], 0, 4) }), new Uint8Array(9)), /bytes \[4, 9\) at the end of the data section belong to no tensor/);
  await assertRejects(await rawFile("{}", new Uint8Array(1)), /bytes \[0, 1\) at the end/);
  // Duplicate keys: JSON.parse keeps the last, and the first one's bytes show up as a hole.
  await assertRejects(await rawFile('{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}', new Uint8Array(8)), /bytes \[0, 4\)/);
});

test("`readSafetensors()` accepts zero-sized tensors anywhere on the tiling", async () => {
  const path = await rawFile(JSON.stringify({ e0: t([0], 0, 0), a: t([1], 0, 4), e1: t([3, 0], 4, 4), e2: t([0], 4, 4, "U8") }), new Uint8Array(4));
  const { tensors } = await readSafetensors(path);
  assert.deepEqual([...tensors.keys()].sort(), ["a", "e0", "e1", "e2"]);
});

test("`readSafetensors()` rejects every truncation of a valid file", async () => {
  const good = join(dir, "good.safetensors");
  await writeSafetensors(good, { a: { dtype: "F32", shape: [3, 3], data: randBytes(36) }, b: { dtype: "I8", shape: [5], data: randBytes(5) } }, { k: "v" });
  const bytes = await readFile(good);
  // Every cut inside the header and a few inside the data.
  const cuts = new Set<number>();
  for (let n = 0; n < bytes.length; n++) if (n < 8 + 200 || randInt(4) === 0) cuts.add(n);
  for (const n of cuts) {
    const path = join(dir, `trunc-${n}.safetensors`);
    await writeFile(path, bytes.subarray(0, n));
    await assertRejects(path, /shorter than|runs past the end|out of bounds|not valid/);
  }
});

test("`readSafetensors()` rejects random garbage with a FormatError, never a crash", async () => {
  for (let i = 0; i < 300; i++) {
    const body = randBytes(randInt(64));
    // Half the cases get a plausible header length, so the JSON/validation paths see garbage too.
    const len = i % 2 === 0 ? BigInt(randInt(body.length + 1)) : randBytes(8).reduce((acc, b) => (acc << 8n) | BigInt(b), 0n);
    const path = await rawFile(body, new Uint8Array(0), len);
    await assertRejects(path, /./);
  }
  // Garbage JSON objects with plausible keys.
  const junk = [-1, 0, 1, 2.5, "F32", null, [], {}, [0, 4], [4, 0], [[1]], "x".repeat(3)];
  const pick = () => junk[randInt(junk.length)];
  for (let i = 0; i < 300; i++) {
    const header = JSON.stringify({ a: { dtype: pick(), shape: pick(), data_offsets: pick() }, __metadata__: i % 3 ? undefined : pick() });
    const path = await rawFile(header, randBytes(randInt(8)));
    // A rare draw is a valid file (F32, shape [], [0, 4], 4 bytes); anything else must be a FormatError.
    await readSafetensors(path).then(
      () => {},
      (e: Error) => assert.ok(e instanceof FormatError && e.message.startsWith(path), `${e.name}: ${e.message}`),
    );
  }
});

test("`openSafetensors()` rejects a directory and a missing file", async () => {
  await assert.rejects(openSafetensors(dir), (e: Error) => e instanceof FormatError && /not a regular file/.test(e.message));
  await assert.rejects(openSafetensors(join(dir, "missing.safetensors")), /ENOENT/);
});
