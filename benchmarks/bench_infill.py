"""Infilling exact match on held-out code, as HumanEval-infilling scores it: spans cut from
the held-out files of benchmarks/stdlib_data.py (one line, and 2-3 consecutive lines), each
checkpoint asked for the span given the text before and after it, greedy, float32.

For each checkpoint (ours: ckpt-NNNNNN.safetensors with its tokenizer beside it):
- `fim`: the fill-in-the-middle prompt the server builds (agent/generation/stream.py's
  fim_prompt: prefix and suffix cut nearest the cursor within the context less a quarter);
  only for checkpoints whose vocabulary has the FIM tokens;
- `ltr`: the same model prompted left to right, the end of the prefix alone (the context less
  a quarter), as a model without FIM is used.
The generation stops at a special token, at the end of the context, or once it holds as many
lines as the span; a span matches when its lines equal the generated ones (trailing spaces
aside). `middle_bpb` is the span's bits per byte given the same prompt (teacher-forced; the
prompt cut so that it and the span fit the context), which reads how much the suffix helps
where exact matches are too rare to tell. Also the checkpoint's left-to-right held-out bits per byte (benchmarks/torch_twin.py
eval_checkpoint), so the cost of FIM training is read beside its gain.

    python benchmarks/bench_infill.py CKPT [CKPT ...] --spans 300
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from stdlib_data import DEFAULT_ROOT, read_text, split_files  # noqa: E402
from torch_twin import _tokenizer_for, eval_checkpoint  # noqa: E402

from agent.training.fim import fim_ids, infill_prompt  # noqa: E402
from engine.checkpoint import load_checkpoint  # noqa: E402
from engine.cpu import describe  # noqa: E402
from engine.generate import KVDecoder  # noqa: E402


def spans(files, n: int, seed: int = 0, max_bytes: int = 8192) -> list[dict]:
    """n spans of held-out code: (prefix, middle, suffix, lines), half one line, half 2-3
    lines, each line holding at least 8 non-blank characters; drawn evenly over the files."""
    rng = np.random.default_rng(seed)
    texts = [read_text(p, max_bytes) for p in files]
    out = []
    while len(out) < n:
        text = texts[int(rng.integers(len(texts)))]
        lines = text.splitlines(keepends=True)
        k = 1 if len(out) % 2 == 0 else int(rng.integers(2, 4))
        if len(lines) < k + 2:
            continue
        a = int(rng.integers(1, len(lines) - k))
        mid = lines[a:a + k]
        if any(len(x.strip()) < 8 for x in mid) or not mid[-1].endswith("\n"):
            continue
        out.append({"prefix": "".join(lines[:a]), "middle": "".join(mid).rstrip("\n"),
                    "suffix": "\n" + "".join(lines[a + k:]), "lines": k})
    return out


def greedy(model, tok, prompt: list[int], lines: int) -> str:
    """Greedy continuation of `prompt` until a special token, the context's end, or `lines`
    lines of text."""
    T = model.config.context
    dec = KVDecoder(model, weights="float32")
    logits = dec.prefill(prompt[-T:])
    out: list[int] = []
    while dec.n < T:
        t = int(np.argmax(logits))
        if tok.is_special(t):
            break
        out.append(t)
        if tok.decode(out).count("\n") >= lines:
            break
        logits = dec.step(t)
    return tok.decode(out)


def middle_nats(model, prompt: list[int], middle: list[int]) -> float:
    """-log p(middle | prompt) in nats, teacher-forced in one window."""
    seq = prompt + middle
    logits = model.logits(np.asarray([seq[:-1]]))[0].astype(np.float64)
    m = logits.max(-1, keepdims=True)
    logp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
    pos = np.arange(len(prompt) - 1, len(seq) - 1)
    return float(-logp[pos, np.asarray(middle)].sum())


def matches(generated: str, middle: str, lines: int) -> bool:
    got = [x.rstrip() for x in generated.split("\n")[:lines]]
    return got == [x.rstrip() for x in middle.split("\n")]


def score(ckpt: Path, cases: list[dict]) -> dict:
    ck = load_checkpoint(ckpt)
    tok = _tokenizer_for(ckpt, ck, ())
    model = ck.serving_model()
    T = model.config.context
    budget = T - T // 4
    ids = fim_ids(tok)
    res: dict = {"checkpoint": str(ckpt), "cycle": ck.cycle, "step": ck.step,
                 "context": T, "fim_tokens": ids is not None}
    for mode in (["fim"] if ids is not None else []) + ["ltr"]:
        hit = {1: [0, 0], 2: [0, 0]}
        nats = nbytes = 0.0
        t0 = time.perf_counter()
        for c in cases:
            pre = tok.encode(c["prefix"]).tolist()
            mid = tok.encode(c["middle"]).tolist()
            room = T - len(mid) - 1        # the middle's likelihood: prompt and middle fit
            if mode == "fim":
                prompt = infill_prompt(pre, tok.encode(c["suffix"]).tolist(), ids, budget)
                scored = infill_prompt(pre, tok.encode(c["suffix"]).tolist(), ids, room)
            else:
                prompt = ([tok.eod_id] + pre)[-budget:]
                scored = ([tok.eod_id] + pre)[-room:]
            if room > 8:
                nats += middle_nats(model, scored, mid)
                nbytes += len(c["middle"].encode("utf-8"))
            ok = matches(greedy(model, tok, prompt, c["lines"]), c["middle"], c["lines"])
            h = hit[1 if c["lines"] == 1 else 2]
            h[0] += int(ok)
            h[1] += 1
        res[mode] = {"single_line": hit[1][0] / hit[1][1] if hit[1][1] else None,
                     "multi_line": hit[2][0] / hit[2][1] if hit[2][1] else None,
                     "single_line_n": hit[1][1], "multi_line_n": hit[2][1],
                     "middle_bpb": nats / math.log(2) / nbytes if nbytes else None,
                     "middle_bytes": int(nbytes),
                     "seconds": round(time.perf_counter() - t0, 1)}
    return res


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoints", nargs="+", type=Path)
    ap.add_argument("--src", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--spans", type=int, default=300)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    split = split_files(args.src)
    cases = spans(split.heldout, args.spans)
    cpu = describe()
    print(cpu.line(), flush=True)
    rows = []
    for ck in args.checkpoints:
        r = score(ck, cases)
        r["heldout_bpb"] = eval_checkpoint(ck, split.heldout)["bpb"]
        rows.append(r)
        print(json.dumps(r), flush=True)
    if args.out:
        args.out.write_text(json.dumps({"cpu": cpu.line(), "spans": args.spans,
                                        "command": " ".join(sys.argv), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
