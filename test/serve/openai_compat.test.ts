// The server over a real engine (a tiny random GPT, GPT-2's tokenizer), driven by the official
// openai client: logit_bias bans and forces tokens, a Jinja chat template from the model
// directory's tokenizer_config.json changes the prompt the model sees, and a full waiting queue
// answers 429 with Retry-After.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import OpenAI from "openai";
import { GPT, loadTokenizer } from "../../src/index.js";
import { Engine } from "../../src/inference/index.js";
import { createServer, loadChatTemplate, type ServerOptions } from "../../src/serve/index.js";

const tokenizer = loadTokenizer("gpt2");
let model: GPT;
let root = "";

before(() => {
  model = new GPT({ nLayer: 1, nHead: 2, nEmbd: 32, blockSize: 96, vocabSize: 50304 }, { seed: 11 });
  root = mkdtempSync(join(tmpdir(), "megalith-openai-compat-"));
});
after(() => rmSync(root, { recursive: true, force: true }));

async function start(engineOpts: ConstructorParameters<typeof Engine>[2] = {}, serverOpts: Omit<ServerOptions, "engine"> = {}) {
  const engine = new Engine(model, tokenizer, { modelName: "tiny", kvCacheBytes: 8 * 2 ** 20, ...engineOpts });
  const app = createServer({ engine, ...serverOpts });
  await app.listen({ port: 0, host: "127.0.0.1" });
  const base = `http://127.0.0.1:${(app.server.address() as { port: number }).port}`;
  const client = new OpenAI({ apiKey: "none", baseURL: `${base}/v1`, maxRetries: 0 });
  return { engine, app, base, client, close: async () => { await app.close(); await engine.shutdown(); } };
}

test("logit_bias through the openai client: +100 forces a token, -100 bans the token greedy or seeded sampling would pick", async () => {
  const s = await start();
  try {
    for (const temperature of [0, 1]) {
      const ask = (logit_bias?: Record<string, number>, max_tokens = 8) =>
        s.client.completions.create({ model: "tiny", prompt: "The jury said", max_tokens, temperature, seed: 3, logit_bias: logit_bias ?? null });
      const forced = await ask({ "262": 100 });
      assert.equal(forced.choices[0]!.text, " the".repeat(8), `T ${temperature}`);
      // The first token as the request picks it unbiased, then banned: the same seed picks another.
      const first = (await ask(undefined, 1)).choices[0]!.text;
      const ids = tokenizer.encode(first);
      assert.equal(ids.length, 1, `T ${temperature}: the first token ${JSON.stringify(first)} does not re-encode to one id`);
      const banned = (await ask({ [String(ids[0])]: -100 }, 1)).choices[0]!.text;
      assert.notEqual(banned, first, `T ${temperature}: banning ${ids[0]} (${JSON.stringify(first)}) changed nothing`);
    }
    await assert.rejects(s.client.completions.create({ model: "tiny", prompt: "x", logit_bias: { "50257": 5 } }), /not a token id.*0 to 50256/);
  } finally {
    await s.close();
  }
});

test("a Jinja chat_template in tokenizer_config.json is the prompt the model sees (bos_token, filters, generation prompt)", async () => {
  const dir = join(root, "with-template");
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, "tokenizer_config.json"), JSON.stringify({
    bos_token: { content: "<|endoftext|>" },
    chat_template: "{{ bos_token }}{% for m in messages %}[{{ m['role'] | upper }}] {{ m['content'] | trim }}\n{% endfor %}{% if add_generation_prompt %}[ASSISTANT]{% endif %}",
  }));
  const messages = [{ role: "system" as const, content: "Be brief. " }, { role: "user" as const, content: [{ type: "text" as const, text: "Hello" }, { type: "text" as const, text: " there" }] }];
  const expected = "<|endoftext|>[SYSTEM] Be brief.\n[USER] Hello there\n[ASSISTANT]";
  const chatTemplate = loadChatTemplate(dir);
  assert.equal(chatTemplate.source, join(dir, "tokenizer_config.json"));
  const s = await start({}, { chatTemplate });
  const seen: string[] = [];
  const encode = s.engine.encode.bind(s.engine);
  s.engine.encode = (text: string) => (seen.push(text), encode(text));
  const plain = await start();
  try {
    const r = await s.client.chat.completions.create({ model: "tiny", messages, max_tokens: 4, temperature: 0 });
    assert.deepEqual(seen, [expected]);
    assert.equal(r.usage!.prompt_tokens, tokenizer.encode(expected).length);
    const d = await plain.client.chat.completions.create({ model: "tiny", messages, max_tokens: 4, temperature: 0 });
    assert.equal(d.usage!.prompt_tokens, tokenizer.encode("system: Be brief. \nuser: Hello there\nassistant:").length, "the default template is the old \"role: content\" format");
    // --chat-template FILE wins over tokenizer_config.json.
    const file = join(root, "override.jinja");
    writeFileSync(file, "{% for m in messages %}{{ m.content }}{% endfor %}");
    assert.equal(loadChatTemplate(dir, file).render([{ role: "user", content: "only this" }]), "only this");
    // A template that raises is the client's 400, with the template's message.
    writeFileSync(file, "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversations must start with a user message') }}{% endif %}x");
    const strict = await start({}, { chatTemplate: loadChatTemplate(dir, file) });
    try {
      await assert.rejects(strict.client.chat.completions.create({ model: "tiny", messages: [{ role: "system", content: "hi" }] }), (e: unknown) => {
        assert.ok(e instanceof OpenAI.BadRequestError);
        assert.match(String((e as Error).message), /must start with a user message/);
        return true;
      });
    } finally {
      await strict.close();
    }
  } finally {
    await s.close();
    await plain.close();
  }
});

test("a full waiting queue answers 429 with Retry-After; the admitted requests finish", async () => {
  const s = await start({ maxNumSeqs: 1, maxWaiting: 1 });
  try {
    // A runs (a long stream), B waits behind it (--max-num-seqs 1), C finds the queue full.
    const a = await s.client.completions.create({ model: "tiny", prompt: "A", max_tokens: 60, temperature: 0, stream: true });
    const iter = a[Symbol.asyncIterator]();
    await iter.next();
    const b = s.client.completions.create({ model: "tiny", prompt: "B", max_tokens: 4, temperature: 0 });
    for (let i = 0; i < 100 && s.engine.stats().waiting < 1; i++) await new Promise((r) => setTimeout(r, 5));
    assert.equal(s.engine.stats().waiting, 1);
    await assert.rejects(s.client.completions.create({ model: "tiny", prompt: "C", max_tokens: 4 }), (e: unknown) => {
      assert.ok(e instanceof OpenAI.RateLimitError, String(e));
      const err = e as InstanceType<typeof OpenAI.RateLimitError>;
      assert.equal(err.status, 429);
      assert.equal(err.headers?.["retry-after"], "1");
      assert.match(err.message, /waiting queue is full \(1 requests\)/);
      return true;
    });
    let n = 1;
    while (!(await iter.next()).done) n++;
    assert.ok(n > 1);
    assert.equal((await b).choices[0]!.finish_reason, "length");
    const metrics = await (await fetch(`${s.base}/metrics`)).text();
    assert.match(metrics, /megalith_request_rejections_total\{reason="queue_full"\} 1/);
    assert.match(metrics, /megalith_time_to_first_token_seconds_count 2/);
    assert.match(metrics, /megalith_e2e_request_latency_seconds_count 2/);
    assert.match(metrics, /megalith_inter_token_latency_seconds_bucket\{le="\+Inf"\} [1-9]/);
    assert.match(metrics, /megalith_http_refused_total\{status="429"\} 1/);
  } finally {
    await s.close();
  }
});
