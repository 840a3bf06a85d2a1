"""Synthetic embeddings with real data's low intrinsic dimension, and writing them to Lance.

Isotropic blobs in 128 dimensions make every index look useless (every point of
a cluster is about as far as every other: Lance's own index scored recall@10 of
0.06 on them), so the generator makes what real embeddings look like: Gaussian
clusters of varied widths in a latent space of about 12 dimensions, projected
linearly to the target dimension, plus a little isotropic noise. On this data
Lance's IVF_PQ index reaches recall@10 of 0.5-0.6 at nprobes 20 without refine
(``docs/benchmarks.md``).
"""

from __future__ import annotations

from typing import Iterator

import lance
import numpy as np
import pyarrow as pa

__all__ = ["make_vectors", "vector_chunks", "vector_table", "write_vectors"]


def make_vectors(
    num_rows: int,
    dimension: int = 128,
    *,
    num_clusters: int = 1000,
    latent_dim: int = 12,
    noise: float = 0.05,
    seed: int = 0,
    chunk_rows: int = 262144,
) -> np.ndarray:
    """``num_rows`` float32 vectors of ``dimension``, clustered in a latent subspace."""
    out = np.empty((num_rows, dimension), dtype=np.float32)
    start = 0
    for chunk in vector_chunks(num_rows, dimension, num_clusters=num_clusters, latent_dim=latent_dim, noise=noise,
                               seed=seed, chunk_rows=chunk_rows):
        out[start : start + len(chunk)] = chunk
        start += len(chunk)
    return out


def vector_chunks(
    num_rows: int,
    dimension: int = 128,
    *,
    num_clusters: int = 1000,
    latent_dim: int = 12,
    noise: float = 0.05,
    seed: int = 0,
    chunk_rows: int = 262144,
) -> Iterator[np.ndarray]:
    """:func:`make_vectors`'s rows, ``chunk_rows`` at a time (the same rows for the same
    arguments): data sets larger than memory."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((num_clusters, latent_dim)).astype(np.float32) * 3.0
    widths = rng.uniform(0.3, 1.5, num_clusters).astype(np.float32)
    weights = rng.dirichlet(np.full(num_clusters, 2.0))
    proj = (rng.standard_normal((latent_dim, dimension)) / np.sqrt(latent_dim)).astype(np.float32)
    for start in range(0, num_rows, chunk_rows):
        n = min(chunk_rows, num_rows - start)
        labels = rng.choice(num_clusters, size=n, p=weights)
        z = centers[labels] + rng.standard_normal((n, latent_dim)).astype(np.float32) * widths[labels, None]
        yield z @ proj + noise * rng.standard_normal((n, dimension)).astype(np.float32)


def vector_table(vectors: np.ndarray, *, column: str = "vector", start_id: int = 0) -> pa.Table:
    """An Arrow table with an ``id`` column and a fixed-size-list vector column."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    values = pa.array(vectors.reshape(-1))
    return pa.table(
        {
            "id": pa.array(np.arange(start_id, start_id + n, dtype=np.int64)),
            column: pa.FixedSizeListArray.from_arrays(values, d),
        }
    )


def write_vectors(
    uri: str,
    vectors: np.ndarray,
    *,
    column: str = "vector",
    max_rows_per_file: int = 1024 * 1024,
    mode: str = "create",
    start_id: int = 0,
    storage_options: dict | None = None,
):
    """Write vectors to a Lance dataset, one fragment per ``max_rows_per_file`` rows."""
    return lance.write_dataset(
        vector_table(vectors, column=column, start_id=start_id),
        uri,
        mode=mode,
        max_rows_per_file=max_rows_per_file,
        max_rows_per_group=min(max_rows_per_file, 8192),
        storage_options=storage_options,
    )
