/** `megalith sample --model DIR --prompt TEXT --max-new-tokens N --temperature T --top-k K --top-p P --seed S` */
import type { Command } from "commander";
import { ValueError } from "../core/errors.js";
import { GPT, generate } from "../models/index.js";
import { modelDirTokenizer } from "./_model_dir.js";

function num(name: string, v: string, int = false): number {
  const n = Number(v);
  if (!Number.isFinite(n) || (int && !Number.isInteger(n))) throw new ValueError(`--${name} must be ${int ? "an integer" : "a number"}, got ${JSON.stringify(v)}`);
  return n;
}

export function register(program: Command): void {
  program
    .command("sample")
    .description("generate text from a trained model directory (greedy at --temperature 0)")
    .requiredOption("--model <dir>", "Hugging Face style model directory (config.json + model.safetensors)")
    .option("--prompt <text>", "prompt text", "\n")
    .option("--tokenizer <spec>", "gpt2, a tokenizer.json path or a directory (default: the model dir's tokenizer.json, else its vocab.json + merges.txt, else gpt2)")
    .option("--max-new-tokens <n>", "tokens to generate", "64")
    .option("--temperature <t>", "sampling temperature; 0 = greedy", "1.0")
    .option("--top-k <k>", "keep the k most likely tokens (0 = off)", "0")
    .option("--top-p <p>", "nucleus sampling threshold (1 = off)", "1.0")
    .option("--seed <s>", "sampling seed", "0")
    .option("--allow-symlinks", "follow a model.safetensors or config.json that links outside the model directory")
    .action(async (o: Record<string, string> & { allowSymlinks?: boolean }) => {
      const model = await GPT.fromPretrained(o.model!, { allowSymlinks: o.allowSymlinks ?? false });
      const tok = modelDirTokenizer(o.model!, o.tokenizer);
      const prompt = tok.encode(o.prompt!);
      const ids: number[] = [];
      process.stdout.write(o.prompt!);
      let printed = "";
      for (const id of generate(model, prompt, {
        maxNewTokens: num("max-new-tokens", o.maxNewTokens!, true), temperature: num("temperature", o.temperature!),
        topK: num("top-k", o.topK!, true), topP: num("top-p", o.topP!), seed: num("seed", o.seed!, true), stopTokens: [tok.eotToken],
        vocabSize: Math.min(tok.vocabSize, model.config.vocabSize),  // never an id without text (a padded vocabulary)
      })) {
        if (id === tok.eotToken) break;
        ids.push(id);
        // Print whole characters only (a token may end inside a multi-byte UTF-8 sequence).
        const text = tok.decode(ids);
        if (!text.endsWith("\uFFFD")) {
          process.stdout.write(text.slice(printed.length));
          printed = text;
        }
      }
      process.stdout.write(tok.decode(ids).slice(printed.length) + "\n");
    });
}
