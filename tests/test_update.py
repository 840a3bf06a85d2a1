"""Incremental indexing: appends in rounds, deltas, merges, rebuilds, drift, compaction, on real datasets."""

from __future__ import annotations

import json
import os
import pickle

import lance
import numpy as np
import pytest

import dask_lance_index as dli
from dask_lance_index.datagen import write_vectors
from dask_lance_index.evaluation import exact_knn, recall_at_k, search
from dask_lance_index.update import SegmentState, UpdateDecision, plan_update

from .conftest import committed_segment_uuids, index_dirs


def _recall(ds, queries, truth, **kw):
    found, _ = search(ds, "vector", queries, 10, **kw)
    return recall_at_k(found, truth)


def _build_keys(upd):
    return [k for k in dict(upd.__dask_graph__()) if str(k).startswith("dli-build-")]


def _index_segments(ds, name="vector_idx"):
    return {s.uuid: set(s.fragment_ids) for d in ds.describe_indices() if d.name == name for s in d.segments}


# -- the pure planner ---------------------------------------------------------------------------


def _seg(uuid, frags, mergeable=True, rows=1000):
    return SegmentState(uuid, tuple(frags), rows, mergeable)


def test_plan_update_decides_delta_merge_rebuild_by_type():
    live = {i: 1000 for i in range(6)}
    base = [_seg("base", [0, 1, 2], mergeable=False)]
    d = plan_update("IVF_PQ", base, live, base_segments=1, max_deltas=4, num_tasks=1)
    assert d.action == "delta" and d.new_fragments == (3, 4, 5) and d.groups == ((3, 4, 5),)
    # over the threshold: PQ merges only the shards never merged
    segs = base + [_seg("d1", [3]), _seg("d2", [4])]
    d = plan_update("IVF_PQ", segs, live, base_segments=1, max_deltas=2, num_tasks=1)
    assert d.action == "merge" and d.merge_segments == ("d1", "d2")
    # nothing mergeable left and still over: rebuild, or only advise it
    segs = base + [_seg("m1", [3], mergeable=False), _seg("m2", [4], mergeable=False)]
    d = plan_update("IVF_PQ", segs, live, base_segments=1, max_deltas=1, num_tasks=1)
    assert d.action == "rebuild" and "cannot merge IVF_PQ" in d.reasons[-1]
    d = plan_update("IVF_PQ", segs, live, base_segments=1, max_deltas=1, num_tasks=1, rebuild=False)
    assert d.action == "delta" and "rebuild advised" in d.reasons[-1]
    # SQ never merges; FLAT merges everything
    d = plan_update("IVF_SQ", segs, live, base_segments=1, max_deltas=1, num_tasks=1)
    assert d.action == "rebuild" and "silently wrong" in d.reasons[-1]
    d = plan_update("IVF_FLAT", [_seg("a", [0, 1, 2]), _seg("b", [3]), _seg("c", [4])], live,
                    base_segments=1, max_deltas=1, num_tasks=1)
    assert d.action == "merge" and d.merge_segments == ("a", "b", "c")
    # dot-metric PQ encoded by Lance cannot be built in parts
    d = plan_update("IVF_PQ", base, live, one_segment_reason="Lance mis-encodes partial dot PQ")
    assert d.action == "rebuild" and "Lance mis-encodes partial dot PQ: rebuilt" in d.reasons[-1]
    assert UpdateDecision.from_dict(json.loads(json.dumps(d.to_dict()))) == d


def test_plan_update_reports_stale_fragments_and_drops_dead_segments():
    live = {1: 1000, 2: 1000, 7: 500}
    segs = [_seg("a", [0, 1, 2]), _seg("b", [3, 4])]  # 0 deleted; 3, 4 rewritten
    d = plan_update("IVF_FLAT", segs, live, num_tasks=1)
    assert d.action == "delta" and d.new_fragments == (7,)
    assert d.stale_fragments == (0, 3, 4) and d.dropped_segments == ("b",)
    assert plan_update("IVF_FLAT", [_seg("a", [1, 2, 7])], live).action == "noop"
    with pytest.raises(dli.InvalidInputError, match="max_deltas"):
        plan_update("IVF_FLAT", segs, live, max_deltas=-1)


# -- end to end ---------------------------------------------------------------------------------


def test_appends_in_rounds_update_only_new_fragments_and_match_a_fresh_build(tmp_path, vectors, queries):
    uri = str(tmp_path / "grow.lance")
    write_vectors(uri, vectors[:3000], max_rows_per_file=1000)
    dli.create_index(
        uri, "vector", "IVF_PQ", num_partitions=16, num_sub_vectors=8, num_tasks=3, scheduler="sync", seed=1,
        max_iters=10, pq_sample_rate=16,  # quick training: the test is about the updates
    )
    saved = dli.load_model(uri, "vector_idx")
    assert saved.plan.params.num_partitions == 16 and saved.model.pq_codebook.shape == (8, 256, 4)

    n = 3000
    actions = []
    for _ in range(3):
        write_vectors(uri, vectors[n : n + 3000], max_rows_per_file=1000, mode="append", start_id=n)
        n += 3000
        before = lance.dataset(uri)
        old = _index_segments(before)
        new_frags = sorted({f.fragment_id for f in before.get_fragments()} - set().union(*old.values()))
        upd = dli.update_index(uri, "vector", scheduler="sync", max_deltas=2, num_tasks=2, compute=False)
        # only the new fragments are built, by as many build tasks as groups; nothing is trained
        assert sorted(f for g in upd.plan.groups for f in g) == new_frags == list(upd.decision.new_fragments)
        assert len(_build_keys(upd)) == upd.plan.num_tasks == 2
        assert not any(str(k).startswith("dli-sample-") for k in dict(upd.__dask_graph__()))  # no training sample
        assert upd.plan.train == ()
        result = dli.run(upd, scheduler="sync")
        actions.append(result.action)
        assert result.num_segments_built == 2 and result.num_rows_indexed == 3000
        assert not result.retrain_advised and result.drift["ratio"] < 1.3
        ds = result.dataset()
        after = _index_segments(ds)
        if result.action == "delta":  # unchanged segments are kept as they were
            assert set(old) <= set(after) and set(result.segments_removed) == set()
        stats = ds.stats.index_stats("vector_idx")
        assert stats["num_unindexed_rows"] == 0 and stats["num_indexed_rows"] == n
        assert stats["num_segments"] == result.num_segments == len(after)
        assert index_dirs(uri) >= committed_segment_uuids(ds)
    assert actions == ["delta", "merge", "merge"], actions
    assert dli.UpdateResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result
    pickle.loads(pickle.dumps(result))

    queries = queries[:100]
    truth = exact_knn(vectors[:n], queries, 10, "l2")
    got = _recall(lance.dataset(uri), queries, truth, nprobes=8, refine_factor=5)
    fresh_uri = str(tmp_path / "fresh.lance")
    write_vectors(fresh_uri, vectors[:n], max_rows_per_file=1000)
    # the same model built at once over all rows: what the updates must equal
    fresh = dli.create_index(
        fresh_uri, "vector", "IVF_PQ", num_tasks=3, scheduler="sync", num_sub_vectors=8,
        ivf_centroids=saved.model.ivf_centroids, pq_codebook=saved.model.pq_codebook,
    )
    want = _recall(fresh, queries, truth, nprobes=8, refine_factor=5)
    # and a fresh build that trains its own model on all rows (same build settings as the first)
    retrained = dli.create_index(
        fresh_uri, "vector", "IVF_PQ", num_partitions=16, num_sub_vectors=8, num_tasks=3, scheduler="sync",
        seed=1, max_iters=10, pq_sample_rate=16, replace=True,
    )
    retrained_recall = _recall(retrained, queries, truth, nprobes=8, refine_factor=5)
    print("recall@10 after 3 updates", got, "fresh build, same model", want, "fresh build, retrained", retrained_recall)
    assert got == pytest.approx(want, abs=0.02), (got, want)
    assert got == pytest.approx(retrained_recall, abs=0.02), (got, retrained_recall)

    # nothing new: a clear no-op, no commit
    v = lance.dataset(uri).version
    noop = dli.update_index(uri, "vector", scheduler="sync")
    assert noop.action == "noop" and noop.version == v == lance.dataset(uri).version
    assert "nothing to update" in noop.reasons[0]


@pytest.mark.parametrize("engine", ["auto", "partitions"])
def test_sq_deltas_past_the_threshold_merge_or_rebuild_from_the_saved_model(tmp_path, vectors, queries, engine):
    """Our IVF_SQ segments share the saved bounds: deltas merge with the base. Lance-encoded
    ones each have their own: past the threshold the index is rebuilt from the saved model."""
    uri = str(tmp_path / "sq.lance")
    write_vectors(uri, vectors[:4000], max_rows_per_file=1000)
    dli.create_index(uri, "vector", "IVF_SQ", num_partitions=16, num_tasks=2, scheduler="sync", seed=2,
                     engine=engine)
    saved = dli.load_model(uri, "vector_idx").model
    write_vectors(uri, vectors[4000:8000], max_rows_per_file=1000, mode="append", start_id=4000)
    r = dli.update_index(uri, scheduler="sync", max_deltas=1, num_tasks=2)
    ds = r.dataset()
    if engine == "auto":
        assert r.action == "merge" and len(committed_segment_uuids(ds)) == r.num_segments == 1
    else:
        assert r.action == "rebuild" and "silently wrong" in r.reasons[-1]
        assert len(committed_segment_uuids(ds)) == r.num_segments == 2  # back to the base count
    assert ds.stats.index_stats("vector_idx")["num_unindexed_rows"] == 0
    # the same model: nothing was retrained, the new rows coded with the same bounds
    after = dli.load_model(uri, "vector_idx").model
    assert np.array_equal(after.ivf_centroids, saved.ivf_centroids) and after.sq_bounds == saved.sq_bounds
    truth = exact_knn(vectors[:8000], queries, 10, "l2")
    assert _recall(ds, queries, truth, nprobes=8) > 0.85


def test_drifted_append_advises_retraining(tmp_path, vectors):
    uri = str(tmp_path / "drift.lance")
    write_vectors(uri, vectors[:4000], max_rows_per_file=2000)
    dli.create_index(uri, "vector", "IVF_FLAT", num_partitions=16, scheduler="sync", seed=3)
    shifted = vectors[4000:6000] + 6.0  # far from every trained centroid
    write_vectors(uri, shifted, max_rows_per_file=2000, mode="append", start_id=4000)
    with pytest.warns(UserWarning, match="drifted.*Retraining is advised"):
        r = dli.update_index(uri, "vector", scheduler="sync", drift_threshold=1.5)
    assert r.retrain_advised and r.drift["ratio"] > 1.5 and r.action == "delta"
    assert r.drift["new_rows"] > 0 and r.drift["old_rows"] > 0
    # the rows are indexed all the same
    assert r.dataset().stats.index_stats("vector_idx")["num_unindexed_rows"] == 0


def test_compaction_and_deletes_before_an_update_leave_no_row_unindexed(tmp_path, vectors, queries):
    uri = str(tmp_path / "compact.lance")
    write_vectors(uri, vectors[:6000], max_rows_per_file=1000)
    dli.create_index(uri, "vector", "IVF_FLAT", num_partitions=16, num_tasks=2, scheduler="sync")
    write_vectors(uri, vectors[6000:9000], max_rows_per_file=500, mode="append", start_id=6000)
    ds = lance.dataset(uri)
    ds.delete("id < 1000")  # the whole of fragment 0: the index still names it
    lance.dataset(uri).optimize.compact_files(target_rows_per_fragment=3000)
    ds = lance.dataset(uri)
    live = {f.fragment_id for f in ds.get_fragments()}
    covered = set().union(*_index_segments(ds).values())
    assert covered - live, "the index names no vanished fragment: the test proves nothing"
    assert live - covered, "compaction left nothing uncovered: the test proves nothing"
    r = dli.update_index(uri, "vector", scheduler="sync")
    assert r.action == "delta" and set(r.new_fragments) == live - covered
    assert set(r.stale_fragments) == covered - live and "no longer exist" in " ".join(r.reasons)
    ds = r.dataset()
    assert ds.stats.index_stats("vector_idx")["num_unindexed_rows"] == 0
    ids = ds.to_table(columns=["id"]).column("id").to_numpy()
    truth = ids[exact_knn(vectors[ids], queries, 10, "l2")]
    assert _recall(ds, queries, truth, nprobes=16) == pytest.approx(1.0)  # every partition: exact


def test_another_writer_indexing_the_same_fragments_is_refused_and_leaves_nothing(tmp_path, vectors):
    uri = str(tmp_path / "race.lance")
    write_vectors(uri, vectors[:4000], max_rows_per_file=2000)
    dli.create_index(uri, "vector", "IVF_FLAT", num_partitions=8, scheduler="sync")
    write_vectors(uri, vectors[4000:6000], max_rows_per_file=1000, mode="append", start_id=4000)
    ours = dli.update_index(uri, "vector", scheduler="sync", compute=False)
    theirs = dli.update_index(uri, "vector", scheduler="sync")
    assert theirs.action == "delta"
    committed = committed_segment_uuids(lance.dataset(uri))
    with pytest.raises(dli.CoverageError, match="another writer"):
        dli.run(ours, scheduler="sync")
    assert committed_segment_uuids(lance.dataset(uri)) == committed
    assert not any(ours.plan.segment_uuid(i) in index_dirs(uri) for i in range(ours.plan.num_tasks))


def test_a_model_at_a_chosen_place_and_clear_errors_before_work(tmp_path, vectors):
    uri = str(tmp_path / "errs.lance")
    elsewhere = str(tmp_path / "models" / "vec.json")
    write_vectors(uri, vectors[:3000], max_rows_per_file=1000)
    dli.create_index(uri, "vector", "IVF_RQ", num_partitions=8, scheduler="sync", model_uri=elsewhere)
    assert os.path.exists(elsewhere) and not os.path.exists(os.path.join(uri, "_dli"))
    saved = dli.load_model(uri, model_uri=elsewhere)
    assert saved.model.rabitq_model and dli.SavedModel.from_json(saved.to_json()).model.equals(saved.model)
    write_vectors(uri, vectors[3000:4000], max_rows_per_file=1000, mode="append", start_id=3000)
    v = lance.dataset(uri).version
    with pytest.raises(dli.InvalidInputError, match="no saved model.*model_uri"):
        dli.update_index(uri, "vector", scheduler="sync")
    with pytest.raises(dli.InvalidInputError, match="no index named 'other_idx'"):
        dli.update_index(uri, name="other_idx", scheduler="sync")
    lance.dataset(uri).create_index("vector", "IVF_FLAT", num_partitions=4, replace=True)  # another tool
    with pytest.raises(dli.InvalidInputError, match="does not match index"):
        dli.update_index(uri, "vector", scheduler="sync", model_uri=elsewhere)
    assert lance.dataset(uri).version == v + 1  # only the other tool's commit


def test_update_on_a_local_cluster_merges_flat_segments(tmp_path, vectors, queries, cluster_client):
    uri = str(tmp_path / "cluster.lance")
    write_vectors(uri, vectors[:4000], max_rows_per_file=1000)
    dli.create_index(uri, "vector", "IVF_FLAT", num_partitions=16, num_tasks=2, client=cluster_client)
    write_vectors(uri, vectors[4000:8000], max_rows_per_file=1000, mode="append", start_id=4000)
    r = dli.update_index(uri, "vector", client=cluster_client, max_deltas=1, num_tasks=2)
    assert r.action == "merge" and r.num_segments == 1 and r.num_segments_built == 2
    ds = r.dataset()
    assert committed_segment_uuids(ds) == set(r.segments_added)
    # merged-away new segments are gone; only the committed ones and the old version's remain
    assert index_dirs(uri) - committed_segment_uuids(ds) <= set(r.segments_removed)
    truth = exact_knn(vectors[:8000], queries, 10, "l2")
    assert _recall(ds, queries, truth, nprobes=16) == pytest.approx(1.0)


def test_a_saved_model_and_updates_on_an_object_store(s3, vectors):
    """The saved model goes through the same storage_options as Lance (a moto S3 server)."""
    uri = "s3://vectors/update.lance"
    write_vectors(uri, vectors[:3000], max_rows_per_file=1000, storage_options=s3)
    dli.create_index(uri, "vector", "IVF_FLAT", num_partitions=8, scheduler="sync", storage_options=s3)
    saved = dli.load_model(uri, "vector_idx", storage_options=s3)
    assert saved.model.ivf_centroids.shape == (8, 32)
    write_vectors(uri, vectors[3000:4000], max_rows_per_file=1000, mode="append", start_id=3000, storage_options=s3)
    r = dli.update_index(uri, "vector", scheduler="sync", storage_options=s3)
    assert r.action == "delta" and r.num_rows_indexed == 1000
    write_vectors(uri, vectors[4000:5000], max_rows_per_file=1000, mode="append", start_id=4000, storage_options=s3)
    # max_deltas=0: the committed segments (files listed on S3) are merged with the new one
    r = dli.update_index(uri, "vector", scheduler="sync", storage_options=s3, max_deltas=0)
    assert r.action == "merge" and r.num_segments == 1 and len(r.segments_removed) == 2
    ds = lance.dataset(uri, storage_options=s3)
    stats = ds.stats.index_stats("vector_idx")
    assert stats["num_unindexed_rows"] == 0 and stats["num_indexed_rows"] == 5000 and stats["num_segments"] == 1


def test_rq_merges_committed_shards_but_never_a_merged_segment(tmp_path, vectors, queries):
    """Which committed segments Lance can merge again is read from its statistics
    (packed RQ codes: no). Were it wrong, Lance's merge would fail ("packed RQ codes")."""
    from dask_lance_index.update import segment_mergeable

    uri = str(tmp_path / "rq.lance")
    write_vectors(uri, vectors[:4000], max_rows_per_file=1000)
    dli.create_index(uri, "vector", "IVF_RQ", num_partitions=8, num_tasks=2, scheduler="sync", seed=4)
    n, actions = 4000, []
    for _ in range(3):
        write_vectors(uri, vectors[n : n + 1000], max_rows_per_file=1000, mode="append", start_id=n)
        n += 1000
        r = dli.update_index(uri, "vector", scheduler="sync", max_deltas=1, num_tasks=1)
        actions.append(r.action)
        stats = r.dataset().stats.index_stats("vector_idx")
        mergeable = [segment_mergeable("IVF_RQ", s) for s in stats["indices"]]
        assert stats["num_unindexed_rows"] == 0 and stats["num_indexed_rows"] == n
        if r.action == "delta":
            assert sorted(mergeable) == [False, True]  # the merged base, the new shard
        else:
            assert not any(mergeable)
    assert actions == ["delta", "merge", "rebuild"], actions
    truth = exact_knn(vectors[:n], queries[:100], 10, "l2")
    assert _recall(r.dataset(), queries[:100], truth, nprobes=8, refine_factor=5) > 0.9


def test_a_failure_to_save_the_model_warns_and_keeps_the_committed_index(tmp_path, vectors):
    uri = str(tmp_path / "nosave.lance")
    write_vectors(uri, vectors[:2000], max_rows_per_file=1000)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.warns(UserWarning, match="committed but its model could not be saved"):
        ds = dli.create_index(uri, "vector", "IVF_FLAT", num_partitions=4, scheduler="sync",
                              model_uri=str(blocker / "model.json"))
    assert [d.name for d in ds.describe_indices()] == ["vector_idx"]


def test_an_update_whose_driver_died_resumes_from_its_journal(tmp_path, vectors):
    """An update keeps a journal as a build does: run again with that journal, it reuses the
    segments built before the driver died and builds only the rest."""
    import dask
    from dask.delayed import Delayed

    from dask_lance_index.recovery import BuildJournal

    from .conftest import count_builds

    uri = str(tmp_path / "resume.lance")
    write_vectors(uri, vectors[:4000], max_rows_per_file=2000)
    dli.create_index(uri, "vector", "IVF_FLAT", num_partitions=8, scheduler="sync")
    write_vectors(uri, vectors[4000:8000], max_rows_per_file=1000, mode="append", start_id=4000)
    jloc = str(tmp_path / "journal")
    upd = dli.update_index(uri, "vector", scheduler="sync", num_tasks=4, journal=jloc, compute=False)
    tok = upd.plan.build_id[:8]
    graph = dict(upd.__dask_graph__())
    # The driver "dies" after two of the four build tasks: nothing is committed.
    dask.compute(*[Delayed(f"dli-build-{tok}-{i}", graph) for i in (0, 1)], scheduler="sync")
    j = BuildJournal.load(jloc)
    assert j.job["kind"] == "update" and sorted(s.slot for s in j.segments) == [0, 1]
    version = lance.dataset(uri).version
    with pytest.raises(dli.InvalidInputError, match="records an update, not a build"):
        dli.create_index(uri, "vector", "IVF_FLAT", replace=True, scheduler="sync", journal=jloc)
    assert lance.dataset(uri).version == version

    with count_builds() as seen:
        result = dli.update_index(uri, "vector", scheduler="sync", journal=jloc)
    assert seen == {2: 1, 3: 1}  # the journaled segments were not built again
    assert result.action == upd.decision.action and result.num_segments_built == 4
    stats = result.dataset().stats.index_stats("vector_idx")
    assert stats["num_unindexed_rows"] == 0 and stats["num_indexed_rows"] == 8000
    after = BuildJournal.load(jloc)
    assert after.status == "committed" and after.version == result.version
    assert index_dirs(uri) >= committed_segment_uuids(result.dataset())
    assert not (index_dirs(uri) - committed_segment_uuids(lance.dataset(uri, version=version))
                - committed_segment_uuids(result.dataset()))  # nothing stray


def test_new_hnsw_segments_merged_among_themselves_get_their_graphs_at_the_merge(tmp_path, vectors, queries):
    """An update whose new IVF_HNSW_PQ segments are merged only with each other (the
    committed whole-data segment stores transposed codes: Lance cannot merge it) writes them
    as rows only, and the merge builds the graphs once, as a build of several tasks does."""
    from lance.file import LanceFileReader

    uri = str(tmp_path / "hpq.lance")
    write_vectors(uri, vectors[:6000], max_rows_per_file=3000)
    dli.create_index(uri, "vector", "IVF_HNSW_PQ", num_partitions=8, num_sub_vectors=8, scheduler="sync", seed=2)
    write_vectors(uri, vectors[6000:12000], max_rows_per_file=3000, mode="append", start_id=6000)
    upd = dli.update_index(uri, "vector", scheduler="sync", max_deltas=1, num_tasks=2, compute=False)
    assert upd.decision.action == "merge" and upd.decision.merge_segments == ()
    r = upd.compute(scheduler="sync")
    assert r.num_merges == 1
    ds = r.dataset()
    stats = ds.stats.index_stats("vector_idx")
    assert stats["num_unindexed_rows"] == 0 and stats["num_indexed_rows"] == 12000 and len(stats["indices"]) == 2
    for seg in _index_segments(ds):  # both committed segments have graphs
        meta = LanceFileReader(os.path.join(uri, "_indices", seg, "index.idx")).metadata().schema.metadata
        assert b"lance:hnsw" in meta
    truth = exact_knn(vectors[:12000], queries[:100], 10, "l2")
    assert _recall(ds, queries[:100], truth, nprobes=8, refine_factor=5) > 0.9
