"""Integer number theory for the crystalline math: primes and gcd, exact, with numba
kernels behind numpy-style wrappers.

Holds the sieve, the n-th prime, primality (Miller-Rabin), the elementwise gcd, and the
integer-argument checks the other crystalline modules share (`_as_int_array`,
`_check_count`). Does not hold geometry (engine.lattice) or the similarity built on the gcd
(engine.neighbours); engine.prime_math gathers the public API.
"""
from __future__ import annotations

import math

import numpy as np

from engine._jit import kernel

# ------------------------------------------------------------------------- helpers


def _as_int_array(x, name: str) -> tuple[np.ndarray, bool]:
    """(int64 array, was_scalar). Integers only: floats and bools are refused."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integers, got dtype {arr.dtype} "
                        f"(hint: np.asarray({name}, np.int64))")
    return arr.astype(np.int64, copy=False), arr.ndim == 0


def _check_count(value, name: str, minimum: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


# -------------------------------------------------------------------------- primes

@kernel
def _sieve_kernel(is_p):
    """is_p (n,) bool, all True on entry -> is_p[i] == (i is prime)."""
    n = is_p.shape[0]
    is_p[0] = False
    if n > 1:
        is_p[1] = False
    i = 2
    while i * i < n:
        if is_p[i]:
            for j in range(i * i, n, i):
                is_p[j] = False
        i += 1


def sieve(limit: int) -> np.ndarray:
    """Sieve of Eratosthenes: bool array (limit + 1,), True at the primes in 0..limit."""
    limit = _check_count(limit, "limit", 0)
    is_p = np.ones(limit + 1, np.bool_)
    _sieve_kernel(is_p)
    return is_p


def primes_up_to(limit: int) -> np.ndarray:
    """The primes <= limit, ascending, int64."""
    return np.flatnonzero(sieve(limit)).astype(np.int64)


_PRIMES = primes_up_to(1 << 16)        # grown by nth_prime; replaced whole (thread-safe read)


def nth_prime(n: int) -> int:
    """The n-th prime, 1-based: nth_prime(1) == 2, nth_prime(10**6) == 15485863.

    Sieves up to Rosser's bound p_n < n (ln n + ln ln n) (n >= 6) and keeps the primes for
    later calls.
    """
    global _PRIMES
    n = _check_count(n, "n", 1)
    if n <= _PRIMES.shape[0]:
        return int(_PRIMES[n - 1])
    bound = int(n * (math.log(n) + math.log(math.log(n)))) + 1
    primes = primes_up_to(bound)
    _PRIMES = primes
    return int(primes[n - 1])


_MR_BASES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)


def _is_prime_int(n: int) -> bool:
    if n < 2:
        return False
    for p in _MR_BASES:
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d //= 2
        s += 1
    for a in _MR_BASES:
        x = pow(a, d, n)
        if x == 1 or x == n - 1:
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def is_prime(n):
    """Primality of an int (any size) or an integer array (-> bool array).

    Scalars: Miller-Rabin with the first 12 prime bases, deterministic for n < 3.3e24
    (every int64); beyond that a strong probable-prime test. Arrays: a sieve lookup when
    max(n) <= 2**24, else the scalar test per element. n < 2 is never prime.
    """
    if isinstance(n, (int, np.integer)) and not isinstance(n, (bool, np.bool_)):
        return _is_prime_int(int(n))
    arr, scalar = _as_int_array(n, "n")
    if scalar:
        return _is_prime_int(int(arr))
    if arr.size == 0:
        return np.zeros(arr.shape, np.bool_)
    hi = int(arr.max())
    if hi <= 1 << 24:
        table = sieve(max(hi, 1))
        return np.where(arr >= 0, table[np.clip(arr, 0, None)], False)
    return np.vectorize(_is_prime_int, otypes=[np.bool_])(arr)


# ----------------------------------------------------------------------------- gcd

@kernel
def _gcd1(x, y):
    """gcd of two int64 (Euclid on absolute values; gcd(0, 0) == 0)."""
    x = abs(x)
    y = abs(y)
    while y != 0:
        x, y = y, x % y
    return x


@kernel
def _gcd_kernel(out, a, b):
    """out (n,) = gcd(a (n,), b (n,))."""
    for i in range(a.shape[0]):
        out[i] = _gcd1(a[i], b[i])


def gcd(a, b):
    """Greatest common divisor, elementwise with numpy broadcasting (numba).

    gcd(0, x) == |x|, gcd(0, 0) == 0, signs are ignored (as math.gcd). Integer arrays or
    ints in, int64 array out (an int when both inputs are scalars). Values must fit int64.
    """
    a, sa = _as_int_array(a, "a")
    b, sb = _as_int_array(b, "b")
    a, b = np.broadcast_arrays(a, b)
    shape = a.shape
    out = np.empty(shape, np.int64)
    _gcd_kernel(out.reshape(-1), np.ascontiguousarray(a).reshape(-1),
                np.ascontiguousarray(b).reshape(-1))
    return int(out) if (sa and sb) else out
