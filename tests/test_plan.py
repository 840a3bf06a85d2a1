"""The pure planners: no dataset, no cluster."""

import json
import pickle

import pytest

from dask_lance_index.build import resolve_engine
from dask_lance_index.build.engines.precomputed import (DOT_GRAPH_ROWS, DOT_MOST_DIRECTIONS_ROWS,
                                                         DOT_ONE_NORM_SPREAD_ROWS, DOT_SPREAD_GRAPH_ROWS,
                                                         DOT_WIDE_GRAPH_ROWS,
                                                         graphs_left_to_lance, spills)
from dask_lance_index.errors import InvalidInputError
from dask_lance_index.plan import (
    AGREEMENT_ROWS,
    HIERARCHICAL_SAMPLE_RATE,
    SAMPLE_RATE,
    FragmentInfo,
    IndexParams,
    IndexPlan,
    MergePlan,
    allocate_samples,
    default_num_partitions,
    default_num_sub_vectors,
    group_fragments,
    plan_merges,
    resolve_params,
    training_sample_size,
)


def frags(*rows):
    return [FragmentInfo(i, r) for i, r in enumerate(rows)]


def test_groups_balance_rows_and_keep_every_fragment_once():
    fs = frags(900, 100, 500, 500, 400, 100, 300)
    groups = group_fragments(fs, num_tasks=3)
    assert len(groups) == 3
    ids = [i for g in groups for i in g]
    assert sorted(ids) == list(range(len(fs)))
    rows = {f.fragment_id: f.num_rows for f in fs}
    loads = [sum(rows[i] for i in g) for g in groups]
    assert max(loads) - min(loads) <= 100  # 2800 rows: 900/1000/900 or better
    assert all(list(g) == sorted(g) for g in groups)


def test_groups_never_more_tasks_than_fragments_and_rows_per_task():
    fs = frags(10, 10)
    assert len(group_fragments(fs, num_tasks=8)) == 2
    fs = frags(*([1000] * 10))
    assert len(group_fragments(fs, rows_per_task=2500)) == 4
    assert len(group_fragments(fs, rows_per_task=10**9, min_tasks=3)) == 3
    with pytest.raises(InvalidInputError, match="not both"):
        group_fragments(fs, num_tasks=2, rows_per_task=10)
    with pytest.raises(InvalidInputError, match="no fragments"):
        group_fragments([], num_tasks=2)


def test_sample_allocation_is_proportional_and_exact():
    fs = frags(1000, 3000, 0, 6000)
    alloc = allocate_samples(fs, 1000)
    assert sum(alloc) == 1000
    assert alloc[2] == 0
    assert alloc == (100, 300, 0, 600)
    assert sum(allocate_samples(fs, 10**9)) == 10000  # never more than the rows
    odd = allocate_samples(frags(1, 1, 1), 2)
    assert sum(odd) == 2 and max(odd) == 1


def test_lance_defaults():
    assert default_num_partitions(100) == 1
    assert default_num_partitions(8192 * 10) == 10
    assert default_num_partitions(10**12) == 4096
    assert default_num_partitions(100_000, 1000) == 100
    assert default_num_sub_vectors(128) == 8
    assert default_num_sub_vectors(50) == 25
    assert default_num_sub_vectors(7) == 1
    p = resolve_params("ivf_pq", dimension=128, num_rows=100_000)
    assert (p.index_type, p.metric, p.num_partitions, p.num_sub_vectors, p.num_bits) == ("IVF_PQ", "l2", 12, 8, 8)
    assert resolve_params("IVF_RQ", dimension=64, num_rows=10**4).num_bits == 5
    assert resolve_params("IVF_FLAT", dimension=3, num_rows=10, metric="Euclidean").metric == "l2"
    assert training_sample_size(p) == 256 * 256  # PQ: 2**8 code words * pq_sample_rate (256, as Lance) beats 12 * 256
    assert training_sample_size(resolve_params("IVF_FLAT", dimension=8, num_rows=10**6, num_partitions=1000)) == 256_000


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(index_type="IVF_TREE"), "index_type"),
        (dict(metric="hamming"), "metric"),
        (dict(index_type="IVF_PQ", num_sub_vectors=5), "does not divide"),
        (dict(index_type="IVF_RQ", dimension=20), "multiple of 8"),
        (dict(index_type="IVF_PQ", num_bits=6), "num_bits"),
        (dict(index_type="IVF_SQ", num_bits=4), "num_bits"),
        (dict(index_type="IVF_RQ", num_bits=10), "num_bits"),
        (dict(index_type="IVF_FLAT", num_bits=8), "quantized"),
        (dict(index_type="IVF_FLAT", num_sub_vectors=4), "PQ index types only"),
        (dict(index_type="IVF_PQ", m=16), "HNSW"),
        (dict(num_partitions=0), "positive"),
        (dict(num_partitions=5000), "exceeds"),
    ],
)
def test_bad_options_name_the_fix(kwargs, match):
    args = dict(index_type="IVF_FLAT", dimension=32, num_rows=1000)
    args.update(kwargs)
    t = args.pop("index_type")
    with pytest.raises(InvalidInputError, match=match):
        resolve_params(t, **args)


@pytest.mark.parametrize(
    "index_type, merges, depth",
    [("IVF_FLAT", True, None), ("IVF_PQ", True, 1), ("IVF_RQ", True, 1), ("IVF_HNSW_PQ", True, 1),
     ("IVF_HNSW_FLAT", True, 1), ("IVF_SQ", False, 0), ("IVF_HNSW_SQ", False, 0)],
)
def test_merge_plan_respects_what_lance_merges_correctly(index_type, merges, depth):
    rows = [100] * 40
    mp = plan_merges(index_type, rows, num_segments=1, fan_in=4)
    if not merges:
        assert mp.stages == () and mp.final == tuple(range(40))
        return
    if depth == 1:
        assert len(mp.stages) == 1 and mp.final == (40,)
        assert mp.stages[0][0].inputs == tuple(range(40))
    else:
        assert len(mp.stages) > 1 and len(mp.final) == 1
        assert all(len(s.inputs) <= 4 for st in mp.stages for s in st)
    # every input slot is consumed exactly once, and merged outputs only by later stages
    consumed = mp.consumed()
    assert len(consumed) == len(set(consumed))
    produced = set()
    for st in mp.stages:
        for s in st:
            assert all(i < 40 or i in produced for i in s.inputs)
        produced |= {s.output for s in st}


def test_merge_plan_to_several_segments_is_balanced():
    mp = plan_merges("IVF_PQ", [100, 100, 100, 100, 100, 500], num_segments=2)
    assert len(mp.final) == 2
    sizes = []
    for st in mp.stages:
        for s in st:
            sizes.append(sum([100, 100, 100, 100, 100, 500][i] for i in s.inputs))
    # 500 | 500: the big segment is kept alone and carried over unmerged
    assert sizes == [500]
    assert 5 in mp.final
    assert plan_merges("IVF_PQ", [1, 2], num_segments=3).stages == ()
    assert MergePlan.from_dict(json.loads(json.dumps(mp.to_dict()))) == mp


def test_plan_round_trips_through_json_and_pickle():
    fs = tuple(frags(500, 700, 300))
    params = resolve_params("IVF_PQ", dimension=16, num_rows=1500, num_partitions=4)
    plan = IndexPlan(
        uri="/data/x.lance", column="vector", name="vector_idx", version=3, dimension=16,
        params=params, fragments=fs, groups=group_fragments(fs, num_tasks=2),
        merges=plan_merges("IVF_PQ", [800, 700]), samples=allocate_samples(fs, 1024),
        build_id="abc", train=("ivf_centroids", "pq_codebook"), seed=5,
    )
    assert IndexPlan.from_json(plan.to_json()) == plan
    assert pickle.loads(pickle.dumps(plan)) == plan
    assert isinstance(plan.params, IndexParams)
    assert "IVF_PQ" in str(plan) and "merge stage 1" in str(plan)
    # segment uuids: unique per task, stable across calls, different per build
    uuids = {plan.segment_uuid(i) for i in range(plan.num_tasks)}
    assert len(uuids) == plan.num_tasks
    assert plan.segment_uuid(0) == IndexPlan.from_json(plan.to_json()).segment_uuid(0)
    assert plan.with_build_id("other").segment_uuid(0) != plan.segment_uuid(0)


def test_engine_choice():
    pq = resolve_params("IVF_PQ", dimension=32, num_rows=1000, num_partitions=4)
    assert resolve_engine("auto", pq).name == "precomputed"
    assert resolve_engine("lance", pq).name == "lance"
    pq4 = resolve_params("IVF_HNSW_PQ", dimension=32, num_rows=1000, num_partitions=4, num_bits=4)
    assert resolve_engine("auto", pq4).name == "partitions"  # Lance encodes 4-bit PQ; we assign
    flat = resolve_params("IVF_FLAT", dimension=32, num_rows=1000, num_partitions=4)
    assert resolve_engine("auto", flat).name == "precomputed"  # we write IVF_FLAT segments too
    assert resolve_engine("lance", flat).name == "lance"
    for t in ("IVF_HNSW_FLAT", "IVF_HNSW_SQ"):  # we build the graphs under every metric
        for metric in ("l2", "cosine", "dot"):
            params = resolve_params(t, dimension=32, num_rows=1000, num_partitions=4, metric=metric)
            assert resolve_engine("auto", params).name == "precomputed"
            assert resolve_engine("auto", params, num_rows=1000).name == "precomputed"
            assert resolve_engine("precomputed", params).name == "precomputed"
        # under dot up to DOT_GRAPH_ROWS rows a partition on average (our graphs' time grows
        # faster with a partition's rows than Lance's), then Lance's; past 256 dimensions, or
        # of a dimension not known, up to DOT_WIDE_GRAPH_ROWS
        dot = resolve_params(t, dimension=32, num_rows=10**6, num_partitions=4, metric="dot")
        assert resolve_engine("auto", dot, num_rows=4 * DOT_GRAPH_ROWS, dimension=256).name == "precomputed"
        assert resolve_engine("auto", dot, num_rows=4 * DOT_GRAPH_ROWS + 1, dimension=32).name == "partitions"
        assert DOT_WIDE_GRAPH_ROWS < DOT_GRAPH_ROWS
        for dimension in (257, 768, None):
            assert resolve_engine("auto", dot, num_rows=4 * DOT_WIDE_GRAPH_ROWS, dimension=dimension).name == "precomputed"
            assert resolve_engine("auto", dot, num_rows=4 * DOT_WIDE_GRAPH_ROWS + 1,
                                  dimension=dimension).name == "partitions"
        # rows drawn at planning: a projection on few directions is what their graphs cost
        # (768-d rows on 64 directions as 64-d ones, on 288 as wide ones); rows without one
        # are ours up to DOT_SPREAD_GRAPH_ROWS, DOT_ONE_NORM_SPREAD_ROWS of one norm (whatever
        # their spread projection: built as under l2), DOT_MOST_DIRECTIONS_ROWS with a spread
        # projection
        for directions, one_norm, spread, bound in ((64, False, False, DOT_GRAPH_ROWS), (64, True, False, DOT_GRAPH_ROWS),
                                                    (288, False, False, DOT_WIDE_GRAPH_ROWS),
                                                    (0, False, False, DOT_SPREAD_GRAPH_ROWS),
                                                    (0, True, False, DOT_ONE_NORM_SPREAD_ROWS),
                                                    (0, True, True, DOT_ONE_NORM_SPREAD_ROWS),
                                                    (0, False, True, DOT_MOST_DIRECTIONS_ROWS)):
            for rows, name in ((4 * bound, "precomputed"), (4 * bound + 1, "partitions")):
                assert resolve_engine("auto", dot, num_rows=rows, dimension=768, directions=directions,
                                      one_norm=one_norm, spread=spread).name == name, (directions, one_norm, spread, rows)
        assert DOT_SPREAD_GRAPH_ROWS < DOT_ONE_NORM_SPREAD_ROWS < DOT_MOST_DIRECTIONS_ROWS < DOT_WIDE_GRAPH_ROWS
    for t in ("IVF_HNSW_FLAT", "IVF_HNSW_SQ"):
        # our graphs whatever the partitions' size (250k rows a partition here)
        params = resolve_params(t, dimension=32, num_rows=10**6, num_partitions=4)
        assert resolve_engine("auto", params, num_rows=10**6).name == "precomputed"
        # the one task holds up to 1 GiB of rows (12 bytes of ids, the stored row), past that
        # it spills them to its disk: ours either way
        params = resolve_params(t, dimension=1024, num_rows=10**6, num_partitions=1000)
        stored = 4 * 1024 if t == "IVF_HNSW_FLAT" else 1024
        fits = (2**30) // (12 + stored)
        for rows in (fits, fits + 1):
            assert resolve_engine("auto", params, num_rows=rows, dimension=1024).name == "precomputed"
            assert spills(params, rows, 1024) == (rows > fits)
    # IVF_HNSW_PQ: always our codes; our graphs under l2 and cosine within the same bound, else Lance's
    for metric in ("l2", "cosine", "dot"):
        params = resolve_params("IVF_HNSW_PQ", dimension=32, num_rows=10**6, num_partitions=4, metric=metric)
        fits = (2**30) // (12 + params.num_sub_vectors)  # ids and a byte a sub-vector
        for rows in (10**6, fits + 1):
            assert resolve_engine("auto", params, num_rows=rows).name == "precomputed"
        assert graphs_left_to_lance(params, 10**6) == (metric == "dot")
        assert graphs_left_to_lance(params, fits) == (metric == "dot")
        assert graphs_left_to_lance(params, fits + 1)
    # IVF_SQ: we write the codes with the model's shared bounds, so its segments merge
    sq = resolve_params("IVF_SQ", dimension=32, num_rows=1000, num_partitions=4)
    assert resolve_engine("auto", sq).name == "precomputed"
    assert plan_merges("IVF_SQ", [10, 10, 10], engine="precomputed").final != (0, 1, 2)
    assert plan_merges("IVF_SQ", [10, 10, 10], engine="partitions").final == (0, 1, 2)
    # IVF_RQ: we write the codes under l2 and cosine; Lance's dot RaBitQ stores other factors
    for metric, engine in (("l2", "precomputed"), ("cosine", "precomputed"), ("dot", "partitions")):
        rq = resolve_params("IVF_RQ", dimension=32, num_rows=1000, num_partitions=4, metric=metric)
        assert resolve_engine("auto", rq).name == engine
    with pytest.raises(InvalidInputError, match="under l2 or cosine; Lance encodes IVF_RQ"):
        resolve_engine("precomputed", resolve_params("IVF_RQ", dimension=32, num_rows=1000, num_partitions=4, metric="dot"))
    with pytest.raises(InvalidInputError, match="8-bit PQ"):
        resolve_engine("artifact", resolve_params("IVF_RQ", dimension=32, num_rows=1000, num_partitions=4))
    with pytest.raises(InvalidInputError, match="not one of"):
        resolve_engine("gpu", flat)


def test_flat_tasks_written_by_us_are_bounded_in_bytes():
    """The precomputed engine holds an IVF_FLAT or IVF_SQ task's rows until it writes them: the
    planner keeps a task under FLAT_TASK_BYTES of held rows (262k rows at 1024-d for IVF_FLAT,
    1M for IVF_SQ), and does not split it further to give every worker a task (the merge would
    write every row again); other types do."""
    from dask_lance_index.plan import make_plan
    from dask_lance_index.plan.index_plan import FLAT_TASK_BYTES, held_row_bytes

    fs = frags(*([125_000] * 16))
    cases = (("IVF_FLAT", 1024, "precomputed", 8), ("IVF_FLAT", 1024, "partitions", 2),
             ("IVF_FLAT", 128, "precomputed", 1), ("IVF_SQ", 128, "precomputed", 1),
             ("IVF_SQ", 1024, "precomputed", 2), ("IVF_PQ", 128, "precomputed", 2))
    for index_type, dim, engine, want in cases:
        params = resolve_params(index_type, dimension=dim, num_rows=2_000_000, num_partitions=64)
        plan = make_plan(uri="/d.lance", version=1, column="vector", dimension=dim, fragments=fs, params=params,
                         engine=engine, parallelism=2)
        assert plan.num_tasks == want, (index_type, dim, engine, plan.num_tasks)
        assert (plan.merges.num_merges > 0) == (want > 1), plan.merges  # one task: nothing to merge
        if engine == "precomputed" and index_type in ("IVF_FLAT", "IVF_SQ"):
            assert max(plan.group_rows()) * held_row_bytes(index_type, dim) <= FLAT_TASK_BYTES


def test_hnsw_tasks_we_write_are_bounded_in_bytes_and_their_graphs_built_at_the_merge():
    """An HNSW index whose graphs we build is planned as IVF_FLAT is (tasks of at most
    FLAT_TASK_BYTES of held rows, not split further), and in several tasks its merges build
    the graphs: its tasks write their rows only, the final merge's segment gets graphs. Where
    Lance builds them, one task (Lance's merge would build every graph again)."""
    from dask_lance_index.plan import make_plan
    from dask_lance_index.plan.index_plan import FLAT_TASK_BYTES, held_row_bytes

    fs = frags(*([125_000] * 16))
    cases = (("IVF_HNSW_FLAT", 1024, "l2", "precomputed", 8), ("IVF_HNSW_FLAT", 128, "l2", "precomputed", 1),
             ("IVF_HNSW_SQ", 1024, "dot", "precomputed", 2), ("IVF_HNSW_PQ", 1024, "l2", "precomputed", 1),
             ("IVF_HNSW_FLAT", 1024, "l2", "partitions", 1), ("IVF_HNSW_PQ", 1024, "dot", "precomputed", 1))
    for index_type, dim, metric, engine, want in cases:
        params = resolve_params(index_type, dimension=dim, num_rows=2_000_000, num_partitions=64, metric=metric)
        plan = make_plan(uri="/d.lance", version=1, column="vector", dimension=dim, fragments=fs, params=params,
                         engine=engine, parallelism=2)
        case = (index_type, dim, metric, engine, plan.num_tasks)
        assert plan.num_tasks == want, case
        held = held_row_bytes(index_type, dim, params.num_sub_vectors)
        assert engine != "precomputed" or max(plan.group_rows()) * held <= FLAT_TASK_BYTES or want == 1, case
        assert plan.graphs_at_merge == (want > 1), case
        lances = engine == "partitions" or (index_type == "IVF_HNSW_PQ" and metric == "dot")  # Lance's graphs
        assert lances == any("HNSW graph again" in n for n in plan.notes), case
        if want > 1:  # one merge of every task: only its segment gets graphs
            assert plan.merges.num_merges == 1 and plan.merges.final == (want,), case
            assert [plan.builds_graphs(i) for i in range(want + 1)] == [False] * want + [True], case
            assert plan.graph_seed(want) == (0, 0) and IndexPlan.from_json(plan.to_json()).graphs_at_merge
            assert any("graphs built once" in n for n in plan.notes), case
    # asked for three final segments of six tasks: each final merge builds its segment's graphs
    params = resolve_params("IVF_HNSW_SQ", dimension=32, num_rows=2_000_000, num_partitions=64)
    plan = make_plan(uri="/d.lance", version=1, column="vector", dimension=32, fragments=fs, params=params,
                     engine="precomputed", num_tasks=6, num_segments=3)
    assert plan.graphs_at_merge and len(plan.merges.final) == 3
    assert sorted(plan.graph_seed(s)[1] for s in plan.merges.final) == [0, 1, 2]
    assert not any(plan.builds_graphs(i) for i in range(6))


def test_two_level_training_samples_fewer_rows_per_centroid_unless_told():
    kw = dict(dimension=128, num_rows=10_000_000, num_partitions=4096)
    two = resolve_params("IVF_FLAT", **kw)
    flat = resolve_params("IVF_FLAT", ivf_training="flat", **kw)
    assert two.ivf_training == "hierarchical" and two.sample_rate == HIERARCHICAL_SAMPLE_RATE < SAMPLE_RATE
    assert flat.sample_rate == SAMPLE_RATE == 256  # Lance's rule for Lance's k-means
    # two levels also draw the rows their coarse probes are chosen on, held out of training
    assert training_sample_size(two) == 4096 * HIERARCHICAL_SAMPLE_RATE + AGREEMENT_ROWS
    assert training_sample_size(flat) == 4096 * 256
    told = resolve_params("IVF_FLAT", sample_rate=200, **kw)
    assert told.sample_rate == 200 and training_sample_size(told) == 4096 * 200 + AGREEMENT_ROWS
    # the resolved rate is the plan's: it survives the JSON round trip
    assert IndexParams(**json.loads(json.dumps(two.__dict__))).sample_rate == HIERARCHICAL_SAMPLE_RATE


@pytest.mark.parametrize("rows, asked, lance", [(9_000, 48, 35), (1_000_000, 4096, 3906), (2_000_000, 8192, 4096),
                                                (4_000_000, 16384, 4096), (4_000_000, 4096, None)])
def test_the_plan_names_the_partitions_lances_own_build_would_train(rows, asked, lance):
    """Lance's create_index trains PQ types on at most 2**20 sample rows at 256 a partition:
    rows // 256 partitions, and never more than 4,096 (its log, measured at 1M-4M rows).
    The plan says so when the build asks for more, so that a comparison uses Lance's number."""
    from dask_lance_index.plan import make_plan

    params = resolve_params("IVF_PQ", dimension=32, num_rows=rows, num_partitions=asked, num_sub_vectors=8)
    plan = make_plan(uri="/d.lance", version=1, column="vector", dimension=32, fragments=frags(*([rows // 4] * 4)),
                     params=params, engine="precomputed", train=("ivf_centroids", "pq_codebook"))
    note = [n for n in plan.notes if "Lance's own create_index would train only" in n]
    if lance is None:
        assert not note
    else:
        assert len(note) == 1 and f"would train only {lance} for IVF_PQ on {rows} rows" in note[0], plan.notes
