/**
 * `megalith prepare`: tokenize text into train/val token shards (see src/data/prepare.ts).
 *
 *   megalith prepare --tokenizer gpt2 --input corpus.jsonl more.txt --out data/corpus
 *   megalith prepare --tokenizer gpt2 --input brown --out data/brown
 *
 * `--input brown` is the built-in Brown corpus (no download); write `./brown` for a file of
 * that name. Plain text files are one document each unless `--doc-separator` is given.
 *
 *   megalith prepare --task mlm --tokenizer bert-base-uncased --input wiki.txt --doc-separator "\n\n" --out data/wiki-mlm
 *
 * `--task mlm` writes BERT sentence-pair examples ([CLS] A [SEP] B [SEP], 50% true next
 * sentence) for MlmLoader instead of a token stream (see src/data/mlm_prepare.ts).
 */
import { Command, Option } from "commander";
import { resolve } from "node:path";
import { ValueError } from "../core/errors.js";
import { prepareData, type InputFormat, type PrepareInput } from "../data/prepare.js";
import { prepareMlmData } from "../data/mlm_prepare.js";
import { brownSource } from "../data/prepare_brown.js";
import type { PreparedMeta } from "../data/meta.js";
import { loadTokenizer } from "../tokenizers/index.js";

/** Parsed flags of `megalith prepare` (commander's camel-cased names). */
interface PrepareFlags {
  tokenizer: string;
  input: string[];
  out: string;
  valFraction: string;
  shardTokens: string;
  format: InputFormat;
  docSeparator?: string;
  overwrite?: boolean;
  strictUtf8?: boolean;
  progress: boolean;
  task: "lm" | "mlm";
  maxSeqLen?: string;
  shortSeqProb?: string;
  seed?: string;
}

/** Tokenizer names loadTokenizer knows; anything else is a path. */
const NAMED_TOKENIZERS = new Set(["gpt2", "bert-base-uncased"]);

/** Turns the escapes \n, \r, \t and \\ typed on a command line into the characters. */
function unescapeSeparator(s: string): string {
  return s.replace(/\\(.)/g, (_, c: string) => ({ n: "\n", r: "\r", t: "\t", "\\": "\\" })[c] ?? `\\${c}`);
}

function parseNumber(flag: string, value: string, integer: boolean): number {
  const x = Number(value);
  if (value.trim() === "" || !Number.isFinite(x) || (integer && !Number.isSafeInteger(x))) {
    throw new ValueError(`${flag} must be ${integer ? "an integer" : "a number"}, got ${JSON.stringify(value)}`);
  }
  return x;
}

function summary(out: string, meta: PreparedMeta): string {
  const line = (split: "train" | "val"): string => {
    const s = meta.splits[split];
    const m = meta.mlm?.splits[split];
    const pairs = m ? `; ${m.examples.toLocaleString("en-US")} sentence pairs (${m.randomNext.toLocaleString("en-US")} with a random second segment)` : "";
    return `  ${split}: ${s.tokens.toLocaleString("en-US")} tokens, ${s.documents.toLocaleString("en-US")} documents, ${s.shards.length} shard(s)${pairs}`;
  };
  const task = meta.mlm ? `, mlm pairs of at most ${meta.mlm.maxSeqLen} tokens` : "";
  return [`prepared ${out} (${meta.tokenizer.name}, vocab ${meta.tokenizer.vocabSize}, ${meta.dtype}${task})`, line("train"), line("val")].join("\n");
}

/**
 * Adds `prepare` to the CLI.
 * @example register(program); // megalith prepare --tokenizer gpt2 --input a.txt --out data/a
 */
export function register(program: Command): void {
  program
    .command("prepare")
    .description("Tokenize text files (plain text or JSONL with a \"text\" field) into train/val token shards")
    .requiredOption("--tokenizer <spec>", 'tokenizer: "gpt2" or a path to tokenizer.json (or its directory)')
    .requiredOption("--input <files...>", 'input files, or "brown" for the built-in Brown corpus')
    .requiredOption("--out <dir>", "output directory (created atomically; meta.json marks it complete)")
    .option("--val-fraction <f>", "fraction of documents held out for validation, in [0, 1)", "0.005")
    .option("--shard-tokens <n>", "maximum tokens per shard file", "100000000")
    .addOption(new Option("--format <format>", "input format; auto = jsonl for .jsonl/.ndjson, text otherwise").choices(["auto", "text", "jsonl"]).default("auto"))
    .option("--doc-separator <sep>", 'split plain text files into documents at this string, e.g. "\\n\\n" (escapes \\n \\t \\r \\\\); default: one file = one document')
    .option("--overwrite", "replace --out if it already exists")
    .option("--strict-utf8", "refuse input files that are not valid UTF-8 (default: replace invalid bytes with U+FFFD and report how many)")
    .option("--no-progress", "do not print progress lines")
    .addOption(new Option("--task <task>", "lm = a token stream for causal LM; mlm = BERT sentence pairs for masked-LM + next-sentence pretraining").choices(["lm", "mlm"]).default("lm"))
    .option("--max-seq-len <n>", "--task mlm: tokens per example at most, [CLS] and [SEP]s included (default 128)")
    .option("--short-seq-prob <p>", "--task mlm: probability of a shorter random target length, as Google's BERT (default 0.1)")
    .option("--seed <n>", "--task mlm: seed of the sentence pairing (masks are drawn by the loader) (default 12345)")
    .action(async (flags: PrepareFlags) => {
      const valFraction = parseNumber("--val-fraction", flags.valFraction, false);
      const shardTokens = parseNumber("--shard-tokens", flags.shardTokens, true);
      if (flags.task !== "mlm") {
        const mlmOnly = (["maxSeqLen", "shortSeqProb", "seed"] as const).filter((k) => flags[k] !== undefined);
        if (mlmOnly.length > 0) {
          const names = mlmOnly.map((k) => `--${k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`).join(", ");
          throw new ValueError(`${names} only appl${mlmOnly.length > 1 ? "y" : "ies"} to --task mlm (this run prepares --task ${flags.task})`);
        }
      }
      const spec = NAMED_TOKENIZERS.has(flags.tokenizer) ? flags.tokenizer : resolve(flags.tokenizer);
      const tokenizer = loadTokenizer(spec);
      const inputs: PrepareInput[] = flags.input.map((i) => (i === "brown" ? brownSource() : i));
      const replaced: Array<[string, number]> = [];
      const prepare = flags.task === "mlm"
        ? (o: Parameters<typeof prepareData>[0]) =>
            prepareMlmData({
              ...o,
              tokenizer,
              maxSeqLen: flags.maxSeqLen === undefined ? undefined : parseNumber("--max-seq-len", flags.maxSeqLen, true),
              shortSeqProb: flags.shortSeqProb === undefined ? undefined : parseNumber("--short-seq-prob", flags.shortSeqProb, false),
              seed: flags.seed === undefined ? undefined : parseNumber("--seed", flags.seed, true),
            })
        : prepareData;
      const meta = await prepare({
        tokenizer,
        tokenizerSpec: spec,
        inputs,
        outDir: flags.out,
        valFraction,
        shardTokens,
        format: flags.format,
        docSeparator: flags.docSeparator === undefined ? undefined : unescapeSeparator(flags.docSeparator),
        overwrite: flags.overwrite ?? false,
        progress: flags.progress,
        strictUtf8: flags.strictUtf8 ?? false,
        onInvalidUtf8: (file, bytes) => replaced.push([file, bytes]),
      });
      process.stdout.write(`${summary(flags.out, meta)}\n`);
      for (const [file, bytes] of replaced) {
        process.stderr.write(`megalith: warning: ${file}: ${bytes.toLocaleString("en-US")} byte(s) of invalid UTF-8 were replaced with U+FFFD ` +
          "(is it Latin-1 or binary?); pass --strict-utf8 to refuse such input\n");
      }
      if (valFraction > 0 && meta.splits.val.documents === 0) {
        const docs = meta.splits.train.documents;
        process.stderr.write(
          `megalith: warning: the val split is empty: ${docs} document(s) and --val-fraction ${valFraction} give round(${docs} * ${valFraction}) = 0 ` +
            `val documents. Split plain text into documents with --doc-separator, or raise --val-fraction.\n`,
        );
      }
    });
}
