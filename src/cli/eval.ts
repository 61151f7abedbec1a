/** `megalith eval --model DIR [--data brown|DIR] [--split val] [--quantize int8 [--int8-lm-head]] [--block-size N] [--stride N] [--max-tokens N]` */
import type { Command } from "commander";
import { ValueError } from "../core/errors.js";
import { GPT } from "../models/index.js";
import { ensurePreparedBrown } from "../data/index.js";
import { quantizeModelInt8 } from "../inference/quant/index.js";
import { perplexity, readSplitTokens } from "../inference/eval/index.js";

export function register(program: Command): void {
  program
    .command("eval")
    .description("perplexity of a model directory on held-out tokens (sliding windows), float32 or int8")
    .requiredOption("--model <dir>", "Hugging Face style model directory (config.json + model.safetensors)")
    .option("--data <src>", "brown (the built-in corpus, GPT-2 tokens, prepared on first use) or a directory made by `megalith prepare`", "brown")
    .option("--split <name>", "train or val", "val")
    .option("--cache-dir <dir>", "where the built-in corpus is prepared", ".cache/megalith/data")
    .option("--quantize <kind>", "none | int8 (score with per-output-channel int8 projections)", "none")
    .option("--int8-lm-head", "with --quantize int8: the (tied) LM head in int8 as well", false)
    .option("--block-size <n>", "tokens per window (default: the model's context)")
    .option("--stride <n>", "tokens between window starts (default: the block size, no overlap)")
    .option("--max-tokens <n>", "score only the first N tokens of the split (default: all)")
    .action(async (o: Record<string, string | undefined> & { int8LmHead?: boolean }) => {
      const int = (name: string, v: string | undefined): number | undefined => {
        if (v === undefined) return undefined;
        const n = Number(v);
        if (!Number.isInteger(n) || n <= 0) throw new ValueError(`--${name} must be a positive integer, got ${JSON.stringify(v)}`);
        return n;
      };
      if (o.quantize !== "none" && o.quantize !== "int8") throw new ValueError(`--quantize must be none or int8, got ${JSON.stringify(o.quantize)}`);
      if (o.split !== "val" && o.split !== "train") throw new ValueError(`--split must be train or val, got ${JSON.stringify(o.split)}`);
      const model = await GPT.fromPretrained(o.model!);
      const dir = o.data === "brown" ? (await ensurePreparedBrown(o.cacheDir!, "gpt2")).dir : o.data!;
      let ids = readSplitTokens(dir, o.split);
      const maxTokens = int("max-tokens", o.maxTokens);
      if (maxTokens !== undefined) ids = ids.subarray(0, maxTokens);
      if (o.int8LmHead && o.quantize !== "int8") throw new ValueError("--int8-lm-head needs --quantize int8");
      if (o.quantize === "int8") quantizeModelInt8(model, { lmHead: o.int8LmHead });
      const blockSize = int("block-size", o.blockSize) ?? model.config.blockSize;
      const stride = int("stride", o.stride) ?? blockSize;
      const t0 = performance.now();
      const r = perplexity(model, ids, { blockSize, stride, quantized: o.quantize === "int8" });
      const secs = (performance.now() - t0) / 1000;
      process.stdout.write(
        `perplexity ${r.perplexity.toFixed(3)} (mean NLL ${r.meanNll.toFixed(4)} nats) on ${r.tokens} ${o.split} tokens of ${o.data}, ` +
          `${o.quantize === "int8" ? (o.int8LmHead ? "int8 projections + LM head" : "int8 projections") : "float32"}, windows of ${blockSize} every ${stride} (${r.windows} windows, ${secs.toFixed(1)} s)\n`,
      );
    });
}
