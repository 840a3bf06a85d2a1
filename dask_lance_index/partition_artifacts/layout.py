"""Partition artifacts: PQ codes grouped by IVF partition, in Lance's upstream layout.

An external backend (a GPU build, or our Dask workers) assigns every row to
its IVF partition and encodes its PQ code, and hands the finalizer a
partition-addressable artifact instead of a generic dataset that must be
re-scanned and re-grouped. The layout follows upstream Lance's partition
artifacts (``docs/lance.md``), so an artifact written by another backend can be
finalized here, and ours by a future Lance::

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
pickle) and its pure validation; :mod:`.reader` reads and writes the
metadata and manifest (``PartitionArtifact``, the validated reader),
:mod:`.writer` streams rows into bucket files, and the Dask tasks are in
:mod:`.encode` and :mod:`.finalize`.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np

from ..errors import InvalidInputError
from ..model import METRICS
from ..storage.segment_files import PQ_CODE_COLUMN  # Lance's name, re-exported with the layout's

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
]

MANIFEST_VERSION = 1
MANIFEST_FILE = "manifest.json"
METADATA_FILE = "metadata.lance"
PARTITIONS_DIR = "partitions"
DEFAULT_NUM_BUCKETS = 256
ROW_ID_COLUMN = "_rowid"
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
