"""What a commit checks: the segments cover what was planned exactly once, and the
fragments they cover still exist.

Lance's commit accepts segments that cover nothing (after a compaction), cover a
fragment twice, or sit next to an old index of the same name; each of those is
a silently worse index (``docs/lance.md``), so every commit checks first.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from ..errors import CoverageError, DatasetChangedError

__all__ = ["check_coverage", "check_fragments_live", "deleted_fragments"]


def check_coverage(planned: Iterable[int], segments: Sequence[tuple[str, Iterable[int]]]) -> None:
    """Raise :class:`CoverageError` unless the segments cover ``planned`` exactly once. Pure.

    ``segments`` holds ``(uuid, fragment ids)`` pairs.
    """
    planned = set(planned)
    seen: dict[int, str] = {}
    for uuid, frags in segments:
        frags = list(frags)
        if not frags:
            raise CoverageError(f"segment {uuid} covers no fragment")
        for f in frags:
            if f in seen:
                raise CoverageError(f"fragment {f} is covered twice: by segments {seen[f]} and {uuid}")
            if f not in planned:
                raise CoverageError(f"segment {uuid} covers fragment {f}, which is not in the plan")
            seen[f] = uuid
    missing = planned - set(seen)
    if missing:
        raise CoverageError(f"fragments {sorted(missing)} are covered by no segment")


def deleted_fragments(ds, since_version: int) -> set[int]:
    """Fragments that Delete transactions removed after ``since_version`` (all their rows deleted)."""
    n = ds.version - since_version
    out: set[int] = set()
    if n <= 0:
        return out
    for t in ds.get_transactions(n):
        if t is not None and t.read_version >= since_version:
            out.update(getattr(t.operation, "deleted_fragment_ids", None) or ())
    return out


def check_fragments_live(latest, fragments: Iterable[int], since_version: int, what: str) -> None:
    """Raise :class:`DatasetChangedError` if any of ``fragments`` (of ``since_version``) is
    gone from ``latest`` other than by deleting all its rows (which is harmless to cover):
    one that a compaction or update rewrote would leave its rows outside the index."""
    live = {f.fragment_id for f in latest.get_fragments()}
    gone = sorted(set(fragments) - live - deleted_fragments(latest, since_version))
    if gone:
        raise DatasetChangedError(
            f"fragments {gone} of version {since_version} no longer exist at version {latest.version} "
            f"(compacted or deleted during the {what}); committing now would give an index that covers "
            f"them as nothing. Fix: run the {what} again on the current version."
        )
