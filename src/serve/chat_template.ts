/**
 * Chat templates: how /v1/chat/completions turns messages into the prompt text the model sees.
 *
 * The template is Jinja, as in Hugging Face's `tokenizer_config.json` (`chat_template`), rendered
 * with `@huggingface/jinja` (the implementation transformers.js uses, with transformers' own
 * trim_blocks / lstrip_blocks). Where it comes from, first match wins:
 *   1. `--chat-template FILE` (the file's text is the template);
 *   2. the model directory's `tokenizer_config.json` `chat_template` (a string, or Hugging Face's
 *      list of named templates, of which "default" is used);
 *   3. DEFAULT_CHAT_TEMPLATE: "role: content" lines, then "assistant:" (GPT-2 was not trained
 *      on a chat format; this one is plain text any model can continue).
 *
 * Variables a template sees: `messages` (role and content, content always a string: text parts
 * are joined), `add_generation_prompt` (true), `bos_token` and `eos_token` from
 * tokenizer_config.json (default "<|endoftext|>"), and the library's `raise_exception`.
 */
import { existsSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { Template } from "@huggingface/jinja";
import { ValueError } from "../core/errors.js";

/** Today's plain chat format as Jinja: "role: content\n" per message, then "assistant:". */
export const DEFAULT_CHAT_TEMPLATE =
  "{% for message in messages %}{{ message['role'] + ': ' + message['content'] }}\n{% endfor %}" +
  "{% if add_generation_prompt %}assistant:{% endif %}";

/** A chat message as the template sees it. */
export interface ChatMessage {
  role: string;
  content: string;
  name?: string;
}

/** A parsed template and what it renders with; `source` says where it came from (for logs). */
export interface ChatTemplate {
  readonly source: string;
  /** The prompt text for `messages` (ValueError when the template raises or fails). */
  render(messages: readonly ChatMessage[]): string;
}

const END_OF_TEXT = "<|endoftext|>";

/** A special token in tokenizer_config.json: a string or an AddedToken object {content}. */
function tokenText(v: unknown): string | undefined {
  if (typeof v === "string") return v;
  if (v && typeof v === "object" && typeof (v as { content?: unknown }).content === "string") return (v as { content: string }).content;
  return undefined;
}

/**
 * Parses `text` as a chat template.
 * @example
 * const t = compileChatTemplate(DEFAULT_CHAT_TEMPLATE, "default");
 * t.render([{ role: "user", content: "Hi" }]);  // "user: Hi\nassistant:"
 */
export function compileChatTemplate(text: string, source: string, tokens: { bos?: string; eos?: string } = {}): ChatTemplate {
  let template: Template;
  try {
    template = new Template(text);
  } catch (e) {
    throw new ValueError(`the chat template from ${source} is not valid Jinja: ${(e as Error).message}`);
  }
  const bos = tokens.bos ?? END_OF_TEXT, eos = tokens.eos ?? END_OF_TEXT;
  return {
    source,
    render(messages) {
      try {
        return template.render({ messages, add_generation_prompt: true, bos_token: bos, eos_token: eos });
      } catch (e) {
        throw new ValueError(`the chat template (${source}) failed on these messages: ${(e as Error).message}`);
      }
    },
  };
}

/**
 * The chat template of a model directory (see the file comment for the order); `overrideFile`
 * is `--chat-template FILE`. Errors name the file and what is wrong with it.
 * @example
 * const t = loadChatTemplate("runs/tiny/final");
 * t.render([{ role: "user", content: "Hi" }]);
 */
export function loadChatTemplate(modelDir: string, overrideFile?: string): ChatTemplate {
  const configPath = join(modelDir, "tokenizer_config.json");
  let config: Record<string, unknown> = {};
  if (existsSync(configPath)) {
    try {
      config = JSON.parse(readFileSync(configPath, "utf8")) as Record<string, unknown>;
    } catch (e) {
      throw new ValueError(`${configPath} is not valid JSON (${(e as Error).message}); fix it, or remove it to use the default chat template`);
    }
  }
  const tokens = { bos: tokenText(config.bos_token), eos: tokenText(config.eos_token) };
  if (overrideFile !== undefined) {
    if (!existsSync(overrideFile)) throw new ValueError(`--chat-template ${overrideFile}: no such file`);
    if (statSync(overrideFile).isDirectory()) throw new ValueError(`--chat-template ${overrideFile} is a directory; give a file holding a Jinja template`);
    return compileChatTemplate(readFileSync(overrideFile, "utf8"), overrideFile, tokens);
  }
  const t = config.chat_template;
  if (typeof t === "string") return compileChatTemplate(t, configPath, tokens);
  if (Array.isArray(t)) {
    const named = t.find((x) => x && (x as { name?: unknown }).name === "default") as { template?: unknown } | undefined;
    if (typeof named?.template === "string") return compileChatTemplate(named.template, `${configPath} (default)`, tokens);
    throw new ValueError(`${configPath}: chat_template is a list without a {"name": "default", "template": ...} entry; add one or pass --chat-template FILE`);
  }
  if (t !== undefined && t !== null) throw new ValueError(`${configPath}: chat_template must be a string, got ${typeof t}`);
  return compileChatTemplate(DEFAULT_CHAT_TEMPLATE, "the default template", tokens);
}
