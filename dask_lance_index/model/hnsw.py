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
nodes it is nearest, or of its fine groups where the rows are spread over every direction
(:func:`_grouped_candidates`), so that a node's cost stops growing
with its partition while Lance's grows with its logarithm. On a level of a few thousand
nodes or more whose leading principal directions rank its nodes' nearest as the rows do
(rows of few latent directions), those distances are taken on the rows' projection on
them, and the pruning makes the candidates' distances exact (:func:`_screening_rows`).
Equal rows are built once and their copies hung below them (:func:`_level_graph`).

Under the dot metric the level is built as if its nodes were inserted one by one
(:mod:`.hnsw_dot`). Each node's list with the reverse edges, and the edges that join every
node, come from :mod:`.hnsw_edges`.

The graph is what Lance's search reads (:func:`dask_lance_index.storage.write_hnsw_segment`):
node ids are row positions in the partition's stored rows, neighbour ids are node ids
on every level, and each list comes with its distances (squared l2, or ``1 - x.y``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import numpy as np

from .hnsw_copies import copies_of, hang_copies
from .hnsw_dot import distinct_dot_graph
from .hnsw_edges import SLICE_CELLS, connect, edge_products, in_turn, with_reverse_edges
from .kmeans import kmeans, smallest_first
from .principal import fewest, principal_axes

__all__ = ["HNSW_BLOCK_ROWS", "HNSW_CANDIDATES", "HNSW_DOT_CANDIDATES", "HNSW_EF_CONSTRUCTION", "HNSW_M", "HNSW_MAX_LEVEL",
           "HnswGraph", "build_hnsw", "in_turn", "node_levels", "one_norm"]

# Lance's defaults (pylance 14.0.2): neighbours per node (2 m on level 0), the beam of its
# inserts (recorded here; our candidates are exact) and the number of levels.
HNSW_M = 20
HNSW_EF_CONSTRUCTION = 150
HNSW_MAX_LEVEL = 7

# Exact candidates per node before pruning (at least the level's cap): 250k x 128 rows, 256
# partitions, m = 20, one process: 40 gave recall 0.998/1.000 at nprobes 10/20 in 14.6 s,
# 48 gave 0.996/0.999 in 16.4 s, 32 gave 0.997/0.999 in 14.5 s.
HNSW_CANDIDATES = 40
# Floats of candidate rows a pruning slice gathers at once (64 MB).
_PRUNE_CELLS = 1 << 24
# A level of rows of at least _TABLE_DIMENSION dimensions whose distances fit in _TABLE_CELLS
# floats (64 MB: 4,096 nodes) keeps them whole: its candidates are selected from them and its
# prunings look them up instead of multiplying each node's candidates' rows. The same graphs
# but for rounding (2 of 73,610 edges differed). One thread, 5 graphs of a 2,434-row partition
# of real 384-d sentence embeddings: 0.94 s against 1.35 s; of its first 256 columns 0.90 s
# against 0.94 s; of 3,000 128-d rows 1.04 s against 0.73 s (there the lookups cost more).
_TABLE_CELLS = 1 << 24
_TABLE_DIMENSION = 256
# Levels of at least _SCREEN_ROWS nodes of _SCREEN_DIMENSION dimensions or more (and no
# table) find their candidates on the rows' projection on their leading principal
# directions, and the pruning, which gathers the candidates' rows anyway, makes their
# distances exact (_screening_rows): the fewest directions, of those holding a share
# in _SCREEN_SHARES of the variance of _SCREEN_SAMPLE drawn rows, whose 40 nearest hold
# _SCREEN_FOUND of _SCREEN_CHECKED drawn nodes' exact 40 nearest. Checked on the nearest 20
# instead, real sentence embeddings took 192 of 384 directions (90% of the variance; 99.7%
# of the 20 found, 90% of the 40), and 4 partitions of them under dot searched at 0.972
# against 0.979; so rows whose tail of candidates would change keep the whole rows, and
# rows that need over half their directions for 95% of the variance are not checked
# (docs/benchmarks.md).
_SCREEN_ROWS = 4096
_SCREEN_DIMENSION = 64
_SCREEN_SHARES = (0.95, 0.99)
_SCREEN_FOUND = 0.98
_SCREEN_CHECKED = 64
_SCREEN_SAMPLE = 4096
# A partition of at least _PROJECT_ROWS rows is built on its rows' projection on their
# leading principal directions, the fewest holding a share in _PROJECT_SHARES of the variance
# of _SCREEN_SAMPLE drawn rows (rounded up to 32, at most _PROJECT_WIDTH of the dimension)
# that keeps the nearest (below), and its edges' distances made exact by the other
# directions (_principal_split, _with_rest). One thread, recall@10 of a search of the graph
# with the rows themselves (500 queries, ef 10/20/40), whole rows against 0.975 of the
# variance: 14,350 sentence embeddings 2.22 s, 0.987/0.998/0.998 against 256 directions
# 1.65 s, 0.986/0.996/0.998; 30,000 Fashion-MNIST images 9.29 s, 0.999/0.999/1.000 against
# 288 of 784, 3.71 s, 1.000/1.000/1.000; 27,594 synthetic 768-d rows 4.35 s against 32, 1.12
# s, the same recall (0.983/0.993/0.998). 0.95 of the variance against 0.975 (ef 10, graph
# seeds 0/1/2): 56,967 sentence rows 224 against 288 directions, 7.57-7.70 s against
# 9.61-9.80 s, 0.982/0.978 against 0.980/0.971 (their SQ codes decoded 0.984 against 0.974);
# all 75,122 256 against 288, 11.14-11.60 s against 12.79-12.89 s, 0.964/0.970/0.976 against
# 0.971/0.972/0.971; 14,350 rows 0.986 against 0.983; Fashion-MNIST 192 against 288, 4.14 s
# against 5.07 s, 0.995 against 0.998. At 0.9 Fashion-MNIST's 96 directions failed the check
# below. The variance alone can
# mislead: 12,000 rows of 8 tight isotropic clusters in 768-d (noise 0.1) put 97.5% of it in
# 32 directions, and that graph searched at 0.302 against 0.941 (ef 10). So the projection
# must also keep the nearest: of 64 drawn rows' exact 40 nearest, their 40 nearest on it held
# 0.93-0.98 of the sentence partitions' and Fashion-MNIST's, 1.00 of the synthetic sets', and
# 0.06-0.61 of such clusters' (_PROJECT_FOUND between them); a share that does not is
# followed by the next.
_PROJECT_ROWS = 4096
_PROJECT_SHARES = (0.95, 0.975)
_PROJECT_WIDTH = 0.75
_PROJECT_FOUND = 0.85
# Nodes of a level past which each node's candidates come from its nearest groups of nodes,
# not from every node (_grouped_candidates): groups of about _GROUP_ROWS, each node in its
# _GROUP_PROBES nearest.
HNSW_BLOCK_ROWS = 8192
_GROUP_ROWS = 2048
_GROUP_PROBES = 3
# A node's pool is its group's, so the groups a node is near must hold most of its nearest:
# where _GROUP_CHECKED drawn nodes find under _GROUP_FOUND of their exact 20 nearest among
# the nodes near their group, the level is split again, each group into fine groups of about
# _FINE_ROWS (k-means on _FINE_SAMPLE rows a fine group, _FINE_ITERS steps), and each node is
# near its _FINE_PROBES nearest fine groups, looked for among those of its home group's nodes'
# _FINE_COARSE nearest groups (_fine_groups). Real 384-d sentence embeddings, a partition of
# 56,967 rows, one thread, recall@10 of a search of its graph (500 queries, ef 10/20/40):
# 3 groups found 0.824 of the exact 20 nearest, graph 11.27 s, recall 0.969/0.981/0.991;
# 6 groups 0.911, 16.27 s, 0.987/0.996/0.998; fine groups 10.91 s, 0.980/0.990/0.996; exact
# candidates 51.58 s, 0.992/0.996/1.000. A graph's recall follows the pairs of nodes it
# compares, not the share of exact nearest among its candidates: 3 groups with each node's
# reverse candidates added found 0.885 and searched as 3 groups (0.971 at ef 10), and one
# round of NN-descent's local join found 0.920 and searched below 4 groups. 128-d synthetic
# partition of 63,965 rows: 3 groups find 0.974, and keep them.
_GROUP_CHECKED = 256
_GROUP_FOUND = 0.9
_FINE_ROWS = 128
_FINE_PROBES = 32
_FINE_COARSE = 4
_FINE_SAMPLE = 16
_FINE_ITERS = 5
# Long edges. A graph of nearest neighbours only is hard to cross: on one 80,653-row
# partition (128-d, m = 20, 300 queries) recall@10 was 0.969-0.996 over four seeds against
# Lance's 0.998. So _LONG_EDGES of each node's candidates are random nodes of its level,
# and on level 0 the pruning rule drops a candidate only when a kept neighbour is nearer
# to it by _PRUNE_ALPHA (in distance, as Vamana's RobustPrune).
_LONG_EDGES = 4
_PRUNE_ALPHA = 1.1
# Nodes whose lists take their long edges at once (_candidates): 4 MB of ids a list of 40.
_MERGE_ROWS = 1 << 14
# Under the dot metric a node's candidates are its ef_construction largest inner products
# (Lance's inserts search that many). One 20,000-row partition (128-d, m = 20, recall@10
# at nprobes 1, ef 15), before the insertion order: 0.944 from 80 or 100 candidates,
# 0.965-0.972 from 150-300, Lance's own graph 0.973 (0.967-0.970 from 150 with it).
HNSW_DOT_CANDIDATES = HNSW_EF_CONSTRUCTION
# Rows whose squared norms differ by at most this share of the largest count as of one norm:
# under dot their graphs are built as under l2 (build_hnsw, one_norm).
_ONE_NORM = 1e-3


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
           alpha: float = 1.0, table: np.ndarray | None = None, all_sq: np.ndarray | None = None,
           own: np.ndarray | None = None) -> np.ndarray:
    """Which of each node's candidates ``cand`` (nodes, K), sorted by ``dist`` (inf for
    padding), become its neighbours: a (nodes, K) mask, at most ``cap`` per node.

    HNSW's rule, vectorised over nodes: nearest first, a candidate is kept unless a
    kept one lies closer to it than the node does, by a factor ``alpha`` (in distance);
    then, as Lance's lists hold at least ``m``, the nearest dropped ones fill a list up
    to ``fill``. ``table``: the level's distances, looked up instead of computed; else
    ``all_sq``: the level's squared norms. ``own``: the nodes' ids, where ``dist`` was
    measured on a projection (:func:`_screening_rows`): ``dist`` and ``cand`` are replaced
    in place by the exact distances (from the rows gathered for the pruning anyway) and
    re-sorted by them.
    """
    rows, k = cand.shape
    order = None  # with `own`: the column of cc (candidates as gathered) at each rank
    if table is not None:
        cc = table[cand[:, :, None], cand[:, None, :]]
    else:
        v = np.take(vectors, cand, axis=0)  # (rows, K, d); a fifth faster than vectors[cand]
        sq = all_sq[cand]
        cc = np.matmul(v, v.transpose(0, 2, 1))  # the Gram matrix, then the distance between candidates i and j
        cc *= -2
        cc += sq[:, :, None]
        cc += sq[:, None, :]
        if own is not None:  # `dist` measured on a projection: the exact distances, and the ranks they give
            exact = np.matmul(v, vectors[own][:, :, None])[:, :, 0]
            exact *= -2
            exact += sq
            exact += all_sq[own][:, None]
            exact = np.where(np.isfinite(dist), np.maximum(exact, 0), np.inf)
            order = np.argsort(exact, axis=1, kind="stable")
            cand[:] = np.take_along_axis(cand, order, axis=1)
            dist[:] = np.take_along_axis(exact, order, axis=1)
    valid = np.isfinite(dist)
    keep = np.zeros((rows, k), dtype=bool)
    nearest_kept = np.full((rows, k), np.inf, dtype=np.float32)  # each candidate's distance to the kept ones
    count = np.zeros(rows, dtype=np.int64)
    alpha2 = np.float32(alpha**2)  # squared distances
    every = np.arange(rows)
    for j in range(k):
        col = j if order is None else order[:, j]
        take = valid[:, j] & (dist[:, j] < alpha2 * nearest_kept[every, col]) & (count < cap)
        if not take.any():
            continue
        keep[:, j] = take
        count += take
        idx = np.flatnonzero(take)
        nearest_kept[idx] = np.minimum(nearest_kept[idx], cc[idx, col if order is None else col[idx], :])
    short = np.maximum(fill - count, 0)
    if short.any():  # the nearest dropped candidates, up to `fill` in all
        dropped = valid & ~keep
        keep |= dropped & (np.cumsum(dropped, axis=1) <= short[:, None])
    return keep


def _candidates(vectors, sq, fwd, fwd_dist, table=None, each: Callable = in_turn) -> None:
    """Each node's ``K = fwd.shape[1]`` candidates, nearest first, into ``fwd`` and
    ``fwd_dist`` (node ids, squared distances): its nearest nodes (among all nodes, from
    ``table`` where the level keeps its distances whole, or past
    :data:`HNSW_BLOCK_ROWS` nodes among those of its nearest groups:
    :func:`_grouped_candidates`) and, on a level of more than ``2 K`` nodes, in place of
    the farthest of them :data:`_LONG_EDGES` random ones (at most a quarter of ``K``),
    drawn from the level's size (the same graphs on any thread)."""
    n, k = fwd.shape
    # a small level's nearest reach far enough; few candidates (small m and ef) stay nearest
    long = min(_LONG_EDGES, k // 4) if n > 2 * k else 0
    near = k - long
    f, d = (fwd, fwd_dist) if near == k else (np.empty((n, near), np.int64), np.empty((n, near), np.float32))
    if table is not None:  # the level's distances, itself at infinity
        kk = min(near, n - 1)
        f[:, :kk] = smallest_first(table, kk)
        d[:, :kk] = np.maximum(np.take_along_axis(table, f[:, :kk], axis=1), 0)
        f[:, kk:] = np.arange(n)[:, None]
        d[:, kk:] = np.inf
    elif n > HNSW_BLOCK_ROWS:
        _grouped_candidates(vectors, sq, f, d, each)
    else:
        _nearest_among(vectors, sq, np.arange(n), np.arange(n), f, d, each)
    if near == k:
        return
    far = np.random.default_rng(n).integers(0, n, size=(n, k - near))
    # merged a slice of nodes at a time: the merge's copies of the lists stay a slice's
    for lo in range(0, n, _MERGE_ROWS):
        rows = slice(lo, lo + _MERGE_ROWS)
        fr, own = far[rows], np.arange(lo, min(n, lo + _MERGE_ROWS))
        dots = np.stack([np.einsum("id,id->i", vectors[rows], vectors[fr[:, j]]) for j in range(fr.shape[1])], axis=1)
        far_dist = np.maximum(sq[rows, None] + sq[fr] - 2 * dots, 0).astype(np.float32)
        far_dist[(fr == own[:, None]) | (fr[:, :, None] == f[rows, None, :]).any(axis=2)] = np.inf
        both, both_dist = np.concatenate([f[rows], fr], axis=1), np.concatenate([d[rows], far_dist], axis=1)
        order = np.argsort(both_dist, axis=1, kind="stable")
        fwd[rows] = np.take_along_axis(both, order, axis=1)
        fwd_dist[rows] = np.take_along_axis(both_dist, order, axis=1)


def _nearest_among(vectors, sq, nodes, pool, fwd, fwd_dist, each: Callable = in_turn) -> None:
    """Each of ``nodes``' nearest in ``pool`` (ascending ids, holding ``nodes``; not
    itself), a slice of nodes at a time (the slices run by ``each``), into ``fwd[nodes]``,
    ``fwd_dist[nodes]``; rows short of ``K`` (a pool that small) padded with infinite
    distances."""
    k = fwd.shape[1]
    kk = min(k, len(pool) - 1)
    # a pool of every node is the rows themselves, not a copy of them
    pv, psq = (vectors, sq) if len(pool) == len(vectors) else (vectors[pool], sq[pool])
    step = max(1, SLICE_CELLS // len(pool))

    def nearest(lo: int) -> None:
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

    each(nearest, range(0, len(nodes), step))


def _nearest_of(vectors, sq, nodes, k: int) -> np.ndarray:
    """The ids of a few ``nodes``' (ascending) exact ``k`` nearest among all nodes, nearest
    first: a ``(len(nodes), k)`` array."""
    n = len(vectors)
    # only the nodes' rows are written (np.empty: the others' pages never touched)
    fwd = np.empty((n, k), np.int64)
    _nearest_among(vectors, sq, nodes, np.arange(n), fwd, np.empty((n, k), np.float32))
    return fwd[nodes]


def _group_found(vectors, sq, near, rng) -> float:
    """The share of :data:`_GROUP_CHECKED` drawn nodes' exact 20 nearest that are near
    their home group (``near``: each node's groups, nearest first), so in their pools."""
    n = len(near)
    drawn = np.sort(rng.choice(n, min(n, _GROUP_CHECKED), replace=False))
    nearest = _nearest_of(vectors, sq, drawn, min(20, n - 1))
    return float((near[nearest] == near[drawn, :1, None]).any(axis=2).mean())


def _by_label(labels: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The positions of ``labels`` (``-1`` left out) grouped by label, ascending within each,
    and where each of the ``count`` labels' positions start and end in them."""
    order = np.argsort(labels, kind="stable")[np.count_nonzero(labels < 0) :]  # the -1s sort first
    return order, np.concatenate([[0], np.cumsum(np.bincount(labels[labels >= 0], minlength=count))])


def _fine_groups(vectors, near, groups: int, rng) -> np.ndarray:
    """Each node's :data:`_FINE_PROBES` nearest fine groups, nearest first (-1 past the fine
    groups it could be near): each of the ``groups`` groups split by k-means into groups of
    about :data:`_FINE_ROWS` of the nodes nearest it (``near``: each node's nearest groups,
    nearest first), and a node's fine groups looked for among those of its home group's
    nodes' :data:`_FINE_COARSE` nearest groups (a node costs ``4 x 16`` distances, not one to
    every fine group of the level)."""
    n = len(vectors)
    coarse = near[:, :_FINE_COARSE]
    homes, bounds = _by_label(coarse[:, 0], groups)
    fine, first = [], [0]
    for g in range(groups):
        home = homes[bounds[g] : bounds[g + 1]]
        k = -(-len(home) // _FINE_ROWS)
        if k > 1:
            drawn = home if len(home) <= _FINE_SAMPLE * k else \
                np.sort(rng.choice(home, _FINE_SAMPLE * k, replace=False))
            fine.append(kmeans(vectors[drawn], k, max_iters=_FINE_ITERS, seed=g)[0].astype(np.float32))
        elif k == 1:
            fine.append(vectors[home].mean(axis=0, keepdims=True))
        first.append(first[-1] + k)
    fine = np.concatenate(fine)
    fine_sq = np.einsum("ij,ij->i", fine, fine)
    out = np.full((n, _FINE_PROBES), -1, np.int32)  # 128 bytes a node
    for g in range(groups):
        home = homes[bounds[g] : bounds[g + 1]]
        if len(home):
            ids = np.concatenate([np.arange(first[c], first[c + 1]) for c in np.unique(coarse[home])])
            dist = vectors[home] @ fine[ids].T
            dist *= -2
            dist += fine_sq[ids][None, :]
            take = min(_FINE_PROBES, len(ids))
            out[home, :take] = ids[smallest_first(dist, take)]
    return out


def _grouped_candidates(vectors, sq, fwd, fwd_dist, each: Callable = in_turn) -> None:
    """Candidates of a large level: its nodes in groups of about :data:`_GROUP_ROWS` (a
    few k-means steps on a sample, seeded by the level's size, so the same everywhere),
    and each node's nearest among the nodes of every group it is near (a node belongs to
    its :data:`_GROUP_PROBES` nearest groups): a node costs about ``3 x 2,048``
    distances, not the level's size. Measured on 128-d partitions of 13,678 and 20,109
    rows: 99.5% and 99.4% of each node's exact 20 nearest found, in 0.53 s and 0.88 s
    against 1.00 s and 2.18 s for exact candidates (one thread). Where those groups hold
    under :data:`_GROUP_FOUND` of the nodes' nearest (:func:`_group_found`: rows whose
    energy is spread over every direction), each node is near its fine groups instead
    (:func:`_fine_groups`): about ``32 x 128`` distances."""
    n = len(vectors)
    groups = -(-n // _GROUP_ROWS)
    rng = np.random.default_rng(n)
    sample = vectors[np.sort(rng.choice(n, min(n, 64 * groups), replace=False))]
    centres, _ = kmeans(sample, groups, max_iters=10, seed=n)
    to_centre = vectors @ centres.T
    to_centre *= -2
    to_centre += np.einsum("ij,ij->i", centres, centres)[None, :]
    # nearest first; the fine groups look among the first _FINE_COARSE
    nearest = smallest_first(to_centre, min(max(_GROUP_PROBES, _FINE_COARSE), groups))
    near = nearest[:, :_GROUP_PROBES]
    if groups > _GROUP_PROBES and _group_found(vectors, sq, near, rng) < _GROUP_FOUND:
        near = _fine_groups(vectors, nearest, groups, rng)
    # each group's pool (the nodes near it, ascending) and home nodes (those nearest it)
    count = int(near.max()) + 1
    order, bounds = _by_label(near.ravel(), count)
    members = (order // near.shape[1]).astype(np.int32)
    homes, home_bounds = _by_label(near[:, 0], count)

    def group(g: int) -> None:  # its home nodes' candidates among its pool: rows no other group writes
        _nearest_among(vectors, sq, homes[home_bounds[g] : home_bounds[g + 1]], members[bounds[g] : bounds[g + 1]],
                       fwd, fwd_dist)

    each(group, [g for g in range(count) if home_bounds[g + 1] > home_bounds[g]])


def _level_graph(vectors: np.ndarray, cap: int, fill: int, candidates: int, entry: int, dot: bool = False,
                 each: Callable = in_turn):
    """Neighbour lists of one level's nodes (local ids), every node reached from
    ``entry`` and reaching it: offsets, ids, distances.

    The graph is built on the level's distinct rows only, and each row's copies then hang
    below it in a binary tree (:mod:`.hnsw_copies`: a node links to its two children, at
    distance 0 under l2, so a search reaches every copy; a copy's list is its children, the
    row, and the row's own neighbours, up to ``cap``). A row with copies holds two more
    neighbours than its own list (up to ``cap``, or a round or two past it where
    :func:`connect` finds every list full, one on the levels measured); Lance reads lists
    of up to ``4 m``."""
    n = len(vectors)
    rep = copies_of(vectors, entry) if n > 1 else np.zeros(n, np.int64)
    distinct = partial(distinct_dot_graph if dot else _distinct_level_graph, each=each)
    if (rep == np.arange(n)).all():
        return distinct(vectors, cap, fill, candidates, entry)
    reps = np.flatnonzero(rep == np.arange(n))
    offsets, ids, dist = distinct(vectors[reps], cap, fill, candidates, int(np.searchsorted(reps, entry)))
    return hang_copies(vectors, rep, reps, offsets, reps[ids], dist, cap, dot)


def _distinct_level_graph(vectors: np.ndarray, cap: int, fill: int, candidates: int, entry: int,
                          each: Callable = in_turn):
    """:func:`_level_graph` of rows that are all different."""
    n, d = vectors.shape
    if n == 1:
        return np.zeros(2, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    k = min(candidates, n - 1)
    sq = np.einsum("ij,ij->i", vectors, vectors)
    fwd = np.empty((n, k), np.int64)
    fwd_dist = np.empty((n, k), np.float32)
    table = None
    if n * n <= _TABLE_CELLS and d >= _TABLE_DIMENSION:
        table = vectors @ vectors.T
        table *= -2
        table += sq[:, None]
        table += sq[None, :]
        table[np.arange(n), np.arange(n)] = np.inf  # not its own candidate
    screen = None if table is not None else _screening_rows(vectors, sq, k)
    if screen is None:
        _candidates(vectors, sq, fwd, fwd_dist, table, each)
        keep = _prune_in_slices(fwd_dist, fwd, vectors, sq, cap, fill, table, each=each)
    else:  # candidates found on the projection, their distances made exact by the pruning
        _candidates(*screen, fwd, fwd_dist, each=each)
        keep = _prune_in_slices(fwd_dist, fwd, vectors, sq, cap, fill, projected=True, each=each)
    # every kept edge also the other way; then each node's list pruned again, nearest first
    cand, cdist = with_reverse_edges(n, np.repeat(np.arange(n), keep.sum(axis=1)), fwd[keep], fwd_dist[keep], cap)
    # as in Lance's inserts, a list is pruned only when the reverse edges overfill it
    keep = np.isfinite(cdist)
    over = np.flatnonzero(keep.sum(axis=1) > cap)
    if len(over):
        keep[over] = _prune_in_slices(cdist[over], cand[over], vectors, sq, cap, fill, table, each=each)
    src = np.repeat(np.arange(n), keep.sum(axis=1))
    src, dst, dist = connect(vectors, sq, src, cand[keep], cdist[keep], cap, entry)
    offsets = np.concatenate([[0], np.cumsum(np.bincount(src, minlength=n))])
    return offsets, dst, dist


def _screening_rows(vectors: np.ndarray, sq: np.ndarray, k: int) -> tuple | None:
    """A level's rows projected on their leading principal directions, and their squared
    norms, where those find the level's nearest: the fewest of :data:`_SCREEN_SHARES` of the
    variance (drawn rows, rounded up to 32 directions, at most half the dimension) whose
    ``k`` nearest of :data:`_SCREEN_CHECKED` drawn nodes on the projection hold
    :data:`_SCREEN_FOUND` of their exact ``k`` nearest (the pruning sees all ``k``). ``None``
    for a level under :data:`_SCREEN_ROWS` nodes or :data:`_SCREEN_DIMENSION` dimensions, or
    where no share does."""
    n, d = vectors.shape
    if n < _SCREEN_ROWS or d < _SCREEN_DIMENSION:
        return None
    rng = np.random.default_rng(n)
    axes = principal_axes(vectors[np.sort(rng.choice(n, min(n, _SCREEN_SAMPLE), replace=False))])
    if axes is None:
        return None
    directions, share = axes
    checked = np.sort(rng.choice(n, _SCREEN_CHECKED, replace=False))
    kept = _fewest_keeping(vectors, sq, directions, share, _SCREEN_SHARES, d // 2, checked, k, _SCREEN_FOUND)
    return None if kept is None else kept[:2]


def _fewest_keeping(vectors, sq, directions, share, shares, most: float, checked, k: int, found: float) -> tuple | None:
    """The rows on the fewest leading ``directions`` (of the variance ``share`` each holds,
    rounded up to 32) holding one of ``shares`` (ascending), at most ``most`` of them, on
    which the ``k`` nearest of the ``checked`` rows hold ``found`` of their exact ``k``
    nearest: ``(rows, their squared norms, width)``, or None. The exact nearest are found
    only once a share is narrow enough to try."""
    nearest, tried = None, 0
    for wanted in shares:
        width = fewest(share, wanted, 32)
        if width > most:
            return None
        if width == tried:  # the same directions, already found wanting
            continue
        tried = width
        if nearest is None:
            nearest = _nearest_of(vectors, sq, checked, k)
        # not centred: distances are the same either way
        rows = vectors @ np.ascontiguousarray(directions[:, :width])
        rows_sq = np.einsum("ij,ij->i", rows, rows)
        if _share_kept(rows, rows_sq, checked, nearest) >= found:
            return rows, rows_sq, width
    return None


def _share_kept(rows: np.ndarray, rows_sq: np.ndarray, checked: np.ndarray, nearest: np.ndarray) -> float:
    """The share of ``checked`` nodes' exact nearest (``nearest``, ``(len(checked), k)``)
    among their ``k`` nearest on ``rows`` (a projection of the level's rows)."""
    near = _nearest_of(rows, rows_sq, checked, nearest.shape[1])
    return float((near[:, :, None] == nearest[:, None, :]).any(axis=1).mean())


def _prune_in_slices(dist, cand, vectors, sq, cap, fill, table=None, projected=False, each: Callable = in_turn):
    """:func:`_prune` of each node's candidates ``cand`` (padded at the end with infinite
    ``dist``), a slice of nodes at a time (the slices run by ``each``); ``projected``:
    ``dist`` measured on a projection, the rows being nodes ``0..n-1`` in order, ``dist``
    and ``cand`` made exact in place."""
    # level 0 (lists of m to 2 m) keeps the relaxed rule's extra edges and still leaves
    # room for connect's; the levels above, capped at m, keep HNSW's own rule
    alpha = _PRUNE_ALPHA if cap > fill else 1.0
    # each slice gathers its candidates' rows (rows x K x d): 1,024 nodes at 128-d, fewer
    # as the dimension grows (at 1536-d and K = 80, 1,024 nodes would gather 503 MB)
    rows = max(1, min(1024, _PRUNE_CELLS // max(1, cand.shape[1] * vectors.shape[1])))
    # lists of unequal lengths (with the reverse edges: a median of 50 of 80 columns on
    # sentence embeddings) are pruned shortest first, each slice only as wide as its
    # longest: a node's gather grows with the width, its Gram matrix with its square
    length = np.isfinite(dist).sum(axis=1)
    order = np.argsort(length, kind="stable")
    keep = np.zeros(cand.shape, dtype=bool)

    def prune(lo: int) -> None:  # its own nodes' rows of keep (and of dist, cand)
        idx = order[lo : lo + rows]
        width = int(length[idx].max()) if len(idx) else 0
        if width == 0:
            return
        d, c = dist[idx, :width], cand[idx, :width]
        keep[idx, :width] = _prune(d, c, vectors, cap, fill, alpha, table, sq, idx if projected else None)
        if projected:  # made exact and re-sorted in the copies
            dist[idx, :width], cand[idx, :width] = d, c

    each(prune, range(0, len(cand), rows))
    return keep


def build_hnsw(vectors: np.ndarray, *, m: int, max_level: int, seed, candidates: int | None = None,
               metric: str = "l2", each: Callable = in_turn) -> HnswGraph:
    """The HNSW graph of one partition's ``vectors`` (float32, in stored row order): under
    ``metric`` ``"l2"`` with squared l2 distances (unit vectors for cosine, as stored), under
    ``"dot"`` with Lance's dot distances ``1 - x.y``. ``candidates``: each node's nearest
    (:data:`HNSW_CANDIDATES` by default), or under dot its largest inner products
    (:data:`HNSW_DOT_CANDIDATES`). Under dot each node is compared with every node before it
    in its level, or, on a level of more than 32,768 nodes whose rows group well, with those
    of the groups it is near, and on rows of few directions on their projection
    (:mod:`.hnsw_dot`; one thread, 128-d: a level of 16,000 rows 1.4 s, of 47,000 5.7 s, of
    62,500 8.4 s, of 92,000 14.8 s; builds leave larger partitions' graphs to Lance:
    :func:`~dask_lance_index.build.engines.precomputed.dot_graph_rows`); rows of
    :func:`one_norm` under dot as under l2 (with ``min(candidates, HNSW_CANDIDATES)``), their
    distances Lance's dot ones. ``each(fn, items)`` runs a level's independent pieces (groups
    of candidates, slices of nodes to prune), :func:`in_turn` by default: the same
    graph whatever runs them, and in whatever order (under dot the prunings share the held
    rows of products of the nodes kept most, so a product may come from a held row or be
    computed for its pair, which can differ in the last bit; the graphs tested and measured
    were the same edge for edge)."""
    if metric not in ("l2", "dot"):
        raise ValueError(f"build_hnsw builds l2 or dot graphs, not {metric!r}; pass unit vectors and 'l2' for cosine")
    dot = metric == "dot"
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n = len(vectors)
    if n == 0:
        return HnswGraph(levels=(), entry_point=0)
    if dot and one_norm(vectors):
        # normalised rows: the largest products are the nearest in l2, and the l2 construction
        # (its own 40 candidates, not dot's ef_construction) is the cheaper by far; its
        # distances then become Lance's dot ones (docs/benchmarks.md)
        near = None if candidates is None else min(candidates, HNSW_CANDIDATES)
        return _as_dot(build_hnsw(vectors, m=m, max_level=max_level, seed=seed, candidates=near, each=each), vectors)
    if candidates is None:
        candidates = HNSW_DOT_CANDIDATES if dot else HNSW_CANDIDATES
    split = None if dot else _principal_split(vectors)
    if split is None:
        return _levels(vectors, m, max_level, seed, candidates, dot, each)
    lead, others = split  # the graph of the leading directions, its distances made whole by the others
    graph = _levels(lead, m, max_level, seed, candidates, False, each)
    del lead  # the rows on the other directions only once the graph is built: one of the two held at a time
    return _with_rest(graph, vectors @ others)


def _levels(vectors: np.ndarray, m: int, max_level: int, seed, candidates: int, dot: bool, each: Callable) -> HnswGraph:
    """:func:`build_hnsw`'s levels, each built on its nodes' ``vectors``."""
    n = len(vectors)
    levels = node_levels(n, m, max_level, seed)
    top = int(levels.max())
    entry = int(np.flatnonzero(levels == top)[0])  # on every level: each level's search can start there
    out = []
    for level in range(top + 1):
        nodes = np.flatnonzero(levels >= level)
        cap = 2 * m if level == 0 else m
        offsets, ids, dist = _level_graph(vectors[nodes], cap, m, max(candidates, cap),
                                          int(np.searchsorted(nodes, entry)), dot=dot, each=each)
        out.append((nodes, offsets, nodes[ids], dist))
    return HnswGraph(levels=tuple(out), entry_point=entry)


def _principal_split(vectors: np.ndarray) -> tuple | None:
    """A partition's rows on their leading principal directions, the fewest of those holding
    a share in :data:`_PROJECT_SHARES` of the variance of :data:`_SCREEN_SAMPLE` drawn rows
    (rounded up to 32) on which the 40 nearest of :data:`_SCREEN_CHECKED` drawn rows hold
    :data:`_PROJECT_FOUND` of their exact 40 nearest, and the other directions: ``(lead,
    others)``, a ``(d, d - width)`` basis, the squared l2 distance of two rows the sum of
    theirs on each. ``None`` under :data:`_PROJECT_ROWS` rows, or where no share does in at
    most :data:`_PROJECT_WIDTH` of the dimension."""
    n, d = vectors.shape
    if n < _PROJECT_ROWS:
        return None
    drawn = np.sort(np.random.default_rng(n).choice(n, min(n, _SCREEN_SAMPLE), replace=False))
    axes = principal_axes(vectors[drawn])
    if axes is None:  # every drawn row the same
        return None
    directions, share = axes  # an orthonormal basis: distances split exactly
    # the variance is not the neighbourhoods: tight clusters far apart hold theirs in the
    # directions between the clusters, and each row's nearest in the noise of every other
    checked = np.sort(np.random.default_rng(n + 1).choice(n, _SCREEN_CHECKED, replace=False))
    kept = _fewest_keeping(vectors, np.einsum("ij,ij->i", vectors, vectors), directions, share, _PROJECT_SHARES,
                           _PROJECT_WIDTH * d, checked, min(HNSW_CANDIDATES, n - 1), _PROJECT_FOUND)
    if kept is None:
        return None
    lead, _, width = kept
    return lead, np.ascontiguousarray(directions[:, width:])


def _with_rest(graph: HnswGraph, rest: np.ndarray) -> HnswGraph:
    """``graph``, built on the rows' leading directions, with each edge's distance made the
    rows' own: its distance on ``rest`` (the other directions) added."""
    sq = np.einsum("ij,ij->i", rest, rest)
    levels = []
    for nodes, offsets, ids, dist in graph.levels:
        src = np.repeat(nodes, np.diff(offsets))
        whole = np.maximum(dist + sq[src] + sq[ids] - 2 * edge_products(rest, src, ids), 0)
        levels.append((nodes, offsets, ids, whole))
    return HnswGraph(levels=tuple(levels), entry_point=graph.entry_point)


def one_norm(vectors: np.ndarray) -> bool:
    """Whether every row has the same norm, within :data:`_ONE_NORM` of the largest squared
    norm (normalised embeddings): inner products then rank rows as l2 distances do."""
    sq = np.einsum("ij,ij->i", vectors, vectors)
    return len(sq) > 0 and float(sq.max() - sq.min()) <= _ONE_NORM * float(sq.max())


def _as_dot(graph: HnswGraph, vectors: np.ndarray) -> HnswGraph:
    """``graph``, built under l2, with Lance's dot distances ``1 - x.y = 1 - (|x|^2 + |y|^2 - l2) / 2``."""
    sq = np.einsum("ij,ij->i", vectors, vectors)
    levels = []
    for nodes, offsets, ids, dist in graph.levels:
        src = np.repeat(nodes, np.diff(offsets))
        levels.append((nodes, offsets, ids, (1 - (sq[src] + sq[ids] - dist) / 2).astype(np.float32)))
    return HnswGraph(levels=tuple(levels), entry_point=graph.entry_point)
