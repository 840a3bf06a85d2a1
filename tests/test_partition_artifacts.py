"""Partition artifacts (upstream Lance's layout): writer, reader, validation, and the
``engine="artifact"`` build and its resume, on real Lance datasets and a real LocalCluster."""

from __future__ import annotations

import json
import os
import shutil

import lance
import numpy as np
import pyarrow as pa
import pytest
from lance.file import LanceFileWriter

import dask_lance_index as dli
from dask_lance_index.datagen import write_vectors
from dask_lance_index.evaluation import exact_knn, recall_at_k, search
from dask_lance_index.model import residuals, train_ivf, train_pq
from dask_lance_index.partition_artifacts import (
    ArtifactMetadata,
    BucketSummary,
    InvalidPartitionArtifactError,
    PartitionArtifact,
    PartitionArtifactWriter,
    PartitionEntry,
    PartitionRange,
    assemble_manifest,
    default_num_buckets,
    write_manifest,
    write_metadata,
)
from dask_lance_index.partition_artifacts.layout import bucket_path

from .conftest import committed_segment_uuids, index_dirs


@pytest.fixture(scope="module")
def model(vectors):
    """IVF centroids and a PQ codebook trained once, shared by every build compared here."""
    x = vectors[np.random.default_rng(0).choice(len(vectors), 4096, replace=False)]
    c, _ = train_ivf(x, 16, "l2", max_iters=30, seed=0)
    cb = train_pq(residuals(x, c, "l2"), 8, 8, max_iters=30, seed=0)
    return c, cb


def recall(ds, queries, truth, nprobes=6):
    found, _ = search(ds, "vector", queries, 10, nprobes=nprobes)
    assert all(len(set(row)) == len(row) for row in found.tolist()), "a row was indexed twice"
    return recall_at_k(found, truth)


def lance_reference_recall(tmp_path, vectors, queries, truth, model) -> float:
    """Recall of the index Lance itself builds from the same centroids and codebook: the reference."""
    c, cb = model
    uri = str(tmp_path / "lance_reference.lance")
    write_vectors(uri, vectors, max_rows_per_file=3000)
    ds = lance.dataset(uri)
    ds.create_index("vector", "IVF_PQ", num_partitions=16, num_sub_vectors=8, ivf_centroids=c, pq_codebook=cb)
    return recall(lance.dataset(uri), queries, truth)


def numpy_encode(x, c, cb):
    """Independent l2 IVF assignment and PQ encoding by brute force (not PQEncoder)."""
    def nearest(a, b):  # argmin_j |a_i - b_j|^2, in float64
        a, b = a.astype(np.float64), b.astype(np.float64)
        return ((b * b).sum(1)[None, :] - 2.0 * a @ b.T).argmin(1)

    part = nearest(x, c).astype(np.uint32)
    r = x - c[part]
    m, k, s = cb.shape
    codes = np.empty((len(x), m), np.uint8)
    for j in range(m):
        codes[:, j] = nearest(r[:, j * s : (j + 1) * s], cb[j])
    return part, codes


# -- writer and reader ---------------------------------------------------------------


def test_writer_layout_buckets_sorted_flushes_and_range_reads(tmp_path):
    rng = np.random.default_rng(3)
    P, m, n = 300, 4, 20_000
    part = rng.integers(0, P, n).astype(np.uint32)
    rid = rng.permutation(n).astype(np.uint64)
    codes = rng.integers(0, 256, (n, m)).astype(np.uint8)
    root = str(tmp_path / "art")
    w = PartitionArtifactWriter(root, P, m, bucket_buffer_rows=64, max_buffered_rows=4000)
    for s in range(0, n, 1500):
        w.append(rid[s : s + 1500], part[s : s + 1500], codes[s : s + 1500])
    summary = w.finish()
    assert default_num_buckets(P) == 256 and default_num_buckets(16) == 16
    manifest = assemble_manifest(P, [summary])
    write_metadata(root, ArtifactMetadata("l2", rng.random((P, 8), dtype=np.float32), rng.random((m, 256, 2), dtype=np.float32)))
    write_manifest(root, manifest)
    on_disk = json.load(open(os.path.join(root, "manifest.json")))
    assert set(on_disk) == {"version", "num_partitions", "metadata_file", "total_loss", "partitions"}
    assert on_disk["version"] == 1 and on_disk["metadata_file"] == "metadata.lance"
    # bucket = part % num_buckets: partitions 0 and 256 share bucket 0's file
    assert manifest.partitions[0].path == manifest.partitions[256].path == "partitions/bucket-00000.lance"
    assert manifest.partitions[299].path == bucket_path(299 % 256)
    assert sum(len(e.ranges) > 1 for e in manifest.partitions) > 0  # repeated flushes: several ranges

    art = PartitionArtifact.open(root)
    assert art.num_rows == n and sorted(art.file_rows) == sorted(manifest.files())
    for p in (0, 17, 256, 299):
        got_rid, got_codes = art.read_partition(p)
        want = np.flatnonzero(part == p)
        order = np.argsort(rid[want])
        assert np.array_equal(np.sort(got_rid), rid[want][order])
        by_rid = dict(zip(rid.tolist(), range(n)))
        assert np.array_equal(got_codes, codes[[by_rid[r] for r in got_rid.tolist()]])
    # the files are what Lance's reader expects: Lance files 2.2, these columns and keys
    bucket = lance.file.LanceFileReader(os.path.join(root, "partitions/bucket-00000.lance"))
    assert bucket.num_rows() == art.manifest.partitions[0].num_rows + art.manifest.partitions[256].num_rows
    md = bucket.metadata()
    assert (md.major_version, md.minor_version) == (2, 2)
    assert md.schema.names == ["_rowid", "__pq_code"] and md.schema.field("_rowid").type == pa.uint64()
    assert md.schema.field("__pq_code").type == pa.list_(pa.uint8(), m)
    meta = lance.file.LanceFileReader(os.path.join(root, "metadata.lance")).metadata().schema
    keys = {k.decode(): v.decode() for k, v in meta.metadata.items()}
    assert keys == {"lance:index_build:artifact_version": "1", "lance:index_build:distance_type": "l2",
                    "lance:index_build:num_partitions": "300", "lance:index_build:num_sub_vectors": str(m),
                    "lance:index_build:num_bits": "8", "lance:index_build:dimension": "8"}
    assert meta.names == ["_ivf_centroids", "_pq_codebook"]
    # each flush is sorted by partition: within one bucket file, partition 0's ranges and
    # partition 256's ranges alternate flush by flush, 0 first in every flush
    spans = sorted([(r.offset, 0) for r in manifest.partitions[0].ranges] + [(r.offset, 256) for r in manifest.partitions[256].ranges])
    assert spans[0][1] == 0


def test_writer_memory_is_bounded_independent_of_rows(tmp_path):
    """Buffered bytes stay under the budget plus one batch, at 200k and at 800k rows."""
    m, P, batch = 16, 256, 10_000
    peaks = {}
    for n in (200_000, 800_000):
        rng = np.random.default_rng(n)
        w = PartitionArtifactWriter(str(tmp_path / f"a{n}"), P, m, bucket_buffer_rows=4096, max_buffered_rows=50_000)
        for s in range(0, n, batch):
            k = min(batch, n - s)
            w.append(np.arange(s, s + k, dtype=np.uint64), rng.integers(0, P, k).astype(np.uint32),
                     rng.integers(0, 256, (k, m)).astype(np.uint8))
        summary = w.finish()
        assert sum(summary.files.values()) == n
        peaks[n] = summary.peak_buffered_bytes
    row_bytes = 8 + 4 + m
    for n, peak in peaks.items():
        assert peak <= (50_000 + batch) * row_bytes, (n, peak)
    assert peaks[800_000] <= 1.1 * peaks[200_000], peaks


def test_assemble_refuses_a_partition_written_into_two_files():
    a = BucketSummary({3: PartitionEntry("partitions/bucket-00003.lance", 5, (PartitionRange(0, 5),))},
                      {"partitions/bucket-00003.lance": 5})
    b = BucketSummary({3: PartitionEntry("partitions/bucket-00007.lance", 2, (PartitionRange(0, 2),))},
                      {"partitions/bucket-00007.lance": 2})
    with pytest.raises(InvalidPartitionArtifactError, match="partition 3 is split across two files"):
        assemble_manifest(8, [a, b])


# -- corrupted manifests ------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_artifact(tmp_path_factory, vectors, model):
    c, cb = model
    root = str(tmp_path_factory.mktemp("good") / "art")
    part, codes = numpy_encode(vectors, c, cb)
    w = PartitionArtifactWriter(root, 16, 8, bucket_buffer_rows=300)
    w.append(np.arange(len(vectors), dtype=np.uint64), part, codes)
    write_metadata(root, ArtifactMetadata("l2", c, cb))
    write_manifest(root, assemble_manifest(16, [w.finish()]))
    return root


def _corrupt(good, tmp_path, edit):
    root = str(tmp_path / "bad")
    shutil.copytree(good, root)
    path = os.path.join(root, "manifest.json")
    d = json.load(open(path))
    edit(d)
    json.dump(d, open(path, "w"))
    return root


def _set(d, *keys_and_value):
    *keys, value = keys_and_value
    for k in keys[:-1]:
        d = d[k]
    d[keys[-1]] = value


CORRUPTIONS = {
    "bad version": (lambda d: _set(d, "version", 2), "unsupported partition artifact manifest version 2"),
    "range past the file": (
        lambda d: _set(d, "partitions", 0, "ranges", 0, "offset", 10**6), r"past the end of partitions/bucket-00000"),
    "partition across two files": (
        lambda d: d["partitions"][1]["ranges"].append({"path": "partitions/bucket-00002.lance", "offset": 0, "num_rows": 1}),
        "partition 1 spans two files"),
    "row count mismatch": (
        lambda d: _set(d, "partitions", 4, "num_rows", d["partitions"][4]["num_rows"] + 1),
        "partition 4 declares num_rows=.* but its ranges hold"),
    "rows claimed twice": (
        lambda d: d["partitions"][0]["ranges"].append(dict(d["partitions"][0]["ranges"][0])) or
        _set(d, "partitions", 0, "num_rows", d["partitions"][0]["num_rows"] + d["partitions"][0]["ranges"][0]["num_rows"]),
        "are claimed by partitions 0 and 0"),
    "rows no partition claims": (
        lambda d: _set(d, "partitions", 5, {"num_rows": 0, "ranges": []}), "partitions/bucket-00005.lance holds .* rows that no partition"),
    "missing entry": (lambda d: d["partitions"].pop(), "has 15 partition entries but num_partitions is 16"),
    "missing file": (lambda d: _set(d, "partitions", 6, "path", "partitions/bucket-09999.lance"), "does not exist"),
    "path outside the artifact": (lambda d: _set(d, "partitions", 6, "path", "../x.lance"), "must be relative"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupted_manifest_gives_a_clear_error_before_any_work(case, good_artifact, dataset_uri, tmp_path):
    edit, message = CORRUPTIONS[case]
    root = _corrupt(good_artifact, tmp_path, edit)
    with pytest.raises(InvalidPartitionArtifactError, match=message):
        PartitionArtifact.open(root)
    version = lance.dataset(dataset_uri).version
    with pytest.raises(dli.InvalidInputError, match=message):
        dli.finalize_artifact(dataset_uri, "vector", root, scheduler="sync")
    assert lance.dataset(dataset_uri).version == version and index_dirs(dataset_uri) == set()


def test_metadata_that_does_not_fit_the_column_is_refused(good_artifact, tmp_path):
    uri = str(tmp_path / "wide.lance")
    write_vectors(uri, np.random.default_rng(0).random((2000, 64), dtype=np.float32), max_rows_per_file=1000)
    with pytest.raises(InvalidPartitionArtifactError, match="dimension 32 .the column has 64"):
        dli.finalize_artifact(uri, "vector", good_artifact, scheduler="sync")


# -- builds ------------------------------------------------------------------------------


def test_artifact_engine_on_a_cluster_equals_the_default_path(tmp_path, vectors, queries, model, cluster_client):
    c, cb = model
    truth = exact_knn(vectors, queries, 10, "l2")
    got = {}
    for engine in ("auto", "artifact"):
        uri = str(tmp_path / f"{engine}.lance")
        write_vectors(uri, vectors, max_rows_per_file=3000)
        build = dli.create_index(uri, "vector", "IVF_PQ", ivf_centroids=c, pq_codebook=cb, num_sub_vectors=8,
                                 num_tasks=3, engine=engine, compute=False)
        graph = dict(build.__dask_graph__())
        if engine == "artifact":
            tok = build.plan.build_id[:8]
            assert sum(str(k).startswith(f"dli-encode-{tok}-") for k in graph) == 3
            assert sum(str(k).startswith(f"dli-buckets-{tok}") for k in graph) == 3  # one writer per bucket set
            assert f"dli-manifest-{tok}" in graph
        result = dli.run(build, client=cluster_client)
        assert result.num_rows_indexed == len(vectors) and len(result.segments) == 1
        ds = result.dataset()
        assert index_dirs(uri) == committed_segment_uuids(ds)
        assert not os.path.exists(os.path.join(uri, "_dli_artifacts"))  # the temporary artifact is gone
        got[engine] = recall(ds, queries, truth)
    assert got["artifact"] == pytest.approx(got["auto"], abs=0.005), got
    assert got["artifact"] > 0.5


def test_an_artifact_from_an_independent_upstream_writer_is_finalized(tmp_path, vectors, queries, model):
    """Written here with plain pyarrow + Lance file calls in the layout of Lance's builder
    (lance:index_build:* keys, _rowid / __pq_code bucket files, ranges from two flushes,
    empty partitions without a path), then finalized in 3 segments."""
    c, cb = model
    uri = str(tmp_path / "data.lance")
    write_vectors(uri, vectors, max_rows_per_file=3000)
    ds = lance.dataset(uri)
    rid = ds.to_table(columns=[], with_row_id=True).column("_rowid").to_numpy()
    part, codes = numpy_encode(vectors, c, cb)
    root = tmp_path / "upstream"
    (root / "partitions").mkdir(parents=True)
    nb = 16
    schema = pa.schema([pa.field("_rowid", pa.uint64(), nullable=False), pa.field("__pq_code", pa.list_(pa.uint8(), 8))])
    entries = [{"num_rows": 0, "ranges": []} for _ in range(16)]
    halves = np.array_split(np.arange(len(vectors)), 2)  # two flushes per bucket
    for b in range(nb):
        w = LanceFileWriter(str(root / f"partitions/bucket-{b:05d}.lance"), schema, version="2.2")
        offset = 0
        for rows in halves:
            sel = rows[part[rows] % nb == b]
            sel = sel[np.argsort(part[sel], kind="stable")]
            if not len(sel):
                continue
            w.write_batch(pa.table({"_rowid": pa.array(rid[sel], pa.uint64()),
                                    "__pq_code": pa.array(codes[sel].tolist(), pa.list_(pa.uint8(), 8))}, schema=schema))
            for p in np.unique(part[sel]).tolist():
                k = int((part[sel] == p).sum())
                start = offset + int(np.searchsorted(part[sel], p))
                e = entries[p]
                e["path"] = f"partitions/bucket-{b:05d}.lance"
                e["num_rows"] += k
                e["ranges"].append({"offset": start, "num_rows": k})
            offset += len(sel)
        w.close()
    # 17 centroids: the 17th lies far from every row, so its partition is empty
    c17 = np.vstack([c, np.full((1, 32), 1e6, np.float32)])
    meta = pa.table({"_ivf_centroids": pa.array([c17.tolist()], pa.list_(pa.list_(pa.float32(), 32))),
                     "_pq_codebook": pa.array([cb.reshape(-1, 4).tolist()], pa.list_(pa.list_(pa.float32(), 4)))})
    mw = LanceFileWriter(str(root / "metadata.lance"), meta.schema, version="2.2")
    for k, v in {"artifact_version": "1", "distance_type": "l2", "num_partitions": "17",
                 "num_sub_vectors": "8", "num_bits": "8", "dimension": "32"}.items():
        mw.add_schema_metadata(f"lance:index_build:{k}", v)
    mw.write_batch(meta)
    mw.close()
    entries.append({"num_rows": 0, "ranges": []})  # an empty partition: no path, as Lance writes it
    (root / "manifest.json").write_text(json.dumps(
        {"version": 1, "num_partitions": 17, "metadata_file": "metadata.lance", "total_loss": 1.5, "partitions": entries}))

    art = PartitionArtifact.open(str(root))
    assert art.manifest.total_loss == 1.5 and max(len(e.ranges) for e in art.manifest.partitions) == 2
    assert art.read_partition(16)[0].size == 0
    build = dli.finalize_artifact(uri, "vector", str(root), num_tasks=3, compute=False)
    assert build.plan.train == () and build.plan.engine == "artifact"
    assert not any("encode" in str(k) for k in dict(build.__dask_graph__()))
    result = build.compute(scheduler="sync")
    assert result.num_segments_built == 3 and result.num_rows_indexed == len(vectors)
    truth = exact_knn(vectors, queries, 10, "l2")
    got = recall(result.dataset(), queries, truth)
    # the same model through the default path
    ref_uri = str(tmp_path / "ref.lance")
    write_vectors(ref_uri, vectors, max_rows_per_file=3000)
    ref = dli.create_index(ref_uri, "vector", "IVF_PQ", ivf_centroids=c17, pq_codebook=cb, num_sub_vectors=8,
                           num_tasks=3, scheduler="sync")
    assert got > 0.5 and got == pytest.approx(recall(ref, queries, truth), abs=0.005)


def test_crash_between_encode_and_finalize_resumes_from_the_artifact(tmp_path, vectors, queries, model, monkeypatch):
    import dask
    from dask.delayed import Delayed

    c, cb = model
    uri = str(tmp_path / "resume.lance")
    write_vectors(uri, vectors, max_rows_per_file=3000)
    root = str(tmp_path / "artifact")
    build = dli.create_index(uri, "vector", "IVF_PQ", ivf_centroids=c, pq_codebook=cb, num_sub_vectors=8,
                             num_tasks=3, engine="artifact", artifact_uri=root, compute=False)
    # Run the graph only up to the manifest: the process "dies" before finalize and commit.
    tok = build.plan.build_id[:8]
    (summary,) = dask.compute(Delayed(f"dli-manifest-{tok}", dict(build.__dask_graph__())), scheduler="sync")
    assert summary.num_rows == len(vectors)
    assert lance.dataset(uri).describe_indices() == [] and index_dirs(uri) == set()
    with pytest.raises(dli.InvalidInputError, match="finalize_artifact"):
        dli.create_index(uri, "vector", "IVF_PQ", ivf_centroids=c, pq_codebook=cb, num_sub_vectors=8,
                         engine="artifact", artifact_uri=root, compute=False)

    def no_encoding(*a, **k):
        raise AssertionError("resuming must not encode again")

    monkeypatch.setattr("dask_lance_index.model.pq.PQEncoder.encode", no_encoding)
    ds = dli.finalize_artifact(uri, "vector", root, num_tasks=2, scheduler="sync")
    assert ds.stats.index_stats("vector_idx")["num_indexed_rows"] == len(vectors)
    assert index_dirs(uri) == committed_segment_uuids(ds)
    truth = exact_knn(vectors, queries, 10, "l2")
    ref = lance_reference_recall(tmp_path, vectors, queries, truth, model)
    assert recall(ds, queries, truth) == pytest.approx(ref, abs=0.01)
    assert os.path.exists(os.path.join(root, "manifest.json"))  # a given artifact_uri is kept


def test_an_artifact_of_other_data_is_refused_and_leaves_nothing(tmp_path, vectors, good_artifact):
    uri = str(tmp_path / "small.lance")
    write_vectors(uri, vectors[:6000], max_rows_per_file=3000)
    with pytest.raises(InvalidPartitionArtifactError, match="holds 12000 rows but the dataset has 6000"):
        dli.finalize_artifact(uri, "vector", good_artifact, scheduler="sync")
    # as many rows, other fragments: caught by the finalize tasks, nothing left behind
    uri2 = str(tmp_path / "other.lance")
    write_vectors(uri2, vectors, max_rows_per_file=6000)
    with pytest.raises(InvalidPartitionArtifactError, match="fragment"):
        dli.finalize_artifact(uri2, "vector", good_artifact, num_tasks=2, scheduler="sync")
    assert index_dirs(uri2) == set() and lance.dataset(uri2).describe_indices() == []


def test_stable_row_ids_finalize_as_one_segment_and_refuse_a_split(tmp_path, vectors, queries, model):
    from dask_lance_index.datagen import vector_table

    c, cb = model
    uri = str(tmp_path / "stable.lance")
    lance.write_dataset(vector_table(vectors), uri, max_rows_per_file=3000, enable_stable_row_ids=True)
    assert lance.dataset(uri).has_stable_row_ids
    with pytest.raises(dli.InvalidInputError, match="stable row ids"):
        dli.create_index(uri, "vector", "IVF_PQ", ivf_centroids=c, pq_codebook=cb, num_sub_vectors=8,
                         num_tasks=2, engine="artifact", compute=False)
    ds = dli.create_index(uri, "vector", "IVF_PQ", ivf_centroids=c, pq_codebook=cb, num_sub_vectors=8,
                          num_tasks=1, engine="artifact", scheduler="sync")
    truth = exact_knn(vectors, queries, 10, "l2")
    ref = lance_reference_recall(tmp_path, vectors, queries, truth, model)
    assert recall(ds, queries, truth) == pytest.approx(ref, abs=0.01)
