"""Fragments into build tasks, and rows of the training sample per fragment. Pure.

A build task reads whole fragments (a fragment is never split); the groups are
balanced by rows. The training sample is drawn from every fragment in
proportion to its rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from ..errors import InvalidInputError

__all__ = ["DEFAULT_ROWS_PER_TASK", "FragmentInfo", "allocate_samples", "apportion", "check_fragment_groups", "group_fragments"]

# Default rows per build task: above it a build splits into more tasks than workers.
DEFAULT_ROWS_PER_TASK = 2_000_000


@dataclass(frozen=True)
class FragmentInfo:
    fragment_id: int
    num_rows: int


def group_fragments(
    fragments: Sequence[FragmentInfo],
    *,
    num_tasks: int | None = None,
    rows_per_task: int | None = None,
    min_tasks: int = 1,
) -> tuple[tuple[int, ...], ...]:
    """Group fragments into build tasks balanced by rows. Pure.

    Largest fragments first, each to the task with the fewest rows so far (LPT);
    a fragment is never split. Without ``num_tasks``, there are
    ``max(min_tasks, ceil(rows / rows_per_task))`` tasks (``rows_per_task``
    defaults to 2M). Each group lists its fragment ids in ascending
    order and groups are ordered by their first fragment id.
    """
    if not fragments:
        raise InvalidInputError("the dataset has no fragments to index")
    if num_tasks is not None and rows_per_task is not None:
        raise InvalidInputError("give num_tasks or rows_per_task, not both")
    total = sum(f.num_rows for f in fragments)
    if num_tasks is None:
        per = rows_per_task or DEFAULT_ROWS_PER_TASK
        if per < 1:
            raise InvalidInputError(f"rows_per_task must be positive, got {per}")
        num_tasks = max(min_tasks, math.ceil(total / per))
    if num_tasks < 1:
        raise InvalidInputError(f"num_tasks must be positive, got {num_tasks}")
    num_tasks = min(num_tasks, len(fragments))
    loads = [0] * num_tasks
    groups: list[list[int]] = [[] for _ in range(num_tasks)]
    for f in sorted(fragments, key=lambda f: (-f.num_rows, f.fragment_id)):
        i = min(range(num_tasks), key=lambda j: (loads[j], j))
        groups[i].append(f.fragment_id)
        loads[i] += f.num_rows
    return tuple(sorted((tuple(sorted(g)) for g in groups if g), key=lambda g: g[0]))


def check_fragment_groups(
    groups: Sequence[Sequence[int]], fragments: Sequence[FragmentInfo]
) -> tuple[tuple[int, ...], ...]:
    """Validate user-given fragment groups (one build task each). Pure.

    Every fragment of the dataset must be in exactly one group: the index must
    cover each fragment once. Returns the groups in :func:`group_fragments`' order.
    """
    known = {f.fragment_id for f in fragments}
    seen: dict[int, int] = {}
    out = []
    for i, g in enumerate(groups):
        try:
            ids = [int(f) for f in g]
        except (TypeError, ValueError):
            raise InvalidInputError(
                f"fragment_groups[{i}] is {g!r}, not a list of fragment ids. Fix: pass a list of lists of ints."
            ) from None
        if not ids:
            raise InvalidInputError(f"fragment_groups[{i}] is empty; Lance would build a segment covering nothing. Fix: drop it.")
        for f in ids:
            if f not in known:
                raise InvalidInputError(
                    f"fragment_groups[{i}] names fragment {f}, which the dataset does not have "
                    f"(its fragments are {sorted(known)}). Fix: use ids from ds.get_fragments()."
                )
            if f in seen:
                raise InvalidInputError(
                    f"fragment {f} is in fragment_groups[{seen[f]}] and fragment_groups[{i}]; groups "
                    "overlap, so the index would cover it twice. Fix: put each fragment in one group."
                )
            seen[f] = i
        out.append(tuple(sorted(ids)))
    missing = sorted(known - set(seen))
    if missing:
        raise InvalidInputError(
            f"fragments {missing} are in no group of fragment_groups; the index must cover every "
            "fragment. Fix: add them to a group."
        )
    return tuple(sorted(out, key=lambda g: g[0]))


def allocate_samples(fragments: Sequence[FragmentInfo], total: int) -> tuple[int, ...]:
    """Rows to sample from each fragment: proportional to its rows, summing to
    ``min(total, all rows)``, by largest remainder. Pure."""
    return apportion([f.num_rows for f in fragments], total)


def apportion(rows: Sequence[int], total: int) -> tuple[int, ...]:
    """``min(total, sum(rows))`` shared out in proportion to ``rows``, none past its own,
    by largest remainder. Pure."""
    rows = [int(r) for r in rows]
    all_rows = sum(rows)
    total = min(total, all_rows)
    if all_rows == 0 or total == 0:
        return tuple(0 for _ in rows)
    exact = [r * total / all_rows for r in rows]
    base = [min(int(e), r) for e, r in zip(exact, rows)]
    short = total - sum(base)
    order = sorted(range(len(rows)), key=lambda i: -(exact[i] - base[i]))
    for i in order:
        if short == 0:
            break
        if base[i] < rows[i]:
            base[i] += 1
            short -= 1
    return tuple(base)
