import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Tokenizer as HfTokenizer } from "@huggingface/tokenizers";
import { FormatError, ValueError } from "../../src/core/errors.js";
import {
  bertNormalize,
  bertNormalizer,
  bertPreTokenize,
  bertWordPieceModel,
  loadTokenizer,
  saveHfTokenizer,
  trainWordPiece,
  WordPiece,
} from "../../src/tokenizers/index.js";
import { brownCorpusDocuments } from "../../src/data/brown.js";
import { randomText, rng, tempDir } from "./_helpers.js";

const UNCASED = bertNormalizer(true);
const CASED = bertNormalizer(false);

/** A small WordPiece over `tokens` (ids in order), BERT's five special tokens first. */
function tiny(tokens: string[], lowercase = true): WordPiece {
  const vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ...tokens];
  return new WordPiece(bertWordPieceModel(new Map(vocab.map((t, i) => [t, i])), { lowercase }), { name: "tiny" });
}

test("`bertNormalize()` cleans, spaces out CJK, strips accents and lower-cases per character", () => {
  assert.equal(bertNormalize("a\u0000b\u0001c\ufffdd\u200be\u00adf", UNCASED), "abcdef", "NUL, controls, U+FFFD and format characters are dropped");
  assert.equal(bertNormalize("a\tb\nc\r\nd\u00a0e\u3000f\u2028g", UNCASED), "a b c  d e f g", "whitespace becomes spaces, one each");
  assert.equal(bertNormalize("x中文y", UNCASED), "x 中  文 y");
  assert.equal(bertNormalize("\u{20000}", UNCASED), " \u{20000} ", "CJK outside the BMP too, as HF's Rust code");
  assert.equal(bertNormalize("Café NAÏVE Ångström \u212b", UNCASED), "cafe naive angstrom a");
  assert.equal(bertNormalize("ΣΑΣ", UNCASED), "σασ", "per character: no final sigma, as Rust's char::to_lowercase");
  assert.equal(bertNormalize("Café NAÏVE", CASED), "Café NAÏVE", "cased keeps accents (strip_accents defaults to lowercase)");
  assert.equal(bertNormalize("Café", { ...CASED, stripAccents: true }), "Cafe");
  assert.equal(bertNormalize("Café", { ...UNCASED, stripAccents: false }), "café");
  const off = { cleanText: false, handleChineseChars: false, stripAccents: false, lowercase: false };
  assert.equal(bertNormalize("A\u0000\t中", off), "A\u0000\t中");
  // Random text: normalizing is idempotent and leaves no control character or capital behind.
  const next = rng(3);
  for (let i = 0; i < 200; i++) {
    const s = randomText(next, 10, ["A", "é", "\u0000", "\t", "中", "Ω", "\u0301", "\ud800", " ", "x", "\u200d", "👍"]);
    const n = bertNormalize(s, UNCASED);
    assert.equal(bertNormalize(n, UNCASED).replace(/ /g, ""), n.replace(/ /g, ""));
    assert.doesNotMatch(n, /[\p{Cc}\p{Cf}\p{Cs}\p{Lu}\p{Mn}]/u, JSON.stringify(s));
  }
});

test("`bertPreTokenize()` splits on whitespace and isolates every punctuation character", () => {
  assert.deepEqual(bertPreTokenize("Hello, world!"), ["Hello", ",", "world", "!"]);
  assert.deepEqual(bertPreTokenize("$5+3=8 ^_^ a|b ~c `d`"), ["$", "5", "+", "3", "=", "8", "^", "_", "^", "a", "|", "b", "~", "c", "`", "d", "`"], "all ASCII symbols count");
  assert.deepEqual(bertPreTokenize("«a» „b“ c—d 、e。"), ["«", "a", "»", "„", "b", "“", "c", "—", "d", "、", "e", "。"], "Unicode P* counts");
  assert.deepEqual(bertPreTokenize("a😀b ©2024 x²"), ["a😀b", "©2024", "x²"], "symbols that are not P* stay inside words");
  assert.deepEqual(bertPreTokenize("  a \t\n b\u0085c\u3000d  "), ["a", "b", "c", "d"], "Unicode White_Space, U+0085 included");
  assert.deepEqual(bertPreTokenize("a\ufeffb"), ["a\ufeffb"], "U+FEFF is not whitespace (it is dropped by clean_text instead)");
  assert.deepEqual(bertPreTokenize(""), []);
});

test("`WordPiece.encode()` takes the longest piece first, continues with ##, and gives [UNK] for a word it cannot cover", () => {
  const tok = tiny(["un", "una", "##ff", "##ffa", "##able", "##ble", "##a", "a", "b", "##b", "😀", "##😀", "!", "hello"]);
  const id = (t: string) => tok.tokenToId(t)!;
  assert.deepEqual(tok.encode("unaffable"), [id("una"), id("##ffa"), id("##ble")]);
  assert.deepEqual(tok.encode("UnAffable!"), [id("una"), id("##ffa"), id("##ble"), id("!")]);
  assert.deepEqual(tok.encode("unaffablex hello"), [tok.unk, id("hello")], "one missing piece makes the whole word [UNK]");
  assert.deepEqual(tok.encode("a😀😀b"), [id("a"), id("##😀"), id("##😀"), id("##b")], "surrogate pairs are never split");
  assert.deepEqual(tok.encode("a".repeat(100)), new Array(100).fill(0).map((_, i) => (i === 0 ? id("a") : id("##a"))));
  assert.deepEqual(tok.encode("a".repeat(101)), [tok.unk], "more than 100 characters is [UNK]");
  assert.deepEqual(tok.encode("😀".repeat(100)).length, 100, "the limit counts code points, not UTF-16 units");
  assert.deepEqual(tok.encode(""), []);
  // A tiny cache (evicted constantly) gives the same ids.
  const small = new WordPiece(tok.model, { cacheSize: 2 });
  const next = rng(7);
  for (let i = 0; i < 100; i++) {
    const s = randomText(next, 20, ["un", "a", "ffa", "ble", " ", "!", "😀", "b", "x", "hello", "UN"]);
    assert.deepEqual(small.encode(s), tok.encode(s), JSON.stringify(s));
  }
});

test("`WordPiece.encode()` encodes allowed special tokens as their ids and refuses disallowed ones", () => {
  const bert = loadTokenizer("bert-base-uncased");
  const text = "the [MASK] sat[SEP]";
  assert.deepEqual(bert.encode(text, { allowedSpecial: "all" }), [1996, 103, 2938, 102]);
  assert.deepEqual(bert.encode(text, { allowedSpecial: ["[MASK]"] }), [1996, 103, 2938, 1031, 19802, 1033]);
  assert.deepEqual(bert.encode(text), [1996, 1031, 7308, 1033, 2938, 1031, 19802, 1033]);
  assert.throws(() => bert.encode(text, { disallowedSpecial: "all" }), (e: unknown) => e instanceof ValueError && /contains the special token "\[(MASK|SEP)\]"/.test(e.message));
  assert.throws(() => bert.encode(text, { allowedSpecial: ["<|endoftext|>"] }), (e: unknown) => e instanceof ValueError && /not a special token of "bert-base-uncased"/.test(e.message));
  assert.deepEqual(bert.withSpecialTokens([7592], [2088]), { ids: [101, 7592, 102, 2088, 102], typeIds: [0, 0, 0, 1, 1] });
  assert.deepEqual(bert.encodePair("hello", ""), { ids: [101, 7592, 102, 102], typeIds: [0, 0, 0, 1] }, "an empty second segment still gets its [SEP]");
});

test("`WordPiece.decode()` glues ## pieces, drops special tokens and spaces before punctuation", () => {
  const bert = loadTokenizer("bert-base-uncased");
  const ids = bert.encodePair("Hello, world! It's unaffable.", "Don't go").ids;
  assert.equal(bert.decode(ids), "hello, world! it's unaffable. don't go");
  assert.equal(bert.decode(ids, { skipSpecialTokens: false }), "[CLS] hello, world! it's unaffable. [SEP] don't go [SEP]");
  assert.equal(bert.decode(ids, { cleanUpTokenizationSpaces: false }), "hello, world! it ' s unaffable. don ' t go");
  assert.equal(bert.decode([bert.tokenToId("##s")!, 2088]), "##s world", "a continuation first stays whole, as in HF");
  assert.equal(bert.decode([]), "");
  assert.deepEqual(bert.decodeBytes(bert.encode("naïve 中文")), new TextEncoder().encode("naive 中 文"));
  assert.throws(() => bert.decode([7592, 30522]), (e: unknown) => e instanceof ValueError && /ids\[1\] = 30522/.test(e.message));
});

test("`WordPiece.save()` and `saveVocab()` round-trip through `loadTokenizer()`", (t) => {
  const dir = tempDir(t);
  const bert = loadTokenizer("bert-base-uncased");
  const text = "Ångström's [MASK] 中文 test, unaffable!";
  const want = bert.encode(text, { allowedSpecial: "all" });
  bert.save(join(dir, "bert.json"));
  const back = loadTokenizer(join(dir, "bert.json"));
  assert.ok(back instanceof WordPiece);
  assert.equal(back.name, "bert");
  assert.deepEqual([...back.model.vocab], [...bert.model.vocab]);
  assert.deepEqual([...back.model.special], [...bert.model.special]);
  assert.deepEqual(back.model.normalizer, bert.model.normalizer);
  assert.deepEqual(back.encode(text, { allowedSpecial: "all" }), want);
  // The file lists the vocab in id order, as Hugging Face writes it.
  assert.match(readFileSync(join(dir, "bert.json"), "utf8"), /"vocab": \{\n\s+"\[PAD\]": 0,\n\s+"\[unused0\]": 1,/);

  const vocabDir = join(dir, "vocab-only");
  mkdirSync(vocabDir);
  bert.saveVocab(join(vocabDir, "vocab.txt"));
  const lines = readFileSync(join(vocabDir, "vocab.txt"), "utf8").split("\n");
  assert.deepEqual(lines.slice(100, 104), ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]);
  assert.equal(lines.length, 30523, "30522 lines and a final newline");
  const fromTxt = loadTokenizer(vocabDir);
  assert.ok(fromTxt instanceof WordPiece);
  assert.deepEqual(fromTxt.encode(text, { allowedSpecial: "all" }), want);
  // A tokenizer_config.json beside vocab.txt decides the casing.
  writeFileSync(join(vocabDir, "tokenizer_config.json"), JSON.stringify({ do_lower_case: false }));
  const cased = loadTokenizer(vocabDir) as WordPiece;
  assert.equal(cased.model.normalizer?.lowercase, false);
  assert.deepEqual(cased.encode("Hello hello"), [100, 7592]);
  // vocab.txt cannot express ids with holes.
  const holes = new WordPiece({ ...bert.model, vocab: new Map([...bert.model.vocab].filter(([, id]) => id !== 5)) });
  assert.throws(() => holes.saveVocab(join(dir, "holes.txt")), (e: unknown) => e instanceof ValueError && /id 5 has no token/.test(e.message));
});

test("`loadTokenizer()` reads BertProcessing and HF defaults, and rejects what this WordPiece does not implement", (t) => {
  const dir = tempDir(t);
  const bert = loadTokenizer("bert-base-uncased");
  bert.save(join(dir, "base.json"));
  const base = readFileSync(join(dir, "base.json"), "utf8");
  const write = (name: string, edit: (j: Record<string, any>) => void): string => {
    const j = JSON.parse(base);
    edit(j);
    writeFileSync(join(dir, name), JSON.stringify(j));
    return join(dir, name);
  };
  const text = "Hello [MASK], Ångström!";
  const lenient = write("lenient.json", (j) => {
    j.post_processor = { type: "BertProcessing", sep: ["[SEP]", 102], cls: ["[CLS]", 101] };
    j.decoder = null;
    j.normalizer = { type: "BertNormalizer" }; // every field at HF's default: uncased
    delete j.model.max_input_chars_per_word;
  });
  const l = loadTokenizer(lenient) as WordPiece;
  assert.deepEqual(l.encodePair(text, "x", { allowedSpecial: "all" }), bert.encodePair(text, "x", { allowedSpecial: "all" }));
  assert.equal(l.model.maxInputCharsPerWord, 100);

  const bad: Array<[string, (j: Record<string, any>) => void, RegExp]> = [
    ["pre.json", (j) => (j.pre_tokenizer = { type: "ByteLevel" }), /pre_tokenizer .*BertPreTokenizer/],
    ["norm.json", (j) => (j.normalizer = { type: "Lowercase" }), /normalizer .*BertNormalizer/],
    ["flag.json", (j) => (j.normalizer.lowercase = "yes"), /normalizer.lowercase should be true or false/],
    ["template.json", (j) => (j.post_processor.single = j.post_processor.single.slice(1)), /post_processor.single .*\[CLS\] \$A \[SEP\]/],
    ["pair.json", (j) => (j.post_processor.pair[4].SpecialToken.type_id = 0), /post_processor.pair/],
    ["roberta.json", (j) => (j.post_processor = { type: "RobertaProcessing" }), /post_processor is/],
    ["decoder.json", (j) => (j.decoder = { type: "ByteLevel" }), /decoder is .*WordPiece/],
    ["added.json", (j) => j.added_tokens.push({ id: 30522, content: "<x>", special: false }), /only special added tokens/],
    ["nomask.json", (j) => { delete j.model.vocab["[MASK]"]; j.added_tokens = j.added_tokens.filter((a: { content: string }) => a.content !== "[MASK]"); }, /mask token "\[MASK\]" is in neither/],
    ["prefix.json", (j) => (j.model.continuing_subword_prefix = 3), /continuing_subword_prefix should be a non-empty string/],
  ];
  for (const [name, edit, message] of bad) {
    const file = write(name, edit);
    assert.throws(() => loadTokenizer(file), (e: unknown) => e instanceof FormatError && e.file === file && message.test(e.message), name);
  }
  writeFileSync(join(dir, "vocab.txt"), "[PAD]\n[UNK]\n\n[CLS]\n");
  assert.throws(() => loadTokenizer(dir), (e: unknown) => e instanceof FormatError && /line 3 is empty/.test(e.message));
});

test("`trainWordPiece()` builds specials, then characters and ## characters, then merges, deterministically", async (t) => {
  const texts = ["the cat sat on the mat", "The Cats sat, the dog sat!", "naïve café", "中文"];
  const tok = await trainWordPiece({ texts, vocabSize: 60, minFrequency: 2, progress: false });
  const tokens = [...tok.model.vocab.keys()];
  assert.deepEqual(tokens.slice(0, 5), ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]);
  const chars = [...new Set([...texts.join("").toLowerCase().normalize("NFD").replace(/\p{Mn}|\s/gu, "")])].sort((a, b) => a.codePointAt(0)! - b.codePointAt(0)!);
  assert.deepEqual(tokens.slice(5, 5 + chars.length), chars, "every character, by code point");
  assert.deepEqual(tokens.slice(5 + chars.length, 5 + 2 * chars.length), chars.map((c) => `##${c}`));
  const merged = tokens.slice(5 + 2 * chars.length);
  assert.ok(merged.includes("##at") && merged.includes("the") && merged.includes("sat"), merged.join(" "));
  assert.ok(tok.vocabSize < 60, "stops when no pair is seen twice any more");
  assert.deepEqual([tok.pad, tok.unk, tok.cls, tok.sep, tok.mask], [0, 1, 2, 3, 4]);
  // Every word of the training text encodes without [UNK], and decodes back to the normalized text.
  for (const text of texts) {
    const ids = tok.encode(text);
    assert.ok(!ids.includes(tok.unk), text);
    assert.equal(tok.decode(ids, { cleanUpTokenizationSpaces: false }), bertPreTokenize(bertNormalize(text, UNCASED)).join(" ").replace(/ ([.,!?])/g, "$1"));
  }
  // Same inputs, same vocabulary; files (any chunk size) count like texts.
  const again = await trainWordPiece({ texts, vocabSize: 60, minFrequency: 2, progress: false });
  assert.deepEqual([...again.model.vocab], [...tok.model.vocab]);
  const dir = tempDir(t);
  const docs = brownCorpusDocuments().slice(0, 8);
  const file = join(dir, "docs.txt");
  writeFileSync(file, docs.join("\n") + "\n");
  const fromText = await trainWordPiece({ texts: [docs.join("\n")], vocabSize: 700, progress: false });
  for (const chunkBytes of [7, 4096]) {
    const fromFile = await trainWordPiece({ files: [file], vocabSize: 700, progress: false, chunkBytes });
    assert.deepEqual([...fromFile.model.vocab], [...fromText.model.vocab], `chunkBytes ${chunkBytes}`);
  }
  // Word counts can be given directly.
  const counted = await trainWordPiece({ wordCounts: new Map([["low", 5], ["lower", 2], ["newest", 6], ["widest", 3]]), vocabSize: 40, progress: false });
  assert.ok(counted.model.vocab.has("##est") && counted.model.vocab.has("low"), [...counted.model.vocab.keys()].join(" "));
});

test("`trainWordPiece()` options: cased, limitAlphabet, extra special tokens, and its errors", async () => {
  const texts = ["Zebra zebra ZEBRA zoo Zoo", "éé e\u0301"];
  const cased = await trainWordPiece({ texts, vocabSize: 100, lowercase: false, progress: false });
  assert.ok(cased.model.vocab.has("Z") && cased.model.vocab.has("é"));
  assert.equal(cased.decode(cased.encode("Zebra ZEBRA")), "Zebra ZEBRA");
  assert.notDeepEqual(cased.encode("Zebra"), cased.encode("zebra"));
  const limited = await trainWordPiece({ texts, vocabSize: 100, limitAlphabet: 3, progress: false });
  assert.deepEqual([...limited.model.vocab.keys()].slice(5, 8), ["e", "o", "z"], "the 3 most frequent characters (e 6, z 5, o 4), by code point");
  const extra = await trainWordPiece({ texts, vocabSize: 100, specialTokens: ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[unused0]"], progress: false });
  assert.equal(extra.tokenToId("[unused0]"), 5);
  assert.deepEqual(extra.encode("[unused0]", { allowedSpecial: "all" }), [5]);
  await assert.rejects(trainWordPiece({ texts, vocabSize: 10, progress: false }), (e: unknown) => e instanceof ValueError && /already need \d+ ids, more than vocabSize 10/.test(e.message));
  await assert.rejects(trainWordPiece({ texts, vocabSize: 100, specialTokens: ["[UNK]"], progress: false }), /lacks \[PAD\]/);
  await assert.rejects(trainWordPiece({ vocabSize: 100, progress: false }), /give files, texts or wordCounts/);
  await assert.rejects(trainWordPiece({ texts, vocabSize: 100, minFrequency: 0, progress: false }), /minFrequency must be an integer >= 1/);
});

test("`saveHfTokenizer()` writes BERT's tokenizer files for a WordPiece, which tokenizers.js loads with the same ids", async (t) => {
  const dir = tempDir(t);
  const tok = await trainWordPiece({ texts: brownCorpusDocuments().slice(0, 20), vocabSize: 800, progress: false });
  saveHfTokenizer(dir, tok, { modelMaxLength: 128 });
  const json = (f: string) => JSON.parse(readFileSync(join(dir, f), "utf8"));
  const config = json("tokenizer_config.json");
  assert.equal(config.tokenizer_class, "BertTokenizer");
  assert.equal(config.do_lower_case, true);
  assert.equal(config.model_max_length, 128);
  assert.deepEqual([config.cls_token, config.sep_token, config.pad_token, config.mask_token, config.unk_token], ["[CLS]", "[SEP]", "[PAD]", "[MASK]", "[UNK]"]);
  assert.equal(config.added_tokens_decoder["4"].content, "[MASK]");
  assert.deepEqual(json("special_tokens_map.json"), { cls_token: "[CLS]", mask_token: "[MASK]", pad_token: "[PAD]", sep_token: "[SEP]", unk_token: "[UNK]" });
  assert.equal(readFileSync(join(dir, "vocab.txt"), "utf8").split("\n").length, tok.vocabSize + 1);
  const hf = new HfTokenizer(json("tokenizer.json"), config);
  for (const text of ["Hello there, General Kenobi!", "It's the jury's [MASK] decision.", "naïve 中文"]) {
    const ids = tok.encodePair(text, undefined, { allowedSpecial: "all" }).ids;
    assert.deepEqual(hf.encode(text).ids, ids);
    assert.equal(hf.decode(ids, { skip_special_tokens: true }), tok.decode(ids));
  }
});
