"""The recipe sweep at EQUAL WALL TIME (issue "A modern recipe"): held-out bits per byte of
the `small` model on CPython's standard library after the same seconds of training, for
today's recipe, each change alone, and combinations.

The data and the score are the fair race's (benchmarks/stdlib_data.py: the sorted files,
one in ten held out, the first 8 KB of each held-out file scored as its own stream): our
tokenizer learned once on the training files to the preset's 4,096 ids (off the clock, the
same for every variant), the training files packed into one stream, random windows of the
variant's context (seeded). Each variant trains on ThreadedTrainingSystem with `--workers`
worker threads (2: both cores, as the race's agent), a warm-up of 100 steps, then the
variant's schedule (a constant rate unless it says), and the agent's EMA (0.998 with the
decay warm-up), which is what is scored, as the agent serves it. The clock counts the
training steps only: the kernels are compiled before it starts, and at each mark the EMA
weights are copied (milliseconds) and scored after the run, off the clock. What a change
costs per step (Muon's matrix phase, rotary positions, the soft-cap) is inside the clock,
so a change wins only if it learns more per second, not per step.

    python benchmarks/bench_arch.py                          # every variant, 2 runs of 90 s
    python benchmarks/bench_arch.py --only gpt2,muon --seconds 30 --runs 1   # a quick look

Prints a markdown table (mean bpb of the runs at each mark, each run's final, the change
against gpt2) and writes JSON under benchmarks/results/ with the CPU and the git commit.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stdlib_data import (DEFAULT_ROOT, bits_per_byte, heldout_windows,  # noqa: E402
                         learned_tokenizer, read_text, split_files)

import engine  # noqa: E402
from engine import EMA, Model, ThreadedTrainingSystem, TrainConfig  # noqa: E402
from engine.config import parse_arch  # noqa: E402
from engine.data import pack  # noqa: E402
from engine.schedule import learning_rate  # noqa: E402
from engine.warmup import compile_kernels  # noqa: E402

log = logging.getLogger("bench_arch")
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Variant:
    name: str
    note: str
    arch: str = ""                     # engine.config.parse_arch options
    optimizer: str = "adamw"
    lr: float = 1e-3
    batch: int = 8
    context: int = 64
    cooldown: float = 0.0              # > 0: the rate falls as 1 - sqrt over this last share
    #                                    of the run, to 0, and the raw weights are scored
    schedule: str = "constant"         # engine.schedule kind over the run's steps
    decay_steps: int = 1000            # "rsqrt": the step its decay starts
    min_lr: float = 1e-4               # "rsqrt": its floor


ALL = "mlp=relu2,qk_norm,pos=rope,tie_head=false,zero_proj"
NEMOTRON = "mlp=relu2,pos=rope,tie_head=false,zero_proj"
NEMOTRON_NZ = "mlp=relu2,pos=rope,tie_head=false"
VARIANTS = [
    Variant("gpt2", "today's recipe: learned positions, GELU, tied head, AdamW"),
    Variant("muon", "Muon on the hidden matrices (AdamW on the rest)", optimizer="muon"),
    Variant("relu2", "relu(x)^2 MLP", arch="mlp=relu2"),
    Variant("qk_norm", "QK-norm", arch="qk_norm"),
    Variant("rope", "rotary positions, no wpe", arch="pos=rope"),
    Variant("untied", "untied head", arch="tie_head=false"),
    Variant("softcap", "logit soft-cap 15", arch="softcap=15"),
    Variant("zero_proj", "zero-initialised output projections", arch="zero_proj"),
    Variant("batch4", "4 sequences a step (twice the steps)", batch=4),
    Variant("ctx128", "context 128 (batch 4: the same tokens a step)", batch=4, context=128),
    Variant("arch", "relu2 + QK-norm + rope + untied + zero_proj, AdamW", arch=ALL),
    Variant("nemotron", "relu2 + rope + untied + zero_proj: `arch` less QK-norm, what "
            "llama.cpp's nemotron graph computes (cllm export)", arch=NEMOTRON),
    Variant("nemotron-nz", "relu2 + rope + untied, default init", arch=NEMOTRON_NZ),
    Variant("nemotron-tied", "relu2 + rope, tied head", arch="mlp=relu2,pos=rope"),
    Variant("all", "the same with Muon", arch=ALL, optimizer="muon"),
    Variant("all-ctx128", "all, context 128, batch 4", arch=ALL, optimizer="muon",
            batch=4, context=128),
    Variant("nz-ctx128", "nemotron-nz, context 128, batch 4 (the same tokens a step)",
            arch=NEMOTRON_NZ, batch=4, context=128),
    Variant("nz-ctx256", "nemotron-nz, context 256, batch 2 (the same tokens a step)",
            arch=NEMOTRON_NZ, batch=2, context=256),
    Variant("nz-ctx256-b4", "nemotron-nz, context 256, batch 4 (twice the tokens a step)",
            arch=NEMOTRON_NZ, batch=4, context=256),
    Variant("nz-muon", "nemotron-nz with Muon on the hidden matrices", arch=NEMOTRON_NZ,
            optimizer="muon"),
    Variant("nz-b16", "nemotron-nz, 16 sequences a step", arch=NEMOTRON_NZ, batch=16),
    Variant("nz-b32", "nemotron-nz, 32 sequences a step", arch=NEMOTRON_NZ, batch=32),
    Variant("nz-muon-b16", "nemotron-nz with Muon, 16 sequences a step", arch=NEMOTRON_NZ,
            optimizer="muon", batch=16),
    Variant("nz-muon-b32", "nemotron-nz with Muon, 32 sequences a step", arch=NEMOTRON_NZ,
            optimizer="muon", batch=32),
    Variant("nz-muon-b16-lr2", "nemotron-nz with Muon, 16 sequences a step, rate 2e-3",
            arch=NEMOTRON_NZ, optimizer="muon", batch=16, lr=2e-3),
    Variant("nz-muon-b16-lr3", "nemotron-nz with Muon, 16 sequences a step, rate 3e-3",
            arch=NEMOTRON_NZ, optimizer="muon", batch=16, lr=3e-3),
    Variant("nz-rsqrt", "the default: nemotron-nz, Muon, 16 sequences, rsqrt: 3e-3 for 1000 "
            "steps, then 3e-3 sqrt(1000/step) to 1e-3", arch=NEMOTRON_NZ, optimizer="muon",
            batch=16, lr=3e-3, schedule="rsqrt", decay_steps=1000, min_lr=1e-3),
    # the same rate from step 1000 on (peak x sqrt(decay_steps) held), a higher one before it
    Variant("nz-rsqrt-4e3", "nz-rsqrt with 4.24e-3 for 500 steps", arch=NEMOTRON_NZ,
            optimizer="muon", batch=16, lr=3e-3 * 2 ** 0.5, schedule="rsqrt", decay_steps=500,
            min_lr=1e-3),
    Variant("nz-rsqrt-6e3", "nz-rsqrt with 6e-3 for 250 steps", arch=NEMOTRON_NZ,
            optimizer="muon", batch=16, lr=6e-3, schedule="rsqrt", decay_steps=250,
            min_lr=1e-3),
    Variant("cooldown", "today's recipe, raw weights after a 1-sqrt cooldown over the last "
            "20% (Hagele et al. 2024) instead of the EMA", cooldown=0.2),
]


def git_commit() -> dict:
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                    cwd=root, capture_output=True, text=True).stdout.strip())
        return {"commit": sha, "dirty": dirty}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run(v: Variant, stream: np.ndarray, vocab: int, held: dict, seconds: float,
        marks: list[float], workers: int, seed: int) -> dict:
    cfg = engine.small.replace(vocab_size=vocab, context=v.context, **parse_arch(v.arch))
    tcfg = TrainConfig(optimizer=v.optimizer, lr=v.lr, warmup_steps=100, schedule=v.schedule,
                       decay_steps=v.decay_steps, min_lr=v.min_lr, batch_size=v.batch,
                       ema_decay=0.998)
    scfg = tcfg.schedule_config()
    compile_kernels(optimizer=v.optimizer, ema=True, arch=v.arch)     # before the clock
    model = Model(cfg, seed=seed)
    ema = EMA(model.params, model.layout, 0.998)
    rng = np.random.default_rng(seed)
    T, B = v.context, v.batch
    hi = len(stream) - T - 1
    copies, steps, tokens = [], 0, 0
    pending = list(marks)
    with ThreadedTrainingSystem(model, tcfg, n_workers=workers) as system:
        t0 = time.perf_counter()
        while pending:
            now = time.perf_counter() - t0
            while pending and now >= pending[0]:
                served = model.params if v.cooldown > 0 else ema.shadow
                copies.append((pending.pop(0), steps, served.copy()))
            if not pending:
                break
            s = rng.integers(0, hi, B)
            x = np.stack([stream[i:i + T] for i in s])
            y = np.stack([stream[i + 1:i + T + 1] for i in s])
            lr = learning_rate(scfg, steps, steps, steps + 1)
            if v.cooldown > 0:          # by the clock: 1 - sqrt over the run's last share
                left = (seconds - now) / (v.cooldown * seconds)
                lr *= min(1.0, max(0.0, 1.0 - (1.0 - left) ** 0.5)) if left < 1 else 1.0
            out = system.train_step(x, y, lr=lr)
            steps += 1
            tokens += out.tokens
            if not out.skipped:
                ema.update(model.params)
        train_s = time.perf_counter() - t0
    scores = []
    for mark, step, shadow in copies:
        served = Model(cfg, params=shadow)
        scores.append({"mark_s": mark, "step": step,
                       "bpb": round(bits_per_byte(served.loss, held[T]), 5)})
    log.info("%s seed %d: %d steps, %.0f tokens/s, %s", v.name, seed, steps,
             tokens / train_s, ", ".join(f"{s['bpb']:.4f}" for s in scores))
    return {"variant": dataclasses.asdict(v), "seed": seed, "steps": steps,
            "tokens": tokens, "tokens_per_s": round(tokens / train_s, 1), "marks": scores}


def table(results: list[dict], marks: list[float]) -> str:
    by: dict[str, list[dict]] = {}
    for r in results:
        by.setdefault(r["variant"]["name"], []).append(r)
    base = by.get("gpt2")
    base_final = np.mean([r["marks"][-1]["bpb"] for r in base]) if base else None
    head = ("| variant | " + " | ".join(f"{m:g} s" for m in marks)
            + " | runs at the end | tokens/s | vs gpt2 |\n|" + "---|" * (len(marks) + 4))
    rows = []
    for name, runs in by.items():
        means = [np.mean([r["marks"][i]["bpb"] for r in runs]) for i in range(len(marks))]
        final = means[-1]
        diff = f"{100 * (final / base_final - 1):+.1f}%" if base_final else ""
        rows.append(f"| {name} | " + " | ".join(f"{m:.4f}" for m in means)
                    + " | " + " / ".join(f"{r['marks'][-1]['bpb']:.4f}" for r in runs)
                    + f" | {np.mean([r['tokens_per_s'] for r in runs]):,.0f} | {diff} |")
    return head + "\n" + "\n".join(rows)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--seconds", type=float, default=90.0)
    ap.add_argument("--marks", default="", help="seconds at which to score (default: thirds)")
    ap.add_argument("--runs", type=int, default=2, help="runs per variant (seeds 0, 1, ...)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--only", default="", help="comma-separated variant names (default: all)")
    ap.add_argument("--heldout-bytes", type=int, default=8192)
    ap.add_argument("--cache", type=Path, default=Path("bench-out"))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    marks = ([float(m) for m in args.marks.split(",")] if args.marks else
             [round(args.seconds * k / 3, 1) for k in (1, 2, 3)])
    started = time.strftime("%Y%m%d-%H%M%S")
    git = git_commit()

    split = split_files(args.src)
    texts = [read_text(p) for p in split.train]
    tok = learned_tokenizer(texts, engine.small.vocab_size, args.cache / "stdlib-tok4096.json")
    stream = pack((tok.encode(t) for t in texts), tok.eod_id)
    wanted = [v for v in VARIANTS if not args.only or v.name in args.only.split(",")]
    held = {T: heldout_windows(tok, split.heldout, T, args.heldout_bytes)
            for T in sorted({v.context for v in wanted})}
    log.info("%d training files (%d tokens), %d held out; %s, %d workers, %s s a run",
             len(split.train), len(stream), len(split.heldout), cpu_model(), args.workers,
             args.seconds)
    results = []
    for seed in range(args.runs):         # run k of every variant, then run k + 1
        for v in wanted:
            results.append(run(v, stream, len(tok), held, args.seconds, marks, args.workers,
                               seed))
    print(table(results, marks))
    out = args.out or RESULTS / f"arch-{started}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "bench_arch", "started": started,
                               "command": " ".join([sys.executable, *sys.argv]), "git": git,
                               "cpu_model": cpu_model(), "seconds": args.seconds,
                               "marks": marks, "workers": args.workers, "results": results},
                              indent=1))
    log.info("wrote %s", out)


if __name__ == "__main__":
    main()
