"""What a build will do, decided before anything runs.

:func:`plan_index` opens the dataset once, pins its version, reads the vector
column's schema and the fragments' row counts (metadata only), checks the
request, and returns an :class:`IndexPlan`: a frozen, JSON-serialisable object
naming the build tasks (fragment groups), the training samples, the merges and
the segment uuids. The deciding functions below it are pure, so they are tested
without a dataset or a cluster.
"""

from __future__ import annotations

import json
import math
import uuid as uuidlib
from dataclasses import asdict, dataclass, replace
from typing import Any, Sequence

from .errors import IndexExistsError, InvalidInputError
from .merge import MERGE_DEPTH, MergePlan, plan_merges
from .rabitq import RQ_NUM_BITS

__all__ = [
    "INDEX_TYPES",
    "METRICS",
    "IndexParams",
    "FragmentInfo",
    "IndexPlan",
    "resolve_params",
    "group_fragments",
    "check_fragment_groups",
    "allocate_samples",
    "default_num_partitions",
    "default_num_sub_vectors",
    "plan_index",
]

INDEX_TYPES = ("IVF_FLAT", "IVF_PQ", "IVF_SQ", "IVF_RQ", "IVF_HNSW_FLAT", "IVF_HNSW_PQ", "IVF_HNSW_SQ")
METRICS = {"l2": "l2", "euclidean": "l2", "cosine": "cosine", "dot": "dot"}

# Lance's defaults (pylance 14.0.2): rows per IVF partition, training rows per
# centroid, and k-means iterations.
DEFAULT_TARGET_PARTITION_SIZE = 8192
MAX_PARTITIONS = 4096
SAMPLE_RATE = 256
MAX_ITERS = 50
# Our training choices (benchmarks/bench_build.py measures them against Lance's
# recall): rows per PQ code word (Lance's 256: with 64, GloVe's recall@10 without
# refine was 0.010-0.013 below Lance's at nprobes 10/20/50, 1,000 queries), and
# k-means' relative-inertia stopping rule (per incremental pass, see kmeans.py).
PQ_SAMPLE_RATE = 256
TOLERANCE = 5e-3
# Bits per code that Lance accepts, per quantizer.
NUM_BITS = {"PQ": (4, 8), "SQ": (8,), "RQ": RQ_NUM_BITS}
DEFAULT_NUM_BITS = {"PQ": 8, "SQ": 8, "RQ": 5}
# Default rows per build task: above it a build splits into more tasks than workers.
DEFAULT_ROWS_PER_TASK = 2_000_000
_UUID_NAMESPACE = uuidlib.UUID("6f1c2a4e-3d7b-4c1e-9a8f-d1a5c0e11de0")


def _quantizer(index_type: str) -> str | None:
    for q in ("PQ", "SQ", "RQ"):
        if index_type.endswith("_" + q):
            return q
    return None


@dataclass(frozen=True)
class IndexParams:
    """The index as Lance will build it, every default resolved."""

    index_type: str
    metric: str
    num_partitions: int
    num_sub_vectors: int | None = None
    num_bits: int | None = None
    m: int | None = None
    ef_construction: int | None = None
    sample_rate: int = SAMPLE_RATE
    max_iters: int = MAX_ITERS
    pq_sample_rate: int = PQ_SAMPLE_RATE
    tolerance: float = TOLERANCE

    @property
    def quantizer(self) -> str | None:
        return _quantizer(self.index_type)

    @property
    def is_hnsw(self) -> bool:
        return "HNSW" in self.index_type

    def lance_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``create_index_uncommitted`` (besides the artifacts)."""
        kw: dict[str, Any] = {"metric": self.metric, "num_partitions": self.num_partitions}
        for key in ("num_sub_vectors", "num_bits", "m", "ef_construction"):
            if getattr(self, key) is not None:
                kw[key] = getattr(self, key)
        return kw


@dataclass(frozen=True)
class FragmentInfo:
    fragment_id: int
    num_rows: int


def default_num_partitions(num_rows: int, target_partition_size: int | None = None) -> int:
    """Lance's rule: ``num_rows // target_partition_size`` clamped to [1, 4096]."""
    tps = DEFAULT_TARGET_PARTITION_SIZE if target_partition_size is None else target_partition_size
    if not isinstance(tps, int) or tps < 1:
        raise InvalidInputError(f"target_partition_size must be positive, got {tps}")
    return min(max(1, num_rows // tps), MAX_PARTITIONS)


def default_num_sub_vectors(dimension: int) -> int:
    """Sub-vectors of 16 dimensions when they divide evenly, else of 8, else one per 4, else 1.

    Follows the common Lance/LanceDB choice (dimension / 16); falls back to the
    largest of dimension / 8, / 4, / 2 that divides the dimension, and to 1.
    """
    for sub_dim in (16, 8, 4, 2):
        if dimension % sub_dim == 0:
            return dimension // sub_dim
    return 1


def resolve_params(
    index_type: str,
    *,
    dimension: int,
    num_rows: int,
    metric: str = "l2",
    num_partitions: int | None = None,
    target_partition_size: int | None = None,
    num_sub_vectors: int | None = None,
    num_bits: int | None = None,
    m: int | None = None,
    ef_construction: int | None = None,
    sample_rate: int = SAMPLE_RATE,
    max_iters: int = MAX_ITERS,
    pq_sample_rate: int = PQ_SAMPLE_RATE,
    tolerance: float = TOLERANCE,
) -> IndexParams:
    """Validate the index options and fill in Lance's defaults. Pure."""
    if not isinstance(index_type, str) or index_type.upper() not in INDEX_TYPES:
        raise InvalidInputError(
            f"index_type {index_type!r} is not supported; choose one of {', '.join(INDEX_TYPES)}."
        )
    index_type = index_type.upper()
    if not isinstance(metric, str) or metric.lower() not in METRICS:
        raise InvalidInputError(
            f"metric {metric!r} is not supported; choose 'l2', 'cosine' or 'dot'."
        )
    metric = METRICS[metric.lower()]
    q = _quantizer(index_type)

    if num_partitions is None:
        num_partitions = default_num_partitions(num_rows, target_partition_size)
    if not isinstance(num_partitions, int) or isinstance(num_partitions, bool) or num_partitions < 1:
        raise InvalidInputError(f"num_partitions must be a positive int, got {num_partitions!r}")
    if num_partitions > num_rows:
        raise InvalidInputError(
            f"num_partitions={num_partitions} exceeds the {num_rows} rows to index; k-means "
            f"needs at least one row per partition. Fix: num_partitions <= {num_rows}."
        )

    if q == "PQ":
        if num_sub_vectors is None:
            num_sub_vectors = default_num_sub_vectors(dimension)
        if not isinstance(num_sub_vectors, int) or num_sub_vectors < 1:
            raise InvalidInputError(f"num_sub_vectors must be a positive int, got {num_sub_vectors!r}")
        if dimension % num_sub_vectors:
            divisors = [k for k in range(1, dimension + 1) if dimension % k == 0]
            raise InvalidInputError(
                f"num_sub_vectors={num_sub_vectors} does not divide the dimension {dimension}; "
                f"PQ splits each vector into equal sub-vectors. Fix: pick one of {divisors}."
            )
    elif num_sub_vectors is not None:
        raise InvalidInputError(f"num_sub_vectors applies to PQ index types only, not {index_type}.")

    if q is None:
        if num_bits is not None:
            raise InvalidInputError(f"num_bits applies to quantized index types only, not {index_type}.")
    else:
        if num_bits is None:
            num_bits = DEFAULT_NUM_BITS[q]
        if num_bits not in NUM_BITS[q]:
            raise InvalidInputError(
                f"num_bits={num_bits!r} is out of range for {q}; Lance takes {list(NUM_BITS[q])}."
            )
    if q == "RQ" and dimension % 8:
        raise InvalidInputError(
            f"IVF_RQ needs a dimension that is a multiple of 8; the column has {dimension}. "
            "Fix: use IVF_PQ or IVF_SQ, or pad the vectors to a multiple of 8."
        )
    if "HNSW" not in index_type and (m is not None or ef_construction is not None):
        raise InvalidInputError(f"m and ef_construction apply to IVF_HNSW_* types only, not {index_type}.")
    for name, v in (("m", m), ("ef_construction", ef_construction)):
        if v is not None and (not isinstance(v, int) or v < 1):
            raise InvalidInputError(f"{name} must be a positive int, got {v!r}")
    if sample_rate < 1 or max_iters < 1 or pq_sample_rate < 1:
        raise InvalidInputError("sample_rate, pq_sample_rate and max_iters must be positive")
    if not 0 <= tolerance < 1:
        raise InvalidInputError(f"tolerance must be in [0, 1), got {tolerance}")
    return IndexParams(
        index_type=index_type,
        metric=metric,
        num_partitions=num_partitions,
        num_sub_vectors=num_sub_vectors,
        num_bits=num_bits,
        m=m,
        ef_construction=ef_construction,
        sample_rate=sample_rate,
        max_iters=max_iters,
        pq_sample_rate=pq_sample_rate,
        tolerance=tolerance,
    )


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
    rows = [f.num_rows for f in fragments]
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


ENGINES = ("auto", "lance", "precomputed", "partitions", "artifact")


def writes_codes(params: IndexParams) -> bool:
    """Whether our workers can compute every code of this index: 8-bit PQ types
    (IVF_PQ segments written in Lance's layout, :mod:`.segment_write`; IVF_HNSW_PQ
    codes handed to Lance as precomputed shuffle buffers) and IVF_RQ under l2 or
    cosine (segments written in Lance's layout; Lance's dot-metric RaBitQ stores
    other factors). Pure."""
    if params.quantizer == "PQ":
        return params.num_bits == 8
    return params.index_type == "IVF_RQ" and params.metric in ("l2", "cosine")


def resolve_engine(engine: str, params: IndexParams) -> str:
    """Who assigns and encodes the rows. Pure.

    ``"precomputed"``: our workers assign and encode with NumPy BLAS and Lance
    only writes (:func:`writes_codes`: 8-bit PQ types, and IVF_RQ under l2 and
    cosine, whose segment files we write in Lance's layout). ``"partitions"``:
    our workers assign IVF partitions with NumPy BLAS and Lance encodes from
    that map (any type; it spares Lance its own assignment: IVF_RQ's 1M-row
    build stage took 12.8 s instead of 14.3 s). ``"artifact"`` (8-bit PQ): as
    ``"precomputed"``, but through a partition artifact
    (:mod:`.partition_artifacts`): encode tasks, a shuffle by bucket, then
    finalize tasks. ``"lance"``: Lance assigns and encodes. ``"auto"``:
    ``"precomputed"`` where :func:`writes_codes`, ``"partitions"`` otherwise
    (benchmarks/bench_build.py measures them).
    """
    if engine not in ENGINES:
        raise InvalidInputError(f"engine {engine!r} is not one of {ENGINES}")
    pq8 = params.quantizer == "PQ" and params.num_bits == 8
    if engine == "auto":
        return "precomputed" if writes_codes(params) else "partitions"
    if engine == "artifact" and not pq8:
        raise InvalidInputError(
            f"engine='artifact' needs an 8-bit PQ index type (IVF_PQ or IVF_HNSW_PQ), not {params.index_type}. "
            "Fix: engine='auto', 'partitions' or 'lance'."
        )
    if engine == "precomputed" and not writes_codes(params):
        raise InvalidInputError(
            f"engine='precomputed' needs an 8-bit PQ index type (IVF_PQ or IVF_HNSW_PQ) or IVF_RQ under l2 "
            f"or cosine; Lance encodes {params.index_type} ({params.metric}) itself. "
            "Fix: engine='auto', 'partitions' or 'lance'."
        )
    return engine


def training_sample_size(params: IndexParams) -> int:
    """Rows to train on: ``sample_rate`` rows per IVF centroid (as Lance), and
    ``pq_sample_rate`` rows per PQ code word."""
    n = params.num_partitions * params.sample_rate
    if params.quantizer == "PQ":
        n = max(n, (2 ** (params.num_bits or 8)) * params.pq_sample_rate)
    return n


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

    def segment_uuid(self, task: int) -> str:
        """The uuid of build task ``task``'s segment: unique to this build and task,
        and the same when the task is retried."""
        return str(uuidlib.uuid5(_UUID_NAMESPACE, f"{self.build_id}/build/{task}"))

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
        )

    @classmethod
    def from_json(cls, s: str) -> "IndexPlan":
        return cls.from_dict(json.loads(s))

    def __str__(self) -> str:
        p = self.params
        opts = ", ".join(
            f"{k}={v}"
            for k, v in asdict(p).items()
            if v is not None and k not in ("index_type", "sample_rate", "max_iters", "pq_sample_rate", "tolerance")
        )
        lines = [
            f"IndexPlan {self.build_id[:8]}: {p.index_type} index {self.name!r} on "
            f"{self.uri} column {self.column!r} (dimension {self.dimension}) at version {self.version}",
            f"  options: {opts}",
            f"  rows: {self.num_rows} in {len(self.fragments)} fragments",
            f"  train: {', '.join(self.train) or 'nothing (all artifacts given)'}"
            + (f" on {sum(self.samples)} sampled rows" if self.train else ""),
            f"  build: {self.num_tasks} tasks ({self.engine} engine), rows per task {list(self.group_rows())}",
        ]
        if self.merges.stages:
            for i, st in enumerate(self.merges.stages):
                lines.append(f"  merge stage {i + 1}: {len(st)} merges of {[len(s.inputs) for s in st]} segments")
        elif MERGE_DEPTH[p.index_type] == 0 and self.num_tasks > 1:
            lines.append(f"  merge: none ({p.index_type} segments cannot be merged correctly)")
        else:
            lines.append("  merge: none")
        lines.append(f"  commit: {len(self.merges.final)} segment(s)" + (" replacing the existing index" if self.replace else ""))
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)

    def with_build_id(self, build_id: str) -> "IndexPlan":
        return replace(self, build_id=build_id)


def plan_index(
    uri,
    column: str,
    index_type: str,
    name: str | None = None,
    metric: str = "l2",
    replace: bool = False,
    num_partitions: int | None = None,
    target_partition_size: int | None = None,
    num_sub_vectors: int | None = None,
    num_bits: int | None = None,
    *,
    m: int | None = None,
    ef_construction: int | None = None,
    ivf_centroids=None,
    pq_codebook=None,
    rabitq_model: str | None = None,
    num_tasks: int | None = None,
    rows_per_task: int | None = None,
    parallelism: int = 1,
    num_segments: int = 1,
    merge_fan_in: int = 16,
    sample_rate: int = SAMPLE_RATE,
    max_iters: int = MAX_ITERS,
    pq_sample_rate: int = PQ_SAMPLE_RATE,
    tolerance: float = TOLERANCE,
    seed: int | None = None,
    engine: str = "auto",
    version: int | None = None,
    storage_options: dict | None = None,
    build_id: str | None = None,
    fragment_groups: Sequence[Sequence[int]] | None = None,
) -> IndexPlan:
    """Plan an index build without running anything.

    Parameters follow :func:`dask_lance_index.create_index`; see there. Raises
    a :class:`~dask_lance_index.errors.InvalidInputError` subclass on bad input.
    """
    from ._lance import column_info, fragment_rows, index_names, open_dataset

    try:
        ds = open_dataset(uri, version, storage_options)
    except (ValueError, OSError) as exc:
        raise InvalidInputError(f"cannot open a Lance dataset at {uri!r}: {exc}") from None
    info = column_info(ds, column)
    name = name or f"{column}_idx"
    if name in index_names(ds) and not replace:
        raise IndexExistsError(
            f"the dataset already has an index named {name!r}. Fix: pass replace=True to "
            "replace it, or choose another name."
        )
    fragments = tuple(FragmentInfo(i, n) for i, n in fragment_rows(ds))
    total = sum(f.num_rows for f in fragments)
    if total == 0:
        raise InvalidInputError(
            f"the dataset at {ds.uri} has no rows at version {ds.version}; there is nothing to "
            "index. Fix: write data first."
        )
    if ivf_centroids is not None and num_partitions is None:
        num_partitions = len(ivf_centroids)
    params = resolve_params(
        index_type,
        dimension=info.dimension,
        num_rows=total,
        metric=metric,
        num_partitions=num_partitions,
        target_partition_size=target_partition_size,
        num_sub_vectors=num_sub_vectors,
        num_bits=num_bits,
        m=m,
        ef_construction=ef_construction,
        sample_rate=sample_rate,
        max_iters=max_iters,
        pq_sample_rate=pq_sample_rate,
        tolerance=tolerance,
    )
    train = []
    if ivf_centroids is None:
        train.append("ivf_centroids")
    if params.quantizer == "PQ" and pq_codebook is None:
        if ivf_centroids is not None:
            raise InvalidInputError(
                "ivf_centroids was given without pq_codebook: the codebook is trained on residuals "
                "against the centroids, so give both or neither."
            )
        train.append("pq_codebook")
    if params.quantizer == "RQ" and rabitq_model is None:
        train.append("rabitq_model")
    engine = resolve_engine(engine, params)
    notes = []
    if engine in ("lance", "partitions") and params.metric == "dot" and params.quantizer == "PQ" and len(fragments) > 1:
        # pylance 14.0.2 encodes PQ codes of a segment that covers part of the
        # dataset by largest inner product instead of nearest code word when the
        # metric is dot: recall 0.06 instead of 0.25, without an error. One
        # segment over every fragment is encoded correctly.
        num_tasks, rows_per_task, parallelism = 1, None, 1
        if fragment_groups is not None:
            check_fragment_groups(fragment_groups, fragments)  # still refuse bad groups
            fragment_groups = None
        notes.append(
            "dot-metric PQ is built as one segment: Lance mis-encodes PQ segments that cover "
            "part of the dataset under the dot metric (silently low recall)"
        )
    if fragment_groups is not None:
        if num_tasks is not None or rows_per_task is not None:
            raise InvalidInputError("give fragment_groups or num_tasks / rows_per_task, not both")
        groups = check_fragment_groups(fragment_groups, fragments)
    else:
        groups = group_fragments(
            fragments, num_tasks=num_tasks, rows_per_task=rows_per_task,
            min_tasks=parallelism if rows_per_task is None else 1,
        )
    rows = {f.fragment_id: f.num_rows for f in fragments}
    group_rows = [sum(rows[i] for i in g) for g in groups]
    merges = plan_merges(params.index_type, group_rows, num_segments=num_segments, fan_in=merge_fan_in)
    needs_sample = any(t in train for t in ("ivf_centroids", "pq_codebook"))
    samples = allocate_samples(fragments, training_sample_size(params)) if needs_sample else tuple(0 for _ in fragments)
    return IndexPlan(
        uri=ds.uri,
        column=column,
        name=name,
        version=ds.version,
        dimension=info.dimension,
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
    )
