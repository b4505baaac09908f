"""The PyTorch twins of the learning race (benchmarks/bench_learn_tree.py), and the scorer of
checkpoints on the held-out bits per byte of benchmarks/stdlib_data.py. PyTorch is used only
here and in torch_peer.py.

`train --recipe nanogpt`: what a user would write today, nanoGPT-style: random windows of
the packed training files, the `small` model initialised exactly as engine.Model(seed)
(torch_peer.TorchGPT: pre-LN, fused qkv, tanh GELU, tied head), AdamW 0.9/0.99 with weight
decay on matrices, global-norm clip 1.0, warmup then a constant rate; a tokenizer of ours
learned up front to the model's full vocabulary; the raw weights are what it serves.
`train --recipe ours`: PyTorch running the agent's own recipe, read from the settings table
(agent/settings.py: TrainerSettings and its TrainConfig): the preset and its architecture
options; the tokenizer learned the way a new agent model learns it (the FIM tokens first at
257-260, then one `Tokenizer.learn` on all the training text) and the model built at its size
(agent/training/model_state.build_at_vocabulary); the files' training heads (the agent's own
held-out tail, val_fraction, cut off); the agent's batches (AgentBatches: its backlog reader
over the files in its order, each with its file header, a `fim_rate` share of windows
fill-in-the-middle, `passes` passes and then no more, rows replayed from documents already
learned); AdamW or Muon with the config's settings and clip; the schedule's warmup, then
its rate at each step (engine.schedule.learning_rate, counted from the twin's first step as
the agent counts from its new model's); non-finite steps skipped; and the EMA of engine.ema
(decay_at's warm-up), which is what it serves. It does not sweep on after the passes, as
the agent does.

Both run against a wall clock that starts when they are launched (`--t0`, the launcher's
time.time()) and includes everything: imports, reading the files, learning the tokenizer,
encoding. At each mark they copy the weights they would serve (a few milliseconds on the
clock) and train on; after the deadline, off the clock, the copies are written as our
checkpoints (weights, EMA when served, tokenizer beside them) and scored (`eval`'s scorer).

`eval`: held-out bits per byte of our checkpoints (ckpt-NNNNNN.safetensors and the
ckpt-NNNNNN.tokenizer.json saved next to it), the EMA weights when the checkpoint has them.
`split`: copies the training files (9 in 10) to a folder, so the agent can be pointed at
exactly the text the twins train on and never sees a held-out file.

    python benchmarks/torch_twin.py train --recipe ours --minutes 10 --marks 1,2,5,10
    python benchmarks/torch_twin.py --max-files 40 train --seconds 20 --marks 10,20  # smoke
    python benchmarks/torch_twin.py eval /path/to/data-dir/checkpoints
    python benchmarks/torch_twin.py split --out /tmp/stdlib-train
"""
from __future__ import annotations

import time

LAUNCHED = time.time()     # the clock of a run started without --t0

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Optional, Sequence  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from race_snapshots import RaceClock, tokenizer_beside  # noqa: E402
from stdlib_data import (DEFAULT_ROOT, Split, bits_per_byte, heldout_windows,  # noqa: E402
                         learned_tokenizer, read_text, split_files)

from engine import Model, preset  # noqa: E402
from engine.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from engine.data import pack  # noqa: E402
from engine.ema import EMA, decay_at  # noqa: E402
from engine.errors import CllmError  # noqa: E402
from engine.config import parse_arch  # noqa: E402
from engine.schedule import ScheduleConfig, learning_rate  # noqa: E402
from engine.tokenizer import Tokenizer  # noqa: E402

log = logging.getLogger("torch_twin")
RESULTS = Path(__file__).resolve().parent / "results"
RECIPES = ("nanogpt", "ours")


# --------------------------------------------------------------------------- recipes
@dataclass(frozen=True)
class Recipe:
    name: str                          # "nanogpt" or "ours"
    lr: float                          # peak rate, after a linear warmup of `warmup` steps
    warmup: int = 100
    batch: int = 8                     # sequences per step (of the preset's context)
    beta1: float = 0.9
    beta2: float = 0.99
    eps: float = 1e-8
    weight_decay: float = 0.1          # decoupled, on matrices only (engine.params.is_matrix)
    grad_clip: Optional[float] = 1.0   # global norm
    ema_decay: Optional[float] = None  # serve the EMA of engine.ema (None: the raw weights)
    passes: Optional[float] = None     # shuffled passes then stop (None: random windows)
    val_fraction: float = 0.0          # tail of each training file never trained on
    vocab_growth: Optional[int] = None  # one learn of this many tokens, byte model grown to
    #                                     it (None: learn to the full vocabulary, model at it)
    skip_nonfinite: bool = False       # skip a step whose loss or gradient norm is not finite
    preset: str = "small"
    seed: int = 0
    init: Optional[str] = None         # embedding init (None: the preset's)
    arch: str = ""                     # the model's recipe options (engine.config.parse_arch)
    optimizer: str = "adamw"           # "adamw" or "muon" (torch_peer.TorchMuon, as engine.optim's)
    muon_momentum: float = 0.95
    muon_scale: float = 0.2
    schedule: str = "constant"         # engine.schedule kind over the twin's steps
    min_lr: float = 1e-4               # its floor ("rsqrt")
    decay_steps: int = 1000            # "rsqrt": step at which the peak starts to decay
    fim_rate: float = 0.0              # share of fill-in-the-middle windows (AgentBatches)
    replay_fraction: float = 0.0       # share of rows replayed (AgentBatches)
    replay_docs: int = 64              # documents in a cycle's replay sample
    cycle_seconds: float = 60.0        # the agent's longest cycle (replay sample redrawn)


def nanogpt_recipe(lr: float = 1e-3, batch: int = 8, warmup: int = 100,
                   beta2: float = 0.99) -> Recipe:
    return Recipe("nanogpt", lr=lr, batch=batch, warmup=warmup, beta2=beta2)


def our_recipe(passes: Optional[float] = None) -> Recipe:
    """The agent's recipe from the settings table's defaults (what `cllm agent` trains with
    when no flag, CLLM_* variable or config file changes it); `passes` overrides its budget."""
    from agent.settings import TrainerSettings

    st = TrainerSettings()
    tc = st.train_config(1)
    if tc.schedule not in ("constant", "rsqrt") or tc.optimizer not in ("adamw", "muon") \
            or tc.crystalline_weight:
        raise SystemExit(f"the recipe twin follows AdamW or Muon, the constant or rsqrt "
                         f"schedule and no crystalline prior; the defaults are now {tc.optimizer}, "
                         f"{tc.schedule}, crystalline weight {tc.crystalline_weight}: "
                         "teach benchmarks/torch_twin.py the new recipe")
    return Recipe("ours", lr=tc.lr, warmup=tc.warmup_steps, batch=tc.batch_size,
                  schedule=tc.schedule, min_lr=tc.min_lr, decay_steps=tc.decay_steps,
                  beta1=tc.beta1, beta2=tc.beta2, eps=tc.eps, weight_decay=tc.weight_decay,
                  grad_clip=tc.grad_clip, ema_decay=tc.ema_decay,
                  passes=passes if passes is not None else st.passes,
                  val_fraction=st.val_fraction, vocab_growth=st.max_new_tokens,
                  skip_nonfinite=True, preset=st.preset, seed=st.seed, init=st.init,
                  arch=st.arch, optimizer=tc.optimizer, muon_momentum=tc.muon_momentum,
                  muon_scale=tc.muon_scale, fim_rate=st.fim_rate,
                  replay_fraction=st.replay_fraction, replay_docs=st.replay_docs,
                  cycle_seconds=st.cycle_seconds)


def training_texts(recipe: Recipe, files: Sequence[Path]) -> list[str]:
    texts = [read_text(p) for p in files]
    if recipe.val_fraction > 0:
        from agent.training.learn import split_heldout
        texts = [split_heldout(t, recipe.val_fraction)[0] for t in texts]
    return texts


def build(recipe: Recipe, texts: Sequence[str]) -> tuple[Model, Tokenizer]:
    """The recipe's tokenizer, learned on texts, and its initial model."""
    cfg = preset(recipe.preset)
    if recipe.vocab_growth is None:
        tok = learned_tokenizer(texts, cfg.vocab_size)
        init = {"init": recipe.init} if recipe.init else {}
        return Model(cfg.replace(vocab_size=len(tok), **init, **parse_arch(recipe.arch)),
                     seed=recipe.seed), tok
    from agent.training.fim import SPECIALS
    from agent.training.model_state import build_at_vocabulary, new_model_state

    state = new_model_state(recipe.preset, seed=recipe.seed, init=recipe.init,
                            arch=parse_arch(recipe.arch))
    tok = state.tokenizer
    if recipe.fim_rate > 0:             # the FIM tokens first, at 257-260, as the agent's
        tok.add_specials(SPECIALS)
    cap = tok.max_vocab - len(tok) if tok.max_vocab is not None else recipe.vocab_growth
    tok.learn(texts, max_new_tokens=cap)
    build_at_vocabulary(state)          # the model built at its vocabulary, as the agent's
    return state.model, tok


class RandomWindows:
    """nanoGPT's batches: B windows at random starts of the packed stream, for ever."""

    def __init__(self, stream: np.ndarray, T: int, B: int, seed: int) -> None:
        self.stream, self.T, self.B = stream, T, B
        self.rng = np.random.default_rng(seed)
        self.hi = len(stream) - T - 1

    def next(self, train_s: float = 0.0) -> Optional[tuple[np.ndarray, np.ndarray]]:
        """B random windows (`train_s`, the seconds trained, does not matter here)."""
        s, T = self.rng.integers(0, self.hi, self.B), self.T
        return (np.stack([self.stream[i:i + T] for i in s]),
                np.stack([self.stream[i + 1:i + T + 1] for i in s]))


class AgentBatches:
    """The agent's own batches (agent/training/backlog.py), without its store: the training
    files as documents in the agent's backlog order (store.ledger.shuffle_key), each with its
    file header, read by one BacklogReader (64 streams, `passes` each, a `fim_rate` share of
    windows fill-in-the-middle) to the end of the passes; then None. Rows are replayed with
    probability `replay_fraction` from a sample of up to `replay_docs` documents whose passes
    are done, drawn again at the agent's cycle boundaries (FIRST_CYCLE_S, doubling up to
    `cycle_seconds` of training) as agent/training/plan.py's sample_replay draws it.

    What the agent does that this does not: a new reader (fresh streams) per cycle, and the
    consolidation sweeps after the passes (the twin stops there)."""

    def __init__(self, texts: Sequence[str], names: Sequence[str], tok: Tokenizer, T: int,
                 B: int, recipe: "Recipe") -> None:
        from agent.continuous_trainer import FIRST_CYCLE_S
        from agent.training.backlog import BacklogReader, ledger_doc, token_byte_lengths
        from agent.training.fim import fim_ids
        from agent.training.learn import STREAMS
        from store.ledger import shuffle_key

        lengths = token_byte_lengths(tok)
        ids = sorted(range(1, len(texts) + 1), key=shuffle_key)
        docs = (ledger_doc(i, "twin", texts[i - 1], tok, lengths, 0, recipe.passes,
                           names[i - 1]) for i in ids)
        self.docs = {d.id: d for d in docs if d.ids.size}
        self.left = {i: d.budget_bytes for i, d in self.docs.items()}
        self.done: set[int] = set()          # documents whose passes are done
        self.reader = BacklogReader(list(self.docs.values()), T, max(B, STREAMS), tok.eod_id,
                                    seed=recipe.seed + 2, fim_rate=recipe.fim_rate,
                                    fim=fim_ids(tok))
        self.T, self.B, self.eod, self.recipe = T, B, tok.eod_id, recipe
        self.first_s, self.cap_s = FIRST_CYCLE_S, recipe.cycle_seconds
        self.cycle, self.cycle_end_s = 0, 0.0
        self.batcher = None
        self.replayed_bytes = 0

    def _new_cycle(self) -> None:
        from agent.training.backlog import Batcher, ReplayReader

        self.cycle += 1
        self.cycle_end_s += min(self.cap_s, self.first_s * 2 ** (self.cycle - 1))
        r = self.recipe
        rep = None
        if r.replay_fraction > 0 and self.done:
            rng = np.random.default_rng(r.seed * 1_000_003 + self.cycle)
            pool = sorted(self.done)
            pick = sorted(rng.choice(pool, size=min(r.replay_docs, len(pool)), replace=False))
            rep = ReplayReader([self.docs[int(i)] for i in pick], self.T, self.eod,
                               r.seed + self.cycle)
        self.batcher = Batcher(self.reader, rep, self.B, r.replay_fraction if rep else 0.0,
                               r.seed + self.cycle)

    def next(self, train_s: float = 0.0) -> Optional[tuple[np.ndarray, np.ndarray]]:
        """The next batch; `train_s`: seconds trained so far (the cycle clock)."""
        if self.batcher is None or train_s >= self.cycle_end_s:
            self._new_cycle()
        b = self.batcher.next()
        if b is None:
            return None
        self.replayed_bytes += sum(b.replay.values())
        for doc, n in b.new.items():
            self.left[doc] -= n
            if self.left[doc] <= 0:
                self.done.add(doc)
        return b.inputs, b.targets


# --------------------------------------------------------------------------- the race
def flat_copy(tensors) -> np.ndarray:
    """The tensors (in the engine's layout order) as one flat float32 array: a copy."""
    return np.concatenate([t.detach().numpy().ravel() for t in tensors]).astype(
        np.float32, copy=False)


def race(recipe: Recipe, split: Split, clock: RaceClock, threads: Optional[int] = None
         ) -> dict:
    """Train until the clock's deadline (or the recipe's passes); copy the served weights at
    each mark. Returns the run's summary, with the copies under "snapshots" (arrays)."""
    import torch
    from torch_peer import TorchGPT, torch_optimizers

    torch.set_num_threads(threads or os.cpu_count() or 1)
    torch.manual_seed(recipe.seed)
    texts = training_texts(recipe, split.train)
    model, tok = build(recipe, texts)
    tokenizer_s = clock.now()
    stream = pack((tok.encode(t) for t in texts), tok.eod_id)
    T, B = model.config.context, recipe.batch
    if recipe.passes is None:
        data = RandomWindows(stream, T, B, recipe.seed)
    else:
        from agent.training.fim import doc_name
        data = AgentBatches(texts, [doc_name(str(p)) for p in split.train], tok, T, B, recipe)
    net = TorchGPT(model)
    names = model.param_names()
    params = [net.w(n) for n in names]
    opt, matrices = torch_optimizers(net, recipe)
    schedule = ScheduleConfig(kind=recipe.schedule, lr=recipe.lr, min_lr=recipe.min_lr,
                              warmup_steps=recipe.warmup, decay_steps=recipe.decay_steps)
    shadow = [p.detach().clone() for p in params] if recipe.ema_decay else None
    ema_t = step = tokens = skipped = 0
    train_s = 0.0
    first_step_s = budget_done_s = None
    rows: list[dict] = []
    last: Optional[dict] = None          # the latest copy; reused while nothing changed
    log.info("%s twin: tokenizer of %d learned at %.1f s, %d training tokens", recipe.name,
             len(tok), tokenizer_s, len(stream))

    def mark(m: float) -> None:
        """Copy the weights served now (once per step) for mark m; none before a step."""
        nonlocal last
        if step == 0:
            rows.append({"mark_s": m, "at_s": None, "step": 0, "tokens": 0, "copy": None})
            return
        if last is None or last["step"] != step:
            last = {"at_s": round(clock.now(), 3), "step": step, "ema_t": ema_t,
                    "raw": flat_copy(params),
                    "ema": flat_copy(shadow) if shadow is not None else None}
        rows.append({"mark_s": m, "at_s": last["at_s"], "step": step, "tokens": tokens,
                     "copy": last})

    while True:
        for m in clock.passed():
            mark(m)
        if clock.over():
            break
        batch = data.next(train_s)
        if batch is None:                # the budget is trained: these weights are final,
            budget_done_s = clock.now()  # so the marks still to come get them now
            for m in clock.marks:
                mark(m)
            clock.marks = []
            break
        t_step = time.perf_counter()
        if first_step_s is None:
            first_step_s = clock.now()
        x, y = (torch.from_numpy(a) for a in batch)
        for g in opt.param_groups:
            g["lr"] = learning_rate(schedule, step, step, step + 1)
        loss = net(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = (torch.nn.utils.clip_grad_norm_(params, recipe.grad_clip)
                if recipe.grad_clip else None)
        if recipe.skip_nonfinite and not (math.isfinite(loss.item()) and
                                          (norm is None or math.isfinite(float(norm)))):
            skipped += 1
        else:
            opt.step()
            if matrices is not None:
                matrices.step(opt.param_groups[0]["lr"])
            if shadow is not None:
                with torch.no_grad():
                    w = 1.0 - decay_at(recipe.ema_decay, ema_t)
                    torch._foreach_lerp_(shadow, [p.detach() for p in params], w)
                ema_t += 1
        step += 1
        tokens += int((y >= 0).sum())
        train_s += time.perf_counter() - t_step
    end_s = clock.now()
    log.info("%s twin: %d steps, %d tokens in %.0f s (%.0f tokens/s training)", recipe.name,
             step, tokens, end_s, tokens / max(train_s, 1e-9))
    return {"recipe": dataclasses.asdict(recipe), "vocab": len(tok),
            "train_tokens": len(stream), "tokenizer_s": round(tokenizer_s, 3),
            "first_step_s": first_step_s and round(first_step_s, 3),
            "budget_done_s": budget_done_s and round(budget_done_s, 3),
            "end_s": round(end_s, 3), "steps": step, "skipped_steps": skipped,
            "tokens": tokens, "train_s": round(train_s, 3),
            "tokens_per_s": round(tokens / max(end_s, 1e-9), 1),
            "train_tokens_per_s": round(tokens / max(train_s, 1e-9), 1),
            "ema_updates": ema_t, "threads": threads or os.cpu_count(),
            "replayed_bytes": getattr(data, "replayed_bytes", 0),
            "torch": torch.__version__, "marks": rows,
            "_model": model.config, "_tokenizer": tok}


def save_snapshots(run: dict, out_dir: Path) -> dict:
    """Write the run's weight copies as our checkpoints (tokenizer beside; the EMA in the
    checkpoint when the recipe serves it) and return the JSON-able summary, each mark
    naming its file."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg, tok = run.pop("_model"), run.pop("_tokenizer")
    decay = run["recipe"]["ema_decay"]
    files: dict[int, str] = {}
    for r in run["marks"]:
        c = r.pop("copy")
        r["path"] = None
        if c is None:
            continue
        if id(c) not in files:
            path = out_dir / f"twin-{run['recipe']['name']}-{c['step']:07d}.safetensors"
            model = Model(cfg, params=c["raw"])
            ema = None
            if c["ema"] is not None:
                ema = EMA(c["raw"], model.layout, decay, t=c["ema_t"])
                ema.shadow = c["ema"]
            tok.save(tokenizer_beside(path))
            save_checkpoint(path, model, step=c["step"], tokenizer_sha256=tok.sha256, ema=ema)
            files[id(c)] = str(path)
        r["path"] = files[id(c)]
    return run


# --------------------------------------------------------------------------- scoring
def tokenizer_file(ckpt: Path) -> Path:
    """The tokenizer saved with a checkpoint (agent/training/model_state.py's naming rule)."""
    return tokenizer_beside(Path(ckpt))


def _tokenizer_for(ckpt: Path, ck, tokenizers: Sequence[Path]) -> Tokenizer:
    for cand in [tokenizer_file(ckpt), *tokenizers]:
        try:
            return Tokenizer.load(cand, expected_sha256=ck.tokenizer_sha256)
        except CllmError:
            continue
    raise SystemExit(f"no tokenizer with SHA-256 {ck.tokenizer_sha256} for {ckpt}")


def eval_checkpoint(ckpt: Path, heldout_files: Sequence[Path], max_bytes: Optional[int] = 8192,
                    use_ema: bool = True, tokenizers: Sequence[Path] = ()) -> dict:
    """Held-out bits per byte of one of our checkpoints, with its own tokenizer: the file
    beside it, else the first of `tokenizers` whose SHA-256 the checkpoint names."""
    ckpt = Path(ckpt)
    ck = load_checkpoint(ckpt)
    tok = _tokenizer_for(ckpt, ck, tokenizers)
    model = ck.serving_model() if use_ema else ck.model
    held = heldout_windows(tok, heldout_files, model.config.context, max_bytes)
    return {"path": str(ckpt), "cycle": ck.cycle, "step": ck.step,
            "mtime": ckpt.stat().st_mtime, "vocab": model.config.vocab_size,
            "weights": "ema" if (use_ema and ck.ema is not None) else "raw",
            "bpb": bits_per_byte(model.loss, held)}


def sample_checkpoint(ckpt: Path, prompt: str, max_tokens: int = 60, seed: int = 1,
                      tokenizers: Sequence[Path] = ()) -> str:
    """A continuation of `prompt` by one of our checkpoints' serving weights, drawn as
    `cllm generate` draws by default (agent/generation/stream.py's Sampling), float32 decode."""
    from engine.generate import KVDecoder, sample_next
    ck = load_checkpoint(Path(ckpt))
    tok = _tokenizer_for(Path(ckpt), ck, tokenizers)
    model = ck.serving_model()
    ids = [tok.eod_id, *tok.encode(prompt)][-model.config.context:]
    dec, rng, out = KVDecoder(model, weights="float32"), np.random.default_rng(seed), []
    logits = dec.prefill(ids)
    for _ in range(max_tokens):
        t = sample_next(logits, rng, temperature=0.8, top_k=40)
        if t == tok.eod_id or dec.n >= model.config.context:
            break
        out.append(t)
        logits = dec.step(t)
    return tok.decode(out)


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
    ap.add_argument("--glob", default="*.py", help="which files of the tree")
    ap.add_argument("--max-files", type=int, default=None,
                    help="only the first N files of the tree (smoke runs)")
    ap.add_argument("--heldout-bytes", type=int, default=8192,
                    help="first bytes of each held-out file scored")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("split", help="copy the training files (9 in 10) to a folder")
    sp.add_argument("--out", type=Path, required=True)
    tp = sub.add_parser("train", help="train a twin for a wall-time budget")
    tp.add_argument("--recipe", choices=RECIPES, default="nanogpt")
    budget = tp.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, default=10.0)
    budget.add_argument("--seconds", type=float)
    tp.add_argument("--marks", default=None,
                    help="marks, in the budget's unit (default 1,2,5,10 minutes)")
    tp.add_argument("--t0", type=float, default=None,
                    help="time.time() the clock starts at [this process's start]")
    tp.add_argument("--batch", type=int, default=8, help="nanogpt only")
    tp.add_argument("--lr", type=float, default=1e-3, help="nanogpt only")
    tp.add_argument("--warmup", type=int, default=100, help="nanogpt only")
    tp.add_argument("--beta2", type=float, default=0.99, help="nanogpt only")
    tp.add_argument("--passes", type=float, default=None,
                    help="ours only: passes over the training text [the settings table's]")
    tp.add_argument("--threads", type=int, default=None, help="torch threads [all cores]")
    tp.add_argument("--snapshots", type=Path, default=Path("bench-out") / "twin",
                    help="folder for the weights copied at the marks")
    tp.add_argument("--no-score", action="store_true", help="leave scoring to the caller")
    tp.add_argument("--out", type=Path, default=RESULTS / "torch_twin.json")
    ep = sub.add_parser("eval", help="held-out bits per byte of our checkpoints")
    ep.add_argument("paths", nargs="+", type=Path, help="checkpoint files or directories")
    ep.add_argument("--raw", action="store_true", help="score the raw weights, not the EMA")
    ep.add_argument("--out", type=Path, default=None, help="also write the rows as JSON")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    log.setLevel(logging.INFO)
    split: Split = split_files(args.src, args.max_files, args.glob)

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
    recipe = (nanogpt_recipe(args.lr, args.batch, args.warmup, args.beta2)
              if args.recipe == "nanogpt" else our_recipe(args.passes))
    clock = RaceClock(args.t0 if args.t0 is not None else LAUNCHED, seconds, marks)
    run = save_snapshots(race(recipe, split, clock, args.threads), args.snapshots)
    if not args.no_score:               # off the clock
        scored: dict[str, float] = {}
        for r in run["marks"]:
            if r["path"] and r["path"] not in scored:
                scored[r["path"]] = eval_checkpoint(Path(r["path"]), split.heldout,
                                                    args.heldout_bytes)["bpb"]
            r["bpb"] = scored.get(r["path"])
        print("| mark s | weights at s | step | tokens | held-out bpb |\n|---|---|---|---|---|")
        for r in run["marks"]:
            print(f"| {r['mark_s']:g} | {r['at_s']} | {r['step']} | {r['tokens']} | "
                  f"{r['bpb'] and round(r['bpb'], 4)} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(run, indent=1))


if __name__ == "__main__":
    main()
