"""End-to-end builds on real Lance datasets, on the synchronous scheduler and a real LocalCluster."""

import json
import os
import pickle

import lance
import numpy as np
import pyarrow as pa
import pytest

import dask_lance_index as dli
from dask_lance_index.datagen import vector_table, write_vectors
from dask_lance_index.evaluation import exact_knn, recall_at_k, search

from .conftest import committed_segment_uuids, index_dirs


def recall(ds, queries, truth, nprobes=8, **kw):
    found, _ = search(ds, "vector", queries, 10, nprobes=nprobes, **kw)
    return recall_at_k(found, truth)


def test_ivf_pq_on_sync_scheduler_is_a_good_committed_index(dataset_uri, vectors, queries):
    before = lance.dataset(dataset_uri).version
    build = dli.create_index(
        dataset_uri, "vector", "IVF_PQ", num_partitions=16, num_sub_vectors=8,
        num_tasks=3, compute=False, seed=1,
    )
    assert isinstance(build, dli.IndexBuild)
    # lazy: nothing written, nothing committed
    assert lance.dataset(dataset_uri).version == before and index_dirs(dataset_uri) == set()
    result = build.compute(scheduler="sync")
    assert isinstance(result, dli.BuildResult)
    assert result.version == before + 1 and result.read_version == before
    assert result.num_segments_built == 3 and result.num_merges == 1 and len(result.segments) == 1
    assert result.num_rows_indexed == len(vectors) and result.num_rows_skipped == 0
    assert set(result.seconds) >= {"plan", "sample", "train", "build", "merge", "commit"}
    ds = result.dataset()
    desc = ds.describe_indices()
    assert [d.name for d in desc] == ["vector_idx"] and desc[0].index_type == "IVF_PQ"
    # nothing under _indices/ that the index does not use: the three built segments are gone
    assert index_dirs(dataset_uri) == committed_segment_uuids(ds) == set(result.segments)
    truth = exact_knn(vectors, queries, 10, "l2")
    r = recall(ds, queries, truth, nprobes=8, refine_factor=5)
    assert r > 0.9, r
    json.loads(result.to_json())
    assert dli.BuildResult.from_dict(result.to_dict()) == result


def test_ivf_flat_on_local_cluster_with_staged_merges(dataset_uri, vectors, queries, cluster_client):
    plan = dli.plan_index(dataset_uri, "vector", "IVF_FLAT", num_partitions=16, num_tasks=4, merge_fan_in=2)
    assert [len(st) for st in plan.merges.stages] == [2, 1]  # 4 -> 2 -> 1
    ds = dli.create_index(
        dataset_uri, "vector", "IVF_FLAT", num_partitions=16, num_tasks=4, merge_fan_in=2,
        client=cluster_client,
    )
    assert isinstance(ds, lance.LanceDataset)
    assert len(committed_segment_uuids(ds)) == 1
    assert index_dirs(dataset_uri) == committed_segment_uuids(ds)
    truth = exact_knn(vectors, queries, 10, "l2")
    assert recall(ds, queries, truth, nprobes=16) == pytest.approx(1.0)  # all partitions: exact
    assert recall(ds, queries, truth, nprobes=4) > 0.9


def test_ivf_rq_on_local_cluster_shares_one_rotation(dataset_uri, vectors, queries, cluster_client):
    build = dli.create_index(
        dataset_uri, "vector", "IVF_RQ", num_partitions=16, num_tasks=4, metric="cosine",
        client=cluster_client, compute=False,
    )
    result = cluster_client.compute(build).result()
    assert result.num_merges == 1 and len(result.segments) == 1
    ds = result.dataset()
    stats = ds.stats.index_stats("vector_idx")
    assert stats["num_indexed_rows"] == len(vectors)
    truth = exact_knn(vectors, queries, 10, "cosine")
    assert recall(ds, queries, truth, nprobes=8, refine_factor=5) > 0.9


@pytest.mark.parametrize("engine", ["auto", "partitions"])
def test_sq_segments_merge_only_when_they_share_bounds(tmp_path, vectors, queries, engine):
    """Our IVF_SQ segments share the model's bounds and merge into one; Lance-encoded
    ones (each with its own bounds) are committed unmerged. Same recall either way."""
    uri = str(tmp_path / "sq.lance")
    write_vectors(uri, vectors, max_rows_per_file=2000)
    build = dli.create_index(uri, "vector", "IVF_SQ", num_partitions=16, num_tasks=3, engine=engine, seed=1,
                             compute=False)
    result = build.compute(scheduler="sync")
    ds = result.dataset()
    assert committed_segment_uuids(ds) == set(result.segments) == index_dirs(uri)
    if engine == "auto":
        assert build.plan.engine == "precomputed" and "sq_bounds" in build.plan.train
        assert result.num_merges == 1 and len(result.segments) == 1
        start, end = dli.load_model(uri, "vector_idx").model.sq_bounds
        # the sample (65,536 rows at most, as Lance's) holds every row here: the data's own range
        assert (start, end) == (float(vectors.min()), float(vectors.max()))
    else:
        assert result.num_merges == 0 and len(result.segments) == 3
    truth = exact_knn(vectors, queries, 10, "l2")
    assert recall(ds, queries, truth, nprobes=8) > 0.85


def test_sq_sampling_tasks_send_on_ivf_rows_and_the_bounds_of_all_they_drew(tmp_path, vectors):
    """Where Lance's SQ sample (65,536 rows) outnumbers IVF's, each sampling task reduces all
    the rows it drew to their SQ bounds (in the metric's space) and sends on only its share of
    IVF's rows, drawn from those rows."""
    from dask_lance_index.model import normalize_rows
    from dask_lance_index.train import SampleFragment, kept_samples

    uri = str(tmp_path / "sq.lance")
    write_vectors(uri, vectors * np.linspace(0.5, 2, len(vectors), dtype=np.float32)[:, None],
                  max_rows_per_file=2000)
    plan = dli.plan_index(uri, "vector", "IVF_SQ", num_partitions=4, metric="cosine")
    kept = kept_samples(plan)
    assert sum(kept) == 4 * plan.params.sample_rate < sum(plan.samples)
    assert all(k <= n for k, n in zip(kept, plan.samples)) and len(kept) == len(plan.fragments) > 1
    assert kept_samples(dli.plan_index(uri, "vector", "IVF_FLAT", num_partitions=4)) is None
    assert kept_samples(dli.plan_index(uri, "vector", "IVF_SQ", num_partitions=300)) is None  # IVF's are more
    sample = SampleFragment(uri, plan.version, "vector", plan.dimension, None, plan.build_id, metric="cosine")
    for f, n, k in zip(plan.fragments, plan.samples, kept):
        drawn, _ = sample(f.fragment_id, f.num_rows, n)
        rows, _, (start, end, count) = sample(f.fragment_id, f.num_rows, n, k)
        unit = normalize_rows(drawn)
        assert count == len(drawn) and (start, end) == (float(unit.min()), float(unit.max()))
        assert (start, end) != (float(drawn.min()), float(drawn.max())) and len(rows) == k  # unit rows
        assert (rows[:, None, :] == drawn[None, :, :]).all(axis=2).any(axis=1).all()


def test_the_model_is_one_key_every_build_task_depends_on(dataset_uri):
    build = dli.create_index(
        dataset_uri, "vector", "IVF_PQ", num_partitions=16, num_sub_vectors=8, num_tasks=3, compute=False
    )
    graph = dict(build.__dask_graph__())
    tok = build.plan.build_id[:8]
    art_key = f"dli-model-{tok}"
    plan_key = f"dli-plan-{tok}"
    builds = [k for k in graph if str(k).startswith(f"dli-build-{tok}")]
    assert len(builds) == 3
    deps = {k: graph[k].dependencies for k in builds}
    for k in builds:
        assert art_key in deps[k] and plan_key in deps[k]
    # No array is embedded in any build task: their pickles stay small
    for k in builds:
        assert len(pickle.dumps(graph[k])) < 2000
    samples = [k for k in graph if str(k).startswith(f"dli-sample-{tok}")]
    assert len(samples) == 4  # one per fragment
    assert set(samples) <= set(graph[art_key].dependencies)


def test_a_given_model_skips_training_and_is_one_key(dataset_uri, vectors, queries):
    from dask_lance_index.model import residuals, train_ivf, train_pq

    x = vectors[np.random.default_rng(0).choice(len(vectors), 4096, replace=False)]
    c, _ = train_ivf(x, 16, "l2", max_iters=30, seed=0)
    cb = train_pq(residuals(x, c, "l2"), 8, 8, max_iters=30, seed=0)
    build = dli.create_index(
        dataset_uri, "vector", "IVF_PQ", ivf_centroids=c, pq_codebook=cb, num_sub_vectors=8,
        num_tasks=2, compute=False,
    )
    assert build.plan.train == () and build.plan.params.num_partitions == 16
    graph = dict(build.__dask_graph__())
    assert not any("sample" in str(k) for k in graph)
    result = build.compute(scheduler="sync")
    truth = exact_knn(vectors, queries, 10, "l2")
    assert recall(result.dataset(), queries, truth, nprobes=8, refine_factor=5) > 0.9
    stats = result.dataset().stats.index_stats("vector_idx")
    assert stats["indices"][0]["num_partitions"] == 16


@pytest.mark.parametrize("index_type, kw", [("IVF_FLAT", {}), ("IVF_PQ", {"num_sub_vectors": 8})])
def test_null_and_nan_vectors_are_counted_and_warned(tmp_path, vectors, queries, index_type, kw):
    uri = str(tmp_path / "holes.lance")
    x = vectors[:6000].copy()
    x[10] = np.nan
    x[20, 3] = np.nan
    x[30, 0] = np.inf
    tbl = vector_table(x)
    vec = tbl.column("vector").combine_chunks()
    mask = np.zeros(len(x), dtype=bool)
    mask[[40, 50, 4000]] = True
    with_nulls = pa.FixedSizeListArray.from_arrays(vec.values, 32, mask=pa.array(mask))
    tbl = tbl.set_column(1, "vector", with_nulls)
    lance.write_dataset(tbl, uri, max_rows_per_file=2000)
    with pytest.warns(UserWarning, match=r"6 rows were not indexed: 3 null vectors and 3 vectors with NaN"):
        result = dli.create_index(
            uri, "vector", index_type, num_partitions=8, num_tasks=2, compute=False, **kw
        ).compute(scheduler="sync")
    assert (result.null_rows, result.nan_rows, result.num_rows_skipped) == (3, 3, 6)
    assert result.num_rows_indexed == 6000 - 6
    good = np.isfinite(x).all(axis=1) & ~mask
    truth_rows = exact_knn(np.where(good[:, None], x, np.nan), queries, 10, "l2")
    found, _ = search(result.dataset(), "vector", queries, 10, nprobes=8, refine_factor=20)
    assert recall_at_k(found, truth_rows) > 0.98
    assert result.dataset().stats.index_stats("vector_idx")["num_indexed_rows"] == 6000  # Lance counts them anyway


def test_unindexed_rows_are_warned_in_the_callers_process_on_a_cluster(tmp_path, vectors, cluster_client):
    uri = str(tmp_path / "nan_cluster.lance")
    x = vectors[:4000].copy()
    x[[3, 7]] = np.nan
    lance.write_dataset(vector_table(x), uri, max_rows_per_file=2000)
    with pytest.warns(UserWarning, match="2 rows were not indexed"):
        ds = dli.create_index(uri, "vector", "IVF_FLAT", num_partitions=8, num_tasks=2, client=cluster_client)
    assert ds.describe_indices()[0].name == "vector_idx"


def test_replace_swaps_the_index_in_one_commit(dataset_uri):
    ds = dli.create_index(dataset_uri, "vector", "IVF_FLAT", num_partitions=8, num_tasks=2, scheduler="sync")
    old = committed_segment_uuids(ds)
    with pytest.raises(dli.IndexExistsError, match="replace=True"):
        dli.create_index(dataset_uri, "vector", "IVF_FLAT", num_partitions=8, scheduler="sync")
    v = lance.dataset(dataset_uri).version
    ds2 = dli.create_index(dataset_uri, "vector", "IVF_PQ", num_partitions=16, num_sub_vectors=4, replace=True, num_tasks=2, scheduler="sync")
    assert ds2.version == v + 1  # one commit, no drop-then-create window
    desc = ds2.describe_indices()
    assert len(desc) == 1 and desc[0].index_type == "IVF_PQ"
    assert committed_segment_uuids(ds2).isdisjoint(old)  # no delta beside the old index
    assert desc[0].num_rows_indexed == ds2.count_rows()


def test_compaction_during_the_build_is_refused_and_leaves_nothing(tmp_path, vectors):
    uri = str(tmp_path / "compact.lance")
    from dask_lance_index.datagen import write_vectors

    write_vectors(uri, vectors[:6000], max_rows_per_file=1000)
    build = dli.create_index(uri, "vector", "IVF_PQ", num_partitions=8, num_sub_vectors=4, num_tasks=3, compute=False)
    lance.dataset(uri).optimize.compact_files(target_rows_per_fragment=6000)  # a writer compacts mid-build
    compacted = lance.dataset(uri).version
    with pytest.raises(dli.DatasetChangedError, match="compacted or deleted"):
        dli.run(build, scheduler="sync")
    ds = lance.dataset(uri)
    assert ds.version == compacted and ds.describe_indices() == []
    assert index_dirs(uri) == set()


def test_an_index_committed_by_another_writer_during_the_build(dataset_uri):
    build = dli.create_index(dataset_uri, "vector", "IVF_FLAT", num_partitions=8, num_tasks=2, compute=False)
    lance.dataset(dataset_uri).create_index("vector", "IVF_FLAT", num_partitions=4)  # same default name
    theirs = committed_segment_uuids(lance.dataset(dataset_uri))
    with pytest.raises(dli.IndexExistsError, match="another writer"):
        dli.run(build, scheduler="sync")
    # their index is intact, and none of our segments is left behind
    assert committed_segment_uuids(lance.dataset(dataset_uri)) == theirs == index_dirs(dataset_uri)


def test_a_failing_build_task_removes_the_segments_already_written(dataset_uri, vectors, monkeypatch):
    import os

    import dask_lance_index.recovery.leftovers as cleanup

    removed = []
    real = cleanup.remove_index_dir
    monkeypatch.setattr(cleanup, "remove_index_dir", lambda *a: removed.append(real(*a)) or removed[-1])

    # Given centroids: no sampling, so the build tasks run and write before one fails.
    centroids = vectors[:8].copy()
    build = dli.create_index(
        dataset_uri, "vector", "IVF_FLAT", ivf_centroids=centroids, num_tasks=4, compute=False
    )
    ds = lance.dataset(dataset_uri)
    last = build.plan.groups[0][0]  # make one task's fragment unreadable
    os.remove(os.path.join(dataset_uri, "data", ds.get_fragment(last).data_files()[0].path))
    with pytest.raises(pa.lib.ArrowInvalid, match="Not found: .*/data/.*\\.lance"):  # the fragment's file
        dli.run(build, scheduler="sync")
    assert any(removed), "no segment had been written before the failure: the test proves nothing"
    assert index_dirs(dataset_uri) == set()
    assert lance.dataset(dataset_uri).version == ds.version


@pytest.mark.parametrize("metric", ["l2", "cosine", "dot"])
def test_precomputed_codes_equal_lance_encoding(tmp_path, vectors, queries, metric):
    """Our BLAS encoding handed to Lance gives the index Lance's own encoding gives,
    on the same model (for dot: Lance's one-segment build, since its partial
    dot segments are mis-encoded)."""
    from dask_lance_index.datagen import write_vectors
    from dask_lance_index.model import prepare_vectors, residuals, train_ivf, train_pq

    x = prepare_vectors(vectors[np.random.default_rng(0).choice(len(vectors), 4096, replace=False)], metric)
    c, _ = train_ivf(x, 16, metric, max_iters=30, seed=0)
    cb = train_pq(residuals(x, c, metric), 8, 8, max_iters=30, seed=0)
    truth = exact_knn(vectors, queries, 10, metric)
    got = {}
    for engine in ("lance", "precomputed"):
        uri = str(tmp_path / f"{engine}.lance")
        write_vectors(uri, vectors, max_rows_per_file=3000)
        build = dli.create_index(
            uri, "vector", "IVF_PQ", metric=metric, ivf_centroids=c, pq_codebook=cb, num_sub_vectors=8,
            num_tasks=3, engine=engine, compute=False,
        )
        assert build.plan.engine == engine
        result = build.compute(scheduler="sync")
        if engine == "precomputed" or metric != "dot":
            assert result.num_segments_built == 3
        got[engine] = recall(result.dataset(), queries, truth, nprobes=6)
    assert got["precomputed"] == pytest.approx(got["lance"], abs=0.005), got


def test_finite_screen_keeps_rows_whose_sum_overflows_and_drops_every_non_finite_row():
    # The reader screens rows by their float32 sum; a finite row whose sum
    # overflows must still count as valid, and +inf/-inf in one row (sum NaN) not.
    from dask_lance_index.storage import to_float32_matrix

    x = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    x[1, 2] = np.nan
    x[3, 0] = np.inf
    x[4] = 3e38  # finite, but the sum overflows to inf
    x[5, 1], x[5, 2] = -np.inf, np.inf
    x[6] = -3e38
    arr = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 4)
    got, valid = to_float32_matrix(arr, 4)
    assert valid.tolist() == [True, False, True, False, True, False, True, True]
    assert np.array_equal(valid, np.isfinite(x).all(axis=1))
    np.testing.assert_array_equal(got[valid], x[valid])


def _row_partitions(ds, name="vector_idx") -> dict[int, int]:
    """``{row id: IVF partition}`` of every row the committed index holds, read from its segments'
    ``auxiliary.idx`` (row ids in partition order, partition lengths in the IVF buffer)."""
    from lance.file import LanceFileReader

    from dask_lance_index.storage.segment_files import _ivf_lengths

    out = {}
    for seg in (s for d in ds.describe_indices() if d.name == name for s in d.segments):
        reader = LanceFileReader(os.path.join(ds.uri, "_indices", seg.uuid, "auxiliary.idx"))
        meta = reader.metadata().schema.metadata
        lengths = _ivf_lengths(bytes(reader.read_global_buffer(int(meta[b"lance:ivf"]))))
        row_ids = reader.read_all().to_table().column("_rowid").to_numpy()
        parts = np.repeat(np.arange(len(lengths)), lengths)
        assert len(parts) == len(row_ids)
        out.update(zip(row_ids.tolist(), parts.tolist()))
    return out


@pytest.mark.parametrize("index_type", ["IVF_FLAT", "IVF_RQ"])
@pytest.mark.parametrize("metric", ["l2", "cosine", "dot"])
def test_partitions_engine_assigns_every_row_where_lance_does(tmp_path, vectors, index_type, metric):
    # Same seed, same model: our BLAS assignment must put every row in the
    # partition Lance's own assignment picks, NaN and null rows left out as Lance does.
    x = vectors[:6000].copy()
    x[[5, 17]] = np.nan
    rows = {}
    for engine in ("lance", "partitions"):
        uri = str(tmp_path / f"{engine}.lance")
        lance.write_dataset(vector_table(x), uri, max_rows_per_file=1500)
        build = dli.create_index(
            uri, "vector", index_type, num_partitions=16, metric=metric, num_tasks=2, seed=3,
            engine=engine, compute=False,
        )
        assert build.plan.engine == engine
        with pytest.warns(UserWarning, match="2 rows were not indexed"):
            result = build.compute(scheduler="sync")
        rows[engine] = _row_partitions(result.dataset())
    assert len(rows["partitions"]) == 6000 - 2 and not {5, 17} & set(rows["partitions"])  # row id = row here
    assert rows["partitions"] == rows["lance"]  # row by row



def test_sliced_scan_reads_every_live_row_once(tmp_path, vectors, monkeypatch):
    # Fragments are read in slices (bounded memory); with deletions, nulls and a
    # slice size that does not divide the fragments, every live row comes exactly once.
    import dask_lance_index.storage.scan as L

    uri = str(tmp_path / "slices.lance")
    x = vectors[:5000]
    tbl = vector_table(x)
    mask = np.zeros(len(x), dtype=bool)
    mask[[7, 2601]] = True  # neither is deleted below
    vec = tbl.column("vector").combine_chunks()
    tbl = tbl.set_column(1, "vector", pa.FixedSizeListArray.from_arrays(vec.values, 32, mask=pa.array(mask)))
    lance.write_dataset(tbl, uri, max_rows_per_file=2000)
    ds = lance.dataset(uri)
    ds.delete("id % 7 = 3 OR (id >= 2100 AND id < 2350)")
    ds = lance.dataset(uri)
    frags = [f.fragment_id for f in ds.get_fragments()]
    whole = ds.to_table(columns=["vector"], with_row_id=True)
    monkeypatch.setattr(L, "SCAN_SLICE_ROWS", 333)
    got = list(L.iter_vectors(ds, "vector", 32, frags, batch_size=100, with_row_id=True))
    rid = np.concatenate([b.row_ids for b in got])
    assert len(rid) == whole.num_rows == len(np.unique(rid))
    assert np.array_equal(np.sort(rid), np.sort(whole.column("_rowid").to_numpy()))
    assert sum(b.nulls for b in got) == 2
    keep = {int(r): i for i, r in enumerate(whole.column("_rowid").to_numpy())}
    want = np.stack([np.zeros(32, np.float32) if v is None else np.asarray(v, np.float32)
                     for v in whole.column("vector").to_pylist()])
    xs = np.concatenate([b.vectors for b in got])
    valid = np.concatenate([b.valid for b in got])
    order = np.array([keep[int(r)] for r in rid])
    np.testing.assert_array_equal(xs[valid], want[order][valid])


@pytest.mark.parametrize("index_type, kw", [("IVF_FLAT", {}), ("IVF_SQ", {}), ("IVF_PQ", {"num_sub_vectors": 8})])
def test_a_build_task_alone_encodes_its_batches_in_the_idle_cores_too(tmp_path, vectors, queries, monkeypatch,
                                                                     index_type, kw):
    """The build's one task (dask's synchronous scheduler, so the other cores are idle)
    encodes its batches in helper threads too, each with its own copy of the encoder: the
    same rows in the same partitions, the same search results, as encoded in one thread."""
    import threading
    import time

    from dask_lance_index.build.engines import precomputed

    uri = str(tmp_path / "vectors.lance")
    write_vectors(uri, vectors, max_rows_per_file=1000)  # 12 fragments: 12 batches to share
    real, names = precomputed.run_streamed, []

    def recording(fn, items, spare, **kw):
        def run(item):
            names.append(threading.current_thread().name)
            time.sleep(0.01)  # long enough for the helpers to take batches too
            fn(item)
        real(run, items, spare, **kw)

    monkeypatch.setattr(precomputed, "run_streamed", recording)
    built = {}
    for cores in (1, 3):
        monkeypatch.setattr(precomputed, "host_cores", lambda: cores)
        names.clear()
        build = dli.create_index(uri, "vector", index_type, num_partitions=16, num_tasks=1, seed=1, replace=True,
                                 compute=False, **kw)
        ds = build.compute(scheduler="sync").dataset()
        assert ("dli-spare" in names) == (cores > 1), names
        found, _ = search(ds, "vector", queries, 10, nprobes=16)
        built[cores] = (_row_partitions(ds), found)
    assert len(built[1][0]) == len(vectors)
    assert built[1][0] == built[3][0]
    np.testing.assert_array_equal(built[1][1], built[3][1])
