#!/usr/bin/env python3
"""PyTorch side of `npm run bench -- serve`: batch-1 greedy decoding with a KV cache on the
reference GPT-2 (gpt_ref.py), reporting decode tokens/s. Prints one JSON object.

usage: bench_decode.py n_layer n_head n_embd n_positions vocab prompt_len new_tokens threads
"""
import json
import math
import sys
import time

import torch
import torch.nn.functional as F

from gpt_ref import GPT


@torch.no_grad()
def decode(model, idx, new_tokens):
    """Greedy decoding with per-layer k/v caches (the same math as Block.forward, incrementally)."""
    caches = [None] * len(model.h)
    x_ids = idx
    pos0 = 0
    out = []
    for step in range(new_tokens + 1):
        T = x_ids.shape[1]
        x = model.wte(x_ids) + model.wpe(torch.arange(pos0, pos0 + T))
        for li, b in enumerate(model.h):
            B, _, C = x.shape
            H, D = b.n_head, C // b.n_head
            q, k, v = b.c_attn(b.ln_1(x)).split(C, dim=2)
            q, k, v = (z.view(B, T, H, D).transpose(1, 2) for z in (q, k, v))
            if caches[li] is not None:
                k = torch.cat([caches[li][0], k], dim=2)
                v = torch.cat([caches[li][1], v], dim=2)
            caches[li] = (k, v)
            att = (q @ k.transpose(-2, -1)) / math.sqrt(D)
            S = k.shape[2]
            mask = torch.ones(T, S, dtype=torch.bool).tril(diagonal=S - T)
            att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
            y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
            x = x + b.attn_proj(y)
            x = x + b.mlp_proj(F.gelu(b.c_fc(b.ln_2(x)), approximate="tanh"))
        logits = model.ln_f(x[:, -1:, :]) @ model.wte.weight.t()
        nxt = logits.argmax(-1)
        out.append(int(nxt))
        pos0 += T
        x_ids = nxt
        if step == 0:
            t0 = time.perf_counter()  # time decode steps only, not the prompt
    return out, (time.perf_counter() - t0)


def main():
    L, H, C, P, V, prompt_len, new_tokens, threads = (int(a) for a in sys.argv[1:9])
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = GPT(L, H, C, P, V).eval()
    idx = torch.randint(0, V, (1, prompt_len))
    decode(model, idx, 4)  # warm-up
    _, secs = decode(model, idx, new_tokens)
    print(json.dumps({"torch": torch.__version__, "tokens_per_s": new_tokens / secs}))


if __name__ == "__main__":
    main()
