"""`cllm export`'s GGUF in real llama.cpp (llama-cpp-python), against our engine, on the
held-out files of benchmarks/stdlib_data.py:

- tokenization: llama.cpp's tokens for each file's first 8 KB (its `llama3` pre-tokenizer
  and our merges) against ours: files tokenized identically, tokens per byte each way, and
  the held-out bits per byte llama.cpp gets on its own tokens (what its users get);
- per dtype (f32, f16, q8_0): held-out bits per byte computed from llama.cpp's logits on
  OUR token ids (windows of the context, every token predicted once, as `cllm eval` does)
  against our engine's on the same windows; the largest logit difference; and greedy
  agreement (the share of positions where both pick the same next token).

    python benchmarks/bench_gguf.py DATA_DIR [--checkpoint N] [--files 20]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from stdlib_data import DEFAULT_ROOT, read_text, split_files  # noqa: E402

from agent.generation.export import export_gguf  # noqa: E402
from agent.training.model_state import load_recorded_model_state  # noqa: E402
from engine.cpu import describe  # noqa: E402
from store import open_store  # noqa: E402


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def served_model(data_dir: Path, cycle=None):
    """(serving model, tokenizer, checkpoint row) of a data directory's cycle (None: latest)."""
    with open_store(data_dir) as store:
        state, row = load_recorded_model_state(store, cycle)
    return state.serving_model(), state.tokenizer, row


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("--checkpoint", type=int, default=None)
    ap.add_argument("--src", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--files", type=int, default=20, help="held-out files scored")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    from llama_cpp import Llama

    model, tok, row = served_model(args.data_dir, args.checkpoint)
    T = model.config.context
    files = split_files(args.src).heldout[:args.files]
    texts = [read_text(p, 8192) for p in files]
    cpu = describe()
    print(cpu.line(), flush=True)
    res: dict = {"cpu": cpu.line(), "cycle": row.cycle_id, "files": len(files),
                 "command": " ".join(sys.argv), "dtypes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in ("f32", "f16", "q8_0"):
            path = Path(tmp) / f"m-{dtype}.gguf"
            export_gguf(model, tok, path, dtype=dtype)
            llm = Llama(model_path=str(path), n_ctx=T, n_batch=T, n_threads=2,
                        logits_all=True, verbose=False, type_k=0, type_v=0)
            if dtype == "f32":
                same, ours_n, theirs_n, nbytes = 0, 0, 0, 0
                for text in texts:
                    ours = tok.encode(text).tolist()
                    theirs = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
                    same += int(ours == theirs)
                    ours_n, theirs_n = ours_n + len(ours), theirs_n + len(theirs)
                    nbytes += len(text.encode("utf-8"))
                # what a user of llama.cpp gets: its own tokens of the text, scored by it
                nats = 0.0
                for text in texts:
                    ids = [tok.eod_id] + llm.tokenize(text.encode("utf-8"), add_bos=False,
                                                      special=False)
                    for a in range(0, len(ids) - 1, T):
                        w = ids[a:a + T + 1]
                        llm.reset()
                        llm.eval(w[:-1])
                        lt = log_softmax(np.asarray(llm.scores[:len(w) - 1], np.float32))
                        nats -= float(lt[np.arange(len(w) - 1), np.asarray(w[1:])].sum())
                res["tokenization"] = {"files_identical": same, "files": len(texts),
                                       "our_tokens_per_byte": ours_n / nbytes,
                                       "llama_cpp_tokens_per_byte": theirs_n / nbytes,
                                       "llama_cpp_bpb_own_tokens": nats / math.log(2) / nbytes}
                print(json.dumps(res["tokenization"]), flush=True)
            nats_o = nats_l = 0.0
            n_tok = n_bytes = agree = 0
            worst = 0.0
            t0 = time.perf_counter()
            for text in texts:
                ids = [tok.eod_id] + tok.encode(text).tolist()
                n_bytes += len(text.encode("utf-8"))
                for a in range(0, len(ids) - 1, T):
                    w = ids[a:a + T + 1]
                    x, y = w[:-1], np.asarray(w[1:])
                    ours = model.logits(np.asarray([x]))[0]
                    llm.reset()
                    llm.eval(x)
                    theirs = np.asarray(llm.scores[:len(x)], np.float32)
                    worst = max(worst, float(np.abs(theirs - ours).max()))
                    agree += int((theirs.argmax(-1) == ours.argmax(-1)).sum())
                    lo, lt = log_softmax(ours), log_softmax(theirs)
                    r = np.arange(len(y))
                    nats_o -= float(lo[r, y].sum())
                    nats_l -= float(lt[r, y].sum())
                    n_tok += len(y)
            out = {"ours_bpb": nats_o / math.log(2) / n_bytes,
                   "llama_cpp_bpb": nats_l / math.log(2) / n_bytes,
                   "max_abs_logit_diff": worst, "greedy_agreement": agree / n_tok,
                   "tokens": n_tok, "bytes": path.stat().st_size,
                   "seconds": round(time.perf_counter() - t0, 1)}
            res["dtypes"][dtype] = out
            print(dtype, json.dumps(out), flush=True)
            del llm
    if args.out:
        args.out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
