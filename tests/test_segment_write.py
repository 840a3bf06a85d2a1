"""IVF_PQ, IVF_SQ and IVF_RQ segments written by the workers (segment_write) are Lance's own files.

Each check builds a segment with Lance and one with :func:`write_rq_segment` for
the same rows, model and centroids, and compares the files: schema, metadata,
the IVF protobuf, every column, and the ``Index`` handed to Lance's merge and
commit. Then whole builds: the ``precomputed`` engine (our codes, our files)
against the ``partitions`` engine (Lance encodes), by recall against NumPy
brute force with and without refine.
"""

import json
import os

import lance
import numpy as np
import pyarrow as pa
import pytest
from lance.file import LanceFileReader

import dask_lance_index as dli
from dask_lance_index.datagen import make_vectors, write_vectors
from dask_lance_index.evaluation import exact_knn, recall_at_k, search
from dask_lance_index.model.sq import sq_codes
from dask_lance_index.model import FlatEncoder, PQEncoder, SQEncoder, train_sq_bounds
from dask_lance_index.model.kmeans import normalize_rows
from dask_lance_index.model.rabitq import RQRotation
from dask_lance_index.model.rabitq_encoder import RQEncoder, rq_encode, rq_factors
from dask_lance_index.storage import read_rq_segment
from dask_lance_index.storage.rq_layout import pack_blocked_ex_codes
from dask_lance_index.storage.segment_files import (
    AUX_FILE_VERSION,
    segment_index,
    write_flat_segment,
    write_pq_segment,
    write_rq_segment,
    write_sq_segment,
)


def _on_disk(uri, index):
    """The sizes of a segment's files on disk (the Index must carry them: auxiliary.idx is
    another file version than Lance's, so another size than its)."""
    return [os.path.getsize(f"{uri}/_indices/{index.uuid}/{f.path}") for f in index.files]


def _files(uri, uuid):
    base = f"{uri}/_indices/{uuid}"
    return LanceFileReader(f"{base}/auxiliary.idx"), LanceFileReader(f"{base}/index.idx")


@pytest.mark.parametrize(
    "dim, num_bits, metric, whole",
    [(64, 5, "l2", False), (64, 5, "cosine", False), (40, 3, "l2", True), (48, 1, "l2", False), (64, 9, "cosine", True)],
)
def test_written_rq_segment_is_the_segment_lance_writes(tmp_path, dim, num_bits, metric, whole):
    x = make_vectors(3000, dim, num_clusters=25, seed=dim + num_bits)
    uri = str(tmp_path / "v.lance")
    ds = write_vectors(uri, x, max_rows_per_file=1500)
    frags = [0, 1] if whole else [0]
    centroids = x[np.random.default_rng(1).choice(len(x), 8, replace=False)]
    if metric == "cosine":
        centroids = normalize_rows(centroids)
    model = dli.build_rq_rotation(dim, num_bits=num_bits, seed=3)
    theirs = ds.create_index_uncommitted(
        "vector", "IVF_RQ", name="v_idx", metric=metric, fragment_ids=frags, num_partitions=8, num_bits=num_bits,
        ivf_centroids=centroids, rabitq_model=model,
    )
    # our files, from the exact (Lance-equal) codes of the same rows
    table = ds.scanner(columns=["vector"], with_row_id=True, fragments=[ds.get_fragment(f) for f in frags]).to_table()
    rows = np.stack(table["vector"].to_numpy(zero_copy_only=False)).astype(np.float32)
    if metric == "cosine":
        rows = normalize_rows(rows)
    rot = RQRotation.from_json(model)
    codes = rq_encode(rows, centroids, rot, num_bits)
    uuid = "0f0f0f0f-0000-4000-8000-000000000001"
    files = write_rq_segment(
        uri, uuid, row_ids=table["_rowid"].to_numpy(), part_ids=codes.part_ids, binary=codes.binary,
        ex_codes=pack_blocked_ex_codes(codes.ex, num_bits - 1) if num_bits > 1 else None,
        factors=rq_factors(codes, centroids, rot, num_bits), model=model, centroids=centroids, metric=metric,
        num_bits=num_bits, loss=float(np.sum(codes.rotated.astype(np.float64) ** 2)), packed=whole,
    )
    ours = segment_index(ds, index_uuid=uuid, name="v_idx", column="vector", fragment_ids=frags, quantizer="RQ",
                         metric=metric, num_bits=num_bits, files=files)

    (aux_t, idx_t), (aux_o, idx_o) = _files(uri, theirs.uuid), _files(uri, uuid)
    for t, o in ((aux_t, aux_o), (idx_t, idx_o)):
        assert o.metadata().schema.equals(t.metadata().schema, check_metadata=True)
    # index.idx in Lance's own file format version; auxiliary.idx in 2.0 (AUX_FILE_VERSION:
    # plain pages, cheaper to write), which Lance's reader reports as 0.3 and reads as well
    version = lambda f: (f.metadata().major_version, f.metadata().minor_version)  # noqa: E731
    assert version(idx_o) == version(idx_t) and version(aux_t) == (2, 2)
    assert AUX_FILE_VERSION == "2.0" and version(aux_o) == (0, 3)
    assert json.loads(json.loads(aux_o.metadata().schema.metadata[b"storage_metadata"])[0])["packed"] is whole
    # IVF protobuf: offsets and lengths byte for byte; centroids too (the loss is summed differently)
    assert bytes(aux_o.read_global_buffer(1)) == bytes(aux_t.read_global_buffer(1))
    assert bytes(idx_o.read_global_buffer(1))[:-8] == bytes(idx_t.read_global_buffer(1))[:-8]
    got, want = aux_o.read_all().to_table(), aux_t.read_all().to_table()
    assert got["_rowid"].equals(want["_rowid"])
    # codes: byte for byte under l2; under cosine Lance normalises the rows with its own
    # rounding, which may flip a coordinate within rounding of zero, or, with 8 ex-bits,
    # move a row's rescale optimum (measured: 96% of rows identical at 9 bits)
    seg_o, seg_t = read_rq_segment(uri, uuid), read_rq_segment(uri, theirs.uuid)
    same = (seg_o.codes == seg_t.codes).all(axis=1)
    if num_bits > 1:
        same &= (seg_o.columns["__blocked_ex_codes"] == seg_t.columns["__blocked_ex_codes"]).all(axis=1)
    assert same.mean() == 1.0 if metric == "l2" else same.mean() > 0.95, same.mean()
    if metric == "l2":
        assert got["_rabit_codes"].equals(want["_rabit_codes"])  # the stored (packed or not) bytes
    for name in want.column_names:
        if pa.types.is_floating(want.schema.field(name).type):
            a, b = got[name].to_numpy()[same], want[name].to_numpy()[same]
            # add factors are differences of larger terms: their error is relative to the column's scale
            scale = 1e-3 if name.startswith("__add") else 1e-4
            np.testing.assert_allclose(a, b, rtol=2e-3, atol=scale * float(np.abs(b).max()), err_msg=name)
    # the Index Lance's merge and commit take: the same files, fragments, field and details
    assert [f.path for f in ours.files] == [f.path for f in theirs.files]
    assert [f.size_bytes for f in ours.files] == _on_disk(uri, ours)
    assert (ours.fields, set(ours.fragment_ids), ours.index_version) == (theirs.fields, set(theirs.fragment_ids), theirs.index_version)
    assert ours.index_details[0] == theirs.index_details[0]
    # metric and num_bits lead Lance's details; its build-parameter map follows
    assert theirs.index_details[1].startswith(ours.index_details[1])


@pytest.mark.parametrize("metric, whole", [("l2", False), ("l2", True), ("cosine", False), ("dot", True)])
def test_written_pq_segment_is_the_segment_lance_writes(tmp_path, metric, whole):
    x = make_vectors(3000, 64, num_clusters=25, seed=5)
    uri = str(tmp_path / "v.lance")
    ds = write_vectors(uri, x, max_rows_per_file=1500)
    frags = [0, 1] if whole else [0]
    rng = np.random.default_rng(2)
    centroids = x[rng.choice(len(x), 8, replace=False)]
    if metric == "cosine":
        centroids = normalize_rows(centroids)
    codebook = (0.3 * rng.standard_normal((8, 256, 8))).astype(np.float32)
    theirs = ds.create_index_uncommitted(
        "vector", "IVF_PQ", name="v_idx", metric=metric, fragment_ids=frags, num_partitions=8, num_sub_vectors=8,
        ivf_centroids=centroids, pq_codebook=codebook,
    )
    table = ds.scanner(columns=["vector"], with_row_id=True, fragments=[ds.get_fragment(f) for f in frags]).to_table()
    rows = np.stack(table["vector"].to_numpy(zero_copy_only=False)).astype(np.float32)
    parts, codes, loss = PQEncoder(centroids, codebook, metric).encode(rows, with_loss=True)
    uuid = "0f0f0f0f-0000-4000-8000-000000000002"
    files = write_pq_segment(uri, uuid, row_ids=table["_rowid"].to_numpy(), part_ids=parts, codes=codes,
                             codebook=codebook, centroids=centroids, metric=metric, loss=loss, transposed=whole)
    ours = segment_index(ds, index_uuid=uuid, name="v_idx", column="vector", fragment_ids=frags, quantizer="PQ",
                         metric=metric, num_bits=8, num_sub_vectors=8, files=files)
    (aux_t, idx_t), (aux_o, idx_o) = _files(uri, theirs.uuid), _files(uri, uuid)
    for t, o in ((aux_t, aux_o), (idx_t, idx_o)):
        assert o.metadata().schema.equals(t.metadata().schema, check_metadata=True)
    assert len(aux_o.metadata().global_buffers) == len(aux_t.metadata().global_buffers) == 3
    for i in (1, 2):  # the IVF offsets and lengths, then the codebook tensor: byte for byte
        assert bytes(aux_o.read_global_buffer(i)) == bytes(aux_t.read_global_buffer(i)), i
    assert bytes(idx_o.read_global_buffer(1))[:-8] == bytes(idx_t.read_global_buffer(1))[:-8]
    got, want = aux_o.read_all().to_table(), aux_t.read_all().to_table()
    assert got["_rowid"].equals(want["_rowid"])
    if metric == "dot" and not whole:
        pass  # Lance mis-encodes partial dot segments (largest inner product); not compared
    else:
        # the stored codes byte for byte (cosine: Lance's own row normalisation may move a
        # near-tie, so allow a few codes in a thousand)
        same = np.mean(got["__pq_code"].combine_chunks().flatten().to_numpy() == want["__pq_code"].combine_chunks().flatten().to_numpy())
        assert same == 1.0 if metric != "cosine" else same > 0.995, same
    assert [f.size_bytes for f in ours.files] == _on_disk(uri, ours)
    assert (ours.fields, set(ours.fragment_ids), ours.index_version) == (theirs.fields, set(theirs.fragment_ids), theirs.index_version)
    assert theirs.index_details[1].startswith(ours.index_details[1])


def _lances_segment(tmp_path, index_type, metric, whole, data_seed, centroid_seed):
    """A segment Lance writes of ``index_type`` over 8 partitions of 3,000 24-d rows (both
    fragments when ``whole``), and the rows it covers: ``(uri, ds, frags, centroids, Lance's
    Index, the rows' table with _rowid, the rows)``."""
    x = make_vectors(3000, 24, num_clusters=25, seed=data_seed)
    uri = str(tmp_path / "v.lance")
    ds = write_vectors(uri, x, max_rows_per_file=1500)
    frags = [0, 1] if whole else [0]
    centroids = x[np.random.default_rng(centroid_seed).choice(len(x), 8, replace=False)]
    if metric == "cosine":
        centroids = normalize_rows(centroids)
    theirs = ds.create_index_uncommitted(
        "vector", index_type, name="v_idx", metric=metric, fragment_ids=frags, num_partitions=8, ivf_centroids=centroids,
    )
    table = ds.scanner(columns=["vector"], with_row_id=True, fragments=[ds.get_fragment(f) for f in frags]).to_table()
    rows = np.stack(table["vector"].to_numpy(zero_copy_only=False)).astype(np.float32)
    return uri, ds, frags, centroids, theirs, table, rows


@pytest.mark.parametrize("metric, whole", [("l2", False), ("l2", True), ("cosine", False), ("dot", True)])
def test_written_sq_segment_is_the_segment_lance_writes(tmp_path, metric, whole):
    uri, ds, frags, centroids, theirs, table, rows = _lances_segment(tmp_path, "IVF_SQ", metric, whole, 6, 3)
    # Lance takes its bounds from a sample of 65,536 rows: here every row of the segment
    bounds = train_sq_bounds(normalize_rows(rows) if metric == "cosine" else rows)
    parts, codes, loss = SQEncoder(centroids, bounds, metric).encode(rows)
    uuid = "0f0f0f0f-0000-4000-8000-000000000003"
    files = write_sq_segment(uri, uuid, row_ids=table["_rowid"].to_numpy(), part_ids=parts, codes=codes,
                             bounds=bounds, centroids=centroids, metric=metric, loss=loss)
    ours = segment_index(ds, index_uuid=uuid, name="v_idx", column="vector", fragment_ids=frags, quantizer="SQ",
                         metric=metric, num_bits=8, files=files)
    (aux_t, idx_t), (aux_o, idx_o) = _files(uri, theirs.uuid), _files(uri, uuid)
    assert idx_o.metadata().schema.equals(idx_t.metadata().schema, check_metadata=True)
    mine, lances = aux_o.metadata().schema, aux_t.metadata().schema
    if metric != "cosine":
        assert mine.equals(lances, check_metadata=True)  # the bounds, too, to the last digit
    else:  # Lance's row normalisation rounds a value one float32 step away now and then
        assert mine.equals(lances) and mine.metadata.keys() == lances.metadata.keys()
        got_b, want_b = (json.loads(json.loads(m.metadata[b"storage_metadata"])[0])["bounds"] for m in (mine, lances))
        assert got_b == pytest.approx(want_b, rel=1e-6)
    assert len(aux_o.metadata().global_buffers) == len(aux_t.metadata().global_buffers)
    assert bytes(aux_o.read_global_buffer(1)) == bytes(aux_t.read_global_buffer(1))  # partition offsets, lengths
    assert bytes(idx_o.read_global_buffer(1))[:-8] == bytes(idx_t.read_global_buffer(1))[:-8]
    got, want = aux_o.read_all().to_table(), aux_t.read_all().to_table()
    assert got["_rowid"].equals(want["_rowid"])
    same = np.mean(got["__sq_code"].combine_chunks().flatten().to_numpy() == want["__sq_code"].combine_chunks().flatten().to_numpy())
    assert same == 1.0 if metric != "cosine" else same > 0.999, same
    assert [f.size_bytes for f in ours.files] == _on_disk(uri, ours)
    assert (ours.fields, set(ours.fragment_ids), ours.index_version) == (theirs.fields, set(theirs.fragment_ids), theirs.index_version)
    assert theirs.index_details[1].startswith(ours.index_details[1])


@pytest.mark.parametrize("metric, whole", [("l2", False), ("l2", True), ("cosine", False), ("dot", True)])
def test_written_flat_segment_is_the_segment_lance_writes(tmp_path, metric, whole):
    uri, ds, frags, centroids, theirs, table, rows = _lances_segment(tmp_path, "IVF_FLAT", metric, whole, 7, 4)
    parts, stored, loss = FlatEncoder(centroids, metric).encode(rows)
    uuid = "0f0f0f0f-0000-4000-8000-000000000004"
    files = write_flat_segment(uri, uuid, row_ids=table["_rowid"].to_numpy(), part_ids=parts, vectors=stored,
                               centroids=centroids, metric=metric, loss=loss)
    ours = segment_index(ds, index_uuid=uuid, name="v_idx", column="vector", fragment_ids=frags, quantizer="FLAT",
                         metric=metric, num_bits=8, files=files)
    (aux_t, idx_t), (aux_o, idx_o) = _files(uri, theirs.uuid), _files(uri, uuid)
    for t, o in ((aux_t, aux_o), (idx_t, idx_o)):
        assert o.metadata().schema.equals(t.metadata().schema, check_metadata=True)
    assert bytes(aux_o.read_global_buffer(1)) == bytes(aux_t.read_global_buffer(1))  # partition offsets, lengths
    assert bytes(idx_o.read_global_buffer(1))[:-8] == bytes(idx_t.read_global_buffer(1))[:-8]
    got, want = aux_o.read_all().to_table(), aux_t.read_all().to_table()
    assert got["_rowid"].equals(want["_rowid"])
    g = got["flat"].combine_chunks().flatten().to_numpy()
    w = want["flat"].combine_chunks().flatten().to_numpy()
    if metric == "cosine":  # Lance's row normalisation may round a value one float32 step away
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)
    else:
        np.testing.assert_array_equal(g, w)
    assert [f.size_bytes for f in ours.files] == _on_disk(uri, ours)
    assert (ours.fields, set(ours.fragment_ids), ours.index_version) == (theirs.fields, set(theirs.fragment_ids), theirs.index_version)
    assert theirs.index_details[1].startswith(ours.index_details[1])


def test_rq_encoder_codes_are_consistent_and_near_lances():
    x = make_vectors(6000, 64, num_clusters=30, seed=11)
    centroids = x[:12]
    rot = RQRotation.from_json(dli.build_rq_rotation(64, num_bits=5, seed=2))
    out = RQEncoder(centroids, rot, "l2", 5).encode(x)
    exact = rq_encode(x, centroids, rot, 5)
    np.testing.assert_array_equal(out["part_ids"], exact.part_ids)
    assert 1 - np.unpackbits(out["binary"] ^ exact.binary).mean() > 0.9999
    # the ex-codes: most coordinates as Lance's per-row optimum, the rest one step off
    from dask_lance_index.storage.rq_layout import unpack_blocked_ex_codes

    ex = unpack_blocked_ex_codes(out["ex"], 4, 64)
    assert 0.85 < np.mean(ex == exact.ex) < 1.0
    # quantisation quality: cosine between residual and reconstruction, within 0.1% of Lance's
    def quality(values):
        from dask_lance_index.model.rabitq_encoder import RQCodes

        u = RQCodes(exact.part_ids, exact.binary, values, exact.rotated).centred(5)
        r = exact.rotated
        keep = np.linalg.norm(r, axis=1) > 0  # the centroids themselves have no residual
        return np.mean(np.einsum("ij,ij->i", r, u)[keep] / np.linalg.norm(r, axis=1)[keep] / np.linalg.norm(u, axis=1)[keep])

    assert quality(ex) > quality(exact.ex) - 1e-3
    # the stored factors are the ones Lance computes from these very codes
    from dask_lance_index.model.rabitq_encoder import RQCodes

    want = rq_factors(RQCodes(exact.part_ids, out["binary"], ex, exact.rotated), centroids, rot, 5)
    for name, value in want.items():
        np.testing.assert_allclose(out[name], value, rtol=1e-4, atol=1e-3 * float(np.abs(value).max()))


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_precomputed_rq_build_recall_matches_lance_encoding(tmp_path, vectors, queries, cluster_client, metric):
    """The same build (seed, centroids, rotation) with Lance encoding and with our files:
    recall@10 against brute force within 0.01, with and without refine. Without the metric
    in ``index_details``, Lance's refine re-ranked a cosine index by raw l2 (0.70)."""
    truth = exact_knn(vectors, queries, 10, metric)
    got = {}
    for engine in ("partitions", "precomputed"):
        uri = str(tmp_path / f"{engine}.lance")
        write_vectors(uri, vectors, max_rows_per_file=3000)
        build = dli.create_index(uri, "vector", "IVF_RQ", metric=metric, num_partitions=16, num_tasks=3, seed=4,
                                 engine=engine, compute=False)
        result = cluster_client.compute(build).result()
        assert result.num_rows_indexed == len(vectors) and result.num_merges >= 1
        ds = result.dataset()
        got[engine] = [
            recall_at_k(search(ds, "vector", queries, 10, nprobes=6, refine_factor=rf)[0], truth) for rf in (None, 5)
        ]
    assert got["precomputed"] == pytest.approx(got["partitions"], abs=0.01), got
    assert got["precomputed"][1] > 0.95, got  # refine re-ranks by the true metric


def test_precomputed_rq_refuses_dot(tmp_path, vectors):
    uri = str(tmp_path / "v.lance")
    write_vectors(uri, vectors, max_rows_per_file=3000)
    with pytest.raises(dli.InvalidInputError, match="under l2 or cosine; Lance encodes IVF_RQ"):
        dli.create_index(uri, "vector", "IVF_RQ", metric="dot", num_partitions=16, engine="precomputed")
    assert lance.dataset(uri).describe_indices() == []


def test_sq_codes_in_slices_equal_the_formula_on_the_whole_batch():
    """The codes are made a slice of rows at a time through one float64 buffer; they must
    be the whole batch's ``floor((v - start) * 255 / (end - start))``, clipped, in float64,
    on every slice, at code edges and outside the bounds."""
    rng = np.random.default_rng(11)
    start, end = -2.5, 3.75
    x = rng.uniform(-3, 4.5, (5001, 24)).astype(np.float32)  # three slices, and values outside
    x[:100] = np.float32(start + np.arange(100 * 24).reshape(100, 24) % 256 * (end - start) / 255)  # on the edges
    want = np.clip(np.floor((x.astype(np.float64) - start) * 255 / (end - start)), 0, 255).astype(np.uint8)
    assert np.array_equal(sq_codes(x, (start, end)), want)
    assert (want == 0).any() and (want == 255).any()
    assert not sq_codes(x, (1.0, 1.0)).any()  # no range: every code 0


def test_rows_given_back_as_written_leave_the_file_the_same(tmp_path, monkeypatch):
    """write_flat_segment with ``runs`` and ``written`` (each run sorted by partition, as a
    build task holds its batches): the same auxiliary.idx byte for byte as from the rows
    taken whole; every row of every run is handed to ``written`` once, in runs' order, and
    only once no later batch reads it; runs out of partition order are refused."""
    from dask_lance_index.runtime import give_back
    from dask_lance_index.storage import lance_file, segment_files

    monkeypatch.setattr(segment_files, "_WRITE_BYTES", 1 << 18)  # batches of 1,927 rows: many per run
    monkeypatch.setattr(lance_file, "_CALL_BYTES", 1 << 18)  # and as many write calls
    rng = np.random.default_rng(3)
    n, d, k, run = 50_000, 32, 40, 4096
    rows = rng.standard_normal((n, d)).astype(np.float32)
    parts = rng.integers(0, k, n).astype(np.uint32)
    ids = np.arange(n, dtype=np.uint64) * 3
    centroids = rng.standard_normal((k, d)).astype(np.float32)
    starts = list(range(0, n, run))
    for s in starts:  # each run sorted by partition, rows of one partition in their order
        o = np.argsort(parts[s : s + run], kind="stable")
        rows[s : s + run], parts[s : s + run], ids[s : s + run] = rows[s : s + run][o], parts[s : s + run][o], ids[s : s + run][o]
    plain = write_flat_segment(str(tmp_path / "a"), "0f0f0f0f-0000-4000-8000-00000000000a", row_ids=ids,
                               part_ids=parts, vectors=rows.copy(), centroids=centroids, metric="l2", loss=1.0)
    held = rows.copy()
    handed = []

    def written(start, stop):
        handed.append((start, stop))
        give_back(held, start, stop)

    given = write_flat_segment(str(tmp_path / "b"), "0f0f0f0f-0000-4000-8000-00000000000b", row_ids=ids,
                               part_ids=parts, vectors=held, centroids=centroids, metric="l2", loss=1.0,
                               runs=starts, written=written)
    assert plain == given
    # The rows' file (index.idx holds no row): its data pages byte for byte (all but its last
    # 4 KB, where Lance writes the schema, whose metadata keys it orders as it likes), and all
    # it reads back.
    a_path = f"{tmp_path}/a/_indices/0f0f0f0f-0000-4000-8000-00000000000a/auxiliary.idx"
    b_path = f"{tmp_path}/b/_indices/0f0f0f0f-0000-4000-8000-00000000000b/auxiliary.idx"
    a, b = open(a_path, "rb").read(), open(b_path, "rb").read()
    assert len(a) == len(b) > n * (4 * d + 8) and a[:-4096] == b[:-4096]
    ra, rb = LanceFileReader(a_path), LanceFileReader(b_path)
    assert ra.read_all().to_table().equals(rb.read_all().to_table())
    assert bytes(ra.read_global_buffer(1)) == bytes(rb.read_global_buffer(1))
    assert ra.metadata().schema.equals(rb.metadata().schema, check_metadata=True)
    covered = np.zeros(n, np.int64)
    for start, stop in handed:
        covered[start:stop] += 1
    assert (covered == 1).all()
    assert len(handed) > len(starts)  # handed back in pieces as the file was written, not at the end
    for s in starts:  # within a run, front to back
        mine = [h for h in handed if s <= h[0] < s + run]
        assert [h[0] for h in mine] == sorted(h[0] for h in mine) and mine[0][0] == s
    shuffled = parts.copy()
    shuffled[:run] = shuffled[:run][::-1]
    with pytest.raises(ValueError, match="sorted by partition"):
        write_flat_segment(str(tmp_path / "c"), "0f0f0f0f-0000-4000-8000-00000000000c", row_ids=ids,
                           part_ids=shuffled, vectors=rows, centroids=centroids, metric="l2", loss=1.0,
                           runs=starts, written=lambda a, b: None)
