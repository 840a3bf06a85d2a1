""":func:`update_index`: index the fragments an index does not cover, with its build's saved model.

Reads the index's state (its committed segments and what Lance's statistics say
of each), checks the saved model against it, decides what to do
(:func:`.plan.plan_update`, pure), and runs the update through the same runner
as a build (:func:`dask_lance_index.recovery.run`): retries on lost workers,
a journal and resume, a progress bar, and every segment it wrote removed if it
fails.
"""

from __future__ import annotations

import json
import time
from typing import Any

from ..api import plan_index
from ..build import get_engine
from ..commit import SavedModel, load_model
from ..errors import InvalidInputError
from ..recovery import resume_journal, run, start_journal
from ..runtime import parallelism, resolve_client
from ..storage import (
    SegmentResult,
    committed_index,
    fragment_rows,
    hide_secrets,
    open_or_fail,
)
from .commit import noop_result
from .drift import DEFAULT_DRIFT_THRESHOLD
from .graph import delta_graph, delta_plan, noop_graph, rebuild_graph
from .plan import (
    DEFAULT_MAX_DELTAS,
    SegmentState,
    UpdateDecision,
    plan_update,
    segment_mergeable,
)

__all__ = ["DRIFT_SAMPLE_ROWS", "update_index"]

DRIFT_SAMPLE_ROWS = 4096


def update_index(
    uri,
    column: str | None = None,
    name: str | None = None,
    *,
    max_deltas: int = DEFAULT_MAX_DELTAS,
    drift_threshold: float = DEFAULT_DRIFT_THRESHOLD,
    rebuild: bool = True,
    model_uri: str | None = None,
    storage_options: dict[str, str] | None = None,
    num_tasks: int | None = None,
    rows_per_task: int | None = None,
    merge_fan_in: int = 16,
    drift_sample_rows: int = DRIFT_SAMPLE_ROWS,
    seed: int | None = None,
    client=None,
    scheduler: str | None = None,
    compute: bool = True,
    journal=None,
    resume: bool = True,
    retries: int = 2,
    progress: bool | None = None,
) -> Any:
    """Index the fragments an index does not cover, with the model its build saved.

    Vector indexes (:func:`~dask_lance_index.create_index`) and scalar and
    full-text ones (:func:`~dask_lance_index.create_scalar_index`) alike: the new
    fragments are built in parts as the build built them and committed beside
    the old segments (a delta), or merged with them past ``max_deltas``; the
    old parts are never built again. A scalar index has no model and no drift.

    Parameters
    ----------
    uri : str, path or LanceDataset
        The dataset; its current version is pinned.
    column : str, optional
        The indexed column; checked against the saved plan. Default: the saved plan's.
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
        rebuild from the saved model (``True``) or only advise it.
    model_uri : str, optional
        Where the build saved its model (default ``<uri>/_dli_models/<name>/model.json``).
    storage_options : dict, optional
        Passed to Lance and to the model's file system.
    num_tasks, rows_per_task : int, optional
        Build tasks for the new fragments (default: one per worker thread).
    merge_fan_in : int
        Most segments one IVF_FLAT merge reads.
    drift_sample_rows : int
        Rows sampled from the new fragments, and from the old, to measure drift.
    client, scheduler, compute, journal, resume, retries, progress
        As in :func:`dask_lance_index.create_index`. ``compute=False`` returns an
        :class:`~dask_lance_index.update.IndexUpdate` (``.decision`` says what it
        will do); :func:`dask_lance_index.run` runs it and gives an
        :class:`UpdateResult`. With ``journal`` naming the journal of an update
        whose driver died, ``resume=True`` carries that update on.

    Returns
    -------
    UpdateResult
        (with ``compute=True``): the action taken and why, the new version,
        segments added and removed, drift.
    """
    t0 = time.time()
    if not isinstance(max_deltas, int) or max_deltas < 0:
        raise InvalidInputError(f"max_deltas must be an int >= 0, got {max_deltas!r}")
    if not drift_threshold > 0:
        raise InvalidInputError(f"drift_threshold must be positive, got {drift_threshold!r}")
    client = resolve_client(client, scheduler)
    ds = open_or_fail(uri, None, storage_options)
    name = _resolve_name(ds, column, name)
    desc, seg_stats = _index_state(ds, name)
    saved = load_model(ds.uri, name, model_uri=model_uri, storage_options=storage_options)
    _check_saved(saved, desc, seg_stats, column, name, model_uri or "the saved model")
    params = saved.plan.params
    engine = get_engine(saved.plan.engine).for_updates()
    live = dict(fragment_rows(ds))
    segments = [
        SegmentState(
            s.uuid,
            tuple(sorted(s.fragment_ids)),
            int(sum(p.get("size", 0) for p in seg_stats.get(s.uuid, {}).get("partitions", [])))
            if not params.is_scalar else sum(live.get(f, 0) for f in s.fragment_ids),
            segment_mergeable(params.index_type, seg_stats.get(s.uuid, {}), saved.plan.engine),
        )
        for s in desc.segments
    ]
    resumed = resume_journal(journal, storage_options, kind="update") if journal and resume else None
    if resumed is not None:  # carry on the journaled update: its decision, its plan
        decision = UpdateDecision.from_dict(resumed.job["decision"])
    else:
        decision = plan_update(
            params.index_type,
            segments,
            live,
            base_segments=saved.base_segments,
            max_deltas=max_deltas,
            num_tasks=num_tasks,
            rows_per_task=rows_per_task,
            parallelism=parallelism(client),
            rebuild=rebuild,
            one_segment_reason=get_engine(engine).one_segment_reason(params),
            engine=saved.plan.engine,
        )

    opts = hide_secrets(storage_options)  # the graph's tasks carry them: no secret in a repr
    drift = dict(drift_threshold=drift_threshold, drift_sample_rows=drift_sample_rows, seed=seed)
    job = {"kind": "update", "decision": decision.to_dict()}
    if decision.action == "noop":
        upd = noop_graph(noop_result(ds.uri, name, params.index_type, ds.version, decision, time.time() - t0), decision)
    elif decision.action == "rebuild":
        if resumed is not None:
            plan, model = resumed.plan, resumed.load_model() or saved.model
        else:
            p, model = saved.plan.params, saved.model
            plan = plan_index(
                ds.uri, saved.plan.column, p.index_type, name=saved.plan.name, metric=p.metric, replace=True,
                num_partitions=p.num_partitions, num_sub_vectors=p.num_sub_vectors, num_bits=p.num_bits,
                m=p.m, ef_construction=p.ef_construction, ivf_centroids=model.ivf_centroids,
                pq_codebook=model.pq_codebook, rabitq_model=model.rabitq_model, parallelism=parallelism(client),
                seed=seed, engine=engine, version=ds.version, storage_options=storage_options,
            )
        location = str(journal) if resumed is not None else start_journal(plan, journal, model, storage_options, job)
        upd = rebuild_graph(plan, model, decision, segments, live, opts, journal=location, retries=retries,
                            model_uri=model_uri, plan_seconds=time.time() - t0, **drift)
    else:
        by_uuid, state = {s.uuid: s for s in desc.segments}, {s.uuid: s for s in segments}
        gone = [u[:8] for u in decision.merge_segments if u not in by_uuid]
        if gone:
            raise InvalidInputError(
                f"segments {gone} of index {name!r}, which the journaled update merges, were replaced since. "
                f"Fix: remove the journal (dask_lance_index.cleanup(uri, journal={str(journal)!r})) and update again."
            )
        committed = [
            SegmentResult(-1, committed_index(ds.uri, desc, by_uuid[u], storage_options), state[u].fragment_ids,
                          state[u].num_rows)
            for u in decision.merge_segments
        ]
        plan = resumed.plan if resumed is not None else delta_plan(saved, ds, decision, live, committed, engine,
                                                                   merge_fan_in)
        location = str(journal) if resumed is not None else start_journal(plan, journal, saved.model, storage_options,
                                                                          job)
        upd = delta_graph(plan, saved, decision, committed, segments, live, opts, journal=location, retries=retries,
                          plan_seconds=time.time() - t0, **drift)
    if not compute:
        return upd
    return run(upd, client=client, scheduler=scheduler, retries=retries, progress=progress)


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
    # A scalar index's statistics name no segment (no uuid): nothing per segment to check.
    return desc, {s["uuid"]: s for s in stats.get("indices", []) if "uuid" in s}


def _check_saved(saved: SavedModel, desc, seg_stats: dict, column, name, where) -> None:
    """The saved model must describe this index: same column, type, metric, partitions."""
    p = saved.plan
    problems = []
    if column is not None and column != p.column:
        problems.append(f"column {column!r} was asked for but the index was built on {p.column!r}")
    if p.name != name:
        problems.append(f"it is for index {p.name!r}, not {name!r}")
    if desc.field_names and list(desc.field_names) != [p.column]:
        problems.append(f"the index is on {list(desc.field_names)}, it on {p.column!r}")
    if desc.index_type.replace("_", "").upper() != p.params.index_type.replace("_", "").upper():  # BTree: BTREE
        problems.append(f"the index is {desc.index_type}, it is for {p.params.index_type}")
    rq = json.loads(saved.model.rabitq_model) if saved.model.rabitq_model else {}
    for uuid, st in seg_stats.items():
        sub = st.get("sub_index") or {}
        checks = [
            ("partitions", st.get("num_partitions"), p.params.num_partitions),
            ("metric", st.get("metric_type"), p.params.metric),
            ("num_sub_vectors", sub.get("num_sub_vectors"), p.params.num_sub_vectors),
            ("RaBitQ rotation", sub.get("fast_rotation_signs"), rq.get("fast_rotation_signs")),
        ]
        bad = [f"segment {uuid[:8]} has {what} {got}, it {want}" for what, got, want in checks
               if got is not None and want is not None and got != want]
        if bad:
            problems.extend(bad)
            break
    if problems:
        raise InvalidInputError(
            f"{where} does not match index {name!r}: {'; '.join(problems)}. The index was probably rebuilt by "
            "another tool. Fix: rebuild it with dli.create_index(..., replace=True), which saves a new model."
        )
