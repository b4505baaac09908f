"""engine.number_theory against straightforward references: trial division, math.gcd."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import number_theory as nt

# ------------------------------------------------------------------------ references


def trial_is_prime(n: int) -> bool:
    if n < 2:
        return False
    d = 2
    while d * d <= n:
        if n % d == 0:
            return False
        d += 1
    return True


# ---------------------------------------------------------------------------- primes

@pytest.mark.parametrize("limit", [0, 1, 2, 3, 10, 2003])
def test_sieve_matches_trial_division(limit):
    is_p = nt.sieve(limit)
    assert is_p.dtype == np.bool_ and is_p.shape == (limit + 1,)
    assert is_p.tolist() == [trial_is_prime(n) for n in range(limit + 1)]
    assert nt.primes_up_to(limit).tolist() == [n for n in range(limit + 1) if trial_is_prime(n)]


def test_nth_prime_small_and_large():
    primes = [n for n in range(2, 2000) if trial_is_prime(n)]
    assert [nt.nth_prime(i + 1) for i in range(len(primes))] == primes
    assert nt.nth_prime(1) == 2
    assert nt.nth_prime(10_000) == 104_729
    assert nt.nth_prime(1_000_000) == 15_485_863
    assert nt.nth_prime(6543) == 65_537          # inside the precomputed range
    with pytest.raises(ValueError):
        nt.nth_prime(0)


def test_is_prime_scalar_and_array():
    ns = list(range(-5, 3000)) + list(range(10**10, 10**10 + 300))
    expect = [trial_is_prime(n) for n in ns]
    assert [nt.is_prime(n) for n in ns] == expect
    assert nt.is_prime(np.array(ns[:3005])).tolist() == expect[:3005]       # sieve path
    assert nt.is_prime(np.array(ns)).tolist() == expect                     # scalar path
    assert nt.is_prime(np.int64(97)) is True


@pytest.mark.parametrize("n,prime", [
    (2**31 - 1, True), (2**61 - 1, True), (18446744073709551557, True),   # largest < 2**64
    (561, False), (41041, False),                                          # Carmichael
    (2047, False), (3215031751, False), (3825123056546413051, False),      # strong pseudoprimes
    (2**61 + 1, False), ((2**31 - 1) * (2**31 - 1), False),
])
def test_is_prime_hard_cases(n, prime):
    assert nt.is_prime(n) is prime


# ------------------------------------------------------------------------------- gcd

I63 = st.integers(-(2**63) + 1, 2**63 - 1)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(I63, I63), min_size=1, max_size=20))
def test_gcd_matches_math_gcd(pairs):
    a = np.array([p[0] for p in pairs], np.int64)
    b = np.array([p[1] for p in pairs], np.int64)
    assert nt.gcd(a, b).tolist() == [math.gcd(x, y) for x, y in pairs]


def test_gcd_zero_broadcast_and_types():
    assert nt.gcd(0, 0) == 0 and nt.gcd(0, 12) == 12 and nt.gcd(-12, 0) == 12
    assert isinstance(nt.gcd(6, 4), int)
    a = np.arange(0, 30).reshape(5, 6)
    b = np.arange(0, 6)
    g = nt.gcd(a, b)
    assert g.shape == (5, 6)
    assert g.tolist() == [[math.gcd(int(x), int(y)) for x, y in zip(r, b)] for r in a]
    assert nt.gcd(np.array([12], np.uint16), np.int32(18)).tolist() == [6]
    with pytest.raises(TypeError):
        nt.gcd(np.array([1.5]), 2)
