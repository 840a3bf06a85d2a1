"""What a build will do, decided before anything runs: the :class:`IndexPlan`. Pure.

An :class:`IndexPlan` names the build tasks (fragment groups), the training
sample, the merges and the segment uuids, at one pinned dataset version; it is
frozen, printable, and round-trips through JSON (the build journal keeps it)
and pickle (it enters the task graph once, as one key). :func:`make_plan`
decides it from the dataset's metadata (read by
:func:`dask_lance_index.plan_index`, the I/O edge) and the request.
"""

from __future__ import annotations

import json
import uuid as uuidlib
from dataclasses import asdict, dataclass, replace
from typing import Any, Sequence

from ..errors import InvalidInputError
from ..model.coarse import TARGET_AGREEMENT, coarse_size
from .fragments import (
    DEFAULT_ROWS_PER_TASK,
    FragmentInfo,
    allocate_samples,
    check_fragment_groups,
    group_fragments,
)
from .merges import MergePlan, merge_depth, plan_merges
from .params import IndexParams, training_sample_size

__all__ = ["IndexPlan", "graphs_built_at_merge", "graphs_built_twice", "held_row_bytes", "lance_pq_partitions", "make_plan",
           "model_parts_to_train", "segment_uuid"]

_UUID_NAMESPACE = uuidlib.UUID("6f1c2a4e-3d7b-4c1e-9a8f-d1a5c0e11de0")


def segment_uuid(build_id: str, task: int) -> str:
    """The uuid of build task ``task``'s segment: unique to the build and task, and the
    same when the task is retried (Lance overwrites a reused uuid's files silently, so
    no two builds may share one)."""
    return str(uuidlib.uuid5(_UUID_NAMESPACE, f"{build_id}/build/{task}"))


# Lance's create_index trains at most rows // 256 partitions for its PQ index types, from a
# sample of at most 2**20 rows: 3,906 at 1M rows, 4,096 from 1,048,576 rows on, whatever
# num_partitions asks (it logs "training N of the M requested IVF partitions"; measured at 1M,
# 2M, 3M and 4M rows, at 128-d and 32-d). IVF_FLAT, IVF_SQ keep all.
LANCE_PQ_ROWS_PER_PARTITION = 256
LANCE_PQ_SAMPLE_ROWS = 2**20


def lance_pq_partitions(num_rows: int) -> int:
    """The partitions Lance's own ``create_index`` trains for a PQ type on ``num_rows`` rows,
    whatever ``num_partitions`` asks beyond it. Pure."""
    return max(1, min(num_rows, LANCE_PQ_SAMPLE_ROWS) // LANCE_PQ_ROWS_PER_PARTITION)

# Most bytes of rows one IVF_FLAT or IVF_SQ task of the precomputed engine holds before it
# writes its segment (its tasks are planned at most this large: IVF_FLAT 2M rows at 128-d,
# 262k at 1024-d; IVF_SQ 1M at 1024-d).
FLAT_TASK_BYTES = 2**30


def held_row_bytes(index_type: str, dimension: int, num_sub_vectors: int | None = None) -> int:
    """Bytes a precomputed build task holds per row until it writes them grouped by
    partition: 8 of row id, 4 of partition, and the stored row (4d for the FLAT types,
    d for the SQ types, one byte a sub-vector for the PQ types). Pure."""
    if "PQ" in index_type:
        return 12 + int(num_sub_vectors or dimension)
    return 12 + dimension * (1 if index_type.endswith("_SQ") else 4)


@dataclass(frozen=True)
class IndexPlan:
    """Everything a build will do; printable, and a JSON/pickle round trip.

    The dataset's ``storage_options`` are not part of the plan (they may hold
    credentials); they travel to the tasks separately.
    """

    uri: str
    column: str
    name: str
    version: int
    dimension: int
    params: IndexParams
    fragments: tuple[FragmentInfo, ...]
    groups: tuple[tuple[int, ...], ...]
    merges: MergePlan
    samples: tuple[int, ...]
    build_id: str
    replace: bool = False
    train: tuple[str, ...] = ()
    seed: int | None = None
    notes: tuple[str, ...] = ()
    engine: str = "lance"
    column_kind: str = "vector"  # storage.COLUMN_KINDS: vector, binary (uint8, hamming) or multivector

    # -- derived -----------------------------------------------------------------
    @property
    def num_rows(self) -> int:
        return sum(f.num_rows for f in self.fragments)

    @property
    def num_tasks(self) -> int:
        return len(self.groups)

    def group_rows(self) -> tuple[int, ...]:
        rows = {f.fragment_id: f.num_rows for f in self.fragments}
        return tuple(sum(rows[i] for i in g) for g in self.groups)

    @property
    def graphs_at_merge(self) -> bool:
        """Whether this build's HNSW graphs are built by the merges that make its final
        segments (:func:`graphs_built_at_merge`): the segments of every slot a merge reads
        are then written as their storage only. Not in an update that merges committed
        segments (Lance merges those)."""
        return (bool(self.merges.stages) and graphs_built_at_merge(self.params, self.engine)
                and self.merges.num_inputs == self.num_tasks)

    def builds_graphs(self, slot: int) -> bool:
        """Whether the segment of ``slot`` (a build task's or a merge's) is written with
        HNSW graphs: every segment of an HNSW index but the storage-only ones a merge reads
        (:attr:`graphs_at_merge`)."""
        return self.params.index_type.startswith("IVF_HNSW") and (
            not self.graphs_at_merge or slot in self.merges.final)

    def graph_seed(self, slot: int) -> tuple:
        """The seed of the graphs of ``slot``'s segment (each partition adds its own): by
        its place among the final segments, so one segment's graphs are the same whether
        one task or a merge built them."""
        seed = self.seed if self.seed is not None else 0
        return (seed, self.merges.final.index(slot) if slot in self.merges.final else slot)

    def segment_uuid(self, task: int) -> str:
        """The uuid of build task ``task``'s segment: unique to this build and task,
        and the same when the task is retried."""
        return segment_uuid(self.build_id, task)

    # -- serialisation -----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["merges"] = self.merges.to_dict()
        d["fragments"] = [[f.fragment_id, f.num_rows] for f in self.fragments]
        d["groups"] = [list(g) for g in self.groups]
        d["samples"] = list(self.samples)
        d["train"] = list(self.train)
        d["notes"] = list(self.notes)
        return d

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "IndexPlan":
        return cls(
            uri=d["uri"],
            column=d["column"],
            name=d["name"],
            version=int(d["version"]),
            dimension=int(d["dimension"]),
            params=IndexParams(**d["params"]),
            fragments=tuple(FragmentInfo(int(a), int(b)) for a, b in d["fragments"]),
            groups=tuple(tuple(int(i) for i in g) for g in d["groups"]),
            merges=MergePlan.from_dict(d["merges"]),
            samples=tuple(int(s) for s in d["samples"]),
            build_id=d["build_id"],
            replace=bool(d.get("replace", False)),
            train=tuple(d.get("train", ())),
            seed=d.get("seed"),
            notes=tuple(d.get("notes", ())),
            engine=d.get("engine", "lance"),
            column_kind=d.get("column_kind", "vector"),
        )

    @classmethod
    def from_json(cls, s: str) -> "IndexPlan":
        return cls.from_dict(json.loads(s))

    def __str__(self) -> str:
        p = self.params
        opts = ", ".join(
            f"{k}={v}"
            for k, v in (p.lance_kwargs().items() if p.is_scalar else asdict(p).items())
            if v is not None and k not in ("index_type", "sample_rate", "max_iters", "pq_sample_rate", "tolerance",
                                           "ivf_training", "coarse_probes", "options")
        ) or "Lance's defaults"
        lines = [
            f"IndexPlan {self.build_id[:8]}: {p.index_type} index {self.name!r} on "
            f"{self.uri} column {self.column!r}" + (f" (dimension {self.dimension})" if self.dimension else "")
            + f" at version {self.version}",
            f"  options: {opts}",
            f"  rows: {self.num_rows} in {len(self.fragments)} fragments",
            f"  train: {', '.join(self.train) or ('nothing (a scalar index has no model)' if p.is_scalar else 'nothing (the whole model given)')}"
            + (f" on {sum(self.samples)} sampled rows" if self.train else ""),
            f"  build: {self.num_tasks} tasks ({self.engine} engine), rows per task {list(self.group_rows())}",
        ]
        if self.merges.stages:
            for i, st in enumerate(self.merges.stages):
                lines.append(f"  merge stage {i + 1}: {len(st)} merges of {[len(s.inputs) for s in st]} segments")
        elif merge_depth(p.index_type, self.engine) == 0 and self.num_tasks > 1:
            lines.append(f"  merge: none ({p.index_type} segments cannot be merged correctly)")
        else:
            lines.append("  merge: none")
        lines.append(f"  commit: {len(self.merges.final)} segment(s)" + (" replacing any index of that name" if self.replace else ""))
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)

    def with_build_id(self, build_id: str) -> "IndexPlan":
        return replace(self, build_id=build_id)


def graphs_built_twice(params: IndexParams) -> str | None:
    """Why an HNSW index whose graphs Lance builds is one segment by default (None: not
    an HNSW type). Pure.

    Lance builds each segment's HNSW graphs, and its merge builds every graph again over
    the merged partitions: segments built in parallel and merged cost more than one
    segment built once (230k x 128, 256 partitions, 2 workers: IVF_HNSW_FLAT 24.4 s
    against 15.4 s, IVF_HNSW_PQ 27.9 against 15.9, Lance 23.0 and 33.4;
    ``docs/benchmarks.md``). Where we build the graphs (:func:`graphs_built_at_merge`)
    the merge builds them, once, and the index is built in tasks as any other.
    """
    if params.index_type.startswith("IVF_HNSW"):
        return ("Lance's merge builds every HNSW graph again, so graphs built per segment would be built "
                "twice (num_tasks= or num_segments= builds in parts)")
    return None


def graphs_built_at_merge(params: IndexParams, engine: str) -> bool:
    """Whether an HNSW index built in several tasks gets its graphs from the merge that
    makes its segment, once: the ``precomputed`` engine's tasks write their segments'
    storage only (the ``auxiliary.idx`` of IVF_FLAT, IVF_SQ or IVF_PQ, the same file as
    the HNSW type's), the merges concatenate them, and the last adds the graphs. Not
    IVF_HNSW_PQ under dot, whose graphs Lance builds from our codes. Pure."""
    return (engine == "precomputed" and params.index_type.startswith("IVF_HNSW")
            and not (params.quantizer == "PQ" and params.metric == "dot"))


def model_parts_to_train(params: IndexParams, *, ivf_centroids: bool, pq_codebook: bool,
                         rabitq_model: bool) -> tuple[str, ...]:
    """The parts of the model the build trains, given which ones the user gave. Pure."""
    train = []
    if not ivf_centroids:
        train.append("ivf_centroids")
    if params.quantizer == "PQ" and not pq_codebook:
        if ivf_centroids:
            raise InvalidInputError(
                "ivf_centroids was given without pq_codebook: the codebook is trained on residuals "
                "against the centroids, so give both or neither."
            )
        train.append("pq_codebook")
    if params.quantizer == "RQ" and not rabitq_model:
        train.append("rabitq_model")
    if params.quantizer == "SQ":  # from the sample, whatever else was given
        train.append("sq_bounds")
    return tuple(train)


def make_plan(
    *,
    uri: str,
    version: int,
    column: str,
    dimension: int,
    fragments: Sequence[FragmentInfo],
    params: IndexParams,
    engine: str,
    one_segment_reason: str | None = None,
    name: str | None = None,
    replace: bool = False,
    train: tuple[str, ...] = (),
    num_tasks: int | None = None,
    rows_per_task: int | None = None,
    parallelism: int = 1,
    num_segments: int = 1,
    merge_fan_in: int = 16,
    seed: int | None = None,
    fragment_groups: Sequence[Sequence[int]] | None = None,
    build_id: str | None = None,
    column_kind: str = "vector",
) -> IndexPlan:
    """Decide a build from the dataset's metadata and the request. Pure.

    ``engine`` is resolved already; ``one_segment_reason`` says why that engine
    cannot build this index correctly over part of the dataset (None: it can),
    and the build is then one segment over every fragment, with the reason in
    the plan's notes.
    """
    fragments = tuple(fragments)
    if sum(f.num_rows for f in fragments) == 0:
        raise InvalidInputError(
            f"the dataset at {uri} has no rows at version {version}; there is nothing to "
            "index. Fix: write data first."
        )
    notes = []
    if params.ivf_training == "hierarchical" and "ivf_centroids" in train:
        notes.append(
            f"IVF trained in two levels ({coarse_size(params.num_partitions)} groups of partitions); each row is "
            "assigned among the partitions of its "
            + (f"{params.coarse_probes} nearest groups" if params.coarse_probes else
               f"nearest groups, as many as reach {TARGET_AGREEMENT:.1%} agreement with exact assignment")
            + " (ivf_training='flat': Lance's flat k-means and exact assignment)"
        )
    total_rows = sum(f.num_rows for f in fragments)
    lance_trains = lance_pq_partitions(total_rows)
    if "PQ" in params.index_type and "ivf_centroids" in train and params.num_partitions > lance_trains:
        notes.append(
            f"all {params.num_partitions} partitions are trained as asked; Lance's own create_index would train "
            f"only {lance_trains} for {params.index_type} on {total_rows} rows "
            f"({LANCE_PQ_ROWS_PER_PARTITION} sample rows per partition, at most {LANCE_PQ_SAMPLE_ROWS} sample rows), "
            "so compare the two at that num_partitions"
        )
    concat_graphs = graphs_built_at_merge(params, engine)
    graphs = None if concat_graphs else graphs_built_twice(params)
    if (not one_segment_reason and graphs and num_segments == 1 and len(fragments) > 1
            and fragment_groups is None and num_tasks is None and rows_per_task is None):
        one_segment_reason = graphs  # a speed rule, not a correctness one: explicit task sizes win
    if one_segment_reason and len(fragments) > 1:
        if fragment_groups is not None:
            check_fragment_groups(fragment_groups, fragments)  # still refuse bad groups
        fragment_groups, num_tasks, rows_per_task, parallelism = None, 1, None, 1
        notes.append(f"built as one segment: {one_segment_reason}")
    if fragment_groups is not None:
        if num_tasks is not None or rows_per_task is not None:
            raise InvalidInputError("give fragment_groups or num_tasks / rows_per_task, not both")
        groups = check_fragment_groups(fragment_groups, fragments)
    else:
        per, min_tasks = rows_per_task, parallelism if rows_per_task is None else 1
        if per is None and num_tasks is None and engine == "precomputed" and (
                params.index_type in ("IVF_FLAT", "IVF_SQ") or concat_graphs):
            # The task holds its rows until it writes them grouped by partition, so its size is
            # bounded; and it is not split further to give every worker a task: the merge then
            # reads and writes every row once more, which costs more than the split saves, and
            # a lone task encodes in its host's idle threads too (docs/benchmarks.md, "IVF_FLAT"
            # and "IVF_SQ as one segment": 1M x 128 IVF_SQ in 2.76-2.78 s as one task, 3.05-3.48
            # s as two and their merge; an HNSW index's graphs go to every worker anyway).
            per = max(65536, min(DEFAULT_ROWS_PER_TASK, FLAT_TASK_BYTES // held_row_bytes(
                params.index_type, dimension, params.num_sub_vectors)))
            min_tasks = 1
        groups = group_fragments(fragments, num_tasks=num_tasks, rows_per_task=per, min_tasks=min_tasks)
    rows = {f.fragment_id: f.num_rows for f in fragments}
    merges = plan_merges(params.index_type, [sum(rows[i] for i in g) for g in groups],
                         num_segments=num_segments, fan_in=merge_fan_in, engine=engine, concatenated=concat_graphs)
    if concat_graphs and merges.stages:
        notes.append("HNSW graphs built once, by the merge that makes each segment: the build tasks write the rows "
                     "only, and the merges concatenate them")
    needs_sample = any(t in train for t in ("ivf_centroids", "pq_codebook", "sq_bounds"))
    samples = allocate_samples(fragments, training_sample_size(params)) if needs_sample else tuple(0 for _ in fragments)
    return IndexPlan(
        uri=uri,
        column=column,
        name=name or f"{column}_idx",
        version=version,
        dimension=dimension,
        params=params,
        fragments=fragments,
        groups=groups,
        merges=merges,
        samples=samples,
        build_id=build_id or str(uuidlib.uuid4()),
        replace=replace,
        train=tuple(train),
        seed=seed,
        notes=tuple(notes),
        engine=engine,
        column_kind=column_kind,
    )
