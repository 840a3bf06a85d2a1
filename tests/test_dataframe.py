"""Dask DataFrames in and out of Lance, for real: Lance datasets on disk, a LocalCluster and the
sync scheduler, search results checked against per-query search and NumPy."""

from __future__ import annotations

import dataclasses
import os

import dask
import dask.dataframe as dd
import lance
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import dask_lance_index as dli
from dask_lance_index.datagen import write_vectors
from dask_lance_index.errors import InvalidInputError
from dask_lance_index.evaluation import (
    exact_knn,
    exact_knn_dataset,
    recall_at_k,
    search,
)
from dask_lance_index.model import IndexModel, PQEncoder, residuals, train_ivf, train_pq
from dask_lance_index.model.kmeans import assign, normalize_rows


def _frame(vectors: np.ndarray, *, null_rows=(), nan_rows=()) -> pd.DataFrame:
    """A pandas frame of every column kind: ints, strings, floats, an embedding column."""
    n = len(vectors)
    x = vectors.copy()
    x[list(nan_rows)] = np.nan
    vec = pa.FixedSizeListArray.from_arrays(
        pa.array(x.reshape(-1)), x.shape[1], mask=pa.array(np.isin(np.arange(n), list(null_rows)))
    )
    return pd.DataFrame(
        {
            "id": np.arange(n, dtype=np.int64),
            "name": pd.Series([f"row-{i}" for i in range(n)], dtype="string[pyarrow]"),
            "score": np.linspace(0.0, 1.0, n),
            "vector": pd.arrays.ArrowExtensionArray(vec),
        }
    )


def _data_files(uri: str) -> list[str]:
    d = os.path.join(uri, "data")
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


def _assert_same_rows(got: pd.DataFrame, want: pd.DataFrame) -> None:
    got = got.sort_values("id").reset_index(drop=True)
    want = want.reset_index(drop=True)
    assert len(got) == len(want)
    assert np.array_equal(got["id"].to_numpy(), want["id"].to_numpy())
    assert got["name"].tolist() == want["name"].tolist()
    assert np.array_equal(got["score"].to_numpy(), want["score"].to_numpy())
    gv, wv = pa.array(got["vector"].array), pa.array(want["vector"].array)
    assert gv.type == pa.list_(pa.float32(), wv.type.list_size)
    assert got["vector"].isna().tolist() == want["vector"].isna().tolist()
    # Exact equality, bit for bit (NaN rows compare equal to NaN).
    assert np.array_equal(dli.vectors_to_numpy(got["vector"]), dli.vectors_to_numpy(want["vector"]), equal_nan=True)


# ---------------------------------------------------------------------------------------------
# round trip


def test_round_trip_sync_scheduler_keeps_every_row_and_vector(tmp_path, vectors):
    df = _frame(vectors[:3000], null_rows=[5, 2999], nan_rows=[7])
    ddf = dd.from_pandas(df, npartitions=3)
    uri = str(tmp_path / "rt.lance")

    result = dli.to_lance(ddf, uri, compute=False).compute(scheduler="sync")

    assert isinstance(result, dli.WriteResult)
    assert (result.version, result.num_rows, result.num_fragments) == (1, 3000, 3)
    ds = lance.dataset(uri)
    assert ds.schema.field("vector").type == pa.list_(pa.float32(), vectors.shape[1])
    assert len(ds.get_fragments()) == 3  # one write task per partition, one commit

    back = dli.read_lance(uri)
    assert back.npartitions == 3  # one partition per fragment
    assert back.dtypes["vector"] == pd.ArrowDtype(pa.list_(pa.float32(), vectors.shape[1]))
    _assert_same_rows(back.compute(scheduler="sync"), df)

    # What read_lance gives, to_lance takes back unchanged (Lance to Lance through Dask).
    again = str(tmp_path / "again.lance")
    dli.to_lance(back, again, scheduler="sync")
    assert lance.dataset(again).schema == ds.schema
    _assert_same_rows(dli.read_lance(again).compute(scheduler="sync"), df)


def test_round_trip_on_local_cluster(tmp_path, vectors, cluster_client):
    df = _frame(vectors, null_rows=[0], nan_rows=[11_999])
    ddf = dd.from_pandas(df, npartitions=4)
    uri = str(tmp_path / "rt.lance")

    ds = dli.to_lance(ddf, uri, client=cluster_client)

    assert ds.version == 1 and ds.count_rows() == len(vectors)
    back = dli.read_lance(uri)
    assert back.npartitions == 4
    _assert_same_rows(cluster_client.compute(back).result(), df)


def test_object_column_of_numpy_arrays_is_written_as_fixed_size_list(tmp_path, vectors):
    x = vectors[:500]
    col = np.empty(len(x), dtype=object)
    col[:] = list(x)
    col[3] = None
    df = pd.DataFrame({"id": np.arange(len(x)), "vector": col})
    with dask.config.set({"dataframe.convert-string": False}):
        ddf = dd.from_pandas(df, npartitions=2)
        dli.to_lance(ddf, str(tmp_path / "o.lance"), scheduler="sync")
    t = lance.dataset(str(tmp_path / "o.lance")).to_table()
    assert t.schema.field("vector").type == pa.list_(pa.float32(), x.shape[1])
    got = t.sort_by("id").column("vector").combine_chunks()
    assert got.null_count == 1 and not got[3].is_valid
    want = x.copy()
    want[3] = np.nan
    assert np.array_equal(
        got.fill_null(pa.scalar([np.nan] * x.shape[1], got.type)).flatten().to_numpy().reshape(x.shape),
        want,
        equal_nan=True,
    )


def test_compute_false_is_lazy_until_computed(tmp_path, vectors):
    uri = str(tmp_path / "lazy.lance")
    ddf = dd.from_pandas(_frame(vectors[:1000]), npartitions=2)

    lazy = dli.to_lance(ddf, uri, compute=False)
    assert not os.path.exists(uri)  # nothing written
    keys = [k for k in dict(lazy.__dask_graph__()) if str(k).startswith("lance-")]
    assert len([k for k in keys if "write" in str(k)]) == 2 and len([k for k in keys if "commit" in str(k)]) == 1
    assert lazy.compute(scheduler="sync").num_rows == 1000
    assert lance.dataset(uri).count_rows() == 1000

    # Appending an empty DataFrame makes no new version.
    empty = dd.from_pandas(_frame(vectors[:0]), npartitions=1)
    assert dli.to_lance(empty, uri, mode="append", scheduler="sync").version == 1

    # An append is lazy too: the version does not move before compute.
    more = dd.from_pandas(_frame(vectors[1000:1500]).assign(id=np.arange(1000, 1500)), npartitions=2)
    lazy = dli.to_lance(more, uri, mode="append", compute=False)
    assert lance.dataset(uri).version == 1
    res = lazy.compute(scheduler="sync")
    assert res.version == 2 and lance.dataset(uri).count_rows() == 1500


def test_append_and_overwrite(tmp_path, vectors):
    uri = str(tmp_path / "m.lance")
    a, b = _frame(vectors[:800]), _frame(vectors[800:1200]).assign(id=np.arange(800, 1200))
    dli.to_lance(dd.from_pandas(a, npartitions=2), uri, scheduler="sync")
    before = dli.read_lance(uri)  # pins version 1
    dli.to_lance(dd.from_pandas(b, npartitions=2), uri, mode="append", scheduler="sync")
    assert len(before.compute(scheduler="sync")) == 800  # still version 1 after the append
    ds = lance.dataset(uri)
    assert ds.version == 2 and len(ds.get_fragments()) == 4
    _assert_same_rows(dli.read_lance(uri).compute(scheduler="sync"), pd.concat([a, b]))

    dli.to_lance(dd.from_pandas(b, npartitions=1), uri, mode="overwrite", scheduler="sync")
    assert lance.dataset(uri).version == 3
    _assert_same_rows(dli.read_lance(uri).compute(scheduler="sync"), b)
    assert lance.dataset(uri, version=2).count_rows() == 1200  # old versions stay readable


# ---------------------------------------------------------------------------------------------
# read pushdown


def test_read_lance_pushes_columns_and_filter_down_per_fragment(dataset_uri, vectors):
    ddf = dli.read_lance(dataset_uri, columns=["id"], filter="id % 5 = 0")
    assert ddf.npartitions == 4 and list(ddf.columns) == ["id"]
    # Partition i holds exactly fragment i's rows that pass the filter.
    for i in range(4):
        part = ddf.get_partition(i).compute(scheduler="sync")
        ids = np.arange(3000 * i, 3000 * (i + 1))
        assert np.array_equal(part["id"].to_numpy(), ids[ids % 5 == 0])

    with_ids = dli.read_lance(dataset_uri, columns=["vector"], with_row_id=True).compute(scheduler="sync")
    assert list(with_ids.columns) == ["vector", "_rowid"]
    assert np.array_equal(dli.vectors_to_numpy(with_ids["vector"]), vectors)


# ---------------------------------------------------------------------------------------------
# map_partitions encoders


@pytest.fixture(scope="module")
def pq_model(vectors):
    c, _ = train_ivf(vectors[:4000], 16, "l2", max_iters=10, seed=0)
    cb = train_pq(residuals(vectors[:4000], c, "l2"), 8, 8, max_iters=5, seed=0)
    return IndexModel(ivf_centroids=c, pq_codebook=cb)


def test_map_partitions_codes_equal_pq_encoder(dataset_uri, vectors, pq_model, cluster_client):
    ddf = dli.read_lance(dataset_uri)
    coded = ddf.map_partitions(dli.add_pq_codes, pq_model, "vector", metric="l2")
    assert coded.dtypes["__pq_code"] == pd.ArrowDtype(pa.list_(pa.uint8(), 8))
    got = cluster_client.compute(coded).result().sort_values("id")

    parts, codes = PQEncoder(pq_model.ivf_centroids, pq_model.pq_codebook, "l2").encode(vectors)
    assert np.array_equal(got["__ivf_part_id"].to_numpy().astype(np.uint32), parts)
    assert np.array_equal(np.stack(got["__pq_code"].to_numpy()), codes)

    ivf = ddf.map_partitions(dli.add_ivf_partition, pq_model, "vector").compute(scheduler="sync")
    assert np.array_equal(ivf.sort_values("id")["__ivf_part_id"].to_numpy().astype(np.uint32), parts)


@pytest.mark.parametrize("metric", ["cosine", "dot"])
def test_map_partitions_encoders_follow_the_metric_and_skip_null_rows(vectors, metric):
    x = vectors[:2000]
    prepared = normalize_rows(x) if metric == "cosine" else x
    c, _ = train_ivf(prepared, 8, metric, max_iters=5, seed=1)
    cb = train_pq(residuals(prepared, c, metric), 4, 4, max_iters=3, seed=1)
    model = IndexModel(ivf_centroids=c, pq_codebook=cb)
    df = _frame(x, null_rows=[1], nan_rows=[2])
    ddf = dd.from_pandas(df, npartitions=2)

    got = ddf.map_partitions(dli.add_pq_codes, model, "vector", metric=metric).compute(scheduler="sync")
    valid = np.ones(len(x), bool)
    valid[[1, 2]] = False
    parts, codes = PQEncoder(c, cb, metric).encode(x[valid])
    assert got["__ivf_part_id"].isna().to_numpy().tolist() == (~valid).tolist()
    assert np.array_equal(got["__ivf_part_id"].to_numpy()[valid].astype(np.uint32), parts)
    assert np.array_equal(np.stack(got["__pq_code"].to_numpy()[valid]), codes)

    ivf = ddf.map_partitions(dli.add_ivf_partition, model, "vector", metric=metric).compute(scheduler="sync")
    labels, _ = assign(prepared[valid], c, "dot" if metric == "dot" else "l2")
    assert np.array_equal(ivf["__ivf_part_id"].to_numpy()[valid].astype(np.uint32), labels)


# ---------------------------------------------------------------------------------------------
# batch search


@pytest.fixture(scope="module")
def indexed_uri(tmp_path_factory, vectors, cluster_client):
    """``vectors`` written from a Dask DataFrame by to_lance and indexed on the cluster."""
    uri = str(tmp_path_factory.mktemp("bs") / "v.lance")
    dli.to_lance(dd.from_pandas(_frame(vectors), npartitions=4), uri, client=cluster_client)
    dli.create_index(uri, "vector", "IVF_PQ", num_partitions=32, num_sub_vectors=8, client=cluster_client, seed=3)
    return uri


def test_batch_search_equals_per_query_search(indexed_uri, vectors, queries, cluster_client, tmp_path):
    q = dd.from_pandas(pd.DataFrame({"qid": np.arange(len(queries)), "vector": dli.vector_series(queries)}), npartitions=3)

    out = cluster_client.compute(dli.batch_search(q, indexed_uri, k=10, nprobes=8)).result().sort_values("qid")
    ids = np.stack(out["ids"].to_numpy())
    want, _ = search(lance.dataset(indexed_uri), "vector", queries, 10, nprobes=8)
    assert np.array_equal(ids, want)
    d = np.stack(out["distances"].to_numpy())
    assert (np.diff(d, axis=1) >= 0).all()  # nearest first
    # The index built on what to_lance wrote searches as well as Lance's own index of the
    # same vectors written directly (recall moves by up to 0.02 with the training seed).
    truth = exact_knn(vectors, queries, 10)
    reference = str(tmp_path / "reference.lance")
    write_vectors(reference, vectors)
    lance.dataset(reference).create_index("vector", "IVF_PQ", num_partitions=32, num_sub_vectors=8)
    lance_ids, _ = search(lance.dataset(reference), "vector", queries, 10, nprobes=8)
    assert recall_at_k(ids, truth) >= recall_at_k(lance_ids, truth) - 0.03

    refined = dli.batch_search(q, indexed_uri, k=10, nprobes=8, refine_factor=5).compute(scheduler="sync")
    want_r, _ = search(lance.dataset(indexed_uri), "vector", queries, 10, nprobes=8, refine_factor=5)
    assert np.array_equal(np.stack(refined.sort_values("qid")["ids"].to_numpy()), want_r)
    # With refine, distances are exact squared L2 distances to the returned rows.
    r = refined.sort_values("qid")
    exact = ((vectors[np.stack(r["ids"].to_numpy())] - queries[:, None, :]) ** 2).sum(-1)
    assert np.allclose(np.stack(r["distances"].to_numpy()), exact, rtol=1e-4, atol=1e-4)


def test_batch_search_row_ids_filter_and_null_queries(indexed_uri, queries):
    x = queries[:20].copy()
    df = pd.DataFrame({"vector": dli.vector_series(x)})
    df.loc[3, "vector"] = None
    q = dd.from_pandas(df, npartitions=2)
    out = dli.batch_search(q, indexed_uri, k=5, id_column=None, filter="id < 3000").compute(scheduler="sync")
    ids = np.stack(out["ids"].to_numpy())
    assert (ids[3] == -1).all() and np.isinf(np.stack(out["distances"].to_numpy())[3]).all()
    ok = np.delete(ids, 3, axis=0)
    # Fragment 0 holds ids 0..2999, whose row ids are 0..2999 as well.
    assert ((ok == -1) | ((ok >= 0) & (ok < 3000))).all() and (ok >= 0).any()

    # With prefilter, every query finds k rows that pass the filter, as Lance's own prefiltered search.
    pre = dli.batch_search(q, indexed_uri, k=5, filter="id % 2 = 1", prefilter=True).compute(scheduler="sync")
    ids = np.delete(np.stack(pre["ids"].to_numpy()), 3, axis=0)
    assert (ids >= 0).all() and (ids % 2 == 1).all()
    want, _ = search_prefiltered(lance.dataset(indexed_uri), np.delete(x, 3, axis=0), "id % 2 = 1")
    assert np.array_equal(ids, want)


def search_prefiltered(ds, queries, filter, k=5):
    out = np.full((len(queries), k), -1, dtype=np.int64)
    for i, v in enumerate(queries):
        t = ds.to_table(columns=["id"], nearest={"column": "vector", "q": v, "k": k, "nprobes": 20},
                        filter=filter, prefilter=True, disable_scoring_autoprojection=True)
        out[i, : t.num_rows] = t.column("id").to_numpy()
    return out, None


# ---------------------------------------------------------------------------------------------
# bad input: clear errors, dataset unchanged


def test_bad_vectors_are_refused_and_nothing_is_written(tmp_path, vectors):
    uri = str(tmp_path / "bad.lance")
    x64 = pd.DataFrame({"id": [0, 1], "vector": pd.Series([[0.0, 1.0], [1.0, 2.0]], dtype=pd.ArrowDtype(pa.list_(pa.float64())))})
    with pytest.raises(InvalidInputError, match="float32"):
        dli.to_lance(dd.from_pandas(x64, npartitions=1), uri, compute=False)  # before any task

    ragged = pd.DataFrame({"id": [0, 1], "vector": pd.Series([[0.0, 1.0], [1.0]], dtype=pd.ArrowDtype(pa.list_(pa.float32())))})
    with pytest.raises(InvalidInputError, match="ragged"):
        dli.to_lance(dd.from_pandas(ragged, npartitions=1), uri, scheduler="sync")

    with pytest.raises(InvalidInputError, match="embedding"):
        dli.to_lance(dd.from_pandas(_frame(vectors[:10]), npartitions=1), uri, vector_columns=["id"])

    # One good partition is written, the other partition holds float64 arrays: the commit refuses
    # and deletes what the good partition wrote.
    good, bad = vectors[:4], vectors[4:8].astype(np.float64)
    col = np.empty(8, dtype=object)
    col[:4], col[4:] = list(good), list(bad)
    with dask.config.set({"dataframe.convert-string": False}):
        ddf = dd.from_pandas(pd.DataFrame({"id": np.arange(8), "vector": col}), npartitions=2, sort=False)
        with pytest.raises(InvalidInputError, match="float64"):
            dli.to_lance(ddf, uri, scheduler="sync")
    assert not os.path.exists(uri)  # no data files, no empty directories

    # Strings where vectors were expected (Dask's convert-string turns object arrays into strings).
    s = pd.DataFrame({"id": [0], "vector": pd.Series(["[0.0 1.0]"], dtype="string[pyarrow]")})
    with pytest.raises(InvalidInputError, match="vector"):
        dli.to_lance(dd.from_pandas(s, npartitions=1), uri, vector_columns="vector")


def test_write_mode_errors_leave_the_dataset_unchanged(dataset_uri, tmp_path, vectors):
    ddf = dd.from_pandas(_frame(vectors[:10]), npartitions=1)
    with pytest.raises(InvalidInputError, match="already exists"):
        dli.to_lance(ddf, dataset_uri)
    with pytest.raises(InvalidInputError, match="differ"):
        dli.to_lance(ddf, dataset_uri, mode="append")  # the dataset has id, vector only
    with pytest.raises(InvalidInputError, match="no Lance dataset"):
        dli.to_lance(ddf, str(tmp_path / "missing.lance"), mode="append")
    with pytest.raises(InvalidInputError, match="mode"):
        dli.to_lance(ddf, str(tmp_path / "x.lance"), mode="upsert")
    with pytest.raises(InvalidInputError, match="dask DataFrame"):
        dli.to_lance(_frame(vectors[:10]), str(tmp_path / "x.lance"))
    assert lance.dataset(dataset_uri).version == 1

    # Partitions that disagree on the vector dimension cannot form one dataset.
    a, b = _frame(vectors[:5]), _frame(vectors[:5, :16])
    ddf = dd.concat([dd.from_pandas(a, npartitions=1), dd.from_pandas(b, npartitions=1)])
    with pytest.raises(InvalidInputError, match="different schemas"):
        dli.to_lance(ddf, str(tmp_path / "dims.lance"), vector_columns=["vector"], scheduler="sync")
    assert _data_files(str(tmp_path / "dims.lance")) == []


def test_read_search_and_encode_errors(dataset_uri, pq_model, queries):
    with pytest.raises(InvalidInputError, match="not in the dataset"):
        dli.read_lance(dataset_uri, columns=["nope"])
    with pytest.raises(InvalidInputError, match="filter"):
        dli.read_lance(dataset_uri, filter="idd > 3")
    with pytest.raises(InvalidInputError, match="cannot open"):
        dli.read_lance(dataset_uri + ".missing")

    q = dd.from_pandas(pd.DataFrame({"vector": dli.vector_series(queries[:4, :16])}), npartitions=1)
    with pytest.raises(InvalidInputError, match="dimension 16"):
        dli.batch_search(q, dataset_uri)
    good = dd.from_pandas(pd.DataFrame({"vector": dli.vector_series(queries[:4])}), npartitions=1)
    with pytest.raises(InvalidInputError, match="k=0"):
        dli.batch_search(good, dataset_uri, k=0)
    with pytest.raises(InvalidInputError, match="query column"):
        dli.batch_search(good, dataset_uri, query_column="embedding")
    with pytest.raises(InvalidInputError, match="id_column"):
        dli.batch_search(good, dataset_uri, id_column="doc_id")

    df = dli.read_lance(dataset_uri).get_partition(0).compute(scheduler="sync")
    with pytest.raises(InvalidInputError, match="pq_codebook"):
        dli.add_pq_codes(df, IndexModel(ivf_centroids=pq_model.ivf_centroids))
    small = IndexModel(ivf_centroids=pq_model.ivf_centroids[:, :16])
    with pytest.raises(InvalidInputError, match="dimension"):
        dli.add_ivf_partition(df, small)


def test_dataframe_graphs_carry_storage_options_that_hide_their_secrets(tmp_path):
    # A worker logs the repr of a failing task; the options every read, write and
    # search task carries must be StorageOptions, whose repr shows no secret.
    from dask._task_spec import convert_legacy_graph

    from dask_lance_index.storage import StorageOptions

    so = {"aws_secret_access_key": "TOPSECRET123", "region": "us-east-1"}
    x = np.random.default_rng(0).standard_normal((100, 8)).astype(np.float32)
    uri = str(tmp_path / "v.lance")
    write_vectors(uri, x)
    frame = dd.from_pandas(pd.DataFrame({"id": np.arange(100), "vector": dli.vector_series(x)}), npartitions=2)

    def carried(obj):
        def walk(o, acc):
            if isinstance(o, dict):
                acc.append(o)
            if dataclasses.is_dataclass(o) and not isinstance(o, type):  # a task's callable and its settings
                for f in dataclasses.fields(o):
                    walk(getattr(o, f.name), acc)
            for a in getattr(o, "args", ()) or ():
                walk(a, acc)
            for v in (getattr(o, "kwargs", None) or {}).values():
                walk(v, acc)
            if callable(getattr(o, "func", None)):
                walk(o.func, acc)
            return acc

        tasks = convert_legacy_graph(dict(obj.__dask_graph__())).values()
        return [a for t in tasks for a in walk(t, []) if "aws_secret_access_key" in a]

    queries = dd.from_pandas(pd.DataFrame({"vector": dli.vector_series(x[:4])}), npartitions=1)
    for name, obj in [
        ("to_lance", dli.to_lance(frame, str(tmp_path / "w.lance"), storage_options=so, compute=False)),
        ("read_lance", dli.read_lance(uri, storage_options=so)),
        ("batch_search", dli.batch_search(queries, uri, "vector", k=3, storage_options=so)),
        ("exact_knn_dataset", exact_knn_dataset(uri, "vector", x[:4], 3, storage_options=so, compute=False)),
    ]:
        found = carried(obj)
        assert found, name
        assert all(type(a) is StorageOptions and "TOPSECRET123" not in repr(a) for a in found), name
