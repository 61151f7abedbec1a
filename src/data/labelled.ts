/**
 * Fine-tuning data: labelled texts (classification) and prompt/completion pairs (SFT) from a
 * JSONL or CSV file, and the seeded train/validation split.
 *
 * CSV goes through `csv-parse` (the Node ecosystem's standard RFC 4180 parser: quoted fields,
 * embedded newlines and escaped quotes are where hand-written splitters go wrong).
 */
import { readFileSync, existsSync, statSync } from "node:fs";
import { extname } from "node:path";
import { parse as parseCsv } from "csv-parse/sync";
import { FormatError, ValueError } from "../core/errors.js";

/** One classification example: its text and its label as written in the file. */
export interface LabelledText {
  text: string;
  label: string;
}

/** One chat message of an SFT example. */
export interface ChatMessage {
  role: string;
  content: string;
}

/** One SFT example: a prompt and the completion the loss is on, or a chat (loss on assistant turns). */
export type SftExample = { prompt: string; completion: string } | { messages: ChatMessage[] };

/** Field names of `readLabelledTexts` / `readSftExamples`. */
export interface FieldOptions {
  textField?: string;
  labelField?: string;
  promptField?: string;
  completionField?: string;
  messagesField?: string;
}

/** The rows of a JSONL (one object per line) or CSV (header row) file, as objects. */
export function readRows(file: string): Array<Record<string, unknown>> {
  if (!existsSync(file)) throw new ValueError(`finetune data ${JSON.stringify(file)} does not exist; pass a JSONL or CSV file`);
  if (statSync(file).isDirectory()) throw new ValueError(`finetune data ${JSON.stringify(file)} is a directory; pass a JSONL or CSV file`);
  const text = readFileSync(file, "utf8");
  const ext = extname(file).toLowerCase();
  if (ext === ".csv" || ext === ".tsv") {
    try {
      return parseCsv(text, { columns: true, skip_empty_lines: true, bom: true, delimiter: ext === ".tsv" ? "\t" : "," }) as Array<Record<string, unknown>>;
    } catch (e) {
      throw new FormatError(file, `not valid CSV (${(e as Error).message})`);
    }
  }
  const rows: Array<Record<string, unknown>> = [];
  text.split("\n").forEach((line, i) => {
    if (!line.trim()) return;
    let v: unknown;
    try {
      v = JSON.parse(line);
    } catch (e) {
      throw new FormatError(file, `line ${i + 1} is not valid JSON (${(e as Error).message}); JSONL wants one object per line (or name the file .csv)`);
    }
    if (typeof v !== "object" || v === null || Array.isArray(v)) throw new FormatError(file, `line ${i + 1} must be a JSON object, got ${JSON.stringify(v).slice(0, 40)}`);
    rows.push(v as Record<string, unknown>);
  });
  return rows;
}

/**
 * Labelled texts for classification.
 * @example
 * const rows = readLabelledTexts("spam.jsonl", { textField: "text", labelField: "label" });
 */
export function readLabelledTexts(file: string, opts: FieldOptions = {}): LabelledText[] {
  const tf = opts.textField ?? "text", lf = opts.labelField ?? "label";
  const rows = readRows(file);
  if (rows.length === 0) throw new FormatError(file, "holds no examples");
  return rows.map((r, i) => {
    const text = r[tf], label = r[lf];
    if (typeof text !== "string") {
      throw new FormatError(file, `example ${i + 1} has no string "${tf}" (keys: ${Object.keys(r).join(", ")}); pick the text with --text-field`);
    }
    if (typeof label !== "string" && typeof label !== "number" && typeof label !== "boolean") {
      throw new FormatError(file, `example ${i + 1} has no "${lf}" label (string, number or boolean; keys: ${Object.keys(r).join(", ")}); pick it with --label-field`);
    }
    return { text, label: String(label) };
  });
}

/**
 * SFT examples: `{prompt, completion}` rows or chat `messages` lists ({role, content}).
 * @example
 * const rows = readSftExamples("sft.jsonl");
 */
export function readSftExamples(file: string, opts: FieldOptions = {}): SftExample[] {
  const pf = opts.promptField ?? "prompt", cf = opts.completionField ?? "completion", mf = opts.messagesField ?? "messages";
  const rows = readRows(file);
  if (rows.length === 0) throw new FormatError(file, "holds no examples");
  return rows.map((r, i) => {
    const m = r[mf];
    if (Array.isArray(m)) {
      const messages = m.map((x, j) => {
        const o = x as Record<string, unknown>;
        if (typeof o !== "object" || o === null || typeof o.role !== "string" || typeof o.content !== "string") {
          throw new FormatError(file, `example ${i + 1}: ${mf}[${j}] must be {role: string, content: string}`);
        }
        return { role: o.role, content: o.content };
      });
      if (!messages.some((x) => x.role === "assistant")) throw new FormatError(file, `example ${i + 1}: ${mf} has no assistant message to train on`);
      return { messages };
    }
    const p = r[pf], c = r[cf];
    if (typeof p !== "string" || typeof c !== "string") {
      throw new FormatError(file, `example ${i + 1} needs string "${pf}" and "${cf}" fields or a "${mf}" list (keys: ${Object.keys(r).join(", ")})`);
    }
    return { prompt: p, completion: c };
  });
}

/**
 * A seeded permutation of [0, n): Fisher-Yates over splitmix32. The fine-tuning split and the
 * example loader's epochs both shuffle with it.
 * @example
 * seededPermutation(5, 1);   // the same order on every rank and run
 */
export function seededPermutation(n: number, seed: number): Int32Array {
  const p = new Int32Array(n);
  for (let i = 0; i < n; i++) p[i] = i;
  let s = seed >>> 0;
  const rand = () => {
    s = (s + 0x9e3779b9) >>> 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    return ((z ^ (z >>> 16)) >>> 0) / 2 ** 32;
  };
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    const t = p[i]!;
    p[i] = p[j]!;
    p[j] = t;
  }
  return p;
}

/**
 * A seeded shuffle (Fisher-Yates) split into train and validation: the last `valFraction` of the
 * shuffled order is validation. The same seed gives the same split on every rank and run.
 * @example
 * const { train, val } = seededSplit(rows, 0.2, 1337);
 */
export function seededSplit<T>(items: readonly T[], valFraction: number, seed: number): { train: T[]; val: T[] } {
  if (!(valFraction >= 0 && valFraction < 1)) throw new ValueError(`val fraction must be in [0, 1), got ${valFraction}`);
  const order = Array.from(seededPermutation(items.length, seed));
  const nVal = Math.round(items.length * valFraction);
  const nTrain = items.length - nVal;
  return { train: order.slice(0, nTrain).map((i) => items[i]!), val: order.slice(nTrain).map((i) => items[i]!) };
}
