#!/usr/bin/env python3
"""Golden GPT-2 fixtures from PyTorch (Debian's python3-torch), for test/models/gpt_pytorch.test.ts.

For each config below: random weights saved as a Hugging Face GPT-2 directory (config.json +
model.safetensors, Conv1D layout), and fixture.safetensors holding the batch, logits, loss,
every parameter gradient, and the losses of 10 AdamW steps (nanoGPT's param groups: weight
decay on >= 2-D tensors only). A minimal GPT-2 is written out here because the transformers
package is not available (gpt_ref.py); it is the same math as HF's GPT2LMHeadModel.

Regenerate with:  /usr/bin/python3 scripts/torch_ref/gpt_fixtures.py test/fixtures/gpt
"""
import json
import os
import struct
import sys

import torch

from gpt_ref import GPT

FIXTURE_MAGIC = "megalith-gpt-fixture"
FIXTURE_VERSION = "1"

CONFIGS = {
    "tiny": dict(n_layer=2, n_head=2, n_embd=32, n_positions=16, vocab_size=101, B=3, T=16, seed=1),
    "odd": dict(n_layer=3, n_head=3, n_embd=48, n_positions=24, vocab_size=257, B=2, T=19, seed=2),
}
ADAMW = dict(lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
STEPS = 10


def make_model(c):
    model = GPT(c["n_layer"], c["n_head"], c["n_embd"], c["n_positions"], c["vocab_size"])
    for name, p in model.named_parameters():
        # Random everything (not GPT-2's zero biases / unit LN weights), so every gradient path is exercised.
        ln_gain = name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name == "ln_f.weight"
        torch.nn.init.normal_(p, mean=1.0 if ln_gain else 0.0, std=0.1)
    return model


def hf_name(name):
    """Our torch module names -> HF GPT-2 names (and whether the weight is Conv1D)."""
    name = name.replace(".attn_proj.", ".attn.c_proj.").replace(".c_attn.", ".attn.c_attn.")
    name = name.replace(".c_fc.", ".mlp.c_fc.").replace(".mlp_proj.", ".mlp.c_proj.")
    conv = any(s in name for s in (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight"))
    return name, conv


def write_safetensors(path, tensors, metadata):
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous()
        dtype = {torch.float32: "F32", torch.int32: "I32"}[t.dtype]
        data = t.numpy().tobytes()
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(path + ".tmp", path)


def main(out_root):
    torch.set_num_threads(1)
    for cname, c in CONFIGS.items():
        torch.manual_seed(c["seed"])
        model = make_model(c)
        out = os.path.join(out_root, cname)
        os.makedirs(out, exist_ok=True)
        hf = {}
        for name, p in model.named_parameters():
            n, conv = hf_name(name)
            hf[n] = p.t() if conv else p
        write_safetensors(os.path.join(out, "model.safetensors"), hf, {"format": "pt"})
        cfg = {k: c[k] for k in ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size")}
        cfg.update(model_type="gpt2", layer_norm_epsilon=1e-5, activation_function="gelu_new")
        with open(os.path.join(out, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)

        idx = torch.randint(0, c["vocab_size"], (c["B"], c["T"]))
        targets = torch.randint(0, c["vocab_size"], (c["B"], c["T"]))
        targets[0, 1] = -100
        logits, loss = model(idx, targets)
        loss.backward()
        fx = {"idx": idx.to(torch.int32), "targets": targets.to(torch.int32), "logits": logits, "loss": loss.reshape(1)}
        for name, p in model.named_parameters():
            n, conv = hf_name(name)
            g = p.grad.detach().clone()  # clone: zero_grad() below zeroes .grad in place
            fx["grad." + n] = g.t() if conv else g  # HF layout, like the weights

        decay = [p for p in model.parameters() if p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.dim() < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": ADAMW["weight_decay"]},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=ADAMW["lr"], betas=ADAMW["betas"], eps=ADAMW["eps"])
        model.zero_grad()
        losses = []
        for _ in range(STEPS):
            opt.zero_grad()
            _, l = model(idx, targets)
            l.backward()
            opt.step()
            losses.append(l.item())
        fx["adamw_losses"] = torch.tensor(losses, dtype=torch.float32)
        meta = {"magic": FIXTURE_MAGIC, "version": FIXTURE_VERSION, "torch": torch.__version__,
                "adamw": json.dumps(ADAMW), "steps": str(STEPS)}
        write_safetensors(os.path.join(out, "fixture.safetensors"), fx, meta)
        print(f"{cname}: loss {loss.item():.6f}, adamw losses {losses[0]:.5f} -> {losses[-1]:.5f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "test/fixtures/gpt")
