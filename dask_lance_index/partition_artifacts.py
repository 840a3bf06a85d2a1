"""Partition artifacts: PQ codes grouped by IVF partition, in Lance's upstream layout.

An external backend (a GPU build, or our Dask workers) assigns every row to
its IVF partition and encodes its PQ code, and hands the finalizer a
partition-addressable artifact instead of a generic dataset that must be
re-scanned and re-grouped. The layout follows Lance PR 6463 (seed 002), so an
artifact written by another backend can be finalized here, and ours by a
future Lance::

    <root>/manifest.json                  {"version": 1, "num_partitions": N,
                                           "metadata_file": "metadata.lance",
                                           "total_loss": null,
                                           "partitions": [{"path": ..., "num_rows": ...,
                                                           "ranges": [{"offset": ..., "num_rows": ...}]}]}
    <root>/metadata.lance                 one row: _ivf_centroids, _pq_codebook, and schema
                                          metadata lance:index_build:{artifact_version,
                                          distance_type, num_partitions, num_sub_vectors,
                                          num_bits, dimension}
    <root>/partitions/bucket-%05d.lance   _rowid uint64, __pq_code fixed_size_list<uint8>[m]

Partition ``p`` lives in bucket ``p % num_buckets`` (``num_buckets =
min(num_partitions, 256)``); each flush of a bucket's buffer is sorted by
partition and the manifest records the row ranges each partition got, so a
partition is read by its ranges only. A partition never spans two files. All
files are Lance files (format 2.2), not datasets.

This module holds the format (frozen dataclasses that round-trip JSON and
pickle), the pure validation, the reader and the streaming writer. The Dask
tasks that use them are in :mod:`.artifact_build` and :mod:`.finalize`.
"""

from __future__ import annotations

import json
import os
import posixpath
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np

from .errors import InvalidInputError

__all__ = [
    "MANIFEST_VERSION",
    "MANIFEST_FILE",
    "METADATA_FILE",
    "ROW_ID_COLUMN",
    "PQ_CODE_COLUMN",
    "InvalidPartitionArtifactError",
    "PartitionRange",
    "PartitionEntry",
    "ArtifactManifest",
    "ArtifactMetadata",
    "BucketSummary",
    "default_num_buckets",
    "bucket_path",
    "assemble_manifest",
    "validate_manifest",
    "PartitionArtifact",
    "PartitionArtifactWriter",
    "write_metadata",
    "write_manifest",
]

MANIFEST_VERSION = 1
MANIFEST_FILE = "manifest.json"
METADATA_FILE = "metadata.lance"
PARTITIONS_DIR = "partitions"
DEFAULT_NUM_BUCKETS = 256
ROW_ID_COLUMN = "_rowid"
PQ_CODE_COLUMN = "__pq_code"
FILE_VERSION = "2.2"
META_PREFIX = "lance:index_build:"
META_KEYS = ("artifact_version", "distance_type", "num_partitions", "num_sub_vectors", "num_bits", "dimension")
# Rows a bucket buffers before it is flushed (Lance's builder uses the same).
DEFAULT_BUCKET_BUFFER_ROWS = 32 * 1024
# Rows all buffers together may hold: above it the largest buckets are flushed.
DEFAULT_MAX_BUFFERED_ROWS = 1 << 20


class InvalidPartitionArtifactError(InvalidInputError):
    """A partition artifact's manifest, metadata or files are inconsistent."""


def default_num_buckets(num_partitions: int) -> int:
    """``min(num_partitions, 256)``, as Lance's builder."""
    return max(1, min(int(num_partitions), DEFAULT_NUM_BUCKETS))


def bucket_path(bucket: int) -> str:
    """The manifest-relative path of bucket ``bucket``'s file."""
    return f"{PARTITIONS_DIR}/bucket-{bucket:05d}.lance"


# -- format --------------------------------------------------------------------------


@dataclass(frozen=True)
class PartitionRange:
    """``num_rows`` rows from row ``offset`` of the partition's file."""

    offset: int
    num_rows: int


@dataclass(frozen=True)
class PartitionEntry:
    """Where one IVF partition's rows live: one file, one or more row ranges."""

    path: str | None
    num_rows: int
    ranges: tuple[PartitionRange, ...] = ()

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "num_rows": self.num_rows,
            "ranges": [{"offset": r.offset, "num_rows": r.num_rows} for r in self.ranges],
        }

    @classmethod
    def from_dict(cls, d: Mapping, index: int = 0) -> "PartitionEntry":
        if not isinstance(d, Mapping):
            raise InvalidPartitionArtifactError(f"manifest partition {index} is {d!r}, not an object")
        ranges = d.get("ranges") or []
        paths = {r.get("path") for r in ranges if isinstance(r, Mapping) and r.get("path") is not None}
        paths -= {d.get("path")}
        if paths:
            # Lance reads every range from the partition's one path; ranges that
            # name other files would be read from the wrong file, silently.
            raise InvalidPartitionArtifactError(
                f"manifest partition {index} spans two files ({d.get('path')!r} and "
                f"{sorted(paths)}); a partition must live in one bucket file. Fix: rewrite "
                "the artifact so each partition's rows are in its bucket's file."
            )
        try:
            return cls(
                path=d.get("path"),
                num_rows=int(d.get("num_rows", 0)),
                ranges=tuple(PartitionRange(int(r["offset"]), int(r["num_rows"])) for r in ranges),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidPartitionArtifactError(
                f"manifest partition {index} is malformed ({exc!r}): each range needs integer "
                "'offset' and 'num_rows'"
            ) from None


@dataclass(frozen=True)
class ArtifactManifest:
    """``manifest.json``: one entry per partition, in partition order."""

    num_partitions: int
    partitions: tuple[PartitionEntry, ...]
    metadata_file: str | None = METADATA_FILE
    total_loss: float | None = None
    version: int = MANIFEST_VERSION

    @property
    def num_rows(self) -> int:
        return sum(p.num_rows for p in self.partitions)

    def files(self) -> tuple[str, ...]:
        """The bucket files the manifest names, sorted."""
        return tuple(sorted({p.path for p in self.partitions if p.path is not None}))

    def to_dict(self) -> dict:
        return {
            "version": self.version,
            "num_partitions": self.num_partitions,
            "metadata_file": self.metadata_file,
            "total_loss": self.total_loss,
            "partitions": [p.to_dict() for p in self.partitions],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: Mapping) -> "ArtifactManifest":
        if not isinstance(d, Mapping):
            raise InvalidPartitionArtifactError("manifest.json does not hold a JSON object")
        version = d.get("version")
        if version != MANIFEST_VERSION:
            raise InvalidPartitionArtifactError(
                f"unsupported partition artifact manifest version {version!r}; this reader "
                f"understands version {MANIFEST_VERSION}. Fix: rewrite the artifact with a "
                "version-1 writer."
            )
        for key in ("num_partitions", "partitions"):
            if key not in d:
                raise InvalidPartitionArtifactError(f"manifest.json has no {key!r} field")
        parts = d["partitions"]
        if not isinstance(parts, list):
            raise InvalidPartitionArtifactError("manifest 'partitions' must be a list")
        loss = d.get("total_loss")
        return cls(
            num_partitions=int(d["num_partitions"]),
            partitions=tuple(PartitionEntry.from_dict(p, i) for i, p in enumerate(parts)),
            metadata_file=d.get("metadata_file"),
            total_loss=None if loss is None else float(loss),
            version=int(version),
        )

    @classmethod
    def from_json(cls, s: str) -> "ArtifactManifest":
        try:
            d = json.loads(s)
        except ValueError as exc:
            raise InvalidPartitionArtifactError(f"manifest.json is not valid JSON: {exc}") from None
        return cls.from_dict(d)


@dataclass(frozen=True, eq=False)
class ArtifactMetadata:
    """``metadata.lance``: the model the codes were encoded with."""

    distance_type: str
    ivf_centroids: np.ndarray  # (num_partitions, dimension) float32
    pq_codebook: np.ndarray  # (num_sub_vectors, 2**num_bits, dimension // num_sub_vectors) float32
    num_bits: int = 8
    artifact_version: int = 1

    @property
    def num_partitions(self) -> int:
        return int(self.ivf_centroids.shape[0])

    @property
    def dimension(self) -> int:
        return int(self.ivf_centroids.shape[1])

    @property
    def num_sub_vectors(self) -> int:
        return int(self.pq_codebook.shape[0])

    def schema_metadata(self) -> dict[str, str]:
        vals = {
            "artifact_version": str(self.artifact_version),
            "distance_type": self.distance_type,
            "num_partitions": str(self.num_partitions),
            "num_sub_vectors": str(self.num_sub_vectors),
            "num_bits": str(self.num_bits),
            "dimension": str(self.dimension),
        }
        return {META_PREFIX + k: vals[k] for k in META_KEYS}


@dataclass(frozen=True)
class BucketSummary:
    """What one writer put on disk: partition entries (for its buckets) and file row counts."""

    partitions: dict = field(default_factory=dict)  # partition id -> PartitionEntry
    files: dict = field(default_factory=dict)  # relative path -> rows written
    peak_buffered_bytes: int = 0
    flushes: int = 0


def assemble_manifest(
    num_partitions: int,
    summaries: Iterable[BucketSummary],
    *,
    metadata_file: str = METADATA_FILE,
    total_loss: float | None = None,
) -> ArtifactManifest:
    """One manifest from the summaries of writers that wrote disjoint buckets. Pure.

    Raises :class:`InvalidPartitionArtifactError` if two writers wrote the same
    file or the same partition (a partition must never span two files).
    """
    entries: dict[int, PartitionEntry] = {}
    owner: dict[str, int] = {}
    for i, s in enumerate(summaries):
        for path in s.files:
            if path in owner:
                raise InvalidPartitionArtifactError(
                    f"bucket file {path} was written by two writers ({owner[path]} and {i}); "
                    "each bucket must be written by one task"
                )
            owner[path] = i
        for p, e in s.partitions.items():
            if p in entries:
                raise InvalidPartitionArtifactError(
                    f"partition {p} is split across two files: {entries[p].path} and {e.path}"
                )
            if not 0 <= p < num_partitions:
                raise InvalidPartitionArtifactError(f"partition id {p} is outside [0, {num_partitions})")
            entries[p] = e
    parts = tuple(entries.get(p, PartitionEntry(None, 0, ())) for p in range(num_partitions))
    return ArtifactManifest(num_partitions, parts, metadata_file=metadata_file, total_loss=total_loss)


def _check_relative(path: str, what: str) -> None:
    norm = posixpath.normpath(path)
    if path.startswith("/") or "://" in path or norm.startswith("..") or "\\" in path:
        raise InvalidPartitionArtifactError(
            f"{what} path {path!r} must be relative to the artifact root and stay inside it"
        )


def validate_manifest(
    manifest: ArtifactManifest,
    file_rows: Mapping[str, int],
    metadata: ArtifactMetadata | None = None,
    code_widths: Mapping[str, int] | None = None,
) -> None:
    """Check a manifest against its files. Pure.

    Parameters
    ----------
    manifest : ArtifactManifest
    file_rows : mapping of relative path -> rows in that file (missing: the file does not exist)
    metadata : ArtifactMetadata, optional
        When given: partition count and PQ code width must agree with it.
    code_widths : mapping of relative path -> the file's ``__pq_code`` width, optional

    Raises
    ------
    InvalidPartitionArtifactError
        Naming the partition or file and what is wrong: version, partition
        count, paths, ranges outside their file, overlapping ranges, row counts
        that do not add up, dimensions.
    """
    if manifest.version != MANIFEST_VERSION:
        raise InvalidPartitionArtifactError(
            f"unsupported partition artifact manifest version {manifest.version}; expected {MANIFEST_VERSION}"
        )
    n = manifest.num_partitions
    if n < 1:
        raise InvalidPartitionArtifactError(f"manifest num_partitions is {n}; it must be positive")
    if len(manifest.partitions) != n:
        raise InvalidPartitionArtifactError(
            f"manifest has {len(manifest.partitions)} partition entries but num_partitions is {n}; "
            "there must be one entry per partition (empty partitions included)"
        )
    if metadata is not None and metadata.num_partitions != n:
        raise InvalidPartitionArtifactError(
            f"manifest has {n} partitions but metadata.lance has {metadata.num_partitions} IVF centroids"
        )
    if manifest.metadata_file is not None:
        _check_relative(manifest.metadata_file, "metadata_file")
    spans: dict[str, list[tuple[int, int, int]]] = {}
    for p, e in enumerate(manifest.partitions):
        if e.num_rows < 0 or any(r.offset < 0 or r.num_rows < 0 for r in e.ranges):
            raise InvalidPartitionArtifactError(f"partition {p} has a negative offset or row count")
        covered = sum(r.num_rows for r in e.ranges)
        if covered != e.num_rows:
            raise InvalidPartitionArtifactError(
                f"partition {p} declares num_rows={e.num_rows} but its ranges hold {covered} rows; "
                "the manifest's row counts do not match its ranges"
            )
        if e.num_rows == 0:
            continue
        if e.path is None:
            raise InvalidPartitionArtifactError(f"partition {p} has {e.num_rows} rows but no path")
        _check_relative(e.path, f"partition {p}")
        if e.path not in file_rows:
            raise InvalidPartitionArtifactError(
                f"partition {p} is in {e.path}, which does not exist in the artifact"
            )
        rows = file_rows[e.path]
        for r in e.ranges:
            if r.offset + r.num_rows > rows:
                raise InvalidPartitionArtifactError(
                    f"partition {p} has range offset={r.offset} num_rows={r.num_rows}, past the end "
                    f"of {e.path} ({rows} rows)"
                )
            if r.num_rows:
                spans.setdefault(e.path, []).append((r.offset, r.offset + r.num_rows, p))
    for path, s in spans.items():
        s.sort()
        starts = np.fromiter((a for a, _, _ in s), dtype=np.int64, count=len(s))
        ends = np.fromiter((b for _, b, _ in s), dtype=np.int64, count=len(s))
        bad = np.flatnonzero(starts[1:] < ends[:-1])
        if len(bad):
            i = int(bad[0])
            raise InvalidPartitionArtifactError(
                f"in {path}, rows {s[i + 1][0]}..{min(s[i][1], s[i + 1][1])} are claimed by "
                f"partitions {s[i][2]} and {s[i + 1][2]}; a row belongs to one partition"
            )
        covered = int((ends - starts).sum())
        if covered != file_rows[path]:
            raise InvalidPartitionArtifactError(
                f"{path} holds {file_rows[path]} rows but the manifest's ranges cover {covered}; "
                "rows outside every range would never be indexed"
            )
    for path, rows in file_rows.items():
        if path not in spans and rows:
            raise InvalidPartitionArtifactError(
                f"{path} holds {rows} rows that no partition of the manifest claims"
            )
    if metadata is not None and code_widths:
        for path, width in code_widths.items():
            if width != metadata.num_sub_vectors:
                raise InvalidPartitionArtifactError(
                    f"{path} holds {width}-byte PQ codes but metadata.lance has "
                    f"{metadata.num_sub_vectors} sub-vectors"
                )


def _validate_metadata(md: ArtifactMetadata, raw: Mapping[str, str]) -> None:
    """The metadata keys against the arrays they describe."""
    from .plan import METRICS

    if md.artifact_version != 1:
        raise InvalidPartitionArtifactError(
            f"metadata.lance has artifact_version {md.artifact_version}; this reader understands 1"
        )
    if md.distance_type not in METRICS:
        raise InvalidPartitionArtifactError(
            f"metadata.lance has distance_type {md.distance_type!r}; expected l2, cosine or dot"
        )
    if md.num_bits != 8:
        raise InvalidPartitionArtifactError(
            f"metadata.lance has num_bits={md.num_bits}; only 8-bit PQ artifacts can be finalized"
        )
    shapes = {
        "num_partitions": md.num_partitions,
        "dimension": md.dimension,
        "num_sub_vectors": md.num_sub_vectors,
    }
    for key, actual in shapes.items():
        declared = raw.get(META_PREFIX + key)
        if declared is not None and int(declared) != actual:
            raise InvalidPartitionArtifactError(
                f"metadata.lance declares {key}={declared} but its arrays give {actual}"
            )
    m, k, sub = md.pq_codebook.shape
    if k != 2**md.num_bits or m * sub != md.dimension:
        raise InvalidPartitionArtifactError(
            f"metadata.lance's PQ codebook has shape {md.pq_codebook.shape}; for dimension "
            f"{md.dimension} and {md.num_bits} bits it must be (m, {2**md.num_bits}, {md.dimension} // m)"
        )


# -- storage helpers -------------------------------------------------------------------


def _join(root: str, rel: str) -> str:
    return root.rstrip("/") + "/" + rel


def _is_local(root: str) -> bool:
    return "://" not in root or root.startswith("file://")


def _local(path: str) -> str:
    return path.removeprefix("file://")


def _read_text(path: str, storage_options: dict | None) -> str:
    if _is_local(path):
        with open(_local(path), encoding="utf-8") as f:
            return f.read()
    import pyarrow.fs as pafs

    fs, p = pafs.FileSystem.from_uri(path)
    with fs.open_input_stream(p) as f:
        return f.read().decode("utf-8")


def _write_text(path: str, text: str, storage_options: dict | None) -> None:
    """Write ``text``; locally via a temporary file and rename, so readers never see half a file."""
    if _is_local(path):
        p = _local(path)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        tmp = p + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, p)
        return
    import pyarrow.fs as pafs

    fs, p = pafs.FileSystem.from_uri(path)
    with fs.open_output_stream(p) as f:
        f.write(text.encode("utf-8"))


def _exists(path: str) -> bool:
    if _is_local(path):
        return os.path.exists(_local(path))
    import pyarrow.fs as pafs

    fs, p = pafs.FileSystem.from_uri(path)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


def _list_partition_files(root: str) -> list[str]:
    """Relative paths of the files under ``partitions/``."""
    d = _join(root, PARTITIONS_DIR)
    if _is_local(root):
        d = _local(d)
        if not os.path.isdir(d):
            return []
        return sorted(f"{PARTITIONS_DIR}/{n}" for n in os.listdir(d) if n.endswith(".lance"))
    import pyarrow.fs as pafs

    fs, p = pafs.FileSystem.from_uri(d)
    infos = fs.get_file_info(pafs.FileSelector(p, allow_not_found=True))
    return sorted(f"{PARTITIONS_DIR}/{posixpath.basename(i.path)}" for i in infos if i.path.endswith(".lance"))


def write_metadata(root: str, metadata: ArtifactMetadata, storage_options: dict | None = None) -> str:
    """Write ``metadata.lance`` (one row: centroids and codebook, plus the schema keys)."""
    import pyarrow as pa
    from lance.file import LanceFileWriter

    c = np.ascontiguousarray(metadata.ivf_centroids, dtype=np.float32)
    cb = np.ascontiguousarray(metadata.pq_codebook, dtype=np.float32)
    sub = cb.shape[2]
    ivf = pa.FixedSizeListArray.from_arrays(pa.array(c.reshape(-1)), c.shape[1])
    pq = pa.FixedSizeListArray.from_arrays(pa.array(cb.reshape(-1)), sub)
    ivf_list = pa.ListArray.from_arrays(pa.array([0, len(ivf)], pa.int32()), ivf)
    pq_list = pa.ListArray.from_arrays(pa.array([0, len(pq)], pa.int32()), pq)
    table = pa.table({"_ivf_centroids": ivf_list, "_pq_codebook": pq_list})
    path = _join(root, METADATA_FILE)
    if _is_local(root):
        os.makedirs(_local(root), exist_ok=True)
    w = LanceFileWriter(path, table.schema, version=FILE_VERSION, storage_options=storage_options)
    for k, v in metadata.schema_metadata().items():
        w.add_schema_metadata(k, v)
    w.write_batch(table)
    w.close()
    return path


def read_metadata(root: str, metadata_file: str = METADATA_FILE, storage_options: dict | None = None) -> ArtifactMetadata:
    """Read and check ``metadata.lance``."""
    from lance.file import LanceFileReader

    path = _join(root, metadata_file)
    if not _exists(path):
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
    path = _join(root, MANIFEST_FILE)
    _write_text(path, manifest.to_json(), storage_options)
    return path


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
        from lance.file import LanceFileReader

        root = str(root)
        mpath = _join(root, MANIFEST_FILE)
        if not _exists(mpath):
            raise InvalidPartitionArtifactError(
                f"no partition artifact at {root}: {MANIFEST_FILE} is missing (the writer writes it "
                "last, so the artifact is incomplete or the path is wrong)"
            )
        manifest = ArtifactManifest.from_json(_read_text(mpath, storage_options))
        metadata = read_metadata(root, manifest.metadata_file or METADATA_FILE, storage_options)
        paths = set(manifest.files()) | set(_list_partition_files(root))
        file_rows: dict[str, int] = {}
        widths: dict[str, int] = {}
        readers = {}
        for rel in sorted(paths):
            _check_relative(rel, "bucket file")
            full = _join(root, rel)
            if not _exists(full):
                continue  # validate_manifest names the partitions that point here
            r = LanceFileReader(full, storage_options=storage_options)
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
            from lance.file import LanceFileReader

            self._readers[rel] = LanceFileReader(_join(self.root, rel), storage_options=self.storage_options)
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
    import pyarrow as pa

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


# -- streaming writer ----------------------------------------------------------------------


class PartitionArtifactWriter:
    """Stream encoded rows into bucket files with bounded memory.

    Rows are routed to per-bucket buffers (``bucket = partition % num_buckets``).
    A bucket's buffer is flushed when it holds ``bucket_buffer_rows`` rows, and
    the largest buffers are flushed whenever all buffers together pass
    ``max_buffered_rows``; a flush sorts the buffer by partition, appends it to
    the bucket's file and records each partition's range. Nothing is re-read or
    re-sorted at :meth:`finish`. Buffered bytes are tracked
    (``buffered_bytes``, ``peak_buffered_bytes``): they are bounded by
    ``max_buffered_rows`` rows plus one appended batch, whatever the row count;
    each open Lance file writer caches at most ``file_cache_bytes`` (the same
    budget split over the writer's buckets) before it writes a page.

    Parameters
    ----------
    root : str
        Artifact root (local path or URI).
    num_partitions, num_sub_vectors : int
    num_buckets : int, optional
        Default ``min(num_partitions, 256)``.
    buckets : iterable of int, optional
        The buckets this writer owns (a Dask reduction task writes a subset);
        rows of other buckets are refused. Default: all.
    """

    def __init__(
        self,
        root: str,
        num_partitions: int,
        num_sub_vectors: int,
        *,
        num_buckets: int | None = None,
        buckets: Iterable[int] | None = None,
        bucket_buffer_rows: int = DEFAULT_BUCKET_BUFFER_ROWS,
        max_buffered_rows: int = DEFAULT_MAX_BUFFERED_ROWS,
        storage_options: dict | None = None,
    ):
        if num_partitions < 1 or num_sub_vectors < 1:
            raise InvalidInputError("a partition artifact needs num_partitions and num_sub_vectors >= 1")
        self.root = str(root)
        self.num_partitions = int(num_partitions)
        self.m = int(num_sub_vectors)
        self.num_buckets = int(num_buckets or default_num_buckets(num_partitions))
        self.owned = None if buckets is None else frozenset(int(b) for b in buckets)
        self.bucket_buffer_rows = int(bucket_buffer_rows)
        self.max_buffered_rows = int(max_buffered_rows)
        self.storage_options = storage_options
        self._buf: dict[int, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
        self._buf_rows = np.zeros(self.num_buckets, dtype=np.int64)
        self._file_rows = np.zeros(self.num_buckets, dtype=np.int64)
        self._writers: dict = {}
        self._ranges: dict[int, list[list[int]]] = {}  # partition -> [[offset, rows], ...]
        self.buffered_bytes = 0
        self.peak_buffered_bytes = 0
        self.flushes = 0
        self._row_bytes = 8 + 4 + self.m
        # Lance's file writer keeps up to 8 MiB per column in memory before it
        # writes a page (a small bucket file: all of it, until close). Split the
        # writer's budget over its buckets instead, so open files add at most
        # about the buffers' own budget, whatever the row count.
        owned = len(self.owned) if self.owned is not None else self.num_buckets
        self.file_cache_bytes = max(64 << 10, self.max_buffered_rows * self._row_bytes // max(owned, 1))
        self._closed = False
        import pyarrow as pa

        self._schema = pa.schema(
            [pa.field(ROW_ID_COLUMN, pa.uint64(), nullable=False), pa.field(PQ_CODE_COLUMN, pa.list_(pa.uint8(), self.m))]
        )

    def append(self, row_ids: np.ndarray, part_ids: np.ndarray, codes: np.ndarray) -> None:
        """Route one batch of encoded rows into the bucket buffers (no per-row Python loop)."""
        if self._closed:
            raise RuntimeError("the writer is finished")
        rid = np.asarray(row_ids, dtype=np.uint64)
        part = np.asarray(part_ids, dtype=np.uint32)
        codes = np.asarray(codes, dtype=np.uint8)
        n = len(rid)
        if len(part) != n or codes.shape != (n, self.m):
            raise InvalidInputError(
                f"append needs row_ids (n,), part_ids (n,) and codes (n, {self.m}); got "
                f"{rid.shape}, {part.shape}, {codes.shape}"
            )
        if n == 0:
            return
        if int(part.max()) >= self.num_partitions:
            raise InvalidInputError(
                f"partition id {int(part.max())} is outside [0, {self.num_partitions})"
            )
        bucket = part % self.num_buckets
        order = np.argsort(bucket, kind="stable")
        sb = bucket[order]
        cuts = np.flatnonzero(sb[1:] != sb[:-1]) + 1
        starts = np.r_[0, cuts]
        ends = np.r_[cuts, n]
        for s, e in zip(starts.tolist(), ends.tolist()):
            b = int(sb[s])
            if self.owned is not None and b not in self.owned:
                raise InvalidInputError(f"bucket {b} is not one of this writer's buckets")
            idx = order[s:e]
            self._buf.setdefault(b, []).append((rid[idx], part[idx], codes[idx]))
            self._buf_rows[b] += e - s
            self.buffered_bytes += (e - s) * self._row_bytes
        self.peak_buffered_bytes = max(self.peak_buffered_bytes, self.buffered_bytes)
        for b in np.flatnonzero(self._buf_rows >= self.bucket_buffer_rows).tolist():
            self._flush(b)
        if self._buf_rows.sum() > self.max_buffered_rows:
            # Largest first, down to half the budget: few, large flushes.
            for b in np.argsort(-self._buf_rows).tolist():
                if self._buf_rows.sum() <= self.max_buffered_rows // 2 or not self._buf_rows[b]:
                    break
                self._flush(b)

    def _writer(self, b: int):
        w = self._writers.get(b)
        if w is None:
            from lance.file import LanceFileWriter

            path = _join(self.root, bucket_path(b))
            if _is_local(self.root):
                os.makedirs(os.path.dirname(_local(path)), exist_ok=True)
            w = LanceFileWriter(path, self._schema, version=FILE_VERSION, storage_options=self.storage_options,
                                data_cache_bytes=self.file_cache_bytes)
            self._writers[b] = w
        return w

    def _flush(self, b: int) -> None:
        import pyarrow as pa

        chunks = self._buf.pop(b, None)
        if not chunks:
            return
        rid = np.concatenate([c[0] for c in chunks])
        part = np.concatenate([c[1] for c in chunks])
        codes = np.concatenate([c[2] for c in chunks])
        del chunks
        n = len(rid)
        order = np.argsort(part, kind="stable")
        rid, part, codes = rid[order], part[order], codes[order]
        base = int(self._file_rows[b])
        cuts = np.flatnonzero(part[1:] != part[:-1]) + 1
        starts = np.r_[0, cuts]
        ends = np.r_[cuts, n]
        for s, e in zip(starts.tolist(), ends.tolist()):
            rs = self._ranges.setdefault(int(part[s]), [])
            if rs and rs[-1][0] + rs[-1][1] == base + s:
                rs[-1][1] += e - s  # contiguous with its last range: extend it
            else:
                rs.append([base + s, e - s])
        batch = pa.record_batch(
            [pa.array(rid, pa.uint64()), pa.FixedSizeListArray.from_arrays(pa.array(codes.reshape(-1)), self.m)],
            schema=self._schema,
        )
        self._writer(b).write_batch(batch)
        self._file_rows[b] += n
        self._buf_rows[b] = 0
        self.buffered_bytes -= n * self._row_bytes
        self.flushes += 1

    def finish(self) -> BucketSummary:
        """Flush every buffer, close the files, and return what was written."""
        for b in sorted(self._buf):
            self._flush(b)
        for w in self._writers.values():
            w.close()
        self._closed = True
        parts = {}
        for p, rs in self._ranges.items():
            ranges = tuple(PartitionRange(int(o), int(k)) for o, k in rs)
            parts[p] = PartitionEntry(bucket_path(p % self.num_buckets), sum(r.num_rows for r in ranges), ranges)
        files = {bucket_path(b): int(self._file_rows[b]) for b in self._writers}
        return BucketSummary(parts, files, self.peak_buffered_bytes, self.flushes)
