/**
 * Request bodies of the OpenAI-compatible routes, validated with zod (strict: unknown
 * parameters are a 400, as the issue asks, naming the parameter).
 */
import { z } from "zod";

const stop = z.union([z.string(), z.array(z.string()).max(8)]).nullable().optional();

/** Sampling fields shared by both routes (OpenAI names plus vLLM's extras). */
const sampling = {
  model: z.string().optional(),
  max_tokens: z.number().int().min(1).nullable().optional(),
  temperature: z.number().min(0).max(2).nullable().optional(),
  top_p: z.number().gt(0).max(1).nullable().optional(),
  top_k: z.number().int().min(-1).nullable().optional(),
  min_p: z.number().min(0).max(1).nullable().optional(),
  repetition_penalty: z.number().gt(0).max(10).nullable().optional(),
  presence_penalty: z.number().min(-2).max(2).nullable().optional(),
  frequency_penalty: z.number().min(-2).max(2).nullable().optional(),
  n: z.number().int().min(1).max(16).nullable().optional(),
  seed: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER).nullable().optional(),
  stop,
  stop_token_ids: z.array(z.number().int().min(0)).max(64).nullable().optional(),
  stream: z.boolean().nullable().optional(),
  stream_options: z.object({ include_usage: z.boolean().optional() }).strict().nullable().optional(),
  user: z.string().optional(),
  /** OpenAI's map of token id (a string) -> bias in [-100, 100]; keys and range checked by the server. */
  logit_bias: z.record(z.string(), z.number()).nullable().optional(),
  /** Only {type: "text"} is served; any other type gets a 400 from the server that says so. */
  response_format: z.object({ type: z.string() }).passthrough().nullable().optional(),
};

export const CompletionBody = z
  .object({
    ...sampling,
    prompt: z.union([z.string(), z.array(z.string()).length(1), z.array(z.number().int().min(0)).min(1)]),
    logprobs: z.number().int().min(0).max(20).nullable().optional(),
    echo: z.boolean().nullable().optional(),
  })
  .strict();
export type CompletionBody = z.infer<typeof CompletionBody>;

export const ChatBody = z
  .object({
    ...sampling,
    messages: z
      .array(
        z.object({
          role: z.enum(["system", "user", "assistant", "tool", "developer"]),
          content: z.union([z.string(), z.array(z.object({ type: z.literal("text"), text: z.string() }).strict())]),
          name: z.string().optional(),
        }).strict(),
      )
      .min(1),
    max_completion_tokens: z.number().int().min(1).nullable().optional(),
    logprobs: z.boolean().nullable().optional(),
    top_logprobs: z.number().int().min(0).max(20).nullable().optional(),
  })
  .strict();
export type ChatBody = z.infer<typeof ChatBody>;

/** The first problem of a failed parse as an OpenAI error (message, param). */
export function firstIssue(err: z.ZodError): { message: string; param: string | null } {
  const i = err.issues[0]!;
  if (i.code === "unrecognized_keys") {
    return { message: `Unrecognized request argument supplied: ${i.keys.join(", ")}`, param: i.keys[0] ?? null };
  }
  const param = i.path.length ? i.path.join(".") : null;
  return { message: `${param ?? "body"}: ${i.message}`, param };
}

/** Most inputs in one /v1/embeddings request (OpenAI's limit). */
export const MAX_EMBEDDING_INPUTS = 2048;

/**
 * POST /v1/embeddings. `input` is checked by `embeddingInputs` (its messages name the bad item,
 * which zod's union errors cannot); `dimensions` is checked against the model by the server.
 */
export const EmbeddingBody = z
  .object({
    model: z.string().optional(),
    input: z.unknown(),
    encoding_format: z.enum(["float", "base64"]).nullable().optional(),
    dimensions: z.number().int().min(1).nullable().optional(),
    user: z.string().optional(),
  })
  .strict();
export type EmbeddingBody = z.infer<typeof EmbeddingBody>;

const INPUT_SHAPES = "a string, an array of strings, an array of token ids, or an array of arrays of token ids";

/** How a JSON value reads in an error message ("a number", "null", "an object"). */
function _kind(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "an array";
  return typeof v === "object" ? "an object" : `a ${typeof v}`;
}

/** Whether `v` is a token id as JSON can carry one: an integer >= 0. */
const _isId = (v: unknown): v is number => typeof v === "number" && Number.isSafeInteger(v) && v >= 0;

/**
 * The embeddings request's `input` as a list of inputs (a text or token ids each), or the
 * problem as a message naming the item: OpenAI's four shapes (string, string[], number[],
 * number[][]), no empty strings or lists, at most `maxInputs` inputs.
 * @example
 * embeddingInputs("hi");                  // ["hi"]
 * embeddingInputs([[1, 2], [3]]);         // [[1, 2], [3]]
 * embeddingInputs(["a", ""]);             // { message: "input[1] is an empty string; ..." }
 */
export function embeddingInputs(input: unknown, maxInputs = MAX_EMBEDDING_INPUTS): Array<string | number[]> | { message: string } {
  if (input === undefined) return { message: `input is required: ${INPUT_SHAPES}` };
  if (typeof input === "string") return input.length ? [input] : { message: "input is an empty string; send at least one character" };
  if (!Array.isArray(input)) return { message: `input must be ${INPUT_SHAPES}; got ${_kind(input)}` };
  if (input.length === 0) return { message: "input is an empty array; send at least one input" };
  // A flat array of numbers is one input of token ids, so the count limit applies to the others.
  if (typeof input[0] === "number") {
    const bad = input.findIndex((v) => !_isId(v));
    return bad < 0 ? [input as number[]] : { message: `input[${bad}] is ${JSON.stringify(input[bad])}; an array of token ids holds integers >= 0 only` };
  }
  if (input.length > maxInputs) return { message: `input has ${input.length} items; at most ${maxInputs} inputs are accepted per request` };
  if (typeof input[0] !== "string" && !Array.isArray(input[0])) return { message: `input[0] is ${_kind(input[0])}; input must be ${INPUT_SHAPES}` };
  const out: Array<string | number[]> = [];
  const first = typeof input[0] === "string" ? "string" : "ids";
  for (let i = 0; i < input.length; i++) {
    const v: unknown = input[i];
    if (typeof v === "string" && first === "string") {
      if (!v.length) return { message: `input[${i}] is an empty string; every input needs at least one character` };
      out.push(v);
    } else if (Array.isArray(v) && first === "ids") {
      if (!v.length) return { message: `input[${i}] is an empty array of token ids; every input needs at least one token` };
      const bad = v.findIndex((x) => !_isId(x));
      if (bad >= 0) return { message: `input[${i}][${bad}] is ${JSON.stringify(v[bad])}; token ids are integers >= 0` };
      out.push(v as number[]);
    } else {
      const want = first === "string" ? "a string, like input[0]" : "an array of token ids, like input[0]";
      return { message: `input[${i}] is ${_kind(v)} but must be ${want}: input must be ${INPUT_SHAPES}` };
    }
  }
  return out;
}
