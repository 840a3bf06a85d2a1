"""Drift of new rows from a trained IVF model.

The statistic: mean squared distance of rows to their nearest trained
centroid (:func:`dask_lance_index.model.assign`), in the model's space (unit vectors for
cosine and dot), for a sample of the new rows over the same for a sample of
the rows already indexed. Well above 1 means the new data sits where the
model has few centroids: the index still works but its partitions are
unbalanced and recall drops, so retraining is advised.
"""

from __future__ import annotations

import numpy as np

from ..model import assign, normalize_rows
from ..model.hamming import hamming_assign

__all__ = ["DEFAULT_DRIFT_THRESHOLD", "measure_drift"]

DEFAULT_DRIFT_THRESHOLD = 1.5


def _drift_sums(x: np.ndarray, centroids: np.ndarray, metric: str) -> tuple[float, int]:
    """(sum of squared distances to the nearest centroid, rows) in the IVF model's space."""
    if not len(x):
        return 0.0, 0
    if metric == "hamming":  # binary rows: hamming distance to the nearest k-modes centroid
        _, d = hamming_assign(x, centroids)
        return float(d.astype(np.float64).sum()), int(len(d))
    if metric in ("cosine", "dot"):
        # cosine: Lance's IVF lives on unit vectors. dot: the centroids are unit
        # (spherical k-means), so compare directions.
        x = normalize_rows(x)
    c = normalize_rows(centroids) if metric == "dot" else centroids
    _, d = assign(x, c, "l2")
    return float(np.maximum(d, 0).astype(np.float64).sum()), int(len(d))


def measure_drift(new_samples: list, old_samples: list, model, metric: str, threshold: float) -> dict:
    """Drift task: mean squared distance of new rows to their nearest trained
    centroid, over the same for old rows. ``samples`` are sampling tasks' outputs
    (:class:`dask_lance_index.train.SampleFragment`)."""
    c = model.ivf_centroids
    sn, nn = _drift_sums(np.concatenate([s[0] for s in new_samples]) if new_samples else np.empty((0, c.shape[1]), np.float32), c, metric)
    so, no = _drift_sums(np.concatenate([s[0] for s in old_samples]) if old_samples else np.empty((0, c.shape[1]), np.float32), c, metric)
    new_mean = sn / nn if nn else None
    old_mean = so / no if no else None
    ratio = (new_mean / old_mean) if (new_mean is not None and old_mean) else None
    return {
        "new_mean_sq_distance": new_mean,
        "old_mean_sq_distance": old_mean,
        "ratio": ratio,
        "threshold": threshold,
        "new_rows": nn,
        "old_rows": no,
        "retrain_advised": bool(ratio is not None and ratio > threshold),
    }
