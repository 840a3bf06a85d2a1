"""Evaluation on the cluster: parallel exact kNN against NumPy brute force, and recall@k tables."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import dask_lance_index as dli
from dask_lance_index.datagen import write_vectors
from dask_lance_index.errors import InvalidInputError
from dask_lance_index.evaluation import (
    EvaluationTable,
    evaluate_index,
    exact_knn,
    exact_knn_dataset,
    recall_at_k,
    search,
)

FRAG_ROWS = 2500  # 12,000 rows -> 5 fragments: the merge tree carries an odd one up


@pytest.fixture(scope="module")
def indexed_uri(tmp_path_factory, vectors) -> str:
    """The session's vectors in 5 fragments with a committed IVF_PQ index (built once)."""
    uri = str(tmp_path_factory.mktemp("evaluate") / "vectors.lance")
    write_vectors(uri, vectors, max_rows_per_file=FRAG_ROWS)
    dli.create_index(uri, "vector", "IVF_PQ", num_partitions=16, num_sub_vectors=8, seed=0, scheduler="sync", progress=False)
    return uri


def _true_scores(x: np.ndarray, q: np.ndarray, ids: np.ndarray, metric: str) -> np.ndarray:
    """Float64 distances (lower is nearer) of each query to the rows ``ids``."""
    x = x.astype(np.float64)[ids]
    q = q.astype(np.float64)[:, None, :]
    if metric == "l2":
        return ((x - q) ** 2).sum(-1)
    if metric == "cosine":
        return 1 - (x * q).sum(-1) / np.linalg.norm(x, axis=-1) / np.linalg.norm(q, axis=-1)
    return -(x * q).sum(-1)


@pytest.mark.parametrize("metric", ["l2", "cosine", "dot"])
def test_parallel_exact_knn_equals_numpy_brute_force(indexed_uri, vectors, queries, cluster_client, metric):
    k = 10
    got = exact_knn_dataset(indexed_uri, "vector", queries, k, metric, id_column="id", client=cluster_client)
    want = exact_knn(vectors, queries, k, metric)
    assert got.shape == want.shape == (len(queries), k)
    # Same neighbours in the same order, ties aside: where ids differ, the distances must tie.
    same = (got == want).mean()
    assert same > 0.99, same
    np.testing.assert_allclose(
        _true_scores(vectors, queries, got, metric), _true_scores(vectors, queries, want, metric), rtol=1e-4, atol=1e-5
    )
    # And against an independent float64 brute force over every row.
    xd, qd = vectors.astype(np.float64), queries.astype(np.float64)
    if metric == "l2":
        full = (qd**2).sum(1)[:, None] + (xd**2).sum(1)[None, :] - 2 * qd @ xd.T
    elif metric == "cosine":
        full = 1 - (qd @ xd.T) / np.linalg.norm(qd, axis=1)[:, None] / np.linalg.norm(xd, axis=1)[None, :]
    else:
        full = -(qd @ xd.T)
    kth = np.sort(full, axis=1)[:, k - 1]
    assert (_true_scores(vectors, queries, got, metric).max(axis=1) <= kth + 1e-4 * np.abs(kth) + 1e-5).all()


def test_exact_knn_returns_lance_row_ids_by_default(indexed_uri, vectors, queries):
    got = exact_knn_dataset(indexed_uri, "vector", queries[:50], 5, "l2", scheduler="sync")
    frag, offset = got >> 32, got & 0xFFFFFFFF
    np.testing.assert_array_equal(frag * FRAG_ROWS + offset, exact_knn(vectors, queries[:50], 5, "l2"))


def test_exact_knn_skips_null_and_nan_vectors(tmp_path, vectors, queries):
    x = vectors[:3000].copy()
    truth = exact_knn(x, queries[:20], 3, "l2")
    x[truth[:, 0]] = np.nan  # every query's nearest row becomes unusable
    uri = str(tmp_path / "nan.lance")
    write_vectors(uri, x, max_rows_per_file=1000)
    got = exact_knn_dataset(uri, "vector", queries[:20], 3, "l2", id_column="id", scheduler="sync")
    assert not np.isin(got, truth[:, 0]).any()
    np.testing.assert_array_equal(got, exact_knn(x, queries[:20], 3, "l2"))


def test_exact_knn_graph_is_a_tree_of_pairwise_merges(indexed_uri, queries):
    d = exact_knn_dataset(indexed_uri, "vector", queries, 10, "l2", compute=False)
    names = [k if isinstance(k, str) else k[0] for k in dict(d.dask)]
    leaves = [n for n in names if n.startswith("dli-knn-") and "merge" not in n and "ids" not in n]
    merges = [n for n in names if n.startswith("dli-knn-merge-")]
    assert len(leaves) == 5 and len(merges) == 4  # 5 fragments: 2 + 1 + 1 pairwise merges


def test_recall_at_k_matches_set_definition():
    rng = np.random.default_rng(0)
    truth = np.stack([rng.choice(100, 10, replace=False) for _ in range(50)])
    found = np.stack([rng.choice(100, 10, replace=False) for _ in range(50)])
    found[:, 5:] = -1
    by_sets = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)])
    assert recall_at_k(found, truth) == pytest.approx(by_sets)
    assert recall_at_k(truth, truth) == 1.0


def test_evaluate_index_recall_equals_direct_computation(indexed_uri, vectors, queries, cluster_client):
    queries = queries[:100]
    table = evaluate_index(
        indexed_uri, "vector", queries, 10, nprobes=(1, 16), refine_factors=(None, 5),
        id_column="id", client=cluster_client,
    )
    assert [(r.nprobes, r.refine_factor) for r in table.rows] == [(n, f) for n in (1, 16) for f in (None, 5)]
    assert (table.metric, table.index_type, table.k, table.num_queries) == ("l2", "IVF_PQ", 10, len(queries))
    import lance

    ds = lance.dataset(indexed_uri)
    truth = exact_knn(vectors, queries, 10, "l2")
    for r in table.rows:
        found, _ = search(ds, "vector", queries, 10, nprobes=r.nprobes, refine_factor=r.refine_factor)
        assert r.recall == pytest.approx(recall_at_k(found, truth), abs=1e-6), r
    # More probes and refinement find more true neighbours on this data.
    assert table.recall(16, 5) > table.recall(1, None)
    assert table.recall(16, 5) > 0.8


def test_evaluate_index_row_ids_and_given_truth(indexed_uri, vectors, queries):
    q = queries[:40]
    by_rowid = evaluate_index(indexed_uri, "vector", q, 10, nprobes=(4,), refine_factors=(5,), scheduler="sync")
    truth = exact_knn(vectors, q, 10, "l2")
    by_id = evaluate_index(indexed_uri, "vector", q, 10, nprobes=(4,), refine_factors=(5,), id_column="id", truth=truth)
    assert by_id.exact_seconds == 0.0
    assert by_rowid.rows[0].recall == pytest.approx(by_id.rows[0].recall, abs=1e-6)


def test_evaluation_table_round_trips_and_renders(indexed_uri, queries):
    table = evaluate_index(indexed_uri, "vector", queries[:30], 5, nprobes=(2, 8), refine_factors=(None, 3), scheduler="sync")
    assert EvaluationTable.from_json(table.to_json()) == table
    assert pickle.loads(pickle.dumps(table)) == table
    md = table.to_markdown()
    assert md.count("\n| ") == 1 + len(table.rows) and "recall@5" in md
    df = table.to_pandas()
    assert list(df["nprobes"]) == [2, 2, 8, 8] and df["recall"].tolist() == [r.recall for r in table.rows]
    import matplotlib

    matplotlib.use("Agg")
    fig = table.plot()
    left, right = fig.axes
    assert len(left.lines) == len(right.lines) == 2  # one line per refine factor
    assert list(left.lines[1].get_ydata()) == [table.recall(2, 3), table.recall(8, 3)]


def test_evaluate_index_bad_input_is_refused_before_work(indexed_uri, tmp_path, vectors, queries):
    with pytest.raises(InvalidInputError, match=r"shape \(num_queries, 32\)"):
        evaluate_index(indexed_uri, "vector", queries[:, :16], scheduler="sync")
    with pytest.raises(InvalidInputError, match="nprobes"):
        evaluate_index(indexed_uri, "vector", queries, nprobes=(0,), scheduler="sync")
    with pytest.raises(InvalidInputError, match="metric"):
        evaluate_index(indexed_uri, "vector", queries, metric="hamming", scheduler="sync")
    bare = str(tmp_path / "bare.lance")
    write_vectors(bare, vectors[:2000])
    with pytest.raises(InvalidInputError, match="no index on column 'vector'"):
        evaluate_index(bare, "vector", queries, scheduler="sync")


def test_fewer_usable_rows_than_k_pads_with_minus_one(tmp_path, vectors, queries):
    x = vectors[:6].copy()
    x[4] = np.nan
    got = exact_knn(x, queries[:3], 8, "l2")
    assert (got[:, 5:] == -1).all() and set(got[0, :5]) == {0, 1, 2, 3, 5}
    uri = str(tmp_path / "tiny.lance")
    write_vectors(uri, x, max_rows_per_file=2)  # 3 fragments of 2 rows: every task holds fewer than k
    np.testing.assert_array_equal(
        exact_knn_dataset(uri, "vector", queries[:3], 8, id_column="id", scheduler="sync"), got
    )


def test_running_top_k_over_many_blocks_equals_one_sort():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((20_000, 16)).astype(np.float32)
    q = rng.standard_normal((30, 16)).astype(np.float32)
    want = np.argsort(((q[:, None, :] - x[None]) ** 2).sum(-1), axis=1, kind="stable")[:, :7]
    for batch in (1000, 1024, 4097, 20_000):
        np.testing.assert_array_equal(exact_knn(x, q, 7, "l2", batch=batch), want)
