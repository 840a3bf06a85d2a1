"""Train: the build's model. Per-fragment sampling tasks on the workers
(:mod:`.sample`), then one training task (:mod:`.train`) that runs the model's
k-means (:mod:`dask_lance_index.model`) and spreads what it can over the cluster.
A two-level IVF's training task draws the sample itself and leaves each piece on
the worker that drew it (:mod:`.cluster_rows`).
"""

from .cluster_rows import BUCKET_BYTES, ClusterRows, draw_sample

from .sample import (
    SAMPLE_RUN,
    SampleFragment,
    kept_samples,
    sample_fragment,
    sample_offsets,
    seed_for,
)
from .train import (
    TrainModel,
    cluster_partials,
    map_groups,
    train_ivf_on_cluster,
    train_model,
    train_shards,
    two_level_sample,
)

__all__ = [
    "BUCKET_BYTES", "ClusterRows", "SAMPLE_RUN", "SampleFragment", "TrainModel", "cluster_partials", "kept_samples", "map_groups", "sample_fragment",
    "sample_offsets", "seed_for", "train_ivf_on_cluster", "train_model", "train_shards",
    "two_level_sample", "draw_sample",
]
