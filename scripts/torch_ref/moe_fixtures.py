#!/usr/bin/env python3
"""Golden mixture-of-experts GPT fixtures from PyTorch, for test/models/moe_pytorch.test.ts.

A plain-PyTorch MoE GPT written here, independent of Megalith's code: GShard's one-hot
formulation (dispatch and combine tensors of shape (N, E, S) built from cumulative sums, the
experts run one by one), not Megalith's gather / grouped-GEMM path. Same semantics:
  - router: nn.Linear(C, E, bias=False) in the model dtype, softmax over experts; top-1 is the
    argmax, top-2 the argmax with the top-1 expert masked out; for k = 2 the two gates are
    renormalised to sum to 1; for k = 1 the gate is the top probability;
  - capacity S = min(N, ceil(capacity_factor * N * k / E)); first choices take slots in token
    order, then second choices after every kept first choice; a choice over capacity is dropped
    (adds nothing: the residual carries the token);
  - experts: C -> 4C -> GELU(tanh) -> C with biases;
  - aux loss E * sum_e f_e * P_e, f_e = share of the N * k choices (before dropping) picking e,
    P_e = mean router probability; z-loss mean(logsumexp(logits)^2); both summed over MoE
    layers; loss = cross-entropy + aux_coef * aux + z_coef * z.

Everything is computed in float64 from float32-representable weights, so the fixture is the
exact answer to float32 rounding and a float32 implementation is judged on its own error.
Each config writes <out>/<name>/fixture.safetensors with the weights under `param.<name>`
(Megalith's names, nn.Linear [out, in] layout), the batch, logits, the losses, every parameter
gradient (`grad.<name>`) and the total losses of 3 AdamW steps (nanoGPT's param groups).

Regenerate with:  /usr/bin/python3 scripts/torch_ref/moe_fixtures.py test/fixtures/moe
"""
import json
import math
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt_fixtures import write_safetensors

FIXTURE_MAGIC = "megalith-moe-fixture"
FIXTURE_VERSION = "1"

CONFIGS = {
    # Top-1 (Switch), an MoE MLP in every block, capacity factor 1.0: some tokens are dropped.
    "top1": dict(n_layer=2, n_head=2, n_embd=16, n_positions=16, vocab_size=37, B=3, T=8, seed=11,
                 num_experts=4, top_k=1, capacity_factor=1.0, every=1, aux_loss_coef=0.1, z_loss_coef=0.01),
    # Top-2 (GShard), MoE in blocks 1 and 3 (every=2), dense MLPs in 0 and 2; capacity drops second choices.
    "top2": dict(n_layer=4, n_head=2, n_embd=16, n_positions=16, vocab_size=41, B=2, T=10, seed=12,
                 num_experts=4, top_k=2, capacity_factor=1.0, every=2, aux_loss_coef=0.1, z_loss_coef=0.01),
}
ADAMW = dict(lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
STEPS = 3


class Expert(nn.Module):
    def __init__(self, C):
        super().__init__()
        self.c_fc = nn.Linear(C, 4 * C)
        self.c_proj = nn.Linear(4 * C, C)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class MoE(nn.Module):
    def __init__(self, C, E, k, capacity_factor):
        super().__init__()
        self.gate = nn.Linear(C, E, bias=False)
        self.experts = nn.ModuleList(Expert(C) for _ in range(E))
        self.E, self.k, self.cf = E, k, capacity_factor
        self.stats = None

    def forward(self, x):
        B, T, C = x.shape
        N, E, k = B * T, self.E, self.k
        xf = x.reshape(N, C)
        logits = self.gate(xf)                                         # (N, E)
        probs = logits.softmax(-1)
        cap = min(N, math.ceil(self.cf * N * k / E))
        idx1 = probs.argmax(-1)
        mask1 = F.one_hot(idx1, E).to(x.dtype)                          # (N, E)
        g1 = (probs * mask1).sum(-1)                                    # (N)
        choices = [mask1]
        if k == 2:
            idx2 = probs.masked_fill(mask1.bool(), float("-inf")).argmax(-1)
            mask2 = F.one_hot(idx2, E).to(x.dtype)
            g2 = (probs * mask2).sum(-1)
            denom = g1 + g2
            g1, g2 = g1 / denom, g2 / denom
            choices.append(mask2)
        # Slot positions: cumulative count per expert in token order; second choices start after
        # the kept first choices.
        pos1 = (torch.cumsum(mask1, 0) - 1) * mask1
        keep1 = mask1 * (pos1 < cap)
        dispatch = keep1.unsqueeze(-1) * F.one_hot((pos1 * keep1).long(), cap).to(x.dtype)      # (N, E, S)
        combine = g1[:, None, None] * dispatch
        if k == 2:
            base = keep1.sum(0, keepdim=True)                           # (1, E) slots used by first choices
            pos2 = (torch.cumsum(mask2, 0) - 1 + base) * mask2
            keep2 = mask2 * (pos2 < cap)
            d2 = keep2.unsqueeze(-1) * F.one_hot((pos2 * keep2).long(), cap).to(x.dtype)
            dispatch = dispatch + d2
            combine = combine + g2[:, None, None] * d2
        expert_in = torch.einsum("nes,nc->esc", dispatch, xf)          # (E, S, C)
        expert_out = torch.stack([self.experts[e](expert_in[e]) for e in range(E)])   # (E, S, C)
        y = torch.einsum("nes,esc->nc", combine, expert_out)           # (N, C)
        f = sum(choices).sum(0) / (N * k)                               # (E), a constant
        aux = E * (f.detach() * probs.mean(0)).sum()
        z = torch.logsumexp(logits, -1).square().mean()
        kept = float(sum(c.sum() for c in ([keep1, keep2] if k == 2 else [keep1])))
        top = probs.topk(min(E, k + 1), -1).values
        gap = float((top[:, k - 1] - top[:, k]).min()) if E > k else 1.0
        self.stats = dict(dropped=1 - kept / (N * k), gap=gap)
        return y.reshape(B, T, C), aux, z


class Block(nn.Module):
    def __init__(self, C, H, moe):
        super().__init__()
        self.ln_1 = nn.LayerNorm(C, eps=1e-5)
        self.c_attn = nn.Linear(C, 3 * C)
        self.attn_proj = nn.Linear(C, C)
        self.ln_2 = nn.LayerNorm(C, eps=1e-5)
        self.moe = moe
        if moe is None:
            self.c_fc = nn.Linear(C, 4 * C)
            self.mlp_proj = nn.Linear(4 * C, C)
        self.n_head = H

    def forward(self, x):
        B, T, C = x.shape
        H, D = self.n_head, C // self.n_head
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (z.view(B, T, H, D).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(D)
        mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
        att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        x = x + self.attn_proj(y)
        h = self.ln_2(x)
        if self.moe is None:
            return x + self.mlp_proj(F.gelu(self.c_fc(h), approximate="tanh")), None
        m, aux, z = self.moe(h)
        return x + m, (aux, z)


class MoEGPT(nn.Module):
    def __init__(self, c):
        super().__init__()
        C = c["n_embd"]
        self.wte = nn.Embedding(c["vocab_size"], C)
        self.wpe = nn.Embedding(c["n_positions"], C)
        self.h = nn.ModuleList(
            Block(C, c["n_head"], MoE(C, c["num_experts"], c["top_k"], c["capacity_factor"]) if (i + 1) % c["every"] == 0 else None)
            for i in range(c["n_layer"]))
        self.ln_f = nn.LayerNorm(C, eps=1e-5)
        self.aux_coef, self.z_coef = c["aux_loss_coef"], c["z_loss_coef"]

    def forward(self, idx, targets):
        T = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(T))
        aux = z = 0.0
        for b in self.h:
            x, r = b(x)
            if r is not None:
                aux, z = aux + r[0], z + r[1]
        logits = self.ln_f(x) @ self.wte.weight.t()
        ce = F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1), ignore_index=-100)
        return logits, ce + self.aux_coef * aux + self.z_coef * z, ce, aux, z


def megalith_name(name):
    """Torch module names -> Megalith's parameter names (same [out, in] layout)."""
    if ".moe." in name:
        return name.replace(".moe.", ".mlp.")  # h.i.mlp.gate.weight, h.i.mlp.experts.j.c_fc.weight ...
    name = name.replace(".attn_proj.", ".attn.c_proj.").replace(".c_attn.", ".attn.c_attn.")
    return name.replace(".c_fc.", ".mlp.c_fc.").replace(".mlp_proj.", ".mlp.c_proj.")


def main(out_root):
    torch.set_num_threads(1)
    for cname, c in CONFIGS.items():
        torch.manual_seed(c["seed"])
        model = MoEGPT(c)
        for name, p in model.named_parameters():
            ln_gain = name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name == "ln_f.weight"
            torch.nn.init.normal_(p, mean=1.0 if ln_gain else 0.0, std=0.1)
        names = {n: megalith_name(n) for n, _ in model.named_parameters()}
        assert len(set(names.values())) == len(names), "parameter names collide"
        fx = {f"param.{names[n]}": p.detach().clone() for n, p in model.named_parameters()}
        model.double()

        idx = torch.randint(0, c["vocab_size"], (c["B"], c["T"]))
        targets = torch.randint(0, c["vocab_size"], (c["B"], c["T"]))
        targets[0, 1] = -100
        logits, loss, ce, aux, z = model(idx, targets)
        stats = [b.moe.stats for b in model.h if b.moe is not None]
        assert all(s["dropped"] > 0 for s in stats), f"{cname}: capacity dropping must be active, got {stats}"
        assert all(s["gap"] > 1e-4 for s in stats), f"{cname}: a near-tie in top-k routing ({stats}); pick another seed"
        loss.backward()
        f32 = lambda t: t.detach().to(torch.float32).reshape(-1) if t.dim() == 0 else t.detach().to(torch.float32)
        fx.update({"idx": idx.to(torch.int32), "targets": targets.to(torch.int32), "logits": f32(logits),
                   "loss": f32(loss), "lm_loss": f32(ce), "aux_loss": f32(aux), "z_loss": f32(z)})
        for n, p in model.named_parameters():
            fx[f"grad.{names[n]}"] = p.grad.detach().to(torch.float32).clone()

        decay = [p for p in model.parameters() if p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.dim() < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": ADAMW["weight_decay"]},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=ADAMW["lr"], betas=ADAMW["betas"], eps=ADAMW["eps"])
        model.zero_grad()
        losses = []
        for _ in range(STEPS):
            opt.zero_grad()
            _, l, _, _, _ = model(idx, targets)
            l.backward()
            opt.step()
            losses.append(l.item())
        fx["adamw_losses"] = torch.tensor(losses, dtype=torch.float32)
        config = {k: v for k, v in c.items() if k not in ("B", "T", "seed")}
        meta = {"magic": FIXTURE_MAGIC, "version": FIXTURE_VERSION, "torch": torch.__version__, "config": json.dumps(config),
                "adamw": json.dumps(ADAMW), "steps": str(STEPS), "dropped": json.dumps([round(s["dropped"], 4) for s in stats])}
        out = os.path.join(out_root, cname)
        os.makedirs(out, exist_ok=True)
        write_safetensors(os.path.join(out, "fixture.safetensors"), fx, meta)
        print(f"{cname}: loss {loss.item():.6f} (ce {ce.item():.6f}, aux {aux.item():.6f}, z {z.item():.6f}), "
              f"dropped {[round(s['dropped'], 3) for s in stats]}, adamw losses {losses[0]:.5f} -> {losses[-1]:.5f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "test/fixtures/moe")
