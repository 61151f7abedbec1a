#!/usr/bin/env python3
"""Golden BertForPreTraining fixtures from PyTorch, for test/models/bert_pytorch.test.ts.

The model is the plain-PyTorch BertForPreTraining of bert_ref.py (HF's math and names, no
transformers package). Weights are random float32 values (not HF's init: random LayerNorm
gains and biases too, so every gradient path carries signal); everything is then computed in
float64, so the fixture is the exact answer to float32 rounding and a float32 implementation
is judged on its own error. Dropout is 0 (the reference has none) for determinism.

Each config writes <out>/<name>/:
  config.json          HF BertConfig fields
  model.safetensors    the state_dict under HF names, tied decoder copies included (as a
                       pytorch_model.bin conversion would have them), float32
  fixture.safetensors  the batch (input_ids, token_type_ids, attention_mask with padding,
                       mlm_labels with -100s, nsp_labels), the full prediction logits, the NSP
                       logits, mlm/nsp/total losses, every parameter gradient (`grad.<name>`),
                       the total loss before each of 3 AdamW steps and after the last
                       (`adamw_losses`, 4 values) and every parameter after them (`adamw.<name>`)

Regenerate with:  /usr/bin/python3 scripts/torch_ref/bert_fixtures.py test/fixtures/bert
"""
import json
import os
import sys

import torch

from bert_ref import BertForPreTraining
from gpt_fixtures import write_safetensors

FIXTURE_MAGIC = "megalith-bert-fixture"
FIXTURE_VERSION = "1"

CONFIGS = {
    # intermediate_size is not 4 * hidden_size, max_position_embeddings > T (unused rows get
    # exact-zero gradients), padding in rows 1 and 2.
    "tiny": dict(num_hidden_layers=2, num_attention_heads=4, hidden_size=32, intermediate_size=48,
                 max_position_embeddings=16, vocab_size=101, type_vocab_size=2, B=3, T=12, pad=[0, 3, 5], seed=21),
}
# BERT's own AdamW settings (Devlin et al.: betas 0.9/0.999, eps 1e-6, weight decay 0.01), on
# Megalith's groups: decay on >= 2-D tensors only. eps 1e-6 also keeps gradients that are zero
# in exact arithmetic (the attention key biases: softmax ignores a per-query shift) from being
# turned into +-lr steps by their float32 rounding noise.
ADAMW = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01)
STEPS = 3


def hf_config(c):
    cfg = {k: c[k] for k in ("num_hidden_layers", "num_attention_heads", "hidden_size", "intermediate_size",
                             "max_position_embeddings", "vocab_size", "type_vocab_size")}
    cfg.update(architectures=["BertForPreTraining"], model_type="bert", hidden_act="gelu", hidden_dropout_prob=0.0,
               attention_probs_dropout_prob=0.0, layer_norm_eps=1e-12, pad_token_id=0, initializer_range=0.02,
               position_embedding_type="absolute", torch_dtype="float32")
    return cfg


def make_batch(c, g):
    B, T, V = c["B"], c["T"], c["vocab_size"]
    input_ids = torch.randint(1, V, (B, T), generator=g)
    attention_mask = torch.ones(B, T, dtype=torch.long)
    token_type_ids = torch.zeros(B, T, dtype=torch.long)
    mlm_labels = torch.full((B, T), -100, dtype=torch.long)
    for b in range(B):
        n = T - c["pad"][b]
        attention_mask[b, n:] = 0
        input_ids[b, n:] = 0  # pad_token_id
        token_type_ids[b, n // 2:n] = 1  # segment B; padding stays type 0, as HF tokenizers do
        picks = torch.randperm(n - 1, generator=g)[: max(2, n // 4)] + 1  # never [CLS] at 0
        mlm_labels[b, picks] = torch.randint(0, V, (len(picks),), generator=g)
    nsp_labels = torch.tensor([0, 1, 1][:B])
    return dict(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask,
                mlm_labels=mlm_labels, nsp_labels=nsp_labels)


def main(out_root):
    torch.set_num_threads(1)
    for cname, c in CONFIGS.items():
        torch.manual_seed(c["seed"])
        g = torch.Generator().manual_seed(c["seed"])
        cfg = hf_config(c)
        model = BertForPreTraining(cfg)
        with torch.no_grad():
            for name, p in model.named_parameters():
                gain = name.endswith("LayerNorm.weight")
                p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (1.0 if gain else 0.0))  # float32 values
        out = os.path.join(out_root, cname)
        os.makedirs(out, exist_ok=True)
        write_safetensors(os.path.join(out, "model.safetensors"), dict(model.state_dict()), {"format": "pt"})
        with open(os.path.join(out, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
            f.write("\n")

        model = model.double()
        batch = make_batch(c, g)
        args = (batch["input_ids"], batch["token_type_ids"], batch["attention_mask"], batch["mlm_labels"], batch["nsp_labels"])
        res = model(*args)
        res["loss"].backward()
        fx = {k: v.to(torch.int32) for k, v in batch.items()}
        fx["prediction_logits"] = res["prediction_logits"].float()
        fx["seq_relationship_logits"] = res["seq_relationship_logits"].float()
        for k in ("loss", "mlm_loss", "nsp_loss"):
            fx[k] = res[k].reshape(1).float()
        names = [n for n, _ in model.named_parameters()]
        for name, p in model.named_parameters():
            fx["grad." + name] = p.grad.float()

        decay = [p for p in model.parameters() if p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.dim() < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": ADAMW["weight_decay"]},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=ADAMW["lr"], betas=ADAMW["betas"], eps=ADAMW["eps"])
        losses = []
        for _ in range(STEPS):
            opt.zero_grad()
            loss = model(*args)["loss"]
            loss.backward()
            opt.step()
            losses.append(loss.item())
        with torch.no_grad():
            losses.append(model(*args)["loss"].item())
        fx["adamw_losses"] = torch.tensor(losses, dtype=torch.float32)
        for name, p in model.named_parameters():
            fx["adamw." + name] = p.detach().float()
        meta = {"magic": FIXTURE_MAGIC, "version": FIXTURE_VERSION, "torch": torch.__version__,
                "adamw": json.dumps(ADAMW), "steps": str(STEPS), "parameters": json.dumps(names)}
        write_safetensors(os.path.join(out, "fixture.safetensors"), fx, meta)
        print(f"{cname}: loss {res['loss'].item():.6f} (mlm {res['mlm_loss'].item():.6f}, nsp {res['nsp_loss'].item():.6f}), "
              f"adamw losses {' '.join(f'{l:.6f}' for l in losses)}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "test/fixtures/bert")
