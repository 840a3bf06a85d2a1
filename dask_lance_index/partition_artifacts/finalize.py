"""Reading a partition artifact back, one fragment group at a time, for a segment.

pylance 14.0.2 has no reader for partition artifacts, so each finalize task
reads the artifact partition by partition (by the manifest's ranges only),
keeps exactly the rows of its own fragments, and hands them to Lance as a
precomputed shuffle buffer together with the artifact's model
(:mod:`dask_lance_index.build.engines.artifact`). Lance reads that buffer whole
and ignores ``fragment_ids`` (``docs/lance.md``), so a segment given anyone
else's rows would silently index them twice; hence the filter by fragment,
which needs row ids that name their fragment (not stable row ids).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from ..errors import InvalidInputError
from ..model import METRICS
from ..storage import open_dataset, shuffle_buffer_batch
from .layout import ArtifactMetadata, InvalidPartitionArtifactError
from .reader import PartitionArtifact

__all__ = ["GroupRows", "check_artifact_fits", "check_row_ids"]

_BATCH_ROWS = 65536


def check_artifact_fits(md: ArtifactMetadata, *, dimension: int, num_partitions: int,
                        num_sub_vectors: int | None, metric: str) -> None:
    """Raise :class:`InvalidPartitionArtifactError` unless the artifact's model fits the index."""
    problems = []
    if md.dimension != dimension:
        problems.append(f"dimension {md.dimension} (the column has {dimension})")
    if md.num_partitions != num_partitions:
        problems.append(f"{md.num_partitions} partitions (the index has {num_partitions})")
    if num_sub_vectors is not None and md.num_sub_vectors != num_sub_vectors:
        problems.append(f"{md.num_sub_vectors} sub-vectors (the index has {num_sub_vectors})")
    if METRICS.get(md.distance_type) != metric:
        problems.append(f"distance_type {md.distance_type!r} (the index uses {metric!r})")
    if problems:
        raise InvalidPartitionArtifactError(
            "the partition artifact does not fit this index: it has " + "; ".join(problems)
            + ". Fix: finalize it with the parameters it was encoded with, or encode again."
        )


def check_row_ids(plan, storage_options: dict | None = None) -> None:
    """Refuse, before any work, a split finalize on a dataset whose row ids do not name their fragment."""
    if plan.num_tasks > 1 and open_dataset(plan.uri, plan.version, storage_options).has_stable_row_ids:
        raise InvalidInputError(
            "the dataset uses stable row ids, which do not name their fragment, so a partition "
            "artifact cannot be split into per-fragment segments. Fix: num_tasks=1."
        )


class GroupRows:
    """The rows of build task ``task``'s fragments in the artifact at ``root``, checked.

    :meth:`batches` streams them as shuffle buffer batches; :meth:`finish` (after
    the stream is consumed) raises what the stream found wrong and checks that no
    fragment has more rows in the artifact than in the dataset. A problem found
    while streaming is held until then: Lance, which pulls the stream, would
    report it as an error of its own.
    """

    def __init__(self, plan, task: int, root: str, has_stable_row_ids: bool, storage_options: dict | None = None):
        self.plan = plan
        self.art = PartitionArtifact.open(root, storage_options)
        self.metadata = self.art.metadata
        check_artifact_fits(self.metadata, dimension=plan.dimension, num_partitions=plan.params.num_partitions,
                            num_sub_vectors=plan.params.num_sub_vectors, metric=plan.params.metric)
        self.whole = len(plan.groups) == 1
        if has_stable_row_ids and not self.whole:
            raise InvalidInputError(
                "the dataset uses stable row ids, which do not name their fragment, so an artifact "
                "cannot be split into per-fragment segments. Fix: num_tasks=1."
            )
        self.stable = has_stable_row_ids
        self.planned = {f.fragment_id: f.num_rows for f in plan.fragments}
        self.fragments = list(plan.groups[task])
        self.rows = 0
        self._kept: list = []
        self._error: Exception | None = None

    def batches(self) -> Iterator:
        all_ids = np.array(sorted(self.planned), dtype=np.uint64)
        mine = np.array(self.fragments, dtype=np.uint64)
        pending, n = [], 0
        for p, rid, codes in self.art.iter_partitions():
            if not self.stable:
                frag = rid >> np.uint64(32)
                stray = ~np.isin(frag, all_ids)
                if stray.any():
                    self._error = InvalidPartitionArtifactError(
                        f"the partition artifact holds rows of fragments "
                        f"{sorted(set(frag[stray].tolist()))[:10]}, which version {self.plan.version} of "
                        f"{self.plan.uri} does not have: it was written for other data. Fix: encode again."
                    )
                    return
                if not self.whole:
                    keep = np.isin(frag, mine)
                    rid, codes, frag = rid[keep], codes[keep], frag[keep]
                self._kept.append(np.unique(frag, return_counts=True))
            if not len(rid):
                continue
            pending.append((rid, np.full(len(rid), p, np.uint32), codes))
            n += len(rid)
            self.rows += len(rid)
            if n >= _BATCH_ROWS:
                yield _batch_of(pending)
                pending, n = [], 0
        if pending:
            yield _batch_of(pending)

    def finish(self) -> int:
        """The rows streamed, once the stream is checked."""
        if self._error is not None:
            raise self._error
        _check_fragment_counts(self._kept, self.planned, self.plan)
        return self.rows


def _batch_of(pending: list):
    return shuffle_buffer_batch(*(np.concatenate([p[k] for p in pending]) for k in range(3)))


def _check_fragment_counts(kept: list, planned: dict, plan) -> None:
    """No fragment may have more rows in the artifact than it has in the dataset."""
    if not kept:
        return
    ids = np.concatenate([k[0] for k in kept])
    counts = np.concatenate([k[1] for k in kept])
    uniq, inv = np.unique(ids, return_inverse=True)
    totals = np.bincount(inv, weights=counts).astype(np.int64)
    for f, n in zip(uniq.tolist(), totals.tolist()):
        if n > planned[int(f)]:
            raise InvalidPartitionArtifactError(
                f"the partition artifact holds {n} rows of fragment {f}, which has {planned[int(f)]} "
                f"rows at version {plan.version}: the artifact was written for other data. Fix: encode again."
            )
