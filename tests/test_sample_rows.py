"""A two-level build's sample in pieces: never gathered, trained to the same model as in one place."""

import pickle

import numpy as np
import pytest
from distributed import worker_client

import dask_lance_index as dli
from dask_lance_index.datagen import make_vectors, write_vectors
from dask_lance_index.model import LocalRows, train_ivf_hierarchical
from dask_lance_index.model.sample_rows import group_buckets, piece_offsets, split_piece, train_bucket
from dask_lance_index.train import ClusterRows, two_level_sample


@pytest.fixture(scope="module")
def x():
    return make_vectors(12_000, 16, num_clusters=200, seed=11)


def _cut(x, sizes):
    bounds = np.cumsum([0, *sizes])
    return [x[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


SIZES = [2500, 0, 4000, 1, 3000, 2499]


def test_offsets_and_take_follow_the_pieces(x):
    rows = LocalRows(_cut(x, SIZES))
    assert rows.num_rows == len(x)
    offsets = np.sort(np.random.default_rng(0).choice(len(x), 700, replace=False))
    np.testing.assert_array_equal(rows.take(offsets), x[offsets])
    got = piece_offsets(SIZES, np.array([0, 2499, 2500, 6500, 11999]))
    assert [(i, o.tolist()) for i, o in got] == [(0, [0, 2499]), (2, [0]), (3, [0]), (5, [2498])]


def _sq_bounds_on_cluster(pieces, sizes):
    with worker_client() as c:
        # hash=False: pieces scattered under their own keys, not ones an earlier call released
        rows = ClusterRows(c, c.scatter(pieces, hash=False), [len(p) for p in pieces], pieces[0].shape[1])
        return [rows.sq_bounds(m, np.random.default_rng(5)) for m in sizes]


def test_sq_bounds_are_those_of_the_drawn_rows_each_piece_taking_its_own(x, cluster_client):
    """SampleRows.sq_bounds draws the rows sample() draws with the same generator and
    gives their smallest and largest value, reduced where each piece is."""
    pieces = _cut(x, SIZES)
    pieces[3] = pieces[3] * 50  # one row far out: in the bounds only when it is drawn
    whole = np.concatenate(pieces)
    sizes = (300, 5000, len(x) + 1)
    on_cluster = cluster_client.submit(_sq_bounds_on_cluster, pieces, sizes, pure=False).result()
    for m, got in zip(sizes, on_cluster):
        drawn = LocalRows(pieces).sample(m, np.random.default_rng(5))
        want = (float(drawn.min()), float(drawn.max()))
        assert LocalRows(pieces).sq_bounds(m, np.random.default_rng(5)) == want
        assert got == want
    assert want == (float(whole.min()), float(whole.max()))  # every row drawn: the far row's
    assert LocalRows(pieces).sq_bounds(300, np.random.default_rng(5)) != want


@pytest.mark.parametrize("seed", range(12))
def test_buckets_hold_every_group_once_and_stay_within_the_bound(seed):
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 5000, size=int(rng.integers(1, 80)))
    groups = [g for g in range(len(counts)) if rng.random() < 0.8] or [0]
    max_rows = int(rng.integers(1, 20000))
    min_buckets = int(rng.integers(1, 6))
    buckets = group_buckets(counts, groups, max_rows, min_buckets)
    assert sorted(g for b in buckets for g in b) == sorted(groups)
    assert len(buckets) >= min(min_buckets, len(groups))
    biggest = max(counts[g] for g in groups)
    # the bound the docs state: a bucket is one group, or within max_rows plus the largest group
    for b in buckets:
        load = sum(counts[g] for g in b)
        assert len(b) == 1 or load <= max_rows + biggest, (load, max_rows, biggest)


def test_a_bucket_trains_each_group_on_exactly_its_rows_in_sample_order(x):
    pieces = _cut(x, SIZES)
    labels = [np.random.default_rng(i).integers(0, 6, len(p)).astype(np.int32) for i, p in enumerate(pieces)]
    bucket_of_group = np.array([0, 1, 0, 1, 1, 0])
    slices = [split_piece(p, lab, bucket_of_group, 2)[1] for p, lab in zip(pieces, labels)]
    got = train_bucket(lambda rows, k, seed: rows, slices, [(1, 0, None), (4, 0, None), (3, 0, None)])
    every = np.concatenate(labels)
    for g, rows in zip((1, 4, 3), got):
        np.testing.assert_array_equal(rows, x[every == g])


def test_training_over_pieces_is_training_over_the_whole(x):
    c1, inertia1, i1 = train_ivf_hierarchical(x, 144, max_iters=20, seed=3)
    c2, inertia2, i2 = train_ivf_hierarchical(LocalRows(_cut(x, SIZES)), 144, max_iters=20, seed=3)
    np.testing.assert_array_equal(i1.groups, i2.groups)
    # the refinement's sums are added up piece by piece: equal to float32 rounding
    np.testing.assert_allclose(c1, c2, rtol=0, atol=1e-4)
    assert inertia2 == pytest.approx(inertia1, rel=1e-6)


def test_held_out_rows_leave_the_pieces(x):
    rows = LocalRows(_cut(x, SIZES))
    held = rows.hold_out(1000, np.random.default_rng(2))
    assert held.shape == (1000, 16) and rows.num_rows == len(x) - 1000
    assert rows.lengths[1] == 0 and sum(rows.lengths) == rows.num_rows
    rest = rows.take(np.arange(rows.num_rows))
    # every row once: in the held-out rows or still in the pieces, each in the sample's order
    np.testing.assert_array_equal(np.sort(np.concatenate([held, rest]), axis=0), np.sort(x, axis=0))
    where = {r.tobytes(): i for i, r in enumerate(x)}
    for part in (held, rest):
        assert np.all(np.diff([where[r.tobytes()] for r in part]) > 0)


def _hold_out_on_cluster(pieces):
    with worker_client() as c:
        rows = ClusterRows(c, c.scatter(pieces), [len(p) for p in pieces], pieces[0].shape[1])
        held = rows.hold_out(1000, np.random.default_rng(2))
        return held, rows.lengths, rows.take(np.arange(rows.num_rows))


def _on_cluster(pieces, bucket_bytes, neighbours=None):
    """Train two levels from inside a task, the pieces as futures on the workers."""
    with worker_client() as c:
        futures = c.scatter(pieces)
        rows = ClusterRows(c, futures, [len(p) for p in pieces], pieces[0].shape[1], num_workers=2,
                           bucket_bytes=bucket_bytes)
        return train_ivf_hierarchical(rows, 144, max_iters=20, seed=3, refine_neighbours=neighbours)


def test_training_on_the_cluster_is_training_in_one_place(x, cluster_client):
    pieces = _cut(x, SIZES)
    local = LocalRows(_cut(x, SIZES))
    held, lengths, rest = cluster_client.submit(_hold_out_on_cluster, pieces, pure=False).result()
    np.testing.assert_array_equal(held, local.hold_out(1000, np.random.default_rng(2)))
    assert lengths == local.lengths and sum(lengths) == len(x) - 1000
    np.testing.assert_array_equal(rest, local.take(np.arange(local.num_rows)))
    c1, inertia1, i1 = train_ivf_hierarchical(LocalRows(pieces), 144, max_iters=20, seed=3)
    # buckets of at most 500 rows: every bucket task holds a slice of the sample, not the whole
    c2, inertia2, i2 = cluster_client.submit(_on_cluster, pieces, 500 * 16 * 4, pure=False).result()
    np.testing.assert_array_equal(i1.groups, i2.groups)
    np.testing.assert_allclose(c1, c2, rtol=0, atol=1e-4)
    np.testing.assert_allclose(i1.coarse, i2.coarse, rtol=0, atol=1e-4)
    assert inertia2 == pytest.approx(inertia1, rel=1e-6)
    # refinement passes that move rows among their partition's neighbours: each row's
    # partition stays with its piece on its worker between passes, to the same model
    c3, inertia3, _ = train_ivf_hierarchical(LocalRows(pieces), 144, max_iters=20, seed=3, refine_neighbours=8)
    c4, inertia4, _ = cluster_client.submit(_on_cluster, pieces, 500 * 16 * 4, 8, pure=False).result()
    assert not np.allclose(c3, c1, atol=1e-3)  # the neighbours' passes ran
    np.testing.assert_allclose(c3, c4, rtol=0, atol=1e-4)
    assert inertia4 == pytest.approx(inertia3, rel=1e-6)


def test_a_two_level_graph_carries_no_sample_and_draws_it_on_the_workers(tmp_path, cluster_client):
    vectors = make_vectors(20_000, 32, num_clusters=300, seed=2)
    uri = str(tmp_path / "t.lance")
    write_vectors(uri, vectors, max_rows_per_file=2500)
    build = dli.create_index(uri, "vector", "IVF_PQ", num_partitions=256, num_sub_vectors=4, seed=1,
                             ivf_training="hierarchical", client=cluster_client, compute=False)
    assert two_level_sample(build.plan)
    graph = dict(build.__dask_graph__())
    assert not [k for k in graph if str(k).startswith("dli-sample-")]
    model_keys = [k for k in graph if str(k).startswith("dli-model-")]
    assert len(model_keys) == 1 and len(pickle.dumps(graph[model_keys[0]])) < 20_000
    result = build.compute()
    model = dli.load_model(uri, "vector_idx").model
    assert model.source["sample_pieces"] == 8  # one per fragment, each left where it was drawn
    assert model.source["sample_rows"] == sum(build.plan.samples)
    # the probes are chosen on rows held out of training: here the rows drawn beyond 64 per centroid
    assert model.source["agreement_rows"] == sum(build.plan.samples) - 256 * 64 > 0
    assert result.assignment_agreement >= 0.99
    flat = dli.create_index(uri, "vector", "IVF_PQ", num_partitions=256, num_sub_vectors=4, seed=1,
                            ivf_training="flat", name="flat_idx", compute=False)
    assert [k for k in dict(flat.__dask_graph__()) if str(k).startswith("dli-sample-")]


def test_a_two_level_sq_build_takes_its_bounds_from_the_pieces(tmp_path, cluster_client):
    vectors = make_vectors(9000, 16, num_clusters=100, seed=4)
    uri = str(tmp_path / "sq.lance")
    write_vectors(uri, vectors, max_rows_per_file=1500)
    result = dli.create_index(uri, "vector", "IVF_SQ", num_partitions=64, ivf_training="hierarchical",
                              num_tasks=3, client=cluster_client, compute=False).compute()
    model = dli.load_model(uri, "vector_idx").model
    # Lance's SQ sample (65,536 rows) holds every row here: the data's own range, from six pieces
    assert model.sq_bounds == (float(vectors.min()), float(vectors.max()))
    assert model.source["sample_pieces"] == 6 and len(result.segments) == 1
