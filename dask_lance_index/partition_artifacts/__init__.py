"""Partition artifacts: a build's encoded rows on disk, grouped by IVF partition, in the
layout upstream Lance defines (``docs/partition_artifacts.md``).

:mod:`.layout` is the format and its pure validation, :mod:`.reader` and
:mod:`.writer` read and write the files, :mod:`.encode` holds the Dask tasks
that write an artifact (encode, shuffle by bucket, manifest), and
:mod:`.finalize` reads one fragment group's rows back for a segment.
"""

from .encode import (
    ArtifactSummary,
    EncodeGroup,
    EncodeStats,
    WriteArtifact,
    WriteBuckets,
    num_reducers_for,
    remove_artifact,
)
from .finalize import GroupRows, check_artifact_fits, check_row_ids
from .layout import (
    MANIFEST_FILE,
    ArtifactManifest,
    ArtifactMetadata,
    BucketSummary,
    InvalidPartitionArtifactError,
    PartitionEntry,
    PartitionRange,
    assemble_manifest,
    default_num_buckets,
    validate_manifest,
)
from .reader import PartitionArtifact, read_metadata, write_manifest, write_metadata
from .writer import PartitionArtifactWriter

__all__ = [
    "MANIFEST_FILE", "ArtifactManifest", "ArtifactMetadata", "ArtifactSummary", "BucketSummary", "EncodeGroup",
    "EncodeStats", "GroupRows", "InvalidPartitionArtifactError", "PartitionArtifact", "PartitionArtifactWriter",
    "PartitionEntry", "PartitionRange", "WriteArtifact", "WriteBuckets", "assemble_manifest", "check_artifact_fits",
    "check_row_ids", "default_num_buckets", "num_reducers_for", "read_metadata", "remove_artifact",
    "validate_manifest", "write_manifest", "write_metadata",
]
