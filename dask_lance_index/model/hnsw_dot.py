"""HNSW levels under the dot metric, built as if their nodes were inserted one by one.

A level's nodes are taken in a random order (Lance inserts a partition's rows in row
order): a node's candidates are its ``candidates`` largest inner products with the nodes
before it (:data:`.hnsw.HNSW_DOT_CANDIDATES`, Lance's ``ef_construction``), pruned by
Lance's own rule on its distance ``1 - x.y``; each list with the reverse edges (a hub's
best ``4 cap`` of them) that overflows is pruned again and filled to its cap, as Lance's
inserts leave it (:func:`distinct_dot_graph`). Nearest neighbours by inner product are rows
of large norm, so the l2 construction's tools (:mod:`.hnsw`: few candidates, long edges,
relaxed pruning) do not carry over: docs/benchmarks.md has what was measured. Each node is
compared with every node before it, a cost that grows with the square of the level's nodes;
on levels of more than ``2 x`` :data:`DOT_EXACT_ROWS` nodes whose rows group well (the
groups hold nearly all of drawn nodes' largest products, and take under half the products),
each node after the first :data:`DOT_EXACT_ROWS` only with the nodes of the
groups it is near (:func:`_grouped_largest_products`), a cost that grows with the nodes.
A level of :data:`_PROJECTED_MIN_ROWS` nodes or more whose rows hold nearly all their energy
in few directions is built on the rows projected on those (:func:`projection`), else on the
fewest of their directions that keep most of the rows' largest products
(:func:`spread_projection`), at a cost that shrinks with the columns dropped; groups are
not tried on those spread rows (they did not group). Rows of one norm are not built here:
under dot they rank as under l2, and :func:`.hnsw.build_hnsw` builds them so.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .hnsw_edges import SLICE_CELLS, connect, edge_products, in_turn, with_reverse_edges
from .kmeans import assign, kmeans, smallest_first
from .principal import fewest, principal_axes

__all__ = ["DOT_EXACT_ROWS", "distinct_dot_graph", "energy_axes", "projection", "spread_projection"]

# Under dot, nodes a slice of a level's products takes at least, up to _PRODUCT_CELLS floats
# (128 MB), into one buffer; its rows then selected SLICE_CELLS at a time. A GEMM of few rows
# runs below this machine's peak: 62,500 x 128 rows, one thread, 67 rows a slice (SLICE_CELLS)
# 71-75 GFLOPS, 256 rows 105-107; that graph 13.6-14.2 s against 17.4-17.6 s.
_PRODUCT_ROWS = 256
_PRODUCT_CELLS = 1 << 25
# Under dot, the reverse edges of a hub that a re-pruning sees: its largest products, up to
# _DOT_REPRUNED x cap (2 x cap under l2). Those of small product are what lead from a
# hub down to the nodes around it; cut at 2 x cap, they were never judged. 4 x cap searched as
# 8 x cap did (the recall tests' partitions within 0.005; scaled sentence rows of 10,388,
# 37,500 and 59,631 and Fashion-MNIST's 30,000, 300 queries, ef 10/20/40, within 0.002) and
# built faster (one thread, 59,631 rows 16.4-18.5 s against 18.6-22.7 s; 10,388 1.39-1.46
# against 1.56-2.03 s).
_DOT_REPRUNED = 4
# A product of two gathered rows costs about this many products of a GEMM (one thread, rows
# of 20,000: 173 against 3.4 ns at 128-d, 800 against 17 ns at 768-d, a lookup 11-16 ns;
# graphs of 8,000 and 20,000 rows built fastest at 10-20: 1.11 and 4.2 s, 1.38 and 4.8 at 80).
_PAIR_COST = 20
# Products of a level's nodes held whole (float32) for the dot construction, up to 64 MB.
_GRAM_CELLS = 1 << 24
# Past that, the rows of products held for the nodes its pruning keeps most (_HeldRows), up
# to 16 MB every 128 dimensions (128 MB at most), and the candidates' rows gathered at once for
# the products of the others' pairs, up to 4 MB. Both prunings of one 27,764-row 128-d level
# took 0.66-0.83 s so, against 0.67-1.03 s holding 8 or 32 MB, 0.84-1.13 s holding none, and
# 1.18-1.43 s with each step's rows computed afresh and 64 MB of pairs' rows at once: fresh
# pages cost here, and gathered rows that stay in the caches are cheaper to multiply. At 768-d
# a pair's rows cost more: one 40,000-row graph 26.96 s holding 96 MB, 28.42-29.74 s holding 16.
_HELD_CELLS = 1 << 22
_HELD_MAX_CELLS = 1 << 25
_PAIR_CELLS = 1 << 20
# Nodes a slice of a dot pruning takes at most (fewer where SLICE_CELLS // K is fewer): the
# slices also run in helper threads (``each``). One 59,746-row level (192 columns): the graph
# 18.8 s on one thread and 11.5 s with a helper at 2,048 nodes, 19.9 and 12.1 s at 27,962 (three
# slices), 19.7 and 11.9 s at 1,024, 19.8 and 12.7 s at 512.
_PRUNE_ROWS = 2048
# Past DOT_EXACT_ROWS nodes the candidates come from groups (_grouped_largest_products): the
# first DOT_EXACT_ROWS inserted still compared with every node before them, each later node
# with the nodes before it in the groups of about _GROUP_ROWS (k-means of the rows lengthened
# to one norm) that its query group's nodes (_QUERY_ROWS, k-means of the rows, in _BANDS of
# insertion order) are near, _GROUP_PROBES each. On one 100,000-row 128-d partition (one
# thread) 99.0% of the edges the exact candidates' pruning keeps were found (16 probes of 256
# rows; 6 of 512: 96.0%), the candidates in 9.7 s against 17.0 s, and recall@10 of a search
# of the graph (1,000 queries, ef 15 and 40) 0.890 / 0.951 against 0.892 / 0.952. The groups
# are used only where they take fewer than _GROUPED_SHARE of the exact products (the nodes
# of the groups a query group is near are gathered, and the GEMMs are smaller): one thread,
# 128-d, 47,000 nodes 0.48 of them, graph 5.7-6.4 s against 7.9 s; 62,500 0.36, 8.4-9.3 s
# against 11.3-13.2 s; 100,000 0.21, 17.0 s against 24.9 s; at 768-d (synthetic rows, where a
# query group is near more groups) 40,000 nodes 0.72, 31.4 s against 28.6 s, 62,500 0.52,
# 51.8 s against 50.0 s; real 784-d rows (70,000 Fashion-MNIST images) 0.16, 28.6 s against
# 49.9 s.
#
# Nor are they used where the groups probed for _GROUPED_CHECKED drawn nodes hold under
# _GROUPED_FOUND of their _GROUPED_LARGEST largest products with the nodes before them. One
# thread, recall@10 of a search of the graph at ef 10/20/40 (300 queries): the larger partition
# (59,746 rows, 192 directions) of 75,013 real sentence embeddings scaled by a random factor in
# [0.5, 2], under IVF at 2 partitions, held 0.880-0.889 (256 and 512 drawn nodes; 64 drew
# 0.901, too few to tell), and searched at 0.937/0.969/0.983 grouped against 0.959/0.985/0.994
# with every product; Fashion-MNIST's 70,000 images held 0.962-0.963, grouped 0.750/0.859/0.929
# in 15.2 s against 0.759/0.871/0.934 in 23.9 s; synthetic 128-d rows of 47,000 and 100,000
# 0.998-1.000.
DOT_EXACT_ROWS = 16384
_GROUPED_SHARE = 0.5
_GROUPED_CHECKED = 256
_GROUPED_LARGEST = 40
_GROUPED_FOUND = 0.93
_GROUP_ROWS = 256
_GROUP_PROBES = 16
_QUERY_ROWS = 512
_BANDS = 4
# A level of at least _PROJECTED_MIN_ROWS nodes whose rows leave under _PROJECTED_RESIDUAL of
# their energy (sum of squares) outside a few directions is built on its rows projected on
# those (the top eigenvectors of X^T X from _PROJECTED_SAMPLE rows, a multiple of
# _PROJECTED_STEP of them, at most half the dimension); the edges' distances are then the
# rows' own (_projected_rows). One thread, search recall@10 of the level-0 graph at ef
# 15/40/100 (1,000 queries of rows plus noise), exact products against projected ones:
# synthetic 768-d partition of 39,645 rows 0.939/0.979/0.993 in 22.5 s, 32 directions
# (0.02% left) 0.942/0.978/0.993 in 7.1 s; Fashion-MNIST's 70,000 784-d images (600 queries)
# 0.841/0.930/0.968 in 50.1 s, 256 directions (1.3% left) 0.840/0.931/0.971 in 31.1 s, 64
# (4.9% left) 0.841/0.926/0.966 in 21.0 s.
_PROJECTED_MIN_ROWS = 8192
_PROJECTED_RESIDUAL = 0.02
_PROJECTED_SAMPLE = 8192
_PROJECTED_STEP = 32
# Rows of no such projection (energy spread, as real sentence embeddings' is) are built on
# the fewest top directions (a multiple of _PROJECTED_STEP, at most _SPREAD_WIDTH of the
# columns) on which the _SPREAD_NEAREST largest products of _SPREAD_CHECKED drawn rows hold
# _SPREAD_FOUND of their exact ones (spread_projection): the products the candidates need, not
# a share of the energy. One thread, the two partitions under IVF at 2 partitions of the scaled
# sentence rows above, recall@10 of a search of the graph (1,000 queries, ef 10/20/40): 59,746
# rows on 224 directions (95% of the energy; 0.959 of the products) 19.9 s, 0.952/0.981/0.992;
# 192 (0.944) 17.1 s, 0.951/0.979/0.991; 160 (0.917) 15.8 s, 0.947/0.979/0.991; 128 (0.878)
# 13.6 s, 0.942/0.976/0.988. 15,267 rows on 256 (0.957) 3.53 s, 0.929/0.970/0.990; 224 (0.933)
# 3.07-3.32 s, 0.922/0.966/0.988; 192 (0.896) 2.97 s, 0.918/0.963/0.987.
_SPREAD_WIDTH = 0.75
_SPREAD_CHECKED = 64
_SPREAD_NEAREST = 40
_SPREAD_FOUND = 0.93


def _largest_products(vectors, fwd, fwd_ip, order, each: Callable = in_turn, grouped: bool = True) -> None:
    """Each node's ``K = fwd.shape[1]`` largest inner products with the nodes before it in
    ``order`` (node ids in an order of insertion), largest first, into ``fwd`` and ``fwd_ip``
    (node ids, products; ``-inf`` products past the nodes before it): with every node before
    it (:func:`_all_largest_products`), or, where :func:`_query_groups` finds groups that
    take under half the products, the first :data:`DOT_EXACT_ROWS` so and each later node
    with those of the groups it is near (:func:`_grouped_largest_products`); not ``grouped``,
    every node so. ``each`` runs the slices of nodes (or query groups), which write only
    their own nodes' rows."""
    n = len(vectors)
    groups = _query_groups(vectors, order) if grouped and n > 2 * DOT_EXACT_ROWS else None
    if groups is None:
        _all_largest_products(vectors, fwd, fwd_ip, order, each)
        return
    # the first inserted see every node before them, as the early inserts of Lance's graphs do
    # (62,500 nodes, 6 probes of 512 rows, recall@10 at ef 15: the first 4,096 so 0.900/0.905
    # over two seeds, the first 16,384 0.902/0.908, every node 0.911/0.911)
    first = order[:DOT_EXACT_ROWS]
    head, head_ip = np.empty((len(first), fwd.shape[1]), np.int64), np.empty((len(first), fwd.shape[1]), np.float32)
    _all_largest_products(vectors[first], head, head_ip, np.arange(len(first)), each)
    fwd[first] = first[head]
    fwd_ip[first] = head_ip
    _grouped_largest_products(vectors, fwd, fwd_ip, order, groups, each)


def _all_largest_products(vectors, fwd, fwd_ip, order, each: Callable = in_turn) -> None:
    """:func:`_largest_products` with every node before each node, a slice of nodes at a time
    in ``order`` (the slices run by ``each``): only the products with the nodes before the
    slice's last, about half of all."""
    n, k = fwd.shape
    inserted = vectors[order]
    step = max(1, SLICE_CELLS // n, min(_PRODUCT_ROWS, _PRODUCT_CELLS // n))
    buffers = threading.local()  # every slice's products in its thread's one buffer: fresh pages cost

    def largest(lo: int) -> None:
        if not hasattr(buffers, "buf"):
            buffers.buf = np.empty(min(n, step) * n, np.float32)
        hi = min(n, lo + step)
        neg = buffers.buf[: (hi - lo) * hi].reshape(hi - lo, hi)
        np.matmul(-inserted[lo:hi], inserted[:hi].T, out=neg)
        # a node's own column and those after it in the slice (the nodes inserted later)
        block = neg[:, lo:hi]  # the columns before lo are all nodes inserted earlier
        block[np.arange(hi - lo)[:, None] <= np.arange(hi - lo)[None, :]] = np.inf
        before = order[:hi]
        if hi <= k:  # fewer columns than wanted: padded with the products of nobody
            neg = np.hstack([neg, np.full((hi - lo, k + 1 - hi), np.inf, np.float32)])
            before = np.concatenate([before, np.zeros(k + 1 - hi, before.dtype)])
        # 150 of a few thousand: a sampled threshold from 16 columns a wanted value on
        # (4,000 rows: 0.15 s against 0.37 s for the default 32, which selects whole rows
        # here), a few of the slice's rows at a time, so that its temporaries stay small
        part = max(1, SLICE_CELLS // neg.shape[1])
        for a in range(lo, hi, part):
            b = min(hi, a + part)
            rows = neg[a - lo : b - lo]
            near = smallest_first(rows, k, wide=16, shuffled=True)  # the columns in insertion order
            fwd[order[a:b]] = before[near]
            fwd_ip[order[a:b]] = -np.take_along_axis(rows, near, axis=1)

    # the last slices first: they are the widest, and run alone they would end the level
    each(largest, range((n - 1) // step * step, -1, -step))


@dataclass(frozen=True)
class _QueryGroups:
    """Where each later node's candidates are looked for (:func:`_query_groups`): the nodes
    in insertion ``rank``; each group's nodes by their ranks, ascending
    (``member_ranks[starts[g]:starts[g + 1]]``); the later nodes in query groups
    (``later[bounds[i]:bounds[i + 1]]``) and the groups each query group is near
    (``probed[i]``)."""

    rank: np.ndarray
    member_ranks: np.ndarray
    starts: np.ndarray
    later: np.ndarray
    bounds: np.ndarray
    probed: tuple


def _query_groups(vectors, order) -> _QueryGroups | None:
    """The groups of :func:`_grouped_largest_products`, or None where they would take
    :data:`_GROUPED_SHARE` of the products of every node with every node before it or more,
    or miss drawn nodes' largest products (:func:`_groups_find_largest`).

    The rows lengthened by one coordinate to one norm (``[x, sqrt(M - |x|^2)]``) are split
    in groups of about :data:`_GROUP_ROWS` by k-means; a node ``[x, 0]`` is nearest in l2 to
    the lengthened rows of largest product with it, so the groups it is near are those of
    nearest centre. The nodes after the first :data:`DOT_EXACT_ROWS` are taken in query
    groups (k-means of the rows, about :data:`_QUERY_ROWS` nodes, within each of
    :data:`_BANDS` bands of insertion order), each near every group among any of its nodes'
    :data:`_GROUP_PROBES` nearest. Centres are drawn from the level's size: the same groups
    on any thread."""
    n = len(vectors)
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    rng = np.random.default_rng(n)
    norms = np.einsum("ij,ij->i", vectors, vectors)
    lift = np.sqrt(np.maximum(norms.max() - norms, 0)).astype(np.float32)
    groups = -(-n // _GROUP_ROWS)
    drawn = np.sort(rng.choice(n, min(n, 64 * groups), replace=False))
    centres, _ = kmeans(np.hstack([vectors[drawn], lift[drawn, None]]), groups, max_iters=10, seed=n)
    c, c_lift = np.ascontiguousarray(centres[:, :-1]), centres[:, -1]
    c_sq = np.einsum("ij,ij->i", centres, centres)
    own = _nearest_lifted_centre(vectors, lift, c, c_lift, c_sq)
    members = np.argsort(own * n + rank, kind="stable")  # each group's nodes in insertion order
    starts = np.searchsorted(own[members], np.arange(groups + 1))
    member_ranks = rank[members]
    later = order[DOT_EXACT_ROWS:]
    query_groups = -(-n // _QUERY_ROWS)
    drawn = np.sort(rng.choice(n, min(n, 32 * query_groups), replace=False))
    q_centres, _ = kmeans(vectors[drawn], query_groups, max_iters=8, seed=n + 1)
    key = rank[later] * _BANDS // n * query_groups + assign(vectors[later], q_centres)[0]
    by_key = np.argsort(key, kind="stable")
    later, key = later[by_key], key[by_key]
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(key)) + 1, [len(later)]])
    probes = min(_GROUP_PROBES, groups)
    probed, products = [], DOT_EXACT_ROWS**2 / 2
    for a, b in zip(bounds[:-1], bounds[1:]):
        near = vectors[later[a:b]] @ c.T
        near *= -2
        near += c_sq[None, :]  # l2 from [x, 0] less |x|^2
        cut = np.partition(near, probes - 1, axis=1)[:, probes - 1]
        probed.append(np.flatnonzero((near <= cut[:, None]).any(axis=0)))
        last = rank[later[a:b]].max()
        # the products of these nodes: with the groups' nodes inserted before their last
        products += (b - a) * sum(np.searchsorted(member_ranks[starts[g] : starts[g + 1]], last) for g in probed[-1])
    if products >= _GROUPED_SHARE * n * n / 2 or not _groups_find_largest(vectors, rank, own, later, bounds, probed):
        return None
    return _QueryGroups(rank, member_ranks, starts, later, bounds, tuple(probed))


def _groups_find_largest(vectors, rank, own, later, bounds, probed) -> bool:
    """Whether the groups that the query groups of :data:`_GROUPED_CHECKED` drawn later
    nodes probe (``own``: each node's group; ``later[bounds[i]:bounds[i + 1]]`` query group
    ``i``, near the groups ``probed[i]``) hold at least :data:`_GROUPED_FOUND` of their
    :data:`_GROUPED_LARGEST` largest products with the nodes before them (the candidates
    the pruning keeps are among those)."""
    drawn = np.sort(np.random.default_rng(len(vectors) + 2).choice(len(later), min(len(later), _GROUPED_CHECKED),
                                                                     replace=False))
    largest = _largest_of(vectors, later[drawn], _GROUPED_LARGEST, rank)
    query_group = np.searchsorted(bounds, drawn, side="right") - 1
    found = [np.isin(own[largest[i]], probed[g]).mean() for i, g in enumerate(query_group)]
    return float(np.mean(found)) >= _GROUPED_FOUND


def _grouped_largest_products(vectors, fwd, fwd_ip, order, groups: _QueryGroups, each: Callable = in_turn) -> None:
    """:func:`_largest_products` of the nodes after the first :data:`DOT_EXACT_ROWS` in
    ``order``: a query group's nodes compared with the nodes of every group it is near
    (:func:`_query_groups`), up to the last inserted of them (one GEMM a query group, the
    products with nodes inserted after each masked; the query groups run by ``each``)."""
    k = fwd.shape[1]
    rank, member_ranks, starts, later = groups.rank, groups.member_ranks, groups.starts, groups.later

    def query_group(i: int) -> None:
        a, b, probed = groups.bounds[i], groups.bounds[i + 1], groups.probed[i]
        q = later[a:b]
        q_vectors = vectors[q]
        pool_ranks = np.sort(np.concatenate([member_ranks[starts[g] : starts[g + 1]] for g in probed]))
        pool_ranks = pool_ranks[: np.searchsorted(pool_ranks, rank[q].max())]  # the nodes before the last
        pool = order[pool_ranks]  # in insertion order: columns in a random order
        pool_vectors = vectors[pool]
        step = max(1, SLICE_CELLS // max(1, len(pool)))
        for lo in range(0, len(q), step):
            rows = q[lo : lo + step]
            neg = np.matmul(-q_vectors[lo : lo + step], pool_vectors.T)
            row_ranks = rank[rows]
            after = int(np.searchsorted(pool_ranks, row_ranks.min()))  # the columns before are before every row
            tail = neg[:, after:]
            tail[pool_ranks[None, after:] >= row_ranks[:, None]] = np.inf
            cols = pool
            if len(pool) <= k:  # fewer columns than wanted: padded with the products of nobody
                neg = np.hstack([neg, np.full((len(rows), k + 1 - len(pool)), np.inf, np.float32)])
                cols = np.concatenate([pool, np.zeros(k + 1 - len(pool), pool.dtype)])
            best = smallest_first(neg, k, wide=16, shuffled=True)
            fwd[rows] = cols[best]
            fwd_ip[rows] = -np.take_along_axis(neg, best, axis=1)

    each(query_group, range(len(groups.probed)))


def _nearest_lifted_centre(vectors, lift, centres, c_lift, c_sq) -> np.ndarray:
    """Each row's nearest centre in l2, rows ``[x, lift]`` and centres ``[c, c_lift]`` (of
    squared norms ``c_sq``), :data:`SLICE_CELLS` products at a time: :func:`.kmeans.assign`
    would need a lengthened copy of every row."""
    out = np.empty(len(vectors), np.int64)
    step = max(1, SLICE_CELLS // len(centres))
    for lo in range(0, len(vectors), step):
        d = vectors[lo : lo + step] @ centres.T
        d += lift[lo : lo + step, None] * c_lift[None, :]
        d *= -2
        d += c_sq[None, :]
        out[lo : lo + step] = d.argmin(axis=1)
    return out


def _prune_dot(ip: np.ndarray, cand: np.ndarray, vectors: np.ndarray, cap: int, fill: int,
               gram: np.ndarray | None = None, held: _HeldRows | None = None) -> np.ndarray:
    """:func:`.hnsw._prune` under the dot metric: candidates ``cand`` sorted by inner product
    ``ip`` with the node, largest first (``-inf`` for padding); one is kept unless a kept
    one has a larger product with it than the node has (Lance's rule on its distance
    ``1 - x.y``), then the largest dropped ones fill a list up to ``fill``.

    The rule keeps few under dot (a median of 1-3 of 150 candidates on the 128-d test
    data), so the products are taken as candidates are kept, only with the candidates
    still to be judged: looked up in ``gram`` (the level's products) when given; else in
    the rows of products ``held`` for the nodes kept most (:class:`_HeldRows`, shared by
    the level's prunings), and for the others pair by pair, with the candidates no kept one
    has yet ruled out (one row of products a node where those are most of them). No
    ``K x K`` matrix is computed per node."""
    rows, k = cand.shape
    if gram is None and held is None:
        held = _HeldRows(vectors)
    valid = np.isfinite(ip)
    keep = np.zeros((rows, k), dtype=bool)
    largest_kept = np.full((rows, k), -np.inf, dtype=np.float32)  # each candidate's largest product with a kept one
    count = np.zeros(rows, dtype=np.int64)
    for j in range(k):
        take = valid[:, j] & (ip[:, j] > largest_kept[:, j]) & (count < cap)
        if not take.any():
            continue
        keep[:, j] = take
        count += take
        if j + 1 == k:
            break
        idx = np.flatnonzero(take)
        later = slice(j + 1, k)  # only the candidates after this one are still to be judged
        if gram is not None:
            largest_kept[idx, later] = np.maximum(largest_kept[idx, later], gram[cand[idx, j][:, None], cand[idx, later]])
            continue
        kept, which, times = np.unique(cand[idx, j], return_inverse=True, return_counts=True)
        slot = held.slots(kept, times * (k - j - 1))[which]  # each such node's kept node's held row, or -1
        by_pair = idx[slot < 0]
        # pair by pair only with the candidates no kept one has yet ruled out: the others
        # stay out whatever this one's products are (past the first kept candidate, a fifth
        # of the pairs on sentence rows)
        alive = valid[by_pair, later] & (ip[by_pair, later] > largest_kept[by_pair, later])
        if alive.sum() * 2 > alive.size:  # most of them: one row of products a node
            per = max(1, _PAIR_CELLS // ((k - j - 1) * (vectors.shape[1] + 2)))  # the rows and their int64 ids
            for lo in range(0, len(by_pair), per):
                r = by_pair[lo : lo + per]
                got = np.matmul(vectors[cand[r, later]], vectors[cand[r, j]][:, :, None])[:, :, 0]
                largest_kept[r, later] = np.maximum(largest_kept[r, later], got)
        else:
            at, cc = np.nonzero(alive)
            rr, cc = by_pair[at], cc + (j + 1)
            kept_rows = vectors[cand[by_pair, j]]  # gathered once a node, then from the caches
            per = max(1, _PAIR_CELLS // (2 * vectors.shape[1] + 4))  # two rows and their int64 ids a pair
            for lo in range(0, len(rr), per):
                r, c = rr[lo : lo + per], cc[lo : lo + per]
                got = np.einsum("pd,pd->p", vectors[cand[r, c]], kept_rows[at[lo : lo + per]])
                largest_kept[r, c] = np.maximum(largest_kept[r, c], got)
        looked = slot >= 0
        if looked.any():
            r = idx[looked]
            got = held.rows[slot[looked][:, None], cand[r, later]]
            largest_kept[r, later] = np.maximum(largest_kept[r, later], got)
    short = np.maximum(fill - count, 0)
    if short.any():
        dropped = valid & ~keep
        keep |= dropped & (np.cumsum(dropped, axis=1) <= short[:, None])
    return keep


class _HeldRows:
    """The products with every node of a level of the nodes the dot pruning keeps most,
    up to :data:`_HELD_CELLS` floats every 128 dimensions (at most :data:`_HELD_MAX_CELLS`;
    where the level's whole products would not fit): a node's row is computed (one GEMM
    row) once its uses so far, a pair of products each, would have cost more
    (:func:`_rows_cheaper`), then looked up by every later pruning of the level. On one
    27,764-row partition the 100 nodes kept most carried 57% of the first pruning's 6.5M
    products of pairs, the 300 most 73%."""

    def __init__(self, vectors: np.ndarray):
        self.vectors = vectors
        n = len(vectors)
        self.slot = np.full(n, -1, np.int64)
        self.uses = np.zeros(n, np.int64)  # products each node's keeping has asked for so far
        # a pair's gathered rows cost more with the dimension than a looked-up product does
        cells = min(_HELD_CELLS * max(1, vectors.shape[1] // 128), _HELD_MAX_CELLS)
        self.rows = np.empty((max(0, min(n, cells // max(1, n))), n), np.float32)
        self.count = 0
        self.lock = threading.Lock()  # prunings' slices may run in threads (``each``)

    def slots(self, kept: np.ndarray, uses: np.ndarray) -> np.ndarray:
        """Each of the ``kept`` nodes' (distinct) held row, computing those its ``uses``
        now warrant while there is room, or -1 (pair by pair). A row is written before its
        slot is handed out, so other threads read only rows already computed."""
        with self.lock:
            return self._slots(kept, uses)

    def _slots(self, kept: np.ndarray, uses: np.ndarray) -> np.ndarray:
        self.uses[kept] += uses
        slot = self.slot[kept]
        room = len(self.rows) - self.count
        if room > 0:
            new = np.flatnonzero((slot < 0) & _rows_cheaper(self.uses[kept], len(self.vectors)))
            if len(new) > room:  # the most used first
                new = new[np.argsort(-self.uses[kept[new]], kind="stable")[:room]]
            if len(new):
                at = np.arange(self.count, self.count + len(new))
                step = max(1, SLICE_CELLS // len(self.vectors))
                for lo in range(0, len(new), step):  # straight into the held rows, a slice at a time
                    hi = min(len(new), lo + step)
                    np.matmul(self.vectors[kept[new[lo:hi]]], self.vectors.T, out=self.rows[at[lo] : at[lo] + hi - lo])
                self.slot[kept[new]] = at
                slot[new] = at
                self.count += len(new)
        return slot


def _rows_cheaper(uses: np.ndarray, n: int) -> np.ndarray:
    """Which kept nodes, whose keeping has asked for ``uses`` products with the candidates
    after them, take their products with all ``n`` nodes (one GEMM row, then looked up)
    rather than pair by pair: a pair of gathered rows costs about :data:`_PAIR_COST`
    products of a GEMM."""
    return uses * _PAIR_COST > n


def _prune_dot_in_slices(ip, cand, vectors, cap, fill, gram=None, held=None, each: Callable = in_turn):
    """:func:`_prune_dot` a slice of nodes at a time, the slices run by ``each``."""
    rows = max(1, min(_PRUNE_ROWS, SLICE_CELLS // max(1, cand.shape[1])))  # no rows gathered: only (rows, K) arrays
    keep = np.empty(cand.shape, dtype=bool)

    def prune(lo: int) -> None:
        keep[lo : lo + rows] = _prune_dot(ip[lo : lo + rows], cand[lo : lo + rows], vectors, cap, fill, gram, held)

    each(prune, range(0, len(cand), rows))
    return keep


def distinct_dot_graph(vectors: np.ndarray, cap: int, fill: int, candidates: int, entry: int,
                       each: Callable = in_turn):
    """:func:`.hnsw._distinct_level_graph` under the dot metric: each node's ``candidates``
    largest inner products with the nodes before it in a random order (as if inserted one
    by one), pruned by Lance's rule, the reverse edges, a list they overfill pruned again
    (a hub's best :data:`_DOT_REPRUNED` ``x cap``) and filled to ``cap``, as Lance's inserts
    fill it, and every node connected. Distances are Lance's, ``1 - x.y``. ``each`` runs the
    independent pieces (slices of nodes' candidates and of prunings).

    Each node's largest products alone, with a hub's reverse edges cut at ``2 cap`` before
    the pruning saw them, left hubs without edges down to the nodes around them: on
    partitions holding several clusters of unequal norms, searches started from the
    partition's best node found what Lance's graphs found, and from the entry point 0.03
    less (``tests/test_hnsw.py``, docs/benchmarks.md)."""
    n = len(vectors)
    if n == 1:
        return np.zeros(2, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    k = min(candidates, n - 1)
    rows = vectors
    basis, spread = _level_projection(rows)
    vectors = rows if basis is None else _on_basis(rows, basis, each)  # the graph from these; the edges' distances from the rows
    fwd = np.empty((n, k), np.int64)
    fwd_ip = np.empty((n, k), np.float32)
    # the level's products held whole up to 64 MB (4,096 nodes): the pruning looks them up
    gram = vectors @ vectors.T if n * n <= _GRAM_CELLS else None
    # as if inserted one by one (Lance inserts in row order; here a random order): a node's
    # candidates are among the nodes before it, and later ones reach it by reverse edges.
    # The order is the inverse of a drawn permutation (itself random): the graphs measured.
    # groups are not tried on rows whose energy is spread: they did not group. The scaled
    # sentence rows' groups held 0.880-0.896 of drawn nodes' largest products at 59,746 rows
    # and 0.880 at 75,013 (all of them in one partition), both under _GROUPED_FOUND, and making
    # and rejecting them took 1.0-1.1 s and 1.65 s of graphs of 11.6 s and 18.1 s (one helper)
    _largest_products(vectors, fwd, fwd_ip, np.argsort(np.random.default_rng(n).permutation(n)), each,
                      grouped=not spread)
    held = None if gram is not None else _HeldRows(vectors)  # the most-kept nodes' products, for both prunings
    keep = _prune_dot_in_slices(fwd_ip, fwd, vectors, cap, fill, gram, held, each)
    # every kept edge also the other way; then each node's list, largest product first
    cand, neg = with_reverse_edges(n, np.repeat(np.arange(n), keep.sum(axis=1)), fwd[keep], -fwd_ip[keep], cap,
                                    width=_DOT_REPRUNED * cap)
    cip = neg
    cip *= -1  # in place: (n, 4 cap) floats
    keep = np.isfinite(cip)
    over = np.flatnonzero(keep.sum(axis=1) > cap)
    if len(over):
        keep[over] = _prune_dot_in_slices(cip[over], cand[over], vectors, cap, cap, gram, held, each)
    src = np.repeat(np.arange(n), keep.sum(axis=1))
    src, dst, dist = connect(vectors, None, src, cand[keep], 1 - cip[keep], cap, entry, dot=True)
    if vectors is not rows:
        dist = 1 - edge_products(rows, src, dst, each)  # Lance's dot distances, of the rows themselves
    offsets = np.concatenate([[0], np.cumsum(np.bincount(src, minlength=n))])
    return offsets, dst, dist.astype(np.float32)


def _projected_rows(vectors: np.ndarray) -> np.ndarray:
    """``vectors`` on its :func:`projection`, or failing that its :func:`spread_projection`
    (of :data:`_PROJECTED_SAMPLE` drawn rows): their products differ from the rows' by little,
    and cost as many times less as there are fewer columns. ``vectors`` itself on a level of
    fewer than :data:`_PROJECTED_MIN_ROWS` nodes, or where the rows have neither."""
    basis, _ = _level_projection(vectors)
    return vectors if basis is None else _on_basis(vectors, basis)


def _on_basis(rows: np.ndarray, basis: np.ndarray, each: Callable = in_turn) -> np.ndarray:
    """``rows @ basis``, :data:`SLICE_CELLS` floats of rows at a time (the slices run by ``each``)."""
    out = np.empty((len(rows), basis.shape[1]), np.float32)
    step = max(1, SLICE_CELLS // max(1, rows.shape[1]))

    def project(lo: int) -> None:
        np.matmul(rows[lo : lo + step], basis, out=out[lo : lo + step])

    each(project, range(0, len(rows), step))
    return out


def _level_projection(vectors: np.ndarray) -> tuple[np.ndarray | None, bool]:
    """The basis :func:`_projected_rows` projects a level's rows on (None: the rows
    themselves), and whether the rows' energy is spread: wide enough to have
    :func:`energy_axes` (a level of :data:`_PROJECTED_MIN_ROWS` nodes or more), and no
    :func:`projection`."""
    n, d = vectors.shape
    if n < _PROJECTED_MIN_ROWS:
        return None, False
    drawn = np.sort(np.random.default_rng(n).choice(n, min(n, _PROJECTED_SAMPLE), replace=False))
    sample = vectors[drawn]
    axes = energy_axes(sample)
    basis = projection(sample, axes)
    if basis is not None or axes is None:
        return basis, False
    return spread_projection(sample, axes), True


def spread_projection(sample: np.ndarray, axes: tuple | None = None) -> np.ndarray | None:
    """For rows of no :func:`projection` (energy spread over more than half their
    directions): the fewest top directions of ``sample``'s rows (a multiple of
    :data:`_PROJECTED_STEP`, at most :data:`_SPREAD_WIDTH` of the columns) on which the
    :data:`_SPREAD_NEAREST` largest products of :data:`_SPREAD_CHECKED` drawn rows of the
    sample hold :data:`_SPREAD_FOUND` of their exact ones, as a ``(d, r)`` float32 basis;
    else None. ``axes``: the sample's :func:`energy_axes`, if known."""
    n, d = sample.shape
    axes = energy_axes(sample) if axes is None else axes
    if axes is None or n <= _SPREAD_NEAREST:
        return None
    widest = int(_SPREAD_WIDTH * d) // _PROJECTED_STEP * _PROJECTED_STEP
    checked = np.sort(np.random.default_rng(n).choice(n, min(n, _SPREAD_CHECKED), replace=False))
    exact = _largest_of(sample, checked, _SPREAD_NEAREST)
    projected = sample @ axes[0][:, :widest]  # every width's columns from one GEMM
    for kept in range(_PROJECTED_STEP, widest + 1, _PROJECTED_STEP):
        found = _largest_of(np.ascontiguousarray(projected[:, :kept]), checked, _SPREAD_NEAREST)
        if (exact[:, :, None] == found[:, None, :]).any(axis=2).mean() >= _SPREAD_FOUND:
            return np.ascontiguousarray(axes[0][:, :kept])
    return None


def _largest_of(rows: np.ndarray, checked: np.ndarray, count: int, rank: np.ndarray | None = None) -> np.ndarray:
    """The ids of the ``count`` largest products of each of ``checked``'s rows with the
    others, or with the rows before it in insertion ``rank`` where given, in no order."""
    neg = (-rows[checked]) @ rows.T
    if rank is None:
        neg[np.arange(len(checked)), checked] = np.inf
    else:
        neg[rank[None, :] >= rank[checked][:, None]] = np.inf  # only the rows before each
    # a sampled threshold, then the few through it: 256 rows of 59,746 0.04-0.09 s against
    # 0.36-0.55 s for argpartition of the whole rows
    return smallest_first(neg, count, wide=16)


def energy_axes(sample: np.ndarray) -> tuple | None:
    """The eigenvectors of ``X^T X`` of ``sample``'s rows and the share of their energy each
    holds (:func:`.principal.principal_axes`, not centred: inner products are the rows'
    energy, not their spread); None for rows too narrow to project (under ``2 x``
    :data:`_PROJECTED_STEP` columns), no rows, or rows of no energy."""
    if sample.shape[1] < 2 * _PROJECTED_STEP or len(sample) == 0:
        return None
    return principal_axes(sample, centre=False)


def projection(sample: np.ndarray, axes: tuple | None = None) -> np.ndarray | None:
    """The fewest top directions of ``sample``'s rows (eigenvectors of ``X^T X``, a multiple
    of :data:`_PROJECTED_STEP`) that hold all but :data:`_PROJECTED_RESIDUAL` of their
    energy, as a ``(d, r)`` float32 basis; None where that takes more than half the columns
    (rows whose energy is spread: real sentence embeddings need 256 of 384 for 96%).
    ``axes``: the sample's :func:`energy_axes`, if known."""
    d = sample.shape[1]
    axes = energy_axes(sample) if axes is None else axes
    if axes is None:
        return None
    directions, share = axes
    kept = fewest(share, 1 - _PROJECTED_RESIDUAL, _PROJECTED_STEP)
    return None if kept > d // 2 else np.ascontiguousarray(directions[:, :kept])
