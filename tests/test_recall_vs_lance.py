"""Every index type and metric: recall within 0.02 of Lance's own single-process build
(0.035 for PQ types under l2 and cosine: a measured gap, see the test).

Both are measured against NumPy brute force on the same data and queries at
the same nprobes. One k-means draw moves recall by up to 0.04 on this data at
nprobes 4 of 16 (IVF/dot over 10 seeds: 0.938 to 0.975; Lance's own
IVF_HNSW_FLAT/dot measured 0.959 and 0.930 on two builds) and by 0.017 at
nprobes 6 (0.978 to 0.995). So the test probes 6 partitions and each side is
the mean of two builds: Lance twice, ours once on the synchronous
scheduler (seed 0) and once on a real LocalCluster with worker processes
(seed 1).
"""

import shutil

import lance
import numpy as np
import pytest

import dask_lance_index as dli
from dask_lance_index.datagen import make_vectors, write_vectors
from dask_lance_index.evaluation import exact_knn, recall_at_k, search

TYPES = ["IVF_FLAT", "IVF_PQ", "IVF_SQ", "IVF_RQ", "IVF_HNSW_FLAT", "IVF_HNSW_PQ", "IVF_HNSW_SQ"]
METRICS = ["l2", "cosine", "dot"]
NPROBES = 6  # of 16: far from exhaustive, yet past the spread of k-means draws (see above)


def options(index_type):
    kw = {"num_partitions": 16}
    if "PQ" in index_type:
        kw["num_sub_vectors"] = 8
    return kw


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("index_type", TYPES)
def test_recall_matches_lance(index_type, metric, tmp_path, vectors, queries, cluster_client):
    truth = exact_knn(vectors, queries, 10, metric)

    def measure(ds):
        found, _ = search(ds, "vector", queries, 10, nprobes=NPROBES)
        return recall_at_k(found, truth)

    theirs = []
    for rep in range(2):
        uri = str(tmp_path / f"lance{rep}.lance")
        ds = write_vectors(uri, vectors, max_rows_per_file=3000)
        ds.create_index("vector", index_type, metric=metric, **options(index_type))
        theirs.append(measure(lance.dataset(uri)))
        shutil.rmtree(uri)

    ours = []
    for seed, run in ((0, lambda b: b.compute(scheduler="sync")), (1, lambda b: cluster_client.compute(b).result())):
        uri = str(tmp_path / f"ours{seed}.lance")
        write_vectors(uri, vectors, max_rows_per_file=3000)
        build = dli.create_index(
            uri, "vector", index_type, metric=metric, num_tasks=3, seed=seed, compute=False, **options(index_type)
        )
        result = run(build)
        assert result.num_rows_indexed == len(vectors)
        if index_type in ("IVF_FLAT", "IVF_SQ", "IVF_PQ", "IVF_RQ"):  # three tasks' segments merged into one
            assert len(result.segments) == 1, result.segments
        ours.append(measure(result.dataset()))

    msg = f"{index_type}/{metric}: ours {np.round(ours, 3)}, Lance {np.round(theirs, 3)}"
    print("RECALL", msg)
    # Never worse than Lance by more than 0.02 on average. Better is allowed: for dot-metric
    # PQ our k-means gives better centroids than Lance's (measured +0.06 on this data).
    # Known gap: PQ types under l2 and cosine on this small set (8 sub-vectors of 4 dims).
    # IVF_PQ/cosine measured over 6 seeds of ours and 11 Lance builds: ours 0.690-0.717 (mean
    # 0.705), Lance 0.703-0.730 (mean 0.719); l2: ours mean 0.697, Lance 0.704 (6 each). Given
    # Lance's own trained centroids and codebook our build gets Lance's recall (0.719 against
    # 0.720 on 5 models), so encoding is not the cause; swapping one half of the model puts
    # half the gap on the IVF centroids and half on the codebook. On 128-d sets of 250k-4M
    # rows ours is equal or better (docs/benchmarks.md). With a build-to-build sd of about
    # 0.009, the difference of two means of two builds has an sd of 0.009: the bound is the
    # measured gap (0.014) plus 2.3 sd, so a sound build fails it about one run in a hundred,
    # and a codebook or encoding that is off by more (a broken path loses 0.1 or more) fails.
    known_gap = "PQ" in index_type and metric in ("l2", "cosine")
    tolerance = 0.035 if known_gap else 0.02
    assert np.mean(ours) >= np.mean(theirs) - tolerance, msg
    # and no single build of ours is grossly worse (a broken scheduler path would be)
    assert min(ours) >= np.mean(theirs) - 0.05, msg


def test_same_seed_gives_the_same_index_on_any_scheduler(tmp_path, vectors, queries, cluster_client):
    found, sizes = [], []
    for i, run in enumerate((lambda b: b.compute(scheduler="sync"), lambda b: cluster_client.compute(b).result())):
        uri = str(tmp_path / f"d{i}.lance")
        write_vectors(uri, vectors, max_rows_per_file=3000)
        build = dli.create_index(
            uri, "vector", "IVF_PQ", num_partitions=16, num_sub_vectors=8, num_tasks=3, seed=42, compute=False
        )
        result = run(build)
        stats = result.dataset().stats.index_stats("vector_idx")
        sizes.append([p["size"] for p in stats["indices"][0]["partitions"]])
        found.append(search(result.dataset(), "vector", queries, 10, nprobes=4)[0])
    assert sizes[0] == sizes[1]
    np.testing.assert_array_equal(found[0], found[1])


@pytest.mark.parametrize("index_type, capped", [("IVF_PQ", True), ("IVF_HNSW_PQ", True), ("IVF_FLAT", False)])
def test_the_plan_says_when_lance_would_train_fewer_partitions(tmp_path, index_type, capped):
    """Lance trains at most rows // 256 partitions for PQ types (and at most 4,096); the plan names Lance's number,
    checked against Lance's own build, and ours keeps every partition asked for."""
    x = make_vectors(9000, 16, num_clusters=50, seed=1)
    kw = {"num_sub_vectors": 4} if "PQ" in index_type else {}
    theirs, ours = str(tmp_path / "lance.lance"), str(tmp_path / "ours.lance")
    for uri in (theirs, ours):
        write_vectors(uri, x, max_rows_per_file=3000)
    lance.dataset(theirs).create_index("vector", index_type, num_partitions=48, **kw)
    lance_parts = len(lance.dataset(theirs).stats.index_stats("vector_idx")["indices"][0]["partitions"])
    assert (lance_parts < 48) == capped
    build = dli.create_index(ours, "vector", index_type, num_partitions=48, num_tasks=2, compute=False, **kw)
    note = [n for n in build.plan.notes if "Lance's own create_index would train only" in n]
    assert bool(note) == capped
    if capped:
        assert f"would train only {lance_parts} " in note[0]
    build.compute(scheduler="sync")
    assert len(lance.dataset(ours).stats.index_stats("vector_idx")["indices"][0]["partitions"]) == 48
