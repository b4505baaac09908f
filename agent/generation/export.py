"""A checkpoint as a GGUF file that llama.cpp, Ollama, LM Studio, llama.vim and Tabby run.

`cllm export` writes the weights a data directory serves (the EMA weights where there are any,
as `cllm generate` loads them) with the tokenizer, through the `gguf` package from ggml's own
repository, in the llama.cpp architecture that computes the model exactly (`architecture`),
tensor for tensor, with our (in, out) linear weights transposed to ggml's (out, in) rows:

- `gpt2` for GPT-2's block (learned positions, LayerNorm with biases, one fused qkv
  projection, tanh-GELU, tied head; an untied head is its `output` tensor);
- `nemotron` for the recipe's default, relu^2 with rotary positions (LayerNorm with biases,
  NeoX rotation over the whole head, relu^2 without a gate, its own `output` tensor: wte's
  rows when the head is tied), q, k and v as three tensors.

Zero-initialised projections change nothing at export. QK-norm, soft-capping, relu^2 with
learned positions and rotary positions with GELU have no counterpart in either graph: a
checkpoint using them is refused with a message naming them, not exported into a model that
would compute something else.

The tokenizer is byte-level BPE, as GPT-2's: ids 0..255 are the bytes, written as GPT-2's
printable stand-ins for bytes (`byte_chars`), every later id the concatenation of its merge,
and the merges in rank order. Our special tokens (the end-of-document token, and the
fill-in-the-middle and file-separator tokens once the vocabulary has them) are control
tokens, which llama.cpp never produces from plain text, and the FIM ones are named by GGUF's
`fim_*` keys, from which llama-server's /infill builds its prompts. llama.cpp's pre-tokeniser is chosen by name; `llama3`'s is
the GPT-4 (cl100k) pattern ours starts from (engine/bpe.py). Ours also keeps a line's
indentation with the punctuation and newline before it, so on source code llama.cpp
sometimes splits text where we would not: the ids it gets for a text then differ from ours
though both decode to the same text (docs/benchmarks.md measures how often).
"""
from __future__ import annotations

import logging
from pathlib import Path
import numpy as np

from engine.config import ModelConfig, arch_text
from engine.errors import CllmError
from engine.kernels import LN_EPS
from engine.tokenizer import Tokenizer

log = logging.getLogger(__name__)

PRE_TOKENIZER = "llama3"     # llama.cpp's name for the GPT-4 pattern (see the module docstring)
DTYPES = ("f32", "f16", "q8_0")
TOKEN_NORMAL, TOKEN_CONTROL = 1, 3      # llama.cpp's token types (gguf.TokenType)


class ExportError(CllmError):
    """A checkpoint that cannot be exported as asked."""


def architecture(cfg: ModelConfig) -> str | None:
    """The llama.cpp architecture that computes `cfg`'s model exactly: `gpt2` for GPT-2's
    block, `nemotron` for the recipe's relu^2 MLP with rotary positions (LayerNorm with
    biases, NeoX rotation, relu^2 without a gate, its own head); None for anything else."""
    if cfg.qk_norm or cfg.softcap:
        return None
    if cfg.mlp == "gelu" and cfg.pos == "learned":
        return "gpt2"
    if cfg.mlp == "relu2" and cfg.pos == "rope":
        return "nemotron"
    return None


def unsupported(cfg: ModelConfig) -> list[str]:
    """The options of `cfg` that keep it out of every architecture `cllm export` writes
    (empty: exportable)."""
    if architecture(cfg) is not None:
        return []
    out = []
    if cfg.mlp != "gelu" and cfg.pos == "learned":
        out.append(f"mlp={cfg.mlp} with learned positions")
    if cfg.pos != "learned" and cfg.mlp == "gelu":
        out.append(f"pos={cfg.pos} with the gelu MLP")
    if cfg.qk_norm:
        out.append("qk_norm")
    if cfg.softcap:
        out.append(f"softcap={cfg.softcap:g}")
    return out


def check_exportable(cfg: ModelConfig, target: str = "any llama.cpp architecture cllm export "
                                                    "writes") -> None:
    """Refuse (ExportError naming the options) a model `target` would not compute."""
    bad = unsupported(cfg)
    if bad:
        raise ExportError(
            f"this checkpoint's architecture ({arch_text(cfg) or 'gpt2'}) uses {', '.join(bad)}, "
            f"which {target} does not compute; it cannot be exported",
            "export a checkpoint of a data directory made with GPT-2's block (--arch gpt2) or "
            "the default recipe (mlp=relu2,pos=rope,...: llama.cpp's nemotron), or keep "
            "serving it with cllm serve")


def byte_chars() -> list[str]:
    """GPT-2's printable stand-in for every byte (index = byte): printable Latin-1 bytes stand
    for themselves, the others for the code points from 256 up, in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    out, extra = [""] * 256, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


def token_texts(tok: Tokenizer) -> tuple[list[str], list[int]]:
    """Every id's text in GGUF's gpt2 form and its token type (specials are control tokens
    named by their text, e.g. <|eod|>)."""
    chars = byte_chars()
    specials = {i: name for name, i in tok.specials.items()}
    texts, types = [], []
    for i in range(len(tok)):
        if i in specials:
            texts.append(specials[i])
            types.append(TOKEN_CONTROL)
        else:
            texts.append("".join(chars[b] for b in tok.token_bytes(i)))
            types.append(TOKEN_NORMAL)
    return texts, types


def merge_texts(tok: Tokenizer, texts: list[str]) -> list[str]:
    """The merges in rank order, as GGUF writes them: "left right"."""
    return [f"{texts[a]} {texts[b]}" for a, b, _ in tok.merges]


def fim_token_keys(tok: Tokenizer) -> dict[str, int]:
    """GGUF's keys for the fill-in-the-middle and file-separator tokens the vocabulary has:
    llama.cpp's /infill builds its prompt from them (llama.vim and llama.vscode through
    llama-server), as our server does (agent/training/fim.py)."""
    from agent.training.fim import FILE_SEP, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX
    keys = {FIM_PREFIX: "pre", FIM_SUFFIX: "suf", FIM_MIDDLE: "mid", FILE_SEP: "sep"}
    return {f"tokenizer.ggml.fim_{k}_token_id": tok.special_id(name)
            for name, k in keys.items() if tok.special_id(name) is not None}


def gguf_tensors(params: dict[str, np.ndarray], cfg: ModelConfig) -> dict[str, np.ndarray]:
    """Our parameters under llama.cpp's tensor names for `architecture(cfg)`, float32, linear
    weights as (out, in) rows. gpt2: learned positions, one fused qkv. nemotron: no position
    rows, q, k and v apart (the fused form needs a newer llama.cpp than some installs have),
    and an `output` matrix always (its graph has no tied head: wte's rows when tied)."""
    arch = architecture(cfg)
    out = {"token_embd.weight": params["wte"]}
    if arch == "gpt2":
        out["position_embd.weight"] = params["wpe"]
    names = {"ln1": "attn_norm", "attn.proj": "attn_output", "ln2": "ffn_norm",
             "mlp.fc": "ffn_up", "mlp.proj": "ffn_down"}
    C = cfg.d_model
    for i in range(cfg.n_layers):
        for ours, theirs in names.items():
            w, b = params[f"h.{i}.{ours}.w"], params[f"h.{i}.{ours}.b"]
            out[f"blk.{i}.{theirs}.weight"] = w if w.ndim == 1 else w.T
            out[f"blk.{i}.{theirs}.bias"] = b
        w, b = params[f"h.{i}.attn.qkv.w"], params[f"h.{i}.attn.qkv.b"]
        if arch == "gpt2":
            out[f"blk.{i}.attn_qkv.weight"], out[f"blk.{i}.attn_qkv.bias"] = w.T, b
        else:
            for k, part in enumerate(("q", "k", "v")):
                out[f"blk.{i}.attn_{part}.weight"] = w[:, k * C:(k + 1) * C].T
                out[f"blk.{i}.attn_{part}.bias"] = b[k * C:(k + 1) * C]
    out["output_norm.weight"] = params["lnf.w"]
    out["output_norm.bias"] = params["lnf.b"]
    if "head" in params:
        out["output.weight"] = params["head"]
    elif arch == "nemotron":
        out["output.weight"] = params["wte"]
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def export_gguf(model, tok: Tokenizer, path: Path, *, dtype: str = "f32",
                name: str = "cllm", description: str = "") -> dict:
    """Write `model` (an engine Model) and `tok` to `path` as GGUF (atomically: a partial file
    never takes the name). Matrices in `dtype` (f32, f16 or q8_0; norms and biases stay f32).
    Returns what was written: architecture, tensors, vocabulary, bytes."""
    import gguf     # the writer from ggml's repository; imported here: only export needs it

    cfg = model.config
    check_exportable(cfg)
    if dtype not in DTYPES:
        raise ExportError(f"unknown --dtype {dtype!r}", f"choose one of {', '.join(DTYPES)}")
    if dtype == "q8_0" and cfg.d_model % 32:
        raise ExportError(f"q8_0 stores rows in blocks of 32 values; this model's rows have "
                          f"{cfg.d_model}", "export it as f16 or f32")
    if len(tok) != cfg.vocab_size:
        raise ExportError(f"the checkpoint's tokenizer has {len(tok)} tokens, its model "
                          f"{cfg.vocab_size} rows", "the checkpoint is damaged: export another cycle")
    params = model.layout.views(model.params)
    tensors = gguf_tensors(params, cfg)
    texts, types = token_texts(tok)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    arch = architecture(cfg)
    w = gguf.GGUFWriter(str(tmp), arch)
    w.add_name(name)
    if description:
        w.add_description(description)
    w.add_context_length(cfg.context)
    w.add_embedding_length(cfg.d_model)
    w.add_feed_forward_length(4 * cfg.d_model)
    w.add_block_count(cfg.n_layers)
    w.add_head_count(cfg.n_heads)
    w.add_layer_norm_eps(LN_EPS)
    if arch == "nemotron":
        w.add_head_count_kv(cfg.n_heads)
        w.add_rope_dimension_count(cfg.head_size)      # every channel of a head turns
        w.add_rope_freq_base(cfg.rope_base)
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype]
    w.add_file_type(file_type)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(PRE_TOKENIZER)
    w.add_token_list(texts)
    w.add_token_types(types)
    w.add_token_merges(merge_texts(tok, texts))
    w.add_bos_token_id(tok.eod_id)
    w.add_eos_token_id(tok.eod_id)
    w.add_add_bos_token(False)
    for key, tid in fim_token_keys(tok).items():
        w.add_uint32(key, tid)
    for key, arr in tensors.items():
        if arr.ndim == 1 or dtype == "f32":
            w.add_tensor(key, arr)
        elif dtype == "f16":
            w.add_tensor(key, arr.astype(np.float16))
        else:
            q = gguf.quants.quantize(arr, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(key, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
    finally:
        w.close()
    tmp.replace(path)
    info = {"path": str(path), "architecture": arch, "dtype": dtype,
            "tensors": len(tensors), "vocab_size": len(tok), "context": cfg.context,
            "bytes": path.stat().st_size}
    log.info("exported %s (%s, %s tensors, %s tokens, %s bytes)", path, dtype, len(tensors),
             len(tok), info["bytes"])
    return info
