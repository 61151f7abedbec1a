/**
 * The OpenAI-compatible HTTP server: /v1/completions, /v1/chat/completions, /v1/models,
 * /health, /ready, /metrics, with SSE streaming.
 *
 * fastify is the HTTP layer (the ecosystem's fast, well-kept server: body limits, JSON parsing
 * and error hooks built in). Every failure is an OpenAI-style body {error: {message, type,
 * param, code}} with the right status; nothing a client sends can crash the process.
 */
import { createHash, randomUUID, timingSafeEqual } from "node:crypto";
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from "fastify";
import { ValueError } from "../core/errors.js";
import { DEFAULT_SAMPLING, validateSampling, type SamplingParams } from "../inference/sample/index.js";
import { EngineRejection, type EngineEvent, type EngineLike, type GenerationRequest } from "../inference/engine/types.js";
import { ChatBody, CompletionBody, firstIssue } from "./schemas.js";
import { renderMetrics } from "./metrics.js";

export interface ServerOptions {
  engine: EngineLike;
  /** Require `Authorization: Bearer <key>` on every route but /health. */
  apiKey?: string;
  /** Largest accepted request body in bytes (413 above). Default 1 MiB. */
  maxBodyBytes?: number;
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

/** A plain chat template for models without one: "role: content" lines, then "assistant:". */
export function renderChat(messages: ChatBody["messages"]): string {
  const text = (c: ChatBody["messages"][number]["content"]) => (typeof c === "string" ? c : c.map((p) => p.text).join(""));
  return messages.map((m) => `${m.role}: ${text(m.content)}\n`).join("") + "assistant:";
}

function samplingFrom(b: CompletionBody | ChatBody, logprobs: number): SamplingParams {
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
  };
  validateSampling(p);
  return p;
}

/**
 * Builds the fastify app (not yet listening).
 * @example
 * const app = createServer({ engine }); await app.listen({ port: 8000, host: "127.0.0.1" });
 */
export function createServer(opts: ServerOptions): FastifyInstance {
  const { engine } = opts;
  const app = Fastify({ logger: opts.logger ?? false, bodyLimit: opts.maxBodyBytes ?? 1 << 20 });

  app.setErrorHandler((err: Error & { statusCode?: number; code?: string }, _req, reply) => {
    if (err.code === "FST_ERR_CTP_BODY_TOO_LARGE") return sendError(reply, 413, `request body is larger than the limit of ${opts.maxBodyBytes ?? 1 << 20} bytes`, "invalid_request_error", null, "body_too_large");
    if (err.code === "FST_ERR_CTP_INVALID_MEDIA_TYPE") return sendError(reply, 415, "Content-Type must be application/json", "invalid_request_error");
    if (err.statusCode === 400 || err instanceof SyntaxError || err.code === "FST_ERR_CTP_EMPTY_JSON_BODY") {
      return sendError(reply, 400, `malformed JSON body: ${err.message}`, "invalid_request_error", null, "invalid_json");
    }
    if (err instanceof ValueError) return sendError(reply, 400, err.message, "invalid_request_error");
    return sendError(reply, 500, `internal error: ${err.message}`, "server_error");
  });
  app.setNotFoundHandler((req, reply) => sendError(reply, 404, `no route ${req.method} ${req.url}`, "not_found_error"));

  app.addHook("onRequest", async (req, reply) => {
    if (!opts.apiKey || req.url === "/health") return;
    const h = req.headers.authorization ?? "";
    const m = /^Bearer\s+(.+)$/i.exec(h);
    if (!m || !keyMatches(m[1]!, opts.apiKey)) {
      return sendError(reply, 401, "invalid or missing API key (send Authorization: Bearer <key>)", "authentication_error", null, "invalid_api_key");
    }
  });

  app.get("/health", async () => ({ status: "ok" }));
  app.get("/ready", async (_req, reply) => (engine.ready() ? { status: "ready" } : reply.code(503).send({ status: "not ready" })));
  app.get("/metrics", async (_req, reply) => reply.type("text/plain; version=0.0.4").send(renderMetrics(engine.stats())));
  app.get("/v1/models", async () => ({
    object: "list",
    data: [{ id: engine.modelName, object: "model", created: 0, owned_by: "megalith", max_model_len: engine.contextLength }],
  }));

  app.post("/v1/completions", async (req, reply) => {
    const parsed = CompletionBody.safeParse(req.body);
    if (!parsed.success) {
      const i = firstIssue(parsed.error);
      return sendError(reply, 400, i.message, "invalid_request_error", i.param);
    }
    const b = parsed.data;
    const promptText = typeof b.prompt === "string" ? b.prompt : typeof b.prompt[0] === "string" ? (b.prompt[0] as string) : null;
    const tokens = promptText !== null ? engine.encode(promptText) : (b.prompt as number[]);
    return generate(req, reply, b, tokens, b.logprobs ?? 0, "completion", b.echo ? promptText ?? "" : "");
  });

  app.post("/v1/chat/completions", async (req, reply) => {
    const parsed = ChatBody.safeParse(req.body);
    if (!parsed.success) {
      const i = firstIssue(parsed.error);
      return sendError(reply, 400, i.message, "invalid_request_error", i.param);
    }
    const b = parsed.data;
    const tokens = engine.encode(renderChat(b.messages));
    return generate(req, reply, b, tokens, b.logprobs ? Math.max(b.top_logprobs ?? 0, 0) || (b.logprobs ? 0 : 0) : 0, "chat", "");
  });

  async function generate(
    req: FastifyRequest, reply: FastifyReply, b: CompletionBody | ChatBody, promptTokens: number[], logprobs: number,
    kind: "completion" | "chat", echo: string,
  ): Promise<FastifyReply | void> {
    const maxTokens = ("max_completion_tokens" in b ? b.max_completion_tokens : undefined) ?? b.max_tokens ?? (kind === "chat" ? 256 : 16);
    if (promptTokens.length === 0) return sendError(reply, 400, "the prompt is empty", "invalid_request_error", kind === "chat" ? "messages" : "prompt");
    if (promptTokens.length + 1 > engine.contextLength) {
      return sendError(reply, 400, `the prompt has ${promptTokens.length} tokens but the model's context length is ${engine.contextLength}`, "invalid_request_error", kind === "chat" ? "messages" : "prompt", "context_length_exceeded");
    }
    let sampling: SamplingParams;
    try {
      sampling = samplingFrom(b, logprobs);
    } catch (e) {
      return sendError(reply, 400, (e as Error).message, "invalid_request_error");
    }
    const wantLogprobs = kind === "chat" ? Boolean((b as ChatBody).logprobs) : (b as CompletionBody).logprobs != null;
    const stop = b.stop == null ? [] : typeof b.stop === "string" ? [b.stop] : b.stop;
    const id = `${kind === "chat" ? "chatcmpl" : "cmpl"}-${randomUUID().replace(/-/g, "")}`;
    const request: GenerationRequest = {
      requestId: id, promptTokens, sampling, maxTokens: Math.min(maxTokens, engine.contextLength - promptTokens.length),
      stop, stopTokenIds: [...(b.stop_token_ids ?? []), engine.eotToken], n: b.n ?? 1,
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
      const chunk = (choices: unknown[], usage?: unknown) => send({ id, object: kind === "chat" ? "chat.completion.chunk" : "text_completion", created, model: engine.modelName, choices, ...(usage !== undefined ? { usage } : {}) });
      if (kind === "chat") for (let i = 0; i < request.n; i++) chunk([{ index: i, delta: { role: "assistant", content: "" }, logprobs: null, finish_reason: null }]);
      else if (echo) for (let i = 0; i < request.n; i++) chunk([{ index: i, text: echo, logprobs: null, finish_reason: null }]);
      try {
        for await (const ev of events) {
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
      return;
    }

    const texts: string[] = Array.from({ length: request.n }, () => echo);
    const logs: Array<Extract<EngineEvent, { type: "delta" }>["logprobs"]> = Array.from({ length: request.n }, () => []);
    const reasons: string[] = Array.from({ length: request.n }, () => "length");
    let usage = { promptTokens: promptTokens.length, completionTokens: 0 };
    for await (const ev of events) {
      if (ev.type === "delta") {
        texts[ev.index] += ev.text;
        logs[ev.index]!.push(...ev.logprobs);
      } else if (ev.type === "finish") {
        if (ev.reason === "error") return sendError(reply, 500, `generation failed: ${ev.error ?? "unknown error"}`, "server_error", null, "engine_error");
        reasons[ev.index] = ev.reason;
      } else usage = ev.usage;
    }
    if (abort.signal.aborted) return;
    return reply.send({
      id, object, created, model: engine.modelName,
      choices: texts.map((t, i) => kind === "chat"
        ? { index: i, message: { role: "assistant", content: t }, logprobs: wantLogprobs ? lp(logs[i]!) : null, finish_reason: reasons[i] }
        : { index: i, text: t, logprobs: wantLogprobs ? lp(logs[i]!) : null, finish_reason: reasons[i] }),
      usage: { prompt_tokens: usage.promptTokens, completion_tokens: usage.completionTokens, total_tokens: usage.promptTokens + usage.completionTokens },
    });
  }

  return app;
}
