"""A compressor's floor for the held-out bits per byte of benchmarks/stdlib_data.py: what
`xz -9e` pays for each held-out file given the training files.

For each held-out file h (its first `max_bytes`, cut as the models' scoring cuts it):
    marginal(h) = xz(training + h) - xz(training)
in bytes, where `training` is the training files' bytes concatenated in split order and xz
is Python's lzma at preset 9 | PRESET_EXTREME (the `.xz` container, as `xz -9e` writes
it; its 64 MiB dictionary holds the whole training text). The floor is
8 * sum of marginals / sum of held-out bytes. Each file is compressed apart, as the models
score each file apart; lzma releases the GIL, so the files run on threads.

One compression of ~10 MB at -9e takes seconds and about 700 MB of memory, so results are
cached per split (a hash of every file's name and bytes, and max_bytes). Nothing here
trains or scores a model.

    python benchmarks/compress_floor.py                    # the floor of the default split
"""
from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stdlib_data import DEFAULT_ROOT, read_text, split_files  # noqa: E402

PRESET = 9 | lzma.PRESET_EXTREME
CACHE = Path(__file__).resolve().parent.parent / "bench-out"
THREADS = 4          # at most: each compressor holds ~700 MB


def xz_size(data: bytes) -> int:
    return len(lzma.compress(data, format=lzma.FORMAT_XZ, preset=PRESET))


def heldout_bytes(path: Path, max_bytes: Optional[int]) -> bytes:
    """The held-out text the models are scored on, as UTF-8 bytes."""
    return read_text(path, max_bytes).encode("utf-8", "surrogatepass")


def split_key(train: Sequence[Path], heldout: Sequence[Path], max_bytes: Optional[int]) -> str:
    h = hashlib.sha256(f"xz preset {PRESET}, max_bytes {max_bytes}".encode())
    for tag, files in (("train", train), ("heldout", heldout)):
        for p in files:
            h.update(f"{tag}:{p.name}:".encode())
            h.update(hashlib.sha256(Path(p).read_bytes()).digest())
    return h.hexdigest()[:16]


def compressor_floor(train: Sequence[Path], heldout: Sequence[Path],
                     max_bytes: Optional[int] = 8192, cache: Optional[Path] = CACHE,
                     threads: Optional[int] = None) -> dict:
    """{"bpb", "train_xz_bytes", "heldout_bytes", "marginal_bytes", "seconds", "key"} of the
    split, from `cache` when it was computed before."""
    key = split_key(train, heldout, max_bytes)
    path = Path(cache) / f"compress_floor-{key}.json" if cache is not None else None
    if path is not None and path.exists():
        return {**json.loads(path.read_text()), "cached": True}
    t0 = time.perf_counter()
    base = b"".join(Path(p).read_bytes() for p in train)
    held = [heldout_bytes(Path(p), max_bytes) for p in heldout]
    n = threads or min(THREADS, os.cpu_count() or 1)
    with ThreadPoolExecutor(n) as ex:
        base_size = ex.submit(xz_size, base)
        sizes = list(ex.map(lambda h: xz_size(base + h), held))
    marginal = sum(sizes) - len(sizes) * base_size.result()
    n_bytes = sum(len(h) for h in held)
    out = {"bpb": 8.0 * marginal / n_bytes, "train_xz_bytes": base_size.result(),
           "train_bytes": len(base), "heldout_bytes": n_bytes, "marginal_bytes": marginal,
           "files": len(held), "seconds": round(time.perf_counter() - t0, 1), "key": key,
           "method": "xz -9e (lzma preset 9|extreme): xz(train + h) - xz(train), per "
                     "held-out file h"}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=1))
    return {**out, "cached": False}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--max-files", type=int, default=None)
    ap.add_argument("--heldout-bytes", type=int, default=8192)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    split = split_files(args.src, args.max_files)
    print(json.dumps(compressor_floor(split.train, split.heldout, args.heldout_bytes,
                                      threads=args.threads), indent=1))


if __name__ == "__main__":
    main()
