"""The flat layout's weight-decay flags: matrices only (regression: lnf.w used to decay)."""
import numpy as np

from engine import ModelConfig
from engine.params import ParamLayout, is_matrix

BLOCK = [("ln1.w", False), ("ln1.b", False), ("attn.qkv.w", True), ("attn.qkv.b", False),
         ("attn.proj.w", True), ("attn.proj.b", False), ("ln2.w", False), ("ln2.b", False),
         ("mlp.fc.w", True), ("mlp.fc.b", False), ("mlp.proj.w", True), ("mlp.proj.b", False)]
EXPECTED = ([("wte", True), ("wpe", True)]
            + [(f"h.{i}.{n}", d) for i in range(2) for n, d in BLOCK]
            + [("lnf.w", False), ("lnf.b", False)])


def test_every_parameter_of_a_two_layer_model_has_the_expected_decay_flag():
    layout = ParamLayout.from_config(ModelConfig(n_layers=2))
    assert list(layout.names) == [n for n, _ in EXPECTED]
    assert [(n, is_matrix(n)) for n in layout.names] == EXPECTED
    assert layout.decay_array().tolist() == [d for _, d in EXPECTED]


def test_the_final_layernorm_gain_is_not_decayed():
    assert not is_matrix("lnf.w") and not is_matrix("lnf.b")


def test_accumulated_ranges_are_everything_but_wte_and_the_linear_weights():
    layout = ParamLayout.from_config(ModelConfig(n_layers=2))
    covered = np.zeros(layout.size, bool)
    for lo, hi in layout.accumulated_ranges():
        covered[lo:hi] = True
    for i, n in enumerate(layout.names):
        written_whole = n == "wte" or (is_matrix(n) and n != "wpe")
        assert covered[layout.offsets[i]:layout.offsets[i + 1]].all() == (not written_whole), n
