"""Evaluation: how good an index is. Exact neighbours over a dataset as a Dask tree
reduction (:mod:`.knn`), recall@k and latency of the committed index per search
setting (:mod:`.evaluate`, :mod:`.table`), and the choice of RaBitQ's bits on a
sample (:mod:`.rq_bits`).
"""

from .evaluate import (
    evaluate_index,
    index_on,
    recall_at_k,
    sample_query_rows,
    search,
    timed_search,
)
from .knn import FragmentTopK, check_queries, exact_knn, exact_knn_dataset, merge_topk
from .rq_bits import RQBitsResult, evaluate_rq_bits
from .table import EvaluationRow, EvaluationTable, plot_recall

__all__ = [
    "EvaluationRow", "EvaluationTable", "FragmentTopK", "RQBitsResult", "check_queries", "evaluate_index",
    "evaluate_rq_bits", "exact_knn", "exact_knn_dataset", "index_on", "merge_topk", "plot_recall", "recall_at_k",
    "sample_query_rows", "search", "timed_search",
]
