"""PlainFileWriter (storage.lance_file) writes the file Lance's own writer writes.

Each check writes the same columns, global buffers and schema metadata with
``LanceFileWriter(version="2.0")`` and with :class:`PlainFileWriter`, then takes both files
apart: the schema descriptor field by field, every page's encoding, the global buffers,
the footer's version, and every value read back by Lance's reader, whole and in ranges
that cross pages. Then the row-major segment writer that uses it: the same
``auxiliary.idx`` whether the rows are written straight from the task's array or copied
out a batch at a time, every row handed back once.
"""

import os
import struct

import numpy as np
import pyarrow as pa
import pytest
from lance.file import LanceFileReader, LanceFileWriter

from dask_lance_index.storage import lance_file
from dask_lance_index.storage import protobuf as pb
from dask_lance_index.storage import segment_files
from dask_lance_index.storage.lance_file import PlainFileWriter, plain_columns


def _taken_apart(path):
    """(footer version, schema fields, schema metadata as a dict, row count, the global
    buffers after the descriptor, each column's encoding and its pages' encodings and rows)."""
    data = open(path, "rb").read()
    meta_start, cmo, gbo, num_buffers, num_columns, major, minor = struct.unpack("<QQQIIHH", data[-40:-4])
    assert data[-4:] == b"LANC"
    buffers = []
    for i in range(num_buffers):
        pos, size = struct.unpack("<QQ", data[gbo + 16 * i : gbo + 16 * i + 16])
        buffers.append(data[pos : pos + size])
    columns = []
    for i in range(num_columns):
        pos, size = struct.unpack("<QQ", data[cmo + 16 * i : cmo + 16 * i + 16])
        meta = pb.fields(data[pos : pos + size])
        pages = [pb.fields(p) for p in meta.get(2, [])]
        columns.append((meta[1], [p[4][0] for p in pages], sum(p[3][0] for p in pages)))
    descriptor = pb.fields(buffers[0])
    schema = pb.fields(descriptor[1][0])
    metadata = {}
    for entry in schema.get(5, []):
        kv = pb.fields(entry)
        metadata[kv[1][0]] = kv[2][0]
    return (major, minor), schema[1], metadata, descriptor.get(2, [0])[0], buffers[1:], columns


def _write_both(tmp_path, schema, columns, *, pieces=1, buffers=(b"ivf", b"x" * 70), metadata=None):
    """The file from LanceFileWriter and from PlainFileWriter (``pieces`` pieces a column)."""
    metadata = metadata or {"distance_type": "l2", "lance:ivf": "1"}
    lance_path, plain_path = str(tmp_path / "lance.idx"), str(tmp_path / "plain.idx")
    writer = LanceFileWriter(lance_path, schema, version="2.0")
    arrays = []
    for f in schema:
        values = columns[f.name]
        if pa.types.is_fixed_size_list(f.type):
            arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), f.type.list_size))
        else:
            arrays.append(pa.array(values, type=f.type))
    writer.write_batch(pa.record_batch(arrays, schema=schema))
    for b in buffers:
        writer.add_global_buffer(b)
    for k, v in metadata.items():
        writer.add_schema_metadata(k, v)
    writer.close()
    n = len(next(iter(columns.values())))
    with PlainFileWriter(plain_path, plain_columns(schema), n) as plain:
        for i in reversed(range(len(schema))):  # in another order than the schema's: any order is fine
            plain.write_column(i, np.array_split(columns[schema.field(i).name], pieces))
        for b in buffers:
            plain.add_global_buffer(b)
        for k, v in metadata.items():
            plain.add_schema_metadata(k, v)
        plain.close()
    return lance_path, plain_path


@pytest.mark.parametrize("leaf, dim, nullable", [(pa.float32(), 128, False), (pa.uint8(), 24, True),
                                                 (pa.float32(), 3, True)])
def test_plain_file_is_lances_file(tmp_path, monkeypatch, leaf, dim, nullable):
    """Many pages (small pages here), pieces that end inside pages: the same schema, metadata,
    encodings, global buffers and values, read whole and across pages."""
    monkeypatch.setattr(lance_file, "PAGE_BYTES", 40_000)
    rng = np.random.default_rng(0)
    n = 5_003
    values = (rng.random((n, dim)) * 250).astype(leaf.to_pandas_dtype())
    ids = rng.integers(0, 1 << 60, n).astype(np.uint64)
    factors = rng.standard_normal(n).astype(np.float32)  # a float32 column, as IVF_RQ's factors
    schema = pa.schema([pa.field("_rowid", pa.uint64()), pa.field("v", pa.list_(leaf, dim), nullable=nullable),
                        pa.field("__add_factors", pa.float32())])
    a, b = _write_both(tmp_path, schema, {"_rowid": ids, "v": values, "__add_factors": factors}, pieces=7)
    ours, theirs = _taken_apart(b), _taken_apart(a)
    assert ours[:5] == theirs[:5]
    assert ours[3] == n and ours[2][b"lance:ivf"] == b"1"
    for (enc, pages, rows), (lenc, lpages, lrows) in zip(ours[5], theirs[5]):
        assert enc == lenc and rows == lrows == n
        assert set(pages) == set(lpages)  # one encoding on every page, Lance's
    assert len(ours[5][1][1]) > 1  # the values in several pages
    ra, rb = LanceFileReader(a), LanceFileReader(b)
    whole = rb.read_all().to_table()
    assert whole.equals(ra.read_all().to_table())
    assert whole.schema.equals(ra.metadata().schema, check_metadata=True)
    assert np.array_equal(whole.column("v").combine_chunks().values.to_numpy().reshape(n, dim), values)
    page_rows = 40_000 // (dim * leaf.bit_width // 8) // 64 * 64
    for start, count in [(0, 1), (page_rows - 3, 7), (n - 5, 5), (1000, 2500)]:
        part = rb.read_range(start, count).to_table()
        assert part.column("_rowid").to_numpy().tolist() == ids[start : start + count].tolist()
        assert np.array_equal(part.column("__add_factors").to_numpy(), factors[start : start + count])
    assert bytes(rb.read_global_buffer(2)) == b"x" * 70


def test_short_writes_go_on(tmp_path, monkeypatch):
    """A writev that writes part of what it was asked (a signal, a full pipe) is taken up
    where it stopped: the same file."""
    real = os.writev

    def short(fd, views):
        total = sum(memoryview(v).nbytes for v in views)
        if total > 100:  # a third of it, cut inside a piece
            flat = b"".join(bytes(memoryview(v).cast("B")) for v in views)
            return real(fd, [flat[: total // 3 + 1]])
        return real(fd, views)

    schema = pa.schema([pa.field("_rowid", pa.uint64()), pa.field("v", pa.list_(pa.float32(), 16), nullable=False)])
    ids = np.arange(3000, dtype=np.uint64)
    values = np.arange(3000 * 16, dtype=np.float32).reshape(3000, 16)
    a, b = _write_both(tmp_path, schema, {"_rowid": ids, "v": values}, pieces=5)
    expected = open(b, "rb").read()
    monkeypatch.setattr(lance_file.os, "writev", short)
    with PlainFileWriter(str(tmp_path / "short.idx"), plain_columns(schema), 3000) as plain:
        plain.write_column(1, np.array_split(values, 5))
        plain.write_column(0, np.array_split(ids, 5))
        plain.add_global_buffer(b"ivf")
        plain.add_global_buffer(b"x" * 70)
        plain.add_schema_metadata("distance_type", "l2")
        plain.add_schema_metadata("lance:ivf", "1")
        plain.close()
    assert open(tmp_path / "short.idx", "rb").read() == expected


def test_plain_writer_refuses_what_it_cannot_write(tmp_path):
    schema = pa.schema([pa.field("_rowid", pa.uint64()), pa.field("v", pa.list_(pa.float32(), 4))])
    assert plain_columns(pa.schema([pa.field("v", pa.list_(pa.float16(), 4))])) is None
    assert plain_columns(pa.schema([pa.field("s", pa.string())])) is None
    assert plain_columns(pa.schema([pa.field("v", pa.uint64(), metadata={"k": "v"})])) is None
    with PlainFileWriter(str(tmp_path / "f.idx"), plain_columns(schema), 10) as plain:
        with pytest.raises(ValueError, match="takes C-contiguous float32 rows of 4 values"):
            plain.write_column(1, [np.zeros((10, 4), np.float64)])
        with pytest.raises(ValueError, match="got 9 rows, the file has 10"):
            plain.write_column(1, [np.zeros((9, 4), np.float32)])
        with pytest.raises(ValueError, match="not written: write every column"):
            plain.close()
        plain.write_column(0, [np.zeros(10, np.uint64)])
        with pytest.raises(ValueError, match="written already"):
            plain.write_column(0, [np.zeros(10, np.uint64)])
    assert not (tmp_path / "f.idx").exists()  # left unclosed: removed, no partial file
    with pytest.raises(OSError):  # a write that fails (the disk full, here a closed descriptor) as well
        with PlainFileWriter(str(tmp_path / "g.idx"), plain_columns(schema), 10) as plain:
            os.close(plain._fd)
            plain.write_column(0, [np.zeros(10, np.uint64)])
    assert not (tmp_path / "g.idx").exists()


@pytest.mark.parametrize("num_partitions", [8, 4096])
def test_segment_rows_written_straight_or_copied_are_the_same_file(tmp_path, monkeypatch, num_partitions):
    """write_flat_segment writes the rows straight from the task's array where its runs of
    consecutive rows are long (few partitions), copies them out a batch at a time where they
    are short (many): either way the file Lance's writer writes (as it does with
    DASK_LANCE_INDEX_LANCE_FILE_WRITER set: every column and global buffer as read), every
    row handed back once."""
    rng = np.random.default_rng(num_partitions)
    n, d, run = 20_000, 16, 4096
    rows = rng.standard_normal((n, d)).astype(np.float32)
    parts = rng.integers(0, num_partitions, n).astype(np.uint32)
    ids = rng.permutation(n).astype(np.uint64)
    starts = list(range(0, n, run))
    for s in starts:
        o = np.argsort(parts[s : s + run], kind="stable")
        rows[s : s + run], parts[s : s + run], ids[s : s + run] = rows[s : s + run][o], parts[s : s + run][o], ids[s : s + run][o]
    centroids = rng.standard_normal((num_partitions, d)).astype(np.float32)
    cuts = np.flatnonzero(np.diff(np.argsort(parts, kind="stable")) != 1)
    assert ((len(cuts) + 1) * segment_files._PIECE_BYTES <= rows.nbytes) == (num_partitions == 8)  # both ways taken
    handed = []
    write = dict(row_ids=ids, part_ids=parts, centroids=centroids, metric="l2", loss=2.0)
    segment_files.write_flat_segment(str(tmp_path / "p"), "0f0f0f0f-0000-4000-8000-00000000000a", vectors=rows,
                                     runs=starts, written=lambda a, b: handed.append((a, b)), **write)
    monkeypatch.setenv(segment_files.LANCE_FILE_WRITER_ENV, "1")  # Lance's writer
    segment_files.write_flat_segment(str(tmp_path / "l"), "0f0f0f0f-0000-4000-8000-00000000000b", vectors=rows,
                                     **write)
    readers = [LanceFileReader(f"{tmp_path}/{x}/_indices/0f0f0f0f-0000-4000-8000-00000000000{y}/auxiliary.idx")
               for x, y in (("p", "a"), ("l", "b"))]
    tables = [r.read_all().to_table() for r in readers]
    # ours starts with the rows (PlainFileWriter), Lance's writer with other things
    first = [r.metadata().columns[1].pages[0].buffers[0].position for r in readers]
    assert first[0] == 0 < first[1]
    assert tables[0].equals(tables[1]) and tables[0].num_rows == n
    assert tables[0].schema.equals(tables[1].schema, check_metadata=True)
    assert bytes(readers[0].read_global_buffer(1)) == bytes(readers[1].read_global_buffer(1))
    order = np.argsort(parts, kind="stable")
    assert np.array_equal(tables[0].column("_rowid").to_numpy(), ids[order])
    covered = np.zeros(n, np.int64)
    for a, b in handed:
        covered[a:b] += 1
    assert (covered == 1).all()
