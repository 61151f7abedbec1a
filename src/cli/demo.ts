/**
 * `megalith demo` (npm run demo): a small GPT trained on the Brown corpus in a few minutes on
 * two cores, printing readable samples.
 *
 * What makes the samples readable in that budget is the vocabulary: GPT-2's 50k tokens leave a
 * small model a 50k-way softmax and embedding to learn from ~1M words (val perplexity ~1260
 * after a few minutes). A 4k byte-level BPE learned on Brown itself (`trainBpe`, ~10 s) covers
 * its common words in one token each, so the model spends its steps on which word comes next.
 *
 * Steps: (1) train the BPE vocabulary named by `data.tokenizer` in the config if that file is
 * missing (cached afterwards); (2) prepare Brown with it (cached); (3) train; the eval line reports
 * the val loss in nats per token and in bits per byte, which compares across tokenizers;
 * (4) sample, and report the fraction of sampled words that occur in the corpus.
 */
import type { Command } from "commander";
import { existsSync, mkdirSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { loadConfig } from "../train/config.js";
import { Trainer } from "../train/trainer.js";
import { generate, type GPT } from "../models/index.js";
import { trainBpe } from "../tokenizers/index.js";
import { brownCorpusDocuments } from "../data/brown.js";

const configsDir = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..", "configs");

/** Prompts the demo samples from. */
export const DEMO_PROMPTS = ["The jury said", "In the morning", "He", "The president of the United States", "She looked at"];

/** Words of a text: letters with inner apostrophes/hyphens, lowercased ("over-all", "atlanta's"). */
export function words(text: string): string[] {
  return (text.match(/[A-Za-z]+(?:['-][A-Za-z]+)*/g) ?? []).map((w) => w.toLowerCase());
}

/**
 * The fraction of `sampleWords` that occur in `vocabulary` (1 for no words): how much of a
 * sample is real English by the corpus's own dictionary.
 * @example wordFraction(words("the jury sayd"), new Set(["the", "jury", "said"])) // 2/3
 */
export function wordFraction(sampleWords: readonly string[], vocabulary: ReadonlySet<string>): number {
  if (!sampleWords.length) return 1;
  return sampleWords.filter((w) => vocabulary.has(w)).length / sampleWords.length;
}

export function register(program: Command): void {
  program
    .command("demo")
    .description("train a small BPE vocabulary and GPT on the Brown corpus for a few minutes, print samples")
    .option("--config <file>", "config to train", "")
    .option("--set <key=value...>", "config overrides", [])
    .option("--tokens <n>", "tokens generated per sample", (v) => Number(v), 60)
    .action(async (o: { config: string; set: string[]; tokens: number }) => {
      const t0 = performance.now();
      const candidates = [join(process.cwd(), "configs", "demo.json"), join(configsDir, "demo.json")];
      const file = o.config || candidates.find((f) => existsSync(f)) || candidates[0]!;
      const config = loadConfig(file, o.set);
      const spec = config.data.tokenizer;
      if (config.data.source === "brown" && spec !== "gpt2" && !existsSync(spec)) {
        // The vocabulary fills the model's embedding exactly (vocab_size ids, eot included).
        process.stderr.write(`tokenizer: learning a ${config.model.vocab_size}-token byte-level BPE from the Brown corpus -> ${spec}\n`);
        const tok = await trainBpe({ texts: brownCorpusDocuments(), vocabSize: config.model.vocab_size, name: `brown-bpe-${config.model.vocab_size}` });
        mkdirSync(dirname(spec), { recursive: true });
        tok.save(spec);
      }
      // A demo run starts over each time: its out_dir is the demo's, not a run to protect.
      const options = { overwrite: true };
      const trainer = new Trainer(config, options);
      await trainer.setup();
      await trainer.run();
      const tok = trainer.tokenizer!;
      const vocabulary = new Set(brownCorpusDocuments().flatMap(words));
      process.stderr.write("\nsamples (temperature 0.8, top-k 40):\n");
      const sampled: string[] = [];
      for (const [i, prompt] of DEMO_PROMPTS.entries()) {
        const ids = [...generate(trainer.model as GPT, tok.encode(prompt), { maxNewTokens: o.tokens, temperature: 0.8, topK: 40, seed: i, stopTokens: [tok.eotToken] })];
        const text = tok.decode(ids.filter((t) => t !== tok.eotToken));
        sampled.push(...words(text));
        process.stdout.write(`--- ${prompt}${text}\n`);
      }
      const fraction = wordFraction(sampled, vocabulary);
      process.stdout.write(
        `\nwords in the Brown vocabulary: ${(fraction * 100).toFixed(1)}% of ${sampled.length} sampled words` +
          ` | demo time ${((performance.now() - t0) / 1000).toFixed(0)} s\n`,
      );
    });
}
