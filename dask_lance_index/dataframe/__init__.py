"""Dask DataFrames: Lance datasets read and written as dask's own formats are
(:mod:`.io`: ``read_lance``, ``to_lance``), embedding columns (:mod:`.vectors`),
the model applied inside ``map_partitions`` (:mod:`.encode`), and batch search
(:mod:`.search`).
"""

from .encode import add_ivf_partition, add_pq_codes
from .io import (
    CommitWrite,
    ReadFragment,
    WritePartition,
    WriteResult,
    partition_table,
    read_lance,
    to_lance,
)
from .search import SearchPartition, batch_search
from .vectors import (
    check_vector_type,
    is_vector_type,
    vector_array,
    vector_series,
    vectors_to_numpy,
)

__all__ = [
    "CommitWrite", "ReadFragment", "SearchPartition", "WritePartition", "WriteResult", "add_ivf_partition",
    "add_pq_codes", "batch_search", "check_vector_type", "is_vector_type", "partition_table", "read_lance",
    "to_lance", "vector_array", "vector_series", "vectors_to_numpy",
]
