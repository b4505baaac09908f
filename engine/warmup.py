"""Compiling the engine's numba kernels before a run's clock starts (first run only).

numba compiles a kernel on its first call and keeps it in its on-disk cache (`cache=True`,
engine/_jit.py): a fresh install spends tens of seconds compiling on its first training
run, later runs load the cache in about a second. `compile_kernels` calls every kernel a
training step uses (the tokenizer's, forward/backward, the reduction, the optimizer's, the
EMA's) once on a tiny model with inputs of the same types, so that time is announced when it
lasts (a timer: nothing is logged when the cache is warm) and is not counted in a cycle's
tokens/s. numba compiles per argument types, not shapes, so the tiny model's calls cover
models of any size.

`compile_decoding` does the same for the decoding kernels (engine.decode), for servers.

It does not time training, and it holds no model state: the tiny model is thrown away.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Optional

import numpy as np

from engine.config import ModelConfig, TrainConfig, parse_arch
from engine.ema import EMA
from engine.generate import BatchDecoder
from engine.model import Model
from engine.spheres import ThreadedTrainingSystem
from engine.tokenizer import Tokenizer

log = logging.getLogger(__name__)

ANNOUNCE_AFTER_S = 3.0   # a warm cache loads in about a second; compiling takes far longer
_WARM = None             # the tiny model's config, built on first use
_done: set = set()       # (crystalline, optimizer, ema) warmed in this process
_lock = threading.Lock()


def compile_kernels(*, crystalline: bool = False, optimizer: str = "adamw", ema: bool = False,
                    arch: str = "", announce_after: float = ANNOUNCE_AFTER_S,
                    warm: Optional[Callable[[bool, str, bool, str], None]] = None) -> float:
    """Compile (or load from numba's cache) the kernels a training step with these options
    uses (`arch`: the model's recipe options, engine.config.arch_text); once per process and
    options. Returns the seconds it took (0.0 when already done). Past `announce_after`
    seconds it logs that it is compiling, and how long it took at the end. `warm` replaces
    the tiny training step (tests)."""
    key = (bool(crystalline), str(optimizer), bool(ema), str(arch))
    return _once(key, lambda: (warm or _tiny_step)(*key), announce_after)


def compile_decoding(announce_after: float = ANNOUNCE_AFTER_S, arch: str = "") -> float:
    """The same for the decoding kernels (engine.decode, int8 and float32 weights) of a
    model with the recipe's options `arch`: called when a model is loaded to serve, so a
    server's first request does not wait for them."""
    return _once(("decode", str(arch)), lambda: _tiny_decode(arch), announce_after)


def _once(key, warm: Callable[[], None], announce_after: float) -> float:
    with _lock:
        if key in _done:
            return 0.0
        announced = threading.Event()

        def announce() -> None:
            announced.set()
            log.info("compiling the engine's kernels (first run only: later runs load them "
                     "from numba's cache)")

        timer = threading.Timer(announce_after, announce)
        timer.daemon = True
        t0 = time.perf_counter()
        timer.start()
        try:
            warm()
        finally:
            timer.cancel()
            timer.join()
        seconds = time.perf_counter() - t0
        _done.add(key)
    if announced.is_set():
        log.info("kernels ready after %.1f s", seconds)
    return seconds


def _tiny_model(arch: str = ""):
    global _WARM
    if _WARM is None:
        _WARM = ModelConfig(vocab_size=16, context=4, d_model=8, n_layers=1, n_heads=2)
    return Model(_WARM.replace(**parse_arch(arch)), seed=0)


def _tiny_decode(arch: str = "") -> None:
    """Two greedy tokens of a throw-away tiny model with each kind of decode weights, and a
    step of a batch large enough for the BLAS path."""
    model = _tiny_model(arch)
    for kind in ("int8", "float32"):
        model.generate([1, 2], 2, temperature=0, weights=kind)
    batch = BatchDecoder(model, BatchDecoder.BLAS_BATCH)
    batch.prefill([1])
    batch.step(np.ones(BatchDecoder.BLAS_BATCH, np.int64))


def _tiny_step(crystalline: bool, optimizer: str, ema: bool, arch: str = "") -> None:
    """One threaded training step of a throw-away tiny model, and the tokenizer's kernels."""
    tok = Tokenizer()
    quiet = _NotFromThisThread()
    logging.getLogger("engine.tokenizer").addFilter(quiet)   # no "learned 4 new tokens" line
    try:
        tok.learn(["warm up the kernels, warm up the kernels"] * 2, max_new_tokens=4)
    finally:
        logging.getLogger("engine.tokenizer").removeFilter(quiet)
    tok.decode(tok.encode("warm up"))
    model = _tiny_model(arch)
    tcfg = TrainConfig(optimizer=optimizer, warmup_steps=0,
                       crystalline_weight=0.1 if crystalline else 0.0)
    x = np.arange(8, dtype=np.int64).reshape(2, 4) % model.config.vocab_size
    with ThreadedTrainingSystem(model, tcfg, n_workers=1, limit_blas_threads=False) as system:
        system.train_step(x, x)
    if ema:
        EMA(model.params, model.layout, 0.99).update(model.params)


class _NotFromThisThread(logging.Filter):
    """Drops the records logged by the thread that made it (the warm-up's own)."""

    def __init__(self) -> None:
        super().__init__()
        self.ident = threading.get_ident()

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread != self.ident
