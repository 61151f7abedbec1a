/**
 * The OpenAI-compatible HTTP server: /v1/completions, /v1/chat/completions, /v1/embeddings,
 * /v1/models, /health, /ready, /metrics, with SSE streaming.
 *
 * fastify is the HTTP layer (the ecosystem's fast, well-kept server: body limits, JSON parsing
 * and error hooks built in). Every failure is an OpenAI-style body {error: {message, type,
 * param, code}} with the right status; nothing a client sends can crash the process.
 *
 * What a request goes through before it reaches the engine, cheapest first: the connection
 * guard (_connections.ts), the JSON parser (refuses `__proto__` / `constructor.prototype` keys
 * by name), the zod schema, the model name (404 model_not_found), the prompt's byte length
 * against the context (so a megabyte prompt is refused without tokenizing it), then the token
 * counts: prompt + max_tokens beyond the max model length is a 400 that states both.
 *
 * /v1/embeddings runs beside the engine, not through it: inputs are embedded one at a time by
 * inference/embed (each alone, so a vector never depends on what it was sent with), yielding
 * to the event loop between inputs so the engine's steps go on. A server built with an
 * embedder and no engine (an encoder such as BERT) serves embeddings only; its completion and
 * chat routes answer 400 saying so.
 */
import { createHash, randomUUID, timingSafeEqual } from "node:crypto";
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from "fastify";
import { ValueError } from "../core/errors.js";
import { DEFAULT_SAMPLING, validateSampling, type SamplingParams } from "../inference/sample/index.js";
import { EngineRejection, type EngineEvent, type EngineLike, type GenerationRequest } from "../inference/engine/types.js";
import { embedTexts, EmbeddingInputError, type Embedder } from "../inference/embed/index.js";
import { ChatBody, CompletionBody, EmbeddingBody, embeddingInputs, firstIssue, MAX_EMBEDDING_INPUTS } from "./schemas.js";
import { ServerMetrics } from "./metrics.js";
import { compileChatTemplate, DEFAULT_CHAT_TEMPLATE, type ChatTemplate } from "./chat_template.js";
import { guardConnections } from "./_connections.js";

export interface ServerOptions {
  /** Serves /v1/completions and /v1/chat/completions. Without one (an encoder), they answer 400. */
  engine?: EngineLike;
  /** Serves /v1/embeddings (inference/embed: gptEmbedder, bertEmbedder). At least one of engine and embedder. */
  embedder?: Embedder;
  /** L2-normalise embeddings to unit length, as OpenAI's are. Default true. */
  normalizeEmbeddings?: boolean;
  /** Most inputs in one embeddings request. Default 2048 (OpenAI's limit). */
  maxEmbeddingInputs?: number;
  /** Names clients may pass as `model` (all listed by /v1/models). Default: [engine.modelName], else ["megalith-<kind>"]. */
  servedModelNames?: string[];
  /** How chat messages become the prompt. Default: DEFAULT_CHAT_TEMPLATE. */
  chatTemplate?: ChatTemplate;
  /** Require `Authorization: Bearer <key>` on every route but /health. */
  apiKey?: string;
  /** Largest accepted request body in bytes (413 above). Default 1 MiB. */
  maxBodyBytes?: number;
  /**
   * Most open connections. Beyond it a new connection evicts the longest-idle one that has no
   * request in flight (idle keep-alive, or never sent a complete request); when every one is
   * busy the new one is closed. Default 1000.
   */
  maxConnections?: number;
  /** Milliseconds a connection may take to send its request headers. Default 10000. */
  headersTimeoutMs?: number;
  /** Milliseconds an idle keep-alive connection stays open. Default 5000. */
  keepAliveTimeoutMs?: number;
  /** Log requests (fastify's logger). Default false. */
  logger?: boolean;
}

type ErrorType = "invalid_request_error" | "authentication_error" | "rate_limit_error" | "server_error" | "not_found_error";

function sendError(reply: FastifyReply, status: number, message: string, type: ErrorType, param: string | null = null, code: string | null = null): FastifyReply {
  return reply.code(status).send({ error: { message, type, param, code } });
}

/** Constant-time comparison of API keys (hash both so lengths do not leak either). */
function keyMatches(given: string, expected: string): boolean {
  const a = createHash("sha256").update(given).digest();
  const b = createHash("sha256").update(expected).digest();
  return timingSafeEqual(a, b);
}

/** A JSON body problem that is the client's: a 400 with this message and code. */
class BodyError extends Error {
  readonly statusCode = 400;
  constructor(message: string, readonly code: string) {
    super(message);
  }
}

/**
 * JSON.parse that refuses the keys of prototype pollution, naming the key: `__proto__`
 * anywhere, and `constructor` holding a `prototype` (secure-json-parse's rules, which fastify
 * applies but reports as "not valid JSON").
 */
function parseJsonBody(text: string): unknown {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text, (key, value: unknown) => {
      if (key === "__proto__" || (key === "constructor" && value !== null && typeof value === "object" && Object.hasOwn(value, "prototype"))) {
        const what = key === "__proto__" ? `a "__proto__" key` : `a "constructor" key holding "prototype"`;
        throw new BodyError(`the JSON body has ${what}, which is refused (prototype pollution); remove it`, "forbidden_key");
      }
      return value;
    });
  } catch (e) {
    if (e instanceof BodyError) throw e;
    throw new BodyError(`malformed JSON body: ${(e as Error).message}`, "invalid_json");
  }
  return parsed;
}

function samplingFrom(b: CompletionBody | ChatBody, logprobs: number, logitBias: Array<[number, number]>): SamplingParams {
  const p: SamplingParams = {
    ...DEFAULT_SAMPLING,
    temperature: b.temperature ?? 1,
    topP: b.top_p ?? 1,
    topK: b.top_k ?? 0,
    minP: b.min_p ?? 0,
    repetitionPenalty: b.repetition_penalty ?? 1,
    presencePenalty: b.presence_penalty ?? 0,
    frequencyPenalty: b.frequency_penalty ?? 0,
    seed: b.seed ?? Math.floor(Math.random() * 2 ** 31),
    logprobs,
    ...(logitBias.length ? { logitBias } : {}),
  };
  validateSampling(p);
  return p;
}

/** Most logit_bias entries per request: each costs work on every sampled token. */
const MAX_LOGIT_BIAS_ENTRIES = 1024;

/** OpenAI's logit_bias map (token id string -> bias) as pairs; the error message names the bad entry. */
function logitBiasFrom(m: Record<string, number> | null | undefined, vocabSize: number): Array<[number, number]> | string {
  const entries = Object.entries(m ?? {});
  if (entries.length > MAX_LOGIT_BIAS_ENTRIES) return `logit_bias has ${entries.length} entries; at most ${MAX_LOGIT_BIAS_ENTRIES} are accepted`;
  const out: Array<[number, number]> = [];
  for (const [k, v] of entries) {
    if (!/^(0|[1-9][0-9]*)$/.test(k) || Number(k) >= vocabSize) return `logit_bias key ${JSON.stringify(k)} is not a token id: keys must be integers from 0 to ${vocabSize - 1}, written as strings`;
    if (!(v >= -100 && v <= 100)) return `logit_bias[${JSON.stringify(k)}] is ${v}; a bias must be in [-100, 100]`;
    out.push([Number(k), v]);
  }
  return out;
}

/** Little-endian float32 bytes of `v` in base64 (OpenAI's encoding_format "base64"), whatever the host's byte order. */
function _float32Base64(v: Float32Array): string {
  const buf = Buffer.alloc(v.length * 4);
  for (let i = 0; i < v.length; i++) buf.writeFloatLE(v[i]!, i * 4);
  return buf.toString("base64");
}

/** Text of a chat message's content (text parts joined). */
const contentText = (c: ChatBody["messages"][number]["content"]) => (typeof c === "string" ? c : c.map((p) => p.text).join(""));

/**
 * Builds the fastify app (not yet listening).
 * @example
 * const app = createServer({ engine, servedModelNames: ["gpt2", "default"] });
 * await app.listen({ port: 8000, host: "127.0.0.1" });
 */
export function createServer(opts: ServerOptions): FastifyInstance {
  const { engine, embedder } = opts;
  if (!engine && !embedder) throw new ValueError("createServer: pass an engine (completions, chat), an embedder (embeddings), or both");
  const names = opts.servedModelNames?.length ? opts.servedModelNames : [engine?.modelName ?? `megalith-${embedder!.kind}`];
  const maxEmbeddingInputs = opts.maxEmbeddingInputs ?? MAX_EMBEDDING_INPUTS;
  const chatTemplate = opts.chatTemplate ?? compileChatTemplate(DEFAULT_CHAT_TEMPLATE, "the default template");
  const bodyLimit = opts.maxBodyBytes ?? 1 << 20;
  const headersTimeout = opts.headersTimeoutMs ?? 10_000;
  const keepAliveTimeout = opts.keepAliveTimeoutMs ?? 5_000;
  const maxConnections = opts.maxConnections ?? 1000;
  const app = Fastify({
    logger: opts.logger ?? false, bodyLimit, keepAliveTimeout, requestTimeout: 30_000,
    // Our own Node server: connectionsCheckingInterval is a constructor option only, and the
    // default (30 s) would let header timeouts run up to 30 s late.
    serverFactory: (handler) => {
      const server: Server = createHttpServer(
        { headersTimeout, requestTimeout: 30_000, keepAliveTimeout, connectionsCheckingInterval: Math.min(1000, headersTimeout) },
        handler as (req: IncomingMessage, res: ServerResponse) => void,
      );
      guardConnections(server, maxConnections);
      return server;
    },
  });
  const metrics = new ServerMetrics(engine);

  app.removeContentTypeParser("application/json");
  app.addContentTypeParser("application/json", { parseAs: "string" }, (_req, body, done) => {
    try {
      done(null, parseJsonBody(body as string));
    } catch (e) {
      done(e as Error, undefined);
    }
  });
  app.setErrorHandler((err: Error & { statusCode?: number; code?: string }, _req, reply) => {
    if (err instanceof BodyError) return sendError(reply, 400, err.message, "invalid_request_error", null, err.code);
    if (err.code === "FST_ERR_CTP_BODY_TOO_LARGE") return sendError(reply, 413, `request body is larger than the limit of ${bodyLimit} bytes`, "invalid_request_error", null, "body_too_large");
    if (err.code === "FST_ERR_CTP_INVALID_MEDIA_TYPE") return sendError(reply, 415, "Content-Type must be application/json", "invalid_request_error");
    if (err.statusCode === 400 || err instanceof SyntaxError || err.code === "FST_ERR_CTP_EMPTY_JSON_BODY") {
      return sendError(reply, 400, `malformed JSON body: ${err.message}`, "invalid_request_error", null, "invalid_json");
    }
    if (err instanceof ValueError) return sendError(reply, 400, err.message, "invalid_request_error");
    return sendError(reply, 500, `internal error: ${err.message}`, "server_error");
  });

  // Methods by path, collected as routes are added: a known path with another method is a 405
  // naming the allowed ones (no table kept by hand).
  const methods = new Map<string, Set<string>>();
  app.addHook("onRoute", (r) => {
    const set = methods.get(r.url) ?? new Set<string>();
    for (const m of [r.method].flat()) set.add(m);
    methods.set(r.url, set);
  });
  app.setNotFoundHandler((req, reply) => {
    const allowed = methods.get(req.url.split("?")[0]!);
    if (allowed) {
      const allow = [...allowed].sort().join(", ");
      reply.header("Allow", allow);
      return sendError(reply, 405, `method ${req.method} is not allowed on ${req.url.split("?")[0]}; use ${allow}`, "invalid_request_error", null, "method_not_allowed");
    }
    return sendError(reply, 404, `no route ${req.method} ${req.url}`, "not_found_error");
  });
  app.addHook("onResponse", async (_req, reply) => {
    if (reply.statusCode >= 400) metrics.refused.inc({ status: String(reply.statusCode) });
  });

  app.addHook("onRequest", async (req, reply) => {
    if (!opts.apiKey || req.url === "/health") return;
    const h = req.headers.authorization ?? "";
    const m = /^Bearer\s+(.+)$/i.exec(h);
    if (!m || !keyMatches(m[1]!, opts.apiKey)) {
      return sendError(reply, 401, "invalid or missing API key (send Authorization: Bearer <key>)", "authentication_error", null, "invalid_api_key");
    }
  });

  app.get("/health", async () => ({ status: "ok" }));
  // Without an engine there is no step loop to stall: an embedder is ready once built.
  app.get("/ready", async (_req, reply) => (!engine || engine.ready() ? { status: "ready" } : reply.code(503).send({ status: "not ready" })));
  app.get("/metrics", async (_req, reply) => reply.type(metrics.contentType).send(await metrics.render()));
  app.get("/v1/models", async () => ({
    object: "list",
    data: names.map((id) => ({ id, object: "model", created: 0, owned_by: "megalith", max_model_len: engine?.contextLength ?? embedder!.maxTokens })),
  }));

  /** Unknown `model`: 404 model_not_found, naming the served ones (as OpenAI and vLLM answer). */
  const unknownModel = (reply: FastifyReply, model: string) =>
    sendError(reply, 404, `The model \`${model}\` does not exist. This server serves: ${names.join(", ")}`, "invalid_request_error", "model", "model_not_found");

  /** The generation routes of a server without an engine. */
  const embeddingsOnly = (reply: FastifyReply) =>
    sendError(reply, 400, `${names[0]} is ${embedder?.kind === "bert" ? "an encoder (BERT)" : "served for embeddings only"}; it serves /v1/embeddings only`, "invalid_request_error", "model", "embeddings_only");

  app.post("/v1/completions", async (req, reply) => {
    const arrival = performance.now();
    if (!engine) return embeddingsOnly(reply);
    const parsed = CompletionBody.safeParse(req.body);
    if (!parsed.success) {
      const i = firstIssue(parsed.error);
      return sendError(reply, 400, i.message, "invalid_request_error", i.param);
    }
    const b = parsed.data;
    const promptText = typeof b.prompt === "string" ? b.prompt : typeof b.prompt[0] === "string" ? (b.prompt[0] as string) : null;
    const early = checkBeforeTokenizing(engine, reply, b, promptText ?? "", "prompt");
    if (early) return early;
    const tokens = promptText !== null ? engine.encode(promptText) : (b.prompt as number[]);
    return generate(engine, req, reply, b, tokens, b.logprobs ?? 0, "completion", b.echo ? promptText ?? "" : "", arrival);
  });

  app.post("/v1/chat/completions", async (req, reply) => {
    const arrival = performance.now();
    if (!engine) return embeddingsOnly(reply);
    const parsed = ChatBody.safeParse(req.body);
    if (!parsed.success) {
      const i = firstIssue(parsed.error);
      return sendError(reply, 400, i.message, "invalid_request_error", i.param);
    }
    const b = parsed.data;
    const messages = b.messages.map((m) => ({ role: m.role, content: contentText(m.content), ...(m.name !== undefined ? { name: m.name } : {}) }));
    const early = checkBeforeTokenizing(engine, reply, b, messages.map((m) => m.content).join(""), "messages");
    if (early) return early;
    let prompt: string;
    try {
      prompt = chatTemplate.render(messages);
    } catch (e) {
      return sendError(reply, 400, (e as Error).message, "invalid_request_error", "messages");
    }
    const tokens = engine.encode(prompt);
    return generate(engine, req, reply, b, tokens, b.logprobs ? Math.max(b.top_logprobs ?? 0, 0) : 0, "chat", "", arrival);
  });

  /**
   * OpenAI's embeddings: a vector per input, in input order, as numbers or as base64 of
   * little-endian float32 (what the official client asks for by default). Every input is
   * checked (the body's shape, then each input's tokens against the context) before any runs.
   * `dimensions` other than the model's width is refused, not truncated: cutting a mean-pooled
   * vector short only means something for models trained for it (Matryoshka), which these are not.
   */
  app.post("/v1/embeddings", async (req, reply) => {
    const arrival = performance.now();
    if (!embedder) {
      return sendError(reply, 404, `${names[0]} is served without an embedding model; this server does not serve /v1/embeddings`, "not_found_error", null, "embeddings_not_served");
    }
    const parsed = EmbeddingBody.safeParse(req.body);
    if (!parsed.success) {
      const i = firstIssue(parsed.error);
      return sendError(reply, 400, i.message, "invalid_request_error", i.param);
    }
    const b = parsed.data;
    if (b.model != null && !names.includes(b.model)) return unknownModel(reply, b.model);
    const inputs = embeddingInputs(b.input, maxEmbeddingInputs);
    if (!Array.isArray(inputs)) return sendError(reply, 400, inputs.message, "invalid_request_error", "input");
    if (b.dimensions != null && b.dimensions !== embedder.dim) {
      return sendError(reply, 400, `dimensions ${b.dimensions} is not supported: this model's embeddings have ${embedder.dim} dimensions and are not truncated; omit dimensions or send ${embedder.dim}`, "invalid_request_error", "dimensions");
    }
    const abort = new AbortController();
    reply.raw.on("close", () => {
      if (!reply.raw.writableFinished) abort.abort();
    });
    let result: Awaited<ReturnType<typeof embedTexts>>;
    try {
      result = await embedTexts(embedder, inputs, { normalize: opts.normalizeEmbeddings ?? true, signal: abort.signal });
    } catch (e) {
      if (e instanceof EmbeddingInputError) {
        return sendError(reply, 400, e.message, "invalid_request_error", "input", e.problem === "empty" ? null : e.problem);
      }
      if (abort.signal.aborted) return;  // the client left; nothing to answer
      throw e;
    }
    const base64 = b.encoding_format === "base64";
    metrics.embeddingRequests.inc();
    metrics.embeddingInputs.inc(inputs.length);
    metrics.embeddingTokens.inc(result.promptTokens);
    metrics.embeddingLatency.observe((performance.now() - arrival) / 1000);
    return reply.send({
      object: "list",
      data: result.vectors.map((v, index) => ({ object: "embedding", index, embedding: base64 ? _float32Base64(v) : Array.from(v) })),
      model: b.model ?? names[0]!,
      usage: { prompt_tokens: result.promptTokens, total_tokens: result.promptTokens },
    });
  });

  /**
   * The checks that need no tokens: model name, response_format, and the prompt's bytes. Every
   * token of byte-level BPE covers at least one byte and at most engine.maxTokenBytes, so text of
   * B bytes has at least ceil(B / maxTokenBytes) tokens; when that alone leaves no room for one
   * generated token, the request cannot fit whatever its tokenization.
   */
  function checkBeforeTokenizing(engine: EngineLike, reply: FastifyReply, b: CompletionBody | ChatBody, text: string, param: string): FastifyReply | null {
    if (b.model != null && !names.includes(b.model)) return unknownModel(reply, b.model);
    const rf = b.response_format;
    if (rf != null && rf.type !== "text") {
      return sendError(reply, 400, `response_format type ${JSON.stringify(rf.type)} is not supported: this server generates plain text only; omit response_format or send {"type": "text"}`, "invalid_request_error", "response_format");
    }
    const bytes = Buffer.byteLength(text, "utf8");
    const atLeast = Math.ceil(bytes / engine.maxTokenBytes);
    if (atLeast + 1 > engine.contextLength) {
      return sendError(reply, 400, `the ${param} ${param === "prompt" ? "is" : "are"} ${bytes} bytes, so at least ${atLeast} tokens (a token is at most ${engine.maxTokenBytes} bytes), but the model's maximum context length is ${engine.contextLength} tokens; shorten it`, "invalid_request_error", param, "context_length_exceeded");
    }
    return null;
  }

  async function generate(
    engine: EngineLike, req: FastifyRequest, reply: FastifyReply, b: CompletionBody | ChatBody, promptTokens: number[], logprobs: number,
    kind: "completion" | "chat", echo: string, arrival: number,
  ): Promise<FastifyReply | void> {
    const param = kind === "chat" ? "messages" : "prompt";
    const ctx = engine.contextLength;
    if (promptTokens.length === 0) return sendError(reply, 400, "the prompt is empty", "invalid_request_error", param);
    if (promptTokens.length + 1 > ctx) {
      return sendError(reply, 400, `the prompt has ${promptTokens.length} tokens but the model's maximum context length is ${ctx} tokens, which leaves no room for a generated token; shorten the ${param}`, "invalid_request_error", param, "context_length_exceeded");
    }
    const asked = ("max_completion_tokens" in b ? b.max_completion_tokens : undefined) ?? b.max_tokens ?? null;
    if (asked !== null && promptTokens.length + asked > ctx) {
      const which = "max_completion_tokens" in b && b.max_completion_tokens != null ? "max_completion_tokens" : "max_tokens";
      return sendError(reply, 400,
        `This model's maximum context length is ${ctx} tokens. However, you requested ${promptTokens.length + asked} tokens (${promptTokens.length} in the ${param}, ${asked} in the completion). Please reduce the length of the ${param} or ${which}.`,
        "invalid_request_error", which, "context_length_exceeded");
    }
    // Without an explicit limit: OpenAI's defaults, clipped to the room left.
    const maxTokens = asked ?? Math.min(kind === "chat" ? 256 : 16, ctx - promptTokens.length);
    const logitBias = logitBiasFrom(b.logit_bias, engine.vocabSize);
    if (typeof logitBias === "string") return sendError(reply, 400, logitBias, "invalid_request_error", "logit_bias");
    let sampling: SamplingParams;
    try {
      sampling = samplingFrom(b, logprobs, logitBias);
    } catch (e) {
      return sendError(reply, 400, (e as Error).message, "invalid_request_error");
    }
    const wantLogprobs = kind === "chat" ? Boolean((b as ChatBody).logprobs) : (b as CompletionBody).logprobs != null;
    const stop = b.stop == null ? [] : typeof b.stop === "string" ? [b.stop] : b.stop;
    const id = `${kind === "chat" ? "chatcmpl" : "cmpl"}-${randomUUID().replace(/-/g, "")}`;
    const model = b.model ?? names[0]!;
    const request: GenerationRequest = {
      requestId: id, promptTokens, sampling, maxTokens, stop, stopTokenIds: [...(b.stop_token_ids ?? []), engine.eotToken], n: b.n ?? 1,
    };
    const abort = new AbortController();
    // The response's "close" fires when the connection goes away (or after the response is
    // done); a close before the end means the client left: cancel the request.
    reply.raw.on("close", () => {
      if (!reply.raw.writableFinished) abort.abort();
    });
    let events: AsyncIterable<EngineEvent>;
    try {
      events = engine.submit(request, abort.signal);
    } catch (e) {
      if (e instanceof EngineRejection) {
        reply.header("Retry-After", String(e.retryAfterS));
        return sendError(reply, e.reason === "queue_full" ? 429 : 503, e.message, e.reason === "queue_full" ? "rate_limit_error" : "server_error", null, e.reason);
      }
      throw e;
    }
    // Latency as the client sees it: first delta (TTFT), gaps between one choice's deltas (ITL).
    let first = true;
    const lastDelta = new Map<number, number>();
    const observe = (ev: EngineEvent) => {
      if (ev.type !== "delta") return;
      const now = performance.now();
      if (first) metrics.ttft.observe((now - arrival) / 1000);
      first = false;
      const last = lastDelta.get(ev.index);
      if (last !== undefined) metrics.itl.observe((now - last) / 1000);
      lastDelta.set(ev.index, now);
    };
    const created = Math.floor(Date.now() / 1000);
    const object = kind === "chat" ? "chat.completion" : "text_completion";
    const lp = (l: Extract<EngineEvent, { type: "delta" }>["logprobs"]) =>
      kind === "chat"
        ? { content: l.map((t) => ({ token: t.token, logprob: t.logprob, bytes: [...Buffer.from(t.token)], top_logprobs: t.top.map((x) => ({ token: x.token, logprob: x.logprob, bytes: [...Buffer.from(x.token)] })) })) }
        : { tokens: l.map((t) => t.token), token_logprobs: l.map((t) => t.logprob), top_logprobs: l.map((t) => Object.fromEntries(t.top.map((x) => [x.token, x.logprob]))), text_offset: [] as number[] };

    if (b.stream) {
      reply.raw.writeHead(200, { "Content-Type": "text/event-stream", "Cache-Control": "no-cache", Connection: "keep-alive" });
      reply.hijack();
      const send = (obj: unknown) => { if (!reply.raw.writableEnded) reply.raw.write(`data: ${JSON.stringify(obj)}\n\n`); };
      const chunk = (choices: unknown[], usage?: unknown) => send({ id, object: kind === "chat" ? "chat.completion.chunk" : "text_completion", created, model, choices, ...(usage !== undefined ? { usage } : {}) });
      if (kind === "chat") for (let i = 0; i < request.n; i++) chunk([{ index: i, delta: { role: "assistant", content: "" }, logprobs: null, finish_reason: null }]);
      else if (echo) for (let i = 0; i < request.n; i++) chunk([{ index: i, text: echo, logprobs: null, finish_reason: null }]);
      try {
        for await (const ev of events) {
          observe(ev);
          if (ev.type === "delta") {
            chunk([kind === "chat"
              ? { index: ev.index, delta: { content: ev.text }, logprobs: wantLogprobs ? lp(ev.logprobs) : null, finish_reason: null }
              : { index: ev.index, text: ev.text, logprobs: wantLogprobs ? lp(ev.logprobs) : null, finish_reason: null }]);
          } else if (ev.type === "finish") {
            if (ev.reason === "error") send({ error: { message: ev.error ?? "generation failed", type: "server_error", param: null, code: "engine_error" } });
            chunk([kind === "chat" ? { index: ev.index, delta: {}, logprobs: null, finish_reason: ev.reason === "abort" ? "abort" : ev.reason } : { index: ev.index, text: "", logprobs: null, finish_reason: ev.reason }]);
          } else if (ev.type === "done" && b.stream_options?.include_usage) {
            chunk([], { prompt_tokens: ev.usage.promptTokens, completion_tokens: ev.usage.completionTokens, total_tokens: ev.usage.promptTokens + ev.usage.completionTokens });
          }
        }
      } catch (e) {
        send({ error: { message: (e as Error).message, type: "server_error", param: null, code: "engine_error" } });
      }
      if (!reply.raw.writableEnded) reply.raw.end("data: [DONE]\n\n");
      metrics.e2e.observe((performance.now() - arrival) / 1000);
      return;
    }

    const texts: string[] = Array.from({ length: request.n }, () => echo);
    const logs: Array<Extract<EngineEvent, { type: "delta" }>["logprobs"]> = Array.from({ length: request.n }, () => []);
    const reasons: string[] = Array.from({ length: request.n }, () => "length");
    let usage = { promptTokens: promptTokens.length, completionTokens: 0 };
    for await (const ev of events) {
      observe(ev);
      if (ev.type === "delta") {
        texts[ev.index] += ev.text;
        logs[ev.index]!.push(...ev.logprobs);
      } else if (ev.type === "finish") {
        if (ev.reason === "error") return sendError(reply, 500, `generation failed: ${ev.error ?? "unknown error"}`, "server_error", null, "engine_error");
        reasons[ev.index] = ev.reason;
      } else usage = ev.usage;
    }
    if (abort.signal.aborted) return;
    metrics.e2e.observe((performance.now() - arrival) / 1000);
    return reply.send({
      id, object, created, model,
      choices: texts.map((t, i) => kind === "chat"
        ? { index: i, message: { role: "assistant", content: t }, logprobs: wantLogprobs ? lp(logs[i]!) : null, finish_reason: reasons[i] }
        : { index: i, text: t, logprobs: wantLogprobs ? lp(logs[i]!) : null, finish_reason: reasons[i] }),
      usage: { prompt_tokens: usage.promptTokens, completion_tokens: usage.completionTokens, total_tokens: usage.promptTokens + usage.completionTokens },
    });
  }

  return app;
}
