"""k-means as training uses it: GEMM assignment, batched PQ codebooks, shard partials merged as a tree."""

import numpy as np
import pytest

from dask_lance_index.datagen import make_vectors
from dask_lance_index.model import train_ivf, train_pq
from dask_lance_index.model.kmeans import (
    assign,
    assign_batched,
    combine_partials,
    kmeans,
    kmeans_batched,
    lloyd_partial,
    lloyd_update,
    smallest_first,
)
from dask_lance_index.train import train_ivf_on_cluster, train_shards


@pytest.fixture(scope="module")
def x():
    return make_vectors(6000, 24, num_clusters=60, seed=3)


def _brute_labels(x, c):
    d = ((x[:, None, :].astype(np.float64) - c[None, :, :]) ** 2).sum(-1)
    return d.argmin(1), d.min(1)


def test_assign_is_the_nearest_centroid(x):
    c = x[np.random.default_rng(0).choice(len(x), 50, replace=False)]
    labels, dists = assign(x, c)
    want, wd = _brute_labels(x, c)
    # float32 GEMM vs float64: only near-ties may differ, and then by a hair
    agree = labels == want
    assert agree.mean() > 0.999
    np.testing.assert_allclose(wd[~agree], ((x[~agree] - c[labels[~agree]]) ** 2).sum(1), rtol=1e-3)
    np.testing.assert_allclose(dists, wd, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("cols,top,wide", [(4000, 40, None), (1300, 40, None), (900, 48, None), (200, 40, None),
                                           (50, 1, None), (40, 40, None), (4000, 150, 16), (2400, 150, 16),
                                           (8000, 150, 16), (20000, 150, 16)])
@pytest.mark.parametrize("shuffled", [False, True])
def test_smallest_first_is_the_sorted_smallest_on_every_path(cols, top, wide, shuffled):
    """Wide rows select through a sampled threshold (from ``wide`` columns a wanted value,
    32 by default, 16 for the dot graphs' 150 candidates; sparser on long rows: 8,000 and
    20,000 columns; the leading columns where they are ``shuffled``); rows it lets too few
    or too many values through fall back to argpartition. Every row must still be exact,
    of rows in one block or not."""
    rng = np.random.default_rng(cols + top)
    values = rng.standard_normal((300, cols)).astype(np.float32)
    values[:, : cols // 3] = np.round(values[:, : cols // 3], 1)  # ties
    values[0, :] = 1.0  # one value everywhere: every column through its threshold
    values[1, ::2] = np.inf  # half the row never chosen
    values[2, :] = np.linspace(0, 1, cols)[::-1]  # the smallest at the end of the row
    values[3, :] = 1e6  # the sampled columns far smaller than the rest: too few through
    values[3, ::8] = np.arange(len(values[3, ::8]))
    got = smallest_first(values, top, wide=wide, shuffled=shuffled)
    want = np.argsort(values, axis=1, kind="stable")[:, :top]
    np.testing.assert_array_equal(smallest_first(np.asfortranarray(values), top, wide=wide, shuffled=shuffled), got)
    assert got.shape == (300, top)
    # the same values in the same order; the same columns wherever there is no tie at the cut
    assert np.array_equal(np.take_along_axis(values, got, 1), np.take_along_axis(values, want, 1))
    cut = np.take_along_axis(values, want[:, -1:], 1)
    untied = (values == cut).sum(1) == 1
    assert np.array_equal(got[untied], want[untied])
    assert all(len(set(row)) == top for row in got.tolist())
    # every row one value: every column through every threshold, the rows selected whole
    tied = np.zeros((20, cols), np.float32)
    tied[:, -1] = -1.0
    got = smallest_first(tied, top, wide=wide, shuffled=shuffled)
    assert (got[:, 0] == cols - 1).all() and all(len(set(row)) == top for row in got.tolist())


def test_assign_batched_equals_assign_per_member(x):
    b, s = 4, 6
    xb = np.ascontiguousarray(x.reshape(len(x), b, s).transpose(1, 0, 2))
    cb = xb[:, :32].copy()
    labels, dists = assign_batched(xb, cb)
    for j in range(b):
        lj, dj = assign(xb[j], cb[j])
        assert (labels[j] == lj).mean() > 0.999
        np.testing.assert_allclose(dists[j], dj, rtol=1e-3, atol=1e-4)


def test_batched_codebooks_are_as_good_as_one_kmeans_per_subspace(x):
    b, s = 4, 6
    xb = np.ascontiguousarray(x.reshape(len(x), b, s).transpose(1, 0, 2))
    book, inertia = kmeans_batched(xb, 64, max_iters=30, tol=1e-4, seed=1)
    assert book.shape == (4, 64, 6) and book.dtype == np.float32
    one_by_one = [kmeans(np.ascontiguousarray(xb[j]), 64, max_iters=30, tol=1e-4, seed=j)[1] for j in range(b)]
    # same objective, different seeds: within a few percent per sub-space
    np.testing.assert_allclose(inertia, one_by_one, rtol=0.05)
    # reported inertia is the real one of the returned codebook
    for j in range(b):
        _, d = assign(xb[j], book[j])
        assert d.sum() == pytest.approx(inertia[j], rel=0.05)  # last update moved centroids a little
    # and train_pq lays it out as Lance does: [sub-vector][code][sub-dim]
    cb = train_pq(x, 4, 6, max_iters=30, seed=1)
    assert cb.shape == (4, 64, 6)
    codes = np.stack([assign(np.ascontiguousarray(x[:, j * 6 : (j + 1) * 6]), cb[j])[0] for j in range(4)], 1)
    recon = np.concatenate([cb[j][codes[:, j]] for j in range(4)], 1)
    assert ((x - recon) ** 2).sum(1).mean() < 0.5 * ((x - x.mean(0)) ** 2).sum(1).mean()


def test_partials_merged_in_any_order_give_the_same_step(x):
    c = x[:40].copy()
    whole = lloyd_partial(x, c)
    shards = [lloyd_partial(p, c) for p in np.array_split(x, 5)]
    tree = combine_partials(combine_partials(shards[0], shards[1]), combine_partials(shards[2], combine_partials(shards[3], shards[4])))
    np.testing.assert_allclose(tree.sums, whole.sums, rtol=1e-9, atol=1e-6)
    np.testing.assert_array_equal(tree.counts, whole.counts)
    assert tree.inertia == pytest.approx(whole.inertia, rel=1e-9)
    np.testing.assert_allclose(lloyd_update(tree), lloyd_update(whole), rtol=1e-6, atol=1e-6)
    # the kept worst-served rows are the globally worst ones
    assert np.sort(tree.worst_dists)[0] == pytest.approx(np.sort(whole.worst_dists)[0])


def test_empty_clusters_are_reseeded_at_the_worst_rows():
    x = np.concatenate([np.zeros((100, 2)), np.ones((100, 2)) * 10, [[50.0, 50.0]]]).astype(np.float32)
    c = np.array([[0, 0], [10, 10], [-1000, -1000]], np.float32)  # the third gets nothing
    new = lloyd_update(lloyd_partial(x, c))
    np.testing.assert_allclose(new[2], [50.0, 50.0])


def test_train_shards_policy():
    assert train_shards(65536, 256, 128, 8) == 1  # small: one task
    assert train_shards(1 << 20, 4096, 128, 8) == 8  # large: one shard per worker
    assert train_shards(1 << 20, 4096, 128, 1) == 1  # nobody to share with


def test_ivf_training_spread_over_the_cluster_matches_one_task(cluster_client, x):
    # The sharded path takes full Lloyd steps; compare it with full Lloyd in one
    # task (the local default is incremental, see test_incremental_*).
    def full(x, k, metric, **kw):
        return train_ivf(x, k, metric, partials=lambda c: lloyd_partial(x, c), **kw)

    local, li = full(x, 40, "l2", max_iters=25, seed=4, tol=1e-4)
    from distributed import get_task_stream

    with get_task_stream(cluster_client) as ts:
        spread, si = cluster_client.submit(
            train_ivf_on_cluster, x, 40, "l2", max_iters=25, seed=4, tol=1e-4, shards=3, pure=False
        ).result()
    names = [t["key"][0] if isinstance(t["key"], tuple) else t["key"] for t in ts.data]
    partial_tasks = sum(str(n).startswith("lloyd_partial") for n in names)
    merge_tasks = sum(str(n).startswith("combine_partials") for n in names)
    assert partial_tasks >= 3 and partial_tasks % 3 == 0  # 3 shards per iteration, on the workers
    assert merge_tasks == 2 * partial_tasks // 3  # a tree: 3 leaves, 2 merges per iteration
    # same seeding, same iterations; float64 partial sums: equal up to rounding
    assert si == pytest.approx(li, rel=1e-4)
    np.testing.assert_allclose(spread, local, rtol=1e-3, atol=1e-3)
    # dot (spherical, best of 3 restarts) takes the same path
    d_local, dl = full(x, 20, "dot", max_iters=10, seed=2, tol=1e-4)
    d_spread, ds = cluster_client.submit(train_ivf_on_cluster, x, 20, "dot", max_iters=10, seed=2, tol=1e-4, shards=2,
                                            pure=False).result()
    assert ds == pytest.approx(dl, rel=1e-4)
    np.testing.assert_allclose(np.linalg.norm(d_spread, axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("run", [1, 8])
@pytest.mark.parametrize("num_rows, num_samples", [(250_000, 8192), (1000, 8192), (10_007, 1500), (10_007, 300), (9, 4)])
def test_sample_offsets_are_distinct_in_range_and_spread(num_rows, num_samples, run):
    from dask_lance_index.train import sample_offsets

    off = sample_offsets(num_rows, num_samples, np.random.default_rng(3), run=run)
    assert len(off) == min(num_rows, num_samples)
    assert len(np.unique(off)) == len(off) and off.min() >= 0 and off.max() < num_rows
    assert np.all(np.diff(off) > 0)  # sorted
    if num_samples * 4 < num_rows:
        # drawn in runs, spread over the fragment: every tenth of it is hit
        # runs of `run` rows: the sample touches at most one more run than it needs
        assert len(np.unique(off // run)) <= -(-len(off) // run) + (run > 1)
        assert len(np.unique(off * 10 // num_rows)) == 10
    again = sample_offsets(num_rows, num_samples, np.random.default_rng(3), run=run)
    assert np.array_equal(off, again)  # the same seed gives the same sample (retried tasks)


def _counting(monkeypatch, module, name):
    """Wrap ``module.name`` to count the rows it is called on (first argument)."""
    seen = {"rows": 0}
    inner = getattr(module, name)

    def wrapped(x, *args, **kwargs):
        seen["rows"] += x.shape[-2]
        return inner(x, *args, **kwargs)

    monkeypatch.setattr(module, name, wrapped)
    return seen


def test_incremental_kmeans_beats_full_lloyd_for_less_work(monkeypatch):
    import dask_lance_index.model.kmeans as km

    x = make_vectors(24_000, 16, num_clusters=300, seed=5)
    k = 64  # 32 rows per centroid: 2,048-row chunks, 11 of them
    seen = _counting(monkeypatch, km, "lloyd_partial")
    c_inc, _ = kmeans(x, k, max_iters=50, tol=2e-3, seed=1)
    inc_rows, seen["rows"] = seen["rows"], 0
    c_full, _ = kmeans(x, k, max_iters=50, tol=2e-3, seed=1, chunk_rows=len(x))  # one chunk: full Lloyd
    full_rows = seen["rows"]
    assert full_rows % len(x) == 0  # full steps only
    inertia = {name: float(assign(x, c)[1].sum(dtype=np.float64)) for name, c in (("inc", c_inc), ("full", c_full))}
    assert inertia["inc"] <= inertia["full"] * 1.002
    assert inc_rows < full_rows


def test_incremental_pq_codebooks_beat_full_lloyd_for_less_work(monkeypatch):
    import dask_lance_index.model.kmeans as km

    x = make_vectors(16_384, 16, num_clusters=400, seed=6)
    xb = np.ascontiguousarray(x.reshape(len(x), 4, 4).transpose(1, 0, 2))
    seen = _counting(monkeypatch, km, "_batched_stats")
    c_inc, inc_inertia = kmeans_batched(xb, 64, max_iters=50, tol=2e-3, seed=2)  # 8 chunks of 2,048
    inc_rows, seen["rows"] = seen["rows"], 0
    c_full, _ = kmeans_batched(xb, 64, max_iters=50, tol=2e-3, seed=2, chunk_rows=len(x))
    full_rows = seen["rows"]
    for j in range(4):
        inc = float(assign(xb[j], c_inc[j])[1].sum(dtype=np.float64))
        full = float(assign(xb[j], c_full[j])[1].sum(dtype=np.float64))
        assert inc <= full * 1.002
    assert inc_rows < full_rows


def _train_big_enough_to_spread(x, k):
    """In a worker: train with the spreading threshold at its floor, as a big sample would."""
    import dask_lance_index.train.train as train

    floor, train.DISTRIBUTED_TRAIN_MIN_WORK = train.DISTRIBUTED_TRAIN_MIN_WORK, 1
    train_shards.__defaults__ = (1,)
    try:
        return train_ivf_on_cluster(x, k, "l2", max_iters=10, seed=4, tol=1e-4)
    finally:
        train.DISTRIBUTED_TRAIN_MIN_WORK = floor
        train_shards.__defaults__ = (floor,)


def test_ivf_training_stays_in_one_task_when_every_worker_shares_this_host(cluster_client, x):
    # A LocalCluster's workers share one host's cores: one task's incremental passes do the
    # same work in fewer full-pass equivalents than full Lloyd steps spread over them.
    from distributed import get_task_stream

    with get_task_stream(cluster_client) as ts:
        centroids, _ = cluster_client.submit(_train_big_enough_to_spread, x, 40, pure=False).result()
    names = [str(t["key"][0] if isinstance(t["key"], tuple) else t["key"]) for t in ts.data]
    assert not [n for n in names if n.startswith("lloyd_partial")], names
    assert centroids.shape == (40, x.shape[1])
