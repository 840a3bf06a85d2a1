"""Seeded RaBitQ rotations: Lance's JSON form, reproducible builds."""

import json

import numpy as np
import pytest

import dask_lance_index as dli
from dask_lance_index.datagen import write_vectors
from dask_lance_index.evaluate import search


def test_rotation_json_has_lances_fields_and_is_seeded():
    import lance.lance

    ours = json.loads(dli.build_rq_rotation(24, num_bits=3, seed=7))
    theirs = json.loads(lance.lance.indices.build_rq_model(24, num_bits=3))
    assert set(ours) == set(theirs)
    assert len(ours["fast_rotation_signs"]) == len(theirs["fast_rotation_signs"]) == 12
    assert {k: v for k, v in ours.items() if k != "fast_rotation_signs"} == {
        k: v for k, v in theirs.items() if k != "fast_rotation_signs"
    }
    assert dli.build_rq_rotation(24, 3, seed=7) == dli.build_rq_rotation(24, 3, seed=7)
    assert dli.build_rq_rotation(24, 3, seed=7) != dli.build_rq_rotation(24, 3, seed=8)
    assert all(0 <= b <= 255 for b in ours["fast_rotation_signs"])


@pytest.mark.parametrize("dim, bits, match", [(20, 5, "multiple of 8"), (0, 5, "multiple of 8"), (16, 0, "1 to 9"), (16, 10, "1 to 9")])
def test_rotation_rejects_what_lance_cannot_take(dim, bits, match):
    with pytest.raises(dli.InvalidInputError, match=match):
        dli.build_rq_rotation(dim, num_bits=bits)


def test_same_seed_gives_the_same_ivf_rq_index(tmp_path, vectors, queries):
    found = []
    for i in range(2):
        uri = str(tmp_path / f"rq{i}.lance")
        write_vectors(uri, vectors, max_rows_per_file=3000)
        result = dli.create_index(uri, "vector", "IVF_RQ", num_partitions=16, num_tasks=3, seed=5, compute=False).compute(
            scheduler="sync"
        )
        found.append(search(result.dataset(), "vector", queries, 10, nprobes=4)[0])
    np.testing.assert_array_equal(found[0], found[1])
    # and a different seed gives a different rotation, so (almost surely) other results
    uri = str(tmp_path / "rq_other.lance")
    write_vectors(uri, vectors, max_rows_per_file=3000)
    other = dli.create_index(uri, "vector", "IVF_RQ", num_partitions=16, num_tasks=3, seed=6, compute=False).compute(
        scheduler="sync"
    )
    assert not np.array_equal(search(other.dataset(), "vector", queries, 10, nprobes=4)[0], found[0])
