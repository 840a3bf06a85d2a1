"""Every vector column Lance 14.0.2 indexes: nested fields, binary vectors (hamming), multivectors.

Each kind is built here (on the LocalCluster and the synchronous scheduler) and
compared with Lance's own single-process index on a copy of the same data:
recall@10 against exact neighbours computed with NumPy, at equal nprobes.
"""

from __future__ import annotations

import json
import shutil

import dask.dataframe as dd
import lance
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import dask_lance_index as dli
from dask_lance_index.evaluation import exact_knn
from dask_lance_index.model.hamming import hamming_assign, train_kmodes
from dask_lance_index.storage import join_field_path, split_field_path

from .test_cli import cli

# -- data ------------------------------------------------------------------------------------------


def _fsl(x: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])


def nested_table(x: np.ndarray, start: int = 0, field: str = "v") -> pa.Table:
    """Rows ``id``, ``emb`` = struct<``field``: vector, tag: int64>."""
    emb = pa.StructArray.from_arrays([_fsl(x), pa.array(np.arange(len(x)) % 7)], [field, "tag"])
    return pa.table({"id": np.arange(start, start + len(x)), "emb": emb})


def binary_vectors(n: int, nbytes: int = 16, seed: int = 3) -> np.ndarray:
    """Bit-packed codes around 64 random centres, 15% of the bits flipped."""
    rng = np.random.default_rng(seed)
    centres = rng.integers(0, 256, (64, nbytes), dtype=np.uint8)
    bits = np.unpackbits(centres[rng.integers(0, 64, n)], axis=1) ^ (rng.random((n, nbytes * 8)) < 0.15)
    return np.packbits(bits, axis=1)


def multivector_table(n: int, d: int = 32, seed: int = 5) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """Rows of 2-5 vectors around 40 centres: (table, inner vectors, row of each inner vector)."""
    rng = np.random.default_rng(seed)
    lens = rng.integers(2, 6, n)
    centres = rng.standard_normal((40, d)).astype(np.float32)
    inner = (centres[rng.integers(0, 40, lens.sum())] + 0.5 * rng.standard_normal((lens.sum(), d))).astype(np.float32)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lens)]).astype(np.int32))
    table = pa.table({"id": np.arange(n), "mv": pa.ListArray.from_arrays(offsets, _fsl(inner))})
    return table, inner, np.repeat(np.arange(n), lens)


def write_twice(table: pa.Table, tmp_path, rows_per_file: int) -> tuple[str, str]:
    """The same data as two datasets: one for us, one for Lance's own index."""
    ours, theirs = str(tmp_path / "ours.lance"), str(tmp_path / "lance.lance")
    lance.write_dataset(table, ours, max_rows_per_file=rows_per_file)
    shutil.copytree(ours, theirs)
    return ours, theirs


def ids_of(ds, column: str, q, k: int, nprobes: int) -> list[int]:
    t = ds.to_table(nearest={"column": column, "q": q, "k": k, "nprobes": nprobes}, columns=["id"],
                    disable_scoring_autoprojection=True)
    return t["id"].to_pylist()


def exact_l2(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    d = (q * q).sum(1)[:, None] - 2 * q @ x.T + (x * x).sum(1)[None, :]
    return np.argsort(d, axis=1, kind="stable")[:, :k]


def recall(found: list[list[int]], truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / truth.shape[1] for f, t in zip(found, truth)]))


# -- field paths -------------------------------------------------------------------------------


def test_field_paths_split_and_join_as_lance_spells_them(tmp_path):
    assert split_field_path("emb.v") == ("emb", "v")
    assert split_field_path("s.`v.w`") == ("s", "v.w")
    assert split_field_path("`s`.`v.w`") == ("s", "v.w")
    assert split_field_path("a.`x``y`") == ("a", "x`y")
    for bad in ("a..b", "a.`b", ".a", "a."):
        with pytest.raises(ValueError):
            split_field_path(bad)
    assert join_field_path(("s", "v.w")) == "s.`v.w`"
    assert join_field_path(("emb", "v")) == "emb.v"
    # Pinned Lance 14.0.2 behaviour the above follows: a top-level name cannot hold a dot
    # (so a dotted name is always a path), a nested one can and is spelled in backticks.
    x = np.ones((4, 8), np.float32)
    with pytest.raises(OSError, match="cannot contain"):
        lance.write_dataset(pa.table({"a.b": _fsl(x)}), str(tmp_path / "dotted.lance"))
    ds = lance.write_dataset(pa.table({"s": pa.StructArray.from_arrays([_fsl(x)], ["v.w"])}), str(tmp_path / "s.lance"))
    assert ds.scanner(columns=["s.`v.w`"]).to_table().column_names == ["s.`v.w`"]


def test_nested_vector_on_cluster_recall_equals_lances(tmp_path, vectors, queries, cluster_client):
    """As test_recall_vs_lance: nprobes 6 of 16 and the mean of builds (ours on the cluster and on
    the synchronous scheduler, Lance three times: its own builds measured 0.699-0.725 here).
    Cosine: l2 PQ on this small set has a known gap of 0.011-0.022 (test_recall_vs_lance), which
    is about PQ training, not about where the column lives."""
    ours, theirs = write_twice(nested_table(vectors), tmp_path, 3000)
    truth = exact_knn(vectors, queries, 10, "cosine")

    def measure(ds):
        return recall([ids_of(ds, "emb.v", q, 10, 6) for q in queries], truth)

    mine = []
    for seed, run in ((1, {"client": cluster_client}), (0, {"scheduler": "sync"})):
        ds = dli.create_index(ours, "emb.v", "IVF_PQ", metric="cosine", num_partitions=16, num_sub_vectors=8,
                              seed=seed, replace=True, **run)
        (desc,) = ds.describe_indices()
        assert (desc.name, list(desc.field_names), desc.num_rows_indexed) == ("emb.v_idx", ["emb.v"], len(vectors))
        mine.append(measure(ds))
    lances = []
    for _ in range(3):
        ref = lance.dataset(theirs).create_index("emb.v", "IVF_PQ", metric="cosine", num_partitions=16,
                                                 num_sub_vectors=8, replace=True)
        assert list(ref.describe_indices()[0].field_names) == ["emb.v"]
        lances.append(measure(ref))
    print(f"nested IVF_PQ cosine recall@10 nprobes 6 of 16: ours {mine} lance {lances}")
    assert np.mean(mine) >= np.mean(lances) - 0.02, (mine, lances)  # better is allowed
    assert "ANNSubIndex" in ds.scanner(nearest={"column": "emb.v", "q": queries[0], "k": 10}).explain_plan()


@pytest.mark.parametrize("index_type", ["IVF_FLAT", "IVF_PQ", "IVF_SQ", "IVF_RQ", "IVF_HNSW_FLAT", "IVF_HNSW_PQ",
                                        "IVF_HNSW_SQ"])
def test_nested_vector_every_index_type_sync(tmp_path, vectors, queries, index_type):
    x, q = vectors[:4000], queries[:40]
    uri = str(tmp_path / "n.lance")
    lance.write_dataset(nested_table(x), uri, max_rows_per_file=1000)
    kw = {"num_sub_vectors": 8} if "PQ" in index_type else {}
    ds = dli.create_index(uri, "emb.v", index_type, num_partitions=4, seed=2, scheduler="sync", **kw)
    (desc,) = ds.describe_indices()
    assert list(desc.field_names) == ["emb.v"] and desc.num_rows_indexed == len(x)
    found = [ids_of(ds, "emb.v", v, 10, 4) for v in q]  # every partition: the quantizer's recall only
    floor = {"IVF_PQ": 0.5, "IVF_HNSW_PQ": 0.5, "IVF_RQ": 0.6}.get(index_type, 0.9)
    assert recall(found, exact_l2(x, q, 10)) > floor


def test_nested_update_evaluate_batch_search_and_read(tmp_path, vectors, queries):
    uri = str(tmp_path / "n.lance")
    lance.write_dataset(nested_table(vectors[:6000]), uri, max_rows_per_file=2000)
    dli.create_index(uri, "emb.v", "IVF_FLAT", num_partitions=8, seed=3, scheduler="sync")
    lance.write_dataset(nested_table(vectors[6000:8000], start=6000), uri, mode="append")
    result = dli.update_index(uri, "emb.v", scheduler="sync")
    ds = lance.dataset(uri)
    (desc,) = ds.describe_indices()
    assert desc.num_rows_indexed == 8000 and list(desc.field_names) == ["emb.v"], result
    table = dli.evaluate_index(uri, "emb.v", queries[:20], nprobes=[8], refine_factors=[None], id_column="id",
                               scheduler="sync")
    assert table.rows[0].recall > 0.99 and table.column == "emb.v"
    q = vectors[[5, 7000]]
    qdf = dd.from_pandas(pd.DataFrame({"q": pd.arrays.ArrowExtensionArray(_fsl(q))}), npartitions=1)
    out = dli.batch_search(qdf, uri, "emb.v", k=3, query_column="q", nprobes=8).compute(scheduler="sync")
    assert [ids[0] for ids in out["ids"].tolist()] == [5, 7000]
    df = dli.read_lance(uri, columns=["id", "emb.v"]).compute(scheduler="sync")
    assert list(df.columns) == ["id", "emb.v"] and len(df) == 8000
    assert np.allclose(np.stack(df["emb.v"].tolist())[:3], vectors[:3])


def test_field_name_holding_a_dot_in_backticks(tmp_path, vectors):
    uri = str(tmp_path / "d.lance")
    lance.write_dataset(nested_table(vectors[:3000], field="v.w"), uri, max_rows_per_file=1500)
    with pytest.raises(dli.InvalidInputError, match=r"emb\.`v\.w`"):  # the error lists the paths there are
        dli.create_index(uri, "emb.v.w", "IVF_FLAT", num_partitions=4, scheduler="sync")
    ds = dli.create_index(uri, "emb.`v.w`", "IVF_FLAT", num_partitions=4, scheduler="sync")
    (desc,) = ds.describe_indices()
    assert list(desc.field_names) == ["emb.`v.w`"] and desc.name == "emb.`v.w`_idx"
    assert ids_of(ds, "emb.`v.w`", vectors[17], 1, 4) == [17]
    # Any spelling of the path is the same column: the index and its saved plan hold Lance's.
    ds = dli.create_index(uri, "`emb`.`v.w`", "IVF_FLAT", num_partitions=4, scheduler="sync", replace=True)
    assert [d.name for d in ds.describe_indices()] == ["emb.`v.w`_idx"]
    lance.write_dataset(nested_table(vectors[3000:3500], start=3000, field="v.w"), uri, mode="append")
    dli.update_index(uri, "emb.`v.w`", scheduler="sync")
    assert lance.dataset(uri).describe_indices()[0].num_rows_indexed == 3500


def test_nested_index_searched_by_lancedb(tmp_path, vectors):
    lancedb = pytest.importorskip("lancedb")
    uri = str(tmp_path / "t.lance")
    lance.write_dataset(nested_table(vectors[:4000]), uri, max_rows_per_file=1000)
    dli.create_index(uri, "emb.v", "IVF_PQ", num_partitions=8, num_sub_vectors=8, seed=0, scheduler="sync")
    table = lancedb.connect(str(tmp_path)).open_table("t")
    (cfg,) = table.list_indices()
    assert list(cfg.columns) == ["emb.v"]
    query = table.search(vectors[123], vector_column_name="emb.v").nprobes(8).limit(5)
    assert "ANNSubIndex" in query.explain_plan()
    assert 123 in query.to_arrow()["id"].to_pylist()


# -- binary vectors, hamming -------------------------------------------------------------------


def test_kmodes_is_majority_vote_with_ties_to_zero():
    x = np.array([[0b11110000], [0b11000000], [0b10100000], [0b00001111], [0b00000111]], np.uint8)
    c, loss = train_kmodes(x, 2, max_iters=10, seed=0)
    # bit-wise majority of {11110000, 11000000, 10100000} and of {00001111, 00000111} (a tie gives 0)
    assert sorted(c[:, 0].tolist()) == [0b00000111, 0b11100000]
    labels, d = hamming_assign(x, c)
    assert labels[0] != labels[3] and len(set(labels[:3])) == 1 and loss == d.sum() == 1 + 1 + 1 + 1 + 0


def hamming_recall(found: list[list[int]], x: np.ndarray, q: np.ndarray, k: int = 10) -> float:
    """Recall@k counting any row as near as the k-th exact neighbour (hamming ties are common)."""
    xb, qb = np.unpackbits(x, axis=1).astype(np.float32), np.unpackbits(q, axis=1).astype(np.float32)
    d = qb @ (1 - xb).T + (1 - qb) @ xb.T
    kth = np.sort(d, axis=1)[:, k - 1]
    return float(np.mean([np.sum(d[i, f] <= kth[i]) / k for i, f in enumerate(found)]))


def test_binary_hamming_on_cluster_recall_equals_lances(tmp_path, cluster_client):
    """One k-modes draw moves recall a lot here: at nprobes 3 of 32 over ten builds, Lance's own
    0.923-0.975 (mean 0.947, sd 0.012), ours (seeds 0-9) 0.925-0.994 (mean 0.959, sd 0.022). So
    each side is the mean of four builds: ours on the cluster and three times on the synchronous
    scheduler, Lance four times."""
    x = binary_vectors(20_000)
    q = x[np.random.default_rng(0).choice(len(x), 100, replace=False)]
    ours, theirs = write_twice(pa.table({"id": np.arange(len(x)), "b": _fsl(x)}), tmp_path, 5000)

    def measure(ds):
        return hamming_recall([ids_of(ds, "b", v, 10, 3) for v in q], x, q)

    mine = []
    for seed, run in ((0, {"client": cluster_client}), (1, {"scheduler": "sync"}), (2, {"scheduler": "sync"}),
                      (3, {"scheduler": "sync"})):
        ds = dli.create_index(ours, "b", "IVF_FLAT", metric="hamming", num_partitions=32, seed=seed, replace=True,
                              **run)
        assert ds.describe_indices()[0].num_rows_indexed == len(x)
        mine.append(measure(ds))
    lances = [measure(lance.dataset(theirs).create_index("b", "IVF_FLAT", metric="hamming", num_partitions=32,
                                                         replace=True)) for _ in range(4)]
    print(f"binary IVF_FLAT recall@10 nprobes 3 of 32: ours {mine} lance {lances}")
    assert np.mean(mine) >= np.mean(lances) - 0.02, (mine, lances)
    table = dli.evaluate_index(ours, "b", q[:20], nprobes=[32], refine_factors=[None], id_column="id",
                               client=cluster_client)
    assert table.metric == "hamming" and table.rows[0].recall > 0.9  # ties: the exact ids are one choice of several


def test_binary_hamming_hnsw_and_batch_search_sync(tmp_path):
    x = binary_vectors(4000, seed=9)
    uri = str(tmp_path / "b.lance")
    lance.write_dataset(pa.table({"id": np.arange(len(x)), "b": _fsl(x)}), uri, max_rows_per_file=1000)
    ds = dli.create_index(uri, "b", "IVF_HNSW_FLAT", metric="hamming", num_partitions=4, scheduler="sync")
    q = x[:30]
    assert hamming_recall([ids_of(ds, "b", v, 10, 4) for v in q], x, q) > 0.9
    qdf = dd.from_pandas(pd.DataFrame({"b": pd.arrays.ArrowExtensionArray(_fsl(x[[3, 99]]))}), npartitions=1)
    out = dli.batch_search(qdf, uri, "b", k=1, nprobes=4).compute(scheduler="sync")
    assert [ids[0] for ids in out["ids"].tolist()] == [3, 99]


# -- multivectors ------------------------------------------------------------------------------


def maxsim_truth(inner, rowof, queries, k: int = 10) -> np.ndarray:
    """Exact late-interaction neighbours: sum over query vectors of the best cosine similarity."""
    un = inner / np.linalg.norm(inner, axis=1, keepdims=True)
    out = []
    for qs in queries:
        s = (qs / np.linalg.norm(qs, axis=1, keepdims=True)) @ un.T
        best = np.full((len(qs), rowof[-1] + 1), -np.inf)
        for j in range(len(qs)):
            np.maximum.at(best[j], rowof, s[j])
        out.append(np.argsort(-best.sum(axis=0), kind="stable")[:k])
    return np.array(out)


@pytest.mark.parametrize("index_type, where", [("IVF_FLAT", "cluster"), ("IVF_PQ", "sync")])
def test_multivector_recall_equals_lances(tmp_path, index_type, where, request):
    table, inner, rowof = multivector_table(4000)
    ours, theirs = write_twice(table, tmp_path, 1000)
    kw = {"num_sub_vectors": 8} if "PQ" in index_type else {}
    run = {"client": request.getfixturevalue("cluster_client")} if where == "cluster" else {"scheduler": "sync"}
    build = dli.create_index(ours, "mv", index_type, metric="cosine", num_partitions=16, seed=5, num_tasks=2,
                             compute=False, **kw, **run)
    result = dli.run(build, **run)
    ds = result.dataset()
    ref = lance.dataset(theirs).create_index("mv", index_type, metric="cosine", num_partitions=16, **kw)
    (desc,) = ds.describe_indices()
    assert build.plan.num_tasks == 2 and len(desc.segments) == 1  # built per fragment group, merged
    assert desc.num_rows_indexed == 4000 and build.plan.engine == "lance"
    rng = np.random.default_rng(6)
    qs = [inner[rng.choice(len(inner), 3)] + 0.2 * rng.standard_normal((3, inner.shape[1])).astype(np.float32)
          for _ in range(40)]
    # Lance 14.0.2's multivector search answers a k=10 query of 3 vectors with recall@10 near
    # 0.1 against exact MaxSim, at every nprobes, its own index as ours (measured); at k=50 it
    # reaches 0.75-0.80 and nprobes matters: the comparison is made there, and at k=10. At nprobes 1
    # one k-means draw moves recall@50 by 0.04 (Lance's own: 0.737-0.766 over four builds); at 4 by 0.01.
    for k, probes in ((10, (8,)), (50, (4,))):
        truth = maxsim_truth(inner, rowof, qs, k)
        for nprobes in probes:
            mine = recall([ids_of(ds, "mv", q, k, nprobes) for q in qs], truth)
            lances = recall([ids_of(ref, "mv", q, k, nprobes) for q in qs], truth)
            print(f"multivector {index_type} recall@{k} nprobes {nprobes}: ours {mine:.3f} lance {lances:.3f}")
            if k == 10 and "PQ" in index_type:
                continue  # about 4 hits in 400: one PQ draw moves it by 0.015 (ours 0.085, Lance's 0.085-0.100)
            assert mine >= lances - 0.02, (k, nprobes, mine, lances)


@pytest.mark.parametrize("index_type", ["IVF_SQ", "IVF_RQ", "IVF_HNSW_FLAT", "IVF_HNSW_PQ", "IVF_HNSW_SQ"])
def test_multivector_every_other_index_type_sync(tmp_path, index_type):
    table, inner, rowof = multivector_table(1200, d=16, seed=8)
    uri = str(tmp_path / "m.lance")
    lance.write_dataset(table, uri, max_rows_per_file=600)
    kw = {"num_sub_vectors": 4} if "PQ" in index_type else {}
    ds = dli.create_index(uri, "mv", index_type, metric="cosine", num_partitions=4, seed=8, scheduler="sync", **kw)
    (desc,) = ds.describe_indices()
    assert desc.num_rows_indexed == 1200 and desc.index_type == index_type, desc.index_type
    # a row's own vectors, as the query, find that row
    hits = [row in ids_of(ds, "mv", inner[rowof == row], 10, 4) for row in (17, 640, 1100)]
    assert all(hits), hits


def test_multivector_rows_without_vectors_are_counted_as_skipped(tmp_path):
    rng = np.random.default_rng(0)
    rows = [None if i == 3 else [] if i == 4 else rng.standard_normal((2, 8)).tolist() for i in range(600)]
    uri = str(tmp_path / "m.lance")
    lance.write_dataset(pa.table({"id": np.arange(600), "mv": pa.array(rows, pa.list_(pa.list_(pa.float32(), 8)))}),
                        uri, max_rows_per_file=300)
    with pytest.warns(UserWarning, match="2 null vectors"):
        result = dli.create_index(uri, "mv", "IVF_FLAT", metric="cosine", num_partitions=2, scheduler="sync",
                                  compute=False).compute(scheduler="sync")
    assert (result.num_rows_indexed, result.num_rows_skipped) == (598, 2)


# -- refusals ----------------------------------------------------------------------------------


@pytest.fixture
def kinds_uri(tmp_path):
    """One dataset holding a float vector, a binary vector, a multivector and a struct."""
    table, _, _ = multivector_table(600, d=16)
    x = np.random.default_rng(0).standard_normal((600, 16)).astype(np.float32)
    table = table.append_column("vec", _fsl(x)).append_column("b", _fsl(binary_vectors(600, 8)))
    table = table.append_column("emb", nested_table(x)["emb"])
    uri = str(tmp_path / "kinds.lance")
    lance.write_dataset(table, uri, max_rows_per_file=300)
    return uri


@pytest.mark.parametrize("column, index_type, metric, kwargs, lance_says, ours_says", [
    ("b", "IVF_PQ", "hamming", {}, "PQ builder: unsupported data type", "no PQ, SQ or RQ quantizer"),
    ("b", "IVF_SQ", "hamming", {}, "SQ builder: unsupported data type", "no PQ, SQ or RQ quantizer"),
    ("b", "IVF_RQ", "hamming", {}, "does not support the hamming", "no PQ, SQ or RQ quantizer"),
    ("b", "IVF_FLAT", "l2", {}, "Unsupported training sample type UInt8", "only with metric='hamming'"),
    ("vec", "IVF_FLAT", "hamming", {}, None, "applies to binary columns"),
    ("mv", "IVF_PQ", "l2", {}, "multivector type supports only cosine", "cosine' only"),
    ("mv", "IVF_FLAT", "dot", {}, "multivector type supports only cosine", "cosine' only"),
    ("mv", "IVF_PQ", "cosine", {"engine": "precomputed"}, None, "assigned and encoded by Lance"),
    ("b", "IVF_FLAT", "hamming", {"ivf_training": "hierarchical"}, None, "k-modes in hamming space"),
    ("emb", "IVF_FLAT", "l2", {}, "must be FixedSizeListArray", "Fix: store the embeddings"),
])
def test_refusals_say_what_lance_does_and_leave_the_dataset_unchanged(kinds_uri, column, index_type, metric, kwargs,
                                                                      lance_says, ours_says):
    if lance_says:  # what Lance itself does with the column: pinned, so that an upgrade shows
        with pytest.raises(Exception, match=lance_says):
            lance.dataset(kinds_uri).create_index(column, index_type, metric=metric, num_partitions=2,
                                                  num_sub_vectors=4)
    before = lance.dataset(kinds_uri).version
    with pytest.raises(dli.InvalidInputError, match=ours_says) as err:
        dli.create_index(kinds_uri, column, index_type, metric=metric, num_partitions=2, scheduler="sync", **kwargs)
    assert "Fix:" in str(err.value)
    ds = lance.dataset(kinds_uri)
    assert ds.version == before and ds.describe_indices() == []


def test_multivector_search_helpers_refuse_with_the_lance_call(kinds_uri):
    with pytest.raises(dli.InvalidInputError, match="list of query vectors"):
        dli.evaluate_index(kinds_uri, "mv", np.ones((2, 16), np.float32))
    qdf = dd.from_pandas(pd.DataFrame({"q": [np.ones(16, np.float32)]}), npartitions=1)
    with pytest.raises(dli.InvalidInputError, match="nearest="):
        dli.batch_search(qdf, kinds_uri, "mv", query_column="q")


# -- the command line builds each kind ----------------------------------------------------------


def test_cli_builds_each_column_kind(kinds_uri, cluster_client):
    scheduler = cluster_client.scheduler.address
    for column, index_type, metric in (("emb.v", "IVF_PQ", "l2"), ("b", "IVF_FLAT", "hamming"),
                                       ("mv", "IVF_PQ", "cosine")):
        proc = cli("build", kinds_uri, "--column", column, "--index-type", index_type, "--metric", metric,
                   "--num-partitions", "4", "--num-sub-vectors", "4", "--scheduler", scheduler, "--json") \
            if "PQ" in index_type else \
            cli("build", kinds_uri, "--column", column, "--index-type", index_type, "--metric", metric,
                "--num-partitions", "4", "--scheduler", scheduler, "--json")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert json.loads(proc.stdout)["result"]["num_rows_indexed"] == 600
    ds = lance.dataset(kinds_uri)
    assert sorted(tuple(d.field_names) for d in ds.describe_indices()) == [("b",), ("emb.v",), ("mv",)]
