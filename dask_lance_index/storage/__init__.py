"""Storage: the I/O edge. Opening datasets, reading vector columns, files on any store,
and Lance's index segments on disk (where they live, their file layout, their removal).

Nothing above this package touches a file or a Lance dataset except through it
(or through Lance's own build, merge and commit calls in the pipeline's tasks).
"""

from .datasets import (
    COLUMN_KINDS,
    ColumnInfo,
    column_info,
    field_of,
    field_paths,
    resolve_field,
    join_field_path,
    split_field_path,
    field_type,
    has_values,
    fragment_rows,
    index_names,
    open_dataset,
    open_or_fail,
)
from .files import (
    StorageOptions,
    Store,
    filesystem,
    hide_secrets,
    is_local,
    join,
    options_apply,
)
from .scan import (
    SCAN_BATCH_ROWS,
    RowCounts,
    VectorBatch,
    drawn_vectors,
    iter_vectors,
    take_vectors,
    to_float32_matrix,
    valid_rows,
)
from .scratch import (
    partition_map_batch,
    partition_map_schema,
    scratch_dataset,
    shuffle_buffer_batch,
    shuffle_buffer_inputs,
    shuffle_buffer_schema,
)
from .lance_file import PlainColumn, PlainFileWriter, plain_columns
from .hnsw_segment import STORAGE_TYPES, StoredRows, add_hnsw_graphs, decode_stored, write_hnsw_segment
from .partition_runs import PartitionRuns
from .segment_concat import CONCAT_ROWS, CONCAT_TYPES, concat_segments
from .segment_files import (
    RQSegment,
    read_rq_segment,
    segment_index,
    write_flat_segment,
    write_pq_segment,
    write_sq_segment,
    write_rq_segment,
)
from .segments import (
    SegmentResult,
    as_lance_index,
    committed_index,
    index_dir,
    index_dir_times,
    index_from_dict,
    index_to_dict,
    referenced_segments,
    remove_index_dir,
    segment_exists,
)

__all__ = [
    "COLUMN_KINDS", "field_of", "field_paths", "resolve_field", "join_field_path", "split_field_path",
    "CONCAT_ROWS", "CONCAT_TYPES", "ColumnInfo", "PartitionRuns", "PlainColumn", "PlainFileWriter", "RQSegment", "SCAN_BATCH_ROWS", "RowCounts", "SegmentResult", "STORAGE_TYPES", "StorageOptions", "Store",
    "StoredRows", "VectorBatch", "add_hnsw_graphs", "as_lance_index", "decode_stored", "column_info", "drawn_vectors", "committed_index", "concat_segments", "field_type", "filesystem", "fragment_rows",
    "has_values", "hide_secrets",
    "index_dir", "index_dir_times", "index_from_dict", "index_names", "index_to_dict", "is_local",
    "iter_vectors", "join", "open_dataset", "open_or_fail", "options_apply", "partition_map_batch",
    "partition_map_schema", "plain_columns", "read_rq_segment", "scratch_dataset", "shuffle_buffer_batch", "shuffle_buffer_inputs",
    "shuffle_buffer_schema",
    "referenced_segments", "remove_index_dir", "segment_exists", "segment_index", "take_vectors",
    "to_float32_matrix", "valid_rows", "write_flat_segment", "write_hnsw_segment", "write_pq_segment", "write_rq_segment", "write_sq_segment",
]
