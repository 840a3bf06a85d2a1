"""Merging segments this library wrote by concatenating their partitions (storage.concat_segments).

A build in three tasks merges its three segments into one; with the model of a
one-task build (the same seed trains the same model) the merged segment must
hold the one-task segment's rows in the same partitions with the same codes, so
every search returns the same distances.
"""

from __future__ import annotations

import lance
import numpy as np
import pyarrow as pa
import pytest

import dask_lance_index as dli
from dask_lance_index.datagen import make_vectors, write_vectors
from dask_lance_index.evaluation import exact_knn, recall_at_k
from dask_lance_index.merge import merge as merge_module
from dask_lance_index.merge.merge import concatenates
from dask_lance_index.plan import segment_uuid
from dask_lance_index.storage import concat_segments
from dask_lance_index.storage.segment_concat import _runs

TYPES = {
    "IVF_FLAT": {},
    "IVF_SQ": {},
    "IVF_PQ": {"num_sub_vectors": 8},
    "IVF_RQ": {},
}


@pytest.fixture(scope="module")
def vectors():
    return make_vectors(24_000, 32, seed=7)


def _build(tmp_path, vectors, index_type, num_tasks, **kw):
    tmp_path.mkdir(parents=True, exist_ok=True)
    uri = str(tmp_path / f"{index_type}-{num_tasks}.lance")
    write_vectors(uri, vectors, max_rows_per_file=4000)
    result = dli.create_index(uri, "vector", index_type, num_partitions=32, seed=3, num_tasks=num_tasks,
                              compute=False, **TYPES[index_type], **kw).compute(scheduler="sync")
    return uri, result


def _search(uri, queries, nprobes=4, k=20):
    ds = lance.dataset(uri)
    out = []
    for q in queries:
        t = ds.to_table(nearest={"column": "vector", "q": q, "k": k, "nprobes": nprobes}, columns=["id"])
        out.append((t["id"].to_numpy(), t["_distance"].to_numpy()))
    return out


def _sizes(uri):
    stats = lance.dataset(uri).stats.index_stats("vector_idx")
    return [[p["size"] for p in seg["partitions"]] for seg in stats["indices"]]


@pytest.mark.parametrize("index_type", list(TYPES))
def test_three_segments_concatenated_search_as_the_one_segment_of_one_task(tmp_path, vectors, index_type,
                                                                           monkeypatch):
    if index_type == "IVF_RQ":
        # RaBitQ's extra bits of a few rows (about 5% here) round differently when
        # the rows are encoded in other batches, so a one-task build is not the
        # reference: Lance's merge of the same three segments is
        with monkeypatch.context() as m:
            m.setattr(merge_module, "concatenates", lambda plan, inputs: False)
            one_uri, one = _build(tmp_path / "lance", vectors, index_type, 3)
        assert one.num_merges == 1 and one.segments[0] != segment_uuid(one.build_id, 3)
    else:
        one_uri, one = _build(tmp_path, vectors, index_type, 1)
        assert one.num_merges == 0
    three_uri, three = _build(tmp_path, vectors, index_type, 3)
    assert three.num_segments_built == 3 and three.num_merges == 1
    # the merged segment is ours (the build's uuid for merge slot 3), not one Lance named
    assert three.segments == (segment_uuid(three.build_id, 3),)
    assert _sizes(three_uri) == _sizes(one_uri)
    queries = vectors[::997] + 0.01
    for (ids1, d1), (ids3, d3) in zip(_search(one_uri, queries), _search(three_uri, queries)):
        np.testing.assert_allclose(d3, d1, rtol=1e-5, atol=1e-5)  # the same codes in the same partitions
        assert len(set(ids1) & set(ids3)) >= len(ids1) - 2  # ties at the cut may swap
    # every row is found by its own vector (no row lost, none indexed twice)
    ds = lance.dataset(three_uri)
    assert ds.stats.index_stats("vector_idx")["num_indexed_rows"] == len(vectors)


def test_partial_merges_stay_row_major_and_merge_again_on_update(tmp_path, vectors):
    # two final segments of two inputs each: neither covers every fragment
    uri, result = _build(tmp_path, vectors, "IVF_PQ", 4, num_segments=2)
    assert result.num_merges == 2 and len(result.segments) == 2
    assert set(result.segments) == {segment_uuid(result.build_id, 4), segment_uuid(result.build_id, 5)}
    one_uri, _ = _build(tmp_path, vectors, "IVF_PQ", 1)
    queries = vectors[::1999] + 0.01
    for (_, d1), (_, d2) in zip(_search(one_uri, queries, nprobes=32), _search(uri, queries, nprobes=32)):
        np.testing.assert_allclose(d2, d1, rtol=1e-5, atol=1e-5)


def test_a_cluster_build_concatenates_on_a_worker(tmp_path, vectors, cluster_client):
    uri = str(tmp_path / "cluster.lance")
    write_vectors(uri, vectors, max_rows_per_file=4000)
    result = dli.create_index(uri, "vector", "IVF_PQ", num_partitions=32, num_sub_vectors=8, seed=3, num_tasks=3,
                              client=cluster_client, compute=False).compute()
    assert result.segments == (segment_uuid(result.build_id, 3),)
    one_uri, _ = _build(tmp_path, vectors, "IVF_PQ", 1)
    queries = vectors[::2999] + 0.01
    for (_, d1), (_, d3) in zip(_search(one_uri, queries), _search(uri, queries)):
        np.testing.assert_allclose(d3, d1, rtol=1e-5, atol=1e-5)


def test_only_this_builds_precomputed_segments_are_concatenated(tmp_path, vectors):
    plan = dli.plan_index(_build(tmp_path, vectors, "IVF_FLAT", 1)[0], "vector", "IVF_FLAT", num_partitions=32,
                          replace=True)

    class Seg:
        def __init__(self, slot):
            self.slot = slot

    assert plan.engine == "precomputed" and concatenates(plan, [Seg(0), Seg(1)])
    assert not concatenates(plan, [Seg(0), Seg(-1)])  # a committed segment: Lance merges it
    # HNSW segments of this build's tasks are concatenated (storage only, graphs at the merge) ...
    hnsw = dli.plan_index(plan.uri, "vector", "IVF_HNSW_FLAT", num_partitions=32, replace=True, num_tasks=3)
    assert hnsw.graphs_at_merge and concatenates(hnsw, [Seg(0), Seg(1)])
    # ... but not where Lance builds the graphs (IVF_HNSW_PQ under dot): Lance merges those
    dot = dli.plan_index(plan.uri, "vector", "IVF_HNSW_PQ", num_partitions=32, num_sub_vectors=8, metric="dot",
                         replace=True, num_tasks=3)
    assert dot.engine == "precomputed" and not dot.graphs_at_merge and not concatenates(dot, [Seg(0), Seg(1)])


@pytest.mark.parametrize("index_type", list(TYPES) + ["IVF_HNSW_FLAT", "IVF_HNSW_SQ", "IVF_HNSW_PQ"])
def test_a_task_with_no_row_to_index_is_concatenated_with_the_others(tmp_path, index_type):
    """A build task whose fragments hold only null vectors writes its own empty segment,
    which the merge concatenates with the others. (Lance's own empty segment, written
    there before, has another schema, and for SQ other bounds: IVF_FLAT's merge failed,
    IVF_SQ's merged index found nothing and IVF_HNSW_SQ's the wrong rows.)"""
    x = make_vectors(6000, 16, seed=3)
    uri = str(tmp_path / "nulls.lance")
    vectors = pa.array([None if i < 2000 else v for i, v in enumerate(x.tolist())], type=pa.list_(pa.float32(), 16))
    lance.write_dataset(pa.table({"id": pa.array(np.arange(6000)), "vector": vectors}), uri, max_rows_per_file=2000)
    kw = {**TYPES.get(index_type, {}), **({"num_sub_vectors": 8} if "PQ" in index_type else {})}
    with pytest.warns(UserWarning, match="2000 null vectors"):
        result = dli.create_index(uri, "vector", index_type, num_partitions=8, num_tasks=3, seed=0, compute=False,
                                  **kw).compute(scheduler="sync")
    assert result.num_segments_built == 3 and result.num_merges == 1
    queries = x[2000::400] + 0.01
    found = [ids for ids, _ in _search(uri, queries, nprobes=8, k=10)]
    truth = exact_knn(x[2000:], queries, 10, "l2") + 2000
    assert recall_at_k(np.array(found), truth) > (0.5 if "Q" in index_type else 0.95)


def test_runs_cover_every_partition_once_within_the_bound():
    lengths = np.array([5, 0, 7, 20, 1, 1, 3, 0])
    runs = _runs(lengths, 8)
    assert runs[0][0] == 0 and runs[-1][1] == len(lengths)
    assert all(a[1] == b[0] for a, b in zip(runs, runs[1:]))
    # at most 8 rows a run, unless one partition alone is larger
    assert all(lengths[a:b].sum() <= 8 or b - a == 1 for a, b in runs)


def test_segments_of_different_models_are_refused(tmp_path, vectors):
    a_uri, a = _build(tmp_path, vectors[:12000], "IVF_FLAT", 1)
    b_uri = str(tmp_path / "other.lance")
    write_vectors(b_uri, vectors[:12000], max_rows_per_file=4000)
    b = dli.create_index(b_uri, "vector", "IVF_FLAT", num_partitions=32, seed=4, compute=False).compute(
        scheduler="sync")
    # copy b's segment beside a's, then ask for both together
    import shutil

    shutil.copytree(f"{b_uri}/_indices/{b.segments[0]}", f"{a_uri}/_indices/{b.segments[0]}")
    with pytest.raises(dli.InvalidInputError, match="different models"):
        concat_segments(a_uri, [a.segments[0], b.segments[0]], "00000000-0000-0000-0000-000000000000",
                        index_type="IVF_FLAT", whole=False)
