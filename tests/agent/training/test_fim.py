"""Fill-in-the-middle: the window against a plain list reference, the reader's FIM windows
keeping the ledger exact (every token of a pass a target once), the special tokens never
produced by encoding text and never merged, appended without renumbering and surviving a
save, the infill prompt's cut nearest the cursor, and the file header (<|file_sep|> name)
that starts a document read from its beginning and each file of an editor's context."""
from __future__ import annotations

import numpy as np
import pytest

from agent.training.backlog import BacklogReader, LedgerDoc
from agent.training.fim import (FILE_SEP, FIM_TOKENS, SPECIALS, FimIds, context_ids,
                                context_text, cut_points, doc_name, fim_ids, file_header,
                                infill_prompt, rearrange)
from engine.tokenizer import Tokenizer, TokenizerError

IDS = FimIds(prefix=900, suffix=901, middle=902, eod=256)


def reference(tokens: list[int], i: int, j: int) -> tuple[list[int], list[int]]:
    """Inputs and targets of a PSM window, built as the paper writes it."""
    seq = ([IDS.prefix] + tokens[:i] + [IDS.suffix] + tokens[j:] + [IDS.middle]
           + tokens[i:j] + [IDS.eod])
    return seq[:-1], seq[1:]


@pytest.mark.parametrize("i, j", [(0, 0), (0, 7), (3, 3), (2, 5), (7, 7), (1, 6)])
def test_a_fim_window_is_prefix_suffix_middle_and_credits_each_token_once(i, j):
    tok = np.arange(10, 17, dtype=np.int64)                  # 7 tokens of document 5
    own = np.full(7, 5, np.int64)
    nb = np.arange(1, 8, dtype=np.int64)
    x, y, o, b = rearrange(tok, own, nb, i, j, IDS)
    want_x, want_y = reference(tok.tolist(), i, j)
    assert x.tolist() == want_x and y.tolist() == want_y and len(x) == 7 + 3
    # every document token is a target exactly once, with its bytes; specials are no one's
    assert sorted(y[o == 5].tolist()) == tok.tolist()
    assert b[o == 5].sum() == nb.sum() and (b[o < 0] == 0).all()
    assert set(y[o < 0].tolist()) <= {IDS.suffix, IDS.middle, IDS.eod}
    with pytest.raises(ValueError):
        rearrange(tok, own, nb, 5, 2, IDS)


def test_cut_points_are_in_order_and_cover_the_ends():
    rng = np.random.default_rng(0)
    cuts = [cut_points(rng, 9) for _ in range(2000)]
    assert all(0 <= a <= b <= 9 for a, b in cuts)
    assert {a for a, _ in cuts} >= {0, 9} and any(a == b for a, b in cuts)


def doc(i, n, passes=1.0):
    rng = np.random.default_rng(i)
    ids = rng.integers(1, 200, size=n).astype(np.int64)
    nb = (np.arange(n) % 3 + 1).astype(np.int64)
    return LedgerDoc(i, "s", ids, nb, 0, int(np.ceil(passes * nb.sum())))


@pytest.mark.parametrize("rate", [0.5, 1.0])
def test_fim_windows_keep_the_ledger_exact(rate):
    """With FIM windows mixed in, a pass still makes every token of every document a target
    exactly once, and the credits add up to the documents' bytes."""
    T = 16
    docs = [doc(i, n) for i, n in enumerate([40, 170, 9, 64, 333, 18, 90])]
    r = BacklogReader(docs, T=T, n_streams=4, eod=256, seed=3, fim_rate=rate, fim=IDS)
    seen = {d.id: [] for d in docs}
    credit = {d.id: 0 for d in docs}
    fim_rows = 0
    while (w := r.window()) is not None:
        x, y, o, b = w
        assert x.shape == y.shape == (T,)
        fim_rows += int(x[0] == IDS.prefix)
        for t, d, n in zip(y, o, b):
            if d >= 0:
                seen[int(d)].append(int(t))
                credit[int(d)] += int(n)
    assert fim_rows > 0
    for d in docs:
        assert sorted(seen[d.id]) == sorted(d.ids.tolist())
        assert credit[d.id] == d.trainable_bytes


def test_a_reader_without_fim_ids_or_seed_reads_plain_windows():
    docs = [doc(i, 80) for i in range(3)]
    for r in (BacklogReader(docs, T=16, n_streams=2, eod=256, seed=1, fim_rate=1.0),
              BacklogReader(docs, T=16, n_streams=2, eod=256, fim_rate=1.0, fim=IDS)):
        while (w := r.window()) is not None:
            assert IDS.prefix not in w[0]


def test_special_tokens_are_appended_never_encoded_never_merged_and_saved(tmp_path):
    text = "def f(x):\n    return x + 1\n" * 50
    tok = Tokenizer(max_vocab=400)
    tok.learn([text], max_new_tokens=20)
    before = {i: tok.token_bytes(i) for i in range(len(tok))}
    ids = tok.add_specials(FIM_TOKENS)
    assert ids == list(range(len(before), len(before) + 3))       # appended, nothing moved
    assert all(tok.token_bytes(i) == b for i, b in before.items())
    assert tok.add_specials(FIM_TOKENS) == ids                     # idempotent
    assert fim_ids(tok) == FimIds(*ids, tok.eod_id)
    learned = tok.learn([text + "<|fim_prefix|>" * 30], max_new_tokens=30)
    assert learned and min(learned) > max(ids)                     # later merges follow them
    for a, b, _ in tok.merges:
        assert not tok.is_special(a) and not tok.is_special(b)
    enc = tok.encode(text + "<|fim_prefix|><|fim_middle|><|eod|>")
    assert not any(tok.is_special(int(t)) for t in enc)           # text never makes one
    assert tok.decode(ids + [tok.eod_id]) == ""
    tok.save(tmp_path / "tok.json")
    back = Tokenizer.load(tmp_path / "tok.json", expected_sha256=tok.sha256)
    assert back.specials == tok.specials and len(back) == len(tok)
    assert all(back.token_bytes(i) == tok.token_bytes(i) for i in range(len(tok)))
    assert back.encode(text).tolist() == tok.encode(text).tolist()
    with pytest.raises(TokenizerError):
        tok.add_specials(["fim"])


def test_a_tokenizer_without_fim_keeps_its_hash():
    """Old data directories: a tokenizer with only <|eod|> hashes as before, so the
    checkpoints that recorded its hash still load."""
    tok = Tokenizer()
    assert tok.specials == {"<|eod|>": 256}
    assert tok.sha256 == Tokenizer.from_json(tok.to_json()).sha256
    assert '"specials":{"<|eod|>":256}' in tok.to_json()


def test_the_infill_prompt_keeps_the_text_nearest_the_cursor():
    pre, suf = list(range(100, 140)), list(range(200, 230))
    full = infill_prompt(pre, suf, IDS, budget=200)
    assert full == [IDS.prefix, *pre, IDS.suffix, *suf, IDS.middle]
    cut = infill_prompt(pre, suf, IDS, budget=23)                 # 20 tokens of room
    assert cut == [IDS.prefix, *pre[-10:], IDS.suffix, *suf[:10], IDS.middle]
    short_suffix = infill_prompt(pre, suf[:3], IDS, budget=23)    # the prefix takes the rest
    assert short_suffix == [IDS.prefix, *pre[-17:], IDS.suffix, *suf[:3], IDS.middle]
    short_prefix = infill_prompt(pre[:2], suf, IDS, budget=23)
    assert short_prefix == [IDS.prefix, *pre[:2], IDS.suffix, *suf[:18], IDS.middle]


def test_other_files_go_before_the_prompt_in_the_room_prefix_and_suffix_leave():
    pre, suf, extra = [100, 101], [200], list(range(300, 320))
    assert infill_prompt(pre, suf, IDS, budget=200, extra_ids=extra) == \
        [*extra, IDS.prefix, *pre, IDS.suffix, *suf, IDS.middle]
    # 10 tokens of room: 3 for prefix and suffix, the extra keeps its last 7
    assert infill_prompt(pre, suf, IDS, budget=13, extra_ids=extra) == \
        [*extra[-7:], IDS.prefix, *pre, IDS.suffix, *suf, IDS.middle]
    # no room left: none of it, and the prefix and suffix cut as before
    long_pre = list(range(100, 140))
    assert infill_prompt(long_pre, suf, IDS, budget=13, extra_ids=extra) == \
        infill_prompt(long_pre, suf, IDS, budget=13)


def test_a_file_header_is_the_separator_and_the_files_name_only():
    assert doc_name("file:///home/ada/src/pkg/sp%20heres.py") == "sp heres.py"
    assert doc_name("https://docs.python.org/3/library/ast.html") == "ast.html"
    assert doc_name("https://example.org/") == "example.org"
    assert doc_name("/srv/notes/a.txt") == "a.txt"
    tok = Tokenizer()
    assert file_header(tok, "a.py").size == 0                 # no <|file_sep|>: no header
    tok.add_specials(SPECIALS)
    sep = tok.special_id(FILE_SEP)
    assert sep == 260 and fim_ids(tok) == FimIds(257, 258, 259, 256)
    head = file_header(tok, "a.py")
    assert head[0] == sep and tok.decode(head[1:]) == "a.py\n"
    assert tok.decode(file_header(tok, "two\nlines")[1:]) == "two lines\n"
    assert file_header(tok, "").size == 0
    # an editor's other files: each after its header, as training reads a file
    got = context_ids(tok, [("a.py", "x = 1\n"), ("", "y\n")]).tolist()
    assert got == [*head.tolist(), *tok.encode("x = 1\n").tolist(), sep,
                   *tok.encode("y\n").tolist()]
    plain = Tokenizer()                                        # trained before the token
    assert context_ids(plain, [("a.py", "x = 1")]).tolist() == \
        plain.encode("# a.py\nx = 1\n").tolist() == plain.encode(
            context_text([("a.py", "x = 1")])).tolist()


def test_a_document_read_from_its_start_begins_with_its_header_owned_by_no_one():
    head = np.asarray([950, 951, 952], np.int64)
    a = LedgerDoc(1, "s", np.arange(10, 40, dtype=np.int64), np.ones(30, np.int64), 0, 30,
                  head)
    b = LedgerDoc(2, "s", np.arange(40, 60, dtype=np.int64), np.ones(20, np.int64), 7, 20,
                  head)                          # continues mid-document: no header
    ws = []
    r = BacklogReader([a, b], T=8, n_streams=1, eod=256)
    while (w := r.window()) is not None:
        ws.append(w)
    x = np.concatenate([w[0][:1] for w in ws[:1]] + [w[1] for w in ws])
    stream = x[x >= 0].tolist()
    assert stream[:5] == [256, 950, 951, 952, 10]            # eod, header, the text
    at = stream.index(256, 1)
    assert stream[at:at + 2] == [256, 47]                     # b from its byte 7, no header
    owners = np.concatenate([w[2] for w in ws])
    targets = np.concatenate([w[1] for w in ws])
    assert set(targets[(owners < 0) & (targets >= 0)].tolist()) == {256, 950, 951, 952}
    nb = np.concatenate([w[3] for w in ws])
    assert nb[owners == 1].sum() == 30 and nb[owners == 2].sum() == 20 - 7
    assert (nb[owners < 0] == 0).all()
