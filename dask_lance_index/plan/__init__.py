"""Plan: what a build will do, decided before anything runs. Pure functions over frozen
dataclasses that round-trip through JSON and pickle.

:mod:`.params` resolves the index's parameters and Lance's defaults,
:mod:`.fragments` groups fragments into build tasks and spreads the training
sample over them, :mod:`.merges` stages the merges where Lance merges
correctly, :mod:`.index_plan` holds it all as one :class:`IndexPlan`, and
:mod:`.scalar` plans scalar and full-text indexes (BTREE, INVERTED, ...) on the
same :class:`IndexPlan`.
(:func:`dask_lance_index.plan_index` reads the dataset's metadata and calls
:func:`make_plan`.)
"""

from .columns import BINARY_INDEX_TYPES, check_column, column_engine
from .fragments import (
    DEFAULT_ROWS_PER_TASK,
    FragmentInfo,
    allocate_samples,
    check_fragment_groups,
    group_fragments,
)
from .index_plan import IndexPlan, graphs_built_at_merge, graphs_built_twice, make_plan, model_parts_to_train, segment_uuid
from .merges import MERGE_DEPTH, MergePlan, MergeStep, merge_depth, plan_merges
from .params import (
    AGREEMENT_ROWS,
    DEFAULT_NUM_BITS,
    DEFAULT_TARGET_PARTITION_SIZE,
    HIERARCHICAL_MIN_PARTITIONS,
    HIERARCHICAL_SAMPLE_RATE,
    INDEX_TYPES,
    IVF_TRAININGS,
    MAX_ITERS,
    MAX_PARTITIONS,
    NUM_BITS,
    PQ_SAMPLE_RATE,
    SAMPLE_RATE,
    TOLERANCE,
    IndexParams,
    default_num_partitions,
    default_num_sub_vectors,
    resolve_params,
    training_sample_size,
)
from .scalar import (
    SCALAR_ALIASES,
    SCALAR_INDEX_TYPES,
    SCALAR_ONE_TASK,
    SCALAR_STAGED,
    check_scalar_column,
    finalize_staged,
    is_scalar,
    make_scalar_plan,
    normalize_scalar_type,
    scalar_params,
)

__all__ = [
    "BINARY_INDEX_TYPES", "check_column", "column_engine",
    "DEFAULT_NUM_BITS", "DEFAULT_ROWS_PER_TASK", "DEFAULT_TARGET_PARTITION_SIZE", "HIERARCHICAL_MIN_PARTITIONS", "HIERARCHICAL_SAMPLE_RATE", "AGREEMENT_ROWS",
    "INDEX_TYPES", "IVF_TRAININGS", "MAX_ITERS",
    "MAX_PARTITIONS", "MERGE_DEPTH", "NUM_BITS", "PQ_SAMPLE_RATE", "SAMPLE_RATE", "TOLERANCE", "FragmentInfo",
    "IndexParams", "IndexPlan", "MergePlan", "MergeStep", "allocate_samples", "check_fragment_groups",
    "default_num_partitions", "default_num_sub_vectors", "graphs_built_at_merge", "graphs_built_twice", "group_fragments", "make_plan",
    "merge_depth", "model_parts_to_train", "plan_merges", "resolve_params", "segment_uuid", "training_sample_size",
    # scalar and full-text indexes
    "SCALAR_ALIASES", "SCALAR_INDEX_TYPES", "SCALAR_ONE_TASK", "SCALAR_STAGED", "check_scalar_column",
    "finalize_staged", "is_scalar", "make_scalar_plan", "normalize_scalar_type", "scalar_params",
]
