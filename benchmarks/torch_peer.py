"""PyTorch eager implementation of the same GPT-2 math, used ONLY as the peer that
benchmarks measure against (PyTorch is never a requirement of the product).

The weights are copied from an engine.Model so both sides compute the same function.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from engine.optim import NS_COEFFS, NS_STEPS
from engine.params import is_linear_weight, is_matrix


class TorchGPT(torch.nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        cfg = model.config
        self.cfg = cfg
        self.names = list(model.param_names())       # the engine's names, layout order
        self.p = torch.nn.ParameterDict({
            n.replace(".", "_"): torch.nn.Parameter(torch.from_numpy(model.param(n).copy()))
            for n in self.names})

    def w(self, name):
        return self.p[name.replace(".", "_")]

    def _rope(self, x, T):
        """Rotary positions, NeoX halves (engine.block_kernels.rope_rotate)."""
        hs = x.shape[-1]
        cache = getattr(self, "_rope_cache", None)
        if cache is None or cache[0].shape[0] < T:
            inv = self.cfg.rope_base ** (-torch.arange(0, hs, 2, dtype=torch.float64) / hs)
            ang = torch.arange(self.cfg.context, dtype=torch.float64)[:, None] * inv[None, :]
            cache = self._rope_cache = (ang.cos().float(), ang.sin().float())
        cos, sin = cache[0][:T], cache[1][:T]
        a, b = x[..., :hs // 2], x[..., hs // 2:]
        return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)

    def forward(self, idx, targets=None, kv_out=None):
        """Logits (or the mean loss with targets); with kv_out (a list), each layer's k and
        v (B, NH, T, hs) are appended to it (the prefill of KV-cache decoding)."""
        cfg = self.cfg
        B, T = idx.shape
        C, NH = cfg.d_model, cfg.n_heads
        x = self.w("wte")[idx]
        if cfg.pos == "learned":
            x = x + self.w("wpe")[:T]
        for l in range(cfg.n_layers):
            h = f"h.{l}"
            a = F.layer_norm(x, (C,), self.w(f"{h}.ln1.w"), self.w(f"{h}.ln1.b"), 1e-5)
            qkv = torch.addmm(self.w(f"{h}.attn.qkv.b"), a.view(B * T, C),
                              self.w(f"{h}.attn.qkv.w")).view(B, T, 3 * C)
            q, k, v = (t.view(B, T, NH, C // NH).transpose(1, 2) for t in qkv.split(C, dim=2))
            if cfg.qk_norm:      # the recipe's options, as engine.block_kernels computes them
                q = F.rms_norm(q, (C // NH,), self.w(f"{h}.attn.q_norm.w"), 1e-6)
                k = F.rms_norm(k, (C // NH,), self.w(f"{h}.attn.k_norm.w"), 1e-6)
            if cfg.pos == "rope":
                q, k = self._rope(q, T), self._rope(k, T)
            if kv_out is not None:
                kv_out.append((k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            y = y.transpose(1, 2).reshape(B * T, C)
            x = x + torch.addmm(self.w(f"{h}.attn.proj.b"), y,
                                self.w(f"{h}.attn.proj.w")).view(B, T, C)
            m = F.layer_norm(x, (C,), self.w(f"{h}.ln2.w"), self.w(f"{h}.ln2.b"), 1e-5)
            f = torch.addmm(self.w(f"{h}.mlp.fc.b"), m.view(B * T, C), self.w(f"{h}.mlp.fc.w"))
            f = F.relu(f).square() if cfg.mlp == "relu2" else F.gelu(f, approximate="tanh")
            x = x + torch.addmm(self.w(f"{h}.mlp.proj.b"), f, self.w(f"{h}.mlp.proj.w")
                                ).view(B, T, C)
        x = F.layer_norm(x, (C,), self.w("lnf.w"), self.w("lnf.b"), 1e-5)
        logits = x @ self.w("wte" if cfg.tie_head else "head").T
        if cfg.softcap > 0:
            logits = cfg.softcap * torch.tanh(logits / cfg.softcap)
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1),
                               ignore_index=-1)

    @torch.no_grad()
    def decode(self, prompt: list[int], n_new: int) -> list[int]:
        """Greedy batch-1 decoding with a KV cache (the usual eager loop): the prompt is
        prefilled in one batched forward pass, then one token at a time."""
        cfg = self.cfg
        C, NH, L = cfg.d_model, cfg.n_heads, cfg.n_layers
        hs = C // NH
        kc = torch.zeros(L, NH, cfg.context, hs)
        vc = torch.zeros(L, NH, cfg.context, hs)
        P = len(prompt)
        kv: list = []
        logits = self.forward(torch.tensor([prompt]), kv_out=kv)[0, -1]
        for l, (k, v) in enumerate(kv):
            kc[l, :, :P] = k[0]
            vc[l, :, :P] = v[0]
        out = [int(torch.argmax(logits))]
        for pos in range(P, P + n_new - 1):
            x = self.w("wte")[out[-1]] + self.w("wpe")[pos]
            for l in range(L):
                h = f"h.{l}"
                a = F.layer_norm(x, (C,), self.w(f"{h}.ln1.w"), self.w(f"{h}.ln1.b"), 1e-5)
                qkv = torch.addmv(self.w(f"{h}.attn.qkv.b"), self.w(f"{h}.attn.qkv.w").T, a)
                q, k, v = qkv.split(C)
                kc[l, :, pos] = k.view(NH, hs)
                vc[l, :, pos] = v.view(NH, hs)
                att = (kc[l, :, :pos + 1] @ q.view(NH, hs, 1)).squeeze(-1) / math.sqrt(hs)
                y = (att.softmax(-1).unsqueeze(1) @ vc[l, :, :pos + 1]).reshape(C)
                x = x + torch.addmv(self.w(f"{h}.attn.proj.b"), self.w(f"{h}.attn.proj.w").T, y)
                m = F.layer_norm(x, (C,), self.w(f"{h}.ln2.w"), self.w(f"{h}.ln2.b"), 1e-5)
                f = F.gelu(torch.addmv(self.w(f"{h}.mlp.fc.b"), self.w(f"{h}.mlp.fc.w").T, m),
                           approximate="tanh")
                x = x + torch.addmv(self.w(f"{h}.mlp.proj.b"), self.w(f"{h}.mlp.proj.w").T, f)
            x = F.layer_norm(x, (C,), self.w("lnf.w"), self.w("lnf.b"), 1e-5)
            out.append(int(torch.argmax(self.w("wte") @ x)))
        return out


    @torch.no_grad()
    def decode_batch(self, prompts: list[list[int]], n_new: int) -> np.ndarray:
        """Greedy decoding of B prompts of one length at once (B, n_new): the batched form
        of `decode`, one matrix-matrix product per linear layer per step."""
        cfg = self.cfg
        C, NH, L = cfg.d_model, cfg.n_heads, cfg.n_layers
        hs = C // NH
        B, P = len(prompts), len(prompts[0])
        kc = torch.zeros(L, B, NH, cfg.context, hs)
        vc = torch.zeros(L, B, NH, cfg.context, hs)
        kv: list = []
        logits = self.forward(torch.tensor(prompts), kv_out=kv)[:, -1]
        for l, (k, v) in enumerate(kv):
            kc[l, :, :, :P] = k
            vc[l, :, :, :P] = v
        out = [torch.argmax(logits, -1)]
        for pos in range(P, P + n_new - 1):
            x = self.w("wte")[out[-1]] + self.w("wpe")[pos]
            for l in range(L):
                h = f"h.{l}"
                a = F.layer_norm(x, (C,), self.w(f"{h}.ln1.w"), self.w(f"{h}.ln1.b"), 1e-5)
                q, k, v = torch.addmm(self.w(f"{h}.attn.qkv.b"), a,
                                      self.w(f"{h}.attn.qkv.w")).split(C, dim=1)
                kc[l, :, :, pos] = k.view(B, NH, hs)
                vc[l, :, :, pos] = v.view(B, NH, hs)
                att = (kc[l, :, :, :pos + 1] @ q.view(B, NH, hs, 1)).squeeze(-1) / math.sqrt(hs)
                y = (att.softmax(-1).unsqueeze(2) @ vc[l, :, :, :pos + 1]).reshape(B, C)
                x = x + torch.addmm(self.w(f"{h}.attn.proj.b"), y, self.w(f"{h}.attn.proj.w"))
                m = F.layer_norm(x, (C,), self.w(f"{h}.ln2.w"), self.w(f"{h}.ln2.b"), 1e-5)
                f = F.gelu(torch.addmm(self.w(f"{h}.mlp.fc.b"), m, self.w(f"{h}.mlp.fc.w")),
                           approximate="tanh")
                x = x + torch.addmm(self.w(f"{h}.mlp.proj.b"), f, self.w(f"{h}.mlp.proj.w"))
            x = F.layer_norm(x, (C,), self.w("lnf.w"), self.w("lnf.b"), 1e-5)
            out.append(torch.argmax(x @ self.w("wte").T, -1))
        return torch.stack(out, 1).numpy()


class TorchMuon:
    """Muon as engine.optim runs it: Nesterov momentum, five Newton-Schulz iterations per
    matrix (the fused qkv as three), the update scaled to AdamW's RMS (muon_scale
    sqrt(max(rows, cols))), decoupled decay, the AdamW learning rate. `cfg`: anything with
    muon_momentum, muon_scale and weight_decay (a TrainConfig, the twin's Recipe)."""

    def __init__(self, named, cfg) -> None:
        self.named, self.cfg = named, cfg
        self.buf = {n: torch.zeros_like(p) for n, p in named}

    @staticmethod
    def orthogonalise(g):
        a, b, c = NS_COEFFS
        x = g / (g.norm() + 1e-7)
        wide = x.shape[0] <= x.shape[1]
        if not wide:
            x = x.T
        for _ in range(NS_STEPS):
            A = x @ x.T
            x = a * x + (b * A + c * (A @ A)) @ x
        return x if wide else x.T

    def step(self, lr: float) -> None:
        r = self.cfg
        with torch.no_grad():
            for n, p in self.named:
                g, b = p.grad, self.buf[n]
                b.mul_(r.muon_momentum).add_(g)
                d = g + r.muon_momentum * b
                parts = d.chunk(3, dim=1) if n.endswith("attn.qkv.w") else (d,)
                o = torch.cat([self.orthogonalise(x) * (r.muon_scale * math.sqrt(max(x.shape)))
                               for x in parts], dim=1)
                p.mul_(1.0 - lr * r.weight_decay).sub_(lr * o)


def torch_optimizers(module: TorchGPT, cfg) -> tuple[torch.optim.Optimizer, Optional[TorchMuon]]:
    """The optimizer of `cfg` (a TrainConfig, or the twin's Recipe: optimizer, lr, betas,
    eps, weight_decay) over `module`, as engine.optim splits it: AdamW with decoupled decay
    on the matrices (engine.params.is_matrix) and none on gains and biases, and for "muon"
    TorchMuon on the hidden matrices instead (step it after AdamW, at AdamW's rate)."""
    muon = cfg.optimizer == "muon"
    adam = [n for n in module.names if not (muon and is_linear_weight(n))]
    opt = torch.optim.AdamW(
        [{"params": [module.w(n) for n in adam if is_matrix(n)],
          "weight_decay": cfg.weight_decay},
         {"params": [module.w(n) for n in adam if not is_matrix(n)], "weight_decay": 0.0}],
        lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    matrices = (TorchMuon([(n, module.w(n)) for n in module.names if is_linear_weight(n)], cfg)
                if muon else None)
    return opt, matrices


def as_tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))
