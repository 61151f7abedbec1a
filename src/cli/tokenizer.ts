/**
 * `megalith tokenizer <train|encode|decode>`: train a byte-level BPE or WordPiece vocabulary, or
 * try a tokenizer on some text.
 *
 *   megalith tokenizer train --vocab-size 8192 --input data/*.txt --out runs/tok.json
 *   megalith tokenizer train --vocab-size 4096 --brown --out runs/brown-4k.json
 *   megalith tokenizer train --type wordpiece --vocab-size 8000 --brown --out runs/bert-tok.json
 *   megalith tokenizer encode --tokenizer gpt2 --text "Hello world"      # 15496 995
 *   megalith tokenizer encode --tokenizer bert-base-uncased --text "Hello world"   # 7592 2088
 *   megalith tokenizer decode --tokenizer runs/tok.json --ids "15496 995"
 */
import { readFileSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import type { Command } from "commander";
import { ValueError } from "../core/errors.js";
import { loadTokenizer, trainBpe, trainWordPiece } from "../tokenizers/index.js";
import { brownCorpusDocuments } from "../data/brown.js";

function parseInteger(flag: string, min: number) {
  return (value: string): number => {
    const n = Number(value);
    if (!/^\s*\d+\s*$/.test(value) || !Number.isSafeInteger(n) || n < min) {
      throw new ValueError(`${flag} must be an integer >= ${min}, got ${JSON.stringify(value)}`);
    }
    return n;
  };
}

/** Writes to the command's configured output (stdout unless a caller, e.g. a test, set another). */
function print(cmd: Command, text: string): void {
  const writeOut = cmd.configureOutput().writeOut;
  if (writeOut) writeOut(text);
  else process.stdout.write(text);
}

interface TrainFlags {
  type: string;
  vocabSize: number;
  input?: string[];
  brown?: boolean;
  out: string;
  minFrequency: number;
  cased?: boolean;
  limitAlphabet?: number;
  quiet?: boolean;
}

/** Where vocab.txt goes beside a WordPiece tokenizer.json: `dir/vocab.txt` for `dir/tokenizer.json`, else `<name>.vocab.txt`. */
function vocabTxtPath(out: string): string {
  return basename(out) === "tokenizer.json" ? join(dirname(out), "vocab.txt") : `${out.replace(/\.json$/, "")}.vocab.txt`;
}

interface TextFlags {
  tokenizer: string;
  text?: string;
  file?: string;
  allowSpecial?: boolean;
  json?: boolean;
}

/**
 * Adds the `tokenizer` command group to the program.
 * @example register(program); await program.parseAsync(["node", "megalith", "tokenizer", "encode", "--text", "hi"]);
 */
export function register(program: Command): void {
  const group = program.command("tokenizer").description("train a byte-level BPE or WordPiece tokenizer, or encode/decode with one");

  group
    .command("train")
    .description("learn a byte-level BPE (GPT-2) or WordPiece (BERT) vocabulary from text files and write tokenizer.json")
    .option("--type <type>", "bpe (byte-level, GPT-2) or wordpiece (BERT)", "bpe")
    .requiredOption("--vocab-size <n>", "total ids; bpe: 256 bytes + merges + <|endoftext|> (>= 257); wordpiece: at most this many", parseInteger("--vocab-size", 1))
    .option("--input <files...>", "UTF-8 text files to learn from (streamed)")
    .option("--brown", "also learn from the Brown corpus (built in)")
    .requiredOption("--out <path>", "where to write the Hugging Face tokenizer.json (wordpiece: vocab.txt beside it)")
    .option("--min-frequency <n>", "never merge pairs seen fewer times", parseInteger("--min-frequency", 1), 2)
    .option("--cased", "wordpiece: keep case and accents (default: lower-case and strip accents, as bert-base-uncased)")
    .option("--limit-alphabet <n>", "wordpiece: keep only the n most frequent characters", parseInteger("--limit-alphabet", 1))
    .option("--quiet", "no progress lines")
    .action(async (flags: TrainFlags, cmd: Command) => {
      if (flags.type !== "bpe" && flags.type !== "wordpiece") throw new ValueError(`--type must be bpe or wordpiece, got ${JSON.stringify(flags.type)}`);
      if (flags.type === "bpe" && flags.vocabSize < 257) throw new ValueError(`--vocab-size must be an integer >= 257 for --type bpe (256 bytes + <|endoftext|>), got ${flags.vocabSize}`);
      if (flags.type === "bpe" && (flags.cased || flags.limitAlphabet !== undefined)) throw new ValueError("--cased and --limit-alphabet apply to --type wordpiece only");
      const files = flags.input ?? [];
      if (files.length === 0 && !flags.brown) throw new ValueError("tokenizer train: give --input FILES... and/or --brown");
      const t0 = performance.now();
      const seconds = () => ((performance.now() - t0) / 1000).toFixed(1);
      const texts = flags.brown ? brownCorpusDocuments() : undefined;
      if (flags.type === "wordpiece") {
        const tok = await trainWordPiece({
          files,
          texts,
          vocabSize: flags.vocabSize,
          minFrequency: flags.minFrequency,
          lowercase: !flags.cased,
          limitAlphabet: flags.limitAlphabet,
          progress: !flags.quiet,
        });
        tok.save(flags.out);
        const vocabTxt = vocabTxtPath(flags.out);
        tok.saveVocab(vocabTxt);
        const short = tok.vocabSize < flags.vocabSize ? ` (the text supports no more with --min-frequency ${flags.minFrequency})` : "";
        print(cmd, `wrote ${flags.out} and ${vocabTxt}: vocab ${tok.vocabSize}${short}, [UNK] = ${tok.unk}, [CLS] = ${tok.cls}, [SEP] = ${tok.sep}, [MASK] = ${tok.mask} in ${seconds()}s\n`);
        return;
      }
      const tok = await trainBpe({ files, texts, vocabSize: flags.vocabSize, minFrequency: flags.minFrequency, progress: !flags.quiet });
      tok.save(flags.out);
      print(cmd, `wrote ${flags.out}: vocab ${tok.vocabSize} (${tok.model.merges.length} merges, <|endoftext|> = ${tok.eotToken}) in ${seconds()}s\n`);
    });

  group
    .command("encode")
    .description("print the token ids of some text")
    .option("--tokenizer <spec>", '"gpt2", "bert-base-uncased", a tokenizer.json, or a directory', "gpt2")
    .option("--text <text>", "the text to encode")
    .option("--file <path>", "encode this file's contents instead")
    .option("--allow-special", "encode special tokens in the text (<|endoftext|>, [MASK]) as their ids")
    .option("--json", "print {ids, tokens} as JSON instead of bare ids")
    .action((flags: TextFlags, cmd: Command) => {
      if ((flags.text === undefined) === (flags.file === undefined)) throw new ValueError("tokenizer encode: give exactly one of --text or --file");
      const text = flags.text ?? readFileSync(flags.file!, "utf8");
      const tok = loadTokenizer(flags.tokenizer);
      const ids = tok.encode(text, { allowedSpecial: flags.allowSpecial ? "all" : [] });
      if (flags.json) {
        print(cmd, `${JSON.stringify({ tokenizer: tok.name, count: ids.length, ids, tokens: ids.map((id) => tok.idToToken(id)) })}\n`);
      } else {
        print(cmd, `${ids.join(" ")}\n`);
      }
    });

  group
    .command("decode")
    .description("print the text of some token ids")
    .option("--tokenizer <spec>", '"gpt2", "bert-base-uncased", a tokenizer.json, or a directory', "gpt2")
    .requiredOption("--ids <ids>", 'ids separated by spaces or commas, e.g. "15496 995"')
    .action((flags: { tokenizer: string; ids: string }, cmd: Command) => {
      const parts = flags.ids.split(/[\s,]+/).filter((s) => s !== "");
      const ids = parts.map((s) => parseInteger("--ids", 0)(s));
      print(cmd, `${loadTokenizer(flags.tokenizer).decode(ids)}\n`);
    });
}
