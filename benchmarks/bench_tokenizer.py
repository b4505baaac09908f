"""Tokenizer benchmark on a real source tree: the Python standard library's own sources.

Measures, in one run: time to learn 8,000 merges on >= 10 MB of .py files, then (learning on
top) up to a 10,000-token vocabulary; encode throughput on one core; bytes per token on
held-out files; and the same for Hugging Face `tokenizers` (BpeTrainer, GPT-4 split regex +
ByteLevel) pinned to one thread, trained on the same files.

    python benchmarks/bench_tokenizer.py [--train-mb 12] [--heldout-mb 3] [--no-hf]
"""
from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import sysconfig
import time
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "1")          # HF tokenizers: one core, like ours
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from engine.tokenizer import Tokenizer  # noqa: E402

log = logging.getLogger("bench_tokenizer")
CL100K = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"""
          r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")


def source_files(root: Path, train_mb: float, heldout_mb: float, seed: int = 0):
    """Standard-library .py files (no site-packages), shuffled; disjoint train / held-out sets."""
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts)
    random.Random(seed).shuffle(files)
    train, held, n_train, n_held = [], [], 0, 0
    for i, p in enumerate(files):
        text = p.read_bytes().decode("utf-8", "replace")
        size = len(text.encode())
        if i % 10 == 0:
            if n_held < heldout_mb * 1e6:
                held.append(text)
                n_held += size
        elif n_train < train_mb * 1e6:
            train.append(text)
            n_train += size
    return train, held, n_train, n_held


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def bench_ours(train, held, n_held, merges, vocab):
    res = {}
    warm = Tokenizer()                                    # compile (or load) the kernels first
    warm.decode(warm.encode_batch(["warm up"])[0][:0])
    warm.learn(["warm up the compiled kernels, warm up"], 2)
    tok = Tokenizer()
    new, res["learn_s"] = timed(lambda: tok.learn(train, merges))
    res["learned"] = len(new)
    res["bpt_first"] = n_held / sum(len(tok.encode(t)) for t in held)
    res["vocab_first"] = len(tok)
    more, res["learn_more_s"] = timed(lambda: tok.learn(train, vocab - len(tok)))
    res["vocab"] = len(tok)
    big = "".join(held)
    ids, res["encode_big_s"] = timed(lambda: tok.encode(big))
    _, res["encode_files_s"] = timed(lambda: [tok.encode(t) for t in held])
    _, res["encode_batch_s"] = timed(lambda: tok.encode_batch(held))
    text, res["decode_s"] = timed(lambda: tok.decode(ids))
    assert text == big, "round trip failed"
    res["bpt"] = n_held / len(ids)
    return res


def bench_hf(train, held, n_held, vocab):
    from tokenizers import Regex, Tokenizer as HFTokenizer, models, pre_tokenizers, trainers
    res = {}
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CL100K), "isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = trainers.BpeTrainer(vocab_size=vocab, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    _, res["learn_s"] = timed(lambda: hf.train_from_iterator(train, trainer))
    res["vocab"] = hf.get_vocab_size()
    big = "".join(held)
    enc, res["encode_big_s"] = timed(lambda: hf.encode(big, add_special_tokens=False))
    _, res["encode_files_s"] = timed(lambda: [hf.encode(t, add_special_tokens=False) for t in held])
    _, res["encode_batch_s"] = timed(lambda: hf.encode_batch_fast(held, add_special_tokens=False))
    res["bpt"] = n_held / len(enc.ids)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path(sysconfig.get_paths()["stdlib"]))
    ap.add_argument("--train-mb", type=float, default=12.0)
    ap.add_argument("--heldout-mb", type=float, default=3.0)
    ap.add_argument("--merges", type=int, default=8000)
    ap.add_argument("--vocab", type=int, default=10_000)
    ap.add_argument("--no-hf", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    train, held, n_train, n_held = source_files(args.root, args.train_mb, args.heldout_mb)
    log.info("train: %s files, %.1f MB; held out: %s files, %.1f MB (from %s)",
             len(train), n_train / 1e6, len(held), n_held / 1e6, args.root)
    ours = bench_ours(train, held, n_held, args.merges, args.vocab)
    mb = n_held / 1e6
    print(f"\nsource: {args.root}  train {n_train / 1e6:.1f} MB ({len(train)} files), "
          f"held out {mb:.1f} MB ({len(held)} files)")
    print(f"{'':34}{'cllm (numba)':>16}{'HF tokenizers':>16}")
    hf = bench_hf(train, held, n_held, args.vocab) if not args.no_hf else {}

    def row(name, a, b=None, fmt="{:.2f}"):
        print(f"{name:34}{fmt.format(a):>16}{(fmt.format(b) if b is not None else '-'):>16}")
    row(f"learn {ours['learned']} merges (s)", ours["learn_s"])
    row(f"  bytes/token held out @ {ours['vocab_first']}", ours["bpt_first"])
    row(f"learn to {ours['vocab']} vocab (s)", ours["learn_s"] + ours["learn_more_s"], hf.get("learn_s"))
    row("bytes/token held out @ vocab", ours["bpt"], hf.get("bpt"))
    for key, name in [("encode_big_s", "one string"), ("encode_files_s", "file by file"),
                      ("encode_batch_s", "encode_batch")]:
        row(f"encode MB/s, 1 core, {name}", mb / ours[key], mb / hf[key] if hf else None, "{:.1f}")
    row("decode MB/s", mb / ours["decode_s"], None, "{:.1f}")


if __name__ == "__main__":
    main()
