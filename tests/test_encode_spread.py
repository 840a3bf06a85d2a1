"""One build task spreads its encoding (build.encode): a fragment at a time as ``dli-encode``
tasks on every worker of a cluster, or in a thread per CPU without one; the segment is the
one a single pass writes."""

import lance
import numpy as np
import pytest
from distributed import get_task_stream
from lance.file import LanceFileReader

import dask_lance_index as dli
import dask_lance_index.build.encode as encode_module
from dask_lance_index.datagen import make_vectors, write_vectors
from dask_lance_index.evaluation import exact_knn, recall_at_k, search


@pytest.mark.parametrize("index_type", ["IVF_SQ", "IVF_PQ", "IVF_FLAT", "IVF_RQ"])
def test_spread_encoding_writes_the_one_pass_segment(cluster_client, tmp_path, monkeypatch, index_type):
    x = make_vectors(12000, 32, num_clusters=40, seed=9)
    x[5] = np.nan  # an unindexable row, counted wherever it is read
    rng = np.random.default_rng(2)
    queries = x[rng.choice(np.arange(10, len(x)), 50, replace=False)] + rng.normal(0, 0.01, (50, 32)).astype(np.float32)
    truth = exact_knn(np.nan_to_num(x, nan=1e6), queries, 10, "l2")
    spread = []
    in_threads = encode_module._in_threads
    monkeypatch.setattr(encode_module, "_in_threads", lambda *a: spread.append(a[-1]) or in_threads(*a))
    files, recall, segments = {}, {}, {}
    kw_type = {"num_sub_vectors": 8} if index_type == "IVF_PQ" else {}
    for who in ("one pass", "threads", "cluster"):
        uri = str(tmp_path / f"{who.replace(' ', '_')}.lance")
        write_vectors(uri, x, max_rows_per_file=2000)  # 6 fragments
        kw = {"client": cluster_client} if who == "cluster" else {"scheduler": "sync"}
        with monkeypatch.context() as m:
            m.setattr(encode_module.os, "cpu_count", lambda: 1 if who == "one pass" else 3)
            with get_task_stream(cluster_client) as stream:
                build = dli.create_index(uri, "vector", index_type, num_partitions=8, seed=0, compute=False,
                                         **kw_type, **kw)
                assert build.plan.num_tasks == 1 and build.plan.engine == "precomputed"
                result = build.compute() if who == "cluster" else build.compute(scheduler="sync")
        assert result.num_rows_indexed == len(x) - 1 and result.nan_rows == 1
        ds = lance.dataset(uri)
        seg, = ds.describe_indices()[0].segments
        segments[who] = seg
        base = f"{uri}/_indices/{seg.uuid}"
        files[who] = LanceFileReader(f"{base}/auxiliary.idx").read_all().to_table()
        recall[who] = recall_at_k(search(ds, "vector", queries, 10, nprobes=4)[0], truth)
        if who == "cluster":
            encodes = [t for t in stream.data if t["key"].startswith("dli-encode-")]
            assert len(encodes) == 6 and len({t["worker"] for t in encodes}) == 2, encodes
            assert not [t for t in stream.data if t["key"].startswith("dli-merge-")]
    assert spread == [3]  # the sync build with three CPUs spread in threads; the one with one did not
    print("RECALL", index_type, recall)
    for who in ("threads", "cluster"):
        assert files[who].num_rows == files["one pass"].num_rows == len(x) - 1
        assert abs(recall[who] - recall["one pass"]) <= 0.02, recall
        if index_type != "IVF_RQ":  # RaBitQ calibrates its ex-code rescale per encoder: codes may differ
            assert files[who] == files["one pass"], who
        else:
            assert files[who].column("_rowid") == files["one pass"].column("_rowid")
    assert min(recall.values()) > 0.3  # (PQ: 8 sub-vectors of 4 dimensions)
