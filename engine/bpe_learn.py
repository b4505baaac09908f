"""BPE training kernels behind Tokenizer.learn: count distinct pieces, then learn merges.

Legend as in engine.bpe. Training is the classic greedy BPE (most frequent adjacent pair
first, ties to the smallest pair key) with incremental pair counts: a hash table of pair
counts, a chain per pair of the words that hold it, and a lazy max-heap. Merging a pair
rewrites only the words on its chain, so 8,000 merges on 10 MB take about a second.
A deadline bounds the merge loop: the clock is read (in object mode, a few microseconds)
every DEADLINE_EVERY merges, and never when there is no deadline.
Nothing here validates input: engine.tokenizer does.
"""
from __future__ import annotations

import time

import numba
import numpy as np

from engine._jit import kernel
from engine.bpe import EMPTY, _FNV_OFFSET, _fnv, _grow, _piece_end, _same, _slot


DEADLINE_EVERY = 128   # merges between two readings of the clock (each may wait for the GIL)


@numba.njit(cache=True)   # not nogil: its object-mode block takes the GIL (numba warns)
def _clock():
    """time.perf_counter(), read from compiled code."""
    with numba.objmode(t="float64"):
        t = time.perf_counter()
    return t


@kernel
def count_pieces(buf, ends, classes):
    """Distinct pieces of the documents: (start, length, count) of each, in order of first sight."""
    cap = 1024
    table = np.full(cap, EMPTY, np.int64)
    ustart = np.empty(256, np.int64)
    ulen = np.empty(256, np.int64)
    ucount = np.empty(256, np.int64)
    uhash = np.empty(256, np.uint64)
    nu = 0
    lo = 0
    for d in range(ends.shape[0]):
        hi = ends[d]
        p = lo
        while p < hi:
            q = _piece_end(buf, p, hi, classes)
            h = _fnv(buf, p, q, _FNV_OFFSET)
            s = np.int64(h >> np.uint64(20)) & (cap - 1)
            while True:
                u = table[s]
                if u == EMPTY:
                    break
                if uhash[u] == h and ulen[u] == q - p and _same(buf, ustart[u], buf, p, q - p):
                    break
                s = (s + 1) & (cap - 1)
            if u != EMPTY:
                ucount[u] += 1
            else:
                if nu == ustart.shape[0]:
                    ustart = _grow(ustart)
                    ulen = _grow(ulen)
                    ucount = _grow(ucount)
                    uhash = _grow(uhash)
                ustart[nu] = p
                ulen[nu] = q - p
                ucount[nu] = 1
                uhash[nu] = h
                table[s] = nu
                nu += 1
                if 2 * nu > cap:                       # rehash at half load
                    cap *= 2
                    table = np.full(cap, EMPTY, np.int64)
                    for v in range(nu):
                        s = np.int64(uhash[v] >> np.uint64(20)) & (cap - 1)
                        while table[s] != EMPTY:
                            s = (s + 1) & (cap - 1)
                        table[s] = v
            p = q
        lo = hi
    return ustart[:nu].copy(), ulen[:nu].copy(), ucount[:nu].copy()


@kernel
def _heap_push(hc, hk, size, c, key):
    """Max-heap on (count, then smaller key) in hc/hk[:size]; the caller grows and counts."""
    i = size
    hc[i] = c
    hk[i] = key
    while i > 0:
        up = (i - 1) >> 1
        if hc[up] > hc[i] or (hc[up] == hc[i] and hk[up] < hk[i]):
            break
        hc[up], hc[i] = hc[i], hc[up]
        hk[up], hk[i] = hk[i], hk[up]
        i = up


@kernel
def _heap_pop(hc, hk, size):
    """Remove and return the top (count, key) of hc/hk[:size]; the caller decrements size."""
    c = hc[0]
    key = hk[0]
    size -= 1
    hc[0] = hc[size]
    hk[0] = hk[size]
    i = 0
    while True:
        best = i
        for j in (2 * i + 1, 2 * i + 2):
            if j < size and (hc[j] > hc[best] or (hc[j] == hc[best] and hk[j] < hk[best])):
                best = j
        if best == i:
            break
        hc[best], hc[i] = hc[i], hc[best]
        hk[best], hk[i] = hk[i], hk[best]
        i = best
    return c, key


@kernel
def _find(keys, mask, key):
    """Slot of key, or of the empty slot where it would go."""
    s = _slot(key, mask)
    while keys[s] != key and keys[s] != EMPTY:
        s = (s + 1) & mask
    return s


@kernel
def _pairs_resize(pkeys, pcount, phead, plast, ptouch, extra):
    """Rehash the pair table, dropping pairs whose count fell to zero, with room for `extra`."""
    live = 0
    for s in range(pkeys.shape[0]):
        if pkeys[s] != EMPTY and pcount[s] > 0:
            live += 1
    cap = 16
    while cap < 4 * (live + extra):
        cap *= 2
    keys = np.full(cap, EMPTY, np.int64)
    count = np.zeros(cap, np.int64)
    head = np.full(cap, EMPTY, np.int64)
    last = np.full(cap, EMPTY, np.int64)
    touch = np.zeros(cap, np.int64)
    for s in range(pkeys.shape[0]):
        if pkeys[s] != EMPTY and pcount[s] > 0:
            t = _find(keys, cap - 1, pkeys[s])
            keys[t] = pkeys[s]
            count[t] = pcount[s]
            head[t] = phead[s]
            last[t] = plast[s]
            touch[t] = ptouch[s]
    return keys, count, head, last, touch, live


@kernel
def learn_merges(sym, wstart, wlen, wcount, tok_off, tok_len, arena, n_tokens, max_new, min_freq,
                 deadline):
    """Learn up to max_new new tokens from words, BPE style; returns the merges (a, b, z).

    sym[wstart[w]:wstart[w]+wlen[w]]: the current ids of word w (already segmented by the
    existing merges), which occurs wcount[w] times. Token t < n_tokens has the bytes
    arena[tok_off[t]:tok_off[t]+tok_len[t]]; tok_off and tok_len have room for max_new more.
    Each step merges the most frequent adjacent pair (ties: smallest (a, b)) while its count
    is >= min_freq. z is a new id (n_tokens, n_tokens + 1, ...) unless a token with the bytes
    of a + b already exists, in which case the merge points at it and costs no id.
    Learning also ends once time.perf_counter() reaches `deadline` (float; inf: never),
    read before the first merge and every DEADLINE_EVERY merges after it, so what a deadline
    cuts short is a prefix of the merges an unbounded run learns.
    Pair counts are updated incrementally: each pair keeps a chain of the words holding it,
    and only those words are rewritten when it is merged. sym and wlen are rewritten in place.
    """
    # token bytes -> id, to find merges whose result already exists
    tcap = 16
    while tcap < 2 * (n_tokens + max_new):
        tcap *= 2
    tmask = tcap - 1
    tkeys = np.full(tcap, EMPTY, np.int64)
    thash = np.zeros(tcap, np.uint64)
    for t in range(n_tokens):
        if tok_len[t] > 0:
            h = _fnv(arena, tok_off[t], tok_off[t] + tok_len[t], _FNV_OFFSET)
            s = np.int64(h >> np.uint64(20)) & tmask
            while tkeys[s] != EMPTY:
                s = (s + 1) & tmask
            tkeys[s] = t
            thash[s] = h
    arena_len = tok_off[n_tokens - 1] + tok_len[n_tokens - 1]
    # pair table and the word chains
    pkeys, pcount, phead, plast, ptouch, n_entries = _pairs_resize(
        np.full(1, EMPTY, np.int64), np.zeros(1, np.int64), np.zeros(1, np.int64),
        np.zeros(1, np.int64), np.zeros(1, np.int64), 1024)
    node_w = np.empty(1024, np.int64)
    node_next = np.empty(1024, np.int64)
    n_nodes = 0
    nw = wstart.shape[0]
    for w in range(nw):
        for i in range(wlen[w] - 1):
            if 2 * (n_entries + 1) > pkeys.shape[0]:
                pkeys, pcount, phead, plast, ptouch, n_entries = _pairs_resize(
                    pkeys, pcount, phead, plast, ptouch, n_entries + 1)
            key = (sym[wstart[w] + i] << 32) | sym[wstart[w] + i + 1]
            s = _find(pkeys, pkeys.shape[0] - 1, key)
            if pkeys[s] == EMPTY:
                pkeys[s] = key
                n_entries += 1
            pcount[s] += wcount[w]
            if plast[s] != w:
                if n_nodes == node_w.shape[0]:
                    node_w = _grow(node_w)
                    node_next = _grow(node_next)
                node_w[n_nodes] = w
                node_next[n_nodes] = phead[s]
                phead[s] = n_nodes
                n_nodes += 1
                plast[s] = w
    hc = np.empty(max(16, n_entries), np.int64)
    hk = np.empty(max(16, n_entries), np.int64)
    hsize = 0
    for s in range(pkeys.shape[0]):
        if pkeys[s] != EMPTY:
            _heap_push(hc, hk, hsize, pcount[s], pkeys[s])
            hsize += 1
    ma = np.empty(64, np.int64)
    mb = np.empty(64, np.int64)
    mz = np.empty(64, np.int64)
    nm = 0
    dk = np.empty(1024, np.int64)      # per-step pair-count deltas: key, amount, word
    dv = np.empty(1024, np.int64)
    dw = np.empty(1024, np.int64)
    touched = np.empty(1024, np.int64)
    wstamp = np.zeros(nw, np.int64)
    stamp = 0
    new = 0
    timed = deadline < np.inf
    while new < max_new:
        if timed and nm % DEADLINE_EVERY == 0 and _clock() >= deadline:
            break
        found = False
        c = np.int64(0)
        key = np.int64(0)
        while hsize > 0:
            c, key = _heap_pop(hc, hk, hsize)
            hsize -= 1
            s = _find(pkeys, pkeys.shape[0] - 1, key)
            cur = pcount[s] if pkeys[s] == key else 0
            if cur == c:
                found = True
                break
            if 0 < cur < c:                 # stale: count fell since the push
                _heap_push(hc, hk, hsize, cur, key)
                hsize += 1
        if not found or c < min_freq:
            break
        a = key >> 32
        b = key & 0xFFFFFFFF
        # the merged token: an existing one with these bytes, or a new id
        la = tok_len[a]
        lb = tok_len[b]
        h = _fnv(arena, tok_off[b], tok_off[b] + lb, _fnv(arena, tok_off[a], tok_off[a] + la, _FNV_OFFSET))
        s = np.int64(h >> np.uint64(20)) & tmask
        z = -1
        while tkeys[s] != EMPTY:
            t = tkeys[s]
            if (thash[s] == h and tok_len[t] == la + lb and _same(arena, tok_off[t], arena, tok_off[a], la)
                    and _same(arena, tok_off[t] + la, arena, tok_off[b], lb)):
                z = t
                break
            s = (s + 1) & tmask
        if z < 0:
            z = n_tokens
            while arena_len + la + lb > arena.shape[0]:
                arena = _grow(arena)
            arena[arena_len:arena_len + la] = arena[tok_off[a]:tok_off[a] + la]
            arena[arena_len + la:arena_len + la + lb] = arena[tok_off[b]:tok_off[b] + lb]
            tok_off[z] = arena_len
            tok_len[z] = la + lb
            arena_len += la + lb
            tkeys[s] = z
            thash[s] = h
            n_tokens += 1
            new += 1
        if nm == ma.shape[0]:
            ma = _grow(ma)
            mb = _grow(mb)
            mz = _grow(mz)
        ma[nm] = a
        mb[nm] = b
        mz[nm] = z
        nm += 1
        # phase 1: rewrite the words that hold (a, b), collecting pair-count deltas
        stamp += 1
        nd = 0
        s = _find(pkeys, pkeys.shape[0] - 1, key)
        node = phead[s]
        while node >= 0:
            w = node_w[node]
            node = node_next[node]
            if wstamp[w] == stamp:
                continue
            wstamp[w] = stamp
            ws = wstart[w]
            n = wlen[w]
            cnt = wcount[w]
            i = 0
            o = 0
            while i < n:
                if i + 1 < n and sym[ws + i] == a and sym[ws + i + 1] == b:
                    if nd + 5 > dk.shape[0]:
                        dk = _grow(dk)
                        dv = _grow(dv)
                        dw = _grow(dw)
                    if o > 0:
                        prv = sym[ws + o - 1]
                        dk[nd], dv[nd], dw[nd] = (prv << 32) | a, -cnt, w
                        dk[nd + 1], dv[nd + 1], dw[nd + 1] = (prv << 32) | z, cnt, w
                        nd += 2
                    if i + 2 < n:
                        nxt = sym[ws + i + 2]
                        dk[nd], dv[nd], dw[nd] = (b << 32) | nxt, -cnt, w
                        dk[nd + 1], dv[nd + 1], dw[nd + 1] = (z << 32) | nxt, cnt, w
                        nd += 2
                    dk[nd], dv[nd], dw[nd] = key, -cnt, w
                    nd += 1
                    sym[ws + o] = z
                    i += 2
                else:
                    sym[ws + o] = sym[ws + i]
                    i += 1
                o += 1
            wlen[w] = o
        # phase 2: apply the deltas, chain the words to their new pairs, re-push grown pairs
        if 2 * (n_entries + nd) > pkeys.shape[0]:
            pkeys, pcount, phead, plast, ptouch, n_entries = _pairs_resize(
                pkeys, pcount, phead, plast, ptouch, nd)
        mask = pkeys.shape[0] - 1
        nt = 0
        for t in range(nd):
            s = _find(pkeys, mask, dk[t])
            if pkeys[s] == EMPTY:
                pkeys[s] = dk[t]
                pcount[s] = 0
                phead[s] = EMPTY
                plast[s] = EMPTY
                ptouch[s] = 0
                n_entries += 1
            pcount[s] += dv[t]
            if dv[t] > 0:
                if plast[s] != dw[t]:
                    if n_nodes == node_w.shape[0]:
                        node_w = _grow(node_w)
                        node_next = _grow(node_next)
                    node_w[n_nodes] = dw[t]
                    node_next[n_nodes] = phead[s]
                    phead[s] = n_nodes
                    n_nodes += 1
                    plast[s] = dw[t]
                if ptouch[s] != stamp:
                    ptouch[s] = stamp
                    if nt == touched.shape[0]:
                        touched = _grow(touched)
                    touched[nt] = dk[t]
                    nt += 1
        for t in range(nt):
            s = _find(pkeys, mask, touched[t])
            if pcount[s] > 0:
                if hsize == hc.shape[0]:
                    hc = _grow(hc)
                    hk = _grow(hk)
                _heap_push(hc, hk, hsize, pcount[s], touched[t])
                hsize += 1
    return ma[:nm].copy(), mb[:nm].copy(), mz[:nm].copy()
