/**
 * `megalith serve --model DIR [--port 8000] [--host 127.0.0.1] [--api-key KEY]
 *   [--served-model-name NAME]... [--max-model-len N] [--chat-template FILE]
 *   [--max-num-seqs N] [--max-waiting N] [--max-connections N]
 *   [--speculative-tokens N [--speculative-method ngram|draft] [--draft-model DIR]]`
 *
 * Flags that need no model (port, names, counts) are checked before the weights load, so a typo
 * costs no loading time.
 *
 * A GPT directory serves completions, chat and embeddings. A BERT directory (config.json
 * model_type "bert") is an encoder: it serves /v1/embeddings (plus /v1/models, /health, /ready,
 * /metrics), and its completion and chat routes answer 400 saying so.
 */
import type { Command } from "commander";
import { basename } from "node:path";
import { ValueError } from "../core/errors.js";
import { GPT, isBERTDir, loadBERT } from "../models/index.js";
import { Engine, bertEmbedder, gptEmbedder, quantizeModelInt8, type SpeculativeOptions } from "../inference/index.js";
import { loadTokenizer } from "../tokenizers/index.js";
import { createServer, loadChatTemplate } from "../serve/index.js";
import { modelDirTokenizer } from "./_model_dir.js";

export function register(program: Command): void {
  program
    .command("serve")
    .description("serve a model over an OpenAI-compatible HTTP API (continuous batching, paged KV cache)")
    .requiredOption("--model <dir>", "Hugging Face style directory: config.json, model.safetensors, tokenizer.json or vocab.json + merges.txt (a BERT directory, with tokenizer.json or vocab.txt, serves /v1/embeddings only)")
    .option("--port <n>", "port (1-65535)", "8000")
    .option("--host <addr>", "address to bind", "127.0.0.1")
    .option("--api-key <key>", "require Authorization: Bearer <key> (default: $MEGALITH_API_KEY)")
    .option("--kv-cache-mb <n>", "KV-cache memory budget in MiB", "256")
    .option("--max-num-seqs <n>", "most requests running at once", "32")
    .option("--max-num-batched-tokens <n>", "token budget per step", "512")
    .option("--max-waiting <n>", "waiting-queue bound: requests beyond it get 429 with Retry-After", "256")
    .option("--served-model-name <name>", "a name clients pass as `model` (repeatable; default: the model directory's name); others get 404", (v: string, prev: string[] = []) => [...prev, v])
    .option("--max-model-len <n>", "most tokens (prompt + completion) per request (default and maximum: the model's block size)")
    .option("--chat-template <file>", "Jinja chat template for /v1/chat/completions (default: tokenizer_config.json's chat_template, else \"role: content\" lines)")
    .option("--max-connections <n>", "open-connection cap; beyond it the longest-idle connection is closed", "1000")
    .option("--dtype <dtype>", "weights and compute: float32 | bfloat16 (half the bytes per decoded token)", "float32")
    .option("--kv-cache-dtype <dtype>", "KV cache: auto (the serving dtype) | float32 | bfloat16", "auto")
    .option("--quantize <kind>", "weight quantization at load: none | int8 (per-output-channel int8 projections)", "none")
    .option("--speculative-tokens <n>", "speculative decoding: draft tokens per sequence per step (0 = off)", "0")
    .option("--speculative-method <m>", "where drafts come from: ngram (prompt lookup) | draft (a smaller model: --draft-model)", "ngram")
    .option("--draft-model <dir>", "draft model for --speculative-method draft: a Hugging Face style directory with the same tokenizer")
    .option("--allow-symlinks", "follow model files that link outside the model directory")
    .action(async (o: Record<string, string>) => {
      const dir = o.model!;
      const int = (name: string, v: string) => {
        const n = Number(v);
        if (!/^\s*\d+\s*$/.test(v) || !Number.isSafeInteger(n) || n <= 0) throw new ValueError(`--${name} must be a positive integer, got ${JSON.stringify(v)}`);
        return n;
      };
      const port = Number(o.port);
      if (!/^\d+$/.test(o.port!) || !(port >= 1 && port <= 65535)) throw new ValueError(`--port must be an integer from 1 to 65535, got ${JSON.stringify(o.port)}`);
      const names = (o.servedModelName as unknown as string[] | undefined) ?? [basename(dir.replace(/\/+$/, ""))];
      for (const n of names) if (!n.trim()) throw new ValueError(`--served-model-name must not be empty`);
      const maxModelLen = o.maxModelLen !== undefined ? int("max-model-len", o.maxModelLen) : undefined;
      const maxConnections = int("max-connections", o.maxConnections!);
      const sizes = {
        kvCacheBytes: int("kv-cache-mb", o.kvCacheMb!) * 2 ** 20, maxNumSeqs: int("max-num-seqs", o.maxNumSeqs!),
        maxNumBatchedTokens: int("max-num-batched-tokens", o.maxNumBatchedTokens!), maxWaiting: int("max-waiting", o.maxWaiting!),
      };
      if (isBERTDir(dir)) return serveEncoder(o, { dir, names, port, maxModelLen, maxConnections });
      const chatTemplate = loadChatTemplate(dir, o.chatTemplate);
      const tokenizer = modelDirTokenizer(dir);
      const allowSymlinks = (o as Record<string, unknown>).allowSymlinks === true;
      const model = await GPT.fromPretrained(dir, { allowSymlinks });
      const dtypes = ["float32", "bfloat16"];
      if (!dtypes.includes(o.dtype!)) throw new ValueError(`--dtype must be float32 or bfloat16, got ${JSON.stringify(o.dtype)}`);
      if (o.kvCacheDtype !== "auto" && !dtypes.includes(o.kvCacheDtype!)) throw new ValueError(`--kv-cache-dtype must be auto, float32 or bfloat16, got ${JSON.stringify(o.kvCacheDtype)}`);
      if (o.dtype === "bfloat16") model.to("bfloat16");
      if (o.quantize !== "none" && o.quantize !== "int8") throw new ValueError(`--quantize must be none or int8, got ${JSON.stringify(o.quantize)}`);
      if (o.quantize === "int8") {
        const q = quantizeModelInt8(model);
        process.stderr.write(`quantized ${q.linears} projections to int8: ${(q.bytesFloat32 / 2 ** 20).toFixed(1)} -> ${(q.bytesInt8 / 2 ** 20).toFixed(1)} MiB\n`);
      }
      if (maxModelLen !== undefined && maxModelLen > model.config.blockSize) {
        throw new ValueError(`--max-model-len ${maxModelLen} is larger than the model's block size ${model.config.blockSize} (it has no positions beyond); use at most ${model.config.blockSize}`);
      }
      const speculative = await speculativeFrom(o, model);
      const engine = new Engine(model, tokenizer, {
        modelName: names[0]!, ...(maxModelLen !== undefined ? { maxModelLen } : {}), ...sizes,
        ...(speculative ? { speculative } : {}),
        ...(o.kvCacheDtype !== "auto" ? { kvCacheDtype: o.kvCacheDtype as "float32" | "bfloat16" } : {}),
      });
      // /v1/embeddings from the same weights: ln_f hidden states, mean-pooled (inference/embed).
      const embedder = gptEmbedder(model, tokenizer, { maxTokens: engine.contextLength });
      const app = createServer({ engine, embedder, servedModelNames: names, chatTemplate, maxConnections, apiKey: o.apiKey ?? process.env.MEGALITH_API_KEY });
      await app.listen({ port, host: o.host! });
      process.stderr.write(`serving ${names.join(", ")} on http://${o.host}:${port}/v1 (${engine.blocks.numBlocks} KV blocks of ${engine.blocks.blockSize} tokens, max model length ${engine.contextLength}, chat template: ${chatTemplate.source})\n`);
      const stop = async () => {
        await app.close();
        await engine.shutdown();
        process.exit(0);
      };
      process.once("SIGINT", stop);
      process.once("SIGTERM", stop);
    });
}

/**
 * `megalith serve` for a BERT directory: an embedder and no engine. Generation flags that were
 * given a value are refused by name (the KV-cache and batching sizes, which have defaults, are
 * unused). The tokenizer is the directory's own (tokenizer.json or vocab.txt): GPT-2's
 * fallback would be meaningless for an encoder.
 */
async function serveEncoder(
  o: Record<string, string | undefined>,
  s: { dir: string; names: string[]; port: number; maxModelLen: number | undefined; maxConnections: number },
): Promise<void> {
  const generationOnly: Array<[string, boolean]> = [
    ["chat-template", o.chatTemplate !== undefined], ["speculative-tokens", (o.speculativeTokens ?? "0") !== "0"], ["draft-model", o.draftModel !== undefined],
    ["speculative-method", (o.speculativeMethod ?? "ngram") !== "ngram"], ["quantize", (o.quantize ?? "none") !== "none"], ["kv-cache-dtype", (o.kvCacheDtype ?? "auto") !== "auto"],
  ];
  for (const [flag, given] of generationOnly) {
    if (given) throw new ValueError(`--${flag} is for text generation, but ${s.dir} is a BERT encoder, served for /v1/embeddings only; drop --${flag}`);
  }
  if (o.dtype !== "float32" && o.dtype !== "bfloat16") throw new ValueError(`--dtype must be float32 or bfloat16, got ${JSON.stringify(o.dtype)}`);
  const tokenizer = loadTokenizer(s.dir);
  const model = await loadBERT(s.dir, { allowSymlinks: (o as Record<string, unknown>).allowSymlinks === true });
  if (s.maxModelLen !== undefined && s.maxModelLen > model.config.maxPositions) {
    throw new ValueError(`--max-model-len ${s.maxModelLen} is larger than the model's max_position_embeddings ${model.config.maxPositions}; use at most ${model.config.maxPositions}`);
  }
  if (o.dtype === "bfloat16") model.to("bfloat16");
  const embedder = bertEmbedder(model, tokenizer, s.maxModelLen !== undefined ? { maxTokens: s.maxModelLen } : {});
  const app = createServer({ embedder, servedModelNames: s.names, maxConnections: s.maxConnections, apiKey: o.apiKey ?? process.env.MEGALITH_API_KEY });
  await app.listen({ port: s.port, host: o.host! });
  process.stderr.write(`serving ${s.names.join(", ")} on http://${o.host}:${s.port}/v1 (BERT encoder: /v1/embeddings only, ${embedder.dim} dimensions, at most ${embedder.maxTokens} tokens per input)\n`);
  const stop = async () => {
    await app.close();
    process.exit(0);
  };
  process.once("SIGINT", stop);
  process.once("SIGTERM", stop);
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
  const draftModel = await GPT.fromPretrained(o.draftModel!, { allowSymlinks: (o as Record<string, unknown>).allowSymlinks === true });
  if (draftModel.config.vocabSize !== model.config.vocabSize) {
    throw new ValueError(`the draft model ${o.draftModel} has a vocabulary of ${draftModel.config.vocabSize} tokens but the model ${o.model} has ${model.config.vocabSize}; the draft must use the same tokenizer`);
  }
  if (o.dtype === "bfloat16") draftModel.to("bfloat16");  // the draft serves in the target's dtype
  return { method, numTokens: k, draftModel };
}
