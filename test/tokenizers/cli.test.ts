import { test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { Command } from "commander";
import { ValueError } from "../../src/core/errors.js";
import { register } from "../../src/cli/tokenizer.js";
import { loadTokenizer } from "../../src/tokenizers/index.js";
import { tempDir } from "./_helpers.js";

/** Runs `megalith <args>` in-process and returns what it printed (through commander's output). */
async function megalith(...args: string[]): Promise<string> {
  let out = "";
  const program = new Command().exitOverride().configureOutput({ writeOut: (s) => (out += s), writeErr: () => {} });
  register(program);
  await program.parseAsync(["node", "megalith", ...args]);
  return out;
}

test("`tokenizer encode` and `tokenizer decode` print GPT-2 ids and text", async () => {
  assert.equal(await megalith("tokenizer", "encode", "--text", "Hello world"), "15496 995\n");
  assert.equal(await megalith("tokenizer", "encode", "--text", "<|endoftext|>", "--allow-special"), "50256\n");
  const json = JSON.parse(await megalith("tokenizer", "encode", "--tokenizer", "gpt2", "--text", "Hello world", "--json"));
  assert.deepEqual(json, { tokenizer: "gpt2", count: 2, ids: [15496, 995], tokens: ["Hello", "Ġworld"] });
  assert.equal(await megalith("tokenizer", "decode", "--ids", "15496, 995"), "Hello world\n");
});

test("`tokenizer train` writes a tokenizer.json of the asked vocab size", async (t) => {
  const dir = tempDir(t);
  const input = join(dir, "in.txt");
  writeFileSync(input, "the cat sat on the mat. ".repeat(50) + "a dog, the dog, another dog!\n".repeat(30));
  const out = join(dir, "tok.json");
  const printed = await megalith("tokenizer", "train", "--vocab-size", "270", "--input", input, "--out", out, "--quiet");
  assert.match(printed, /wrote .*tok\.json: vocab 270/);
  const tok = loadTokenizer(out);
  assert.equal(tok.vocabSize, 270);
  assert.equal(tok.eotToken, 269);
  assert.equal(await megalith("tokenizer", "decode", "--tokenizer", out, "--ids", (await megalith("tokenizer", "encode", "--tokenizer", out, "--text", "the cat")).trim()), "the cat\n");
});

test("`tokenizer` commands reject bad flags with a ValueError", async () => {
  await assert.rejects(megalith("tokenizer", "train", "--vocab-size", "12", "--brown", "--out", "x.json"), (e: unknown) => e instanceof ValueError && /--vocab-size must be an integer >= 257/.test(e.message));
  await assert.rejects(megalith("tokenizer", "train", "--vocab-size", "300", "--out", "x.json"), /give --input FILES... and\/or --brown/);
  await assert.rejects(megalith("tokenizer", "encode"), /exactly one of --text or --file/);
  await assert.rejects(megalith("tokenizer", "decode", "--ids", "1 x"), /--ids must be an integer/);
});
