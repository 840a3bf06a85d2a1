"""IVF_HNSW_FLAT, IVF_HNSW_SQ and IVF_HNSW_PQ graphs built by us (model.hnsw) and written in
Lance's files.

The graph's shape is checked against what Lance's reader requires; whole builds are
searched through Lance against NumPy brute force and against Lance's own build of the
same data; and Lance's compaction, which remaps a graph's row ids, keeps our index
searchable.
"""

import dataclasses
import json
import os
import shutil
import tracemalloc

import lance
import numpy as np
import pytest
from distributed import get_task_stream, wait
from lance.file import LanceFileReader

import dask_lance_index as dli
import dask_lance_index.build.engines.precomputed as precomputed_module
import dask_lance_index.build.graphs as graphs_module
from dask_lance_index.api import given_model
from dask_lance_index.build import ENGINES
from dask_lance_index.build.graphs import graph_runs
from dask_lance_index.datagen import make_vectors, write_vectors
from dask_lance_index.evaluation import exact_knn, recall_at_k, search
from dask_lance_index.graph import build_graph
from dask_lance_index.model import build_hnsw, hnsw, hnsw_copies, hnsw_dot, hnsw_edges
from dask_lance_index.model.hnsw import node_levels
from dask_lance_index.model.principal import fewest, principal_axes
from dask_lance_index.storage import PartitionRuns, StoredRows

from .conftest import index_dirs


def test_graph_levels_lists_and_entry_point():
    x = make_vectors(3000, 16, num_clusters=20, seed=4)
    m, max_level = 6, 7
    graph = build_hnsw(x, m=m, max_level=max_level, seed=1)
    n = len(x)
    levels = node_levels(n, m, max_level, 1)
    assert graph.num_nodes == n and len(graph.levels) == levels.max() + 1 >= 3
    for level, (nodes, offsets, neighbours, dist) in enumerate(graph.levels):
        np.testing.assert_array_equal(nodes, np.flatnonzero(levels >= level))  # ids ascending, level 0: all
        sizes = np.diff(offsets)
        cap = 2 * m if level == 0 else m
        assert sizes.max() <= cap
        if len(nodes) > m:  # lists hold at least m, as Lance's
            assert sizes.min() >= m, (level, sizes.min())
        owner = np.repeat(nodes, sizes)
        assert not np.any(owner == neighbours)  # no node is its own neighbour
        assert np.isin(neighbours, nodes).all()  # neighbours live on the same level
        want = ((x[owner] - x[neighbours]) ** 2).sum(axis=1)
        np.testing.assert_allclose(dist, want, rtol=1e-3, atol=1e-3)
    assert graph.entry_point == graph.levels[-1][0][0]
    offsets = graph.level_offsets(max_level)
    assert len(offsets) == max_level + 1 and offsets[1] == n
    assert offsets[-1] == sum(len(lv[0]) for lv in graph.levels)
    # each node's list holds most of its 5 nearest nodes (the pruning keeps the near ones;
    # at m = 6 the relaxed rule and the long edges leave 0.77 of them, 0.83 without)
    d = ((x[:200, None, :] - x[None, :, :]) ** 2).sum(-1)
    d[np.arange(200), np.arange(200)] = np.inf
    nearest = np.argsort(d, axis=1)[:, :5]
    nodes, offsets0, neighbours0, _ = graph.levels[0]
    held = np.mean([len(set(nearest[i]) & set(neighbours0[offsets0[i]:offsets0[i + 1]])) / 5 for i in range(200)])
    assert held > 0.7, held


@pytest.mark.parametrize("m, candidates", [(1, 1), (2, 1), (3, 3), (4, 4)])
def test_graphs_of_few_candidates(m, candidates):
    """Small m and ef_construction (fewer candidates than long edges): built, every node
    reached from the entry point, no node its own neighbour; from m = 3 lists within their
    caps (two more where copies hang; below, the edges that connect every node overfill
    lists of one or two)."""
    from scipy.sparse import csgraph, csr_matrix

    x = make_vectors(600, 8, num_clusters=5, seed=2)
    graph = build_hnsw(x, m=m, max_level=4, seed=0, candidates=candidates)
    assert graph.num_nodes == len(x)
    for level, (nodes, offsets, neighbours, _) in enumerate(graph.levels):
        owner = np.repeat(nodes, np.diff(offsets))
        assert not np.any(owner == neighbours)
        assert len(np.unique(owner * len(x) + neighbours)) == len(owner)  # no list holds a node twice
        if m >= 3:
            assert np.diff(offsets).max() <= (2 * m if level == 0 else m) + 2
        local = np.searchsorted(nodes, owner), np.searchsorted(nodes, neighbours)
        a = csr_matrix((np.ones(len(owner)), local), shape=(len(nodes), len(nodes)))
        start = int(np.searchsorted(nodes, graph.entry_point))
        assert len(csgraph.breadth_first_order(a, start, return_predecessors=False)) == len(nodes)


def test_candidates_hold_long_edges_that_the_graph_keeps():
    """Each node's candidates are its nearest but _LONG_EDGES and that many random nodes,
    at exact distances; some of those long edges survive the pruning into level 0."""
    x = make_vectors(3000, 16, num_clusters=20, seed=4)
    n, k = len(x), 40
    sq = np.einsum("ij,ij->i", x, x)
    fwd, dist = np.empty((n, k), np.int64), np.empty((n, k), np.float32)
    hnsw._candidates(x, sq, fwd, dist)
    exact, exact_dist = np.empty((n, k), np.int64), np.empty((n, k), np.float32)
    hnsw._nearest_among(x, sq, np.arange(n), np.arange(n), exact, exact_dist)
    near = k - hnsw._LONG_EDGES
    valid = np.isfinite(dist)
    np.testing.assert_array_equal(np.sort(dist, axis=1), dist)  # nearest first
    want = ((x[np.repeat(np.arange(n), k)] - x[fwd.reshape(-1)]) ** 2).sum(axis=1).reshape(n, k)
    np.testing.assert_allclose(dist[valid], want[valid], rtol=1e-3, atol=1e-3)
    for i in range(0, n, 97):  # every one of its nearest, and long ones past them
        assert set(exact[i, :near]) <= set(fwd[i][valid[i]])
    far_rows = [i for i in range(n) if (~np.isin(fwd[i], exact[i]) & valid[i]).any()]
    assert len(far_rows) > 0.9 * n  # candidates past a row's own 40 nearest
    graph = build_hnsw(x, m=8, max_level=7, seed=1)
    nodes, offsets, neighbours, _ = graph.levels[0]
    owner = np.repeat(nodes, np.diff(offsets))
    kth = exact_dist[owner, k - 1]  # each node's 40th nearest distance
    long = ((x[owner] - x[neighbours]) ** 2).sum(axis=1) > kth * 1.001
    assert 0.01 < long.mean() < 0.3, long.mean()  # kept, and not most of the graph


def test_large_levels_take_candidates_from_their_nearest_groups():
    """Past HNSW_BLOCK_ROWS nodes, a node's candidates are its nearest among the groups it
    is near: nearly all of its exact nearest, each candidate's distance exact."""
    x = make_vectors(12000, 32, num_clusters=30, seed=6)
    sq = np.einsum("ij,ij->i", x, x)
    found = {}
    for how in ("exact", "grouped"):
        fwd, dist = np.empty((len(x), 40), np.int64), np.empty((len(x), 40), np.float32)
        if how == "exact":
            hnsw._nearest_among(x, sq, np.arange(len(x)), np.arange(len(x)), fwd, dist)
        else:
            hnsw._grouped_candidates(x, sq, fwd, dist)
        found[how] = fwd, dist
    fwd, dist = found["grouped"]
    valid = np.isfinite(dist)
    assert valid[:, :20].all() and not np.any(fwd[valid] == np.repeat(np.arange(len(x)), valid.sum(1)))
    rows = np.flatnonzero(valid.all(axis=1))[:500]
    np.testing.assert_allclose(dist[rows], ((x[rows, None, :] - x[fwd[rows]]) ** 2).sum(-1), rtol=1e-3, atol=1e-3)
    assert (np.diff(dist[rows], axis=1) >= 0).all()  # nearest first
    agree = np.mean([len(np.intersect1d(found["exact"][0][i, :20], fwd[i, :20])) / 20 for i in range(0, len(x), 3)])
    assert agree > 0.98, agree
    assert len(x) > hnsw.HNSW_BLOCK_ROWS  # build_hnsw takes this path for such a level


def test_wide_small_levels_look_their_distances_up(monkeypatch):
    """A level of at least _TABLE_DIMENSION dimensions and at most _TABLE_CELLS distances keeps
    them whole and its prunings look them up: the graph is the one its rows' products give,
    but for rounding; narrower rows multiply as before."""
    x = make_vectors(3000, 256, num_clusters=12, seed=8)
    tables = []
    real = hnsw._prune
    monkeypatch.setattr(hnsw, "_prune", lambda *a: tables.append(a[6] is not None) or real(*a))

    def edges():
        g = hnsw.build_hnsw(x, m=16, max_level=7, seed=0)
        return {(int(a), int(b)) for nodes, offsets, ids, _ in g.levels
                for a, b in zip(np.repeat(nodes, np.diff(offsets)), ids)}

    looked_up = edges()
    assert tables and all(tables)
    tables.clear()
    monkeypatch.setattr(hnsw, "_TABLE_DIMENSION", 257)
    multiplied = edges()
    assert tables and not any(tables)
    assert len(looked_up ^ multiplied) <= 0.001 * len(multiplied), len(looked_up ^ multiplied)


def test_nodes_of_spread_rows_are_near_fine_groups(monkeypatch):
    """A large level's nodes are near _GROUP_PROBES groups where those hold most of their
    nearest (rows of few latent directions), and near _FINE_PROBES fine groups where they do
    not (unit rows spread over every direction): then more of each node's exact nearest are
    among its candidates, and a search of the level's graph finds more, than with the
    _GROUP_PROBES groups."""
    rng = np.random.default_rng(3)
    spread = rng.standard_normal((12000, 32)).astype(np.float32)
    spread /= np.linalg.norm(spread, axis=1, keepdims=True)
    data = {"clustered": make_vectors(12000, 32, num_clusters=30, seed=6), "spread": spread}
    calls = []
    real = hnsw._fine_groups
    monkeypatch.setattr(hnsw, "_fine_groups", lambda v, *a: calls.append(len(v)) or real(v, *a))

    def found(x):
        sq = np.einsum("ij,ij->i", x, x)
        fwd, dist = np.empty((len(x), 40), np.int64), np.empty((len(x), 40), np.float32)
        hnsw._grouped_candidates(x, sq, fwd, dist)
        rows = np.arange(0, len(x), 40)
        exact, exact_dist = np.empty((len(x), 20), np.int64), np.empty((len(x), 20), np.float32)
        hnsw._nearest_among(x, sq, rows, np.arange(len(x)), exact, exact_dist)
        return np.mean([np.isin(exact[i], fwd[i]).mean() for i in rows])

    queries = spread[rng.choice(len(spread), 200, replace=False)]
    queries = queries + 0.05 * rng.standard_normal(queries.shape).astype(np.float32)
    truth = np.argsort(-(queries @ spread.T), axis=1)[:, :10]

    def recall():
        offsets, ids, _ = hnsw._distinct_level_graph(spread, 40, 20, hnsw.HNSW_CANDIDATES, 0)
        return _level_recall(spread, offsets, ids, queries, truth, ef=10)

    share = {name: found(x) for name, x in data.items()}
    fine = recall()
    assert calls == [len(spread), len(spread)]  # the spread rows' level, twice; the clustered never
    monkeypatch.setattr(hnsw, "_GROUP_FOUND", 0.0)  # the groups, whatever they find
    coarse_share, coarse = found(spread), recall()
    print("FOUND", share, "with groups", coarse_share, "RECALL fine", fine, "groups", coarse)
    assert share["clustered"] > 0.98
    assert share["spread"] > coarse_share + 0.05 and fine > coarse


def _unit_rows_and_queries():
    """6,000 unit rows of few latent directions (96-d), as many rows spread over every
    direction, 200 queries of the first plus noise and their exact 10 nearest (largest
    products: of unit rows, the nearest)."""
    rng = np.random.default_rng(5)
    x = make_vectors(6000, 96, num_clusters=30, seed=11)
    x /= np.linalg.norm(x, axis=1, keepdims=True)  # unit rows: _level_recall's products rank as l2
    spread = rng.standard_normal((6000, 96)).astype(np.float32)
    queries = x[rng.choice(len(x), 200, replace=False)]
    queries = queries + 0.02 * rng.standard_normal(queries.shape).astype(np.float32)
    return x, spread, queries, np.argsort(-(queries @ x.T), axis=1)[:, :10]


def test_large_levels_find_their_candidates_on_their_leading_directions(monkeypatch):
    """A level of _SCREEN_ROWS nodes or more whose leading principal directions hold its
    nodes' nearest finds its candidates on the rows' projection on them, and the pruning
    makes their distances exact: the lists' distances are the rows', and a search of the
    level's graph finds as much as one of candidates from the whole rows. Rows spread over
    every direction keep the whole rows."""
    x, spread, queries, truth = _unit_rows_and_queries()
    widths = []
    real = hnsw._screening_rows

    def recorded(v, sq, k):
        rows = real(v, sq, k)
        widths.append(None if rows is None else rows[0].shape[1])
        return rows

    monkeypatch.setattr(hnsw, "_screening_rows", recorded)
    hnsw._distinct_level_graph(spread, 40, 20, hnsw.HNSW_CANDIDATES, 0)
    recall = {}
    for how in ("projected", "whole"):
        if how == "whole":
            monkeypatch.setattr(hnsw, "_SCREEN_ROWS", len(x) + 1)
        offsets, ids, dist = hnsw._distinct_level_graph(x, 40, 20, hnsw.HNSW_CANDIDATES, 0)
        src = np.repeat(np.arange(len(x)), np.diff(offsets))
        np.testing.assert_allclose(dist, ((x[src] - x[ids]) ** 2).sum(axis=1), rtol=1e-4, atol=1e-5)
        recall[how] = _level_recall(x, offsets, ids, queries, truth, ef=10)
    print("WIDTHS", widths, "RECALL", recall)
    assert widths[0] is None and widths[1] is not None and widths[1] <= 48 and widths[2] is None
    assert recall["projected"] >= recall["whole"] - 0.01 and recall["projected"] > 0.9


def test_large_partitions_are_built_on_their_leading_directions(monkeypatch):
    """A partition of _PROJECT_ROWS rows or more whose leading principal directions hold
    a share in _PROJECT_SHARES of its variance in at most _PROJECT_WIDTH of its dimension is built on
    them: the two parts' distances add up to the rows', every level's stored distances are
    the rows' own, and a search of the graph finds as much as one of the whole rows. Rows
    spread over every direction, and fewer rows, are built whole."""
    x, spread, queries, truth = _unit_rows_and_queries()
    rng = np.random.default_rng(6)
    assert hnsw._principal_split(spread) is None
    assert hnsw._principal_split(x[: hnsw._PROJECT_ROWS - 1]) is None
    # tight clusters far apart: the variance in the few directions between them, each row's
    # nearest in the noise of all the others; the variance alone would project them
    blobs = rng.standard_normal((20, 96)).astype(np.float32)[rng.integers(0, 20, 6000)]
    blobs += 0.1 * rng.standard_normal(blobs.shape).astype(np.float32)
    share = principal_axes(blobs[:4096])[1]
    assert fewest(share, max(hnsw._PROJECT_SHARES), 32) <= hnsw._PROJECT_WIDTH * 96
    assert hnsw._principal_split(blobs) is None
    lead, others = hnsw._principal_split(x)
    rest = x @ others
    assert lead.shape[1] % 32 == 0 and lead.shape[1] <= hnsw._PROJECT_WIDTH * 96 and lead.shape[1] + rest.shape[1] == 96
    pairs = rng.integers(0, len(x), (500, 2))
    whole = ((x[pairs[:, 0]] - x[pairs[:, 1]]) ** 2).sum(axis=1)
    parts = sum(((v[pairs[:, 0]] - v[pairs[:, 1]]) ** 2).sum(axis=1) for v in (lead, rest))
    np.testing.assert_allclose(parts, whole, rtol=1e-4, atol=1e-5)
    assert (((lead[pairs[:, 0]] - lead[pairs[:, 1]]) ** 2).sum(axis=1) < whole - 1e-6).mean() > 0.5  # rest not empty

    widths = []
    real = hnsw._principal_split
    monkeypatch.setattr(hnsw, "_principal_split", lambda v: widths.append(r := real(v)) or r)
    recall = {}
    for how in ("projected", "whole"):
        if how == "whole":
            monkeypatch.setattr(hnsw, "_PROJECT_ROWS", len(x) + 1)
        graph = build_hnsw(x, m=20, max_level=7, seed=3)
        for nodes, offsets, ids, dist in graph.levels:
            src = np.repeat(nodes, np.diff(offsets))
            np.testing.assert_allclose(dist, ((x[src] - x[ids]) ** 2).sum(axis=1), rtol=1e-4, atol=1e-5)
        _, offsets, ids, _ = graph.levels[0]
        recall[how] = _level_recall(x, offsets, ids, queries, truth, ef=10)
    print("RECALL", recall)
    assert widths[0] is not None and widths[1] is None  # the projection, then the whole rows
    assert recall["projected"] >= recall["whole"] - 0.01 and recall["projected"] > 0.9


def test_a_projection_that_loses_the_nearest_gives_way_to_the_next_share(monkeypatch):
    """Rows whose largest variance lies between 8 tight groups and whose nearest lie in 48
    other directions: the directions of the first share (32) lose the nearest, so the next
    share's (64, those 48 too) is taken; with no next share the rows are built whole."""
    rng = np.random.default_rng(7)
    n = 6000
    x = np.zeros((n, 96), np.float32)
    x[:, :8] = 6 * rng.standard_normal((8, 8))[rng.integers(0, 8, n)]
    x[:, 8:56] = rng.standard_normal((n, 48))
    x[:, 56:] = 0.05 * rng.standard_normal((n, 40))
    monkeypatch.setattr(hnsw, "_PROJECT_SHARES", (0.9, 0.95))
    lead, others = hnsw._principal_split(x)
    assert lead.shape[1] == 64 and others.shape == (96, 32)
    monkeypatch.setattr(hnsw, "_PROJECT_SHARES", (0.9,))
    assert hnsw._principal_split(x) is None


def test_pruning_makes_a_projections_distances_exact():
    """_prune given candidates ranked by approximate distances and ``own`` ranks them by
    their exact distances, in place, and keeps those it keeps given them ranked exactly."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((600, 24)).astype(np.float32)
    sq = np.einsum("ij,ij->i", x, x)
    own = np.arange(100)
    exact = sq[own, None] + sq[None, :] - 2 * x[own] @ x.T
    exact[own, own] = np.inf
    cand = np.argsort(exact, axis=1)[:, :30]
    dist = np.take_along_axis(exact, cand, axis=1).astype(np.float32)
    dist[::9, -4:] = np.inf  # padding
    want = hnsw._prune(dist.copy(), cand.copy(), x, 20, 10, 1.1, None, sq)
    noisy = np.where(np.isfinite(dist), dist * rng.uniform(0.7, 1.3, dist.shape), np.inf).astype(np.float32)
    order = np.argsort(noisy, axis=1, kind="stable")
    shuffled, approx = np.take_along_axis(cand, order, axis=1), np.take_along_axis(noisy, order, axis=1)
    assert (shuffled != cand).any()
    keep = hnsw._prune(approx, shuffled, x, 20, 10, 1.1, None, sq, own)
    np.testing.assert_array_equal(shuffled, cand)
    np.testing.assert_allclose(approx, dist, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(keep, want)

def test_lists_of_unequal_lengths_are_pruned_in_slices_of_their_own_width(monkeypatch):
    """_prune_in_slices, whose slices hold lists of about one length and are only as wide as
    their longest, keeps what _prune keeps of the whole padded lists at once."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((400, 16)).astype(np.float32)
    sq = np.einsum("ij,ij->i", x, x)
    d = sq[:, None] + sq[None, :] - 2 * x @ x.T
    np.fill_diagonal(d, np.inf)
    cand = np.argsort(d, axis=1)[:, :40]
    dist = np.take_along_axis(d, cand, axis=1).astype(np.float32)
    length = rng.integers(0, 41, len(x))  # as after the reverse edges: padding at the end
    dist[np.arange(40)[None, :] >= length[:, None]] = np.inf
    monkeypatch.setattr(hnsw, "_PRUNE_CELLS", 40 * 16 * 32)  # slices of 32 nodes
    keep = hnsw._prune_in_slices(dist, cand, x, sq, 20, 10)
    np.testing.assert_array_equal(keep, hnsw._prune(dist.copy(), cand.copy(), x, 20, 10, 1.1, None, sq))
    assert keep.sum(axis=1).max() == 20 and not keep[length == 0].any()


@pytest.mark.parametrize("metric", ["l2", "dot"])
def test_equal_rows_hang_below_one_another_and_every_node_is_reached(metric):
    """Copies of a row (duplicates, colliding PQ codes) are reached from the entry point and
    reach it, with their row's neighbours; the distinct rows' graph is the one they make alone.
    Each edge carries the metric's distance: squared l2, or Lance's dot distance ``1 - x.y``
    (the copies' edges too: not 0)."""
    from scipy.sparse import csgraph, csr_matrix

    rng = np.random.default_rng(0)
    distinct = make_vectors(2000, 16, num_clusters=20, seed=4)
    # 300 copies of one row, 40 of each of 5 others, a pair: 2,502 nodes, 2,000 distinct
    x = np.concatenate([distinct, np.repeat(distinct[:1], 300, axis=0), np.repeat(distinct[1:6], 40, axis=0),
                        distinct[7:8], distinct[9:10]])[rng.permutation(2502)]
    m, max_level = 6, 4
    graph = build_hnsw(x, m=m, max_level=max_level, seed=3, metric=metric,
                       candidates=hnsw.HNSW_DOT_CANDIDATES if metric == "dot" else hnsw.HNSW_CANDIDATES)
    for level, (nodes, offsets, neighbours, dist) in enumerate(graph.levels):
        sizes = np.diff(offsets)
        owner = np.repeat(nodes, sizes)
        # a list of up to cap, one past it where _connect found every list full, two children
        assert sizes.max() <= (2 * m if level == 0 else m) + 3 and not np.any(owner == neighbours)
        if metric == "dot":
            np.testing.assert_allclose(dist, 1 - (x[owner] * x[neighbours]).sum(axis=1), rtol=1e-3, atol=1e-3)
        else:
            np.testing.assert_allclose(dist, ((x[owner] - x[neighbours]) ** 2).sum(axis=1), rtol=1e-3, atol=1e-3)
        local = {v: i for i, v in enumerate(nodes)}
        a = csr_matrix((np.ones(len(owner)), ([local[v] for v in owner], [local[v] for v in neighbours])),
                       shape=(len(nodes), len(nodes)))
        start = local[graph.entry_point]
        assert len(csgraph.breadth_first_order(a, start, return_predecessors=False)) == len(nodes), level
        assert len(csgraph.breadth_first_order(a.T.tocsr(), start, return_predecessors=False)) == len(nodes), level
    # a copy's list: its row, and its row's nearest neighbours (all but room for two children)
    nodes, offsets0, neighbours0, _ = graph.levels[0]
    lists = [neighbours0[offsets0[i] : offsets0[i + 1]] for i in range(len(x))]
    checked = 0
    for i in range(len(x)):
        equal = np.flatnonzero(np.all(x == x[i], axis=1))
        row = graph.entry_point if graph.entry_point in equal else equal[0]
        if row == i:
            continue
        assert row in lists[i]
        distinct_of_row = [v for v in lists[row] if v not in equal][: 2 * m - 3]
        assert set(distinct_of_row) <= set(lists[i]), i
        checked += 1
    assert checked == 502


@pytest.mark.parametrize("dim", [3, 16, 384])
def test_copies_are_found_by_every_column_not_only_the_hashed_ones(dim):
    """Each row's first equal row (the entry point first among its equals): rows that differ
    only in a column the hash leaves out are not copies, and every real copy is found."""
    rng = np.random.default_rng(dim)
    base = rng.normal(size=(400, dim)).astype(np.float32)
    near = base[:100].copy()
    hashed = set(np.linspace(0, dim - 1, min(dim, hnsw_copies.COPY_COLUMNS)).astype(int).tolist())
    off = [c for c in range(dim) if c not in hashed]
    if off:
        near[:, off[0]] += 1.0  # the same in the hashed columns, not in one other
    x = np.concatenate([base, base[50:80], near, base[:5]])[rng.permutation(535)]
    for entry in (0, 200, 534):
        want = np.array([entry if np.all(x[entry] == x[i]) else int(np.flatnonzero(np.all(x == x[i], axis=1))[0])
                         for i in range(len(x))])
        got = hnsw_copies.copies_of(x, entry)
        np.testing.assert_array_equal(got, want)
    assert (got != np.arange(len(x))).sum() == 35 + (0 if off else 100)


def test_clusters_without_an_edge_between_them_are_all_joined():
    """_connect joins every cluster of a graph that has none between them (300 clusters of 10
    nodes, each node linked to its cluster's others): one edge each way per cluster but the
    entry's, from the cluster's node nearest the joined ones, and no list past its cap + 1."""
    from scipy.sparse import csgraph, csr_matrix

    rng = np.random.default_rng(5)
    centres = rng.normal(0, 10, (300, 16)).astype(np.float32)
    x = (np.repeat(centres, 10, axis=0) + rng.normal(0, 0.1, (3000, 16))).astype(np.float32)
    cluster = np.repeat(np.arange(300), 10)
    src, dst = np.nonzero((cluster[:, None] == cluster[None, :]) & ~np.eye(3000, dtype=bool))
    sq = np.einsum("ij,ij->i", x, x)
    dist = ((x[src] - x[dst]) ** 2).sum(axis=1).astype(np.float32)
    cap = 10
    for dot in (False, True):
        s2, d2, dd = hnsw_edges.connect(x, sq, src, dst, dist, cap, entry=0, dot=dot)
        graph = csr_matrix((np.ones(len(s2)), (s2, d2)), shape=(3000, 3000))
        count, _ = csgraph.connected_components(graph, directed=True, connection="strong")
        assert count == 1
        added = len(s2) - len(src)
        assert added == 2 * 299, added  # a pair for each cluster, none twice
        assert np.bincount(s2, minlength=3000).max() <= cap + 1
        assert (np.diff(s2) >= 0).all()
        new = np.ones(len(s2), bool)
        new[:len(src)] = False  # the kept edges' distances unchanged, the new ones the metric's
        pairs = set(zip(src.tolist(), dst.tolist()))
        is_new = np.array([(a, b) not in pairs for a, b in zip(s2.tolist(), d2.tolist())])
        want = 1 - (x[s2] * x[d2]).sum(axis=1) if dot else ((x[s2] - x[d2]) ** 2).sum(axis=1)
        np.testing.assert_allclose(dd[is_new], want[is_new], rtol=1e-3, atol=1e-2)
        # each new edge joins two clusters, at the pair nearest to the joined part
        assert (cluster[s2[is_new]] != cluster[d2[is_new]]).all()


def test_dot_connect_looks_among_a_draw_of_the_joined_nodes(monkeypatch):
    """Under dot a round of _connect looks for each lost node's nearest among at most
    _CONNECT_ROOM joined nodes with room, drawn: the 300 clusters of 10 nodes still end
    joined, one edge each way per cluster, no list past its cap + 1."""
    from scipy.sparse import csgraph, csr_matrix

    rng = np.random.default_rng(5)
    x = (np.repeat(rng.normal(0, 10, (300, 16)), 10, axis=0) + rng.normal(0, 0.1, (3000, 16))).astype(np.float32)
    cluster = np.repeat(np.arange(300), 10)
    src, dst = np.nonzero((cluster[:, None] == cluster[None, :]) & ~np.eye(3000, dtype=bool))
    dist = (1 - (x[src] * x[dst]).sum(axis=1)).astype(np.float32)
    whole = hnsw_edges.connect(x, None, src, dst, dist, 10, entry=0, dot=True)  # 3,000 nodes: every joined one
    monkeypatch.setattr(hnsw_edges, "_CONNECT_ROOM", 50)
    s2, d2, _ = hnsw_edges.connect(x, None, src, dst, dist, 10, entry=0, dot=True)
    assert set(zip(s2.tolist(), d2.tolist())) != set(zip(whole[0].tolist(), whole[1].tolist()))  # drawn
    graph = csr_matrix((np.ones(len(s2)), (s2, d2)), shape=(3000, 3000))
    assert csgraph.connected_components(graph, directed=True, connection="strong")[0] == 1
    assert len(s2) - len(src) == 2 * 299
    assert np.bincount(s2, minlength=3000).max() <= 10 + 1
    is_new = ~np.isin(s2 * 3000 + d2, src * 3000 + dst)
    assert (cluster[s2[is_new]] != cluster[d2[is_new]]).all()


@pytest.mark.parametrize("dot", [False, True])
def test_full_lists_still_get_every_node_joined(dot):
    """When every joined list is full (as on the levels above 0), _connect lets the least full
    take one more a round rather than stop: 3 nodes linked to one another, 57 more each
    pointing at two of them with full lists of 2, none pointed at."""
    from scipy.sparse import csgraph, csr_matrix

    rng = np.random.default_rng(7)
    x = rng.normal(0, 1, (60, 8)).astype(np.float32)
    src = [0, 0, 1, 1, 2, 2] + [i for i in range(3, 60) for _ in range(2)]
    dst = [1, 2, 0, 2, 0, 1] + [j for _ in range(3, 60) for j in (0, 1)]
    src, dst = np.array(src), np.array(dst)
    sq = np.einsum("ij,ij->i", x, x)
    s2, d2, _ = hnsw_edges.connect(x, sq, src, dst, np.zeros(len(src), np.float32), 2, entry=0, dot=dot)
    graph = csr_matrix((np.ones(len(s2)), (s2, d2)), shape=(60, 60))
    assert csgraph.connected_components(graph, directed=True, connection="strong")[0] == 1
    assert len(set(zip(s2.tolist(), d2.tolist()))) == len(s2)  # no edge twice
    assert 57 <= len(s2) - len(src) <= 2 * 57  # a pair for each lost node, less the edges it had
    assert (np.bincount(d2, minlength=60)[3:] >= 1).all()  # each pointed at now
    # past the cap by one each round the joined lists were all full (twice here), not by 57
    assert np.bincount(s2, minlength=60).max() <= 2 + 2


# node, key and id packed in one uint64; past 65,536 nodes in ranges of nodes (3 and 245 here)
@pytest.mark.parametrize("n", [50, 70_000, 1_000_000])
def test_reverse_edge_lists_are_each_nodes_edges_best_first(n, monkeypatch):
    """Each node's list holds its edges both ways, once each, by key (a distance, a product
    negated: ties, -0.0 and infinities included) then id, cut at the width."""
    rng = np.random.default_rng(3)
    pairs = np.unique(np.sort(rng.integers(0, 50, size=(400, 2)), axis=1), axis=0)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]] * (n // 50)  # ids spread over the level
    key = rng.choice(np.array([-np.inf, -2.5, -0.0, 0.0, 0.5, 0.5, 1.25, np.inf], np.float32), len(pairs))
    fwd = rng.random(len(pairs)) < 0.5  # each edge one way, the other, or both (a duplicate pair)
    both = rng.random(len(pairs)) < 0.3
    src = np.concatenate([pairs[fwd | both, 0], pairs[~fwd | both, 1]])
    dst = np.concatenate([pairs[fwd | both, 1], pairs[~fwd | both, 0]])
    k = np.concatenate([key[fwd | both], key[~fwd | both]])
    width = 6
    sorts = []
    real = np.lexsort
    monkeypatch.setattr(np, "lexsort", lambda keys: sorts.append(len(keys[0])) or real(keys))
    cand, ckey = hnsw_edges.with_reverse_edges(n, src, dst, k, cap=3, width=width)
    assert not sorts
    lists = {}
    for a, b, d in zip(src.tolist(), dst.tolist(), k.tolist()):
        lists.setdefault(a, set()).add((d, b))
        lists.setdefault(b, set()).add((d, a))
    assert cand.shape == (n, width)
    assert not np.isfinite(ckey[sorted(set(range(0, n, max(1, n // 1000))) - set(lists))]).any()
    for node in lists if n > 100_000 else range(n):  # the others: no edge (checked on a sample above)
        want = sorted(lists.get(node, ()))[:width]
        np.testing.assert_array_equal(ckey[node], [d for d, _ in want] + [np.inf] * (width - len(want)))
        np.testing.assert_array_equal(cand[node, : len(want)], [b for _, b in want])


@pytest.mark.parametrize("n", [1000, 1 << 20, 1 << 25])
def test_edges_are_sorted_by_node_key_and_id_packed_or_past_2_24_nodes_by_lexsort(n, monkeypatch):
    rng = np.random.default_rng(4)
    a, b = rng.integers(0, n, 50_000), rng.integers(0, n, 50_000)
    key = rng.choice(np.array([-np.inf, -1.5, -0.0, 0.0, 0.25, 3.0, np.inf], np.float32), 50_000)
    a[::5], b[::5] = a[1::5], b[1::5]  # ties of node and key, by id
    want = np.lexsort((b, key, a))
    sorts = []
    real = np.lexsort
    monkeypatch.setattr(np, "lexsort", lambda keys: sorts.append(len(keys[0])) or real(keys))
    got = hnsw_edges._by_node_key_id(n, a, b, key)
    assert bool(sorts) == (n > 1 << 24)
    for x, y in zip(got, (a[want], b[want], key[want])):
        np.testing.assert_array_equal(x, y)


def test_dot_graphs_are_the_same_whether_the_products_are_held_or_not(monkeypatch):
    """Levels of more than 4,096 nodes (64 MB of products) are built without the level's
    products held whole: the same graphs, level for level, as with them; and the same
    whatever the slices of nodes the candidates' products are taken and selected in."""
    x = make_vectors(1500, 16, num_clusters=12, seed=9) * np.random.default_rng(1).uniform(0.5, 2, (1500, 1))
    x = x.astype(np.float32)
    held = build_hnsw(x, m=8, max_level=4, seed=2, metric="dot")
    monkeypatch.setattr(hnsw_dot, "_GRAM_CELLS", 0)
    monkeypatch.setattr(hnsw_dot, "SLICE_CELLS", 1500 * 8)  # the kept nodes' products 8 nodes at a time
    for rows in (1, 40, 256):  # products 8, 40 or 256 nodes at a time, selected at least 8 rows at a time
        monkeypatch.setattr(hnsw_dot, "_PRODUCT_ROWS", rows)
        sliced = build_hnsw(x, m=8, max_level=4, seed=2, metric="dot")
        assert held.entry_point == sliced.entry_point and len(held.levels) == len(sliced.levels) > 1
        for a, b in zip(held.levels, sliced.levels):
            for u, v in zip(a, b):
                np.testing.assert_array_equal(u, v)


def test_dot_candidates_of_large_levels_come_from_the_groups_a_node_is_near(monkeypatch):
    """Past DOT_EXACT_ROWS nodes, the first inserted still take their largest products with
    every node before them; each later node its largest with the nodes before it in the groups
    it is near: only nodes inserted before it, products exact and largest first, and nearly all
    of the exact candidates, most of all the ones the pruning keeps."""
    x = make_vectors(6000, 32, num_clusters=40, seed=4) * np.random.default_rng(2).uniform(0.5, 2, (6000, 1))
    x = x.astype(np.float32)
    n, k = len(x), 60
    order = np.argsort(np.random.default_rng(n).permutation(n))
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    exact = np.empty((n, k), np.int64), np.empty((n, k), np.float32)
    hnsw_dot._largest_products(x, *exact, order)  # 6,000 nodes: every product
    monkeypatch.setattr(hnsw_dot, "DOT_EXACT_ROWS", 1000)
    monkeypatch.setattr(hnsw_dot, "_GROUP_ROWS", 64)
    monkeypatch.setattr(hnsw_dot, "_QUERY_ROWS", 128)
    monkeypatch.setattr(hnsw_dot, "_GROUP_PROBES", 8)
    fwd, ip = np.empty((n, k), np.int64), np.empty((n, k), np.float32)
    monkeypatch.setattr(hnsw_dot, "_GROUPED_SHARE", 0.05)  # groups that would save less: every product
    hnsw_dot._largest_products(x, fwd, ip, order)
    np.testing.assert_array_equal(fwd, exact[0])
    np.testing.assert_array_equal(ip, exact[1])
    monkeypatch.setattr(hnsw_dot, "_GROUPED_SHARE", 0.5)
    groups = hnsw_dot._query_groups(x, order)
    assert groups is not None and len(groups.later) == n - 1000
    hnsw_dot._largest_products(x, fwd, ip, order)
    head, later = order[:1000], order[1000:]
    np.testing.assert_allclose(ip[head], exact[1][head], rtol=1e-5, atol=1e-4)  # every node before them
    full = np.isfinite(ip[later])
    assert full.all(axis=1).mean() > 0.99
    assert (full[:, :-1] >= full[:, 1:]).all()  # a list short of K (few nodes before it in its groups) padded
    got = full.sum()
    ids, products = fwd[later][full], ip[later][full]
    rows = np.repeat(later, full.sum(axis=1))
    assert (rank[ids] < rank[rows]).all()
    np.testing.assert_allclose(products, np.einsum("id,id->i", x[rows], x[ids]), rtol=1e-4, atol=1e-3)
    assert ((ip[later][:, :-1] >= ip[later][:, 1:]) | ~full[:, 1:]).all()  # largest first
    assert len(np.unique(rows * n + ids)) == got  # no node twice
    found = np.array([np.isin(exact[0][i], fwd[i]) for i in later])
    kept = hnsw_dot._prune_dot(exact[1][later], exact[0][later], x, 32, 0)  # the edges Lance's rule keeps
    print("FOUND", found.mean(), found[kept].mean())
    assert found.mean() > 0.95 and found[kept].mean() > 0.95
    assert found.mean() < 1  # a node is not compared with every node before it


def test_dot_groups_that_miss_the_largest_products_are_not_used(monkeypatch):
    """Groups are used only where those probed for drawn nodes hold nearly all of their
    largest products with the nodes before them: clustered rows group so; rows of no
    structure (a node's largest products spread over most groups) are compared with every
    node before them, as are clustered rows under a stricter check."""
    rng = np.random.default_rng(8)
    clustered = make_vectors(6000, 32, num_clusters=40, seed=4) * rng.uniform(0.5, 2, (6000, 1))
    spread = rng.standard_normal((6000, 32)) * rng.uniform(0.5, 2, (6000, 1))
    for name, value in (("DOT_EXACT_ROWS", 1000), ("_GROUP_ROWS", 64), ("_QUERY_ROWS", 128), ("_GROUP_PROBES", 8)):
        monkeypatch.setattr(hnsw_dot, name, value)
    order = np.argsort(np.random.default_rng(6000).permutation(6000))
    found = {}
    real = hnsw_dot._groups_find_largest
    monkeypatch.setattr(hnsw_dot, "_groups_find_largest", lambda *a: found.setdefault(len(found), real(*a)))
    assert hnsw_dot._query_groups(clustered.astype(np.float32), order) is not None
    assert hnsw_dot._query_groups(spread.astype(np.float32), order) is None
    assert found == {0: True, 1: False}  # the check made for both
    monkeypatch.setattr(hnsw_dot, "_GROUPED_FOUND", 1.01)
    assert hnsw_dot._query_groups(clustered.astype(np.float32), order) is None
    fwd, ip = np.empty((6000, 60), np.int64), np.empty((6000, 60), np.float32)
    exact = np.empty((6000, 60), np.int64), np.empty((6000, 60), np.float32)
    hnsw_dot._all_largest_products(spread.astype(np.float32), *exact, order)
    hnsw_dot._largest_products(spread.astype(np.float32), fwd, ip, order)
    np.testing.assert_array_equal(fwd, exact[0])  # every product, as below the groups' bound


def test_dot_levels_of_few_directions_are_built_on_their_projection(monkeypatch):
    """A level whose rows hold nearly all their energy in few directions is built on the
    rows projected on those: products close to the rows' own, each edge's distance the
    rows' own ``1 - x.y``, and a graph that searches as well as the one built on the rows.
    Rows of energy spread over every direction, and small levels, are built on themselves."""
    rng = np.random.default_rng(5)
    x = make_vectors(3000, 256, num_clusters=30, seed=5) * rng.uniform(0.5, 2, (3000, 1))
    x = x.astype(np.float32)
    spread = rng.standard_normal((3000, 256)).astype(np.float32)
    assert hnsw_dot._projected_rows(x) is x  # fewer than _PROJECTED_MIN_ROWS nodes
    monkeypatch.setattr(hnsw_dot, "_PROJECTED_MIN_ROWS", 1000)
    assert hnsw_dot._projected_rows(spread) is spread
    p = hnsw_dot._projected_rows(x)
    assert p.shape == (3000, hnsw_dot._PROJECTED_STEP)  # 12 latent directions: the fewest kept
    a, b = rng.choice(3000, 500), rng.choice(3000, 500)
    exact = np.einsum("ij,ij->i", x[a], x[b])
    assert np.abs(np.einsum("ij,ij->i", p[a], p[b]) - exact).max() < 0.02 * np.abs(exact).max()
    graphs = {}
    for how, rows in (("projected", 1000), ("rows", 10**9)):
        monkeypatch.setattr(hnsw_dot, "_PROJECTED_MIN_ROWS", rows)
        offsets, ids, dist = hnsw_dot.distinct_dot_graph(x, 32, 16, 100, 0)
        src = np.repeat(np.arange(len(x)), np.diff(offsets))
        np.testing.assert_allclose(dist, 1 - np.einsum("ij,ij->i", x[src], x[ids]), rtol=1e-5, atol=1e-3)
        graphs[how] = offsets, ids
    assert any(len(graphs["projected"][1]) != len(graphs["rows"][1]) or (graphs["projected"][1] != graphs["rows"][1]))
    queries = x[rng.choice(3000, 200, replace=False)] + rng.normal(0, 0.05, (200, 256)).astype(np.float32)
    truth = np.argsort(-(queries @ x.T), axis=1)[:, :10]
    found = {how: _level_recall(x, *graph, queries, truth, ef=20) for how, graph in graphs.items()}
    print("RECALL projected", found)
    assert found["rows"] > 0.8 and found["projected"] >= found["rows"] - 0.01, found


def test_dot_levels_of_spread_rows_are_built_on_most_of_their_directions(monkeypatch):
    """Rows whose energy needs over half their directions (no :func:`projection`) are built
    on the fewest top directions on which the largest products of drawn rows hold
    _SPREAD_FOUND of their exact ones (32 fewer hold less): edges' distances the rows' own,
    and a graph that searches as well as the one built on the rows. Where none of at most
    3/4 of the directions do, the rows."""
    rng = np.random.default_rng(3)
    n = 3000
    x = np.concatenate([rng.standard_normal((n, 80)), 0.1 * rng.standard_normal((n, 48))], axis=1)
    x = (x * rng.uniform(0.5, 2, (n, 1))).astype(np.float32)
    monkeypatch.setattr(hnsw_dot, "_PROJECTED_MIN_ROWS", 1000)
    assert hnsw_dot.projection(x) is None
    p = hnsw_dot._projected_rows(x)
    assert p.shape == (n, 96)  # 80 directions and a few of the tail, rounded up to 32
    assert hnsw_dot.spread_projection(x).shape == (128, 96)
    # as spread_projection checks (the sample: every row here)
    checked = np.sort(np.random.default_rng(n).choice(n, hnsw_dot._SPREAD_CHECKED, replace=False))
    exact, found = (hnsw_dot._largest_of(x, checked, hnsw_dot._SPREAD_NEAREST),
                    hnsw_dot._largest_of(p, checked, hnsw_dot._SPREAD_NEAREST))
    kept = (exact[:, :, None] == found[:, None, :]).any(axis=2).mean()
    assert hnsw_dot._SPREAD_FOUND <= kept < 1
    fewer = hnsw_dot._largest_of(x @ hnsw_dot.energy_axes(x)[0][:, :64], checked, hnsw_dot._SPREAD_NEAREST)
    assert (exact[:, :, None] == fewer[:, None, :]).any(axis=2).mean() < hnsw_dot._SPREAD_FOUND
    graphs = {}
    for how, rows in (("projected", 1000), ("rows", 10**9)):
        monkeypatch.setattr(hnsw_dot, "_PROJECTED_MIN_ROWS", rows)
        offsets, ids, dist = hnsw_dot.distinct_dot_graph(x, 32, 16, 100, 0)
        src = np.repeat(np.arange(n), np.diff(offsets))
        np.testing.assert_allclose(dist, 1 - np.einsum("ij,ij->i", x[src], x[ids]), rtol=1e-5, atol=1e-3)
        graphs[how] = offsets, ids
    queries = x[rng.choice(n, 200, replace=False)] + rng.normal(0, 0.05, (200, 128)).astype(np.float32)
    truth = np.argsort(-(queries @ x.T), axis=1)[:, :10]
    recall = {how: _level_recall(x, *graph, queries, truth, ef=20) for how, graph in graphs.items()}
    print("RECALL spread", recall)
    assert recall["rows"] > 0.8 and recall["projected"] >= recall["rows"] - 0.01, recall
    monkeypatch.setattr(hnsw_dot, "_PROJECTED_MIN_ROWS", 1000)
    monkeypatch.setattr(hnsw_dot, "_SPREAD_FOUND", 1.0)  # the same rows, a check no projection passes
    assert hnsw_dot._projected_rows(x) is x and hnsw_dot.spread_projection(x) is None


def test_groups_are_tried_on_dot_levels_of_few_directions_not_on_spread_rows(monkeypatch):
    """A large dot level tries groups for its later nodes' candidates where its rows project
    on few directions; where their energy is spread (no projection) it compares every node
    with every node before it, groups never made."""
    rng = np.random.default_rng(9)
    n = 3000
    few = (make_vectors(n, 128, num_clusters=30, seed=9) * rng.uniform(0.5, 2, (n, 1))).astype(np.float32)
    spread = np.concatenate([rng.standard_normal((n, 80)), 0.1 * rng.standard_normal((n, 48))], axis=1)
    spread = (spread * rng.uniform(0.5, 2, (n, 1))).astype(np.float32)
    for name, value in (("_PROJECTED_MIN_ROWS", 1000), ("DOT_EXACT_ROWS", 512)):  # groups past 1,024 nodes
        monkeypatch.setattr(hnsw_dot, name, value)
    tried = []
    real = hnsw_dot._query_groups
    monkeypatch.setattr(hnsw_dot, "_query_groups", lambda *a: tried.append(len(a[0])) or real(*a))
    assert hnsw_dot._level_projection(few)[1] is False and hnsw_dot._level_projection(spread)[1] is True
    hnsw_dot.distinct_dot_graph(few, 16, 8, 40, 0)
    assert tried == [n]
    tried.clear()
    offsets, ids, _ = hnsw_dot.distinct_dot_graph(spread, 16, 8, 40, 0)
    assert tried == [] and len(offsets) == n + 1 and len(ids) > n


def test_dot_graphs_of_rows_of_one_norm_are_the_l2_constructions():
    """Under dot, rows of one norm (normalised embeddings) are ranked by their products as by
    l2 distance: their graph is the l2 construction's (its own candidates), each edge with
    Lance's dot distance ``1 - x.y``. Rows of unequal norms take the dot construction."""
    x = make_vectors(3000, 64, num_clusters=20, seed=8)
    unit = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    assert hnsw.one_norm(unit) and not hnsw.one_norm(x)
    dot = build_hnsw(unit, m=8, max_level=3, seed=1, metric="dot", candidates=100)
    l2 = build_hnsw(unit, m=8, max_level=3, seed=1, metric="l2", candidates=hnsw.HNSW_CANDIDATES)
    assert dot.entry_point == l2.entry_point and len(dot.levels) == len(l2.levels) > 1
    for (nodes, offsets, ids, dist), (n2, o2, i2, _) in zip(dot.levels, l2.levels):
        np.testing.assert_array_equal(nodes, n2)
        np.testing.assert_array_equal(offsets, o2)
        np.testing.assert_array_equal(ids, i2)
        src = np.repeat(nodes, np.diff(offsets))
        np.testing.assert_allclose(dist, 1 - np.einsum("ij,ij->i", unit[src], unit[ids]), atol=1e-5)
    scaled = build_hnsw(x, m=8, max_level=3, seed=1, metric="dot", candidates=100)
    assert not all(np.array_equal(a[2], b[2]) for a, b in zip(scaled.levels, l2.levels))


def test_dot_graphs_are_ours_or_lances_by_the_rows_drawn_at_planning(tmp_path):
    """Engine "auto" draws rows at planning for a dot-metric HNSW build: rows that project on
    few directions keep our graphs at sizes where rows spread over every direction go to
    Lance's (past DOT_SPREAD_GRAPH_ROWS a partition; DOT_ONE_NORM_SPREAD_ROWS of one norm,
    DOT_MOST_DIRECTIONS_ROWS where 3/4 of their directions keep their largest products)."""
    rng = np.random.default_rng(0)
    rows = 4 * precomputed_module.DOT_SPREAD_GRAPH_ROWS + 400  # 4 partitions just past the bound
    data = {
        "projects": make_vectors(rows, 128, num_clusters=30, seed=1),
        "spread": rng.standard_normal((rows, 128)).astype(np.float32),
    }
    data["spread, one norm"] = data["spread"] / np.linalg.norm(data["spread"], axis=1, keepdims=True)
    most = np.concatenate([rng.standard_normal((rows, 80)), 0.1 * rng.standard_normal((rows, 48))], axis=1)
    data["spread, most directions"] = (most * rng.uniform(0.5, 2, (rows, 1))).astype(np.float32)
    engines = {}
    for name, x in data.items():
        uri = str(tmp_path / f"{name}.lance")
        write_vectors(uri, x, max_rows_per_file=4000)
        for index_type in ("IVF_HNSW_FLAT", "IVF_HNSW_SQ"):
            engines[name, index_type] = dli.plan_index(uri, "vector", index_type, num_partitions=4, metric="dot").engine
        engines[name, "cosine"] = dli.plan_index(uri, "vector", "IVF_HNSW_FLAT", num_partitions=4, metric="cosine").engine
    assert rows <= 4 * precomputed_module.DOT_ONE_NORM_SPREAD_ROWS
    for t in ("IVF_HNSW_FLAT", "IVF_HNSW_SQ"):
        assert engines["projects", t] == "precomputed"
        assert engines["spread", t] == "partitions"
        assert engines["spread, one norm", t] == "precomputed"
        assert engines["spread, most directions", t] == "precomputed"
    assert all(engines[name, "cosine"] == "precomputed" for name in data)  # no rows drawn: ours at any size


def _level_recall(x, offsets, ids, queries, truth, ef: int) -> float:
    """Recall@10 of a beam search of width ``ef`` under dot on one level's lists, from the
    node of largest norm."""
    import heapq

    entry = int(np.argmax(np.einsum("ij,ij->i", x, x)))
    hits = 0
    for q, want in zip(queries, truth):
        first = float(x[entry] @ q)
        seen, frontier, best = {entry}, [(-first, entry)], [(first, entry)]
        while frontier:
            neg, node = heapq.heappop(frontier)
            if len(best) >= ef and -neg < best[0][0]:
                break
            new = [v for v in ids[offsets[node] : offsets[node + 1]] if v not in seen]
            seen.update(new)
            for v, score in zip(new, x[new] @ q if new else ()):
                if len(best) < ef or score > best[0][0]:
                    heapq.heappush(frontier, (-score, v))
                    heapq.heappush(best, (score, v))
                    if len(best) > ef:
                        heapq.heappop(best)
        hits += len(set(v for _, v in heapq.nlargest(10, best)) & set(want))
    return hits / (10 * len(queries))


@pytest.mark.parametrize("path", ["whole", "pairs", "kept rows", "both", "rows full"])
def test_dot_pruning_is_lances_rule(path, monkeypatch):
    """_prune_dot, which computes products only as candidates are kept (looked up in the
    level's products held ``whole``, else pair by pair or in the held rows of products of the
    nodes kept most, ``both`` in one step, or pairs once the held rows are full), keeps what
    Lance's rule keeps (a candidate is kept unless a kept one has a larger product with it
    than the node has), computed here in full for each node, then the largest dropped up to
    ``fill``."""
    rows = {"pairs": lambda uses, n: np.zeros(len(uses), bool),
            "kept rows": lambda uses, n: np.ones(len(uses), bool),
            "both": lambda uses, n: np.arange(len(uses)) % 2 == 0,
            "rows full": lambda uses, n: np.ones(len(uses), bool)}
    if path != "whole":
        monkeypatch.setattr(hnsw_dot, "_rows_cheaper", rows[path])
        monkeypatch.setattr(hnsw_dot, "SLICE_CELLS", 600 * 3)  # the kept nodes' rows 3 at a time
        monkeypatch.setattr(hnsw_dot, "_PAIR_CELLS", 64 * 30)  # a few nodes' pairs at a time
    if path == "rows full":
        monkeypatch.setattr(hnsw_dot, "_HELD_CELLS", 600 * 5)  # 5 rows held, then pairs
    whole = path == "whole"
    rng = np.random.default_rng(2)
    x = (rng.normal(0, 1, (600, 24)) * rng.uniform(0.5, 3, (600, 1))).astype(np.float32)
    k, cap, fill = 60, 12, 8
    ip = x @ x.T
    np.fill_diagonal(ip, -np.inf)
    cand = np.argsort(-ip, axis=1)[:, :k]
    cip = np.take_along_axis(ip, cand, axis=1)
    cip[::7, -5:] = -np.inf  # padding
    keep = hnsw_dot._prune_dot(cip, cand, x, cap, fill, gram=x @ x.T if whole else None)
    for i in range(len(x)):
        kept, dropped = [], []
        for j in range(k):
            if not np.isfinite(cip[i, j]) or len(kept) >= cap:
                continue
            if all(cip[i, j] > x[cand[i, j]] @ x[cand[i, s]] for s in kept):
                kept.append(j)
            else:
                dropped.append(j)
        want = sorted(kept + dropped[: max(fill - len(kept), 0)])
        assert np.flatnonzero(keep[i]).tolist() == want, i
    assert 1 < keep.sum(axis=1).mean() < cap


def clustered_with_queries(dim: int, num_queries: int, metric: str):
    """20,000 rows in 60 clusters of unequal norms, queries that are rows plus small noise,
    and each query's exact 10 nearest under ``metric``: the data the recall tests against
    Lance's graphs share."""
    x = make_vectors(20000, dim, num_clusters=60, seed=7)
    rng = np.random.default_rng(3)
    queries = x[rng.choice(len(x), num_queries, replace=False)]
    queries = queries + rng.normal(0, 0.01, (num_queries, dim)).astype(np.float32)
    return x, queries, exact_knn(x, queries, 10, metric)


@pytest.mark.parametrize("index_type, metric, dim, num_partitions", [
    ("IVF_HNSW_FLAT", "l2", 32, 16), ("IVF_HNSW_SQ", "l2", 32, 16), ("IVF_HNSW_FLAT", "cosine", 32, 16),
    ("IVF_HNSW_FLAT", "dot", 32, 16),
    ("IVF_HNSW_SQ", "cosine", 128, 4)])  # partitions of about 5,000 rows: built on their leading directions
def test_our_graphs_search_as_well_as_lances(tmp_path, monkeypatch, index_type, metric, dim, num_partitions):
    x, queries, truth = clustered_with_queries(dim, 100, metric)
    splits = []  # (rows, split) of each partition's graph
    real = hnsw._principal_split
    monkeypatch.setattr(hnsw, "_principal_split", lambda v: splits.append((len(v), r := real(v))) or r)
    recall = {}
    # Lance's k-means takes no seed, so its recall at 4 probes varies from build to build
    # (0.937-0.966 under dot in 7 builds): the reference is the mean of 3 of its builds.
    for who in ("lance-0", "lance-1", "lance-2", "ours"):
        uri = str(tmp_path / f"{who}.lance")
        ds = write_vectors(uri, x, max_rows_per_file=5000)
        if who != "ours":
            ds.create_index("vector", index_type, num_partitions=num_partitions, metric=metric, m=16, ef_construction=100)
        else:
            build = dli.create_index(uri, "vector", index_type, num_partitions=num_partitions, metric=metric, m=16,
                                     ef_construction=100, seed=0, compute=False)
            assert build.plan.engine == "precomputed"
            result = build.compute(scheduler="sync")
            assert result.num_rows_indexed == len(x) and len(result.segments) == 1
        ds = lance.dataset(uri)
        # small ef (Lance's default: 1.5 k) so that the graph, not the beam, finds the neighbours
        recall[who] = [recall_at_k(search(ds, "vector", queries, 10, nprobes=p)[0], truth) for p in (4, 16)]
    recall["lance"] = np.mean([recall.pop(f"lance-{i}") for i in range(3)], axis=0).round(4).tolist()
    print("RECALL", index_type, metric, recall, "PROJECTED", [(n, r and r[0].shape[1]) for n, r in splits])
    # partitions of _PROJECT_ROWS rows or more are built on their leading directions; smaller ones whole
    assert len(splits) == (0 if metric == "dot" else num_partitions)  # under dot, unequal norms: not l2 graphs
    assert all((r is not None) == (n >= hnsw._PROJECT_ROWS) for n, r in splits)
    assert sum(r is not None for _, r in splits) >= (2 if num_partitions == 4 else 0)
    assert recall["ours"][1] > 0.9
    for ours, theirs in zip(recall["ours"], recall["lance"]):
        assert ours >= theirs - 0.01, recall
    # the files are ours: a graph per partition whose nodes are the partition's stored rows
    seg = lance.dataset(str(tmp_path / "ours.lance")).describe_indices()[0].segments[0]
    base = f"{tmp_path}/ours.lance/_indices/{seg.uuid}"
    meta = LanceFileReader(f"{base}/index.idx").metadata().schema.metadata
    assert json.loads(meta[b"lance:index"])["type"] == index_type
    graphs = [json.loads(g) for g in json.loads(meta[b"lance:hnsw"])]
    stats = lance.dataset(str(tmp_path / "ours.lance")).stats.index_stats("vector_idx")
    sizes = [p["size"] for p in stats["indices"][0]["partitions"]]
    assert [g["level_offsets"][1] if g else 0 for g in graphs] == sizes and sum(sizes) == len(x)
    assert all(g["params"]["m"] == 16 and g["params"]["ef_construction"] == 100 for g in graphs if g)


@pytest.mark.parametrize("index_type, dim, grouped", [
    ("IVF_HNSW_FLAT", 32, False), ("IVF_HNSW_FLAT", 128, False), ("IVF_HNSW_SQ", 32, False),
    ("IVF_HNSW_SQ", 128, False), ("IVF_HNSW_FLAT", 128, True), ("IVF_HNSW_SQ", 32, True),
    ("IVF_HNSW_FLAT", 128, "projected"), ("IVF_HNSW_FLAT", 128, "one norm")])
def test_dot_graphs_search_as_well_as_lances_on_the_same_partitions(tmp_path, monkeypatch, index_type, dim, grouped):
    """Under dot, our graphs against Lance's on the same IVF partitions (engine
    ``"partitions"``: our partition map, Lance's graphs), so that only the graphs differ:
    recall@10 at nprobes 4 and 16, without and with refine, 300 queries. Each partition
    holds several clusters of unequal norms; on these, graphs of each node's largest
    products alone (no insertion order, a hub's reverse edges cut at 2 cap before they
    were judged) lost 0.03 to Lance's (32-d SQ rows, 128-d rows). ``grouped``: levels past
    256 nodes take their later nodes' candidates from the groups they are near, as levels
    past DOT_EXACT_ROWS do (groups of 32 rows, 8 probes: a third of a partition's rows).
    ``"projected"``: every level 0 built on its rows' few top directions, as levels of
    _PROJECTED_MIN_ROWS nodes or more are. ``"one norm"``: the rows normalised, their
    graphs built as under l2."""
    x, queries, truth = clustered_with_queries(dim, 300, "dot")
    calls = []
    if grouped == "one norm":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        truth = exact_knn(x, queries, 10, "dot")
        real_graph = hnsw._distinct_level_graph
        monkeypatch.setattr(hnsw, "_distinct_level_graph", lambda *a, **k: calls.append(1) or real_graph(*a, **k))
    elif grouped == "projected":
        monkeypatch.setattr(hnsw_dot, "_PROJECTED_MIN_ROWS", 512)
        real_projection = hnsw_dot._level_projection

        def projection(v):  # the columns each level's projection drops
            basis, spread = real_projection(v)
            calls.append(0 if basis is None else v.shape[1] - basis.shape[1])
            return basis, spread

        monkeypatch.setattr(hnsw_dot, "_level_projection", projection)
    elif grouped:
        for name, value in (("DOT_EXACT_ROWS", 256), ("_GROUP_ROWS", 32), ("_QUERY_ROWS", 64), ("_GROUP_PROBES", 8),
                            ("_GROUPED_SHARE", 1), ("_GROUPED_FOUND", 0)):  # on every level of more than 512 nodes
            monkeypatch.setattr(hnsw_dot, name, value)
        real = hnsw_dot._grouped_largest_products
        monkeypatch.setattr(hnsw_dot, "_grouped_largest_products", lambda *a: calls.append(1) or real(*a))
    recall = {}
    for engine in ("precomputed", "partitions"):
        uri = str(tmp_path / f"{engine}.lance")
        write_vectors(uri, x, max_rows_per_file=5000)
        build = dli.create_index(uri, "vector", index_type, num_partitions=16, metric="dot", m=16,
                                 ef_construction=100, seed=0, engine=engine, compute=False)
        build.compute(scheduler="sync")
        ds = lance.dataset(uri)
        recall[engine] = [recall_at_k(search(ds, "vector", queries, 10, nprobes=p, refine_factor=r)[0], truth)
                          for r in (None, 5) for p in (4, 16)]
    print("RECALL same partitions", index_type, dim, grouped, recall)
    assert min(recall["partitions"]) > 0.9
    assert not grouped or sum(c > 0 for c in calls) >= 16  # level 0 of every partition
    for ours, theirs in zip(recall["precomputed"], recall["partitions"]):
        assert ours >= theirs - 0.01, recall


def segment_contents(uri: str) -> list:
    """The one HNSW segment's ``auxiliary.idx`` and ``index.idx`` tables and its graphs' metadata."""
    seg, = lance.dataset(uri).describe_indices()[0].segments
    base = f"{uri}/_indices/{seg.uuid}"
    files = [LanceFileReader(f"{base}/{f}").read_all().to_table() for f in ("auxiliary.idx", "index.idx")]
    return files + [LanceFileReader(f"{base}/index.idx").metadata().schema.metadata[b"lance:hnsw"]]


def _same_segments_and_found(files: dict, reference: str, x: np.ndarray, uri: str, bound: float) -> None:
    """Every build's segment (:func:`segment_contents`) equals the ``reference`` build's,
    which holds every row; and the index at ``uri`` finds the first rows' neighbours."""
    assert files[reference][0].num_rows == len(x)
    for who, contents in files.items():
        for want, got in zip(files[reference], contents):
            assert want == got, who
    truth = exact_knn(x, x[:50], 10, "l2")
    assert recall_at_k(search(lance.dataset(uri), "vector", x[:50], 10, nprobes=4)[0], truth) > bound


def _wrap(cls, name: str, make=None) -> None:
    """On a worker: ``cls.<name>`` replaced by ``make(the original)``, or with ``make=None``
    the original put back (wrapping again wraps the original, not the last wrapper)."""
    saved = f"unwrapped_{name}"
    original = cls.__dict__.get(saved, cls.__dict__[name])
    if make is not None:
        setattr(cls, saved, original)
        setattr(cls, name, make(original))
    elif saved in cls.__dict__:
        setattr(cls, name, original)
        delattr(cls, saved)


def _counted(cls, counter: str):
    """A ``make`` for :func:`_wrap` that counts the calls in ``cls.<counter>``, from 0."""
    setattr(cls, counter, 0)

    def make(original):
        def counted(self, *a):
            setattr(cls, counter, getattr(cls, counter) + 1)
            return original(self, *a)
        return counted
    return make


def _failing_once(original):
    """A ``make`` for :func:`_wrap` whose first call raises."""
    state = {"failed": False}

    def failing(self, *a):
        if not state["failed"]:
            state["failed"] = True
            raise OSError("injected: a graph task lost its storage")
        return original(self, *a)
    return failing


def _count_runs_spilled(settings: dict, count: bool = True) -> None:
    """On a worker: the precomputed engine's limits set, and the chunks it spills counted
    (or, ``count=False``, no longer)."""
    for k, v in settings.items():
        setattr(precomputed_module, k, v)
    runs = precomputed_module.PartitionRuns
    _wrap(runs, "add", _counted(runs, "spilled") if count else None)


def _count_graphs(count: bool = True) -> None:
    """On a worker: the partition graphs built there counted (or, ``count=False``, no longer)."""
    graphs = graphs_module.PartitionGraphs
    _wrap(graphs, "graph", _counted(graphs, "built") if count else None)


def _fail_first_graph_task(fail: bool = True) -> None:
    """On a worker: the first graph task run there raises (or, ``fail=False``, none does)."""
    _wrap(graphs_module.PartitionGraphs, "__call__", _failing_once if fail else None)


@pytest.mark.parametrize("index_type", ["IVF_HNSW_FLAT", "IVF_HNSW_SQ", "IVF_HNSW_PQ"])
def test_hnsw_in_several_tasks_builds_each_graph_once(cluster_client, tmp_path, monkeypatch, index_type):
    """An HNSW index built in several tasks: the tasks write their rows only, the merge
    concatenates them and builds each partition's graph once. The segment is the one a
    single task writes, table for table, with the synchronous scheduler and on the
    LocalCluster (whose merge hands the graphs to graph tasks on every worker)."""
    x = make_vectors(24000, 16, num_clusters=30, seed=5)
    kw = dict(num_partitions=12, m=8, seed=0, **({"num_sub_vectors": 8} if "PQ" in index_type else {}))
    files, built, default_rows = {}, [], graphs_module.GRAPH_TASK_ROWS
    monkeypatch.setattr(graphs_module.PartitionGraphs, "graph",
                        lambda self, p, rows, *each, graph=graphs_module.PartitionGraphs.graph: built.append(p)
                        or graph(self, p, rows, *each))
    try:
        for who in ("one task", "three tasks", "three tasks on a cluster"):
            uri = str(tmp_path / f"{who.replace(' ', '_')}.lance")
            # a fragment a task: each partition's rows in the same order in both builds
            write_vectors(uri, x, max_rows_per_file=8000)
            run = {"client": cluster_client} if "cluster" in who else {"scheduler": "sync"}
            tasks = 1 if who == "one task" else 3
            build = dli.create_index(uri, "vector", index_type, num_tasks=tasks, compute=False, **kw, **run)
            assert build.plan.engine == "precomputed" and build.plan.num_tasks == tasks
            assert build.plan.graphs_at_merge == (tasks > 1)
            if "cluster" in who:
                cluster_client.run(_count_graphs)
                cluster_client.run(lambda: setattr(graphs_module, "GRAPH_TASK_ROWS", 2000))  # ~12 graph tasks, not 1
            built.clear()
            with get_task_stream(cluster_client) as stream:
                result = build.compute(**run)
            assert result.num_merges == (tasks > 1) and len(result.segments) == 1
            if "cluster" in who:
                counts = cluster_client.run(lambda: graphs_module.PartitionGraphs.built)
                assert sum(counts.values()) == 12  # each partition's graph, once
                assert len({t["worker"] for t in stream.data if t["key"].startswith("dli-graphs-")}) == 2
            else:
                assert sorted(built) == list(range(12))  # each partition's graph, once
            files[who] = segment_contents(uri)
    finally:
        cluster_client.run(_count_graphs, False)
        cluster_client.run(lambda: setattr(graphs_module, "GRAPH_TASK_ROWS", default_rows))
    _same_segments_and_found(files, "one task", x, str(tmp_path / "three_tasks.lance"),
                             0.6 if "PQ" in index_type else 0.9)


def test_several_final_merges_each_hand_their_graphs_to_every_worker(cluster_client, tmp_path):
    """Asked for two segments of four tasks, each of the two final merges builds its own
    segment's graphs as graph tasks on the cluster's workers (not one by one in itself)."""
    x = make_vectors(16000, 16, num_clusters=20, seed=6)
    uri = str(tmp_path / "two.lance")
    write_vectors(uri, x, max_rows_per_file=4000)
    default_rows = graphs_module.GRAPH_TASK_ROWS
    cluster_client.run(lambda: setattr(graphs_module, "GRAPH_TASK_ROWS", 1000))  # several graph tasks a merge
    try:
        with get_task_stream(cluster_client) as stream:
            result = dli.create_index(uri, "vector", "IVF_HNSW_FLAT", num_partitions=8, m=8, seed=0, num_tasks=4,
                                      num_segments=2, client=cluster_client, compute=False).compute()
    finally:
        cluster_client.run(lambda: setattr(graphs_module, "GRAPH_TASK_ROWS", default_rows))
    assert result.num_merges == 2 and len(result.segments) == 2
    runs = [t for t in stream.data if t["key"].startswith("dli-graphs-")]
    assert {t["key"].split("-")[2] for t in runs} == {u.split("-")[0] for u in result.segments}  # both merges'
    assert len({t["worker"] for t in runs}) == 2
    ds = lance.dataset(uri)
    truth = exact_knn(x, x[:50], 10, "l2")
    assert recall_at_k(search(ds, "vector", x[:50], 10, nprobes=4)[0], truth) > 0.9


def test_a_merge_whose_graph_task_fails_is_retried_to_the_same_segment(cluster_client, tmp_path):
    """A graph task of the merge fails: the merge fails, is retried (a new attempt, its own
    graph task keys) and writes the segment the fault-free build writes; nothing is left
    under ``_indices/`` but the committed segment."""
    x = make_vectors(12000, 16, num_clusters=20, seed=7)
    files = {}
    default_rows = graphs_module.GRAPH_TASK_ROWS
    cluster_client.run(lambda: setattr(graphs_module, "GRAPH_TASK_ROWS", 1000))
    try:
        for who in ("clean", "failing"):
            uri = str(tmp_path / f"{who}.lance")
            write_vectors(uri, x, max_rows_per_file=4000)
            if who == "failing":
                cluster_client.run(_fail_first_graph_task)
            with get_task_stream(cluster_client) as stream:
                result = dli.create_index(uri, "vector", "IVF_HNSW_FLAT", num_partitions=8, m=8, seed=0, num_tasks=3,
                                          client=cluster_client, compute=False).compute()
            assert result.num_merges == 1
            files[who] = segment_contents(uri)
            assert index_dirs(uri) == set(result.segments)
            if who == "failing":
                erred = [t for t in stream.data if t.get("status") == "error"]
                assert any(t["key"].startswith("dli-graphs-") for t in erred)
                attempts = {t["key"].split("-")[7] for t in stream.data if t["key"].startswith("dli-graphs-")}
                assert len(attempts) >= 2  # the retried merge's graph tasks are its own
    finally:
        cluster_client.run(_fail_first_graph_task, False)
        cluster_client.run(lambda: setattr(graphs_module, "GRAPH_TASK_ROWS", default_rows))
    for clean, failing in zip(files["clean"], files["failing"]):
        assert clean == failing


def test_hnsw_whose_graphs_lance_builds_stays_one_task(tmp_path):
    """IVF_HNSW_PQ under dot: Lance builds the graphs from our codes, and its merge would
    build every graph again, so the build is one task unless asked otherwise."""
    uri = str(tmp_path / "d.lance")
    write_vectors(uri, make_vectors(12000, 16, seed=1), max_rows_per_file=2000)
    plan = dli.plan_index(uri, "vector", "IVF_HNSW_PQ", metric="dot", num_partitions=8, num_sub_vectors=4,
                          rows_per_task=2000)
    assert plan.num_tasks == 6 and not plan.graphs_at_merge  # asked: as asked, and Lance merges
    plan = dli.plan_index(uri, "vector", "IVF_HNSW_PQ", metric="dot", num_partitions=8, num_sub_vectors=4)
    assert plan.num_tasks == 1 and any("HNSW graph again" in n for n in plan.notes)
    flat = dli.plan_index(uri, "vector", "IVF_HNSW_FLAT", metric="dot", num_partitions=8, rows_per_task=2000)
    assert flat.num_tasks == 6 and flat.graphs_at_merge and flat.builds_graphs(6) and not flat.builds_graphs(0)


@pytest.mark.parametrize("index_type", ["IVF_HNSW_FLAT", "IVF_HNSW_SQ"])
def test_rows_spilled_to_disk_write_the_same_segment(cluster_client, tmp_path, monkeypatch, index_type):
    """Past FLAT_TASK_BYTES the one task that writes an IVF_HNSW_FLAT or IVF_HNSW_SQ segment
    spills its rows to its disk a chunk at a time, sorted by partition, and writes the segment
    from those runs (rather than leave the graphs to Lance): the same rows and graphs, table for
    table, as from the rows held whole, with and without a cluster, and no run left on disk."""
    x = make_vectors(40000, 16, num_clusters=30, seed=4)
    tiny = {"FLAT_TASK_BYTES": 1000, "SPILL_CHUNK_BYTES": 1}  # chunks of one scan batch: 3 runs
    default = {k: getattr(precomputed_module, k) for k in tiny}
    runs = []
    add = PartitionRuns.add
    monkeypatch.setattr(PartitionRuns, "add", lambda self, *a: runs.append(self.dir) or add(self, *a))
    files = {}
    try:
        for who in ("held", "spilled", "spilled on a cluster"):
            uri = str(tmp_path / f"{who.replace(' ', '_')}.lance")
            write_vectors(uri, x, max_rows_per_file=10000)
            if who != "held":
                for k, v in tiny.items():
                    monkeypatch.setattr(precomputed_module, k, v)
            if who == "spilled on a cluster":
                cluster_client.run(_count_runs_spilled, tiny)
            kw = {"client": cluster_client} if "cluster" in who else {"scheduler": "sync"}
            build = dli.create_index(uri, "vector", index_type, num_partitions=10, m=8, seed=0, compute=False, **kw)
            assert build.plan.engine == "precomputed" and build.plan.num_tasks == 1
            build.compute(**kw)
            files[who] = segment_contents(uri)
            if who == "spilled":
                assert len(runs) >= 3 and len(set(runs)) == 1  # several chunks, one directory
                assert not os.path.exists(runs[0])  # removed once the segment is written
            if who == "spilled on a cluster":
                assert sum(cluster_client.run(lambda: precomputed_module.PartitionRuns.spilled).values()) >= 3
    finally:
        cluster_client.run(_count_runs_spilled, default, False)
    _same_segments_and_found(files, "held", x, str(tmp_path / "spilled.lance"), 0.9)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_hnsw_pq_graphs_ours_on_the_storage_lance_writes(tmp_path, monkeypatch, metric):
    """IVF_HNSW_PQ written by us against the same codes handed to Lance (which then builds
    the graphs): the storage file is the same, byte for byte; Lance's graph distances are
    the distances between the codes as we decode them; and our graphs search as well."""
    x, queries, truth = clustered_with_queries(32, 100, metric)
    recall, aux, seg = {}, {}, {}
    for who in ("ours", "lance"):  # lance: Lance builds the graphs from our codes
        uri = str(tmp_path / f"{who}.lance")
        write_vectors(uri, x, max_rows_per_file=5000)
        with monkeypatch.context() as m:
            if who != "ours":  # more rows than one task may hold: the codes go to Lance
                m.setattr(precomputed_module, "FLAT_TASK_BYTES", 10)
            build = dli.create_index(uri, "vector", "IVF_HNSW_PQ", num_partitions=16, num_sub_vectors=8,
                                     metric=metric, m=16, ef_construction=100, seed=0, compute=False)
            assert build.plan.engine == "precomputed"
            handed = []
            hand_off = precomputed_module._hand_off_codes
            m.setattr(precomputed_module, "_hand_off_codes", lambda s: handed.append(1) or hand_off(s))
            build.compute(scheduler="sync")
            assert handed == ([] if who == "ours" else [1])  # who built the graphs
        ds = lance.dataset(uri)
        seg[who], = ds.describe_indices()[0].segments
        reader = LanceFileReader(f"{uri}/_indices/{seg[who].uuid}/auxiliary.idx")
        aux[who] = (reader.read_all().to_table(), reader.metadata().schema.metadata,
                    [bytes(reader.read_global_buffer(i)) for i in (1, 2)])
        recall[who] = [recall_at_k(search(ds, "vector", queries, 10, nprobes=p, refine_factor=r)[0], truth)
                       for p in (4, 16) for r in (None, 5)]
    print("RECALL IVF_HNSW_PQ", metric, recall)
    assert aux["ours"][0].equals(aux["lance"][0]) and aux["ours"][1:] == aux["lance"][1:]
    assert json.loads(json.loads(aux["ours"][1][b"storage_metadata"])[0])["transposed"] is True
    assert recall["ours"][3] > 0.9
    for ours, theirs in zip(recall["ours"], recall["lance"]):
        assert ours >= theirs - 0.01, recall
    # Lance's graph of partition 0 over the codes, measured with our decoding of them
    uri = str(tmp_path / "lance.lance")
    index = LanceFileReader(f"{uri}/_indices/{seg['lance'].uuid}/index.idx")
    graphs = [json.loads(g) for g in json.loads(index.metadata().schema.metadata[b"lance:hnsw"])]
    assert json.loads(index.metadata().schema.metadata[b"lance:index"])["type"] == "IVF_HNSW_PQ"
    n0 = graphs[0]["level_offsets"][1]
    rows, = StoredRows(uri, seg["lance"].uuid, "IVF_HNSW_PQ", transposed=True).read([(0, 0, n0)])
    level0 = index.read_range(0, n0).to_table()
    for node in range(0, n0, max(1, n0 // 50)):
        neighbours = np.array(level0["__neighbors"][node].as_py())
        want = ((rows[node] - rows[neighbours]) ** 2).sum(axis=1)
        np.testing.assert_allclose(level0["_distance"][node].as_py(), want, rtol=1e-4, atol=1e-4)
    ours = LanceFileReader(f"{tmp_path}/ours.lance/_indices/{seg['ours'].uuid}/index.idx").metadata().schema.metadata
    assert json.loads(ours[b"lance:index"]) == {"type": "IVF_HNSW_PQ", "distance_type": metric}
    assert [json.loads(g)["level_offsets"][1] if g else 0 for g in json.loads(ours[b"lance:hnsw"])] == \
        [g["level_offsets"][1] if g else 0 for g in graphs]


@pytest.mark.parametrize("index_type", ["IVF_HNSW_FLAT", "IVF_HNSW_PQ"])
def test_compaction_remaps_our_graphs(tmp_path, index_type):
    x = make_vectors(12000, 32, num_clusters=40, seed=9)
    uri = str(tmp_path / "v.lance")
    write_vectors(uri, x, max_rows_per_file=2000)
    pq = {"num_sub_vectors": 8} if "PQ" in index_type else {}
    dli.create_index(uri, "vector", index_type, num_partitions=8, m=8, engine="precomputed", scheduler="sync", **pq)
    ds = lance.dataset(uri)
    assert "id" in ds.schema.names
    ds.delete("id % 5 = 0")
    ds = lance.dataset(uri)
    kept = np.stack(ds.to_table(columns=["vector"])["vector"].to_numpy(zero_copy_only=False)).astype(np.float32)
    assert len(kept) < len(x)
    ds.optimize.compact_files(target_rows_per_fragment=6000)  # rewrites rows: the index's row ids are remapped
    ds = lance.dataset(uri)
    assert ds.describe_indices()[0].name == "vector_idx"
    rng = np.random.default_rng(1)
    queries = kept[rng.choice(len(kept), 60, replace=False)]
    truth_vectors = kept[exact_knn(kept, queries, 10, "l2")]
    found = ds.to_table(nearest={"column": "vector", "q": queries[0], "k": 10, "nprobes": 8})
    assert found.num_rows == 10
    hits = 0
    for q, want in zip(queries, truth_vectors):
        # PQ codes of 4 dimensions bound IVF_HNSW_PQ's recall: its results re-ranked on the rows
        refine = {"refine_factor": 5} if pq else {}
        got = np.stack(ds.to_table(nearest={"column": "vector", "q": q, "k": 10, "nprobes": 8, **refine})["vector"]
                       .to_numpy(zero_copy_only=False))
        hits += sum(bool(np.any(np.all(g == want, axis=1))) for g in got)
    assert hits / (10 * len(queries)) > 0.9


def test_copy_of_a_built_dataset_keeps_its_graphs(tmp_path):
    """The segment is plain files under the dataset: a copied dataset searches alike."""
    x = make_vectors(6000, 16, num_clusters=20, seed=2)
    uri = str(tmp_path / "a.lance")
    write_vectors(uri, x, max_rows_per_file=3000)
    dli.create_index(uri, "vector", "IVF_HNSW_SQ", num_partitions=4, engine="precomputed", scheduler="sync")
    shutil.copytree(uri, str(tmp_path / "b.lance"))
    a, b = (search(lance.dataset(str(tmp_path / f"{n}.lance")), "vector", x[:20], 10, nprobes=4)[0] for n in "ab")
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("index_type, metric", [("IVF_HNSW_FLAT", "l2"), ("IVF_HNSW_SQ", "l2"), ("IVF_HNSW_PQ", "l2"),
                                                ("IVF_HNSW_SQ", "dot")])
def test_graphs_built_as_tasks_or_in_threads_equal_one_threads(cluster_client, tmp_path, monkeypatch, index_type,
                                                               metric):
    """On a cluster, the one build task hands runs of partitions to graph tasks on every
    worker, which read their rows back from the written file; without one, it builds them
    in a thread per CPU. Each segment is the one a single thread writes, graph for graph
    (under dot too: the graph tasks build dot graphs of the decoded SQ rows)."""
    x = make_vectors(12000, 32, num_clusters=40, seed=5)
    files, default = {}, graphs_module.GRAPH_TASK_ROWS
    threads_used = []
    in_threads = graphs_module._in_threads
    monkeypatch.setattr(graphs_module, "_in_threads", lambda *a: threads_used.append(a[-1]) or in_threads(*a))
    cluster_client.run(lambda: setattr(graphs_module, "GRAPH_TASK_ROWS", 1000))  # ~12 graph tasks, not 1
    try:
        for who in ("one thread", "threads", "cluster"):
            uri = str(tmp_path / f"{who.replace(' ', '_')}.lance")
            write_vectors(uri, x, max_rows_per_file=3000)
            kw = {"client": cluster_client} if who == "cluster" else {"scheduler": "sync"}
            with monkeypatch.context() as m:
                m.setattr(graphs_module, "host_cores", lambda: 1 if who == "one thread" else 3)
                with get_task_stream(cluster_client) as stream:
                    result = dli.create_index(uri, "vector", index_type, num_partitions=12, m=8, seed=0, metric=metric,
                                              **kw, **({"num_sub_vectors": 8} if "PQ" in index_type else {}))
            assert result.count_rows() == len(x)
            files[who] = segment_contents(uri)
            if who == "cluster":
                runs = [t for t in stream.data if t["key"].startswith("dli-graphs-")]
                workers = {t["worker"] for t in runs}
    finally:
        cluster_client.run(lambda: setattr(graphs_module, "GRAPH_TASK_ROWS", default))
    assert threads_used == [3]  # the sync build with three CPUs, not the one with one
    assert len(runs) >= 10 and len(workers) == 2, (len(runs), workers)
    for who in ("threads", "cluster"):
        for one, other in zip(files["one thread"], files[who]):
            assert one == other, who
    assert files["cluster"][1].num_rows >= len(x)  # a graph row per node and level


def test_graph_runs_cover_the_partitions_in_order_within_the_bound():
    sizes = [5, 900, 30, 2500, 1, 1, 700, 400]
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    partitions = [(p, int(s), n) for p, (s, n) in enumerate(zip(starts, sizes))]
    runs = graph_runs(partitions, 1000)
    assert [p for run in runs for p in run] == partitions
    assert all(sum(n for _, _, n in run) <= 1000 or len(run) == 1 for run in runs)
    assert [len(run) for run in runs] == [3, 1, 3, 1]  # each run as full as the bound allows
    assert graph_runs([], 1000) == []


def test_few_large_partitions_make_several_runs_a_worker_thread():
    from dask_lance_index.build.graphs import GRAPH_TASK_ROWS, RUNS_PER_THREAD, run_rows

    assert run_rows(75_122, 2) == -(-75_122 // (2 * RUNS_PER_THREAD)) < GRAPH_TASK_ROWS
    assert run_rows(10_000_000, 2) == GRAPH_TASK_ROWS
    assert run_rows(0, 4) == 1 and run_rows(100, 0) >= 1


def test_a_finished_graph_run_makes_room_while_an_earlier_one_still_runs():
    """_in_order yields in order, but the next item is submitted as soon as any submitted one
    finishes: here the first item finishes only once the fourth has started, which waiting on
    the oldest (two in flight) would never reach; and no more than twice the window is ever
    submitted and not yet taken."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from dask_lance_index.build.graphs import _in_order

    fourth_started = threading.Event()
    state = {"submitted": 0, "taken": 0, "most_held": 0}

    def work(i):
        if i == 3:
            fourth_started.set()
        if i == 0:
            return fourth_started.wait(timeout=20)
        return i

    with ThreadPoolExecutor(4) as pool:
        def submit(i):
            state["submitted"] += 1
            state["most_held"] = max(state["most_held"], state["submitted"] - state["taken"])
            return pool.submit(work, i)

        out = []
        for value in _in_order(submit, range(12), window=2):
            state["taken"] += 1
            out.append(value)
    assert out == [True] + list(range(1, 12))  # item 0 saw item 3 start
    assert state["most_held"] <= 4


def test_the_last_graph_runs_are_submitted_largest_first_and_still_taken_in_order():
    """With a size, the items left once the last is read (within twice the window) are
    submitted largest first, so that the threads end together, but for the last place within
    the bound, kept for the next to take; earlier ones in order. The results come in order,
    and no more than twice the window is ever submitted and not yet taken."""
    from concurrent.futures import ThreadPoolExecutor

    from dask_lance_index.build.graphs import _in_order

    sizes = [3, 9, 1, 7, 2, 8, 0, 4, 5, 6]
    orders = {}
    for window in (1, 2, 8):
        order, state = [], {"submitted": 0, "taken": 0, "most_held": 0}
        with ThreadPoolExecutor(2) as pool:
            def submit(i):
                order.append(i)
                state["submitted"] += 1
                state["most_held"] = max(state["most_held"], state["submitted"] - state["taken"])
                return pool.submit(lambda: i * 10)

            out = []
            for value in _in_order(submit, range(len(sizes)), window, size=sizes.__getitem__):
                state["taken"] += 1
                out.append(value)
        assert out == [i * 10 for i in range(len(sizes))] and state["most_held"] <= 2 * window, window
        orders[window] = order
    assert orders[8] == sorted(range(10), key=lambda i: -sizes[i])  # all within the bound from the start
    assert orders[2] == [0, 1, 2, 3, 4, 5, 6, 9, 8, 7]  # 7-9 read last: sizes 6, 5, 4
    assert orders[1] == [0, 1, 2, 3, 4, 5, 6, 7, 9, 8]  # 9 in the place besides the one kept for 8
    # without a size, in order
    order = []
    with ThreadPoolExecutor(1) as pool:
        assert list(_in_order(lambda i: order.append(i) or pool.submit(lambda: i), range(6), 4)) == list(range(6))
    assert order == list(range(6))


def test_without_a_cluster_a_graph_left_alone_runs_its_pieces_in_the_idle_threads(monkeypatch):
    """_in_threads: one partition in two threads lends its graph the other thread (its pieces
    run by run_each with one spare), and the graph is the one built in turn."""
    from dask_lance_index.build import graphs as graphs_module
    from dask_lance_index.build.graphs import PartitionGraphs, _in_threads

    x = np.random.default_rng(5).standard_normal((9000, 16)).astype(np.float32)  # grouped candidates
    seen = []
    real = graphs_module.run_each
    monkeypatch.setattr(graphs_module, "run_each", lambda fn, items, spare: seen.append(spare()) or real(fn, items, spare))
    maker = PartitionGraphs(m=8, max_level=3, candidates=16, seed=(1,))
    (graph,) = list(_in_threads(maker, [(0, 0, len(x))], lambda p: x, threads=2))
    assert seen and max(seen) == 1
    alone = maker.graph(0, x)
    for a, b in zip(alone.levels, graph.levels):
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)


def test_without_a_cluster_the_graphs_get_the_cores_this_process_may_use(monkeypatch):
    """A CPU set that confines the process (taskset, a container's cpuset) bounds the graph
    threads and the plan's parallelism, not the machine's CPU count."""
    import os

    from dask_lance_index.runtime import parallelism

    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    assert parallelism(None) == 1
    used = []
    monkeypatch.setattr(graphs_module, "_in_threads", lambda *a: used.append(a[-1]) or iter(()))
    graphs = graphs_module.PartitionGraphs(m=4, max_level=3, candidates=8, seed=(0,))
    rows = make_vectors(50, 8, seed=1)
    built = list(graphs.builder(fan_out=True)(None, [(0, 0, 50)], lambda p: rows))
    assert used == [] and len(built) == 1 and built[0].num_nodes == 50  # one thread: built in place
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {1, 5, 6})
    assert parallelism(None) == 3
    list(graphs.builder(fan_out=True)(None, [(0, 0, 50)], lambda p: rows))
    assert used == [3]


def test_a_retried_build_is_not_handed_an_earlier_attempts_graph_tasks(cluster_client, tmp_path):
    """A build task that is retried writes the same segment uuid; a graph task of an
    earlier attempt that the scheduler still holds (here one that failed) must not stand
    in for the new attempt's. The earlier attempt is a build of the same plan on a copy of
    the dataset: its graph tasks' keys, as the task stream saw them, are held failed."""
    x = make_vectors(4000, 16, num_clusters=8, seed=2)
    first, again = str(tmp_path / "first.lance"), str(tmp_path / "again.lance")
    write_vectors(first, x, max_rows_per_file=1000)
    shutil.copytree(first, again)
    build = dli.create_index(first, "vector", "IVF_HNSW_FLAT", num_partitions=4, m=8, seed=0, client=cluster_client,
                             compute=False)
    plan, options = ENGINES[build.plan.engine].prepare(dataclasses.replace(build.plan, uri=again), None)
    retried = build_graph(plan, given_model(), engine_options=options)
    with get_task_stream(cluster_client) as stream:
        build.compute()
    keys = sorted({t["key"] for t in stream.data if str(t["key"]).startswith("dli-graphs-")})
    assert keys, "the build ran no graph tasks on the cluster"

    def earlier_attempt():
        raise RuntimeError("an earlier attempt's graph task")

    held = [cluster_client.submit(earlier_attempt, key=k, pure=False) for k in keys]
    wait(held)
    assert all(f.status == "error" for f in held)
    retried.compute()
    seg, = lance.dataset(again).describe_indices()[0].segments
    assert seg.uuid == build.plan.segment_uuid(0)
    found = search(lance.dataset(again), "vector", x[:50], 10, nprobes=4)[0]
    assert recall_at_k(found, exact_knn(x, x[:50], 10, "l2")) > 0.9


def test_pruning_holds_a_bounded_slice_at_high_dimension():
    """The pruning gathers each node's candidates' rows a slice of nodes at a time; at
    1536-d a slice of 1,024 nodes held 252 MB (503 MB for lists of 80), the size of
    the slice now follows the dimension."""
    x = np.random.default_rng(0).standard_normal((3000, 1536)).astype(np.float32)
    tracemalloc.start()
    try:
        graph = build_hnsw(x, m=20, max_level=3, seed=0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert graph.num_nodes == len(x)
    assert peak < 160 * 2**20, peak / 2**20
