/**
 * `megalith serve --model DIR [--port 8000] [--host 127.0.0.1] [--api-key KEY]
 *   [--speculative-tokens N [--speculative-method ngram|draft] [--draft-model DIR]]`
 */
import type { Command } from "commander";
import { basename } from "node:path";
import { ValueError } from "../core/errors.js";
import { GPT } from "../models/index.js";
import { Engine, quantizeModelInt8, type SpeculativeOptions } from "../inference/index.js";
import { createServer } from "../serve/index.js";
import { modelDirTokenizer } from "./_model_dir.js";

export function register(program: Command): void {
  program
    .command("serve")
    .description("serve a model over an OpenAI-compatible HTTP API (continuous batching, paged KV cache)")
    .requiredOption("--model <dir>", "Hugging Face style directory: config.json, model.safetensors, tokenizer.json or vocab.json + merges.txt")
    .option("--port <n>", "port", "8000")
    .option("--host <addr>", "address to bind", "127.0.0.1")
    .option("--api-key <key>", "require Authorization: Bearer <key> (default: $MEGALITH_API_KEY)")
    .option("--kv-cache-mb <n>", "KV-cache memory budget in MiB", "256")
    .option("--max-num-seqs <n>", "most requests running at once", "32")
    .option("--max-num-batched-tokens <n>", "token budget per step", "512")
    .option("--max-waiting <n>", "waiting-queue bound (429 beyond it)", "256")
    .option("--dtype <dtype>", "weights and compute: float32 | bfloat16 (half the bytes per decoded token)", "float32")
    .option("--kv-cache-dtype <dtype>", "KV cache: auto (the serving dtype) | float32 | bfloat16", "auto")
    .option("--quantize <kind>", "weight quantization at load: none | int8 (per-output-channel int8 projections)", "none")
    .option("--speculative-tokens <n>", "speculative decoding: draft tokens per sequence per step (0 = off)", "0")
    .option("--speculative-method <m>", "where drafts come from: ngram (prompt lookup) | draft (a smaller model: --draft-model)", "ngram")
    .option("--draft-model <dir>", "draft model for --speculative-method draft: a Hugging Face style directory with the same tokenizer")
    .action(async (o: Record<string, string>) => {
      const dir = o.model!;
      const int = (name: string, v: string) => {
        const n = Number(v);
        if (!Number.isInteger(n) || n <= 0) throw new ValueError(`--${name} must be a positive integer, got ${JSON.stringify(v)}`);
        return n;
      };
      const tokenizer = modelDirTokenizer(dir);
      const model = await GPT.fromPretrained(dir);
      const dtypes = ["float32", "bfloat16"];
      if (!dtypes.includes(o.dtype!)) throw new ValueError(`--dtype must be float32 or bfloat16, got ${JSON.stringify(o.dtype)}`);
      if (o.kvCacheDtype !== "auto" && !dtypes.includes(o.kvCacheDtype!)) throw new ValueError(`--kv-cache-dtype must be auto, float32 or bfloat16, got ${JSON.stringify(o.kvCacheDtype)}`);
      if (o.dtype === "bfloat16") model.to("bfloat16");
      if (o.quantize !== "none" && o.quantize !== "int8") throw new ValueError(`--quantize must be none or int8, got ${JSON.stringify(o.quantize)}`);
      if (o.quantize === "int8") {
        const q = quantizeModelInt8(model);
        process.stderr.write(`quantized ${q.linears} projections to int8: ${(q.bytesFloat32 / 2 ** 20).toFixed(1)} -> ${(q.bytesInt8 / 2 ** 20).toFixed(1)} MiB\n`);
      }
      const speculative = await speculativeFrom(o, model);
      const engine = new Engine(model, tokenizer, {
        modelName: basename(dir.replace(/\/+$/, "")), kvCacheBytes: int("kv-cache-mb", o.kvCacheMb!) * 2 ** 20,
        maxNumSeqs: int("max-num-seqs", o.maxNumSeqs!), maxNumBatchedTokens: int("max-num-batched-tokens", o.maxNumBatchedTokens!),
        maxWaiting: int("max-waiting", o.maxWaiting!),
        ...(speculative ? { speculative } : {}),
        ...(o.kvCacheDtype !== "auto" ? { kvCacheDtype: o.kvCacheDtype as "float32" | "bfloat16" } : {}),
      });
      const app = createServer({ engine, apiKey: o.apiKey ?? process.env.MEGALITH_API_KEY });
      const port = int("port", o.port!);
      await app.listen({ port, host: o.host! });
      process.stderr.write(`serving ${engine.modelName} on http://${o.host}:${port}/v1 (${engine.blocks.numBlocks} KV blocks of ${engine.blocks.blockSize} tokens)\n`);
      const stop = async () => {
        await app.close();
        await engine.shutdown();
        process.exit(0);
      };
      process.once("SIGINT", stop);
      process.once("SIGTERM", stop);
    });
}

/** The engine's speculative options from the flags (null = off); errors name the flag and value. */
async function speculativeFrom(o: Record<string, string | undefined>, model: GPT): Promise<SpeculativeOptions | null> {
  const k = Number(o.speculativeTokens ?? "0");
  if (!Number.isInteger(k) || k < 0) throw new ValueError(`--speculative-tokens must be an integer >= 0 (0 = off), got ${JSON.stringify(o.speculativeTokens)}`);
  const method = o.speculativeMethod ?? "ngram";
  if (method !== "ngram" && method !== "draft") throw new ValueError(`--speculative-method must be ngram or draft, got ${JSON.stringify(method)}`);
  if (o.draftModel && method !== "draft") throw new ValueError(`--draft-model ${o.draftModel} is given but --speculative-method is ${method}; add --speculative-method draft`);
  if (method === "draft" && !o.draftModel) throw new ValueError(`--speculative-method draft needs --draft-model DIR (a smaller model with the same tokenizer)`);
  if (k === 0) {
    if (o.draftModel || method !== "ngram") throw new ValueError(`--speculative-method ${method} needs --speculative-tokens N (N >= 1 draft tokens per step)`);
    return null;
  }
  if (method === "ngram") return { method, numTokens: k };
  const draftModel = await GPT.fromPretrained(o.draftModel!);
  if (draftModel.config.vocabSize !== model.config.vocabSize) {
    throw new ValueError(`the draft model ${o.draftModel} has a vocabulary of ${draftModel.config.vocabSize} tokens but the model ${o.model} has ${model.config.vocabSize}; the draft must use the same tokenizer`);
  }
  if (o.dtype === "bfloat16") draftModel.to("bfloat16");  // the draft serves in the target's dtype
  return { method, numTokens: k, draftModel };
}
