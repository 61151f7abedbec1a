import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Command } from "commander";
import { Tokenizer as HfTokenizer } from "@huggingface/tokenizers";
import { ValueError } from "../../src/core/errors.js";
import { register } from "../../src/cli/tokenizer.js";
import { loadTokenizer, WordPiece } from "../../src/tokenizers/index.js";
import { tempDir } from "./_helpers.js";

/** Runs `megalith <args>` in-process and returns what it printed (through commander's output). */
async function megalith(...args: string[]): Promise<string> {
  let out = "";
  const program = new Command().exitOverride().configureOutput({ writeOut: (s) => (out += s), writeErr: () => {} });
  register(program);
  await program.parseAsync(["node", "megalith", ...args]);
  return out;
}

test("`tokenizer train --type wordpiece` writes a tokenizer.json and vocab.txt that load here and in tokenizers.js", async (t) => {
  const dir = tempDir(t);
  const input = join(dir, "in.txt");
  writeFileSync(input, "The cat sat on the mat. ".repeat(40) + "A dog, the dog, another dog!\n".repeat(30) + "Café naïve résumé.\n".repeat(5));
  const out = join(dir, "tok.json");
  const printed = await megalith("tokenizer", "train", "--type", "wordpiece", "--vocab-size", "90", "--input", input, "--out", out, "--quiet");
  assert.match(printed, /wrote .*tok\.json and .*tok\.vocab\.txt: vocab \d+.*\[UNK\] = 1, \[CLS\] = 2, \[SEP\] = 3, \[MASK\] = 4/);
  const tok = loadTokenizer(out);
  assert.ok(tok instanceof WordPiece);
  assert.ok(tok.vocabSize <= 90);
  const text = "the dog sat on a cafe mat!";
  const ids = tok.encode(text);
  assert.ok(!ids.includes(tok.unk));
  const hf = new HfTokenizer(JSON.parse(readFileSync(out, "utf8")), {});
  assert.deepEqual(hf.encode(text, { add_special_tokens: false }).ids, ids);
  assert.equal(readFileSync(join(dir, "tok.vocab.txt"), "utf8").split("\n").length, tok.vocabSize + 1);
  // encode / decode work with it, and with bert-base-uncased.
  assert.equal(await megalith("tokenizer", "encode", "--tokenizer", out, "--text", text), `${ids.join(" ")}\n`);
  assert.equal(await megalith("tokenizer", "decode", "--tokenizer", out, "--ids", ids.join(" ")), "the dog sat on a cafe mat!\n");
  assert.equal(await megalith("tokenizer", "encode", "--tokenizer", "bert-base-uncased", "--text", "Hello [MASK]", "--allow-special"), "7592 103\n");
  // Named tokenizer.json, its vocab.txt is vocab.txt in the same directory (Hugging Face's layout).
  await megalith("tokenizer", "train", "--type", "wordpiece", "--vocab-size", "60", "--cased", "--input", input, "--out", join(dir, "tokenizer.json"), "--quiet");
  assert.ok(existsSync(join(dir, "vocab.txt")));
  const cased = loadTokenizer(dir) as WordPiece; // tokenizer.json wins over vocab.txt
  assert.equal(cased.model.normalizer?.lowercase, false);
});

test("`tokenizer train` checks --type and the flags that belong to each type", async () => {
  await assert.rejects(megalith("tokenizer", "train", "--type", "unigram", "--vocab-size", "300", "--brown", "--out", "x.json"), (e: unknown) => e instanceof ValueError && /--type must be bpe or wordpiece/.test(e.message));
  await assert.rejects(megalith("tokenizer", "train", "--vocab-size", "100", "--brown", "--out", "x.json"), /--vocab-size must be an integer >= 257 for --type bpe/);
  await assert.rejects(megalith("tokenizer", "train", "--vocab-size", "300", "--cased", "--brown", "--out", "x.json"), /apply to --type wordpiece only/);
  await assert.rejects(megalith("tokenizer", "train", "--type", "wordpiece", "--vocab-size", "300", "--out", "x.json"), /give --input FILES... and\/or --brown/);
});
