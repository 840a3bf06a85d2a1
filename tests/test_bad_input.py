"""Bad input: a clear error naming the fix, before any task runs, the dataset untouched."""

import json
import os
import subprocess

import lance
import numpy as np
import pyarrow as pa
import pytest

import dask_lance_index as dli
from dask_lance_index.datagen import vector_table

from .conftest import index_dirs


@pytest.fixture
def small_uri(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2000, 20)).astype(np.float32)
    tbl = vector_table(x).append_column("text", pa.array([str(i) for i in range(2000)]))
    tbl = tbl.append_column("ints", pa.FixedSizeListArray.from_arrays(pa.array(np.arange(4000, dtype=np.int32)), 2))
    uri = str(tmp_path / "small.lance")
    lance.write_dataset(tbl, uri, max_rows_per_file=1000)
    return uri


def untouched(uri, version):
    """The dataset is as it was: same version, nothing under _indices/, no journal left."""
    assert lance.dataset(uri).version == version
    assert index_dirs(uri) == set()
    assert not os.path.exists(os.path.join(uri, "_dli"))


def rq_model(dim, bits=5):
    import lance.lance

    return lance.lance.indices.build_rq_model(dim, num_bits=bits)


CASES = {
    "missing column": (dict(column="embedding"), dli.InvalidInputError, "not in the dataset"),
    "string column": (dict(column="text"), dli.InvalidInputError, r"Lance indexes fixed_size_list<float>\[d\] vectors"),
    "integer vectors": (dict(column="ints"), dli.InvalidInputError, "cast the embeddings to float32"),
    "unknown index type": (dict(index_type="IVF_LSH"), dli.InvalidInputError, "choose one of"),
    "unknown metric": (dict(metric="manhattan"), dli.InvalidInputError, "choose 'l2'"),
    "PQ sub-vectors do not divide": (dict(index_type="IVF_PQ", num_sub_vectors=3), dli.InvalidInputError, "pick one of"),
    "RQ dimension not a multiple of 8": (dict(index_type="IVF_RQ"), dli.InvalidInputError, "multiple of 8"),
    "PQ num_bits out of range": (dict(index_type="IVF_PQ", num_sub_vectors=4, num_bits=12), dli.InvalidInputError, "num_bits"),
    "more partitions than rows": (dict(num_partitions=5000), dli.InvalidInputError, "num_partitions <= 2000"),
    "centroids of the wrong dimension": (
        dict(ivf_centroids=np.zeros((8, 16), np.float32)), dli.InvalidModelError, r"expected \(num_partitions, dimension\) = \(8, 20\)"),
    "float64 centroids": (dict(ivf_centroids=np.zeros((8, 20))), dli.InvalidModelError, "astype"),
    "NaN centroids": (dict(ivf_centroids=np.full((8, 20), np.nan, np.float32)), dli.InvalidModelError, "NaN"),
    "centroids disagree with num_partitions": (
        dict(ivf_centroids=np.zeros((8, 20), np.float32), num_partitions=4), dli.InvalidModelError, "set num_partitions"),
    "codebook of the wrong shape": (
        dict(index_type="IVF_PQ", num_sub_vectors=4, ivf_centroids=np.zeros((8, 20), np.float32),
             pq_codebook=np.zeros((4, 256, 4), np.float32)), dli.InvalidModelError, r"\(4, 256, 5\)"),
    "float64 codebook": (
        dict(index_type="IVF_PQ", num_sub_vectors=4, ivf_centroids=np.zeros((8, 20), np.float32),
             pq_codebook=np.zeros((4, 256, 5))), dli.InvalidModelError, "float32"),
    "codebook without centroids": (
        dict(index_type="IVF_PQ", num_sub_vectors=4, pq_codebook=np.zeros((4, 256, 5), np.float32)),
        dli.InvalidModelError, "both or neither"),
    "centroids without codebook for PQ": (
        dict(index_type="IVF_PQ", num_sub_vectors=4, ivf_centroids=np.zeros((8, 20), np.float32)),
        dli.InvalidInputError, "both or neither"),
    "codebook for a non-PQ index": (
        dict(ivf_centroids=np.zeros((8, 20), np.float32), pq_codebook=np.zeros((4, 256, 5), np.float32)),
        dli.InvalidModelError, "has no PQ"),
    "HNSW option on IVF_FLAT": (dict(m=16), dli.InvalidInputError, "IVF_HNSW"),
    "num_tasks and rows_per_task": (dict(num_tasks=2, rows_per_task=10), dli.InvalidInputError, "not both"),
    "SQ num_bits out of range": (dict(index_type="IVF_SQ", num_bits=4), dli.InvalidInputError, r"Lance takes \[8\]"),
    "num_bits on IVF_FLAT": (dict(num_bits=8), dli.InvalidInputError, "quantized index types only"),
    "zero partitions": (dict(num_partitions=0), dli.InvalidInputError, "positive int"),
    "zero target partition size": (dict(num_partitions=None, target_partition_size=0), dli.InvalidInputError, "must be positive"),
    "zero segments": (dict(num_segments=0), dli.InvalidInputError, "num_segments=1"),
    "merge fan-in of one": (dict(num_tasks=4, merge_fan_in=1), dli.InvalidInputError, "merge_fan_in=16"),
    "unknown engine": (dict(engine="gpu"), dli.InvalidInputError, "engine"),
    "precomputed engine for 4-bit IVF_PQ": (dict(index_type="IVF_PQ", num_bits=4, engine="precomputed"), dli.InvalidInputError, "engine='auto'"),
    "HNSW m of zero": (dict(index_type="IVF_HNSW_FLAT", m=0), dli.InvalidInputError, "m must be a positive int"),
    "tolerance out of range": (dict(tolerance=2.0), dli.InvalidInputError, "tolerance"),
    "zero sample rate": (dict(sample_rate=0), dli.InvalidInputError, "must be positive"),
    "rabitq_model not a string": (dict(rabitq_model=123), dli.InvalidInputError, "JSON string"),
    "overlapping fragment groups": (dict(fragment_groups=[[0, 1], [1]]), dli.InvalidInputError, "groups overlap"),
    "unknown fragment id": (dict(fragment_groups=[[0], [1], [7]]), dli.InvalidInputError, "does not have"),
    "fragment left out of the groups": (dict(fragment_groups=[[0]]), dli.InvalidInputError, "in no group"),
    "empty fragment group": (dict(fragment_groups=[[0, 1], []]), dli.InvalidInputError, "covering nothing"),
    "fragment groups and num_tasks": (dict(fragment_groups=[[0], [1]], num_tasks=2), dli.InvalidInputError, "not both"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_fails_before_any_work(small_uri, case):
    kwargs, exc, match = CASES[case]
    args = dict(column="vector", index_type="IVF_FLAT", num_partitions=8)
    args.update(kwargs)
    column, index_type = args.pop("column"), args.pop("index_type")
    if "ivf_centroids" in args and "num_partitions" not in kwargs:
        args.pop("num_partitions")
    version = lance.dataset(small_uri).version
    with pytest.raises(exc, match=match):
        # compute=False: the error must come while planning, before a graph exists
        dli.create_index(small_uri, column, index_type, compute=False, **args)
    untouched(small_uri, version)


def test_rabitq_model_for_another_dimension(tmp_path):
    uri = str(tmp_path / "d16.lance")
    lance.write_dataset(vector_table(np.ones((500, 16), np.float32)), uri)
    with pytest.raises(dli.InvalidModelError, match="build_rq_model\\(16"):
        dli.create_index(uri, "vector", "IVF_RQ", num_partitions=2, rabitq_model=rq_model(32), compute=False)
    with pytest.raises(dli.InvalidModelError, match="num_bits=5 but num_bits=3"):
        dli.create_index(uri, "vector", "IVF_RQ", num_partitions=2, num_bits=3, rabitq_model=rq_model(16), compute=False)
    bad = json.loads(rq_model(16))
    bad["fast_rotation_signs"] = bad["fast_rotation_signs"][:-1]
    with pytest.raises(dli.InvalidModelError, match="sign bytes"):
        dli.create_index(uri, "vector", "IVF_RQ", num_partitions=2, rabitq_model=json.dumps(bad), compute=False)
    untouched(uri, 1)


def test_existing_index_without_replace(small_uri):
    dli.create_index(small_uri, "vector", "IVF_FLAT", num_partitions=4, scheduler="sync")
    version = lance.dataset(small_uri).version
    before = index_dirs(small_uri)
    with pytest.raises(dli.IndexExistsError, match="replace=True"):
        dli.create_index(small_uri, "vector", "IVF_FLAT", num_partitions=4, compute=False)
    assert lance.dataset(small_uri).version == version and index_dirs(small_uri) == before
    assert not os.path.exists(os.path.join(small_uri, "_dli"))


def test_empty_dataset(tmp_path):
    uri = str(tmp_path / "empty.lance")
    schema = pa.schema([("id", pa.int64()), ("vector", pa.list_(pa.float32(), 8))])
    lance.write_dataset(pa.table({"id": [], "vector": []}, schema=schema), uri)
    with pytest.raises(dli.InvalidInputError, match="no rows"):
        dli.create_index(uri, "vector", "IVF_FLAT", compute=False)
    untouched(uri, 1)


def test_all_vectors_nan_fails_in_training_and_commits_nothing(tmp_path):
    uri = str(tmp_path / "nan.lance")
    lance.write_dataset(vector_table(np.full((1000, 8), np.nan, np.float32)), uri, max_rows_per_file=500)
    with pytest.raises(dli.InvalidInputError, match="valid \\(non-null, finite\\) vectors"):
        dli.create_index(uri, "vector", "IVF_FLAT", num_partitions=4, scheduler="sync")
    untouched(uri, 1)


def test_not_a_dataset(tmp_path):
    with pytest.raises(dli.InvalidInputError, match="cannot open a Lance dataset"):
        dli.create_index(str(tmp_path / "nothing.lance"), "vector", "IVF_FLAT", compute=False)
    assert not os.path.exists(tmp_path / "nothing.lance")


def test_unreachable_scheduler(small_uri):
    version = lance.dataset(small_uri).version
    import dask

    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        with pytest.raises(dli.InvalidInputError, match="cannot reach a Dask scheduler at 'tcp://127.0.0.1:9'"):
            dli.create_index(small_uri, "vector", "IVF_FLAT", num_partitions=8, client="tcp://127.0.0.1:9")
    untouched(small_uri, version)


def test_closed_client(small_uri):
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster:
        client = Client(cluster)
        client.close()
        version = lance.dataset(small_uri).version
        with pytest.raises(dli.InvalidInputError, match="pass a connected Client"):
            dli.create_index(small_uri, "vector", "IVF_FLAT", num_partitions=8, client=client)
    untouched(small_uri, version)


def test_read_only_dataset(small_uri):
    version = lance.dataset(small_uri).version
    # Immutable even for root (the tests may run as root, where chmod does not bite).
    if subprocess.run(["chattr", "+i", small_uri], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here")
    try:
        with pytest.raises(dli.InvalidInputError, match="the dataset at .* is not writable"):
            dli.create_index(small_uri, "vector", "IVF_FLAT", num_partitions=8, scheduler="sync")
    finally:
        subprocess.run(["chattr", "-i", small_uri], check=True)
    untouched(small_uri, version)


def test_unwritable_journal_location(small_uri, tmp_path):
    version = lance.dataset(small_uri).version
    (tmp_path / "a_file").write_text("not a directory")
    with pytest.raises(dli.InvalidInputError, match="journal location .* is not writable"):
        dli.create_index(small_uri, "vector", "IVF_FLAT", num_partitions=8, scheduler="sync",
                         journal=str(tmp_path / "a_file" / "journal"))
    untouched(small_uri, version)


def test_journal_of_another_build_or_not_to_be_resumed(small_uri, tmp_path):
    jloc = str(tmp_path / "journal")
    dli.create_index(small_uri, "vector", "IVF_FLAT", num_partitions=8, journal=jloc, compute=False)
    version = lance.dataset(small_uri).version
    with pytest.raises(dli.InvalidInputError, match="journal at .* is of another build"):
        dli.create_index(small_uri, "vector", "IVF_PQ", num_partitions=8, num_sub_vectors=4, journal=jloc)
    with pytest.raises(dli.InvalidInputError, match="pass resume=True"):
        dli.create_index(small_uri, "vector", "IVF_FLAT", num_partitions=8, journal=jloc, resume=False)
    untouched(small_uri, version)
    assert dli.cleanup(small_uri, journal=jloc) == [jloc]  # the lazy build never ran
    assert not os.path.exists(jloc)
