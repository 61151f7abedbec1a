// Invalid UTF-8 in prepare's input (Latin-1 text, random bytes): replaced with U+FFFD as any
// decoder does, but counted and reported per file; `strictUtf8` / --strict-utf8 refuses the
// file instead, naming the byte offset.
import { test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { prepareData } from "../../src/data/prepare.js";
import { Utf8Checker } from "../../src/data/_utf8.js";
import { FormatError } from "../../src/core/errors.js";
import { byteTokenizer, rng, tempDir } from "./_helpers.js";

test("`Utf8Checker` counts the bytes a decoder replaces, across chunk boundaries, on random bytes", () => {
  const r = rng(11);
  for (let trial = 0; trial < 2000; trial++) {
    const n = 1 + Math.floor(r() * 48);
    const b = Buffer.alloc(n);
    // Half random bytes, half pieces of valid and almost-valid sequences.
    const pieces = [0x61, 0xc3, 0xa9, 0xe2, 0x82, 0xac, 0xf0, 0x9f, 0x99, 0x82, 0xed, 0xa0, 0x80, 0xf4, 0x90, 0xc0];
    for (let i = 0; i < n; i++) b[i] = r() < 0.5 ? Math.floor(r() * 256) : pieces[Math.floor(r() * pieces.length)]!;
    if (b.includes(Buffer.from([0xef, 0xbf, 0xbd]))) continue; // a literal U+FFFD would blur the reference
    const decoded = new TextDecoder().decode(b);
    const want = n - Buffer.byteLength(decoded.replace(/\uFFFD/g, ""), "utf8");
    const u = new Utf8Checker("x");
    for (let at = 0; at < n;) {
      const k = 1 + Math.floor(r() * 5);
      u.push(b.subarray(at, at + k));
      at += k;
    }
    u.end();
    assert.equal(u.invalidBytes, want, `bytes ${b.toString("hex")}`);
  }
});

test("`prepareData` reports invalid UTF-8 per file and still prepares it", async (t) => {
  const dir = tempDir(t);
  const latin1 = join(dir, "latin1.txt"), jsonl = join(dir, "docs.jsonl"), clean = join(dir, "clean.txt");
  writeFileSync(latin1, Buffer.from("caf\xe9 cr\xe8me br\xfbl\xe9e\n", "latin1"));  // 4 lone Latin-1 bytes
  writeFileSync(jsonl, Buffer.concat([Buffer.from('{"text": "ok"}\n{"text": "bad '), Buffer.from([0xff, 0xfe]), Buffer.from('"}\n')]));
  writeFileSync(clean, "naïve café 🙂\n");
  const reports: Array<[string, number]> = [];
  const meta = await prepareData({
    tokenizer: byteTokenizer(), inputs: [latin1, jsonl, clean], outDir: join(dir, "out"), valFraction: 0, progress: false,
    onInvalidUtf8: (file, bytes) => reports.push([file, bytes]),
  });
  assert.deepEqual(reports, [[latin1, 4], [jsonl, 2]]);
  assert.equal(meta.splits.train.documents, 4);
});

test("`prepareData` with strictUtf8 refuses the file, naming the byte offset, and leaves no output", async (t) => {
  const dir = tempDir(t);
  const file = join(dir, "mixed.txt");
  writeFileSync(file, Buffer.concat([Buffer.from("fine text, then "), Buffer.from([0xe9]), Buffer.from(" Latin-1")]));
  await assert.rejects(
    prepareData({ tokenizer: byteTokenizer(), inputs: [file], outDir: join(dir, "out"), progress: false, strictUtf8: true }),
    (e: unknown) => e instanceof FormatError && e.file === file && /invalid UTF-8 at byte offset 16 \(byte 0xe9\).*--strict-utf8/.test(e.message),
  );
  const { existsSync } = await import("node:fs");
  assert.equal(existsSync(join(dir, "out")), false);
  // A character cut off by the end of the file is named as such.
  writeFileSync(file, Buffer.concat([Buffer.from("ends in "), Buffer.from([0xe2, 0x82])]));
  await assert.rejects(prepareData({ tokenizer: byteTokenizer(), inputs: [file], outDir: join(dir, "out"), progress: false, strictUtf8: true }),
    /invalid UTF-8 at byte offset 8 \(a multi-byte character cut off by the end of the file\)/);
});

test("`megalith prepare` warns with the count, and --strict-utf8 refuses", async (t) => {
  const { Command } = await import("commander");
  const { register } = await import("../../src/cli/prepare.js");
  const dir = tempDir(t);
  const file = join(dir, "random.bin.txt");
  const r = rng(3);
  writeFileSync(file, Buffer.from(Array.from({ length: 4000 }, () => Math.floor(r() * 256))));
  const err: string[] = [];
  const run = async (...args: string[]): Promise<void> => {
    const program = new Command().exitOverride().configureOutput({ writeErr: () => undefined });
    register(program);
    const out = process.stdout.write, errw = process.stderr.write;
    process.stdout.write = (() => true) as typeof process.stdout.write;
    process.stderr.write = ((s: string) => (err.push(String(s)), true)) as typeof process.stderr.write;
    try {
      await program.parseAsync(["node", "megalith", "prepare", "--no-progress", "--tokenizer", "gpt2", "--input", file, ...args]);
    } finally {
      process.stdout.write = out;
      process.stderr.write = errw;
    }
  };
  await run("--out", join(dir, "a"));
  const line = err.find((l) => l.includes("invalid UTF-8"));
  assert.ok(line, err.join(""));
  assert.match(line, /^megalith: warning: .*random\.bin\.txt: [\d,]+ byte\(s\) of invalid UTF-8 were replaced with U\+FFFD .*pass --strict-utf8 to refuse such input\n$/);
  const n = Number(/: ([\d,]+) byte/.exec(line)![1]!.replace(/,/g, ""));
  assert.ok(n > 1000 && n <= 4000, `${n} bytes`);
  await assert.rejects(run("--out", join(dir, "b"), "--strict-utf8"), /invalid UTF-8 at byte offset \d+/);
});
