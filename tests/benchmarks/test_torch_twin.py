"""The PyTorch twin computes our model and our optimizer (benchmarks/torch_peer.py,
torch_twin.py): with the recipe's options, its logits and gradients equal engine.Model's,
and its Muon step equals engine.optim's, so "our recipe in PyTorch" in the race is ours."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import engine  # noqa: E402
from engine import Model, Optimizer, TrainConfig  # noqa: E402
from engine.config import parse_arch  # noqa: E402

torch = pytest.importorskip("torch")

ARCHS = ["", "mlp=relu2,qk_norm,pos=rope,tie_head=false,softcap=15"]


@pytest.mark.parametrize("arch", ARCHS, ids=["gpt2", "recipe"])
def test_the_twin_computes_our_logits_and_gradients(arch):
    from torch_peer import TorchGPT

    cfg = engine.tiny.replace(**parse_arch(arch))
    m = Model(cfg, seed=3)
    m.params *= 2.0
    net = TorchGPT(m)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, cfg.vocab_size, (3, 16)), rng.integers(0, cfg.vocab_size, (3, 16))
    np.testing.assert_allclose(net(torch.from_numpy(x)).detach().numpy(), m.logits(x),
                               rtol=1e-4, atol=1e-4)
    loss, grad = m.loss_and_grad(x, y)
    tl = net(torch.from_numpy(x), torch.from_numpy(y))
    tl.backward()
    assert tl.item() == pytest.approx(loss, rel=1e-5)
    for name in m.param_names():
        np.testing.assert_allclose(net.w(name).grad.numpy(), m.layout.view(grad, name),
                                   rtol=1e-3, atol=1e-5, err_msg=name)


def test_the_twins_muon_is_ours():
    from torch_peer import TorchGPT, TorchMuon
    from torch_twin import Recipe

    from engine.params import is_linear_weight

    cfg = engine.tiny.replace(mlp="relu2")
    m = Model(cfg, seed=0)
    net = TorchGPT(m)
    tcfg = TrainConfig(optimizer="muon", lr=3e-3, warmup_steps=0, grad_clip=None)
    opt = Optimizer(m.layout, tcfg)
    twin = TorchMuon([(n, net.w(n)) for n in m.param_names() if is_linear_weight(n)],
                     Recipe("ours", lr=3e-3, optimizer="muon"))
    rng = np.random.default_rng(1)
    for _ in range(2):
        x, y = rng.integers(0, cfg.vocab_size, (2, 8)), rng.integers(0, cfg.vocab_size, (2, 8))
        with torch.no_grad():           # the same weights before the step (AdamW's part is
            for n in m.param_names():   # not the twin's to mirror here)
                net.w(n).copy_(torch.from_numpy(m.param(n)))
        _, g = m.loss_and_grad(x, y)
        opt.step(m.params, g, 3e-3)
        net.zero_grad()
        net(torch.from_numpy(x), torch.from_numpy(y)).backward()
        twin.step(3e-3)
        for n in m.param_names():
            if is_linear_weight(n):
                np.testing.assert_allclose(net.w(n).detach().numpy(), m.param(n),
                                           rtol=1e-4, atol=1e-6, err_msg=n)
