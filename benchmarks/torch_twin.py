"""The PyTorch twin of issue 13 item 8, and the scorer of the agent's own checkpoints, on the
same held-out bits per byte (benchmarks/stdlib_data.py). PyTorch is used only here.

`train`: a nanoGPT-style loop (random windows of the packed training stream, AdamW, global
norm clip 1.0, warmup then a constant rate) training the `small` model, initialised exactly
as engine.Model(seed) (benchmarks/torch_peer.py's TorchGPT: pre-LN, fused qkv, tanh GELU,
tied head), for a WALL-TIME budget; held-out bits per byte at given marks of training time.
The clock and the CPU clock stop while it evaluates, so the marks count training only.
`eval`: held-out bits per byte of our checkpoints (ckpt-NNNNNN.safetensors and the
ckpt-NNNNNN.tokenizer.json saved next to it), the EMA weights when the checkpoint has them.
`split`: copies the training files (9 in 10) to a folder, so the agent can be pointed at
exactly the text the twin trains on and never sees a held-out file.

    python benchmarks/torch_twin.py split --out /tmp/stdlib-train
    python benchmarks/torch_twin.py train --minutes 10 --marks 1,2,5,10
    python benchmarks/torch_twin.py eval /path/to/data-dir/checkpoints
    python benchmarks/torch_twin.py train --seconds 20 --marks 5,20     # a smoke test

The agent side: `cllm agent --crawl /tmp/stdlib-train` (defaults, all cores) for 10 minutes,
then `eval` on its checkpoints directory; each row carries the checkpoint's cycle, step
and file mtime, to be lined up with the cycle's commit time from the store.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stdlib_data import (DEFAULT_ROOT, HeldOut, Split, bits_per_byte,  # noqa: E402
                         heldout_windows, learned_tokenizer, read_text, split_files)

import engine  # noqa: E402
from engine import Model  # noqa: E402
from engine.checkpoint import load_checkpoint  # noqa: E402
from engine.data import pack  # noqa: E402
from engine.params import is_matrix  # noqa: E402
from engine.tokenizer import Tokenizer  # noqa: E402

log = logging.getLogger("torch_twin")
RESULTS = Path(__file__).resolve().parent / "results"


# --------------------------------------------------------------------------- the twin
def torch_loss_sum(net):
    """loss_sum(x, y) -> (sum of nats, count) of a TorchGPT, for stdlib_data.bits_per_byte."""
    import torch
    import torch.nn.functional as F

    def loss_sum(x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        with torch.no_grad():
            logits = net(torch.from_numpy(x))
            yt = torch.from_numpy(y)
            s = F.cross_entropy(logits.reshape(-1, logits.size(-1)), yt.reshape(-1),
                                ignore_index=-1, reduction="sum")
        return float(s), int((yt >= 0).sum())
    return loss_sum


def train_twin(stream: np.ndarray, held: HeldOut, vocab: int, seconds: float,
               marks: Sequence[float], batch: int = 8, lr: float = 2e-3, warmup: int = 100,
               beta1: float = 0.9, beta2: float = 0.99, weight_decay: float = 0.1,
               grad_clip: float = 1.0, seed: int = 0, threads: Optional[int] = None
               ) -> list[dict]:
    """Train the twin for `seconds` of training wall time; one row per mark (seconds of
    training): seconds, cpu_seconds, step, tokens, bpb."""
    import torch
    from torch_peer import TorchGPT

    torch.set_num_threads(threads or os.cpu_count() or 1)
    torch.manual_seed(seed)
    cfg = engine.small.replace(vocab_size=vocab)
    init = Model(cfg, seed=seed)
    net = TorchGPT(init)                           # the engine's init, bit for bit
    names = init.param_names()
    decay = [net.w(n) for n in names if is_matrix(n)]
    no_decay = [net.w(n) for n in names if not is_matrix(n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(beta1, beta2), eps=1e-8)
    params = decay + no_decay
    T = cfg.context
    rng = np.random.default_rng(seed)
    hi = len(stream) - T - 1
    marks = sorted(float(m) for m in marks if m <= seconds) or [float(seconds)]
    rows: list[dict] = []
    loss_sum = torch_loss_sum(net)
    train_s = cpu_s = 0.0
    step = tokens = 0
    while marks:
        t0, c0 = time.perf_counter(), time.process_time()
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / warmup) if warmup > 0 else lr
        starts = rng.integers(0, hi, batch)
        x = torch.from_numpy(np.stack([stream[s:s + T] for s in starts]))
        y = torch.from_numpy(np.stack([stream[s + 1:s + T + 1] for s in starts]))
        loss = net(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        step += 1
        tokens += batch * T
        train_s += time.perf_counter() - t0
        cpu_s += time.process_time() - c0
        if train_s >= marks[0]:
            marks.pop(0)
            bpb = bits_per_byte(loss_sum, held)
            rows.append({"seconds": round(train_s, 2), "cpu_seconds": round(cpu_s, 2),
                         "step": step, "tokens": tokens, "bpb": bpb,
                         "train_loss": float(loss)})
            log.info("twin %.0fs (cpu %.0fs): step %d, %d tokens, held-out %.4f bpb",
                     train_s, cpu_s, step, tokens, bpb)
    return rows


# --------------------------------------------------------------------------- our checkpoints
def tokenizer_file(ckpt: Path) -> Path:
    """The tokenizer saved with a checkpoint (agent/training.py's naming rule)."""
    return ckpt.with_name(ckpt.name.replace(".safetensors", ".tokenizer.json"))


def eval_checkpoint(ckpt: Path, heldout_files: Sequence[Path], max_bytes: Optional[int] = 8192,
                    use_ema: bool = True) -> dict:
    """Held-out bits per byte of one of our checkpoints, with its own tokenizer."""
    ckpt = Path(ckpt)
    ck = load_checkpoint(ckpt)
    tok = Tokenizer.load(tokenizer_file(ckpt), expected_sha256=ck.tokenizer_sha256)
    model = ck.serving_model() if use_ema else ck.model
    held = heldout_windows(tok, heldout_files, model.config.context, max_bytes)
    return {"path": str(ckpt), "cycle": ck.cycle, "step": ck.step,
            "mtime": ckpt.stat().st_mtime, "vocab": model.config.vocab_size,
            "weights": "ema" if (use_ema and ck.ema is not None) else "raw",
            "bpb": bits_per_byte(model.loss, held)}


def checkpoints_in(paths: Sequence[Path]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            d = p / "checkpoints" if (p / "checkpoints").is_dir() else p
            out += sorted(d.glob("ckpt-*.safetensors"))
        else:
            out.append(p)
    return out


# --------------------------------------------------------------------------- CLI
def _marks(text: str, scale: float) -> list[float]:
    return [float(m) * scale for m in text.split(",") if m.strip()]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", type=Path, default=DEFAULT_ROOT, help="CPython source tree")
    ap.add_argument("--heldout-bytes", type=int, default=8192,
                    help="first bytes of each held-out file scored")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("split", help="copy the training files (9 in 10) to a folder")
    sp.add_argument("--out", type=Path, required=True)
    tp = sub.add_parser("train", help="train the PyTorch twin for a wall-time budget")
    budget = tp.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, default=10.0)
    budget.add_argument("--seconds", type=float)
    tp.add_argument("--marks", default=None,
                    help="evaluation marks, in the budget's unit (default 1,2,5,10 minutes)")
    tp.add_argument("--batch", type=int, default=8)
    tp.add_argument("--lr", type=float, default=2e-3)
    tp.add_argument("--warmup", type=int, default=100)
    tp.add_argument("--beta2", type=float, default=0.99)
    tp.add_argument("--threads", type=int, default=None, help="torch threads [all cores]")
    tp.add_argument("--tokenizer", type=Path, default=None,
                    help="a tokenizer file to use [ours learned on the training files to 4,096]")
    tp.add_argument("--cache", type=Path, default=Path("bench-out"))
    tp.add_argument("--out", type=Path, default=RESULTS / "torch_twin.json")
    ep = sub.add_parser("eval", help="held-out bits per byte of our checkpoints")
    ep.add_argument("paths", nargs="+", type=Path, help="checkpoint files or directories")
    ep.add_argument("--raw", action="store_true", help="score the raw weights, not the EMA")
    ep.add_argument("--out", type=Path, default=None, help="also write the rows as JSON")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    split: Split = split_files(args.src)

    if args.cmd == "split":
        for p in split.train:
            dst = args.out / p.relative_to(args.src)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, dst)
        print(f"copied {len(split.train)} training files to {args.out} "
              f"({len(split.heldout)} held out)")
        return

    if args.cmd == "eval":
        rows = [eval_checkpoint(c, split.heldout, args.heldout_bytes, not args.raw)
                for c in checkpoints_in(args.paths)]
        print("| checkpoint | cycle | step | mtime | weights | bpb |\n|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {Path(r['path']).name} | {r['cycle']} | {r['step']} | "
                  f"{time.strftime('%H:%M:%S', time.localtime(r['mtime']))} | {r['weights']} "
                  f"| {r['bpb']:.4f} |")
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(rows, indent=1))
        return

    scale = 1.0 if args.seconds is not None else 60.0
    seconds = args.seconds if args.seconds is not None else args.minutes * 60.0
    marks = _marks(args.marks, scale) if args.marks else [60.0, 120.0, 300.0, 600.0]
    texts = [read_text(p) for p in split.train]
    tok = (Tokenizer.load(args.tokenizer) if args.tokenizer else
           learned_tokenizer(texts, engine.small.vocab_size, args.cache / "stdlib-tok4096.json"))
    stream = pack((tok.encode(t) for t in texts), tok.eod_id)
    held = heldout_windows(tok, split.heldout, engine.small.context, args.heldout_bytes)
    rows = train_twin(stream, held, len(tok), seconds, marks, batch=args.batch, lr=args.lr,
                      warmup=args.warmup, beta2=args.beta2, threads=args.threads)
    print("| train s | cpu s | step | tokens | held-out bpb |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['seconds']:.0f} | {r['cpu_seconds']:.0f} | {r['step']} | {r['tokens']} "
              f"| {r['bpb']:.4f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"setup": {
        "src": str(args.src), "batch": args.batch, "lr": args.lr, "warmup": args.warmup,
        "beta2": args.beta2, "threads": args.threads or os.cpu_count(), "vocab": len(tok),
        "train_tokens": int(len(stream)), "heldout_bytes": held.n_bytes,
        "seconds": seconds, "torch": _torch_version()}, "rows": rows}, indent=1))


def _torch_version() -> str:
    import torch
    return torch.__version__


if __name__ == "__main__":
    main()
