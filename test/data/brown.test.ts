import { test } from "node:test";
import assert from "node:assert/strict";
import { brownCorpus, brownCorpusDocuments, brownCorpusText, detagBrown } from "../../src/data/brown.js";

test("`brownCorpus()` returns the 500 documents in cats.txt order with genres", () => {
  const docs = brownCorpus();
  assert.equal(docs.length, 500);
  assert.equal(docs[0]!.id, "ca01");
  assert.equal(docs[0]!.category, "news");
  assert.equal(docs[499]!.id, "cr09");
  assert.equal(docs[499]!.category, "humor");
  assert.equal(new Set(docs.map((d) => d.category)).size, 15);
  assert.ok(docs[0]!.text.startsWith("The Fulton County Grand Jury said Friday an investigation of Atlanta's recent primary election produced \"no evidence\" that any irregularities took place."));
});

test("`brownCorpusDocuments()` is plain text: no tags, deterministic, about a million words", () => {
  const docs = brownCorpusDocuments();
  assert.deepEqual(docs, brownCorpusDocuments());
  const words = docs.reduce((n, d) => n + d.split(/\s+/).length, 0);
  assert.ok(words > 900_000 && words < 1_100_000, `${words} words`);
  for (const d of docs) {
    assert.doesNotMatch(d, /\w\/(at|nn|vbd|in|np)\s/, "no part-of-speech tags left");
    assert.doesNotMatch(d, /``|''/, "quotes are plain double quotes");
    assert.doesNotMatch(d, / [.,;:?!)](\s|$)/, "no space before closing punctuation");
    assert.doesNotMatch(d, /\n{3}|^\s|\s$/, "single blank lines between paragraphs, trimmed");
    assert.match(d, /^[\x20-\x7e\n]+$/, "printable ASCII and newlines only");
  }
  assert.equal(brownCorpusText(), docs.join("\n\n"));
});

test("`detagBrown()` strips tags and rebuilds punctuation, quotes and paragraphs", () => {
  const tagged =
    "\n\n\tThe/at jury/nn ,/, ``/`` so/ql ''/'' ./.\nIt/pps said/vbd (/( 1/2/cd )/) ;/. '/' Met/np '/' won/vbd !/.\n\n\n\tNext/ap paragraph/nn ./.\n";
  assert.equal(detagBrown(tagged), 'The jury, "so". It said (1/2); \'Met\' won!\n\nNext paragraph.');
  assert.equal(detagBrown(""), "");
});
