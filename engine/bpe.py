"""Compiled byte-level BPE kernels behind engine.tokenizer: pre-tokenise, encode, decode.

(Training kernels are in engine.bpe_learn.)

Legend: buf = UTF-8 bytes (uint8), N = len(buf), P = pieces, V = vocabulary size, M = merges.
A *merge* (a, b) -> z has a rank (its position in the merge list); encoding applies, inside
each piece, the lowest-rank adjacent pair first (leftmost on ties), exactly as training did.
Pair keys are `a << 32 | b` in int64; ids fit in int32.

Pre-tokenisation (`_piece_end`) is a hand-written scanner over code-point classes with the
rules of the GPT-4 (cl100k) pattern, tried in this order at each position:

    1. '(?:[sS]|[tT]|[mM]|[dD]|[rR][eE]|[vV][eE]|[lL][lL])      contractions
    2. [^\\r\\n\\p{L}\\p{N}]?\\p{L}+                              a word, one leading char
    3. \\p{N}{1,3}                                               digits in threes
    4. ' '?[^\\s\\p{L}\\p{N}]+[\\r\\n]*  + INDENT                    punctuation run
    5. \\s*[\\r\\n]+                     + INDENT                    newlines
    6. \\s+(?!\\S)   7. \\s+                                       other whitespace

where \\p{L} here also holds combining marks (\\p{M}), and INDENT (our change, for source code)
appends the indentation after the last newline, less the one space the next word takes:
`(?:[^\\S\\r\\n]*(?=[^\\S\\r\\n]\\S)|[^\\S\\r\\n]+\\Z)?`, only when rule 4 took a newline. A piece
longer than MAX_PIECE bytes is cut at a character boundary and scanning restarts there.
Bytes that are not valid UTF-8 are single "other" characters, so any byte string scans.
This module holds no state and raises nothing a user can cause: validation lives in
engine.tokenizer.
"""
from __future__ import annotations

import unicodedata

import numpy as np

from engine._jit import kernel

MAX_PIECE = 256        # bytes; longest piece, hence longest token; bounds the O(n^2) BPE per piece
OTHER, LETTER, NUMBER, SPACE, NEWLINE = 0, 1, 2, 3, 4
EMPTY = -1             # empty slot of every hash table here
NO_MERGE = np.int64(0x7FFFFFFFFFFFFFFF)
_HASH_MUL = np.uint64(0x9E3779B97F4A7C15)
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
# Unicode White_Space (PropList.txt; unchanged since Unicode 6.3), \r and \n apart.
_WHITE_SPACE = [*range(0x09, 0x0E), 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B),
                0x2028, 0x2029, 0x202F, 0x205F, 0x3000]

_classes: np.ndarray | None = None


def char_classes() -> np.ndarray:
    """Class of every code point (uint8[0x110000]): letters+marks, numbers, spaces, newlines, other."""
    global _classes
    if _classes is None:
        table = np.zeros(0x110000, np.uint8)
        kinds = {"L": LETTER, "M": LETTER, "N": NUMBER}
        cat = unicodedata.category
        # Everything assigned lies below 0x32400 or in plane 14 (tags, variation selectors).
        for lo, hi in ((0, 0x32400), (0xE0000, 0xE0200)):
            table[lo:hi] = [kinds.get(cat(chr(c))[0], OTHER) for c in range(lo, hi)]
        table[_WHITE_SPACE] = SPACE
        table[[0x0A, 0x0D]] = NEWLINE
        _classes = table
    return _classes


# ---------------------------------------------------------------------------- hashing

@kernel
def _slot(key, mask):
    """Home slot of an int64 key in a power-of-two table (Fibonacci hashing)."""
    return np.int64((np.uint64(key) * _HASH_MUL) >> np.uint64(20)) & mask


@kernel
def _fnv(buf, p, q, h):
    for i in range(p, q):
        h = (h ^ np.uint64(buf[i])) * _FNV_PRIME
    return h


@kernel
def _same(x, p, y, q, n):
    for i in range(n):
        if x[p + i] != y[q + i]:
            return False
    return True


@kernel
def _grow(a):
    b = np.empty(2 * a.shape[0], a.dtype)
    b[:a.shape[0]] = a
    return b


def build_merge_table(ma, mb, mz):
    """Open-addressing table (keys, vals, mask): pair key -> rank << 32 | result id."""
    m = len(ma)
    cap = 16
    while cap < 2 * m + 2:
        cap *= 2
    keys = np.full(cap, EMPTY, np.int64)
    vals = np.zeros(cap, np.int64)
    _fill_merge_table(np.asarray(ma, np.int64), np.asarray(mb, np.int64),
                      np.asarray(mz, np.int64), keys, vals, cap - 1)
    return keys, vals, np.int64(cap - 1)


@kernel
def _fill_merge_table(ma, mb, mz, keys, vals, mask):
    for r in range(ma.shape[0]):
        key = (ma[r] << 32) | mb[r]
        s = _slot(key, mask)
        while keys[s] != EMPTY and keys[s] != key:
            s = (s + 1) & mask
        if keys[s] == EMPTY:          # a repeated pair keeps its first (lowest) rank
            keys[s] = key
            vals[s] = (np.int64(r) << 32) | mz[r]


@kernel
def _merge_of(a, b, keys, vals, mask):
    """rank << 32 | id of the merge (a, b), or NO_MERGE."""
    key = (np.int64(a) << 32) | np.int64(b)
    s = _slot(key, mask)
    while True:
        k = keys[s]
        if k == key:
            return vals[s]
        if k == EMPTY:
            return NO_MERGE
        s = (s + 1) & mask


# ---------------------------------------------------------------------------- pre-tokenisation

@kernel
def _char(buf, i, hi, classes):
    """(byte length, class) of the character at buf[i]; invalid UTF-8 is a 1-byte OTHER."""
    b0 = np.int64(buf[i])
    if b0 < 0x80:
        return 1, np.int64(classes[b0])
    if b0 < 0xC2 or b0 > 0xF4:
        return 1, OTHER
    n = 2 if b0 < 0xE0 else (3 if b0 < 0xF0 else 4)
    if i + n > hi:
        return 1, OTHER
    cp = b0 & (0x1F if n == 2 else (0x0F if n == 3 else 0x07))
    for k in range(1, n):
        c = np.int64(buf[i + k])
        if (c & 0xC0) != 0x80:
            return 1, OTHER
        cp = (cp << 6) | (c & 0x3F)
    if (n == 3 and cp < 0x800) or (n == 4 and (cp < 0x10000 or cp > 0x10FFFF)):
        return 1, OTHER
    return n, np.int64(classes[cp])


@kernel
def _run(buf, i, hi, classes, cls):
    """End of the run of characters of class `cls` starting at i."""
    while i < hi:
        n, c = _char(buf, i, hi, classes)
        if c != cls:
            break
        i += n
    return i


@kernel
def _indent(buf, q, hi, classes):
    """INDENT: extend a piece ending at q (after a newline) over the indentation that follows."""
    j = q
    count = 0
    last = q
    c = OTHER
    while j < hi:
        n, c = _char(buf, j, hi, classes)
        if c != SPACE:
            break
        last = j
        j += n
        count += 1
    if j == hi:
        return hi
    if count >= 2 and c != NEWLINE:
        return last                    # leave the last space to the next word
    return q


@kernel
def _raw_piece_end(buf, p, hi, classes):
    """End of the pre-token starting at p < hi (rules 1-7 of the module docstring)."""
    n0, c0 = _char(buf, p, hi, classes)
    b0 = buf[p]
    p1 = p + n0
    n1, c1 = (0, -1)
    if p1 < hi:
        n1, c1 = _char(buf, p1, hi, classes)
    # 1. contractions
    if b0 == 39 and p1 < hi:
        x = buf[p1] | 0x20
        if x == 115 or x == 116 or x == 109 or x == 100:          # s t m d
            return p1 + 1
        if p1 + 1 < hi:
            y = buf[p1 + 1] | 0x20
            if (x == 114 and y == 101) or (x == 118 and y == 101) or (x == 108 and y == 108):
                return p1 + 2                                      # re ve ll
    # 2. word with an optional leading char
    if c0 == LETTER:
        return _run(buf, p1, hi, classes, LETTER)
    if (c0 == OTHER or c0 == SPACE) and c1 == LETTER:
        return _run(buf, p1 + n1, hi, classes, LETTER)
    # 3. up to three digits
    if c0 == NUMBER:
        q = p1
        for _ in range(2):
            if q >= hi:
                break
            n, c = _char(buf, q, hi, classes)
            if c != NUMBER:
                break
            q += n
        return q
    # 4. punctuation run, optional leading space, trailing newlines (+ indentation)
    if c0 == OTHER or (b0 == 32 and c1 == OTHER):
        q = _run(buf, p1 if c0 == OTHER else p1 + n1, hi, classes, OTHER)
        q2 = _run(buf, q, hi, classes, NEWLINE)
        if q2 > q:
            return _indent(buf, q2, hi, classes)
        return q2
    # 5-7. whitespace (c0 is SPACE or NEWLINE)
    j = p
    last_nl_end = -1
    count = 0
    while j < hi:
        n, c = _char(buf, j, hi, classes)
        if c != SPACE and c != NEWLINE:
            break
        j += n
        count += 1
        if c == NEWLINE:
            last_nl_end = j
    if last_nl_end >= 0:
        return _indent(buf, last_nl_end, hi, classes)
    if j == hi or count == 1:
        return j
    k = p                                   # \s+(?!\S): all but the last whitespace char
    for _ in range(count - 1):
        n, c = _char(buf, k, hi, classes)
        k += n
    return k


@kernel
def _piece_end(buf, p, hi, classes):
    """End of the piece starting at p: the pre-token, cut to MAX_PIECE bytes at a char boundary."""
    q = _raw_piece_end(buf, p, hi, classes)
    if q - p <= MAX_PIECE:
        return q
    r = p + MAX_PIECE
    while r > p + MAX_PIECE - 4 and (buf[r] & 0xC0) == 0x80:
        r -= 1
    if (buf[r] & 0xC0) == 0x80:           # not UTF-8 here: cut anywhere
        r = p + MAX_PIECE
    return r


# ---------------------------------------------------------------------------- encode

@kernel
def _bpe_piece(buf, p, q, keys, vals, mask, sym, rank, out, k):
    """Encode buf[p:q] (one piece, q - p <= MAX_PIECE) into out[k:]; returns the new k.

    sym, rank: scratch int64[MAX_PIECE]: current symbols and the merge of each adjacent pair.
    """
    n = q - p
    if n == 1:
        out[k] = buf[p]
        return k + 1
    for i in range(n):
        sym[i] = buf[p + i]
    for i in range(n - 1):
        rank[i] = _merge_of(sym[i], sym[i + 1], keys, vals, mask)
    while n > 1:
        best = NO_MERGE
        at = -1
        for i in range(n - 1):
            if rank[i] < best:
                best = rank[i]
                at = i
        if at < 0:
            break
        sym[at] = best & 0xFFFFFFFF
        for i in range(at + 1, n - 1):       # drop symbol at + 1
            sym[i] = sym[i + 1]
            rank[i] = rank[i + 1]
        n -= 1
        if at > 0:
            rank[at - 1] = _merge_of(sym[at - 1], sym[at], keys, vals, mask)
        if at < n - 1:
            rank[at] = _merge_of(sym[at], sym[at + 1], keys, vals, mask)
    for i in range(n):
        out[k + i] = sym[i]
    return k + n


@kernel
def encode_docs(buf, ends, classes, keys, vals, mask):
    """Token ids (int32[T]) of every document and the token count after each (int64[D])."""
    out = np.empty(buf.shape[0], np.int32)
    counts = np.empty(ends.shape[0], np.int64)
    sym = np.empty(MAX_PIECE, np.int64)
    rank = np.empty(MAX_PIECE, np.int64)
    k = 0
    lo = 0
    for d in range(ends.shape[0]):
        hi = ends[d]
        p = lo
        while p < hi:
            q = _piece_end(buf, p, hi, classes)
            k = _bpe_piece(buf, p, q, keys, vals, mask, sym, rank, out, k)
            p = q
        counts[d] = k
        lo = hi
    return out[:k].copy(), counts


@kernel
def encode_pieces(buf, starts, lens, keys, vals, mask):
    """Encode given pieces (no scanning): flat ids (int32) and the token count of each piece."""
    out = np.empty(max(1, int(lens.sum())), np.int32)
    counts = np.empty(starts.shape[0], np.int64)
    sym = np.empty(MAX_PIECE, np.int64)
    rank = np.empty(MAX_PIECE, np.int64)
    k = 0
    for u in range(starts.shape[0]):
        k0 = k
        k = _bpe_piece(buf, starts[u], starts[u] + lens[u], keys, vals, mask, sym, rank, out, k)
        counts[u] = k - k0
    return out[:k].copy(), counts


@kernel
def decode_ids(ids, offsets, arena):
    """Bytes (uint8) of token ids: arena[offsets[i]:offsets[i+1]] is token i. ids are valid."""
    total = 0
    for t in range(ids.shape[0]):
        total += offsets[ids[t] + 1] - offsets[ids[t]]
    out = np.empty(total, np.uint8)
    k = 0
    for t in range(ids.shape[0]):
        for j in range(offsets[ids[t]], offsets[ids[t] + 1]):
            out[k] = arena[j]
            k += 1
    return out
