"""Reading and writing partition artifacts' files (layout: :mod:`.layout`).

``PartitionArtifact.open(root)`` reads ``manifest.json`` and ``metadata.lance``,
opens every bucket file's footer and validates the manifest against them
before anything else is read; ``read_partition(p)`` then reads partition
``p`` by its ranges only. Local paths and URIs (through pyarrow's file
systems and Lance's own I/O) are both accepted.
"""

from __future__ import annotations

import os
from typing import Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
from lance.file import LanceFileReader, LanceFileWriter

from ..storage import Store, join
from .layout import (
    FILE_VERSION,
    MANIFEST_FILE,
    META_KEYS,
    META_PREFIX,
    METADATA_FILE,
    PARTITIONS_DIR,
    PQ_CODE_COLUMN,
    ROW_ID_COLUMN,
    ArtifactManifest,
    ArtifactMetadata,
    InvalidPartitionArtifactError,
    _check_relative,
    _validate_metadata,
    validate_manifest,
)

__all__ = ["PartitionArtifact", "read_metadata", "write_metadata", "write_manifest"]


def _list_partition_files(store: Store) -> list[str]:
    """Relative paths of the bucket files under ``partitions/``."""
    return [f"{PARTITIONS_DIR}/{n}" for n in store.listdir(PARTITIONS_DIR) if n.endswith(".lance")]


def write_metadata(root: str, metadata: ArtifactMetadata, storage_options: dict | None = None) -> str:
    """Write ``metadata.lance`` (one row: centroids and codebook, plus the schema keys)."""
    c = np.ascontiguousarray(metadata.ivf_centroids, dtype=np.float32)
    cb = np.ascontiguousarray(metadata.pq_codebook, dtype=np.float32)
    sub = cb.shape[2]
    ivf = pa.FixedSizeListArray.from_arrays(pa.array(c.reshape(-1)), c.shape[1])
    pq = pa.FixedSizeListArray.from_arrays(pa.array(cb.reshape(-1)), sub)
    ivf_list = pa.ListArray.from_arrays(pa.array([0, len(ivf)], pa.int32()), ivf)
    pq_list = pa.ListArray.from_arrays(pa.array([0, len(pq)], pa.int32()), pq)
    table = pa.table({"_ivf_centroids": ivf_list, "_pq_codebook": pq_list})
    path = join(root, METADATA_FILE)
    store = Store(root, storage_options)
    if store.local:
        os.makedirs(store.path(), exist_ok=True)
    w = LanceFileWriter(path, table.schema, version=FILE_VERSION, storage_options=storage_options)
    for k, v in metadata.schema_metadata().items():
        w.add_schema_metadata(k, v)
    w.write_batch(table)
    w.close()
    return path


def read_metadata(root: str, metadata_file: str = METADATA_FILE, storage_options: dict | None = None) -> ArtifactMetadata:
    """Read and check ``metadata.lance``."""
    path = join(root, metadata_file)
    if not Store(root, storage_options).exists(metadata_file):
        raise InvalidPartitionArtifactError(
            f"the artifact at {root} has no {metadata_file}; it holds the centroids and codebook "
            "the codes were encoded with, so the artifact cannot be finalized without it"
        )
    r = LanceFileReader(path, storage_options=storage_options)
    table = r.read_all().to_table()
    raw = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    missing = [k for k in META_KEYS if META_PREFIX + k not in raw]
    if missing or set(table.column_names) < {"_ivf_centroids", "_pq_codebook"} or table.num_rows != 1:
        raise InvalidPartitionArtifactError(
            f"{metadata_file} is not partition-artifact metadata: it needs one row of "
            f"_ivf_centroids and _pq_codebook and the keys {[META_PREFIX + k for k in META_KEYS]}"
            + (f" (missing {missing})" if missing else "")
        )

    def matrix(col: str) -> np.ndarray:
        lst = table.column(col).combine_chunks()
        fsl = lst.values  # one row: its items are the fixed-size vectors
        width = fsl.type.list_size
        return np.asarray(fsl.values.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, width)

    c = matrix("_ivf_centroids")
    flat = matrix("_pq_codebook")
    m = int(raw[META_PREFIX + "num_sub_vectors"])
    bits = int(raw[META_PREFIX + "num_bits"])
    if m < 1 or flat.shape[0] != m * 2**bits:
        raise InvalidPartitionArtifactError(
            f"metadata.lance's PQ codebook has {flat.shape[0]} code words; num_sub_vectors={m} "
            f"and num_bits={bits} need {m * 2**bits}"
        )
    md = ArtifactMetadata(
        distance_type=raw[META_PREFIX + "distance_type"].lower(),
        ivf_centroids=c,
        pq_codebook=flat.reshape(m, 2**bits, flat.shape[1]),
        num_bits=bits,
        artifact_version=int(raw[META_PREFIX + "artifact_version"]),
    )
    _validate_metadata(md, raw)
    return md


def write_manifest(root: str, manifest: ArtifactManifest, storage_options: dict | None = None) -> str:
    """Write ``manifest.json``: written last, so its presence means the artifact is complete."""
    Store(root, storage_options).write(MANIFEST_FILE, manifest.to_json())
    return join(root, MANIFEST_FILE)


# -- reader ------------------------------------------------------------------------------


class PartitionArtifact:
    """A validated partition artifact, read partition by partition.

    ``PartitionArtifact.open(root)`` reads ``manifest.json`` and
    ``metadata.lance``, opens each bucket file's footer, and validates the
    manifest against them (:func:`validate_manifest`) before anything is read.
    """

    def __init__(self, root: str, manifest: ArtifactManifest, metadata: ArtifactMetadata,
                 file_rows: Mapping[str, int], storage_options: dict | None = None):
        self.root = root
        self.manifest = manifest
        self.metadata = metadata
        self.file_rows = dict(file_rows)
        self.storage_options = storage_options
        self._readers: dict = {}

    @classmethod
    def open(cls, root: str, storage_options: dict | None = None) -> "PartitionArtifact":
        root = str(root)
        store = Store(root, storage_options)
        text = store.read(MANIFEST_FILE)
        if text is None:
            raise InvalidPartitionArtifactError(
                f"no partition artifact at {root}: {MANIFEST_FILE} is missing (the writer writes it "
                "last, so the artifact is incomplete or the path is wrong)"
            )
        manifest = ArtifactManifest.from_json(text)
        metadata = read_metadata(root, manifest.metadata_file or METADATA_FILE, storage_options)
        paths = set(manifest.files()) | set(_list_partition_files(store))
        file_rows: dict[str, int] = {}
        widths: dict[str, int] = {}
        readers = {}
        for rel in sorted(paths):
            _check_relative(rel, "bucket file")
            if not store.exists(rel):
                continue  # validate_manifest names the partitions that point here
            r = LanceFileReader(join(root, rel), storage_options=storage_options)
            schema = r.metadata().schema
            _check_bucket_schema(rel, schema)
            file_rows[rel] = int(r.num_rows())
            widths[rel] = schema.field(PQ_CODE_COLUMN).type.list_size
            readers[rel] = r
        validate_manifest(manifest, file_rows, metadata, widths)
        art = cls(root, manifest, metadata, file_rows, storage_options)
        art._readers = readers
        return art

    @property
    def num_partitions(self) -> int:
        return self.manifest.num_partitions

    @property
    def num_rows(self) -> int:
        return self.manifest.num_rows

    def _reader(self, rel: str):
        if rel not in self._readers:
            self._readers[rel] = LanceFileReader(join(self.root, rel), storage_options=self.storage_options)
        return self._readers[rel]

    def read_partition(self, partition: int) -> tuple[np.ndarray, np.ndarray]:
        """Row ids (uint64, (n,)) and PQ codes (uint8, (n, m)) of one partition, read by its ranges only."""
        if not 0 <= partition < self.num_partitions:
            raise IndexError(f"partition {partition} is outside [0, {self.num_partitions})")
        e = self.manifest.partitions[partition]
        m = self.metadata.num_sub_vectors
        if e.num_rows == 0:
            return np.empty(0, np.uint64), np.empty((0, m), np.uint8)
        r = self._reader(e.path)
        rids, codes = [], []
        for rng in e.ranges:
            if not rng.num_rows:
                continue
            t = r.read_range(rng.offset, rng.num_rows, batch_size=max(rng.num_rows, 1)).to_table()
            rids.append(np.asarray(t.column(ROW_ID_COLUMN).to_numpy(), dtype=np.uint64))
            fsl = t.column(PQ_CODE_COLUMN).combine_chunks()
            codes.append(np.asarray(fsl.flatten().to_numpy(zero_copy_only=False), dtype=np.uint8).reshape(-1, m))
        return np.concatenate(rids), np.concatenate(codes)

    def iter_partitions(self, partitions: Sequence[int] | None = None) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """``(partition, row ids, codes)`` for each non-empty partition, file by file."""
        ids = range(self.num_partitions) if partitions is None else partitions
        by_file: dict[str, list[int]] = {}
        for p in ids:
            e = self.manifest.partitions[p]
            if e.num_rows:
                by_file.setdefault(e.path, []).append(p)
        for rel in sorted(by_file):
            for p in by_file[rel]:
                rid, codes = self.read_partition(p)
                yield p, rid, codes


def _check_bucket_schema(rel: str, schema) -> None:
    names = schema.names
    ok = ROW_ID_COLUMN in names and PQ_CODE_COLUMN in names
    if ok:
        rt = schema.field(ROW_ID_COLUMN).type
        ct = schema.field(PQ_CODE_COLUMN).type
        ok = rt == pa.uint64() and pa.types.is_fixed_size_list(ct) and ct.value_type == pa.uint8()
    if not ok:
        raise InvalidPartitionArtifactError(
            f"{rel} has schema {schema.to_string(show_schema_metadata=False)!s}; a bucket file needs "
            f"{ROW_ID_COLUMN} uint64 and {PQ_CODE_COLUMN} fixed_size_list<uint8>[num_sub_vectors]"
        )
