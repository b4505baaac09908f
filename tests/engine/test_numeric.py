"""engine.numeric: every NaN and infinity found wherever it sits, and a log finite at 0."""
import math

import numpy as np
import pytest

from engine import numeric

# -------------------------------------------------------------------- numeric guards

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", [0, 4095, 4096, 8191, 10_000, -1])
def test_all_finite_finds_every_bad_value(dtype, bad, where):
    x = np.random.default_rng(0).standard_normal(10_001).astype(dtype)
    assert numeric.all_finite(x)
    x[where] = bad
    assert not numeric.all_finite(x)
    assert not numeric.all_finite(x.reshape(1, -1))
    assert numeric.all_finite(x[:where] if where > 0 else x[:0])


def test_all_finite_edges():
    f32 = np.finfo(np.float32)
    assert numeric.all_finite(np.array([f32.max, -f32.max, f32.tiny / 4, 0.0, -0.0], np.float32))
    assert numeric.all_finite(np.zeros(0, np.float32))
    assert numeric.all_finite(np.arange(10))                          # ints: trivially finite
    x = np.ones((6, 7), np.float64)
    x[3, 5] = np.nan                                              # odd column
    assert numeric.all_finite(x[:, ::2]) == bool(np.isfinite(x[:, ::2]).all())
    assert numeric.all_finite(x[:, 1::2]) == bool(np.isfinite(x[:, 1::2]).all())
    assert not numeric.all_finite(np.array([1, np.inf], np.float16))
    with pytest.raises(TypeError):
        numeric.all_finite(np.array(["a"]))


def test_safe_log():
    x = np.array([0.0, 1e-40, 1.0, np.e, np.nan], np.float32)
    y = numeric.safe_log(x)
    assert y.dtype == np.float32
    assert y[0] == y[1] == np.float32(np.log(np.float32(1e-30)))
    assert y[2] == 0.0 and abs(y[3] - 1.0) < 1e-6 and np.isnan(y[4])
    assert numeric.safe_log(0, floor=1e-10) == pytest.approx(math.log(1e-10))
