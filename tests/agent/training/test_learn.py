"""learn(): the kernels are compiled before the clock of tokens/s starts (issue 15: the first
`cllm train` reported 1,321 tok/s against ~56k later, the compilation counted as training),
and the vocabulary: a trained model's new rows start from the tokens they merge."""
import types

import numpy as np

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
    assert calls == [{"crystalline": False, "optimizer": "adamw", "ema": True}]
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
