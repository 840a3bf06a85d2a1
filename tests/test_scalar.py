"""Scalar and full-text indexes built in parts on Dask answer as Lance's own single-process index.

Every type is built in at least three tasks on a real LocalCluster (worker processes) and
compared, query by query, with ``ds.create_scalar_index`` on the same data; the explain
plan must show the index in use. Bad input fails before any task runs, a failed build or
replace leaves nothing of itself, and what pylance 14.0.2 does with parts is pinned.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil

import lance
import numpy as np
import pyarrow as pa
import pytest
from lance.query import MatchQuery, PhraseQuery

import dask_lance_index as dli
from dask_lance_index.build import ENGINES
from dask_lance_index.errors import DatasetChangedError, IndexExistsError, InvalidInputError
from dask_lance_index.plan import (
    SCALAR_INDEX_TYPES,
    FragmentInfo,
    IndexPlan,
    check_scalar_column,
    make_scalar_plan,
    scalar_params,
)

from .conftest import committed_segment_uuids, index_dirs

ROWS, PER_FRAGMENT = 12_000, 2_000
WORDS = ("time life love world people man work day night money friend truth mind heart word god war "
         "peace river stone light dark fire water king queen house road city sea star sun moon tree "
         "garden music book letter").split()


def _table(seed: int = 3) -> pa.Table:
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, len(WORDS) + 1)  # Zipf-like, as real text
    p /= p.sum()
    text = [" ".join(rng.choice(WORDS, rng.integers(2, 12), p=p)) for _ in range(ROWS)]
    null = rng.random(ROWS) < 0.05
    ids = rng.integers(0, 3_000, ROWS)
    return pa.table({
        "id": pa.array(ids, mask=null),
        "cat": pa.array([None if n else "abcdefg"[i % 7] for i, n in zip(rng.integers(0, 7, ROWS), null)]),
        "tags": pa.array([list(rng.choice(WORDS[:8], rng.integers(0, 4), replace=False)) for _ in range(ROWS)],
                         pa.list_(pa.string())),
        "text": pa.array([None if n else t for t, n in zip(text, rng.random(ROWS) < 0.03)], pa.large_string()),
        "meta": pa.array([{"year": int(y), "title": t[:20]} for y, t in zip(rng.integers(1900, 2030, ROWS), text)],
                         pa.struct([("year", pa.int32()), ("title", pa.string())])),
        "empty": pa.array([None] * ROWS, pa.int64()),
    })


# index type -> (column, Lance options, queries: filter strings or full-text queries)
CASES = {
    "BTREE": ("id", {}, ["id < 40", "id = 1234", "id IN (1, 2, 3, 2999)", "id >= 2990", "id IS NULL"]),
    "BITMAP": ("cat", {}, ["cat = 'c'", "cat IN ('a', 'g')", "cat IS NULL"]),
    "LABEL_LIST": ("tags", {}, ["array_has_any(tags, ['love'])", "array_has_all(tags, ['time', 'life'])"]),
    "INVERTED": ("text", {"with_position": True},
                 ["river", "queen", "garden music", PhraseQuery("love world", "text"), PhraseQuery("king queen", "text")]),
    "NGRAM": ("text", {}, ["contains(text, 'rive')", "contains(text, 'ng que')"]),
    "ZONEMAP": ("id", {}, ["id BETWEEN 100 AND 120", "id = 7"]),
    "BLOOMFILTER": ("id", {}, ["id = 77", "id = 2500"]),
}


def _rows(ds, index_type: str, query) -> list[int]:
    if index_type == "INVERTED":
        t = ds.to_table(columns=["id"], full_text_query=query, with_row_id=True)
    else:
        t = ds.to_table(columns=["id"], filter=query, with_row_id=True)
    return sorted(t["_rowid"].to_pylist())


def _explain(ds, index_type: str, query) -> str:
    if index_type == "INVERTED":
        return ds.scanner(full_text_query=query).explain_plan()
    return ds.scanner(filter=query).explain_plan()


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> str:
    """The data, 6 fragments of 2,000 rows, written once; tests copy it."""
    uri = str(tmp_path_factory.mktemp("scalar") / "base.lance")
    lance.write_dataset(_table(), uri, max_rows_per_file=PER_FRAGMENT)
    return uri


@pytest.fixture(scope="module")
def reference(base, tmp_path_factory):
    """Lance's own single-process index of each type on a copy of the data: ``{type: answers}``."""
    out = {}
    for t, (column, options, queries) in CASES.items():
        uri = str(tmp_path_factory.mktemp("ref") / f"{t}.lance")
        shutil.copytree(base, uri)
        ds = lance.dataset(uri)
        ds.create_scalar_index(column, t, **options)
        out[t] = [_rows(ds, t, q) for q in queries]
    return out


@pytest.fixture
def data(base, tmp_path) -> str:
    uri = str(tmp_path / "data.lance")
    shutil.copytree(base, uri)
    return uri


def _leftovers(uri: str) -> list[str]:
    """Everything of a build still on storage besides the committed index: its journal."""
    path = os.path.join(uri, "_dli")
    return os.listdir(path) if os.path.isdir(path) else []


@pytest.mark.parametrize("index_type", list(CASES))
def test_each_type_built_in_parts_answers_as_lance(index_type, data, reference, cluster_client):
    column, options, queries = CASES[index_type]
    build = dli.create_scalar_index(data, column, index_type, num_tasks=3, client=cluster_client,
                                    compute=False, **options)
    assert build.plan.num_tasks == 3 and build.plan.engine == "scalar"
    result = dli.run(build, client=cluster_client)
    assert (result.num_segments_built, result.num_merges, len(result.segments)) == (3, 1, 1)
    ds = result.dataset()
    assert ds.version == build.plan.version + 1  # one commit
    (desc,) = ds.describe_indices()
    assert desc.name == f"{column}_idx" and desc.num_rows_indexed == ROWS
    assert sorted(desc.segments[0].fragment_ids) == sorted(f.fragment_id for f in ds.get_fragments())
    for query, want in zip(queries, reference[index_type]):
        assert _rows(ds, index_type, query) == want, query
        plan = _explain(ds, index_type, query)
        if index_type == "INVERTED":
            assert ("PhraseQuery" if isinstance(query, PhraseQuery) else "MatchQuery") in plan
        else:
            assert "ScalarIndexQuery" in plan and f"@{column}_idx(" in plan, plan
    assert index_dirs(data) == committed_segment_uuids(ds)  # the parts merged away, nothing else
    assert _leftovers(data) == []


def test_unmerged_parts_and_a_full_text_top_k(data, base, tmp_path, reference):
    """num_segments=3 commits the parts unmerged: the same answers; merged, Lance's own top 10 scores."""
    column, options, queries = CASES["INVERTED"]
    ds = dli.create_scalar_index(data, column, "FTS", num_tasks=3, num_segments=3, scheduler="sync", **options)
    assert len(ds.describe_indices()[0].segments) == 3
    assert [_rows(ds, "INVERTED", q) for q in queries] == reference["INVERTED"]
    ds = dli.create_scalar_index(data, column, "INVERTED", num_tasks=3, scheduler="sync", **options)
    assert len(ds.describe_indices()[0].segments) == 1
    ref_uri = str(tmp_path / "ref.lance")
    shutil.copytree(base, ref_uri)
    ref = lance.dataset(ref_uri)
    ref.create_scalar_index(column, "INVERTED", **options)
    for q in ("river", "garden music", PhraseQuery("king queen", "text")):
        top = ds.to_table(columns=["id"], full_text_query=q, limit=10)
        want = ref.to_table(columns=["id"], full_text_query=q, limit=10)
        assert np.allclose(top["_score"].to_numpy(), want["_score"].to_numpy()), q


def test_nested_field_and_large_string(data, tmp_path):
    ref_uri = str(tmp_path / "ref.lance")
    shutil.copytree(data, ref_uri)
    ref = lance.dataset(ref_uri)
    ref.create_scalar_index("meta.year", "BTREE")
    ds = dli.create_scalar_index(data, "meta.year", "BTREE", num_tasks=3, scheduler="sync")
    for q in ("meta.year < 1905", "meta.year = 2000"):
        assert _rows(ds, "BTREE", q) == _rows(ref, "BTREE", q)
        assert "ScalarIndexQuery" in ds.scanner(filter=q).explain_plan()
    ref.create_scalar_index("meta.title", "INVERTED")
    ds = dli.create_scalar_index(data, "meta.title", "INVERTED", num_tasks=3, scheduler="sync")
    for q in ("river", "love"):
        want = ref.to_table(columns=["id"], full_text_query=MatchQuery(q, "meta.title"), with_row_id=True)
        got = ds.to_table(columns=["id"], full_text_query=MatchQuery(q, "meta.title"), with_row_id=True)
        assert sorted(got["_rowid"].to_pylist()) == sorted(want["_rowid"].to_pylist()) and got.num_rows > 0
    assert pa.types.is_large_string(ds.schema.field("text").type)  # INVERTED / NGRAM cases index it


def _fails_cleanly(data, call, error, *needles):
    before = (lance.dataset(data).version, index_dirs(data))
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    assert "Fix:" in message and all(n in message for n in needles), message
    assert (lance.dataset(data).version, index_dirs(data)) == before
    assert _leftovers(data) == []


@pytest.mark.parametrize("column,index_type,needles", [
    ("nope", "BTREE", ["'nope'", "meta.year"]),
    ("id", "INVERTED", ["int64", "INVERTED", "BTREE"]),
    ("cat", "LABEL_LIST", ["LABEL_LIST", "list"]),
    ("tags", "NGRAM", ["NGRAM", "text"]),
    ("id", "HASH", ["'HASH'", "BTREE", "INVERTED"]),
    ("id", "IVF_PQ", ["create_index"]),
    ("empty", "BTREE", ["no values"]),
])
def test_bad_input_fails_before_any_task(data, column, index_type, needles):
    def call():
        dli.create_scalar_index(data, column, index_type, scheduler="sync")
    _fails_cleanly(data, call, InvalidInputError, *needles)


def test_an_existing_index_without_replace(data):
    ds = dli.create_scalar_index(data, "id", "BTREE", scheduler="sync")
    _fails_cleanly(data, lambda: dli.create_scalar_index(data, "id", "BTREE", replace=False, scheduler="sync"),
                   IndexExistsError, "'id_idx'", "replace=True")
    # replace=True (the default): the new index replaces the old in one commit, one index of the name
    again = dli.create_scalar_index(data, "id", "BTREE", scheduler="sync", num_tasks=2)
    assert again.version == ds.version + 1
    assert [(d.name, len(d.segments)) for d in again.describe_indices()] == [("id_idx", 1)]
    assert committed_segment_uuids(again).isdisjoint(committed_segment_uuids(ds))


def test_options_reach_lance(data):
    """Lance's keyword arguments reach every part: without positions a phrase query fails."""
    ds = dli.create_scalar_index(data, "text", "INVERTED", num_tasks=3, scheduler="sync", with_position=False)
    with pytest.raises(Exception, match="position"):
        ds.to_table(full_text_query=PhraseQuery("love world", "text"))
    with pytest.raises(InvalidInputError, match="fragment_ids"):
        dli.create_scalar_index(data, "text", "INVERTED", scheduler="sync", fragment_ids=[0])


class _Boom(RuntimeError):
    pass


@pytest.fixture
def failing_task():
    """Build task 1 fails after Lance wrote its segment (a uuid Lance picked, journaled nowhere)."""
    engine = ENGINES["scalar"]

    def build_segment(plan, task, *a, _real=engine.build_segment, **k):
        result = _real(plan, task, *a, **k)
        if task == 1:
            raise _Boom("task 1 dies after writing its segment")
        return result

    engine.build_segment = build_segment
    yield
    del engine.build_segment


def test_a_failed_replace_keeps_the_old_index_and_leaves_nothing(data, failing_task):
    old = lance.dataset(data)
    old.create_scalar_index("text", "INVERTED", name="text_idx")
    old = lance.dataset(data)
    before = index_dirs(data)
    with pytest.raises(_Boom):
        dli.create_scalar_index(data, "text", "INVERTED", num_tasks=3, scheduler="sync", retries=0)
    ds = lance.dataset(data)
    assert ds.version == old.version
    assert committed_segment_uuids(ds) == committed_segment_uuids(old)
    assert index_dirs(data) == before  # every part of the failed build removed, Lance-named ones too
    assert _leftovers(data) == []
    assert ds.to_table(full_text_query="river").num_rows > 0


def test_compaction_during_the_build_is_refused(data):
    build = dli.create_scalar_index(data, "id", "BTREE", num_tasks=3, compute=False)
    lance.dataset(data).optimize.compact_files(target_rows_per_fragment=ROWS)
    with pytest.raises(DatasetChangedError, match="Fix:"):
        dli.run(build, scheduler="sync")
    assert index_dirs(data) == set() and lance.dataset(data).describe_indices() == []


def test_the_plan_is_pure_and_round_trips():
    frags = [FragmentInfo(i, n) for i, n in enumerate([5000, 100, 3000, 2000, 2000, 10])]
    params = scalar_params("fts", {"with_position": True, "base_tokenizer": "whitespace"})
    plan = make_scalar_plan(uri="mem://x", version=3, column="text", fragments=frags, params=params, parallelism=3)
    assert params.index_type == "INVERTED" and params.lance_kwargs() == {"base_tokenizer": "whitespace",
                                                                          "with_position": True}
    assert plan.num_tasks == 3 and sorted(f for g in plan.groups for f in g) == list(range(6))
    assert max(plan.group_rows()) == 5000 and plan.train == () and plan.merges.num_merges == 1
    assert IndexPlan.from_json(plan.to_json()) == plan == pickle.loads(pickle.dumps(plan))
    assert "INVERTED index 'text_idx'" in str(plan) and "with_position=True" in str(plan)
    assert set(SCALAR_INDEX_TYPES) == set(CASES)
    # an INVERTED part is finalized by a merge: unmerged parts each go through one alone
    alone = make_scalar_plan(uri="mem://x", version=3, column="text", fragments=frags, params=params,
                             num_tasks=3, num_segments=3)
    assert [[s.inputs for s in st] for st in alone.merges.stages] == [[(0,), (1,), (2,)]]
    assert alone.merges.final == (3, 4, 5)
    btree = make_scalar_plan(uri="mem://x", version=3, column="id", fragments=frags, params=scalar_params("BTREE"),
                             num_tasks=3, num_segments=3)
    assert btree.merges.stages == () and btree.merges.final == (0, 1, 2)
    with pytest.raises(InvalidInputError, match="plain values"):
        scalar_params("BTREE", {"callback": object()})
    # the column check follows what Lance 14.0.2 builds (measured): booleans take ZONEMAP, not BLOOMFILTER
    check_scalar_column("b", "ZONEMAP", pa.bool_())
    check_scalar_column("t", "INVERTED", pa.list_(pa.large_string()))
    for index_type, t in (("BLOOMFILTER", pa.bool_()), ("LABEL_LIST", pa.string()), ("NGRAM", pa.int32()),
                          ("BTREE", pa.list_(pa.int64())), ("INVERTED", pa.float32())):
        with pytest.raises(InvalidInputError, match=f"the {index_type} index needs .* Fix: "):
            check_scalar_column("c", index_type, t)


def test_the_cli_builds_a_full_text_index(data, reference, cluster_client, capsys):
    from dask_lance_index.cli import main

    argv = ["build", data, "--index-type", "INVERTED", "--column", "text", "--num-tasks", "3",
            "--lance-option", "with_position=true", "--scheduler", cluster_client.scheduler.address, "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["result"]["num_segments_built"] == 3 and out["plan"]["params"]["options"] == '{"with_position": true}'
    ds = lance.dataset(data)
    assert [_rows(ds, "INVERTED", q) for q in CASES["INVERTED"][2]] == reference["INVERTED"]
    # an existing index without --replace: a conflict (3); a vector-only option: bad input (2)
    assert main(argv[:-1]) == 3
    assert main(["plan", data, "--index-type", "BTREE", "--column", "id", "--num-partitions", "4"]) == 2
    assert "vector indexes only" in capsys.readouterr().err


def _lance_answers(uri: str, where: str, index_type: str) -> list[list[int]]:
    """Lance's own single-process index on a copy of ``uri`` as it is now: its answers."""
    column, options, queries = CASES[index_type]
    shutil.copytree(uri, where)
    ref = lance.dataset(where)
    ref.drop_index(f"{column}_idx")
    ref = lance.dataset(where)
    ref.create_scalar_index(column, index_type, name="ref", **options)
    return [_rows(ref, index_type, q) for q in queries]


@pytest.mark.parametrize("index_type", ["INVERTED", "BTREE"])
def test_update_indexes_new_fragments_without_rebuilding_old_parts(index_type, data, tmp_path):
    column, options, queries = CASES[index_type]
    ds = dli.create_scalar_index(data, column, index_type, num_tasks=3, scheduler="sync", **options)
    old = committed_segment_uuids(ds)
    more = _table(seed=9)
    lance.write_dataset(more.slice(0, 3000), data, mode="append", max_rows_per_file=1500)
    result = dli.update_index(data, column, num_tasks=2, scheduler="sync")
    ds = lance.dataset(data)
    assert result.action == "delta" and result.num_segments_built == 2
    assert old < committed_segment_uuids(ds)  # the old part kept as it was, the new ones beside it
    assert ds.stats.index_stats(f"{column}_idx")["num_unindexed_rows"] == 0
    assert [_rows(ds, index_type, q) for q in queries] == _lance_answers(data, str(tmp_path / "a.lance"), index_type)
    lance.write_dataset(more.slice(3000, 2000), data, mode="append")
    merged = dli.update_index(data, column, max_deltas=0, scheduler="sync")
    ds = lance.dataset(data)
    assert merged.action == "merge" and len(committed_segment_uuids(ds)) == 1
    assert ds.stats.index_stats(f"{column}_idx")["num_unindexed_rows"] == 0
    assert [_rows(ds, index_type, q) for q in queries] == _lance_answers(data, str(tmp_path / "b.lance"), index_type)
    assert index_dirs(data) >= committed_segment_uuids(ds) and _leftovers(data) == []


def test_a_crashed_build_resumes_without_rebuilding_finished_parts(data, reference, tmp_path):
    """Two of three parts built, then the driver is gone: the same call with the journal builds
    only the third, and the index answers as Lance's."""
    import dask

    from .conftest import count_builds

    column, options, queries = CASES["BTREE"]
    jloc = str(tmp_path / "journal")
    build = dli.create_scalar_index(data, column, "BTREE", num_tasks=3, journal=jloc, compute=False)
    tok = build.plan.build_id[:8]
    dask.get(dict(build.__dask_graph__()), [f"dli-build-{tok}-0", f"dli-build-{tok}-1"])  # then the "crash"
    with count_builds() as seen:
        ds = dli.create_scalar_index(data, column, "BTREE", num_tasks=3, journal=jloc, scheduler="sync")
    assert seen == {2: 1}
    assert [_rows(ds, "BTREE", q) for q in queries] == reference["BTREE"]
    assert index_dirs(data) == committed_segment_uuids(ds)


def test_a_racing_writer_of_the_same_index_wins_cleanly(data):
    """Another writer commits an index of the name during the build (replace=False): the commit
    refuses, removes every part of ours, and leaves the other writer's index as it was."""
    build = dli.create_scalar_index(data, "id", "BTREE", replace=False, num_tasks=3, compute=False)
    lance.dataset(data).create_scalar_index("id", "BTREE", name="id_idx")
    theirs = lance.dataset(data)
    with pytest.raises(IndexExistsError, match="another writer"):
        dli.run(build, scheduler="sync")
    ds = lance.dataset(data)
    assert ds.version == theirs.version and index_dirs(data) == committed_segment_uuids(theirs)
    assert _leftovers(data) == []
