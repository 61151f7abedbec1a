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
