"""learn(): the kernels are compiled before the clock of tokens/s starts (issue 15: the first
`cllm train` reported 1,321 tok/s against ~56k later, the compilation counted as training),
and the vocabulary: a trained model's new rows start from the tokens they merge."""
import types

import numpy as np
import pytest

from agent.training import learn as L
from agent.training.learn import PlanDoc
from agent.training.model_state import new_model_state
from engine import TrainConfig


def test_compilation_is_not_counted_in_tokens_per_s(monkeypatch):
    clock = [0.0]

    def perf_counter():             # a fake clock: each reading is a millisecond later
        clock[0] += 0.001
        return clock[0]

    calls = []

    def compiling(**options):       # a compilation that takes "1000 s" of that clock
        calls.append(options)
        clock[0] += 1000.0

    monkeypatch.setattr(L, "time", types.SimpleNamespace(perf_counter=perf_counter))
    monkeypatch.setattr(L, "compile_kernels", compiling)
    state = new_model_state("tiny")
    docs = [PlanDoc(1, "s", "the crystal lattice hums a quiet tune over the prime spiral. " * 20)]
    res = L.learn(state, docs, TrainConfig(batch_size=2, warmup_steps=0, ema_decay=0.99),
                  max_steps=2, workers=1, max_new_tokens=10)
    assert calls == [{"crystalline": False, "optimizer": "adamw", "ema": True, "arch": ""}]
    assert res.steps == 2 and res.seconds < 1000.0 and res.tokens_per_s > 0


def test_a_cycles_new_tokens_start_from_the_rows_they_merge():
    """Later growth (a model with a checkpoint, new text): row z starts at the mean of the
    rows of the two tokens z merges, a token built on one just added from its new row."""
    from tests.engine.test_model import merged_rows_reference

    state = new_model_state("tiny")
    state.step = 5                               # a trained model: no vocabulary relearning
    V = len(state.tokenizer)
    old = state.model.param("wte").copy()
    docs = [PlanDoc(1, "s", "the crystal lattice hums a quiet tune over the prime spiral. " * 20)]
    res = L.learn(state, docs, TrainConfig(batch_size=2, warmup_steps=0), max_steps=0,
                  workers=1, max_new_tokens=12)
    merges = state.tokenizer.merges
    assert len(res.new_token_ids) == 12 and state.model.config.vocab_size == V + 12
    assert any(a >= V or b >= V for a, b, _ in merges)     # some merge a token just added
    np.testing.assert_array_equal(state.model.param("wte")[:V], old)
    np.testing.assert_allclose(state.model.param("wte")[V:], merged_rows_reference(old, merges),
                               atol=1e-7)


BACKLOG = ["the crystal lattice hums a quiet tune over the prime spiral. " * 20,
           "every sphere touches twelve neighbours in the kissing arrangement. " * 20,
           "a quokka zigzags: " + "quokkazig " * 40]     # a document no step of it reads


def vocab_of(texts):
    calls = []

    def vocab():
        calls.append(1)
        return [PlanDoc(i + 1, "s", t) for i, t in enumerate(texts)]
    return vocab, calls


def test_a_new_model_learns_its_vocabulary_from_the_backlog_and_is_built_at_its_size():
    """Before its first step: tokens up to the preset's size (not the per-cycle cap), from
    documents the run never trains too, and the model a fresh init at that size (the init
    a preset of that vocabulary would have), not a byte-level model grown."""
    from engine import Model, preset

    state = new_model_state("tiny", seed=3)
    vocab, calls = vocab_of(BACKLOG)
    res = L.learn(state, [PlanDoc(1, "s", BACKLOG[0])], TrainConfig(batch_size=2),
                  max_steps=0, workers=1, max_new_tokens=5, vocab=vocab)
    tok = state.tokenizer
    assert calls == [1] and [d.id for d in res.vocab_docs] == [1, 2, 3]
    assert len(tok) == preset("tiny").vocab_size == 320
    assert res.new_token_ids == list(range(257, 320))
    assert len(tok.encode(" quokkazig")) == 1                  # only in the third document
    assert state.model.config.vocab_size == len(tok)
    fresh = Model(preset("tiny").replace(vocab_size=len(tok)), seed=3)
    assert state.model.params.tobytes() == fresh.params.tobytes()
    assert state.ema is not None and state.ema.shadow.tobytes() == fresh.params.tobytes()


def test_a_vocabulary_deadline_of_zero_learns_nothing_and_the_model_still_trains():
    state = new_model_state("tiny", seed=1)
    vocab, _ = vocab_of(BACKLOG)
    res = L.learn(state, [PlanDoc(1, "s", BACKLOG[0])], TrainConfig(batch_size=2),
                  max_steps=3, workers=1, max_new_tokens=50, vocab=vocab, vocab_seconds=0.0)
    assert res.new_token_ids == [] and len(state.tokenizer) == 257
    assert state.model.config.vocab_size == 257
    assert res.steps == 3 and all(np.isfinite(res.losses))


@pytest.mark.parametrize("how", ["trained", "no vocab", "no tokens"])
def test_only_a_new_model_with_a_vocab_source_learns_from_the_backlog(how):
    """A model resumed from a checkpoint (a step taken), a run without `vocab` (benchmarks)
    and max_new_tokens=0 (a byte-level model) never read the backlog's sample."""
    state = new_model_state("tiny")
    if how == "trained":
        state.step = 7
    vocab, calls = vocab_of(BACKLOG)
    res = L.learn(state, [PlanDoc(1, "s", BACKLOG[0])], TrainConfig(batch_size=2),
                  max_steps=0, workers=1, max_new_tokens=0 if how == "no tokens" else 5,
                  vocab=None if how == "no vocab" else vocab)
    assert calls == [] and res.vocab_docs == []
    assert len(res.new_token_ids) == (0 if how == "no tokens" else 5)   # from `docs` alone
    assert not any(b"quokka" in state.tokenizer.token_bytes(t) for t in res.new_token_ids)
