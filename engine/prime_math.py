"""Crystalline mathematics, the entry point: primes, gcd, the Ulam spiral, the 12-fold clock
lattice, numeric guards, and what the engine builds on them (crystalline similarity, the
kissing-neighbour prior of the crystalline loss, the lattice embedding init).

The code lives by concept, each module tested against plain references:

- engine.number_theory: sieve, primes_up_to, nth_prime, is_prime, gcd;
- engine.lattice: ulam_coords / ulam_index, clock_position, symmetry_group and
  lattice_embedding (the clock-lattice init of wte);
- engine.neighbours: crystalline_similarity, neighbour_table / extend_neighbour_table (the
  (idx, q) prior), token_neighbours, describe_token (`cllm neighbours TOKEN`);
- engine.numeric: all_finite, safe_log.

This module re-exports their public API, so `from engine.prime_math import ...` keeps
working. Integer number theory and lattice geometry are exact. Not here: floating-point
elementary functions (numpy's and LLVM's, used as they are) and the loss itself (the term
lambda * KL(q(.|t) || softmax(logits)) is fused into engine.kernels' cross-entropy, which
reads the (idx, q) table).
"""
from __future__ import annotations

from engine.lattice import (BEYOND_RING_SIZE, LATTICE_PHI, RING_SIZES, clock_position,
                            lattice_embedding, symmetry_group, ulam_coords, ulam_index)
from engine.neighbours import (W_GCD, W_SPATIAL, crystalline_similarity, describe_token,
                               extend_neighbour_table, neighbour_table, token_neighbours)
from engine.number_theory import gcd, is_prime, nth_prime, primes_up_to, sieve
from engine.numeric import all_finite, safe_log

__all__ = [
    "sieve", "primes_up_to", "nth_prime", "is_prime", "gcd",
    "ulam_coords", "ulam_index", "RING_SIZES", "BEYOND_RING_SIZE", "clock_position",
    "symmetry_group", "LATTICE_PHI", "lattice_embedding",
    "W_GCD", "W_SPATIAL", "crystalline_similarity", "neighbour_table",
    "extend_neighbour_table", "token_neighbours", "describe_token",
    "all_finite", "safe_log",
]
