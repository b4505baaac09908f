"""One learning run over a backlog of documents: learn a new model's vocabulary from its
whole backlog and build it at that size, or grow a trained one's tokenizer and model, build
batches in ledger order (agent/training/backlog.py), train on the ThreadedTrainingSystem until a
step, time or backlog bound or a stop, with live progress, and evaluate. Its worker threads
run at the trainer's CPU and I/O priority (engine/priority.py), and with a duty cycle below 1
(--cpu-share under one CPU, agent/limits.py) it rests after each step on an event that a stop,
a pause or an arrival sets.

The continuous trainer runs one per cycle (`cllm train` is such a cycle); checkpoint files
are agent/training/model_state.py's, the record of what was learned is the store's.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from agent.training.backlog import (BacklogReader, Batcher, ReplayReader, ledger_doc,
                                    token_byte_lengths)
from agent.training.fim import SPECIALS as FIM_SPECIALS, fim_ids
from agent.training.model_state import ModelState, build_at_vocabulary, is_untrained
from engine import Optimizer, ThreadedTrainingSystem, TrainConfig
from engine.cpu import default_workers
from engine.data import evaluate, pack
from engine.distributed import Leader
from engine.ema import EMA, RunningMean
from engine.mpi import rank_timeout_s, world
from engine.schedule import learning_rate
from engine.config import arch_text
from engine.warmup import compile_kernels

log = logging.getLogger(__name__)
STREAMS = 64    # documents read side by side (a batch's rows are drawn from them at random)
# A new model's vocabulary learning (the whole backlog's sample, agent/training/plan.py) ends
# after this long with the tokens it has by then. The benchmark machine learns the largest
# preset's 10k tokens from 12 MB in 1.7 s (docs/benchmarks.md), so this only bounds how long
# a slow or busy machine makes a new model wait for its first step and checkpoint.
VOCAB_SECONDS = 30.0


@dataclass(frozen=True)
class Doc:
    uri: str
    source: str
    text: str


@dataclass(frozen=True)
class PlanDoc:
    """A document a cycle learns from: its id, its training text (held-out tail cut off),
    what the ledger counted before, and its budget in passes (None: read it round and round,
    as `cllm train --steps N` does)."""
    id: int
    source: str
    text: str
    trained_bytes: int = 0
    passes: Optional[float] = None
    name: str = ""          # its file header's name (fim.doc_name), when it has one
    # a consolidation sweep's share: read to these trained bytes (not `passes`), straight on
    # across the end of its text
    budget_bytes: Optional[int] = None


@dataclass
class LearnResult:
    steps: int = 0
    skipped: int = 0
    tokens: int = 0
    seconds: float = 0.0
    ended_by: str = ""                  # "steps", "time", "backlog", "stop" or "preempted"
    loss_start: Optional[float] = None
    loss_end: Optional[float] = None
    val_loss: dict[str, float] = field(default_factory=dict)
    new_token_ids: list[int] = field(default_factory=list)
    vocab_docs: list[PlanDoc] = field(default_factory=list)     # a new model's: learned from
    new_bytes: dict[int, int] = field(default_factory=dict)      # doc id -> backlog bytes trained
    replay_bytes: dict[int, int] = field(default_factory=dict)   # doc id -> replayed bytes
    trainable_bytes: dict[int, int] = field(default_factory=dict)  # of every document read
    losses: list[float] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def bytes_per_s(self) -> float:
        return sum(self.new_bytes.values()) / self.seconds if self.seconds > 0 else 0.0


def split_heldout(text: str, fraction: float) -> tuple[str, str]:
    """(training head, held-out tail `fraction` of the characters): the one split of a
    document, the same every cycle, so forgetting compares like with like."""
    cut = int(len(text) * (1.0 - fraction))
    return text[:cut], text[cut:]


def split_validation(docs: Sequence[Doc], fraction: float) -> tuple[list[Doc], dict[str, str]]:
    """Every document's training head, and the held-out tails grouped by source."""
    train: list[Doc] = []
    held: dict[str, list[str]] = {}
    for d in docs:
        head, tail = split_heldout(d.text, fraction)
        train.append(Doc(d.uri, d.source, head))
        held.setdefault(d.source, []).append(tail)
    return train, {src: "\n".join(parts) for src, parts in held.items()}


def learn(state: ModelState, docs: Sequence[PlanDoc], tcfg: TrainConfig, *,
          max_steps: Optional[int] = None, max_seconds: Optional[float] = None,
          workers: Optional[int] = None, replay: Sequence[PlanDoc] = (),
          replay_fraction: float = 0.0, fim_rate: float = 0.0, max_new_tokens: int = 1000,
          more: Optional[Callable[[], Optional[PlanDoc]]] = None,
          lr: Optional[Callable[[int], float]] = None,
          heldout: Optional[dict[str, str]] = None, seed: int = 0,
          progress: Optional[Callable[[int, float, float], None]] = None,
          stop: Optional[Callable[[], Optional[str]]] = None,
          vocab: Optional[Callable[[], Sequence[PlanDoc]]] = None,
          vocab_seconds: float = VOCAB_SECONDS, priority: str = "normal",
          duty: float = 1.0, bell: Optional[threading.Event] = None,
          average_sweep: bool = False) -> LearnResult:
    """Learn vocabulary, then train. A model no step has trained (model_state.is_untrained)
    learns its vocabulary, up to its tokenizer's cap (the preset's size), from `vocab()`
    (the whole backlog's sample) within `vocab_seconds`, and is built afresh at that size;
    those tokens are the run's delta (LearnResult.new_token_ids, learned from .vocab_docs).
    Any other model (or without `vocab`) learns up to `max_new_tokens` from the documents
    read for the first time and grows its rows from the tokens they merge. 0 learns none.
    Then it trains on the backlog of `docs` (then `more()`, loaded lazily) in ledger order, mixed
    with `replay` (a `replay_fraction` share of rows), until `max_steps`, `max_seconds`, the
    backlog's end or `stop()` (which returns why, e.g. "stop" or "preempted", or None).
    A `fim_rate` share of the backlog's windows is fill-in-the-middle (agent/training/fim.py;
    its three tokens are added to the vocabulary first, a new model's before it learns any).
    `lr(step_in_cycle)` gives each step's learning rate (default: tcfg's schedule over the
    model's life, engine.schedule); the EMA of the weights (tcfg.ema_decay) follows every
    applied step; with `average_sweep` (a consolidation cycle) so does a plain mean of the
    weights over the sweep (state.sweep, kept across the sweep's cycles), which becomes the
    served weights (the EMA's, which follows on from there) when the run ends with its
    backlog, the sweep's end. Evaluates the served model (the EMA) on `heldout`
    per source unless stopped. Each applied step's targets are credited to the
    documents they cover (LearnResult.new_bytes / replay_bytes). The workers run at
    `priority` (engine/priority.py); with `duty` < 1 a step of d seconds is followed by a rest
    of d * (1/duty - 1), which `bell` (set by whoever makes `stop()` say why) ends early."""
    res = LearnResult()
    model, tok = state.model, state.tokenizer
    # numba compiles on first use (tens of seconds on a fresh install): done here, announced
    # when it lasts, and outside the clock of tokens/s
    compile_kernels(crystalline=tcfg.crystalline_weight > 0, optimizer=tcfg.optimizer,
                    ema=tcfg.ema_decay is not None, arch=arch_text(model.config))
    first_read = [d.text for d in docs if d.trained_bytes == 0]
    untrained = is_untrained(state)
    if fim_rate > 0:    # appended, no id moves (a new model: 257-260); rows grow below
        tok.add_specials(FIM_SPECIALS)
    if vocab is not None and max_new_tokens > 0 and untrained:
        res.vocab_docs = list(vocab())
        cap = tok.max_vocab - len(tok) if tok.max_vocab is not None else max_new_tokens
        log.info("a new model: learning its vocabulary (up to %s tokens) from %s documents of "
                 "its backlog, %s bytes", len(tok) + cap, len(res.vocab_docs),
                 sum(len(d.text.encode("utf-8", "surrogatepass")) for d in res.vocab_docs))
        res.new_token_ids = tok.learn([d.text for d in res.vocab_docs], max_new_tokens=cap,
                                      max_seconds=vocab_seconds)
        build_at_vocabulary(state)
        model = state.model
    elif max_new_tokens > 0 and first_read:
        res.new_token_ids = tok.learn(first_read, max_new_tokens=max_new_tokens)
    if not average_sweep or tcfg.ema_decay is None:
        state.sweep = None      # a sweep's mean lives from a sweep's start to its end only
    if len(tok) > model.config.vocab_size:
        model.grow_vocab(len(tok), merges=tok.merges,   # row z from the rows z merges
                         specials=tok.specials.values())
        if state.optimizer is not None:
            state.optimizer.grow(model.layout)
        for avg in (state.ema, state.sweep):
            if avg is not None:
                avg.grow(model.layout, model.params)
    if tcfg.ema_decay is None:
        state.ema = None
    elif state.ema is None:
        state.ema = EMA(model.params, model.layout, tcfg.ema_decay)
    else:
        state.ema.decay = tcfg.ema_decay
    if state.ema is not None and average_sweep and state.sweep is None:
        state.sweep = RunningMean(model.params, model.layout)    # a sweep starts
    averages = [a for a in (state.ema, state.sweep) if a is not None]
    if state.optimizer is None or state.optimizer.cfg != tcfg:
        old = state.optimizer
        state.optimizer = Optimizer(model.layout, tcfg)
        if old is not None and old.cfg.optimizer == tcfg.optimizer:
            for k, arr in old.state().items():
                state.optimizer.state()[k][...] = arr
            state.optimizer.t = old.t
    lengths = token_byte_lengths(tok)

    def tokenised(d: PlanDoc):
        ld = ledger_doc(d.id, d.source, d.text, tok, lengths, d.trained_bytes, d.passes,
                        d.name, budget_bytes=d.budget_bytes)
        res.trainable_bytes[d.id] = ld.trainable_bytes
        return ld

    def next_more():
        d = more() if more is not None else None
        return None if d is None else tokenised(d)

    T, B = model.config.context, tcfg.batch_size
    reader = BacklogReader([tokenised(d) for d in docs], T, max(B, STREAMS), tok.eod_id,
                           more=next_more if more is not None else None, seed=seed + 2,
                           fim_rate=fim_rate, fim=fim_ids(tok))
    rep = ReplayReader([tokenised(d) for d in replay], T, tok.eod_id, seed + 1) \
        if replay and replay_fraction > 0 else None
    for d in replay:
        res.trainable_bytes.pop(d.id, None)    # replay does not change their ledger
    batcher = Batcher(reader, rep, B, replay_fraction, seed)
    if lr is None:
        scfg, start, planned = tcfg.schedule_config(), state.step, tcfg.total_steps or max_steps

        def lr(i: int) -> float:
            return learning_rate(scfg, start + i, i, planned or i + 1)
    t0 = time.perf_counter()
    # under mpiexec, rank 0 (this process) leads the other ranks through the cycle
    group = world()
    n_workers = workers if workers is not None else default_workers()
    leader = Leader(group, model, tcfg, state.optimizer, n_workers) if group else None
    extra = {"group": group, "watchdog_timeout": rank_timeout_s()} if group else {}
    rest = _Rest(duty, bell, stop)
    with ThreadedTrainingSystem(model, tcfg, n_workers=n_workers, optimizer=state.optimizer,
                                priority=priority, **extra) as system:
        try:
            while True:
                if max_steps is not None and res.steps >= max_steps:
                    res.ended_by = "steps"
                    break
                if max_seconds is not None and time.perf_counter() - t0 >= max_seconds:
                    res.ended_by = "time"
                    break
                why = stop() if stop is not None else None
                if why:
                    res.ended_by = why
                    break
                t_step = time.perf_counter()
                batch = batcher.next()
                if batch is None:
                    res.ended_by = "backlog"
                    break
                step_lr = lr(res.steps)
                if leader is not None:
                    leader.step(batch.inputs, batch.targets, step_lr)
                r = system.train_step(batch.inputs, batch.targets, lr=step_lr)
                res.steps += 1
                res.skipped += int(r.skipped)
                res.tokens += r.tokens
                if not r.skipped:               # only applied steps count in the ledger
                    res.losses.append(r.loss)
                    for into, got in ((res.new_bytes, batch.new), (res.replay_bytes, batch.replay)):
                        for doc, n in got.items():
                            into[doc] = into.get(doc, 0) + n
                    for avg in averages:
                        avg.update(model.params)
                if progress is not None:
                    progress(res.steps, r.loss, r.lr)
                rest.after(time.perf_counter() - t_step)
        except BaseException as e:
            if group is not None:   # the other ranks wait in this cycle's collectives
                group.abort(f"rank 0 failed in step {res.steps} of the cycle: {e!r}")
            raise
        if leader is not None:
            leader.end(system)              # and every rank's parameters agree with ours
    res.seconds = time.perf_counter() - t0
    state.step += res.steps
    if res.losses:
        k = max(1, min(10, len(res.losses) // 5))
        res.loss_start = float(np.mean(res.losses[:k]))
        res.loss_end = float(np.mean(res.losses[-k:]))
    if state.sweep is not None and res.ended_by == "backlog" and state.sweep.t > 0:
        state.ema.shadow[...] = state.sweep.shadow   # the sweep's end: serve its mean
        state.sweep = None
    if res.ended_by != "stop" and heldout:
        served = state.serving_model()
        for source, text in heldout.items():
            v = evaluate(served, pack([tok.encode(text)], tok.eod_id))
            if v is not None:
                res.val_loss[source] = v
    return res


class _Rest:
    """The duty cycle of a run: after a step of d seconds, rest d * (1/duty - 1) seconds on
    `bell`, ending early once `stop()` says why (a stop, a pause, an arrival), so the run
    ends at that step boundary without waiting out the rest."""

    def __init__(self, duty: float, bell: Optional[threading.Event],
                 stop: Optional[Callable[[], Optional[str]]]) -> None:
        if not 0.0 < duty <= 1.0:
            raise ValueError(f"duty must be in (0, 1], got {duty}")
        self.factor = 1.0 / duty - 1.0
        self.bell = bell if bell is not None else threading.Event()
        self.stop = stop

    def after(self, step_seconds: float) -> None:
        if self.factor <= 0.0:
            return
        end = time.monotonic() + step_seconds * self.factor
        while (left := end - time.monotonic()) > 0:
            self.bell.clear()            # then look: a ring after this wakes the wait below
            if self.stop is not None and self.stop():
                return
            self.bell.wait(left)
