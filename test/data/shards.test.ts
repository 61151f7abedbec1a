import { test } from "node:test";
import assert from "node:assert/strict";
import { readdirSync, readFileSync, statSync, truncateSync, writeFileSync, appendFileSync } from "node:fs";
import { join } from "node:path";
import { FormatError, ValueError } from "../../src/core/errors.js";
import {
  SHARD_HEADER_BYTES,
  ShardReader,
  ShardWriter,
  readShard,
  readShardHeader,
  tokenDtypeFor,
} from "../../src/data/shards.js";
import { tempDir } from "./_helpers.js";

async function writeShard(path: string, tokens: number[], dtype: "uint16" | "uint32", eotToken = 0, bufferTokens = 7): Promise<void> {
  const w = await ShardWriter.create(path, { dtype, eotToken, bufferTokens });
  // Several appends of odd sizes, so buffer flushes land mid-append.
  for (let i = 0; i < tokens.length; i += 5) await w.append(tokens.slice(i, i + 5));
  const res = await w.close();
  assert.equal(res.tokenCount, tokens.length);
}

test("`tokenDtypeFor()` picks uint16 up to 65536 ids and uint32 above", () => {
  assert.equal(tokenDtypeFor(257), "uint16");
  assert.equal(tokenDtypeFor(50257), "uint16");
  assert.equal(tokenDtypeFor(65536), "uint16");
  assert.equal(tokenDtypeFor(65537), "uint32");
  assert.throws(() => tokenDtypeFor(0), ValueError);
});

test("`ShardWriter` and `readShard()` round-trip uint16 and uint32 tokens with the documented header", async (t) => {
  const dir = tempDir(t);
  const small = Array.from({ length: 100 }, (_, i) => (i * 977) % 65536);
  const big = Array.from({ length: 100 }, (_, i) => 65536 + i * 40_000_000);
  await writeShard(join(dir, "a.bin"), small, "uint16", 50256);
  await writeShard(join(dir, "b.bin"), big, "uint32", 100_000);

  const a = readShard(join(dir, "a.bin"));
  assert.deepEqual(a.header, { version: 1, dtype: "uint16", tokenCount: 100, eotToken: 50256 });
  assert.ok(a.tokens instanceof Uint16Array);
  assert.deepEqual(Array.from(a.tokens), small);
  const b = readShard(join(dir, "b.bin"));
  assert.equal(b.header.dtype, "uint32");
  assert.ok(b.tokens instanceof Uint32Array);
  assert.deepEqual(Array.from(b.tokens), big);

  // The header layout is the documented one, byte for byte.
  const raw = readFileSync(join(dir, "a.bin"));
  assert.equal(raw.length, SHARD_HEADER_BYTES + 200);
  assert.equal(raw.subarray(0, 8).toString("latin1"), "MGLTOKS\0");
  assert.equal(raw.readUInt32LE(8), 1);
  assert.equal(raw.readUInt32LE(12), 1);
  assert.equal(raw.readBigUInt64LE(16), 100n);
  assert.equal(raw.readUInt32LE(24), 50256);
  assert.ok(raw.subarray(28, 64).every((x) => x === 0));
  assert.equal(raw.readUInt16LE(64 + 2 * 7), small[7]);
});

test("`ShardReader.read()` returns any window and rejects reads past the end", async (t) => {
  const dir = tempDir(t);
  const toks = Array.from({ length: 50 }, (_, i) => i);
  await writeShard(join(dir, "s.bin"), toks, "uint16");
  const r = new ShardReader(join(dir, "s.bin"));
  t.after(() => r.close());
  assert.deepEqual(Array.from(r.read(10, 5)), [10, 11, 12, 13, 14]);
  assert.deepEqual(Array.from(r.read(45, 5)), [45, 46, 47, 48, 49]);
  assert.throws(() => r.read(46, 5), /outside .* holds 50 tokens/);
});

test("`ShardWriter` writes to a temporary name and renames on close; abort leaves nothing", async (t) => {
  const dir = tempDir(t);
  const path = join(dir, "train_000000.bin");
  const w = await ShardWriter.create(path, { dtype: "uint16", eotToken: 1 });
  await w.append([1, 2, 3]);
  assert.deepEqual(readdirSync(dir).filter((f) => f === "train_000000.bin"), []);
  assert.equal(readdirSync(dir).length, 1);
  assert.match(readdirSync(dir)[0], /^train_000000\.bin\.tmp-/);
  await w.close();
  assert.deepEqual(readdirSync(dir), ["train_000000.bin"]);

  const w2 = await ShardWriter.create(join(dir, "x.bin"), { dtype: "uint16", eotToken: 1 });
  await w2.append([5]);
  await w2.abort();
  assert.deepEqual(readdirSync(dir), ["train_000000.bin"]);
});

test("`ShardWriter.append()` rejects ids that do not fit the dtype or the vocabulary", async (t) => {
  const dir = tempDir(t);
  const w = await ShardWriter.create(join(dir, "a.bin"), { dtype: "uint16", eotToken: 0 });
  await assert.rejects(w.append([1, 70000]), /token id 70000 at index 1 .*\[0, 65535\]/);
  await assert.rejects(w.append([-1]), ValueError);
  await assert.rejects(w.append([1.5]), ValueError);
  await w.abort();
  const v = await ShardWriter.create(join(dir, "b.bin"), { dtype: "uint16", eotToken: 0, vocabSize: 257 });
  await assert.rejects(v.append([257]), /token id 257 .*\[0, 256\]/);
  await v.abort();
  await assert.rejects(ShardWriter.create(join(dir, "c.bin"), { dtype: "uint16", eotToken: 70000 }), /eotToken 70000/);
});

test("`readShardHeader()` names the file, expected and actual size for a truncated shard", async (t) => {
  const dir = tempDir(t);
  const path = join(dir, "train_000003.bin");
  await writeShard(path, Array.from({ length: 100 }, (_, i) => i), "uint16");
  truncateSync(path, SHARD_HEADER_BYTES + 150);
  assert.throws(
    () => readShardHeader(path),
    (err: unknown) => {
      assert.ok(err instanceof FormatError);
      assert.equal(err.file, path);
      assert.match(err.message, /train_000003\.bin: file is 214 bytes .* 100 uint16 tokens = 264 bytes \(truncated\)/);
      return true;
    },
  );
  truncateSync(path, 10);
  assert.throws(() => readShardHeader(path), /shorter than the 64-byte shard header/);
  assert.throws(() => new ShardReader(path), FormatError);
});

test("`readShardHeader()` rejects trailing data, wrong magic, unknown version and dtype", async (t) => {
  const dir = tempDir(t);
  const good = join(dir, "good.bin");
  await writeShard(good, [1, 2, 3, 4], "uint16");
  const bytes = readFileSync(good);

  const padded = join(dir, "padded.bin");
  writeFileSync(padded, bytes);
  appendFileSync(padded, Buffer.alloc(2));
  assert.throws(() => readShardHeader(padded), /padded\.bin: file is 74 bytes .* = 72 bytes \(trailing data\)/);

  const variants: Array<[string, (b: Buffer) => void, RegExp]> = [
    ["magic.bin", (b) => b.write("NOTTOKS\0", 0, "latin1"), /magic\.bin: not a Megalith token shard: magic is "NOTTOKS\\u0000"/],
    ["version.bin", (b) => b.writeUInt32LE(7, 8), /version\.bin: shard format version 7 is not supported/],
    ["dtype.bin", (b) => b.writeUInt32LE(9, 12), /dtype\.bin: unknown token dtype code 9/],
  ];
  for (const [name, mutate, pattern] of variants) {
    const b = Buffer.from(bytes);
    mutate(b);
    writeFileSync(join(dir, name), b);
    assert.throws(() => readShardHeader(join(dir, name)), (err: unknown) => err instanceof FormatError && pattern.test(err.message));
  }
  assert.equal(statSync(good).size, 72);
});
