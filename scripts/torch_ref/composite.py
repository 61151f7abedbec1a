#!/usr/bin/env python3
"""PyTorch reference for the composite check (test/integration/pytorch_composite.test.ts).

Reads {inputs: {name: {shape, data}}, config} as JSON on stdin, runs
linear -> layer_norm -> gelu -> causal attention -> linear -> cross_entropy in float64,
and prints {loss, grads: {name: flat list}} as JSON. Requires Debian's python3-torch.
"""
import json
import sys

import torch
import torch.nn.functional as F


def main() -> None:
    req = json.load(sys.stdin)
    cfg = req["config"]
    t = {k: torch.tensor(v["data"], dtype=torch.float64).reshape(v["shape"]) for k, v in req["inputs"].items()}
    for k in t:
        if k != "targets":
            t[k].requires_grad_(True)
    B, T, C, H = cfg["B"], cfg["T"], cfg["C"], cfg["H"]
    D = C // H
    h = F.linear(t["x"], t["w1"], t["b1"])
    h = F.layer_norm(h, [C], t["ln_w"], t["ln_b"], 1e-5)
    h = F.gelu(h, approximate=cfg["gelu"])
    qkv = F.linear(h, t["w_qkv"])
    q, k, v = qkv.split(C, dim=-1)
    q, k, v = (z.view(B, T, H, D).transpose(1, 2) for z in (q, k, v))
    # torch 1.13 has no F.scaled_dot_product_attention: the textbook form, as nanoGPT writes it.
    att = (q @ k.transpose(-2, -1)) / (D ** 0.5)
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
    att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
    y = att @ v
    y = y.transpose(1, 2).reshape(B * T, C)
    logits = F.linear(y, t["w_out"])
    targets = t["targets"].long().reshape(-1)
    loss = F.cross_entropy(logits, targets, ignore_index=-100)
    loss.backward()
    out = {"loss": loss.item(), "grads": {k: v.grad.reshape(-1).tolist() for k, v in t.items() if k != "targets"}}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
