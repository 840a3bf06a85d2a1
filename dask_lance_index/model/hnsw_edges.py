"""Neighbour lists of one HNSW level: each node's edges both ways, best first, and the
edges that join every node to the entry point and back (:func:`connect`). Shared by the l2
construction (:mod:`.hnsw`) and the dot one (:mod:`.hnsw_dot`)."""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
from scipy import sparse
from scipy.sparse import csgraph

from .kmeans import smallest_first

__all__ = ["SLICE_CELLS", "connect", "edge_products", "in_turn", "with_reverse_edges"]

# Nodes whose distances to a level's nodes are held at once (SLICE x n float32).
SLICE_CELLS = 1 << 22
# Under dot, the joined nodes a round of connect looks among for each lost node's nearest:
# at most this many, drawn (thousands of rows of small norm are nobody's largest product).
_CONNECT_ROOM = 4096
# The nearest joined nodes with room a lost node may be joined to in one round, nearest
# first: under dot most lost nodes' nearest are the same few rows of large norm, whose
# room a round used up, so that one 27,764-row level took 22 rounds, each its products anew.
_CONNECT_CHOICES = 8


def in_turn(fn: Callable, items: Iterable) -> None:
    """``fn(item)`` for each of ``items``, one after another: how a level's independent
    pieces of work run unless the graph's builder is given another ``each``."""
    for item in items:
        fn(item)


def edge_products(vectors: np.ndarray, src: np.ndarray, dst: np.ndarray, each: Callable = in_turn) -> np.ndarray:
    """Each edge's inner product ``x_src . x_dst`` (float32), :data:`SLICE_CELLS` floats of
    rows a side gathered at a time (the slices run by ``each``)."""
    out = np.empty(len(src), np.float32)
    step = max(1, SLICE_CELLS // max(1, vectors.shape[1]))

    def products(lo: int) -> None:
        out[lo : lo + step] = np.einsum("ij,ij->i", vectors[src[lo : lo + step]], vectors[dst[lo : lo + step]])

    each(products, range(0, len(src), step))
    return out


def _ordered_bits(key: np.ndarray) -> np.ndarray:
    """float32 keys as uint32 of the same order (``-0.0`` as ``0.0``; no NaN)."""
    u = (key.astype(np.float32) + np.float32(0)).view(np.uint32)  # -0.0 + 0.0 is 0.0
    return np.where(u >> np.uint32(31), ~u, u | np.uint32(0x80000000))


def _from_ordered_bits(u: np.ndarray) -> np.ndarray:
    """The float32 keys of :func:`_ordered_bits`."""
    return np.where(u >> np.uint32(31), u & np.uint32(0x7FFFFFFF), ~u).view(np.float32)


def with_reverse_edges(n: int, src, dst, key, cap: int, width: int | None = None):
    """Each node's list of the edges ``src -> dst`` and of each the other way, best first
    (smallest ``key``: a distance, or a product negated; then by id, a pair held once), at
    most the best ``width`` (``2 cap`` by default) of a hub's: ``(cand, ckey)``,
    ``(n, width)``, rows padded with an infinite key."""
    ids = np.int32 if n <= np.iinfo(np.int32).max else np.int64  # half the memory of int64 ids
    a = np.concatenate([src, dst], dtype=ids, casting="unsafe")
    b = np.concatenate([dst, src], dtype=ids, casting="unsafe")
    ab_key = np.concatenate([key, key])
    # by node, then key (then id: duplicates side by side)
    a, b, ab_key = _by_node_key_id(n, a, b, ab_key)
    first = np.ones(len(a), dtype=bool)
    first[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    a, b, ab_key = a[first], b[first], ab_key[first]
    del first
    counts = np.bincount(a, minlength=n)
    width = min(int(counts.max()), width or 2 * cap)  # under l2 the best 2 cap of a hub's are enough
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(ids)
    rank = np.arange(len(a), dtype=ids)
    rank -= starts[a]
    inside = rank < width
    cand = np.zeros((n, width), np.int32)  # node ids of one level
    ckey = np.full((n, width), np.inf, np.float32)
    cand[a[inside], rank[inside]] = b[inside]
    ckey[a[inside], rank[inside]] = ab_key[inside]
    return cand, ckey


def _by_node_key_id(n: int, a, b, key):
    """The edges ``a -> b`` (ids of one dtype) sorted by node ``a``, then ``key``, then ``b``.

    Node, key and id packed in one uint64 and sorted in place (2x faster than lexsort):
    whole where the two ids' bits and the key's 32 fit, else in ranges of nodes whose id
    within the range does (the edges put in order of range by a stable sort of small
    integers, each range's gathered and sorted alone). A 75,122-node level's 4.5M edges took
    2.1 s in lexsort."""
    bits = max(1, int(n - 1).bit_length())
    local = min(bits, 32 - bits)  # bits of a node's id within its range
    if local < 1 or bits - local > 16:  # ranges past what a uint16 counts
        order = np.lexsort((b, key, a))
        return a[order], b[order], key[order]
    if local < bits:  # in order of range (a radix sort of uint16)
        ranges = (a >> local).astype(np.uint16)
        order = np.argsort(ranges, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(np.bincount(ranges, minlength=((n - 1) >> local) + 1))])
        del ranges
    else:
        order, bounds = None, [0, len(a)]
    out_a, out_b, out_key = np.empty_like(a), np.empty_like(b), np.empty(len(a), np.float32)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if hi == lo:
            continue
        at = slice(lo, hi) if order is None else order[lo:hi]
        part = a[at]
        base = (int(part[0]) >> local) << local
        packed = (part - base).astype(np.uint64) << np.uint64(32 + bits)
        del part
        packed |= _ordered_bits(key[at]).astype(np.uint64) << np.uint64(bits)
        packed |= b[at].astype(np.uint64)
        packed.sort()
        out_a[lo:hi] = (packed >> np.uint64(32 + bits)).astype(a.dtype) + base
        out_b[lo:hi] = (packed & np.uint64((1 << bits) - 1)).astype(b.dtype)
        out_key[lo:hi] = _from_ordered_bits(((packed >> np.uint64(bits)) & np.uint64(0xFFFFFFFF)).astype(np.uint32))
    return out_a, out_b, out_key


def connect(vectors, sq, src, dst, dist, cap: int, entry: int, dot: bool = False):
    """Edges ``src -> dst`` (grouped by ``src``) with more added until every node is
    reached from ``entry`` and reaches it (one strongly connected graph).

    Exact neighbours leave clusters of nodes with no edge into them from outside
    or out of them (an insert-built graph gets such edges from its early, sparse
    inserts): Lance's search would never reach them, or never leave them (measured: recall
    0.985 at ef 200 against Lance's 1.000). Each round, every cluster apart from the
    entry's gets an edge each way it lacks between one of its nodes and a joined node with
    room in its list: the nearest such pair among each of its nodes' :data:`_CONNECT_CHOICES`
    nearest joined nodes (a list never holds a node twice, and a node takes no more new edges
    in a round than it has room for, the nearest pairs first; a cluster whose choices have no
    room left waits for the next round). When no joined
    list has room (levels above 0 fill every list to ``m`` = ``cap``), the least full ones
    may take one more each such round: lists then pass ``cap`` by as many rounds as that
    happens, one on the levels measured. One cluster a round, as this was before, took
    minutes on graphs of thousands of clusters (under the dot metric, or without the long
    edges); levels of 400-20,000 rows of real data took 0-9 rounds. With one choice a node,
    the levels of one 27,764-row dot partition took 22 rounds and 0.83 s, with eight 8 rounds
    and 0.40 s. A graph built to defeat
    it (every lost node's list full, all pointing at the same few nodes) takes a round for
    every few clusters. Nearest is by squared l2 distance, or under ``dot`` by largest
    inner product.
    """
    n = len(vectors)
    while True:
        graph = sparse.csr_matrix((np.ones(len(src), np.int8), (src, dst)), shape=(n, n))
        _, label = csgraph.connected_components(graph, directed=True, connection="strong")
        joined = label == label[entry]
        if joined.all():
            return src, dst, dist
        degree = np.bincount(src, minlength=n)
        # lists of up to `cap`; past it by as little as it takes when every joined list is
        # full (as on levels above 0, filled to m = cap: all would go to one node under dot)
        limit = max(cap, int(degree[joined].min()) + 1)
        room = np.flatnonzero(joined & (degree < limit))
        lost = np.flatnonzero(~joined)
        if dot and len(room) > _CONNECT_ROOM:
            room = np.sort(np.random.default_rng(len(lost)).choice(room, _CONNECT_ROOM, replace=False))
        choices = min(_CONNECT_CHOICES, len(room))
        near = np.empty((len(lost), choices), np.int64)
        near_dist = np.empty((len(lost), choices), np.float32)
        step = max(1, SLICE_CELLS // len(room))
        room_rows = vectors[room].T
        for lo in range(0, len(lost), step):
            u = lost[lo : lo + step]
            d = vectors[u] @ room_rows
            if dot:
                d *= -1
                d += 1  # Lance's dot distance
            else:
                d *= -2
                d += sq[u, None]
                d += sq[None, room]
            r = smallest_first(d, choices)
            near[lo : lo + step] = room[r]
            near_dist[lo : lo + step] = np.take_along_axis(d, r, axis=1)
        # every lost node's nearest joined ones, each cluster's nearest first
        cluster = np.repeat(label[lost], choices)
        pu, pr, pd = np.repeat(lost, choices), near.reshape(-1), near_dist.reshape(-1)
        order = np.lexsort((pd, cluster))
        pu, pr, pd, cluster = pu[order], pr[order], pd[order], cluster[order]
        spare = np.maximum(limit - degree, 0)
        done = np.zeros(int(label.max()) + 1, bool)
        taken = []
        while True:  # each cluster's nearest pair whose joined node has room, the nearest first at a node
            alive = np.flatnonzero(~done[cluster] & (spare[pr] > 0))
            if not len(alive):
                break
            best = alive[np.concatenate([[True], cluster[alive][1:] != cluster[alive][:-1]])]
            best = best[np.lexsort((pd[best], pr[best]))]
            within = np.arange(len(best)) - np.searchsorted(pr[best], pr[best])  # rank among the pairs at its node
            best = best[within < spare[pr[best]]]
            taken.append(best)
            done[cluster[best]] = True
            spare -= np.bincount(pr[best], minlength=n)
        taken = np.concatenate(taken) if taken else np.zeros(0, np.int64)
        u, r, du = pu[taken], pr[taken], pd[taken]
        if not dot:
            du = np.maximum(du, 0)
        a = np.concatenate([r, u])
        b = np.concatenate([u, r])
        ab = np.concatenate([du, du]).astype(np.float32)
        new = np.asarray(graph[a, b]).reshape(-1) == 0  # not an edge already
        src = np.concatenate([src, a[new]])
        dst = np.concatenate([dst, b[new]])
        dist = np.concatenate([dist, ab[new]])
        order = np.argsort(src, kind="stable")
        src, dst, dist = src[order], dst[order], dist[order]
