/**
 * `megalith demo` (npm run demo): prepares the Brown corpus, trains a small GPT for a few
 * minutes on this machine with a visible falling loss, and prints samples.
 */
import type { Command } from "commander";
import { existsSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { loadConfig } from "../train/config.js";
import { Trainer } from "../train/trainer.js";
import { generate } from "../models/index.js";

const configsDir = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..", "configs");

export function register(program: Command): void {
  program
    .command("demo")
    .description("prepare the Brown corpus, train a small GPT for a few minutes, print samples")
    .option("--config <file>", "config to train", "")
    .option("--set <key=value...>", "config overrides", [])
    .action(async (o: { config: string; set: string[] }) => {
      const candidates = [join(process.cwd(), "configs", "demo.json"), join(configsDir, "demo.json")];
      const file = o.config || candidates.find((f) => existsSync(f)) || candidates[0]!;
      const config = loadConfig(file, o.set);
      const trainer = new Trainer(config);
      await trainer.setup();
      await trainer.run();
      const tok = trainer.tokenizer!;
      process.stderr.write("\nsamples (temperature 0.8, top-k 40):\n");
      for (const [i, prompt] of ["The jury said", "In the morning", "He"].entries()) {
        const ids = [...generate(trainer.model, tok.encode(prompt), { maxNewTokens: 48, temperature: 0.8, topK: 40, seed: i, stopTokens: [tok.eotToken] })];
        process.stdout.write(`--- ${prompt}${tok.decode(ids.filter((t) => t !== tok.eotToken))}\n`);
      }
    });
}
