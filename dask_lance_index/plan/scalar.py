"""Scalar and full-text indexes (BTREE, BITMAP, LABEL_LIST, INVERTED, NGRAM, ZONEMAP,
BLOOMFILTER): their parameters, the column check, and the plan. Pure.

A scalar build has the vector build's shape: one uncommitted Lance segment per
fragment group (Lance's ``create_index_uncommitted(..., fragment_ids=...)``),
merged by Lance's ``merge_existing_index_segments``, and one checked commit.
There is no model to train. What pylance 14.0.2 does with parts of each type
was measured (``docs/lance.md``, pinned by ``tests/test_scalar.py``): every
type's segments, built over any fragment groups (also non-contiguous ones, with
nulls), merged once or merged segments merged again, answer filters and
full-text queries exactly as Lance's single-process index does. So every type
is built in parts and merges at any depth (:data:`SCALAR_ONE_TASK` is where a
type that cannot would say why). Lance picks a scalar segment's uuid itself
(BTREE, LABEL_LIST and NGRAM refuse ``index_uuid``), so build tasks journal
their attempts as merges do.
"""

from __future__ import annotations

import json
import dataclasses
from typing import Any, Mapping, Sequence

import pyarrow as pa

from ..errors import InvalidInputError
from .fragments import FragmentInfo
from .index_plan import IndexPlan, make_plan
from .merges import MergePlan, MergeStep
from .params import IndexParams

__all__ = [
    "SCALAR_ALIASES",
    "SCALAR_INDEX_TYPES",
    "SCALAR_ONE_TASK",
    "SCALAR_STAGED",
    "finalize_staged",
    "check_scalar_column",
    "is_scalar",
    "make_scalar_plan",
    "normalize_scalar_type",
    "scalar_params",
]

SCALAR_INDEX_TYPES = ("BTREE", "BITMAP", "LABEL_LIST", "INVERTED", "NGRAM", "ZONEMAP", "BLOOMFILTER")
# Lance's other names for the same index.
SCALAR_ALIASES = {"FTS": "INVERTED"}
# Types whose part Lance 14.0.2 writes unfinished (its files under ``staging/``): only its
# merge finalizes it (or Lance's own commit_existing_index_segments, which cannot replace an
# old index in the same transaction). Committed as built, every query fails ("Not found:
# .../tokens.lance"). So each such part goes through a merge, alone if need be.
SCALAR_STAGED = ("INVERTED",)
# Types whose parts Lance 14.0.2 cannot merge correctly, with the reason: built in one
# task. None measured so (docs/lance.md); the plan's note says why when one is listed.
SCALAR_ONE_TASK: dict[str, str] = {}

# What each type indexes, for the column check and its message.
_KINDS = {
    "BTREE": "integers, floats, booleans, strings, binary, decimals or dates/timestamps",
    "BITMAP": "integers, floats, booleans, strings, binary, decimals or dates/timestamps",
    "ZONEMAP": "integers, floats, booleans, strings, binary, decimals or dates/timestamps",
    "BLOOMFILTER": "integers, floats, strings, binary, decimals or dates/timestamps",
    "LABEL_LIST": "lists of labels (list or large_list of a scalar type)",
    "INVERTED": "text (string, large_string, or a list of strings)",
    "NGRAM": "text (string or large_string)",
}
_FIX = {
    "BTREE": "cast the column, or index a text column with INVERTED (words) or NGRAM (substrings)",
    "BITMAP": "cast the column, or use LABEL_LIST for a list column",
    "ZONEMAP": "cast the column, or use BTREE",
    "BLOOMFILTER": "cast the column, or use BTREE or BITMAP",
    "LABEL_LIST": "store the labels as pa.list_(pa.string()), or use BITMAP / BTREE for a single value per row",
    "INVERTED": "index a text column; for numbers use BTREE (ranges) or BITMAP (few distinct values)",
    "NGRAM": "index a text column; for numbers use BTREE (ranges) or BITMAP (few distinct values)",
}


def is_scalar(index_type: str) -> bool:
    """Whether ``index_type`` names a scalar or full-text index. Pure."""
    return isinstance(index_type, str) and index_type.upper() in (*SCALAR_INDEX_TYPES, *SCALAR_ALIASES)


def normalize_scalar_type(index_type: str) -> str:
    """The canonical name of a scalar index type (``"fts"`` -> ``"INVERTED"``), or an error. Pure."""
    if not is_scalar(index_type):
        raise InvalidInputError(
            f"index_type {index_type!r} is not a scalar index type. Fix: choose one of "
            f"{', '.join(SCALAR_INDEX_TYPES)} (or dli.create_index for a vector index: IVF_PQ, ...)."
        )
    t = index_type.upper()
    return SCALAR_ALIASES.get(t, t)


def _scalar_value(t: pa.DataType) -> bool:
    return (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
            or pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)
            or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t) or pa.types.is_temporal(t)
            or pa.types.is_decimal(t))


def _text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _fits(index_type: str, t: pa.DataType) -> bool:
    if isinstance(t, pa.ExtensionType):
        t = t.storage_type
    if index_type in ("BTREE", "BITMAP", "ZONEMAP"):
        return _scalar_value(t)
    if index_type == "BLOOMFILTER":  # Lance: "Bloom filter index does not support data type: Boolean"
        return _scalar_value(t) and not pa.types.is_boolean(t)
    if index_type == "LABEL_LIST":
        return (pa.types.is_list(t) or pa.types.is_large_list(t)) and _scalar_value(t.value_type)
    if index_type == "INVERTED":
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            t = t.value_type
        return _text(t)
    if index_type == "NGRAM":
        return _text(t)
    raise AssertionError(index_type)


def check_scalar_column(column: str, index_type: str, value_type: pa.DataType) -> None:
    """Raise an error naming the fix unless ``index_type`` can index a column of
    ``value_type``. Pure."""
    if not _fits(index_type, value_type):
        raise InvalidInputError(
            f"column {column!r} has type {value_type}; the {index_type} index needs {_KINDS[index_type]}. "
            f"Fix: {_FIX[index_type]}."
        )


def scalar_params(index_type: str, options: Mapping[str, Any] | None = None) -> IndexParams:
    """The index as Lance will build it: its type and the options passed to Lance
    (tokenizer settings and the like), kept as JSON so the plan round-trips. Pure."""
    index_type = normalize_scalar_type(index_type)
    options = dict(options or {})
    for reserved in ("fragment_ids", "index_uuid", "name", "replace", "column", "index_type"):
        if reserved in options:
            raise InvalidInputError(
                f"{reserved}= is set by the distributed build itself. Fix: drop it from the keyword arguments "
                "(fragment groups: num_tasks= or fragment_groups=)."
            )
    try:
        text = json.dumps(options, sort_keys=True)
    except TypeError as exc:
        raise InvalidInputError(
            f"the options passed to Lance must be plain values (str, int, float, bool, lists of them): {exc}. "
            "Fix: pass Lance's keyword arguments as plain values."
        ) from None
    return IndexParams(index_type=index_type, metric="", num_partitions=0, options=text if options else None)


def make_scalar_plan(
    *,
    uri: str,
    version: int,
    column: str,
    fragments: Sequence[FragmentInfo],
    params: IndexParams,
    name: str | None = None,
    replace: bool = True,
    num_tasks: int | None = None,
    rows_per_task: int | None = None,
    parallelism: int = 1,
    num_segments: int = 1,
    merge_fan_in: int = 16,
    fragment_groups: Sequence[Sequence[int]] | None = None,
    build_id: str | None = None,
) -> IndexPlan:
    """Decide a scalar build: fragment groups balanced by rows (one task each, at
    least one per worker thread), the merges to ``num_segments`` segments, nothing
    to train. A type in :data:`SCALAR_ONE_TASK` is one task, the reason in the
    plan's notes. Pure."""
    plan = make_plan(
        uri=uri,
        version=version,
        column=column,
        dimension=0,
        fragments=fragments,
        params=params,
        engine="scalar",
        one_segment_reason=SCALAR_ONE_TASK.get(params.index_type),
        name=name,
        replace=replace,
        train=(),
        num_tasks=num_tasks,
        rows_per_task=rows_per_task,
        parallelism=parallelism,
        num_segments=num_segments,
        merge_fan_in=merge_fan_in,
        fragment_groups=fragment_groups,
        build_id=build_id,
    )
    if params.index_type in SCALAR_STAGED:
        plan = dataclasses.replace(plan, merges=finalize_staged(plan.merges))
    return plan


def finalize_staged(merges: MergePlan) -> MergePlan:
    """``merges`` with every final segment that no merge made (a part as built) sent
    through a merge of its own, which finalizes it (:data:`SCALAR_STAGED`). Pure."""
    carried = [s for s in merges.final if s < merges.num_inputs]
    if not carried:
        return merges
    next_slot = merges.num_inputs + merges.num_merges
    steps = tuple(MergeStep((s,), next_slot + i) for i, s in enumerate(carried))
    out = {s: step.output for s, step in zip(carried, steps)}
    return MergePlan(merges.num_inputs, (*merges.stages, steps), tuple(out.get(s, s) for s in merges.final))
