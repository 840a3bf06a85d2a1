"""Incremental indexing: new fragments join an index without retraining, on the cluster.

After an append, Lance's index covers only the old fragments and queries scan
the new rows flat. :func:`update_index` finds the fragments the index does not
cover, builds segments for only those with the artifacts the build saved
(:mod:`.saved`: no sampling, no training), and commits them as new segments of
the same index (a delta) in one checked commit. A policy keeps the segment
count low: past ``max_deltas`` extra segments it merges them where Lance merges
that type correctly (:data:`.merge.MERGE_DEPTH`, and per segment what Lance's
statistics say: a PQ segment whose codes are transposed or an RQ segment whose
codes are packed cannot be merged again), or rebuilds the index from the saved
artifacts, and says which it did and why. It measures drift (mean squared
distance of new rows to their nearest trained centroid against old rows') and
advises retraining when the new data has moved away from the model.

::

    dli-build-<i> (new fragments only) ──► dli-merge-<j> (optional) ──► dli-update-commit
    dli-drift-sample-<frag> ──► dli-drift ─────────────────────────────────┘

Deletions need nothing (Lance masks deleted rows). Lance 14.0.2 remaps an
index through a compaction (measured: the segment keeps covering the rewritten
rows under the new fragment ids, and fragments written after the index stay
uncovered); any fragment the index does not cover is indexed here, so rows
moved by a compaction that was not remapped are indexed too. Segments all of
whose fragments are gone are removed in the same commit; fragment ids an index
covers that no longer exist are reported.
"""

from __future__ import annotations

import json
import time
import uuid as uuidlib
from dataclasses import replace
from typing import Any

from dask.delayed import Delayed, delayed

from .build import SegmentResult, build_segment
from .drift import DEFAULT_DRIFT_THRESHOLD, measure_drift
from .errors import InvalidInputError
from .merge import MergePlan, plan_merges
from .plan import FragmentInfo, IndexPlan, allocate_samples
from .saved import SavedIndex, load_artifacts
from .update_commit import UpdateResult, _noop_result, _rebuild_result, commit_update, report_update
from .update_plan import DEFAULT_MAX_DELTAS, SegmentState, UpdateDecision, plan_update, segment_mergeable

__all__ = ["IndexUpdate", "UpdateResult", "run_update", "update_index", "plan_update", "SegmentState",
           "UpdateDecision"]

DRIFT_SAMPLE_ROWS = 4096


def _finish(results) -> UpdateResult:
    return report_update(results[0])


class IndexUpdate(Delayed):
    """A lazy update: a dask collection whose result is an :class:`UpdateResult`.

    ``update.decision`` says what it will do, before anything runs.
    """

    __slots__ = ("decision", "plan", "storage_options")

    def __init__(self, key, dsk, decision: UpdateDecision, plan: IndexPlan | None, storage_options=None):
        super().__init__(key, dsk)
        self.decision = decision
        self.plan = plan
        self.storage_options = storage_options

    def __dask_postcompute__(self):
        return _finish, ()

    def __repr__(self) -> str:
        return f"IndexUpdate({self.decision.action}, {len(self.dask)} tasks)"


# -- I/O edge: reading the index's state ------------------------------------------------------


def _index_state(ds, name: str):
    """(IndexDescription, {uuid: segment stats}) of index ``name``, or a clear error."""
    desc = next((d for d in ds.describe_indices() if d.name == name), None)
    if desc is None:
        names = sorted(d.name for d in ds.describe_indices() if not d.name.startswith("__"))
        raise InvalidInputError(
            f"the dataset has no index named {name!r} (it has {names}). Fix: build it first with "
            "dli.create_index, or pass the right name."
        )
    stats = ds.stats.index_stats(name)
    return desc, {s["uuid"]: s for s in stats.get("indices", [])}


def _committed_index(uri: str, desc, seg, storage_options) -> Any:
    """A ``lance.dataset.Index`` for a committed segment, with its files listed
    (Lance's merge reads them); ``index_details`` is filled in by the merge task."""
    import pyarrow.fs as pafs
    from lance.dataset import IndexFile

    from ._lance import filesystem
    from .commit import _as_lance_index

    fs, root = filesystem(f"{uri.rstrip('/')}/_indices/{seg.uuid}", storage_options)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    files = [IndexFile(i.path[len(root):].lstrip("/"), int(i.size)) for i in infos if i.type == pafs.FileType.File]
    return _as_lance_index(desc, seg, files=sorted(files, key=lambda f: f.path))


# -- tasks ------------------------------------------------------------------------------------


def _merge_update_task(plan: IndexPlan, inputs: list, template: SegmentResult, storage_options):
    """Merge committed and new segments; committed ones take the new segments'
    ``index_details`` (same type and parameters), which Lance's merge requires."""
    from .merge import merge_segments

    details = template.index.index_details
    segs = []
    for x in inputs:
        ix = x.index if isinstance(x, SegmentResult) else (x[0] if isinstance(x, tuple) else x)
        if getattr(ix, "index_details", None) is None:
            ix = replace(ix, index_details=details)
        segs.append(ix)
    return merge_segments(plan.uri, plan.version, segs, storage_options)


# -- the public entry point -------------------------------------------------------------------


def update_index(
    uri,
    column: str | None = None,
    name: str | None = None,
    *,
    max_deltas: int = DEFAULT_MAX_DELTAS,
    drift_threshold: float = DEFAULT_DRIFT_THRESHOLD,
    rebuild: bool = True,
    saved_artifacts_uri: str | None = None,
    storage_options: dict[str, str] | None = None,
    num_tasks: int | None = None,
    rows_per_task: int | None = None,
    merge_fan_in: int = 16,
    drift_sample_rows: int = DRIFT_SAMPLE_ROWS,
    seed: int | None = None,
    client=None,
    scheduler: str | None = None,
    compute: bool = True,
) -> Any:
    """Index the fragments an index does not cover, with the artifacts its build saved.

    Parameters
    ----------
    uri : str, path or LanceDataset
        The dataset; its current version is pinned.
    column : str, optional
        The vector column; checked against the saved plan. Default: the saved plan's.
    name : str, optional
        The index; default ``f"{column}_idx"``, or the only vector index of the dataset.
    max_deltas : int
        Segments allowed beyond those the last full build committed before the
        policy merges (where Lance merges the type correctly) or rebuilds.
    drift_threshold : float
        Retraining is advised (``UpdateResult.retrain_advised`` and a warning)
        when the new rows' mean squared distance to their nearest trained
        centroid exceeds this multiple of the old rows'.
    rebuild : bool
        Past the threshold, when Lance cannot merge the segments correctly,
        rebuild from the saved artifacts (``True``) or only advise it.
    saved_artifacts_uri : str, optional
        Where the build saved its artifacts (default ``<uri>/_dli_models/<name>/artifacts.json``).
    storage_options : dict, optional
        Passed to Lance and to the artifacts' file system.
    num_tasks, rows_per_task : int, optional
        Build tasks for the new fragments (default: one per worker thread).
    merge_fan_in : int
        Most segments one IVF_FLAT merge reads.
    drift_sample_rows : int
        Rows sampled from the new fragments, and from the old, to measure drift.
    client, scheduler, compute
        As in :func:`dask_lance_index.create_index`. ``compute=False`` returns an
        :class:`IndexUpdate` (``.decision`` says what it will do); computing it
        gives an :class:`UpdateResult`.

    Returns
    -------
    UpdateResult
        (with ``compute=True``): the action taken and why, the new version,
        segments added and removed, drift.
    """
    from ._lance import fragment_rows, hide_secrets, open_dataset
    from .api import _parallelism, resolve_client

    t0 = time.time()
    if not isinstance(max_deltas, int) or max_deltas < 0:
        raise InvalidInputError(f"max_deltas must be an int >= 0, got {max_deltas!r}")
    if not drift_threshold > 0:
        raise InvalidInputError(f"drift_threshold must be positive, got {drift_threshold!r}")
    client = client if scheduler is not None else resolve_client(client)
    try:
        ds = open_dataset(uri, None, storage_options)
    except (ValueError, OSError) as exc:
        raise InvalidInputError(f"cannot open a Lance dataset at {uri!r}: {exc}") from None
    name = _resolve_name(ds, column, name)
    desc, seg_stats = _index_state(ds, name)
    saved = load_artifacts(ds.uri, name, saved_artifacts_uri=saved_artifacts_uri, storage_options=storage_options)
    _check_saved(saved, desc, seg_stats, column, name, saved_artifacts_uri or "the saved artifacts")
    params = saved.plan.params
    segments = [
        SegmentState(
            s.uuid,
            tuple(sorted(s.fragment_ids)),
            int(sum(p.get("size", 0) for p in seg_stats.get(s.uuid, {}).get("partitions", []))),
            segment_mergeable(params.index_type, seg_stats.get(s.uuid, {})),
        )
        for s in desc.segments
    ]
    live = dict(fragment_rows(ds))
    engine = saved.plan.engine
    decision = plan_update(
        params.index_type,
        segments,
        live,
        base_segments=saved.base_segments,
        max_deltas=max_deltas,
        num_tasks=num_tasks,
        rows_per_task=rows_per_task,
        parallelism=_parallelism(client),
        rebuild=rebuild,
        partial_segments_ok=not (engine in ("lance", "partitions") and params.metric == "dot" and params.quantizer == "PQ"),
    )

    storage_options = hide_secrets(storage_options)  # the graph's tasks carry them: no secret in a repr
    if decision.action == "noop":
        result = _noop_result(ds.uri, name, params.index_type, ds.version, decision, time.time() - t0)
        out = delayed(result, name=f"dli-update-noop-{uuidlib.uuid4().hex[:8]}")
        upd = IndexUpdate(out.key, out.dask, decision, None, storage_options)
    elif decision.action == "rebuild":
        upd = _rebuild_graph(saved, ds, decision, segments, live, storage_options, client, saved_artifacts_uri, seed,
                             drift_threshold=drift_threshold, drift_sample_rows=drift_sample_rows)
    else:
        upd = _update_graph(
            saved, ds, desc, decision, live, segments, storage_options,
            drift_threshold=drift_threshold, drift_sample_rows=drift_sample_rows, seed=seed,
            merge_fan_in=merge_fan_in, plan_seconds=time.time() - t0,
        )
    if not compute:
        return upd
    return run_update(upd, client=client, scheduler=scheduler)


def run_update(upd: IndexUpdate, client=None, scheduler: str | None = None) -> UpdateResult:
    """Run a lazy update; its warnings are raised in this process."""
    from .api import resolve_client

    client = client if scheduler is not None else resolve_client(client)
    try:
        if client is not None:
            return report_update(client.compute(upd).result())
        import dask

        (result,) = dask.compute(upd, scheduler=scheduler)
        return result
    except BaseException:
        if upd.plan is not None:
            from ._lance import remove_index_dir

            for task in range(upd.plan.num_tasks):
                remove_index_dir(upd.plan.uri, upd.plan.segment_uuid(task), upd.storage_options)
        raise


def _resolve_name(ds, column, name) -> str:
    if name is not None:
        return name
    if column is not None:
        return f"{column}_idx"
    vector = [d.name for d in ds.describe_indices() if "Vector" in d.type_url]
    if len(vector) == 1:
        return vector[0]
    raise InvalidInputError(
        f"the dataset has {len(vector)} vector indexes ({vector}); pass name= (or column=) to choose one."
    )


def _check_saved(saved: SavedIndex, desc, seg_stats: dict, column, name, where) -> None:
    """The saved artifacts must describe this index: same column, type, metric, partitions."""
    p = saved.plan
    problems = []
    if column is not None and column != p.column:
        problems.append(f"column {column!r} was asked for but the index was built on {p.column!r}")
    if p.name != name:
        problems.append(f"they are for index {p.name!r}, not {name!r}")
    if desc.field_names and list(desc.field_names) != [p.column]:
        problems.append(f"the index is on {list(desc.field_names)}, they on {p.column!r}")
    if desc.index_type != p.params.index_type:
        problems.append(f"the index is {desc.index_type}, they are for {p.params.index_type}")
    rq = json.loads(saved.artifacts.rabitq_model) if saved.artifacts.rabitq_model else {}
    for uuid, st in seg_stats.items():
        sub = st.get("sub_index") or {}
        checks = [
            ("partitions", st.get("num_partitions"), p.params.num_partitions),
            ("metric", st.get("metric_type"), p.params.metric),
            ("num_sub_vectors", sub.get("num_sub_vectors"), p.params.num_sub_vectors),
            ("RaBitQ rotation", sub.get("fast_rotation_signs"), rq.get("fast_rotation_signs")),
        ]
        bad = [f"segment {uuid[:8]} has {what} {got}, they {want}" for what, got, want in checks
               if got is not None and want is not None and got != want]
        if bad:
            problems.extend(bad)
            break
    if problems:
        raise InvalidInputError(
            f"{where} do not match index {name!r}: {'; '.join(problems)}. The index was probably rebuilt by "
            "another tool. Fix: rebuild it with dli.create_index(..., replace=True), which saves new artifacts."
        )


def _update_plan(saved: SavedIndex, ds, decision: UpdateDecision, live: dict) -> IndexPlan:
    """The IndexPlan of the delta: the saved parameters, only the new fragments, nothing to train."""
    frags = tuple(FragmentInfo(f, live[f]) for f in decision.new_fragments)
    n = len(decision.groups)
    return replace(
        saved.plan,
        uri=ds.uri,
        version=ds.version,
        fragments=frags,
        groups=decision.groups,
        merges=MergePlan(n, (), tuple(range(n))),
        samples=tuple(0 for _ in frags),
        build_id=str(uuidlib.uuid4()),
        # The index name exists: create_index_uncommitted refuses it without replace;
        # our commit adds the segments beside the old ones.
        replace=True,
        train=(),
        notes=("delta: " + decision.action,),
    )


def _drift_graph(plan: IndexPlan, decision, segments, live, artifacts, threshold, sample_rows, seed, storage_options):
    """Drift tasks: a sample of the new rows against a sample of the rows already indexed."""
    from .train import sample_fragment

    tok = plan.build_id[:8]
    new_frags = [FragmentInfo(f, live[f]) for f in decision.new_fragments]
    old_ids = sorted({f for s in segments if s.uuid not in decision.dropped_segments for f in s.fragment_ids} & set(live))
    old_frags = [FragmentInfo(f, live[f]) for f in old_ids]

    def samples(frags, kind):
        if not frags:
            return []
        counts = allocate_samples(frags, sample_rows)
        return [
            delayed(sample_fragment, pure=True)(
                plan.uri, plan.version, plan.column, plan.dimension, f.fragment_id, f.num_rows, n, seed,
                plan.build_id, storage_options, dask_key_name=f"dli-drift-sample-{tok}-{kind}-{f.fragment_id}",
            )
            for f, n in zip(frags, counts)
            if n > 0
        ]

    return delayed(measure_drift, pure=True)(
        samples(new_frags, "new"), samples(old_frags, "old"), artifacts, plan.params.metric, threshold,
        dask_key_name=f"dli-drift-{tok}",
    )


def _update_graph(saved, ds, desc, decision, live, segments, storage_options, *, drift_threshold,
                  drift_sample_rows, seed, merge_fan_in, plan_seconds) -> IndexUpdate:
    plan = _update_plan(saved, ds, decision, live)
    tok = plan.build_id[:8]
    plan_key = delayed(plan, name=f"dli-plan-{tok}")
    artifacts = delayed(saved.artifacts, name=f"dli-artifacts-{tok}")
    built = [
        delayed(build_segment, pure=True)(plan_key, i, artifacts, storage_options, dask_key_name=f"dli-build-{tok}-{i}")
        for i in range(plan.num_tasks)
    ]

    drift = _drift_graph(plan, decision, segments, live, artifacts, drift_threshold, drift_sample_rows, seed,
                         storage_options)

    # Merges: committed mergeable segments and the new ones, planned as a build's merges.
    slots: list = list(built)
    rows = list(plan.group_rows())
    merged: list = []
    final = list(built)
    if decision.action == "merge":
        by_uuid = {s.uuid: s for s in desc.segments}
        state = {s.uuid: s for s in segments}
        for u in decision.merge_segments:
            slots.append(delayed(_committed_index(plan.uri, desc, by_uuid[u], storage_options), name=f"dli-segment-{tok}-{u[:8]}"))
            rows.append(state[u].num_rows)
        mp = plan_merges(plan.params.index_type, rows, num_segments=1, fan_in=merge_fan_in)
        for stage in mp.stages:
            for step in stage:
                m = delayed(_merge_update_task, pure=True)(
                    plan_key, [slots[i] for i in step.inputs], built[0], storage_options,
                    dask_key_name=f"dli-merge-{tok}-{step.output}",
                )
                slots.append(m)
                merged.append(m)
        final = [slots[i] for i in mp.final]
    commit = delayed(commit_update, pure=True)(
        plan_key, decision, final, built, merged, drift, storage_options, plan_seconds, len(segments),
        dask_key_name=f"dli-update-commit-{tok}",
    )
    return IndexUpdate(commit.key, commit.dask, decision, plan, storage_options)


def _rebuild_graph(saved: SavedIndex, ds, decision, segments, live, storage_options, client,
                   saved_artifacts_uri, seed, *, drift_threshold, drift_sample_rows) -> IndexUpdate:
    """A full build over every live fragment with the saved artifacts (no training),
    replacing the index in one commit; the build saves the artifacts again."""
    from .api import _parallelism
    from .graph import build_graph
    from .plan import plan_index

    p = saved.plan.params
    a = saved.artifacts
    plan = plan_index(
        ds.uri, saved.plan.column, p.index_type, name=saved.plan.name, metric=p.metric, replace=True,
        num_partitions=p.num_partitions, num_sub_vectors=p.num_sub_vectors, num_bits=p.num_bits,
        m=p.m, ef_construction=p.ef_construction, ivf_centroids=a.ivf_centroids, pq_codebook=a.pq_codebook,
        rabitq_model=a.rabitq_model, parallelism=_parallelism(client), seed=seed, engine=saved.plan.engine,
        version=ds.version, storage_options=storage_options,
    )
    if plan.train:  # pragma: no cover - saved artifacts always hold what the type needs
        raise InvalidInputError(f"the saved artifacts lack {list(plan.train)}; rebuild with dli.create_index")
    build = build_graph(plan, a, storage_options, saved_artifacts_uri=saved_artifacts_uri)
    artifacts = delayed(a, name=f"dli-artifacts-{plan.build_id[:8]}")  # the key the build uses
    drift = _drift_graph(plan, decision, segments, live, artifacts, drift_threshold, drift_sample_rows, seed,
                         storage_options)
    out = delayed(_rebuild_result, pure=True)(build, decision, drift, tuple(s.uuid for s in segments),
                                              dask_key_name=f"dli-update-rebuild-{plan.build_id[:8]}")
    return IndexUpdate(out.key, out.dask, decision, plan, storage_options)
