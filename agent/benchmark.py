"""Measurements shared by `cllm bench`, the benchmarks/ scripts and the tests.

Thread scaling of the ThreadedTrainingSystem (`scaling`, for `cllm bench` and
benchmarks/bench_spheres.py), and continual learning as sources arrive (`continual_run`, for
benchmarks/bench_agent.py and the forgetting test).

Scaling:
For each worker count: tokens/s of full training steps (forward + backward + reduction +
the optimizer: a new data directory's batch and optimizer unless told), scaling and
efficiency against the first count, CPU utilisation (process CPU seconds / wall seconds /
cores) while training and, when PyTorch and the repository's benchmarks/torch_peer.py are
present, PyTorch eager's full training step (the same optimizer: torch_peer.torch_optimizers)
at the same thread count, interleaved round by round (the machine is shared: only same-run
ratios mean much).
PyTorch is never a requirement: without it the peer columns are left out.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

import engine
from agent.continuous_trainer import ContinuousTrainer, record_documents
from agent.training.learn import split_heldout
from engine import Optimizer, ThreadedTrainingSystem, TrainConfig
from engine.config import arch_text, parse_arch
from engine.cpu import describe
from engine.data import eval_windows, pack
from engine.distributed import Leader
from engine.mpi import rank_timeout_s, world
from engine.params import ParamLayout
from store import open_store

BENCHMARKS_DIR = Path(__file__).resolve().parent.parent / "benchmarks"


def measure(fn: Callable[[], object], steps: int) -> tuple[float, float]:
    """(wall seconds per call, CPU utilisation as a fraction of all cores), after a warm-up."""
    fn()
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(steps):
        fn()
    wall = time.perf_counter() - t0
    # process CPU time is charged in scheduler ticks, so over a run of a few milliseconds
    # it can read above every core's share of the wall time: capped at all cores
    return wall / steps, min(1.0, (time.process_time() - c0) / wall / (os.cpu_count() or 1))


def torch_peer():
    """(torch, the torch_peer module) or (None, why not)."""
    try:
        import torch            # optional and heavy: only when the peer is measured
    except ImportError:
        return None, "PyTorch is not installed (pip install torch to compare with it)"
    if str(BENCHMARKS_DIR) not in sys.path and (BENCHMARKS_DIR / "torch_peer.py").is_file():
        sys.path.insert(0, str(BENCHMARKS_DIR))
    try:
        import torch_peer       # benchmarks/ of a checkout, on the path only now
    except ImportError:
        return None, "benchmarks/torch_peer.py is not here (run from a checkout to compare)"
    return (torch, torch_peer), None


def bench_config(preset: str, arch: Optional[str] = None):
    """The model `cllm bench` measures: the preset in architecture `arch` (engine.config.
    parse_arch; None: a new data directory's, agent.settings.DEFAULT_ARCH)."""
    from agent.settings import DEFAULT_ARCH
    return engine.preset(preset).replace(**parse_arch(DEFAULT_ARCH if arch is None else arch))


def bench_recipe(batch: Optional[int] = None, optimizer: Optional[str] = None
                 ) -> tuple[int, str]:
    """(global batch, optimizer) `cllm bench` measures: those given, else a new data
    directory's (agent.settings: the batch size and optimizer `cllm agent` trains with)."""
    from agent.settings import TrainerSettings
    st = TrainerSettings()
    return batch or st.batch_size, optimizer or st.train_config(1).optimizer


def scaling_bytes(preset: str, batch: Optional[int], counts, arch: Optional[str] = None,
                  optimizer: Optional[str] = None) -> int:
    """About the memory `scaling` holds: every count's ThreadedTrainingSystem exists for the
    whole run, each with a gradient row per worker plus its model, the reduced gradient,
    the optimizer's two moments (and Muon's direction) and the undo log of parameters and
    moments (n + 7 float32 arrays of the layout's size, n + 8 with Muon: engine/spheres.py),
    and its workers' activations of one batch (engine/model.Workspace). What
    `POST /api/bench` is bounded by (agent/server/bench.py)."""
    batch, optimizer = bench_recipe(batch, optimizer)
    cfg = bench_config(preset, arch)
    size = ParamLayout.from_config(cfg).size
    B, T, C, L, V = batch, cfg.context, cfg.d_model, cfg.n_layers, cfg.vocab_size
    activations = B * T * (20 * L * C + 14 * C + V) + (L + 1) * B * cfg.n_heads * T * T
    arrays = 7 + (optimizer == "muon")
    return 4 * sum((n + arrays) * size + activations for n in counts)


def scaling(preset: str = "base", batch: Optional[int] = None, counts=(1, 2), rounds: int = 3,
            steps: int = 3, with_torch: bool = True, arch: Optional[str] = None,
            optimizer: Optional[str] = None) -> dict:
    """Measure the preset's model in architecture `arch` (`bench_config`), trained with
    `optimizer` on global batches of `batch` sequences (`bench_recipe`: a new data
    directory's when None), and PyTorch on the same model with the same optimizer; returns
    {"rows": [...], "topology": tree of the last system, "note": str|None}."""
    batch, optimizer = bench_recipe(batch, optimizer)
    cfg = bench_config(preset, arch)
    tcfg = TrainConfig(lr=1e-4, warmup_steps=0, optimizer=optimizer)
    rng = np.random.default_rng(0)
    x = rng.integers(0, cfg.vocab_size, (batch, cfg.context))
    y = rng.integers(0, cfg.vocab_size, (batch, cfg.context))
    peer, note = torch_peer() if with_torch else (None, None)
    ours = {n: [] for n in counts}
    cpu = {n: [] for n in counts}
    theirs = {n: [] for n in counts}
    systems = {n: ThreadedTrainingSystem(engine.Model(cfg, seed=0), tcfg, n_workers=n)
               for n in counts}
    try:
        peers = {}
        if peer is not None:
            torch, tp = peer
            tx, ty = tp.as_tensor(x), tp.as_tensor(y)
            for n in counts:
                m = tp.TorchGPT(engine.Model(cfg, seed=0))
                peers[n] = (m, *tp.torch_optimizers(m, tcfg))
        for _ in range(rounds):
            for n in counts:
                s = systems[n]
                dt, util = measure(lambda: s.train_step(x, y), steps)
                ours[n].append(batch * cfg.context / dt)
                cpu[n].append(util)
                if peers:
                    torch.set_num_threads(max(1, min(n, os.cpu_count() or 1)))
                    m, opt, matrices = peers[n]

                    def tstep():
                        opt.zero_grad(set_to_none=True)
                        m(tx, ty).backward()
                        opt.step()
                        if matrices is not None:
                            matrices.step(tcfg.lr)
                    theirs[n].append(batch * cfg.context / measure(tstep, steps)[0])
        topology = systems[counts[-1]].topology()
    finally:
        for s in systems.values():
            s.close()
    base = float(np.median(ours[counts[0]]))
    cores = os.cpu_count() or 1
    rows = []
    for n in counts:
        o = float(np.median(ours[n]))
        r = {"workers": n, "tok_s": o, "scaling": o / base,
             "efficiency": o / base / (min(n, cores) / min(counts[0], cores)),
             "cpu_util": float(np.median(cpu[n]))}
        if theirs[n]:
            p = float(np.median(theirs[n]))
            r.update(torch_tok_s=p, ratio=o / p)
        rows.append(r)
    return {"preset": preset, "arch": arch_text(cfg) or "gpt2", "optimizer": optimizer,
            "batch": batch,
            "context": cfg.context, "rounds": rounds,
            "steps": steps, "cores": os.cpu_count(), "cpu": describe().line(), "rows": rows,
            "topology": topology, "note": note}


def table_lines(result: dict) -> list[str]:
    out = [result["cpu"],
           f"preset {result['preset']} ({result['arch']}), global batch "
           f"{result['batch']}x{result['context']}, "
           f"{result['cores']} cores, median of {result['rounds']} interleaved rounds x "
           f"{result['steps']} steps (fwd+bwd+{result.get('optimizer', 'adamw')})"]
    peer = any("ratio" in r for r in result["rows"])
    hdr = f"{'workers':>8} {'tok/s':>9} {'scaling':>8} {'eff.':>6} {'CPU util':>9}"
    out.append(hdr + (f" {'torch tok/s':>12} {'ours/torch':>11}" if peer else ""))
    for r in result["rows"]:
        line = (f"{r['workers']:>8} {r['tok_s']:>9.0f} {r['scaling']:>7.2f}x "
                f"{r['efficiency']:>6.2f} {100 * r['cpu_util']:>8.1f}%")
        if "ratio" in r:
            line += f" {r['torch_tok_s']:>12.0f} {r['ratio']:>10.2f}x"
        out.append(line)
    if result.get("note"):
        out.append(f"(no PyTorch peer: {result['note']})")
    return out


def topology_lines(topo: dict) -> list[str]:
    out = [f"Node Zero: {topo['steps']} steps, {topo['tokens']} tokens, "
           f"waited {topo['wait_s']:.2f}s"]

    def walk(node, depth):
        kids = node["children"]
        out.append(f"{'  ' * depth}sphere {node['id']:>3} (level {node['level']}, position "
                   f"{node['position']:>2}): batches {node['batches']:>3}, tokens "
                   f"{node['tokens']:>6}, busy {node['busy_s']:.2f}s, idle {node['idle_s']:.2f}s")
        for c in kids:
            walk(c, depth + 1)
    for c in topo["children"]:
        walk(c, 1)
    return out


# --- across MPI ranks (`mpiexec -n R cllm bench --mpi`) ------------------------------------

def mpi_scaling(preset: str = "base", batch: int = 8, workers: int = 1, rounds: int = 3,
                steps: int = 3) -> dict:
    """On rank 0 of an MPI job: tokens/s of full training steps on every rank (the global
    batch split across them, gradients allreduced) against rank 0 alone with the same
    workers, interleaved round by round, and the time worker 0 spent in the gradient
    collectives per step. The other ranks follow (engine.distributed.follow)."""
    group = world()
    cfg = engine.preset(preset)
    tcfg = TrainConfig(lr=1e-4, warmup_steps=0)
    rng = np.random.default_rng(0)
    x = rng.integers(0, cfg.vocab_size, (batch, cfg.context))
    y = rng.integers(0, cfg.vocab_size, (batch, cfg.context))
    alone = ThreadedTrainingSystem(engine.Model(cfg, seed=0), tcfg, n_workers=workers)
    model = engine.Model(cfg, seed=0)
    opt = Optimizer(model.layout, tcfg)
    leader = Leader(group, model, tcfg, opt, workers)
    spread = ThreadedTrainingSystem(model, tcfg, n_workers=workers, optimizer=opt, group=group,
                                    watchdog_timeout=rank_timeout_s())
    one, many, coll = [], [], []

    def step():
        leader.step(x, y, 1e-4)
        spread.train_step(x, y, lr=1e-4)
    try:
        for _ in range(rounds):
            one.append(batch * cfg.context / measure(lambda: alone.train_step(x, y), steps)[0])
            c0 = group.collective_s
            dt, _ = measure(step, steps)
            many.append(batch * cfg.context / dt)
            coll.append((group.collective_s - c0) / (steps + 1))   # measure() warms up once
        leader.end(spread)
    finally:
        alone.close()
        spread.close()
    base = float(np.median(one))
    rows = [{"ranks": 1, "workers": workers, "tok_s": base, "scaling": 1.0,
             "collective_ms": 0.0},
            {"ranks": group.size, "workers": workers, "tok_s": float(np.median(many)),
             "scaling": float(np.median(many)) / base,
             "collective_ms": 1000 * float(np.median(coll))}]
    return {"preset": preset, "batch": batch, "context": cfg.context, "rounds": rounds,
            "steps": steps, "cores": os.cpu_count(), "rows": rows,
            "grad_bytes": 4 * model.layout.size}


def mpi_table_lines(result: dict) -> list[str]:
    out = [f"preset {result['preset']}, global batch {result['batch']}x{result['context']}, "
           f"gradient {result['grad_bytes'] / 1e6:.1f} MB per step, median of "
           f"{result['rounds']} interleaved rounds x {result['steps']} steps",
           f"{'ranks':>6} {'workers':>8} {'tok/s':>9} {'scaling':>8} {'allreduce ms/step':>18}"]
    for r in result["rows"]:
        out.append(f"{r['ranks']:>6} {r['workers']:>8} {r['tok_s']:>9.0f} {r['scaling']:>7.2f}x "
                   f"{r['collective_ms']:>18.2f}")
    return out


# --- continual learning: forgetting with and without replay -----------------------------

def nats_per_byte(state, texts: list[str]) -> float:
    """Validation loss in nats per byte of held-out text: comparable across cycles even
    though the vocabulary (and so the number of tokens per byte) grows."""
    model = state.serving_model()
    stream = pack([state.tokenizer.encode(t) for t in texts], state.tokenizer.eod_id)
    x, y = eval_windows(stream, model.config.context)
    total = 0.0
    for i in range(0, len(x), 16):
        total += model.loss(x[i:i + 16], y[i:i + 16])[0]
    return total / sum(len(t.encode("utf-8")) for t in texts)


def continual_run(docs, settings, chunks: int = 1) -> list[dict]:
    """Sources arrive one after another (each in `chunks` parts, one cycle per part) into a
    fresh store and data directory; after every cycle, validation loss in nats per byte on
    the never-trained held-out tails of every source seen so far, and forgetting (that loss
    now minus right after the source's latest part was learned). One dict per cycle."""
    sources = sorted({d.source for d in docs})
    replay_fraction = settings.replay_fraction
    arrivals = []                                 # (source, documents), in arrival order
    for src in sources:
        mine = [d for d in docs if d.source == src]
        k = max(1, min(chunks, len(mine)))
        arrivals += [(src, mine[i::k]) for i in range(k)]
    heldout: dict[str, list[str]] = {}            # tails never trained on, fixed per source
    learned: dict[str, float] = {}                # nats/byte right after a source's last part
    rows = []
    with tempfile.TemporaryDirectory() as tmp, open_store(tmp) as store:
        trainer = ContinuousTrainer(store, Path(tmp), settings)
        trainer.load_latest()
        for src, part in arrivals:
            t0 = time.perf_counter()
            batch = record_documents(store, part)
            t_ingest = time.perf_counter() - t0
            heldout.setdefault(src, []).extend(split_heldout(d.text, settings.val_fraction)[1]
                                               for d in part)
            t0 = time.perf_counter()
            rep = trainer.run_cycle(batch, "bench")
            wall = time.perf_counter() - t0
            state = trainer.state
            npb = {s: nats_per_byte(state, t) for s, t in heldout.items()}
            learned[src] = npb[src]
            rows.append({"replay_fraction": replay_fraction, "cycle": rep.cycle_id,
                         "source": src, "documents": len(batch),
                         "replayed": len(rep.replay_ids), "steps": rep.run.steps,
                         "tokens_per_s": round(rep.run.tokens_per_s),
                         "train_s": round(rep.run.seconds, 2), "cycle_s": round(wall, 2),
                         "overhead_s": round(wall - rep.run.seconds, 2),
                         "ingest_s": round(t_ingest, 3),
                         "vocab": f"{rep.vocab_before}->{rep.vocab_after}",
                         "loss_end": round(rep.run.loss_end, 3),
                         "forgetting": {k: round(v, 3) for k, v in rep.forgetting.items()},
                         "val_nats_per_byte": {k: round(v, 4) for k, v in npb.items()},
                         "mean_val_nats_per_byte": round(sum(npb.values()) / len(npb), 4),
                         "forgetting_nats_per_byte": {k: round(npb[k] - learned[k], 4)
                                                      for k in npb}})
    return rows
