"""HNSW graphs of one IVF partition's rows, built with BLAS from (nearly) exact neighbours.

Lance builds a partition's graph by inserting its rows one at a time, each insert a
beam search over the graph so far (``ef_construction`` candidates). Here the graph of
a level comes from exact candidates instead: each node's ``candidates`` nearest nodes
of that level (one GEMM per slice of nodes) but :data:`_LONG_EDGES` drawn at random, kept
or dropped by HNSW's pruning rule (relaxed on level 0 by :data:`_PRUNE_ALPHA`;
a candidate is kept when it is nearer the node than every neighbour kept before it,
at most ``2 m`` neighbours on level 0 and ``m`` above, as Lance's; the nearest dropped
ones then fill a list up to ``m``), then every kept edge also added the other way and a
list that overflows pruned again by the same rule, and last a few edges added until
every node is reached from the entry point and reaches it. Levels are drawn as HNSW
draws them (a node reaches level ``l`` with probability ``m**-l``); the entry point is
the smallest node id on the top level, as in Lance's files.

The cost of a node is a distance to every node of its level, and its candidates
selected from that row of distances (:func:`.kmeans.smallest_first`), up to
:data:`HNSW_BLOCK_ROWS` nodes; past that, a distance to every node of the few groups of
nodes it is nearest (:func:`_grouped_candidates`), so that a node's cost stops growing
with its partition while Lance's grows with its logarithm. Equal rows are built once and
their copies hung below them (:func:`_level_graph`).

Under the dot metric (:func:`_distinct_dot_graph`) the level is built as if its nodes
were inserted one by one in a random order: a node's candidates are its
:data:`HNSW_DOT_CANDIDATES` largest inner products with the nodes before it, pruned by
Lance's own rule on its distance ``1 - x.y``; each list with the reverse edges (a hub's
best ``8 cap`` of them) that overflows is pruned again and filled to its cap, as Lance's
inserts leave it. Nearest neighbours by inner product are rows of large norm, so the l2
construction's tools (few candidates, long edges, relaxed pruning) do not carry over:
docs/benchmarks.md has what was measured.

The graph is what Lance's search reads (:func:`dask_lance_index.storage.write_hnsw_segment`):
node ids are row positions in the partition's stored rows, neighbour ids are node ids
on every level, and each list comes with its distances (squared l2, or ``1 - x.y``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.sparse import csgraph

from .kmeans import kmeans, smallest_first

__all__ = ["HNSW_BLOCK_ROWS", "HNSW_CANDIDATES", "HNSW_DOT_CANDIDATES", "HNSW_EF_CONSTRUCTION", "HNSW_M", "HNSW_MAX_LEVEL",
           "HnswGraph", "build_hnsw", "node_levels"]

# Lance's defaults (pylance 14.0.2): neighbours per node (2 m on level 0), the beam of its
# inserts (recorded here; our candidates are exact) and the number of levels.
HNSW_M = 20
HNSW_EF_CONSTRUCTION = 150
HNSW_MAX_LEVEL = 7

# Exact candidates per node before pruning (at least the level's cap): 250k x 128 rows, 256
# partitions, m = 20, one process: 40 gave recall 0.998/1.000 at nprobes 10/20 in 14.6 s,
# 48 gave 0.996/0.999 in 16.4 s, 32 gave 0.997/0.999 in 14.5 s.
HNSW_CANDIDATES = 40
# Nodes whose distances to a level's nodes are held at once (SLICE x n float32).
_SLICE_CELLS = 1 << 22
# Under dot, nodes a slice of a level's products takes at least, up to _PRODUCT_CELLS floats
# (128 MB), into one buffer; its rows then selected _SLICE_CELLS at a time. A GEMM of few rows
# runs below this machine's peak: 62,500 x 128 rows, one thread, 67 rows a slice (_SLICE_CELLS)
# 71-75 GFLOPS, 256 rows 105-107; that graph 13.6-14.2 s against 17.4-17.6 s.
_PRODUCT_ROWS = 256
_PRODUCT_CELLS = 1 << 25
# Floats of candidate rows a pruning slice gathers at once (64 MB).
_PRUNE_CELLS = 1 << 24
# Nodes of a level past which each node's candidates come from its nearest groups of nodes,
# not from every node (_grouped_candidates): groups of about _GROUP_ROWS, each node in its
# _GROUP_PROBES nearest.
HNSW_BLOCK_ROWS = 8192
_GROUP_ROWS = 2048
_GROUP_PROBES = 3
# Long edges. A graph of nearest neighbours only is hard to cross: on one 80,653-row
# partition (128-d, m = 20, 300 queries) recall@10 was 0.969-0.996 over four seeds against
# Lance's 0.998. So _LONG_EDGES of each node's candidates are random nodes of its level,
# and on level 0 the pruning rule drops a candidate only when a kept neighbour is nearer
# to it by _PRUNE_ALPHA (in distance, as Vamana's RobustPrune).
_LONG_EDGES = 4
_PRUNE_ALPHA = 1.1
# Under the dot metric a node's candidates are its ef_construction largest inner products
# (Lance's inserts search that many). One 20,000-row partition (128-d, m = 20, recall@10
# at nprobes 1, ef 15), before the insertion order: 0.944 from 80 or 100 candidates,
# 0.965-0.972 from 150-300, Lance's own graph 0.973 (0.967-0.970 from 150 with it).
HNSW_DOT_CANDIDATES = HNSW_EF_CONSTRUCTION
# Under dot, the reverse edges of a hub that a re-pruning sees: its largest products, up to
# _DOT_REPRUNED x cap (2 x cap under l2). Those of small product are what lead from a
# hub down to the nodes around it; cut at 2 x cap, they were never judged.
_DOT_REPRUNED = 8
# A product of two gathered rows costs about this many products of a GEMM (one thread, rows
# of 20,000: 173 against 3.4 ns at 128-d, 800 against 17 ns at 768-d, a lookup 11-16 ns;
# graphs of 8,000 and 20,000 rows built fastest at 10-20: 1.11 and 4.2 s, 1.38 and 4.8 at 80).
_PAIR_COST = 20
# Under dot, the joined nodes a round of _connect looks among for each lost node's nearest:
# at most this many, drawn (thousands of rows of small norm are nobody's largest product).
_CONNECT_ROOM = 4096
# The nearest joined nodes with room a lost node may be joined to in one round, nearest
# first: under dot most lost nodes' nearest are the same few rows of large norm, whose
# room a round used up, so that one 27,764-row level took 22 rounds, each its products anew.
_CONNECT_CHOICES = 8
# Products of a level's nodes held whole (float32) for the dot construction, up to 64 MB.
_GRAM_CELLS = 1 << 24
# Past that, the rows of products held for the nodes its pruning keeps most (_HeldRows), up
# to 16 MB, and the candidates' rows gathered at once for the products of the others' pairs,
# up to 4 MB. Both prunings of one 27,764-row level took 0.66-0.83 s so, against 0.67-1.03 s
# holding 8 or 32 MB, 0.84-1.13 s holding none, and 1.18-1.43 s with each step's rows computed
# afresh and 64 MB of pairs' rows at once: fresh pages cost here, and gathered rows that stay
# in the caches are cheaper to multiply.
_HELD_CELLS = 1 << 22
_PAIR_CELLS = 1 << 20


@dataclass(frozen=True)
class HnswGraph:
    """One partition's graph: ``levels[l]`` is ``(nodes, offsets, neighbours, distances)``:
    the level's node ids ascending, and node ``nodes[i]``'s neighbour ids and squared
    distances in ``neighbours[offsets[i]:offsets[i + 1]]`` and ``distances[...]``."""

    levels: tuple
    entry_point: int

    @property
    def num_nodes(self) -> int:
        return len(self.levels[0][0]) if self.levels else 0

    def level_offsets(self, max_level: int) -> list:
        """Cumulative rows per level, ``max_level + 1`` entries (Lance's ``level_offsets``)."""
        counts = [len(lv[0]) for lv in self.levels] + [0] * (max_level - len(self.levels))
        return [0] + np.cumsum(counts).tolist()


def node_levels(n: int, m: int, max_level: int, seed) -> np.ndarray:
    """Each node's top level: ``floor(-ln(U) / ln(m))``, below ``max_level``."""
    u = np.random.default_rng(seed).random(n)
    levels = np.floor(-np.log(np.maximum(u, 1e-300)) / np.log(max(m, 2)))
    return np.minimum(levels, max_level - 1).astype(np.int64)


def _prune(dist: np.ndarray, cand: np.ndarray, vectors: np.ndarray, cap: int, fill: int,
           alpha: float = 1.0) -> np.ndarray:
    """Which of each node's candidates ``cand`` (nodes, K), sorted by ``dist`` (inf for
    padding), become its neighbours: a (nodes, K) mask, at most ``cap`` per node.

    HNSW's rule, vectorised over nodes: nearest first, a candidate is kept unless a
    kept one lies closer to it than the node does, by a factor ``alpha`` (in distance);
    then, as Lance's lists hold at least ``m``, the nearest dropped ones fill a list up
    to ``fill``.
    """
    rows, k = cand.shape
    v = vectors[cand]  # (rows, K, d)
    sq = np.einsum("rkd,rkd->rk", v, v)
    cc = np.matmul(v, v.transpose(0, 2, 1))  # the Gram matrix, then the distance between candidates i and j
    cc *= -2
    cc += sq[:, :, None]
    cc += sq[:, None, :]
    valid = np.isfinite(dist)
    keep = np.zeros((rows, k), dtype=bool)
    nearest_kept = np.full((rows, k), np.inf, dtype=np.float32)  # each candidate's distance to the kept ones
    count = np.zeros(rows, dtype=np.int64)
    alpha2 = np.float32(alpha**2)  # squared distances
    for j in range(k):
        take = valid[:, j] & (dist[:, j] < alpha2 * nearest_kept[:, j]) & (count < cap)
        if not take.any():
            continue
        keep[:, j] = take
        count += take
        idx = np.flatnonzero(take)
        nearest_kept[idx] = np.minimum(nearest_kept[idx], cc[idx, j, :])
    short = np.maximum(fill - count, 0)
    if short.any():  # the nearest dropped candidates, up to `fill` in all
        dropped = valid & ~keep
        keep |= dropped & (np.cumsum(dropped, axis=1) <= short[:, None])
    return keep


def _candidates(vectors, sq, fwd, fwd_dist) -> None:
    """Each node's ``K = fwd.shape[1]`` candidates, nearest first, into ``fwd`` and
    ``fwd_dist`` (node ids, squared distances): its nearest nodes (among all nodes, or past
    :data:`HNSW_BLOCK_ROWS` nodes among those of its nearest groups:
    :func:`_grouped_candidates`) and, on a level of more than ``2 K`` nodes, in place of
    the farthest of them :data:`_LONG_EDGES` random ones (at most a quarter of ``K``),
    drawn from the level's size (the same graphs on any thread)."""
    n, k = fwd.shape
    # a small level's nearest reach far enough; few candidates (small m and ef) stay nearest
    long = min(_LONG_EDGES, k // 4) if n > 2 * k else 0
    near = k - long
    f, d = (fwd, fwd_dist) if near == k else (np.empty((n, near), np.int64), np.empty((n, near), np.float32))
    if n > HNSW_BLOCK_ROWS:
        _grouped_candidates(vectors, sq, f, d)
    else:
        _nearest_among(vectors, sq, np.arange(n), np.arange(n), f, d)
    if near == k:
        return
    far = np.random.default_rng(n).integers(0, n, size=(n, k - near))
    dots = np.stack([np.einsum("id,id->i", vectors, vectors[far[:, j]]) for j in range(far.shape[1])], axis=1)
    far_dist = np.maximum(sq[:, None] + sq[far] - 2 * dots, 0)
    far_dist[(far == np.arange(n)[:, None]) | (far[:, :, None] == f[:, None, :]).any(axis=2)] = np.inf
    both, both_dist = np.concatenate([f, far], axis=1), np.concatenate([d, far_dist.astype(np.float32)], axis=1)
    order = np.argsort(both_dist, axis=1, kind="stable")
    fwd[:] = np.take_along_axis(both, order, axis=1)
    fwd_dist[:] = np.take_along_axis(both_dist, order, axis=1)


def _nearest_among(vectors, sq, nodes, pool, fwd, fwd_dist) -> None:
    """Each of ``nodes``' nearest in ``pool`` (ascending ids, holding ``nodes``; not
    itself), a slice of nodes at a time, into ``fwd[nodes]``, ``fwd_dist[nodes]``; rows
    short of ``K`` (a pool that small) padded with infinite distances."""
    k = fwd.shape[1]
    kk = min(k, len(pool) - 1)
    pv, psq = vectors[pool], sq[pool]
    step = max(1, _SLICE_CELLS // len(pool))
    for lo in range(0, len(nodes), step):
        rows = nodes[lo : lo + step]
        # |x_j|^2 - 2 x_i.x_j: row i's distances less its own |x_i|^2, which orders them alike
        dist = vectors[rows] @ pv.T
        dist *= -2
        dist += psq[None, :]
        dist[np.arange(len(rows)), np.searchsorted(pool, rows)] = np.inf  # not its own neighbour
        near = smallest_first(dist, kk)
        fwd[rows, :kk] = pool[near]
        fwd_dist[rows, :kk] = np.maximum(np.take_along_axis(dist, near, axis=1) + sq[rows, None], 0)
        fwd[rows, kk:] = rows[:, None]
        fwd_dist[rows, kk:] = np.inf


def _grouped_candidates(vectors, sq, fwd, fwd_dist) -> None:
    """Candidates of a large level: its nodes in groups of about :data:`_GROUP_ROWS` (a
    few k-means steps on a sample, seeded by the level's size, so the same everywhere),
    and each node's nearest among the nodes of every group it is near (a node belongs to
    its :data:`_GROUP_PROBES` nearest groups): a node costs about ``3 x 2,048``
    distances, not the level's size. Measured on 128-d partitions of 13,678 and 20,109
    rows: 99.5% and 99.4% of each node's exact 20 nearest found, in 0.53 s and 0.88 s
    against 1.00 s and 2.18 s for exact candidates (one thread)."""
    n = len(vectors)
    groups = -(-n // _GROUP_ROWS)
    rng = np.random.default_rng(n)
    sample = vectors[np.sort(rng.choice(n, min(n, 64 * groups), replace=False))]
    centres, _ = kmeans(sample, groups, max_iters=10, seed=n)
    to_centre = vectors @ centres.T
    to_centre *= -2
    to_centre += np.einsum("ij,ij->i", centres, centres)[None, :]
    near = smallest_first(to_centre, min(_GROUP_PROBES, groups))
    for g in range(groups):
        nodes = np.flatnonzero(near[:, 0] == g)
        if len(nodes):
            _nearest_among(vectors, sq, nodes, np.flatnonzero((near == g).any(axis=1)), fwd, fwd_dist)


def _copies_of(vectors: np.ndarray, entry: int) -> np.ndarray:
    """Each row's first equal row (``entry`` first among its equals), itself if none."""
    n = len(vectors)
    # a hash of each row's bits first: when all differ (most partitions) no row sort is
    # needed (4,000 x 128 rows: 12 ms for the sort, against the graph's 175 ms)
    weights = np.random.default_rng(0).integers(1, 2**62, size=vectors.shape[1], dtype=np.int64) | 1
    hashes = vectors.view(np.int32).astype(np.int64) @ weights  # wraps around: fine for a hash
    if len(np.unique(hashes)) == n:
        return np.arange(n)
    _, inverse = np.unique(vectors, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    first = np.full(inverse.max() + 1, n, np.int64)
    np.minimum.at(first, inverse, np.arange(n))
    first[inverse[entry]] = entry
    return first[inverse]


def _level_graph(vectors: np.ndarray, cap: int, fill: int, candidates: int, entry: int, dot: bool = False):
    """Neighbour lists of one level's nodes (local ids), every node reached from
    ``entry`` and reaching it: offsets, ids, distances.

    Equal rows (duplicates in the data, PQ codes that collide) would each find only
    their copies as nearest, and make islands :func:`_connect` joins one at a time
    (a partition of 3,114 PQ-coded rows, 811 of them copies, took 4.0 s against 0.16 s
    for its rows themselves). So the graph is built on the distinct rows; each row's
    copies then hang below it in a binary tree (a node links to its two children, at
    distance 0 under l2: a search reaches every copy), and each copy's list is its children, the
    row, and the row's own neighbours, up to ``cap``. A row with copies holds two more
    neighbours than its own list (up to ``cap``, or a round or two past it where
    :func:`_connect` finds every list full, one on the levels measured); Lance reads lists
    of up to ``4 m``."""
    n = len(vectors)
    rep = _copies_of(vectors, entry) if n > 1 else np.zeros(n, np.int64)
    distinct = _distinct_dot_graph if dot else _distinct_level_graph
    if (rep == np.arange(n)).all():
        return distinct(vectors, cap, fill, candidates, entry)
    reps = np.flatnonzero(rep == np.arange(n))
    offsets, ids, dist = distinct(vectors[reps], cap, fill, candidates, int(np.searchsorted(reps, entry)))
    ids = reps[ids]
    # each row's copies in id order, at positions 1..k of its tree (the row at 0)
    copies = np.flatnonzero(rep != np.arange(n))
    copies = copies[np.argsort(rep[copies], kind="stable")]
    owner = rep[copies]
    starts = np.flatnonzero(np.concatenate([[True], owner[1:] != owner[:-1]]))
    sizes = np.diff(np.concatenate([starts, [len(copies)]]))
    pos = np.arange(len(copies)) - np.repeat(starts, sizes) + 1
    group_size = np.repeat(sizes, sizes)
    parent_pos = (pos - 1) // 2
    parent = np.where(parent_pos == 0, owner, copies[np.repeat(starts, sizes) + parent_pos - 1])
    children = np.clip(group_size - 2 * pos, 0, 2)
    # the copy's share of its row's list
    local = np.searchsorted(reps, owner)
    lengths = np.diff(offsets)[local]
    take = np.minimum(lengths, np.maximum(cap - 1 - children, 0))
    at = np.repeat(offsets[local], take) + np.arange(take.sum()) - np.repeat(np.cumsum(take) - take, take)
    # a row to its copy: 0 under l2, Lance's 1 - |x|^2 under dot
    same = (1 - np.einsum("ij,ij->i", vectors[copies], vectors[copies])).astype(np.float32) if dot else \
        np.zeros(len(copies), np.float32)
    src = np.concatenate([np.repeat(reps, np.diff(offsets)), parent, copies, np.repeat(copies, take)])
    dst = np.concatenate([ids, copies, owner, ids[at]])
    dd = np.concatenate([dist, same, same, dist[at]])
    order = np.argsort(src, kind="stable")
    return np.concatenate([[0], np.cumsum(np.bincount(src, minlength=n))]), dst[order], dd[order]


def _distinct_level_graph(vectors: np.ndarray, cap: int, fill: int, candidates: int, entry: int):
    """:func:`_level_graph` of rows that are all different."""
    n, d = vectors.shape
    if n == 1:
        return np.zeros(2, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    k = min(candidates, n - 1)
    sq = np.einsum("ij,ij->i", vectors, vectors)
    fwd = np.empty((n, k), np.int64)
    fwd_dist = np.empty((n, k), np.float32)
    _candidates(vectors, sq, fwd, fwd_dist)
    keep = _prune_in_slices(fwd_dist, fwd, vectors, cap, fill)
    # every kept edge also the other way; then each node's list pruned again, nearest first
    cand, cdist = _with_reverse_edges(n, np.repeat(np.arange(n), keep.sum(axis=1)), fwd[keep], fwd_dist[keep], cap)
    # as in Lance's inserts, a list is pruned only when the reverse edges overfill it
    keep = np.isfinite(cdist)
    over = np.flatnonzero(keep.sum(axis=1) > cap)
    if len(over):
        keep[over] = _prune_in_slices(cdist[over], cand[over], vectors, cap, fill)
    src = np.repeat(np.arange(n), keep.sum(axis=1))
    src, dst, dist = _connect(vectors, sq, src, cand[keep], cdist[keep], cap, entry)
    offsets = np.concatenate([[0], np.cumsum(np.bincount(src, minlength=n))])
    return offsets, dst, dist


def _ordered_bits(key: np.ndarray) -> np.ndarray:
    """float32 keys as uint32 of the same order (``-0.0`` as ``0.0``; no NaN)."""
    u = (key.astype(np.float32) + np.float32(0)).view(np.uint32)  # -0.0 + 0.0 is 0.0
    return np.where(u >> np.uint32(31), ~u, u | np.uint32(0x80000000))


def _from_ordered_bits(u: np.ndarray) -> np.ndarray:
    """The float32 keys of :func:`_ordered_bits`."""
    return np.where(u >> np.uint32(31), u & np.uint32(0x7FFFFFFF), ~u).view(np.float32)


def _with_reverse_edges(n: int, src, dst, key, cap: int, width: int | None = None):
    """Each node's list of the edges ``src -> dst`` and of each the other way, best first
    (smallest ``key``: a distance, or a product negated; then by id, a pair held once), at
    most the best ``width`` (``2 cap`` by default) of a hub's: ``(cand, ckey)``,
    ``(n, width)``, rows padded with an infinite key."""
    a = np.concatenate([src, dst])
    b = np.concatenate([dst, src])
    ab_key = np.concatenate([key, key])
    # by node, then key (then id: duplicates side by side)
    bits = max(1, (n - 1).bit_length())
    if 2 * bits + 32 <= 64:  # node, key and id in one uint64, sorted in place: 2x faster than lexsort
        packed = a.astype(np.uint64) << np.uint64(32 + bits)
        packed |= _ordered_bits(ab_key).astype(np.uint64) << np.uint64(bits)
        packed |= b.astype(np.uint64)
        packed.sort()
        a = (packed >> np.uint64(32 + bits)).astype(np.int64)
        b = (packed & np.uint64((1 << bits) - 1)).astype(np.int64)
        ab_key = _from_ordered_bits(((packed >> np.uint64(bits)) & np.uint64(0xFFFFFFFF)).astype(np.uint32))
    else:
        order = np.lexsort((b, ab_key, a))
        a, b, ab_key = a[order], b[order], ab_key[order]
    first = np.ones(len(a), dtype=bool)
    first[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    a, b, ab_key = a[first], b[first], ab_key[first]
    counts = np.bincount(a, minlength=n)
    width = min(int(counts.max()), width or 2 * cap)  # under l2 the best 2 cap of a hub's are enough
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(len(a)) - starts[a]
    inside = rank < width
    cand = np.zeros((n, width), np.int32)  # node ids of one level
    ckey = np.full((n, width), np.inf, np.float32)
    cand[a[inside], rank[inside]] = b[inside]
    ckey[a[inside], rank[inside]] = ab_key[inside]
    return cand, ckey


def _largest_products(vectors, fwd, fwd_ip, order) -> None:
    """Each node's ``K = fwd.shape[1]`` largest inner products with the nodes before it in
    ``order`` (node ids in an order of insertion), largest first, into ``fwd`` and ``fwd_ip``
    (node ids, products; ``-inf`` products past the nodes before it), a slice of nodes at
    a time in that order: only the products with the nodes before the slice's last, about
    half of all."""
    n, k = fwd.shape
    inserted = vectors[order]
    step = max(1, _SLICE_CELLS // n, min(_PRODUCT_ROWS, _PRODUCT_CELLS // n))
    buf = np.empty(min(n, step) * n, np.float32)  # every slice's products in one buffer: fresh pages cost
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        neg = buf[: (hi - lo) * hi].reshape(hi - lo, hi)
        np.matmul(-inserted[lo:hi], inserted[:hi].T, out=neg)
        # a node's own column and those after it in the slice (the nodes inserted later)
        block = neg[:, lo:hi]  # the columns before lo are all nodes inserted earlier
        block[np.arange(hi - lo)[:, None] <= np.arange(hi - lo)[None, :]] = np.inf
        before = order[:hi]
        if hi <= k:  # fewer columns than wanted: padded with the products of nobody
            neg = np.hstack([neg, np.full((hi - lo, k + 1 - hi), np.inf, np.float32)])
            before = np.concatenate([before, np.zeros(k + 1 - hi, before.dtype)])
        # 150 of a few thousand: a sampled threshold from 16 columns a wanted value on
        # (4,000 rows: 0.15 s against 0.37 s for the default 32, which selects whole rows here)
        # a few of its rows at a time, so that the selection's temporaries stay small
        part = max(1, _SLICE_CELLS // neg.shape[1])
        for a in range(lo, hi, part):
            b = min(hi, a + part)
            rows = neg[a - lo : b - lo]
            near = smallest_first(rows, k, wide=16, shuffled=True)  # the columns in insertion order
            fwd[order[a:b]] = before[near]
            fwd_ip[order[a:b]] = -np.take_along_axis(rows, near, axis=1)


def _prune_dot(ip: np.ndarray, cand: np.ndarray, vectors: np.ndarray, cap: int, fill: int,
               gram: np.ndarray | None = None, held: _HeldRows | None = None) -> np.ndarray:
    """:func:`_prune` under the dot metric: candidates ``cand`` sorted by inner product
    ``ip`` with the node, largest first (``-inf`` for padding); one is kept unless a kept
    one has a larger product with it than the node has (Lance's rule on its distance
    ``1 - x.y``), then the largest dropped ones fill a list up to ``fill``.

    The rule keeps few under dot (a median of 1-3 of 150 candidates on the 128-d test
    data), so the products are taken as candidates are kept, only with the candidates
    still to be judged: looked up in ``gram`` (the level's products) when given; else in
    the rows of products ``held`` for the nodes kept most (:class:`_HeldRows`, shared by
    the level's prunings), and for the others pair by pair. No ``K x K`` matrix is
    computed per node."""
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
        per = max(1, _PAIR_CELLS // ((k - j - 1) * (vectors.shape[1] + 2)))  # the rows and their int64 ids
        for lo in range(0, len(by_pair), per):
            r = by_pair[lo : lo + per]
            got = np.matmul(vectors[cand[r, later]], vectors[cand[r, j]][:, :, None])[:, :, 0]
            largest_kept[r, later] = np.maximum(largest_kept[r, later], got)
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
    up to :data:`_HELD_CELLS` floats (where the level's whole products would not fit): a
    node's row is computed (one GEMM row) once its uses so far, a pair of products each,
    would have cost more (:func:`_rows_cheaper`), then looked up by every later pruning of
    the level. On one 27,764-row partition the 100 nodes kept most carried 57% of the
    first pruning's 6.5M products of pairs, the 300 most 73%."""

    def __init__(self, vectors: np.ndarray):
        self.vectors = vectors
        n = len(vectors)
        self.slot = np.full(n, -1, np.int64)
        self.uses = np.zeros(n, np.int64)  # products each node's keeping has asked for so far
        self.rows = np.empty((max(0, min(n, _HELD_CELLS // max(1, n))), n), np.float32)
        self.count = 0

    def slots(self, kept: np.ndarray, uses: np.ndarray) -> np.ndarray:
        """Each of the ``kept`` nodes' (distinct) held row, computing those its ``uses``
        now warrant while there is room, or -1 (pair by pair)."""
        self.uses[kept] += uses
        slot = self.slot[kept]
        room = len(self.rows) - self.count
        if room > 0:
            new = np.flatnonzero((slot < 0) & _rows_cheaper(self.uses[kept], len(self.vectors)))
            if len(new) > room:  # the most used first
                new = new[np.argsort(-self.uses[kept[new]], kind="stable")[:room]]
            if len(new):
                at = np.arange(self.count, self.count + len(new))
                step = max(1, _SLICE_CELLS // len(self.vectors))
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


def _prune_dot_in_slices(ip, cand, vectors, cap, fill, gram=None, held=None):
    rows = max(1, _SLICE_CELLS // max(1, cand.shape[1]))  # no rows gathered: only (rows, K) arrays
    keep = np.empty(cand.shape, dtype=bool)
    for lo in range(0, len(cand), rows):
        keep[lo : lo + rows] = _prune_dot(ip[lo : lo + rows], cand[lo : lo + rows], vectors, cap, fill, gram, held)
    return keep


def _distinct_dot_graph(vectors: np.ndarray, cap: int, fill: int, candidates: int, entry: int):
    """:func:`_distinct_level_graph` under the dot metric: each node's ``candidates``
    largest inner products with the nodes before it in a random order (as if inserted one
    by one), pruned by Lance's rule, the reverse edges, a list they overfill pruned again
    (a hub's best :data:`_DOT_REPRUNED` ``x cap``) and filled to ``cap``, as Lance's inserts
    fill it, and every node connected. Distances are Lance's, ``1 - x.y``.

    Each node's largest products alone, with a hub's reverse edges cut at ``2 cap`` before
    the pruning saw them, left hubs without edges down to the nodes around them: on
    partitions holding several clusters of unequal norms, searches started from the
    partition's best node found what Lance's graphs found, and from the entry point 0.03
    less (``tests/test_hnsw.py``, docs/benchmarks.md)."""
    n = len(vectors)
    if n == 1:
        return np.zeros(2, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    k = min(candidates, n - 1)
    fwd = np.empty((n, k), np.int64)
    fwd_ip = np.empty((n, k), np.float32)
    # the level's products held whole up to 64 MB (4,096 nodes): the pruning looks them up
    gram = vectors @ vectors.T if n * n <= _GRAM_CELLS else None
    # as if inserted one by one (Lance inserts in row order; here a random order): a node's
    # candidates are among the nodes before it, and later ones reach it by reverse edges.
    # The order is the inverse of a drawn permutation (itself random): the graphs measured.
    _largest_products(vectors, fwd, fwd_ip, np.argsort(np.random.default_rng(n).permutation(n)))
    held = None if gram is not None else _HeldRows(vectors)  # the most-kept nodes' products, for both prunings
    keep = _prune_dot_in_slices(fwd_ip, fwd, vectors, cap, fill, gram, held)
    # every kept edge also the other way; then each node's list, largest product first
    cand, neg = _with_reverse_edges(n, np.repeat(np.arange(n), keep.sum(axis=1)), fwd[keep], -fwd_ip[keep], cap,
                                    width=_DOT_REPRUNED * cap)
    cip = neg
    cip *= -1  # in place: (n, 8 cap) floats
    keep = np.isfinite(cip)
    over = np.flatnonzero(keep.sum(axis=1) > cap)
    if len(over):
        keep[over] = _prune_dot_in_slices(cip[over], cand[over], vectors, cap, cap, gram, held)
    src = np.repeat(np.arange(n), keep.sum(axis=1))
    src, dst, dist = _connect(vectors, None, src, cand[keep], 1 - cip[keep], cap, entry, dot=True)
    offsets = np.concatenate([[0], np.cumsum(np.bincount(src, minlength=n))])
    return offsets, dst, dist.astype(np.float32)


def _connect(vectors, sq, src, dst, dist, cap: int, entry: int, dot: bool = False):
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
        step = max(1, _SLICE_CELLS // len(room))
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


def _prune_in_slices(dist, cand, vectors, cap, fill):
    # level 0 (lists of m to 2 m) keeps the relaxed rule's extra edges and still leaves
    # room for _connect's; the levels above, capped at m, keep HNSW's own rule
    alpha = _PRUNE_ALPHA if cap > fill else 1.0
    # each slice gathers its candidates' rows (rows x K x d): 1,024 nodes at 128-d, fewer
    # as the dimension grows (at 1536-d and K = 80, 1,024 nodes would gather 503 MB)
    rows = max(1, min(1024, _PRUNE_CELLS // max(1, cand.shape[1] * vectors.shape[1])))
    keep = np.empty(cand.shape, dtype=bool)
    for lo in range(0, len(cand), rows):
        keep[lo : lo + rows] = _prune(dist[lo : lo + rows], cand[lo : lo + rows], vectors, cap, fill, alpha)
    return keep


def build_hnsw(vectors: np.ndarray, *, m: int, max_level: int, seed, candidates: int | None = None,
               metric: str = "l2") -> HnswGraph:
    """The HNSW graph of one partition's ``vectors`` (float32, in stored row order): under
    ``metric`` ``"l2"`` with squared l2 distances (unit vectors for cosine, as stored), under
    ``"dot"`` with Lance's dot distances ``1 - x.y``. ``candidates``: each node's nearest
    (:data:`HNSW_CANDIDATES` by default), or under dot its largest inner products
    (:data:`HNSW_DOT_CANDIDATES`). Under dot each node is compared with every node of its
    level, whatever its size (a level of 16,000 rows: 1.6 s on one thread, of 47,000 10.7 s;
    a build whose partitions hold 62,500 rows each was slower than Lance's)."""
    if metric not in ("l2", "dot"):
        raise ValueError(f"build_hnsw builds l2 or dot graphs, not {metric!r}; pass unit vectors and 'l2' for cosine")
    dot = metric == "dot"
    if candidates is None:
        candidates = HNSW_DOT_CANDIDATES if dot else HNSW_CANDIDATES
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n = len(vectors)
    if n == 0:
        return HnswGraph(levels=(), entry_point=0)
    levels = node_levels(n, m, max_level, seed)
    top = int(levels.max())
    entry = int(np.flatnonzero(levels == top)[0])  # on every level: each level's search can start there
    out = []
    for level in range(top + 1):
        nodes = np.flatnonzero(levels >= level)
        cap = 2 * m if level == 0 else m
        offsets, ids, dist = _level_graph(vectors[nodes], cap, m, max(candidates, cap),
                                          int(np.searchsorted(nodes, entry)), dot=dot)
        out.append((nodes, offsets, nodes[ids], dist))
    return HnswGraph(levels=tuple(out), entry_point=entry)

