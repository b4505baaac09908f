"""`cllm export --format hf`'s folder in real transformers and tokenizers, against our engine,
on the held-out files of benchmarks/stdlib_data.py:

- tokenization: the folder's tokenizer (transformers.AutoTokenizer, which reads its
  tokenizer.json: our pre-tokeniser as a regex, our merges) on each whole held-out file
  (with --all-files, every file, training files too) against ours: files tokenized
  identically, tokens per byte each way, the first difference where there is one;
- per dtype (f32, f16): held-out bits per byte computed from transformers' logits
  (GPT2LMHeadModel or NemotronForCausalLM, as exported) on our token ids of each file's first 8 KB (windows of the context, every token predicted once,
  as `cllm eval` does) against our engine's on the same windows; the largest logit
  difference, relative to the largest logit; and greedy agreement.

    python benchmarks/bench_hf.py DATA_DIR [--checkpoint N] [--files 20] [--all-files]
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

from bench_gguf import log_softmax, served_model  # noqa: E402

from agent.generation.hf_export import export_hf  # noqa: E402
from engine.cpu import describe  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("--checkpoint", type=int, default=None)
    ap.add_argument("--src", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--files", type=int, default=20, help="held-out files compared")
    ap.add_argument("--all-files", action="store_true",
                    help="tokenize every file (training and held-out), not the --files")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    import tokenizers
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    model, tok, row = served_model(args.data_dir, args.checkpoint)
    T = model.config.context
    split = split_files(args.src)
    files = split.heldout[:args.files]
    tokenized = sorted(split.train + split.heldout) if args.all_files else files
    cpu = describe()
    print(cpu.line(), flush=True)
    res: dict = {"cpu": cpu.line(), "cycle": row.cycle_id, "vocab_size": len(tok),
                 "files": len(files), "transformers": transformers.__version__,
                 "tokenizers": tokenizers.__version__, "command": " ".join(sys.argv),
                 "dtypes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in ("f32", "f16"):
            folder = Path(tmp) / f"m-{dtype}"
            export_hf(model, tok, folder, dtype=dtype)
            if dtype == "f32":
                hf_tok = AutoTokenizer.from_pretrained(folder)
                same, ours_n, theirs_n, nbytes, diffs = 0, 0, 0, 0, []
                for p in tokenized:
                    text = p.read_text(encoding="utf-8")
                    ours = tok.encode(text).tolist()
                    theirs = hf_tok(text)["input_ids"]
                    same += int(ours == theirs)
                    ours_n, theirs_n = ours_n + len(ours), theirs_n + len(theirs)
                    nbytes += len(text.encode("utf-8"))
                    if ours != theirs:
                        k = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b),
                                 min(len(ours), len(theirs)))
                        diffs.append({"file": p.name, "at_token": k,
                                      "ours": tok.decode(ours[k:k + 3]),
                                      "theirs": hf_tok.decode(theirs[k:k + 3])})
                    assert hf_tok.decode(theirs) == text
                res["tokenization"] = {"files_identical": same, "files": len(tokenized),
                                       "bytes": nbytes, "our_tokens_per_byte": ours_n / nbytes,
                                       "hf_tokens_per_byte": theirs_n / nbytes,
                                       "differences": diffs}
                print(json.dumps(res["tokenization"]), flush=True)
            hf_model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
            nats_o = nats_h = 0.0
            n_tok = n_bytes = agree = 0
            worst = 0.0
            t0 = time.perf_counter()
            for p in files:
                text = read_text(p, 8192)
                ids = [tok.eod_id] + tok.encode(text).tolist()
                n_bytes += len(text.encode("utf-8"))
                for a in range(0, len(ids) - 1, T):
                    w = ids[a:a + T + 1]
                    x, y = w[:-1], np.asarray(w[1:])
                    ours = model.logits(np.asarray([x]))[0]
                    with torch.no_grad():
                        theirs = hf_model(torch.tensor([x])).logits[0].numpy()
                    worst = max(worst, float(np.abs(theirs - ours).max() / np.abs(ours).max()))
                    agree += int((theirs.argmax(-1) == ours.argmax(-1)).sum())
                    lo, lt = log_softmax(ours), log_softmax(theirs)
                    r = np.arange(len(y))
                    nats_o -= float(lo[r, y].sum())
                    nats_h -= float(lt[r, y].sum())
                    n_tok += len(y)
            out = {"ours_bpb": nats_o / math.log(2) / n_bytes,
                   "transformers_bpb": nats_h / math.log(2) / n_bytes,
                   "max_logit_diff_rel": worst, "greedy_agreement": agree / n_tok,
                   "tokens": n_tok,
                   "bytes": (folder / "model.safetensors").stat().st_size,
                   "seconds": round(time.perf_counter() - t0, 1)}
            res["dtypes"][dtype] = out
            print(dtype, json.dumps(out), flush=True)
    if args.out:
        args.out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
