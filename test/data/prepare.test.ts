import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { FormatError, ValueError } from "../../src/core/errors.js";
import { isValDocument, prepareData, type PrepareOptions } from "../../src/data/prepare.js";
import { readMeta, type PreparedMeta, type Split } from "../../src/data/meta.js";
import { readShard } from "../../src/data/shards.js";
import { lastSafeCut, PieceSplitter } from "../../src/data/_text_sources.js";
import { byteTokenizer, EOT_TEXT, loadGpt2, makeDocs, rng, tempDir } from "./_helpers.js";

/** All tokens of a split, shards concatenated in order. */
function splitTokens(dir: string, meta: PreparedMeta, split: Split): number[] {
  const out: number[] = [];
  for (const s of meta.splits[split].shards) {
    const { header, tokens } = readShard(join(dir, s.file));
    assert.equal(header.tokenCount, s.tokens);
    assert.equal(header.dtype, meta.dtype);
    for (const x of tokens) out.push(x);
  }
  return out;
}

/** What a split should decode to: its documents, each preceded by the eot. */
function expected(docs: string[], split: Split, valFraction: number): string {
  return docs
    .filter((_, i) => isValDocument(i, valFraction) === (split === "val"))
    .map((d) => EOT_TEXT + d)
    .join("");
}

const quiet = { progress: false } satisfies Partial<PrepareOptions>;

test("`isValDocument()` puts round(n * fraction) of the first n documents in val, spread evenly", () => {
  for (const f of [0, 0.005, 0.01, 0.1, 0.25, 0.5]) {
    let val = 0;
    for (let i = 0; i < 2000; i++) {
      if (isValDocument(i, f)) val++;
      assert.equal(val, Math.floor((i + 1) * f + 0.5), `fraction ${f}, first ${i + 1} documents`);
    }
  }
  assert.equal(isValDocument(99, 0.005), true);
  assert.equal(isValDocument(98, 0.005), false);
});

test("`prepareData()` round-trips JSONL documents: decoded shards equal the documents, each after an eot", async (t) => {
  const dir = tempDir(t);
  const docs = makeDocs(300, 7);
  const file = join(dir, "corpus.jsonl");
  // Blank lines, CRLF endings and extra fields are all fine.
  writeFileSync(file, docs.map((d, i) => JSON.stringify({ id: i, text: d }) + (i % 3 === 0 ? "\r\n\n" : "\n")).join(""));
  const out = join(dir, "out");
  const tok = byteTokenizer();
  const meta = await prepareData({ ...quiet, tokenizer: tok, tokenizerSpec: "bytes-spec", inputs: [file], outDir: out, valFraction: 0.1, shardTokens: 1000 });

  assert.deepEqual(readMeta(out), meta);
  assert.equal(meta.dtype, "uint16");
  assert.deepEqual({ ...meta.tokenizer, fingerprint: "" }, { spec: "bytes-spec", name: "bytes", vocabSize: 257, eotToken: 256, fingerprint: "" });
  assert.equal(meta.splits.val.documents, 30);
  assert.equal(meta.splits.train.documents, 270);
  assert.deepEqual(meta.sources, [{ path: file, bytes: readFileSync(file).length, format: "jsonl" }]);
  // Small shards: many of them, all full but the last, named in order.
  const train = meta.splits.train.shards;
  assert.ok(train.length > 3);
  train.forEach((s, i) => {
    assert.equal(s.file, `train_${String(i).padStart(6, "0")}.bin`);
    if (i < train.length - 1) assert.equal(s.tokens, 1000);
  });
  for (const split of ["train", "val"] as const) {
    const toks = splitTokens(out, meta, split);
    assert.equal(toks.length, meta.splits[split].tokens);
    assert.equal(toks[0], tok.eotToken);
    assert.equal(tok.decode(toks), expected(docs, split, 0.1));
  }
  // Only the final names: no temp files or directories left behind.
  assert.deepEqual(readdirSync(dir).sort(), ["corpus.jsonl", "out"]);
  assert.ok(readdirSync(out).every((f) => /^(train|val)_\d{6}\.bin$|^meta\.json$/.test(f)));
});

test("`prepareData()` reads plain text as one document per file, or split at `docSeparator`", async (t) => {
  const dir = tempDir(t);
  const docs = makeDocs(40, 3);
  const a = join(dir, "a.txt");
  const b = join(dir, "b.md");
  writeFileSync(a, docs.slice(0, 20).join("\n\n"));
  writeFileSync(b, docs.slice(20).join("\n\n") + "\n\n");
  const tok = byteTokenizer();

  const whole = await prepareData({ ...quiet, tokenizer: tok, inputs: [a, b], outDir: join(dir, "whole"), valFraction: 0 });
  assert.equal(whole.splits.train.documents, 2);
  assert.equal(whole.docSeparator, null);
  assert.equal(tok.decode(splitTokens(join(dir, "whole"), whole, "train")), EOT_TEXT + readFileSync(a, "utf8") + EOT_TEXT + readFileSync(b, "utf8"));

  // Tiny pieces force every document through the chunked path and separators across chunk edges.
  const sep = await prepareData({
    ...quiet,
    tokenizer: tok,
    inputs: [a, b],
    outDir: join(dir, "sep"),
    valFraction: 0.25,
    docSeparator: "\n\n",
    pieceSizes: { pieceChars: 16, hardChars: 64 },
  });
  assert.equal(sep.splits.train.documents + sep.splits.val.documents, 40);
  assert.equal(sep.docSeparator, "\n\n");
  for (const split of ["train", "val"] as const) {
    assert.equal(tok.decode(splitTokens(join(dir, "sep"), sep, split)), expected(docs, split, 0.25));
  }
});

test("`prepareData()` streams a file larger than its read chunk with multi-byte characters across chunk edges", async (t) => {
  const dir = tempDir(t);
  // ~3 MB of 1-4 byte characters: 1 MiB read chunks split some characters.
  const r = rng(5);
  const alphabet = ["a", " ", "\n", "é", "日", "🙂", "x y", "\n\n"];
  const parts: string[] = [];
  for (let i = 0; i < 900_000; i++) parts.push(alphabet[Math.floor(r() * alphabet.length)]);
  const text = parts.join("");
  const file = join(dir, "big.txt");
  writeFileSync(file, text);
  const tok = byteTokenizer();
  const meta = await prepareData({ ...quiet, tokenizer: tok, inputs: [file], outDir: join(dir, "out"), valFraction: 0, format: "text" });
  const toks = splitTokens(join(dir, "out"), meta, "train");
  assert.equal(toks.length, Buffer.byteLength(text) + 1);
  assert.equal(tok.decode(toks), EOT_TEXT + text);
});

test("`prepareData()` writes uint32 shards for a vocabulary above 65536", async (t) => {
  const dir = tempDir(t);
  const docs = makeDocs(50, 11);
  const file = join(dir, "c.jsonl");
  writeFileSync(file, docs.map((text) => JSON.stringify({ text })).join("\n"));
  const tok = byteTokenizer(65500); // ids 65500..65755, eot 65756
  const meta = await prepareData({ ...quiet, tokenizer: tok, inputs: [file], outDir: join(dir, "out"), valFraction: 0.1 });
  assert.equal(meta.dtype, "uint32");
  const { tokens } = readShard(join(dir, "out", meta.splits.train.shards[0].file));
  assert.ok(tokens instanceof Uint32Array);
  assert.ok(Math.max(...tokens) > 65535);
  for (const split of ["train", "val"] as const) {
    assert.equal(tok.decode(splitTokens(join(dir, "out"), meta, split)), expected(docs, split, 0.1));
  }
});

test("`prepareData()` accepts in-memory document sources and skips empty documents", async (t) => {
  const dir = tempDir(t);
  const docs = ["first", "", "second doc", "third"];
  const tok = byteTokenizer();
  const meta = await prepareData({ ...quiet, tokenizer: tok, inputs: [{ name: "mem", documents: docs }], outDir: join(dir, "out"), valFraction: 0 });
  assert.equal(meta.splits.train.documents, 3);
  assert.deepEqual(meta.sources, [{ path: "mem", bytes: 0, format: "documents" }]);
  assert.equal(tok.decode(splitTokens(join(dir, "out"), meta, "train")), `${EOT_TEXT}first${EOT_TEXT}second doc${EOT_TEXT}third`);
});

test("`prepareData()` names file:line for malformed JSONL and leaves no output behind", async (t) => {
  const dir = tempDir(t);
  const tok = byteTokenizer();
  const cases: Array<[string, RegExp]> = [
    ['{"text": "ok"}\n{"text": "broken\n', /bad\.jsonl:2: invalid JSON/],
    ['{"text": "ok"}\n\n{"body": "x"}\n', /bad\.jsonl:3: missing the "text" field \(keys: body\)/],
    ['{"text": 5}\n', /bad\.jsonl:1: "text" must be a string, got number/],
    ['{"text": "a"}\n["text"]\n', /bad\.jsonl:2: expected a JSON object/],
  ];
  for (const [content, pattern] of cases) {
    const file = join(dir, "bad.jsonl");
    writeFileSync(file, content);
    const out = join(dir, "out");
    await assert.rejects(prepareData({ ...quiet, tokenizer: tok, inputs: [file], outDir: out }), (err: unknown) => {
      assert.ok(err instanceof FormatError, String(err));
      assert.match(err.message, pattern);
      assert.ok(err.file.startsWith(file + ":"));
      return true;
    });
    assert.equal(existsSync(out), false);
    assert.deepEqual(readdirSync(dir), ["bad.jsonl"], "the temporary directory is removed");
  }
});

test("`prepareData()` refuses to overwrite a non-empty output unless asked, and validates options", async (t) => {
  const dir = tempDir(t);
  const tok = byteTokenizer();
  const file = join(dir, "a.txt");
  writeFileSync(file, "hello world");
  const out = join(dir, "out");
  mkdirSync(out);
  writeFileSync(join(out, "keep.txt"), "x");
  await assert.rejects(prepareData({ ...quiet, tokenizer: tok, inputs: [file], outDir: out }), /already exists and is not empty; pass --overwrite/);
  const meta = await prepareData({ ...quiet, tokenizer: tok, inputs: [file], outDir: out, overwrite: true, valFraction: 0 });
  assert.deepEqual(readdirSync(out).sort(), ["meta.json", "train_000000.bin"]);
  assert.equal(meta.splits.val.shards.length, 0);

  await assert.rejects(prepareData({ ...quiet, tokenizer: tok, inputs: [join(dir, "nope.txt")], outDir: join(dir, "o2") }), /input file not found: .*nope\.txt/);
  await assert.rejects(prepareData({ ...quiet, tokenizer: tok, inputs: [file], outDir: join(dir, "o3"), valFraction: 1 }), ValueError);
  await assert.rejects(prepareData({ ...quiet, tokenizer: tok, inputs: [file], outDir: join(dir, "o4"), shardTokens: 0 }), /shardTokens/);
  await assert.rejects(prepareData({ ...quiet, tokenizer: tok, inputs: [], outDir: join(dir, "o5") }), /no inputs/);
});

test("`readMeta()` rejects a missing, malformed or inconsistent meta.json, naming the file", async (t) => {
  const dir = tempDir(t);
  const tok = byteTokenizer();
  const file = join(dir, "a.jsonl");
  writeFileSync(file, makeDocs(20).map((text) => JSON.stringify({ text })).join("\n"));
  const out = join(dir, "out");
  await prepareData({ ...quiet, tokenizer: tok, inputs: [file], outDir: out, valFraction: 0.1 });
  const metaPath = join(out, "meta.json");
  const good = JSON.parse(readFileSync(metaPath, "utf8"));

  const bad: Array<[string, string, RegExp]> = [
    ["not json", "{", /meta\.json: invalid JSON/],
    ["wrong format", JSON.stringify({ ...good, format: "other" }), /format is "other"/],
    ["future version", JSON.stringify({ ...good, version: 99 }), /version 99 is not supported/],
    ["bad dtype", JSON.stringify({ ...good, dtype: "int8" }), /dtype must be "uint16" or "uint32"/],
    ["eot out of vocab", JSON.stringify({ ...good, tokenizer: { ...good.tokenizer, eotToken: 300 } }), /eotToken must be an id below vocabSize/],
    [
      "shard sum mismatch",
      JSON.stringify({ ...good, splits: { ...good.splits, train: { ...good.splits.train, tokens: 1 } } }),
      /splits\.train\.tokens is 1 but its shards hold/,
    ],
    [
      "path in shard name",
      JSON.stringify({ ...good, splits: { ...good.splits, val: { ...good.splits.val, shards: [{ file: "../x.bin", tokens: good.splits.val.tokens }] } } }),
      /shards\[0\]\.file must be a plain file name/,
    ],
  ];
  for (const [what, content, pattern] of bad) {
    writeFileSync(metaPath, content);
    assert.throws(
      () => readMeta(out),
      (err: unknown) => err instanceof FormatError && err.file === metaPath && pattern.test(err.message),
      what,
    );
  }
  assert.throws(() => readMeta(dir), /meta\.json: missing; the directory is not a complete prepared dataset/);
});

/** GPT-2's pre-tokenizer regex: the tokenizer never merges across its matches. */
const GPT2_PRETOKENIZE = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;
const pretokens = (s: string): string[] => s.match(GPT2_PRETOKENIZE) ?? [];

test("`PieceSplitter` cuts only where GPT-2 pre-tokenization of the pieces equals that of the whole", () => {
  const r = rng(3);
  const atoms = ["word", " ", "  ", "\n", "\n\n", " \n", "\t", "42", "'s", "!!", "é", "🙂", "x"];
  for (let trial = 0; trial < 30; trial++) {
    let text = "";
    while (text.length < 3000) text += atoms[Math.floor(r() * atoms.length)];
    const splitter = new PieceSplitter({ pieceChars: 20 + trial * 7, hardChars: 1 << 20 });
    const pieces: string[] = [];
    for (let i = 0; i < text.length; i += 97) pieces.push(...splitter.push(text.slice(i, i + 97)));
    pieces.push(splitter.flush());
    assert.equal(pieces.join(""), text);
    assert.ok(pieces.length > 10, "the text was actually cut");
    assert.deepEqual(pieces.flatMap(pretokens), pretokens(text), `trial ${trial}`);
  }
  assert.equal(lastSafeCut("aaaa"), -1);
  assert.equal(lastSafeCut("ab cd"), 2);
  assert.equal(lastSafeCut("ab\ncd"), 3);
  assert.equal(lastSafeCut("ab \ncd"), -1);
});

test("`PieceSplitter` cuts text without safe points at hardChars, never inside a surrogate pair", () => {
  const text = "🙂".repeat(100); // 200 UTF-16 units, no spaces
  const splitter = new PieceSplitter({ pieceChars: 10, hardChars: 33 });
  const pieces = [...splitter.push(text), splitter.flush()];
  assert.equal(pieces.join(""), text);
  for (const p of pieces) assert.ok(p.length <= 33 && p.length % 2 === 0, `piece of ${p.length} units`);
});

test("`prepareData()` with the GPT-2 tokenizer matches encoding each document whole", async (t) => {
  const tok = await loadGpt2();
  if (tok === undefined) return t.skip("src/tokenizers/index.ts is not there yet");
  const dir = tempDir(t);
  const docs = makeDocs(30, 2, 400);
  const file = join(dir, "c.jsonl");
  writeFileSync(file, docs.map((text) => JSON.stringify({ text })).join("\n"));
  const meta = await prepareData({
    ...quiet,
    tokenizer: tok,
    tokenizerSpec: "gpt2",
    inputs: [file],
    outDir: join(dir, "out"),
    valFraction: 0,
    pieceSizes: { pieceChars: 64, hardChars: 1 << 20 },
  });
  assert.equal(meta.dtype, "uint16");
  assert.equal(meta.tokenizer.eotToken, 50256);
  const want = docs.flatMap((d) => [tok.eotToken, ...tok.encode(d)]);
  assert.deepEqual(splitTokens(join(dir, "out"), meta, "train"), want);
});

test("`megalith prepare` (register()) parses its flags into a prepared directory", async (t) => {
  const { Command } = await import("commander");
  const { register } = await import("../../src/cli/prepare.js");
  const dir = tempDir(t);
  const file = join(dir, "paras.txt");
  const docs = makeDocs(20, 4);
  writeFileSync(file, docs.join("\n\n"));
  const run = async (...args: string[]): Promise<void> => {
    const program = new Command().exitOverride().configureOutput({ writeErr: () => undefined });
    register(program);
    const write = process.stdout.write;
    process.stdout.write = (() => true) as typeof process.stdout.write; // keep the summary out of test output
    try {
      await program.parseAsync(["node", "megalith", "prepare", "--no-progress", ...args]);
    } finally {
      process.stdout.write = write;
    }
  };
  const out = join(dir, "out");
  await run("--tokenizer", "gpt2", "--input", file, "--out", out, "--doc-separator", "\\n\\n", "--val-fraction", "0.1", "--shard-tokens", "5000");
  const meta = readMeta(out);
  assert.equal(meta.tokenizer.spec, "gpt2");
  assert.equal(meta.docSeparator, "\n\n");
  assert.equal(meta.splits.train.documents + meta.splits.val.documents, 20);
  assert.equal(meta.splits.val.documents, 2);
  assert.equal(meta.shardTokens, 5000);

  await assert.rejects(run("--tokenizer", "gpt2", "--input", file, "--out", out), /already exists and is not empty; pass --overwrite/);
  await assert.rejects(run("--tokenizer", "gpt2", "--input", file, "--out", join(dir, "o2"), "--val-fraction", "lots"), /--val-fraction must be a number, got "lots"/);
  await assert.rejects(run("--tokenizer", "gpt2", "--input", file, "--out", join(dir, "o3"), "--shard-tokens", "1.5"), /--shard-tokens must be an integer/);
  await assert.rejects(run("--tokenizer", "gpt2", "--input", file, "--out", join(dir, "o4"), "--format", "csv"), /Allowed choices are auto, text, jsonl/);
});
