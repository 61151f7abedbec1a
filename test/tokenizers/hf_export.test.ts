// The tokenizer files of an exported model directory in the Hugging Face layout:
// tokenizer.json + tokenizer_config.json + special_tokens_map.json load in Hugging Face's
// tokenizers.js (@huggingface/tokenizers) and give the same ids as ours, for GPT-2's vocabulary
// and for one trained here; a training run's final/ holds them with the run's block size.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { TestContext } from "node:test";
import { Tokenizer as HfTokenizer } from "@huggingface/tokenizers";
import { loadTokenizer, saveHfTokenizer, trainBpe, type Tokenizer } from "../../src/tokenizers/index.js";
import { Trainer } from "../../src/train/trainer.js";
import { tinyConfig, tinyData, corpus } from "../train/_helpers.js";

function tempDir(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), "megalith-hfexport-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Text that exercises the pre-tokenizer: contractions, digits, whitespace runs, non-Latin scripts, emoji, the special token. */
const TEXTS = [
  "Hello world! It's a test: don't, we'll, they've, I'm, you'd.",
  "  leading spaces,\ttabs\tand\n\nnewlines\r\n  and trailing   ",
  "Numbers 1234567890, 3.14159 and 1,000,000 dollars; x=y+2*z^3.",
  "Ünïcödé: naïve café, Straße, 日本語のテキスト, русский текст, العربية, 한국어 🙂🚀👍🏽",
  "code: const f = (a) => a ** 2; // comment <tag attr=\"v\"/> https://example.com/a?b=c&d=e",
  "the cat sat on a mat<|endoftext|>the dog ran to park",
  "",
  "a",
];

function hfLoad(dir: string): HfTokenizer {
  const json = JSON.parse(readFileSync(join(dir, "tokenizer.json"), "utf8"));
  const config = JSON.parse(readFileSync(join(dir, "tokenizer_config.json"), "utf8"));
  return new HfTokenizer(json, config);
}

function assertSameIds(ours: Tokenizer, dir: string): void {
  const hf = hfLoad(dir);
  for (const text of TEXTS) {
    const want = ours.encode(text, { allowedSpecial: "all" });
    assert.deepEqual(hf.encode(text).ids, want, `ids of ${JSON.stringify(text)}`);
    if (want.length) assert.equal(hf.decode(want), ours.decode(want), `decode of ${JSON.stringify(text)}`);
  }
}

test("GPT-2's tokenizer exported with `saveHfTokenizer` loads in @huggingface/tokenizers with the same ids", (t) => {
  const dir = tempDir(t);
  const gpt2 = loadTokenizer("gpt2");
  saveHfTokenizer(dir, gpt2, { modelMaxLength: 1024 });
  assertSameIds(gpt2, dir);
  const cfg = JSON.parse(readFileSync(join(dir, "tokenizer_config.json"), "utf8"));
  assert.equal(cfg.tokenizer_class, "GPT2Tokenizer");
  assert.equal(cfg.model_max_length, 1024);
  assert.equal(cfg.bos_token, "<|endoftext|>");
  assert.equal(cfg.eos_token, "<|endoftext|>");
  assert.equal(cfg.add_bos_token, false);
  assert.equal(cfg.added_tokens_decoder["50256"].content, "<|endoftext|>");
  assert.deepEqual(JSON.parse(readFileSync(join(dir, "special_tokens_map.json"), "utf8")), { bos_token: "<|endoftext|>", eos_token: "<|endoftext|>", unk_token: "<|endoftext|>" });
});

test("a vocabulary trained by `trainBpe` exports and loads in @huggingface/tokenizers with the same ids", async (t) => {
  const dir = tempDir(t);
  const tok = await trainBpe({ texts: [...corpus(60), ...TEXTS], vocabSize: 330, progress: false, name: "mine" });
  saveHfTokenizer(dir, tok, { modelMaxLength: 64 });
  assertSameIds(tok, dir);
});

test("`Trainer` writes final/ as a Hugging Face directory: tokenizer files, generation_config.json, the run's ids", async (t) => {
  const data = await tinyData();
  const out = tempDir(t);
  const tr = new Trainer(tinyConfig(out, data.dir, { train: { max_steps: 2 } }), { log: false });
  await tr.setup();
  await tr.run();
  const final = join(out, "final");
  const json = (f: string) => JSON.parse(readFileSync(join(final, f), "utf8"));
  const eot = tr.tokenizer!.eotToken;
  assert.equal(json("tokenizer_config.json").model_max_length, 32, "model_max_length = block size");
  assert.deepEqual(json("generation_config.json"), { _from_model_config: true, bos_token_id: eot, eos_token_id: eot });
  assert.equal(json("config.json").eos_token_id, eot);
  assert.equal(json("special_tokens_map.json").eos_token, "<|endoftext|>");
  assertSameIds(tr.tokenizer!, final);
});
