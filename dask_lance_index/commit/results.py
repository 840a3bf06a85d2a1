"""What a committed job did: :class:`BuildResult`, and the pattern every job's result follows.

Every result (:class:`BuildResult`, :class:`dask_lance_index.UpdateResult`) is a
frozen dataclass that round-trips through JSON, opens the version it committed
(:meth:`IndexResult.dataset`), holds the seconds of each stage, and says what
its caller should be warned about (:meth:`IndexResult.warnings`), which the
runner raises in the calling process (:func:`dask_lance_index.recovery.report`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import ClassVar

from ..storage import open_dataset

__all__ = ["BuildResult", "IndexResult", "LOW_AGREEMENT", "stage_seconds"]

# Below this share of checked rows in their exact nearest partition a two-level
# build warns. The probes are chosen for 99.5% on sampled rows held out of
# training (plan.params.AGREEMENT_ROWS), so the indexed rows agree about as well.
LOW_AGREEMENT = 0.99


class IndexResult:
    """The methods every job's result shares (mixed into frozen dataclasses)."""

    # Fields held as tuples, written as JSON lists.
    _TUPLES: ClassVar[tuple[str, ...]] = ()

    def dataset(self, storage_options: dict | None = None):
        """The dataset at the version this job committed."""
        return open_dataset(self.uri, self.version, storage_options)

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in self._TUPLES:
            d[k] = list(d[k])
        return d

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, d: dict):
        d = dict(d)
        for k in cls._TUPLES:
            d[k] = tuple(d[k])
        return cls(**d)

    def warnings(self) -> list[str]:
        """What the caller should be told (rows left out, advice), one message each."""
        return []

    def committed_segments(self) -> tuple[str, ...]:
        """The uuids of the segments this job committed."""
        return tuple(self.segments)


def stage_seconds(built: list, merged: list) -> dict[str, float]:
    """Wall seconds of the build and merge stages, from their tasks' start and end times."""
    return {
        "build": round(max(r.finished for r in built) - min(r.started for r in built), 4) if built else 0.0,
        "merge": round(max(r.finished for r in merged) - min(r.started for r in merged), 4) if merged else 0.0,
    }


@dataclass(frozen=True)
class BuildResult(IndexResult):
    """What a committed build did.

    Attributes
    ----------
    uri, name, index_type : str
    version : int
        The dataset version that holds the new index.
    read_version : int
        The version the build read (the plan's pinned version).
    segments : tuple of str
        UUIDs of the committed segments.
    num_rows_indexed : int
        Rows in the index.
    num_rows_skipped : int
        Rows Lance left out: null vectors plus vectors with NaN or infinity.
    num_rows_unindexed : int
        Rows of the committed version the index does not cover: rows appended
        by other writers during the build (Lance scans them flat at query time).
    null_rows, nan_rows : int
        The two kinds of skipped rows.
    num_segments_built, num_merges : int
    seconds : dict
        Wall seconds per stage: plan, sample, train, build, merge, commit (each
        present, 0.0 for a stage that did not run), and ``total`` when the build
        ran through :func:`~dask_lance_index.create_index` or :func:`~dask_lance_index.run`.
    build_id : str
    assignment_agreement : float, optional
        With a two-level IVF model: the share of sampled rows held out of training
        whose assignment among their ``coarse_probes`` nearest groups' partitions
        is their exact nearest partition.
    coarse_probes : int, optional
        The groups each row's partition was searched in (two-level model).
    build_agreement : float, optional
        The same share, measured by the build tasks on the rows they indexed
        (every 256th row also assigned exactly), not on the training sample; a
        warning when it falls below :data:`LOW_AGREEMENT`.
    """

    _TUPLES: ClassVar[tuple[str, ...]] = ("segments",)

    uri: str
    name: str
    index_type: str
    version: int
    read_version: int
    segments: tuple[str, ...]
    num_rows_indexed: int
    num_rows_skipped: int
    null_rows: int
    nan_rows: int
    num_segments_built: int
    num_merges: int
    seconds: dict = field(default_factory=dict)
    build_id: str = ""
    num_rows_unindexed: int = 0
    assignment_agreement: float | None = None
    coarse_probes: int | None = None
    build_agreement: float | None = None

    def warnings(self) -> list[str]:
        out = []
        if self.num_rows_skipped:
            out.append(
                f"{self.num_rows_skipped} rows were not indexed: {self.null_rows} null vectors and "
                f"{self.nan_rows} vectors with NaN or infinity. Lance never indexes them; queries "
                "will not find these rows."
            )
        if self.num_rows_unindexed:
            out.append(
                f"{self.num_rows_unindexed} rows appended during the build are not in the index "
                "(queries still find them, by a slower flat scan). Fix: build again, or let Lance's "
                "optimize_indices add them."
            )
        if self.build_agreement is not None and self.build_agreement < LOW_AGREEMENT:
            out.append(
                f"two-level assignment put {self.build_agreement:.2%} of the indexed rows it checked in their "
                f"exact nearest partition (below {LOW_AGREEMENT:.1%}; {self.assignment_agreement:.2%} on the "
                f"held-out sample rows with {self.coarse_probes} probes): recall may be lower than a flat build's. "
                "Fix: build again with a larger coarse_probes=, or ivf_training='flat'."
            )
        return out

    def __str__(self) -> str:
        secs = ", ".join(f"{k} {v:.2f}s" for k, v in self.seconds.items())
        s = (
            f"{self.index_type} index {self.name!r} committed at version {self.version}: "
            f"{self.num_rows_indexed} rows in {len(self.segments)} segment(s) "
            f"({self.num_segments_built} built, {self.num_merges} merges); {secs}"
        )
        if self.num_rows_skipped:
            s += f"; {self.num_rows_skipped} rows not indexed ({self.null_rows} null, {self.nan_rows} NaN/inf)"
        if self.num_rows_unindexed:
            s += f"; {self.num_rows_unindexed} rows appended during the build are not in the index"
        if self.assignment_agreement is not None:
            s += (f"; two-level assignment ({self.coarse_probes} probes) agreed with exact on "
                  f"{self.assignment_agreement:.2%} of held-out sampled rows"
                  + (f" and {self.build_agreement:.2%} of checked indexed rows" if self.build_agreement is not None
                     else ""))
        return s
