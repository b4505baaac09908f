"""Thread scaling of the ThreadedTrainingSystem against PyTorch eager, in one run.

For each worker count: tokens/s of full training steps (forward + backward + reduction +
AdamW), scaling efficiency against one worker, CPU utilisation (process CPU seconds / wall
seconds / cores) while training, and PyTorch eager's full training step at the same thread
count (intra-op threads), interleaved round by round. Prints the sphere topology at the
end. The measurement itself lives in agent/benchmark.py, shared with `cllm bench`.

    python benchmarks/bench_spheres.py --preset base --batch 8 --workers 1,2,16 --rounds 3
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agent.benchmark import scaling, table_lines, topology_lines  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="base")
    ap.add_argument("--batch", type=int, default=None, help="default: a new data directory's")
    ap.add_argument("--workers", default="1,2,16")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--json", help="write the table to this file")
    args = ap.parse_args()
    res = scaling(args.preset, args.batch, [int(c) for c in args.workers.split(",")],
                  args.rounds, args.steps, with_torch=not args.no_torch)
    print("\n".join(table_lines(res)))
    print("\nsphere topology of the last system (Node Zero -> level-1 spheres -> children):")
    print("\n".join(topology_lines(res["topology"])))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
