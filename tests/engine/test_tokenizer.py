"""Tokenizer: lossless round trips, append-only learning, saved state, and the compiled
kernels against slow pure-Python references (pre-tokeniser regex, BPE encode, BPE training)."""
from __future__ import annotations

import contextlib
import json
import pickle
import json.decoder
import json.encoder
import random
import string
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from engine import bpe
from engine.errors import CllmError
from engine.tokenizer import Tokenizer, TokenizerError

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def corpus() -> list[str]:
    """Real source code and docstrings: a few standard-library modules (~100 kB, fixed)."""
    return [Path(m.__file__).read_text(encoding="utf-8")
            for m in (json, json.decoder, json.encoder, textwrap, string, contextlib)]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    t = Tokenizer()
    t.learn(corpus(), 400)
    return t


# ------------------------------------------------------------------ references

def ref_pieces(text: str) -> list[str]:
    """The pre-tokeniser written as a regex (engine.bpe docstring), MAX_PIECE cut included."""
    regex = pytest.importorskip("regex")
    hws = r"\t\x0b\x0c \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
    ws, nonws = rf"[{hws}\r\n]", rf"[^{hws}\r\n]"
    indent = rf"(?:[{hws}]*(?=[{hws}]{nonws})|[{hws}]+\Z)?"
    letter, other = r"[\p{L}\p{M}]", rf"[^{hws}\r\n\p{{L}}\p{{M}}\p{{N}}]"
    pattern = regex.compile(
        r"'(?:[sS]|[tT]|[mM]|[dD]|[rR][eE]|[vV][eE]|[lL][lL])"
        rf"|[^\r\n\p{{L}}\p{{M}}\p{{N}}]?{letter}+"
        r"|\p{N}{1,3}"
        rf"| ?{other}+(?:[\r\n]+{indent})?"
        rf"|{ws}*[\r\n]+{indent}"
        rf"|{ws}+(?!{nonws})|{ws}+")
    out, pos = [], 0
    while pos < len(text):
        end = pattern.match(text, pos).end()
        size = 0
        for k in range(pos, end):                # cut to MAX_PIECE bytes at a char boundary
            size += len(text[k].encode("utf-8", "surrogatepass"))
            if size > bpe.MAX_PIECE:
                end = k
                break
        out.append(text[pos:end])
        pos = end
    return out


def kernel_pieces(text: str) -> list[str]:
    """The pieces the compiled scanner (bpe._piece_end, as encoding runs it) cuts text into."""
    data = text.encode("utf-8", "surrogatepass")
    buf, classes = np.frombuffer(data, np.uint8), bpe.char_classes()
    cuts = [0]
    while cuts[-1] < len(data):
        cuts.append(bpe._piece_end(buf, cuts[-1], len(data), classes))
    return [data[a:b].decode("utf-8", "surrogatepass") for a, b in zip(cuts[:-1], cuts[1:])]


def ref_bpe(piece: bytes, merges) -> list[int]:
    """Lowest-rank adjacent pair first, leftmost on ties."""
    ranks = {}
    for r, (a, b, z) in enumerate(merges):
        ranks.setdefault((a, b), (r, z))
    sym = list(piece)
    while len(sym) > 1:
        cands = [(ranks[p][0], i) for i, p in enumerate(zip(sym, sym[1:])) if p in ranks]
        if not cands:
            break
        _, i = min(cands)
        sym[i:i + 2] = [ranks[(sym[i], sym[i + 1])][1]]
    return sym


def ref_learn(tokens: list[bytes], merges, texts, budget, min_freq):
    """Naive BPE training: recount every pair after every merge."""
    tokens = list(tokens)
    words = Counter()
    for t in texts:
        for p in kernel_pieces(t):
            words[tuple(ref_bpe(p.encode("utf-8", "surrogatepass"), merges))] += 1
    by_bytes = {b: i for i, b in enumerate(tokens) if b}
    out, new = [], 0
    while new < budget:
        pairs = Counter()
        for w, c in words.items():
            for p in zip(w, w[1:]):
                pairs[p] += c
        if not pairs:
            break
        (a, b), c = max(pairs.items(), key=lambda kv: (kv[1], -kv[0][0], -kv[0][1]))
        if c < min_freq:
            break
        z = by_bytes.get(tokens[a] + tokens[b])
        if z is None:
            z = len(tokens)
            tokens.append(tokens[a] + tokens[b])
            by_bytes[tokens[z]] = z
            new += 1
        out.append((a, b, z))
        merged = Counter()
        for w, cnt in words.items():
            w2, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                    w2.append(z)
                    i += 2
                else:
                    w2.append(w[i])
                    i += 1
            merged[tuple(w2)] += cnt
        words = merged
    return out


def agrees_with_regex(c: str) -> bool:
    """Characters whose letter/number class is the same in unicodedata and the regex module."""
    regex = pytest.importorskip("regex")
    cls = bpe.char_classes()[ord(c)]
    return (cls == bpe.LETTER) == bool(regex.match(r"[\p{L}\p{M}]", c)) and \
        (cls == bpe.NUMBER) == bool(regex.match(r"\p{N}", c))


code_text = st.text(st.sampled_from(list("ab_'sStT(). :\t\n\r 1234") + ["é", "\u0301", "😀", "\u00a0", "\x00"]),
                    max_size=60)
any_text = st.text(st.characters(exclude_categories=("Cs", "Cn", "Co")).filter(agrees_with_regex), max_size=60)


# ------------------------------------------------------------------ pre-tokeniser

@pytest.mark.parametrize("text, pieces", [
    ("def f(x):\n    return x", ["def", " f", "(x", "):\n   ", " return", " x"]),
    ("a = 1\n        b", ["a", " =", " ", "1", "\n       ", " b"]),
    ("x  \n  \n  y", ["x", "  \n  \n ", " y"]),
    ("don't I'LL 12345", ["don", "'t", " I", "'LL", " ", "123", "45"]),
    ("end  ", ["end", "  "]),
    ("):\n  \n", ["):\n", "  \n"]),
])
def test_pieces_examples(text, pieces):
    assert kernel_pieces(text) == pieces


@FAST
@given(st.one_of(code_text, any_text))
def test_pieces_match_regex_reference(text):
    assert kernel_pieces(text) == ref_pieces(text)


def test_long_runs_are_cut_at_max_piece():
    text = "x" * 1000 + " " * 600 + "é" * 300 + "\n"
    assert kernel_pieces(text) == ref_pieces(text)
    assert max(len(p.encode()) for p in kernel_pieces(text)) <= bpe.MAX_PIECE


# ------------------------------------------------------------------ round trips

SPECIAL = [
    "", "\x00", "a\x00b\x00", "\r\n\n\r\r\n", "x\ry\nz\r\n", "😀👩‍👩‍👧 🇫🇷", "e\u0301\u0302 a\u0308",
    "שלום עולם مرحبا بالعالم", "\u202eabc\u202c", "\ufeffBOM", "\ud800 lone \udfff", "\udc80\udcff",
    "\U0010ffff\U000e0001", "    \t\t  \n", "'s'S'll",
]


@pytest.mark.parametrize("text", SPECIAL)
def test_round_trip_special_strings(tok, text):
    ids = tok.encode(text)
    assert ids.dtype == np.int32
    assert tok.decode(ids) == text
    assert tok.eod_id not in ids


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_round_trip_any_unicode(text):
    t = _shared()
    assert t.decode(t.encode(text)) == text


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_round_trip_any_bytes(data):
    t = _shared()
    assert t.decode_bytes(t.encode_bytes(data)) == data


@settings(max_examples=100, deadline=None)
@given(st.lists(st.characters(), max_size=30).map("".join))
def test_round_trip_with_surrogates(text):
    t = _shared()
    assert t.decode(t.encode(text)) == text


_SHARED: list[Tokenizer] = []


def _shared() -> Tokenizer:
    """A learned tokenizer for hypothesis tests (fixtures don't mix with @given)."""
    if not _SHARED:
        t = Tokenizer()
        t.learn(corpus(), 300)
        _SHARED.append(t)
    return _SHARED[0]


def test_huge_single_line(tok):
    rng = random.Random(0)
    line = "".join(rng.choice(["foo", "(", " ", "é", "1", "😀", "bar_baz", "\t"]) for _ in range(100_000))
    for text in (line, "a" * 300_000, " " * 100_000, "é" * 100_000):
        assert tok.decode(tok.encode(text)) == text


def test_decode_cut_character_and_bad_ids(tok):
    ids = tok.encode_bytes("é".encode()[:1])
    assert tok.decode(ids) == "\ufffd"
    assert tok.decode([tok.eod_id]) == ""
    assert tok.decode_bytes(np.array([104, tok.eod_id, 105])) == b"hi"
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        tok.decode([len(tok)])
    with pytest.raises(TokenizerError):
        tok.decode([-1])
    with pytest.raises(TypeError):
        tok.encode(b"bytes")


def test_eod_never_encoded_and_specials_literal(tok):
    for text in ("<|eod|>", "<|eod|><|eod|>", "\x00" * 3):
        assert tok.eod_id not in tok.encode(text)


def test_encode_batch_matches_encode(tok):
    texts = corpus()[:3] + ["", "x", "😀"]
    for a, b in zip(tok.encode_batch(texts), texts):
        np.testing.assert_array_equal(a, tok.encode(b))
    assert tok.encode_batch([]) == []


# ------------------------------------------------------------------ the kernels against references

def test_encode_matches_reference_bpe(tok):
    merges = tok.merges
    text = corpus()[-1][:4000] + " 'tis naïve, Straße — 東京 😀 x = [1, 22, 333, 4444]"
    expect = [i for p in kernel_pieces(text) for i in ref_bpe(p.encode(), merges)]
    assert tok.encode(text).tolist() == expect


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(st.sampled_from(list("aab b\n.é")), max_size=25), max_size=8),
       st.lists(st.text(st.sampled_from(list("ab ab\n")), max_size=25), max_size=8),
       st.integers(0, 30), st.integers(1, 3))
def test_learn_matches_naive_reference(texts1, texts2, budget, min_freq):
    """Incremental pair counts (including merges onto existing tokens) equal a full recount."""
    t = Tokenizer()
    for texts in (texts1, texts2):
        tokens, merges = [t.token_bytes(i) for i in range(len(t))], t.merges
        expect = ref_learn(tokens, merges, texts, budget, min_freq)
        t.learn(texts, budget, min_frequency=min_freq)
        assert t.merges[len(merges):] == expect


# ------------------------------------------------------------------ learning

def test_learning_is_append_only_and_incremental():
    docs = corpus()
    t = Tokenizer()
    first = t.learn(docs[:3], 200)
    assert first == list(range(257, 257 + len(first))) and len(first) == 200
    before = [t.token_bytes(i) for i in range(len(t))]
    merges_before = t.merges
    second = t.learn(docs[3:], 150)
    assert second == list(range(len(before), len(before) + 150))
    assert [t.token_bytes(i) for i in range(len(before))] == before
    assert t.merges[:len(merges_before)] == merges_before
    for i in second:
        a, b, z = next(m for m in t.merges if m[2] == i)
        assert t.token_bytes(i) == t.token_bytes(a) + t.token_bytes(b) and a < i and b < i
    # learning the same texts again finds what it already knows and adds new merges on top
    text = "".join(docs)
    assert len(t.encode(text)) < len(Tokenizer().encode(text)) // 2


def test_cap_is_honoured():
    t = Tokenizer(max_vocab=300)
    assert len(t.learn(corpus(), 100)) == 43 and len(t) == 300
    assert t.learn(corpus(), 100) == []
    assert len(t) == 300
    with pytest.raises(TokenizerError):
        Tokenizer(max_vocab=100)


@pytest.mark.parametrize("texts", [[], [""], ["", ""], ["abcdefg"], ["xy", "z"]])
def test_nothing_to_learn_gives_empty_delta(texts):
    t = Tokenizer()
    assert t.learn(texts, 50) == []
    assert len(t) == 257 and t.merges == []


def test_min_frequency_and_zero_budget():
    t = Tokenizer()
    assert t.learn(["abab abab"], 0) == []
    assert t.learn(["xyxy"], 10, min_frequency=3) == []
    assert [t.token_bytes(i) for i in t.learn(["xyxy"], 10, min_frequency=2)] == [b"xy"]
    with pytest.raises(TokenizerError):
        t.learn(["x"], -1)
    with pytest.raises(TokenizerError):
        t.learn(["x"], 1, min_frequency=0)


def test_a_deadline_ends_learning_with_the_first_merges_of_an_unbounded_run():
    """max_seconds bounds the merge loop (a new model's whole backlog is learned under one):
    the clock is read before the first merge and every DEADLINE_EVERY merges, so whatever
    the machine's speed, a bounded run learns a prefix of the unbounded run's merges."""
    from engine.bpe_learn import DEADLINE_EVERY

    docs = corpus()
    full = Tokenizer()
    full.learn(docs, 600)
    assert len(full.merges) > DEADLINE_EVERY
    t = Tokenizer()
    assert t.learn(docs, 600, max_seconds=0) == [] and len(t) == 257   # past before merge 1
    for seconds in (1e-4, 1e-3, 1e-2, 0.1):
        t = Tokenizer()
        t.learn(docs, 600, max_seconds=seconds)
        n = len(t.merges)
        assert t.merges == full.merges[:n]
        assert n % DEADLINE_EVERY == 0 or n == len(full.merges)
        assert t.decode(t.encode(docs[0])) == docs[0]                         # and works
    roomy = Tokenizer()
    roomy.learn(docs, 600, max_seconds=3600.0)        # a bound never reached changes nothing
    assert roomy.merges == full.merges
    with pytest.raises(TokenizerError):
        Tokenizer().learn(docs, 10, max_seconds=-1.0)


def test_first_occurrence():
    t = Tokenizer()
    docs = ["nothing here", "hello hello", "world world world hello"]
    new = t.learn(docs, 20)
    first = t.first_occurrence(new, docs)
    assert sorted(first) == new                        # every learned token is found
    by_bytes = {t.token_bytes(i): i for i in new}
    assert first[by_bytes[b" world"]] == 2 and first[by_bytes[b" hello"]] == 1
    assert first[by_bytes[b"ll"]] == 1                  # only inside " hello" / "hello"
    for i in new:
        assert t.token_bytes(i) in docs[first[i]].encode()
    assert t.first_occurrence([10_000], docs) == {}
    assert t.first_occurrence(new, []) == {}


# ------------------------------------------------------------------ state

def test_save_load_exact(tok, tmp_path):
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    back = Tokenizer.load(path, expected_sha256=tok.sha256)
    assert back.to_json() == tok.to_json() and back.sha256 == tok.sha256
    assert back.merges == tok.merges and len(back) == len(tok)
    assert all(back.token_bytes(i) == tok.token_bytes(i) for i in range(len(tok)))
    text = corpus()[0]
    np.testing.assert_array_equal(back.encode(text), tok.encode(text))
    assert Tokenizer.from_json(tok.to_json()).sha256 == tok.sha256
    assert list(tmp_path.iterdir()) == [path]          # no temp file left behind
    clone = pickle.loads(pickle.dumps(tok))
    assert clone.sha256 == tok.sha256 and clone.decode(clone.encode(text)) == text


def test_load_refuses_mismatching_checkpoint(tok, tmp_path):
    other = Tokenizer()
    other.learn(["something else entirely, else entirely"], 5)
    path = tmp_path / "tok.json"
    other.save(path)
    with pytest.raises(TokenizerError, match=r"tok\.json.*sha256") as e:
        Tokenizer.load(path, expected_sha256=tok.sha256)
    assert e.value.hint and isinstance(e.value, CllmError)


def test_load_refuses_bad_files(tok, tmp_path):
    with pytest.raises(TokenizerError, match="does not exist"):
        Tokenizer.load(tmp_path / "missing.json")
    path = tmp_path / "t.json"
    path.write_text(tok.to_json()[:-10])
    with pytest.raises(TokenizerError, match="not valid JSON"):
        Tokenizer.load(path)
    state = json.loads(tok.to_json())
    for field, value in [("pretokenizer", "gpt2"), ("version", 99), ("format", "hf")]:
        path.write_text(json.dumps({**state, field: value}))
        with pytest.raises(TokenizerError, match=field if field != "format" else "not a"):
            Tokenizer.load(path)
    broken = {**state, "merges": state["merges"] + [[1, 2, 9999]]}
    path.write_text(json.dumps(broken))
    with pytest.raises(TokenizerError, match="merge"):
        Tokenizer.load(path)


def test_state_and_hash_are_never_read_in_the_middle_of_learn():
    """learn() appends merges one by one under the tokenizer's lock; to_json and sha256 take
    the same lock, so a reader in another thread waits for the whole delta."""
    import threading

    tok = Tokenizer()
    tok.learn(["abab abab cdcd cdcd"] * 4, max_new_tokens=3)
    out = []
    with tok._lock:                          # what learn() holds while it appends
        reader = threading.Thread(target=lambda: out.append((tok.to_json(), tok.sha256)))
        reader.start()
        reader.join(0.5)
        assert reader.is_alive() and not out   # blocked behind the lock
    reader.join(10)
    assert out and out[0][1] == tok.sha256
