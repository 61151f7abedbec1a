// Which BERT layouts the config accepts: tensor parallelism for pretraining and BERT
// classifiers (heads and intermediate units must split evenly), never pipeline/expert/sequence
// parallelism, nor tp with LoRA or for tasks without a tensor-parallel form (sft, GPT classifiers).
import { test } from "node:test";
import assert from "node:assert/strict";
import { ValueError } from "../../src/core/errors.js";
import { validateConfig } from "../../src/train/config.js";

const bert = (parallel: Record<string, unknown>, model: Record<string, unknown> = {}, extra: Record<string, unknown> = {}) => ({
  out_dir: "runs/x",
  model: { type: "bert", n_layer: 2, n_head: 4, n_embd: 32, block_size: 32, vocab_size: 30522, ...model },
  train: { max_steps: 10 },
  parallel,
  ...extra,
});
const classify = { finetune: { task: "classify", data: "labels.jsonl" } };

function rejects(raw: unknown, ...patterns: RegExp[]): void {
  assert.throws(() => validateConfig(raw), (e: unknown) => {
    assert.ok(e instanceof ValueError, `expected ValueError, got ${String(e)}`);
    for (const p of patterns) assert.match(e.message, p);
    return true;
  });
}

test("`validateConfig()` accepts parallel.tp for BERT pretraining and BERT classifiers, with dp and ZeRO", () => {
  assert.equal(validateConfig(bert({ tp: 2 })).parallel.tp, 2);
  assert.equal(validateConfig(bert({ tp: 4, dp: 2, zero: 1 })).parallel.tp, 4);
  assert.equal(validateConfig(bert({ tp: 2 }, {}, classify)).parallel.tp, 2);
  assert.equal(validateConfig(bert({ tp: 2 }, { intermediate_size: 48 })).model.intermediate_size, 48);
});

test("`validateConfig()` refuses BERT tp when n_head or intermediate_size does not split, naming the keys", () => {
  rejects(bert({ tp: 2 }, { n_head: 1, n_embd: 32 }), /parallel\.tp: model\.n_head \(1\) must be divisible by parallel\.tp \(2\)/);
  rejects(bert({ tp: 2 }, { intermediate_size: 45 }), /parallel\.tp: model\.intermediate_size \(45\) must be divisible by parallel\.tp \(2\)/);
});

test("`validateConfig()` keeps refusing pp, ep and sp for BERT, tp with LoRA, and tp for sft and GPT classifiers", () => {
  rejects(bert({ pp: 2 }), /parallel\.pp: model\.type "bert" runs with data parallelism and ZeRO and tensor parallelism \(parallel\.tp\); use parallel\.pp=1 \(got 2\)/);
  rejects(bert({ tp: 2, sp: true }), /parallel\.sp: model\.type "bert" has no sequence parallelism/);
  rejects(bert({ tp: 2 }, {}, { finetune: { task: "classify", data: "labels.jsonl", lora: { r: 4 } } }), /finetune\.lora: LoRA adapters do not combine with tensor parallelism \(parallel\.tp=2\)/);
  rejects(bert({ tp: 2 }, { type: "gpt", vocab_size: 50304 }, { finetune: { task: "sft", data: "pairs.jsonl" } }), /parallel\.tp: finetune\.task "sft" runs with data parallelism and ZeRO only; use parallel\.tp=1 \(got 2\)/);
  rejects(bert({ tp: 2 }, { type: "gpt", vocab_size: 50304 }, classify), /parallel\.tp: finetune\.task "classify" runs with data parallelism and ZeRO only/);
});
