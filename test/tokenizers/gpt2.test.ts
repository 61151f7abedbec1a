import { test } from "node:test";
import assert from "node:assert/strict";
import { Tiktoken } from "js-tiktoken/lite";
import gpt2Ranks from "js-tiktoken/ranks/gpt2";
import { get_encoding } from "tiktoken";
import { ValueError } from "../../src/core/errors.js";
import { ByteLevelBpe, loadTokenizer } from "../../src/tokenizers/index.js";
import { brownCorpusDocuments } from "../../src/data/brown.js";
import { randomText, rng } from "./_helpers.js";

const tok = loadTokenizer("gpt2");
const ref = new Tiktoken(gpt2Ranks);
/** js-tiktoken with special tokens treated as text (our default). */
const refEncode = (text: string) => ref.encode(text, [], []);

/** No lone surrogates (String.prototype.isWellFormed is newer than our TypeScript lib). */
const wellFormed = (s: string) => !/\p{Cs}/u.test(s);

const HOSTILE: readonly string[] = [
  "",
  " ",
  "Hello world",
  // Mixed scripts and combining marks.
  "中文字符 日本語のテキスト 한국어 텍스트 Ελληνικά Кириллица עברית ภาษาไทย",
  "مرحبا بالعالم، كيف حالك؟ ١٢٣",
  "नमस्ते दुनिया क्षत्रिय",
  "e\u0301 a\u0308\u0301 Z\u0324\u0354\u0367\u0311\u0313a\u0308\u0356\u032d\u0308\u0307 \u0301\u0301\u0301",
  // Emoji: ZWJ families, skin tones, flags, variation selectors, keycaps.
  "👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 🇺🇸🇯🇵 ❤️ 🧑🏿‍🚀 1️⃣ 🙂🙂🙂",
  // Whitespace runs of every kind.
  " ".repeat(100) + "x" + " ".repeat(100),
  "\t\t\tx\t",
  "\n".repeat(50) + "a" + "\n\n",
  " \t \n \r\n \u00a0\u3000 \u2028\u2029 \u000b\u000c x \u0085 \ufeffBOM",
  "a   b    c\n\n\n  d \t\n e",
  "  leading and trailing  ",
  // Control characters.
  Array.from({ length: 32 }, (_, i) => String.fromCharCode(i)).join("") + "\u007f",
  "\u001b[31mred\u001b[0m a\u0000b",
  // Contractions in odd cases and places.
  "I'm you're he's we've they'll I'd don't",
  "I'M YOU'RE HE'S WE'VE THEY'LL I'D DON'T",
  "'s's'S 'll've're ''''' ' s rock'n'roll y'all",
  // Numbers.
  "1234567890 3.14159 1,000,000 -42 1e10 0x1F ٣٤٥ Ⅻ ½ ²³ 123456789012345678901234567890",
  // Lone and misordered surrogates.
  "\ud800",
  "a\udc00b",
  "\ud83d\ude00\ud83d x \ude00\ud83d",
  "\udbff\udfff\udbff",
  // Code, URLs, markup.
  "function f(x) { return x * 2; } // ok\nconst y = f(21);\n",
  "https://example.com/path?q=1&r=2#frag <a href=\"x\">link</a> {\"k\": [1, 2.5, null]}",
  // The end-of-text token as plain text.
  "before<|endoftext|>after <|endoftext|><|endoftext|>",
  // Long words (js-tiktoken's merge is quadratic, so these stay moderate).
  "a".repeat(1500),
  "Supercalifragilistic".repeat(60),
  "1".repeat(1000),
  "aGVsbG8gd29ybGQ=".repeat(80),
];

test("`encode()` gives GPT-2's ids on known strings", () => {
  assert.deepEqual(tok.encode("Hello world"), [15496, 995]);
  assert.deepEqual(tok.encode(""), []);
  assert.equal(tok.vocabSize, 50257);
  assert.equal(tok.eotToken, 50256);
  assert.equal(tok.name, "gpt2");
  assert.equal(tok.idToToken(995), "Ġworld");
  assert.equal(tok.tokenToId("Ġworld"), 995);
});

test("`encode()` equals js-tiktoken's gpt2 on the whole Brown corpus", () => {
  const docs = brownCorpusDocuments();
  assert.equal(docs.length, 500);
  docs.forEach((doc, i) => {
    const ids = tok.encode(doc);
    assert.deepEqual(ids, refEncode(doc), `document ${i}`);
    assert.equal(tok.decode(ids), doc, `document ${i} round trip`);
  });
});

test("`encode()` equals js-tiktoken's gpt2 on hostile text", () => {
  for (const text of HOSTILE) assert.deepEqual(tok.encode(text), refEncode(text), JSON.stringify(text.slice(0, 80)));
});

test("`encode()` equals js-tiktoken's gpt2 on random mixtures of hostile pieces", () => {
  const next = rng(7);
  for (let t = 0; t < 1500; t++) {
    const text = randomText(next, 16);
    assert.deepEqual(tok.encode(text), refEncode(text), JSON.stringify(text));
  }
});

test("`encode()` equals tiktoken (WASM) on very long words", (t) => {
  const wasm = get_encoding("gpt2");
  t.after(() => wasm.free());
  for (const text of ["a".repeat(20000), "ab".repeat(10000), "0123456789".repeat(2000), "x" + " ".repeat(20000) + "y", "🙂".repeat(5000)]) {
    assert.deepEqual(tok.encode(text), Array.from(wasm.encode(text)), `${JSON.stringify(text.slice(0, 12))} x ${text.length}`);
  }
});

test("`encode()` gives the same ids with a tiny cache (eviction does not change results)", () => {
  const tiny = new ByteLevelBpe(tok.model, { name: "gpt2-tiny-cache", cacheSize: 3 });
  const docs = brownCorpusDocuments().slice(0, 3);
  for (const text of [...docs, ...HOSTILE]) assert.deepEqual(tiny.encode(text), tok.encode(text));
});

test("`decode()` inverts `encode()` on valid text, a leading BOM included", () => {
  assert.equal(tok.decode(tok.encode("\ufeffBOM")), "\ufeffBOM");
  for (const text of HOSTILE) {
    if (wellFormed(text)) assert.equal(tok.decode(tok.encode(text)), text, JSON.stringify(text.slice(0, 80)));
  }
  const next = rng(11);
  for (let t = 0; t < 500; t++) {
    const text = randomText(next, 16);
    if (wellFormed(text)) assert.equal(tok.decode(tok.encode(text)), text);
  }
});

test("`decode()` turns lone surrogates into U+FFFD, like TextEncoder", () => {
  assert.equal(tok.decode(tok.encode("a\ud800b")), "a\ufffdb");
  assert.equal(tok.decode(tok.encode("\ude00\ud83d")), "\ufffd\ufffd");
});

test("`decode()` of a partial UTF-8 character gives U+FFFD, like js-tiktoken", () => {
  const ids = tok.encode("龘");
  assert.ok(ids.length > 1, "中 is several byte tokens in GPT-2");
  assert.equal(tok.decode(ids.slice(0, 1)), ref.decode(ids.slice(0, 1)));
  assert.equal(tok.decode(ids.slice(0, 1)), "\ufffd");
  assert.deepEqual(Array.from(tok.decodeBytes(ids)), Array.from(Buffer.from("龘")));
});

test("`decode()` rejects ids outside the vocabulary", () => {
  assert.throws(() => tok.decode([15496, 50257]), (e: unknown) => e instanceof ValueError && /ids\[1\] = 50257/.test(e.message));
  assert.throws(() => tok.decode([-1]), ValueError);
  assert.throws(() => tok.decode([1.5]), ValueError);
});

test("`encode()` treats <|endoftext|> as text unless allowed, as js-tiktoken's options do", () => {
  const text = "a<|endoftext|>b <|endoftext|>";
  assert.deepEqual(tok.encode(text), ref.encode(text, [], []));
  assert.deepEqual(tok.encode(text, { allowedSpecial: "all" }), ref.encode(text, "all"));
  assert.deepEqual(tok.encode(text, { allowedSpecial: ["<|endoftext|>"] }), ref.encode(text, ["<|endoftext|>"]));
  assert.deepEqual(tok.encode("<|endoftext|>", { allowedSpecial: "all" }), [50256]);
  assert.throws(() => tok.encode(text, { disallowedSpecial: "all" }), ValueError);
  assert.throws(() => ref.encode(text)); // js-tiktoken's default is the strict one
  assert.deepEqual(tok.encode(text, { allowedSpecial: "all", disallowedSpecial: "all" }), ref.encode(text, "all"));
  assert.throws(() => tok.encode(text, { allowedSpecial: ["<|nope|>"] }), /not a special token/);
  assert.equal(tok.decode([50256]), "<|endoftext|>");
});
