"""How close int8 decode weights keep a trained model to float32: trains a preset on the
sample corpus (the one `cllm train` uses; every tenth file held out), then compares, on the
held-out files, the perplexity of teacher-forced decoding with int8 and with float32 decode
weights, and the greedy continuations of a fixed prompt set.

    python benchmarks/decode_quality.py --preset small --steps 1000
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from importlib.resources import files

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import engine  # noqa: E402
from engine import Model, ThreadedTrainingSystem, TrainConfig  # noqa: E402
from engine.cpu import describe  # noqa: E402
from engine.data import WindowSampler, pack  # noqa: E402
from engine.generate import BatchDecoder  # noqa: E402
from stdlib_data import learned_tokenizer  # noqa: E402


def corpus() -> tuple[list[str], list[str]]:
    root = files("agent.sample_corpus")
    paths = sorted((f for d in root.iterdir() if d.is_dir() for f in d.iterdir()),
                   key=lambda f: (f.parent.name, f.name))
    texts = [p.read_text(encoding="utf-8") for p in paths]
    return ([t for i, t in enumerate(texts) if i % 10 != 9],
            [t for i, t in enumerate(texts) if i % 10 == 9])


def teacher_forced(model, streams: list[np.ndarray], kind: str) -> tuple[float, int]:
    """Sum of nats and count over windows of the held-out streams, decoded token by token
    (prefill of the first token, then one step per token), in batches small enough for the
    fused kernel with `kind` weights (larger ones take the float32 BLAS path)."""
    T = model.config.context
    wins = np.stack([s[i:i + T] for s in streams for i in range(0, len(s) - T, T)])
    per = BatchDecoder.BLAS_BATCH - 1
    nats = 0.0
    for lo in range(0, len(wins), per):
        W = wins[lo:lo + per]
        dec = BatchDecoder(model, len(W), kind)
        logits = np.stack([dec.prefill([int(w[0])], row=b).copy() for b, w in enumerate(W)])
        for t in range(1, T):
            z = logits.astype(np.float64)
            mx = z.max(1)
            nats += float(np.sum(np.log(np.exp(z - mx[:, None]).sum(1)) + mx
                                 - z[np.arange(len(W)), W[:, t]]))
            if t < T - 1:
                logits = dec.step(W[:, t]).copy()
    return nats, len(wins) * (T - 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--new-tokens", type=int, default=24)
    args = ap.parse_args()
    print(describe().line())
    cfg = engine.preset(args.preset)
    train, held = corpus()
    tok = learned_tokenizer(train, cfg.vocab_size)
    cfg = cfg.replace(vocab_size=len(tok))
    tcfg = TrainConfig(warmup_steps=100)
    model = Model(cfg, seed=0)
    sampler = WindowSampler([pack(tok.encode_batch(train), tok.eod_id)], cfg.context,
                            args.batch, seed=0)
    t0 = time.perf_counter()
    with ThreadedTrainingSystem(model, tcfg) as system:
        for _ in range(args.steps):
            x, y = sampler.batch()
            res = system.train_step(x, y)
    print(f"trained {args.preset} ({len(tok)} tokens) {args.steps} steps of {args.batch}x"
          f"{cfg.context} in {time.perf_counter() - t0:.0f} s, last loss {res.loss:.3f}")
    streams = [np.concatenate([[tok.eod_id], tok.encode(t)]).astype(np.int64) for t in held]
    ppl = {}
    for kind in ("float32", "int8"):
        nats, n = teacher_forced(model, streams, kind)
        ppl[kind] = math.exp(nats / n)
    change = 100 * (ppl["int8"] / ppl["float32"] - 1)
    print(f"held-out perplexity, teacher-forced decoding over {n} tokens: float32 "
          f"{ppl['float32']:.3f}, int8 {ppl['int8']:.3f} ({change:+.2f}%)")
    rng = np.random.default_rng(0)
    agree, same_seq, gaps, split_gaps = 0, 0, [], []
    for _ in range(args.prompts):
        s = streams[int(rng.integers(len(streams)))]
        i = int(rng.integers(0, max(1, len(s) - 8)))
        prompt = [int(t) for t in s[i:i + 8]]
        a = model.generate(prompt, args.new_tokens, temperature=0, weights="int8")
        b = model.generate(prompt, args.new_tokens, temperature=0, weights="float32")
        agree += int(np.sum(a == b))
        same_seq += int(np.array_equal(a, b))
        # float32's margin between its top two logits along its own continuation
        full = model.logits(np.asarray([prompt + [int(t) for t in b[:-1]]]))[0, len(prompt) - 1:]
        top2 = np.sort(full, axis=1)[:, -2:]
        margin = top2[:, 1] - top2[:, 0]
        gaps.extend(margin.tolist())
        if not np.array_equal(a, b):
            split_gaps.append(float(margin[int(np.argmax(a != b))]))
    print(f"greedy continuations of {args.prompts} held-out 8-token prompts x "
          f"{args.new_tokens} tokens: {same_seq}/{args.prompts} identical, "
          f"{agree}/{args.prompts * args.new_tokens} tokens agree")
    if split_gaps:
        below = 100 * np.mean(np.array(gaps) < max(split_gaps))
        print(f"  where a continuation first differs, float32's top-2 logit margin was "
              f"{', '.join(f'{g:.4f}' for g in split_gaps)} (median margin over all "
              f"positions {np.median(gaps):.3f}, {below:.1f}% of positions below the largest "
              f"of those)")


if __name__ == "__main__":
    main()
