"""A checkpoint as a Hugging Face-style folder: `GPT2LMHeadModel` weights and a `tokenizers`
tokenizer, which transformers' AutoModelForCausalLM and AutoTokenizer load.

`cllm export --format hf` writes the same serving weights as the GGUF export
(agent/generation/export.py) under transformers' GPT-2 names. Our default model is GPT-2's
block exactly, and HF's GPT-2 keeps its linear weights as Conv1D (in, out) matrices, as we
do, so every tensor is ours unchanged: q, k, v in that order in the fused projection, heads
split the same way, 1/sqrt(head size) attention scaling, tanh-GELU ("gelu_new"), LayerNorm
at engine.kernels.LN_EPS. An untied head becomes `lm_head.weight` with
tie_word_embeddings false. The recipe's default (relu^2 with rotary positions, the GGUF
export's `nemotron`) is transformers' NemotronForCausalLM: the same block, with linear
weights as (out, in) rows, q, k and v apart, and LayerNorm gains stored less one (Nemotron's
LayerNorm1P scales by 1 + weight). What GGUF refuses (QK-norm, soft-capping, relu^2 or
rotary positions alone) is refused the same way.

The tokenizer is GPT-2's byte-level BPE form (the stand-in characters and merge texts of the
GGUF export), with our pre-tokeniser carried as a regex: `tokenizers` runs a pattern, not a
name, so the folder splits text where we do (engine/bpe.py's rules, written for Oniguruma),
then cuts a piece longer than engine.bpe.MAX_PIECE bytes at a character boundary as our
scanner does. After such a cut our scanner scans the rest of the text afresh, while
`tokenizers` can only cut the rest of that piece into MAX_PIECE chunks: the two part where
the fresh scan ends elsewhere (a cut just before `'s` in a run of punctuation over 256
bytes; a cut in a run of newlines that a blank line follows). None of CPython's 668
standard-library files has such a piece: every one is tokenized identically
(docs/benchmarks.md). The letter and number classes are Oniguruma's Unicode tables there,
Python's unicodedata here; they agree on every code point under Python 3.11 (Unicode 14),
and a later Python's new letters are letters to us alone.
Special tokens are added tokens: `tokenizers` finds their names in text (as our
`encode_special` does, not `encode`), and decodes them to their names unless asked to skip
them (ours decode to nothing).

Not here: quantised or bfloat16 weights (numpy, which safetensors.numpy writes from, has no
bfloat16; transformers casts on load: `torch_dtype=torch.bfloat16`).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from agent.generation.export import (ExportError, architecture, byte_chars, check_exportable,
                                     merge_texts, token_texts)
from engine import bpe
from engine.atomic import fsync_dir
from engine.config import ModelConfig
from engine.kernels import LN_EPS
from engine.tokenizer import Tokenizer

log = logging.getLogger(__name__)

TARGET = "transformers' GPT2LMHeadModel or NemotronForCausalLM"
DTYPES = {"f32": (np.float32, "float32"), "f16": (np.float16, "float16")}
# our parameter -> transformers' GPT-2 name; per block, "{i}" is the block's index
BLOCK_NAMES = {"ln1": "ln_1", "attn.qkv": "attn.c_attn", "attn.proj": "attn.c_proj",
               "ln2": "ln_2", "mlp.fc": "mlp.c_fc", "mlp.proj": "mlp.c_proj"}
FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
         "tokenizer_config.json", "special_tokens_map.json", "README.md")

# engine/bpe.py's pre-tokeniser for Oniguruma (tokenizers' regex engine): the rules of its
# docstring, with its classes spelt out: SPACE is Unicode White_Space less \r \n, LETTER
# holds the marks, OTHER is the rest. `\z` (not Oniguruma's `\Z`) is the end of the text.
_HWS = (r"\t\x0b\x0c \x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}"
        r"\x{205f}\x{3000}")
_WS, _NONWS = rf"[{_HWS}\r\n]", rf"[^{_HWS}\r\n]"
_INDENT = rf"(?:[{_HWS}]*(?=[{_HWS}]{_NONWS})|[{_HWS}]+\z)?"
_OTHER = rf"[^{_HWS}\r\n\p{{L}}\p{{M}}\p{{N}}]"
SPLIT_PATTERN = (r"'(?:[sS]|[tT]|[mM]|[dD]|[rR][eE]|[vV][eE]|[lL][lL])"
                 r"|[^\r\n\p{L}\p{M}\p{N}]?[\p{L}\p{M}]+"
                 r"|\p{N}{1,3}"
                 rf"| ?{_OTHER}+(?:[\r\n]+{_INDENT})?"
                 rf"|{_WS}*[\r\n]+{_INDENT}"
                 rf"|{_WS}+(?!{_NONWS})|{_WS}+")


def chunk_pattern() -> str:
    """MAX_PIECE's cut, on the byte-level text (one character a byte): the longest run of at
    most MAX_PIECE bytes not followed by a UTF-8 continuation byte."""
    cont = "".join(byte_chars()[0x80:0xC0])
    return rf"[\s\S]{{1,{bpe.MAX_PIECE}}}(?![{cont}])"


def hf_tensors(params: dict[str, np.ndarray], cfg: ModelConfig, dtype: str = "f32"
               ) -> dict[str, np.ndarray]:
    """Our parameters under transformers' names, every tensor in `dtype`: GPT-2's unchanged
    ((in, out) linear weights are Conv1D's layout); Nemotron's (the recipe) with linear
    weights as nn.Linear's (out, in) rows, q, k and v apart, and the LayerNorm gains less
    one (its LayerNorm1P scales by 1 + weight)."""
    if architecture(cfg) == "nemotron":
        out = _nemotron_tensors(params, cfg)
        return {k: np.ascontiguousarray(v, dtype=DTYPES[dtype][0]) for k, v in out.items()}
    out = {"transformer.wte.weight": params["wte"], "transformer.wpe.weight": params["wpe"]}
    for i in range(cfg.n_layers):
        for ours, theirs in BLOCK_NAMES.items():
            out[f"transformer.h.{i}.{theirs}.weight"] = params[f"h.{i}.{ours}.w"]
            out[f"transformer.h.{i}.{theirs}.bias"] = params[f"h.{i}.{ours}.b"]
    out["transformer.ln_f.weight"] = params["lnf.w"]
    out["transformer.ln_f.bias"] = params["lnf.b"]
    if "head" in params:
        out["lm_head.weight"] = params["head"]
    np_dtype = DTYPES[dtype][0]
    return {k: np.ascontiguousarray(v, dtype=np_dtype) for k, v in out.items()}


def _nemotron_tensors(params: dict[str, np.ndarray], cfg: ModelConfig) -> dict[str, np.ndarray]:
    C = cfg.d_model
    out = {"model.embed_tokens.weight": params["wte"]}
    for i in range(cfg.n_layers):
        h, m = f"h.{i}.", f"model.layers.{i}."
        for ours, theirs in (("ln1", "input_layernorm"), ("ln2", "post_attention_layernorm")):
            out[m + theirs + ".weight"] = params[h + ours + ".w"] - 1.0
            out[m + theirs + ".bias"] = params[h + ours + ".b"]
        w, b = params[h + "attn.qkv.w"], params[h + "attn.qkv.b"]
        for k, part in enumerate("qkv"):
            out[m + f"self_attn.{part}_proj.weight"] = w[:, k * C:(k + 1) * C].T
            out[m + f"self_attn.{part}_proj.bias"] = b[k * C:(k + 1) * C]
        for ours, theirs in (("attn.proj", "self_attn.o_proj"), ("mlp.fc", "mlp.up_proj"),
                             ("mlp.proj", "mlp.down_proj")):
            out[m + theirs + ".weight"] = params[h + ours + ".w"].T
            out[m + theirs + ".bias"] = params[h + ours + ".b"]
    out["model.norm.weight"] = params["lnf.w"] - 1.0
    out["model.norm.bias"] = params["lnf.b"]
    if "head" in params:
        out["lm_head.weight"] = params["head"]
    return out


def hf_config(cfg: ModelConfig, tok: Tokenizer, dtype: str = "f32") -> dict:
    """config.json: GPT2LMHeadModel (NemotronForCausalLM for the recipe: relu^2, rotary
    positions over the whole head, biases) at our sizes, no dropout, our end token at both
    ends."""
    if architecture(cfg) == "nemotron":
        return {
            "architectures": ["NemotronForCausalLM"], "model_type": "nemotron",
            "vocab_size": cfg.vocab_size, "max_position_embeddings": cfg.context,
            "hidden_size": cfg.d_model, "intermediate_size": 4 * cfg.d_model,
            "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
            "num_key_value_heads": cfg.n_heads, "head_dim": cfg.head_size,
            "hidden_act": "relu2", "norm_eps": LN_EPS, "initializer_range": cfg.init_std,
            "rope_theta": cfg.rope_base, "partial_rotary_factor": 1.0,
            "attention_bias": True, "mlp_bias": True, "attention_dropout": 0.0,
            "tie_word_embeddings": cfg.tie_head, "bos_token_id": tok.eod_id,
            "eos_token_id": tok.eod_id, "use_cache": True, "torch_dtype": DTYPES[dtype][1],
        }
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": cfg.vocab_size, "n_positions": cfg.context, "n_ctx": cfg.context,
        "n_embd": cfg.d_model, "n_layer": cfg.n_layers, "n_head": cfg.n_heads,
        "n_inner": 4 * cfg.d_model, "activation_function": "gelu_new",
        "layer_norm_epsilon": LN_EPS, "initializer_range": cfg.init_std,
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "summary_first_dropout": 0.0,
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False, "tie_word_embeddings": cfg.tie_head,
        "bos_token_id": tok.eod_id, "eos_token_id": tok.eod_id, "use_cache": True,
        "torch_dtype": DTYPES[dtype][1],
    }


def hf_tokenizer(tok: Tokenizer) -> dict:
    """tokenizer.json (the `tokenizers` format): byte-level BPE over our vocabulary and
    merges, our pre-tokeniser as Split patterns, the special tokens as added tokens."""
    texts, _ = token_texts(tok)
    seen: set[str] = set()
    merges = []
    for m in merge_texts(tok, texts):             # a repeated pair keeps its first rank, as ours
        if m not in seen:
            seen.add(m)
            merges.append(m)
    split = lambda pattern: {"type": "Split", "pattern": {"Regex": pattern},   # noqa: E731
                             "behavior": "Isolated", "invert": False}
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                  "use_regex": False}
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": name, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True}
                         for name, i in sorted(tok.specials.items(), key=lambda kv: kv[1])],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            split(SPLIT_PATTERN), byte_level, split(chunk_pattern())]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                    "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(texts)}, "merges": merges},
    }


def tokenizer_files(tok: Tokenizer, context: int) -> dict[str, dict]:
    """tokenizer_config.json, special_tokens_map.json: the end token at both ends, the other
    specials (fill-in-the-middle) as additional special tokens, no spaces cleaned up. The
    class is PreTrainedTokenizerFast, which runs tokenizer.json as written: transformers 5's
    GPT2Tokenizer rebuilds GPT-2's own pre-tokeniser from the vocabulary and loses ours."""
    eod = next(n for n, i in tok.specials.items() if i == tok.eod_id)
    extra = [n for n, i in sorted(tok.specials.items(), key=lambda kv: kv[1]) if n != eod]
    special = {"bos_token": eod, "eos_token": eod, "additional_special_tokens": extra}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": context,
              "add_prefix_space": False, "add_bos_token": False,
              "clean_up_tokenization_spaces": False, **special}
    return {"tokenizer_config.json": config, "special_tokens_map.json": special}


def model_card(name: str, description: str, cfg: ModelConfig, dtype: str) -> str:
    return (f"# {name}\n\n{description or 'A Crystalline CLLM checkpoint.'}\n\n"
            f"{'Nemotron' if architecture(cfg) == 'nemotron' else 'GPT-2'} architecture "
            f"({cfg.n_layers} layers, {cfg.n_heads} heads, "
            f"d_model {cfg.d_model}, context {cfg.context}, vocabulary {cfg.vocab_size}), "
            f"{dtype} weights, exported by `cllm export --format hf`.\n\n"
            "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
            "tok = AutoTokenizer.from_pretrained(FOLDER)\n"
            "model = AutoModelForCausalLM.from_pretrained(FOLDER)\n```\n")


def _replaceable(folder: Path) -> bool:
    """Whether `folder` may be replaced: absent, empty, or holding only the files an export
    writes (a previous export)."""
    if not folder.exists():
        return True
    if not folder.is_dir():
        return False
    names = {p.name for p in folder.iterdir()}
    return not names or (names <= set(FILES) and "config.json" in names)


def export_hf(model, tok: Tokenizer, folder: Path, *, dtype: str = "f32", name: str = "cllm",
              description: str = "") -> dict:
    """Write `model` (an engine Model) and `tok` into `folder` as a Hugging Face GPT-2 model
    (config, safetensors weights in `dtype`: f32 or f16, tokenizer, model card).

    Atomically: the files are written into a temporary sibling folder that then takes the
    name, so a reader never sees half an export. `folder` may be absent, empty, or a previous
    export (only the files an export writes), which is replaced; anything else is refused,
    so nothing of the user's is deleted. Returns what was written.
    """
    from safetensors.numpy import save_file    # a core dependency (our checkpoints)

    cfg = model.config
    check_exportable(cfg, TARGET)     # GPT-2 or Nemotron, as for GGUF
    if dtype not in DTYPES:
        raise ExportError(f"--dtype {dtype} is not written in the Hugging Face format",
                          f"choose one of {', '.join(DTYPES)}")
    if len(tok) != cfg.vocab_size:
        raise ExportError(f"the checkpoint's tokenizer has {len(tok)} tokens, its model "
                          f"{cfg.vocab_size} rows", "the checkpoint is damaged: export another cycle")
    folder = Path(folder)
    if not _replaceable(folder):
        raise ExportError(f"{folder} exists and is not an earlier export",
                          "name a new folder with -o, or remove this one")
    tensors = hf_tensors(model.layout.views(model.params), cfg, dtype)
    docs = {"config.json": hf_config(cfg, tok, dtype),
            "generation_config.json": {"bos_token_id": tok.eod_id, "eos_token_id": tok.eod_id,
                                       "pad_token_id": tok.eod_id},
            "tokenizer.json": hf_tokenizer(tok), **tokenizer_files(tok, cfg.context)}
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    old = None
    try:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        for fname, doc in docs.items():
            (tmp / fname).write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n",
                                     encoding="utf-8")
        (tmp / "README.md").write_text(model_card(name, description, cfg, dtype),
                                       encoding="utf-8")
        for p in tmp.iterdir():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o755)                    # mkdtemp's 0700 is for the temporary name only
        if folder.exists() and any(folder.iterdir()):
            old = folder.with_name(f".{folder.name}.{tmp.name}.old")
            folder.rename(old)
        os.replace(tmp, folder)                 # onto an absent or empty folder
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not folder.exists():
            old.rename(folder)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(folder.parent)
    size = sum(p.stat().st_size for p in folder.iterdir())
    info = {"path": str(folder), "format": "hf",
            "architecture": "NemotronForCausalLM" if architecture(cfg) == "nemotron"
            else "GPT2LMHeadModel",
            "dtype": dtype, "tensors": len(tensors), "vocab_size": len(tok),
            "context": cfg.context, "bytes": size}
    log.info("exported %s (%s, %s tensors, %s tokens, %s bytes)", folder, dtype, len(tensors),
             len(tok), size)
    return info
