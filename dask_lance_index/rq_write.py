"""Write an IVF_RQ segment in Lance's own files, from codes computed with NumPy.

pylance 14.0.2 takes precomputed codes for PQ only; for IVF_RQ it rotates and
quantises every row itself, at 12.6-15 s per million rows (docs/benchmarks.md).
This module writes the two files Lance's ``create_index_uncommitted`` writes
for one IVF_RQ segment, laid out as Lance lays them out (read back and pinned
by ``tests/test_rq_write.py`` against segments Lance built), and returns the
``lance.dataset.Index`` that Lance's merge and commit take:

``_indices/<uuid>/auxiliary.idx``
    one row per indexed row, grouped by partition in partition order:
    ``_rowid``, ``_rabit_codes`` (sign bits in Lance's fast-scan block layout),
    ``__add_factors``, ``__scale_factors``, ``__error_factors`` and, for
    ``num_bits > 1``, ``__blocked_ex_codes``, ``__add_factors_ex``,
    ``__scale_factors_ex``; schema metadata ``distance_type``,
    ``storage_metadata`` (the RaBitQ model) and ``lance:ivf`` (the global
    buffer holding the IVF protobuf: partition offsets and lengths).
``_indices/<uuid>/index.idx``
    no rows; schema metadata ``lance:index``, ``lance:flat`` and ``lance:ivf``
    (IVF protobuf with the centroids and the loss).

The codes and factors come from :mod:`.rq_encode`; :mod:`.rq_codes` holds the
storage layouts and reads a segment back.
"""

from __future__ import annotations

import datetime
import json
import os
import struct

import numpy as np

from .rq_codes import pack_lance_codes

__all__ = ["ivf_message", "write_rq_segment", "RQ_INDEX_DETAILS_TYPE"]

RQ_INDEX_DETAILS_TYPE = "/lance.index.pb.VectorIndexDetails"
_FLOAT32 = 2  # lance.index.pb.TensorDataType.FLOAT32
_WRITE_ROWS = 65536  # rows per written batch: the reordered copies stay this small


def _varint(value: int) -> bytes:
    out = bytearray()
    value = int(value)
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _packed(values) -> bytes:
    return b"".join(_varint(v) for v in values)


def ivf_message(offsets, lengths, centroids: np.ndarray | None = None, loss: float | None = None) -> bytes:
    """Lance's ``lance.index.pb.IVF`` message: packed offsets (2) and lengths (3), the
    centroids as a float32 Tensor (4: data type 1, shape 2, raw data 3) and the loss (5)."""
    msg = _field(2, _packed(offsets)) + _field(3, _packed(lengths))
    if centroids is not None:
        c = np.ascontiguousarray(centroids, dtype="<f4")
        tensor = _varint(1 << 3 | 0) + _varint(_FLOAT32) + _field(2, _packed(c.shape)) + _field(3, c.tobytes())
        msg += _field(4, tensor)
    if loss is not None:
        msg += _varint(5 << 3 | 1) + struct.pack("<d", float(loss))
    return msg


# lance.index.pb.VectorMetricType; l2 is the protobuf default, which is not written
_METRIC_TYPE = {"l2": 0, "cosine": 1, "dot": 2}


def rq_index_details(num_bits: int, metric: str) -> tuple[str, bytes]:
    """``Index.index_details`` of an IVF_RQ segment, as Lance records it: VectorIndexDetails
    with the metric (field 1; Lance's refine step reads it: without it a cosine index is
    re-ranked by raw l2) and the RaBitQ compression (field 6: ``num_bits``)."""
    metric_type = _METRIC_TYPE[metric]
    head = _varint(1 << 3 | 0) + _varint(metric_type) if metric_type else b""
    return RQ_INDEX_DETAILS_TYPE, head + _field(6, _varint(1 << 3 | 0) + _varint(num_bits))


def _aux_schema(dimension: int, num_bits: int):
    import pyarrow as pa

    fields = [
        ("_rowid", pa.uint64()),
        ("_rabit_codes", pa.list_(pa.uint8(), dimension // 8)),
        ("__add_factors", pa.float32()),
        ("__scale_factors", pa.float32()),
        ("__error_factors", pa.float32()),
    ]
    if num_bits > 1:
        ex_bytes = -(-dimension // 64) * 8 * (num_bits - 1)
        fields += [
            ("__blocked_ex_codes", pa.list_(pa.uint8(), ex_bytes)),
            ("__add_factors_ex", pa.float32()),
            ("__scale_factors_ex", pa.float32()),
        ]
    return pa.schema(fields)


def write_rq_segment(
    dataset_uri: str,
    index_uuid: str,
    *,
    row_ids: np.ndarray,
    part_ids: np.ndarray,
    binary: np.ndarray,
    ex_codes: np.ndarray | None,
    factors: dict,
    model: str,
    centroids: np.ndarray,
    metric: str,
    num_bits: int,
    loss: float,
    packed: bool = False,
    storage_options: dict | None = None,
) -> list:
    """Write one IVF_RQ segment's files; returns the file names.

    ``binary``: the sign bits, row-major ``(n, dimension / 8)``; ``ex_codes``: the
    ex-codes in Lance's blocked layout (:func:`.rq_codes.pack_blocked_ex_codes`),
    ``None`` for ``num_bits=1``; ``factors``: the float columns by Lance's names.
    Rows may come in any order: they are grouped by partition here (stable, so
    each partition keeps the order it was given). ``packed``: store the sign
    bits in Lance's fast-scan blocks, as Lance does for a segment that covers
    every fragment of the dataset; a partial segment keeps them row-major
    (``"packed": false``), and Lance's merge packs them.
    """
    import pyarrow as pa
    from lance.file import LanceFileWriter

    from ._lance import is_local

    num_partitions, dimension = centroids.shape
    order = np.argsort(part_ids, kind="stable")
    lengths = np.bincount(np.asarray(part_ids)[order], minlength=num_partitions)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    schema = _aux_schema(dimension, num_bits)
    code_bytes = dimension // 8
    # The sign bits are small (d / 8 bytes a row): reorder and pack them whole, since
    # a packed block spans 32 rows of one partition. The rest is gathered in slices.
    stored_binary = binary[order]
    if packed:
        stored_binary = pack_lance_codes(stored_binary, lengths).reshape(-1, code_bytes)
    float_names = ["__add_factors", "__scale_factors", "__error_factors"]
    if num_bits > 1:
        float_names += ["__add_factors_ex", "__scale_factors_ex"]
    base = f"{str(dataset_uri).rstrip('/')}/_indices/{index_uuid}"
    if is_local(base):
        base = base.removeprefix("file://")
        os.makedirs(base, exist_ok=True)
    written = []
    aux = LanceFileWriter(f"{base}/auxiliary.idx", schema, version="2.2", storage_options=storage_options)
    for lo in range(0, len(order), _WRITE_ROWS):
        take = order[lo : lo + _WRITE_ROWS]
        cols = {
            "_rowid": pa.array(np.asarray(row_ids, dtype=np.uint64)[take]),
            "_rabit_codes": pa.FixedSizeListArray.from_arrays(pa.array(stored_binary[lo : lo + len(take)].reshape(-1)), code_bytes),
            **{k: pa.array(np.asarray(factors[k], dtype=np.float32)[take]) for k in float_names},
        }
        if num_bits > 1:
            blocked = np.asarray(ex_codes, dtype=np.uint8)[take]
            cols["__blocked_ex_codes"] = pa.FixedSizeListArray.from_arrays(pa.array(blocked.reshape(-1)), blocked.shape[1])
        aux.write_batch(pa.record_batch([cols[name] for name in schema.names], schema=schema))
    pos = aux.add_global_buffer(ivf_message(offsets, lengths))
    aux.add_schema_metadata("distance_type", metric)
    # the model as Lance re-serialises it, with the layout of the codes
    stored_model = {**json.loads(model), "packed": bool(packed)}
    aux.add_schema_metadata("storage_metadata", json.dumps([json.dumps(stored_model, separators=(",", ":"))]))
    aux.add_schema_metadata("lance:ivf", str(pos))
    aux.close()
    written.append("auxiliary.idx")
    flat_schema = pa.schema([pa.field("__flat_marker", pa.uint64(), nullable=False)])
    idx = LanceFileWriter(f"{base}/index.idx", flat_schema, version="2.2", storage_options=storage_options)
    zeros = [0] * num_partitions
    pos = idx.add_global_buffer(ivf_message(zeros, zeros, centroids, loss))
    idx.add_schema_metadata("lance:index", json.dumps({"type": "IVF_RQ", "distance_type": metric}, separators=(",", ":")))
    idx.add_schema_metadata("lance:flat", json.dumps([""] * num_partitions, separators=(",", ":")))
    idx.add_schema_metadata("lance:ivf", str(pos))
    idx.close()
    written.append("index.idx")
    return written


def rq_index(ds, *, index_uuid: str, name: str, column: str, fragment_ids, num_bits: int, metric: str,
             files: list, storage_options: dict | None = None):
    """The ``lance.dataset.Index`` of a segment written by :func:`write_rq_segment`, as
    ``create_index_uncommitted`` returns it for the segment it writes."""
    from lance.bitmap import Bitmap
    from lance.dataset import Index, IndexFile

    from ._lance import filesystem

    fs, path = filesystem(f"{str(ds.uri).rstrip('/')}/_indices/{index_uuid}", storage_options)
    infos = fs.get_file_info([f"{path}/{f}" for f in files])
    return Index(
        uuid=index_uuid,
        name=name,
        fields=[ds.lance_schema.field(column).id()],
        dataset_version=ds.version,
        fragment_ids=Bitmap(int(f) for f in fragment_ids),
        index_version=2,
        created_at=datetime.datetime.now(datetime.timezone.utc),
        base_id=None,
        files=[IndexFile(path=f, size_bytes=info.size) for f, info in zip(files, infos)],
        index_details=rq_index_details(num_bits, metric),
        covering_fields=[],
    )
