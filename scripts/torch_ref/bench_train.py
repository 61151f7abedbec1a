#!/usr/bin/env python3
"""PyTorch side of `npm run bench -- train`: times full GPT-2 training steps (forward, backward,
AdamW) with the same architecture as Megalith's, and prints one JSON object.

usage: bench_train.py n_layer n_head n_embd block_size vocab_size batch steps threads [fp32|bf16]

With bf16 the forward runs under torch.autocast("cpu", dtype=torch.bfloat16) (fp32 master
weights and optimizer, as Megalith's train.precision=bf16 does).
"""
import contextlib
import json
import sys
import time

import torch

from gpt_ref import GPT


def main():
    L, H, C, T, V, B, steps, threads = (int(a) for a in sys.argv[1:9])
    precision = sys.argv[9] if len(sys.argv) > 9 else "fp32"
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else contextlib.nullcontext
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = GPT(L, H, C, T, V)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    idx = torch.randint(0, V, (B, T))
    tgt = torch.randint(0, V, (B, T))
    times = []
    for s in range(steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with autocast():
            _, loss = model(idx, tgt)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    best = min(times[1:])  # the first step warms up
    print(json.dumps({"torch": torch.__version__, "threads": threads, "precision": precision, "step_s": best, "mean_s": sum(times[1:]) / steps,
                      "params": sum(p.numel() for p in model.parameters())}))


if __name__ == "__main__":
    main()
