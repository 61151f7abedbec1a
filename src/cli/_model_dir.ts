/**
 * What the CLI commands read from a model directory besides the weights: the tokenizer. One
 * place, so `megalith sample` and `megalith serve` (and anything after them) agree on which
 * tokenizer a directory means; a disagreement would make their greedy outputs differ silently.
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import { loadTokenizer, type ByteLevelBpe, type WordPiece } from "../tokenizers/index.js";

/**
 * The tokenizer of a Hugging Face style model directory, in this order:
 * `override` when given (`"gpt2"`, a tokenizer.json file or a directory), else the directory's
 * `tokenizer.json`, else its GPT-2 pair `vocab.json` + `merges.txt`, else GPT-2's own vocabulary.
 *
 * The GPT-2 fallback keeps bare directories (config.json + model.safetensors only, as some
 * exports are) usable; a directory with only one of vocab.json / merges.txt also falls back, as
 * loadTokenizer() could not read it either.
 * @example
 * const tok = modelDirTokenizer("runs/tiny/final");            // runs/tiny/final/tokenizer.json
 * const gpt2 = modelDirTokenizer("runs/tiny/final", "gpt2");   // --tokenizer gpt2 wins
 */
export function modelDirTokenizer(dir: string, override?: string): ByteLevelBpe | WordPiece {
  if (override !== undefined) return loadTokenizer(override);
  const has = (f: string) => existsSync(join(dir, f));
  // loadTokenizer(dir) itself prefers tokenizer.json over vocab.json + merges.txt.
  return loadTokenizer(has("tokenizer.json") || (has("vocab.json") && has("merges.txt")) ? dir : "gpt2");
}
