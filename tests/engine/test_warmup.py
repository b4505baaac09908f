"""compile_kernels: numba's first-run compilation happens before a run's clock starts, is
announced only when it lasts, and covers every kernel a training step uses (issue 15);
compile_decoding covers every decoding kernel."""
import json
import logging
import subprocess
import sys
import threading

import pytest

from engine import warmup

COUNT_SIGNATURES = """
import json, sys
from numba.core.registry import CPUDispatcher
import numpy as np
import engine
from engine import Model, ThreadedTrainingSystem, TrainConfig
from engine.ema import EMA
from engine.tokenizer import Tokenizer
from engine.generate import BatchDecoder
from engine.warmup import compile_decoding, compile_kernels

def compiled():
    return sum(len(obj.signatures) for name, mod in list(sys.modules.items())
               if name.startswith("engine") for obj in vars(mod).values()
               if isinstance(obj, CPUDispatcher))

def real_step(crystalline, optimizer, ema):
    tok = Tokenizer()
    tok.learn(["the crystal lattice hums a quiet tune over the prime spiral"] * 3, max_new_tokens=20)
    tok.decode(tok.encode("the lattice hums"))
    m = Model(engine.tiny, seed=1)
    tcfg = TrainConfig(optimizer=optimizer, warmup_steps=0, crystalline_weight=0.2 if crystalline else 0.0)
    rng = np.random.default_rng(0)
    x = rng.integers(0, engine.tiny.vocab_size, (6, engine.tiny.context))
    with ThreadedTrainingSystem(m, tcfg, n_workers=3) as s:
        s.train_step(x, x)
    if ema:
        EMA(m.params, m.layout, 0.9).update(m.params)

out = []
for opts in ((False, "adamw", True), (True, "sgd", False)):
    compile_kernels(crystalline=opts[0], optimizer=opts[1], ema=opts[2])
    before = compiled()
    real_step(*opts)
    out.append([before, compiled()])
compile_decoding()
before = compiled()
m = Model(engine.tiny, seed=2)
for kind in ("int8", "float32"):                      # batch 1 and a batch of 3
    m.generate([5, 6, 7], 3, temperature=0.8, top_k=5, seed=1, weights=kind)
    for B in (3, BatchDecoder.BLAS_BATCH):             # the fused kernel, BLAS products
        dec = BatchDecoder(m, B, kind)
        dec.prefill([1, 2], row=1)
        dec.step(np.arange(3, 3 + B))
out.append([before, compiled()])
print(json.dumps(out))
"""


def test_the_warm_up_compiles_every_kernel_a_training_step_uses():
    """In a fresh process: after compile_kernels, a real step of another model size (3
    workers, the tokenizer learning and encoding) compiles nothing more; after
    compile_decoding, neither does generation (int8 and float32 weights, batches of 1, 3 and
    BLAS_BATCH)."""
    r = subprocess.run([sys.executable, "-c", COUNT_SIGNATURES], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    for before, after in json.loads(r.stdout):
        assert before > 0 and after == before


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setattr(warmup, "_done", set())


class Seen(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages, self.announced = [], threading.Event()

    def emit(self, record):
        self.messages.append(record.getMessage())
        if record.getMessage().startswith("compiling the engine's kernels"):
            self.announced.set()


@pytest.fixture
def seen():
    h = Seen()
    logger = logging.getLogger("engine.warmup")
    old = logger.level
    logger.addHandler(h)
    logger.setLevel(logging.INFO)
    yield h
    logger.removeHandler(h)
    logger.setLevel(old)


def test_a_long_compilation_is_announced_while_it_runs(fresh, seen):
    def compiling(*_):      # returns only once the announcement is out
        assert seen.announced.wait(30)

    warmup.compile_kernels(announce_after=0.0, warm=compiling)
    assert seen.messages[0].startswith("compiling the engine's kernels (first run only")
    assert seen.messages[1].startswith("kernels ready after")


def test_a_warm_cache_is_silent_and_a_second_call_does_nothing(fresh, seen):
    calls = []
    warmup.compile_kernels(announce_after=3600.0, warm=lambda *a: calls.append(a))
    assert warmup.compile_kernels(announce_after=3600.0, warm=lambda *a: calls.append(a)) == 0.0
    assert calls == [(False, "adamw", False, "")] and seen.messages == []
