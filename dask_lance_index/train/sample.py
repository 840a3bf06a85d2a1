"""Sampling: the training rows of a build, drawn per fragment, on the workers.

Each fragment gets a sampling task that draws its share of the sample
(:func:`dask_lance_index.plan.allocate_samples`) as runs of adjacent rows at
random positions, from a seed stream of its own, so a retried task draws the
same rows. Null vectors and vectors with NaN or infinity are dropped, as Lance
drops them from the index.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import numpy as np

from ..model import prepare_vectors, train_sq_bounds
from ..plan.fragments import apportion
from ..recovery.journal import has_model
from ..runtime import in_bulk, with_small_pages
from ..storage import open_dataset, take_vectors

__all__ = ["SAMPLE_RUN", "SampleFragment", "kept_samples", "sample_fragment", "sample_offsets", "seed_for"]


def seed_for(build_seed: int | None, build_id: str, *parts: int) -> np.random.SeedSequence:
    """A seed stream per (build, fragment): same draws when a task is retried."""
    base = build_seed if build_seed is not None else int(hashlib.sha1(build_id.encode()).hexdigest()[:12], 16)
    return np.random.SeedSequence([base, *parts])


# Rows per run of a training sample. Lance's random take reads scattered rows one by
# one: 65k rows of a 2M-row set (250k-row fragments) took 2.64 s scattered, 0.34 s as
# runs of 8. Runs cost no recall: on GloVe (rows sorted by word frequency; 1,000
# queries, 4 seeds each) 0.549/0.562/0.570 at nprobes 10/20/50 against 0.549/0.564/0.570
# scattered; on the synthetic 2M-row set (300 queries, 12 seeds each) recall@10
# 0.5152 (sd 0.0106) against 0.5135 (sd 0.0073) scattered, and 0.8436 against 0.8439
# with refine_factor 5, while the sample stage took 0.40 s against 1.08 s (sync
# scheduler). An earlier single build at 0.496 was within that spread of seeds.
SAMPLE_RUN = 8


def sample_offsets(num_rows: int, num_samples: int, rng: np.random.Generator, run: int = SAMPLE_RUN) -> np.ndarray:
    """``min(num_samples, num_rows)`` distinct sorted row offsets of a fragment, drawn
    as runs of ``run`` adjacent rows at random aligned positions. Pure.

    A dense sample (a quarter of the runs or more) is drawn row by row instead:
    it reads about as much either way, and runs would clump it.
    """
    k = min(int(num_samples), int(num_rows))
    slots = -(-num_rows // run)
    need = -(-k // run) + 1  # one spare run: the last slot may be short
    if run <= 1 or need * 4 > slots:
        return np.sort(rng.choice(num_rows, size=k, replace=False))
    starts = rng.choice(slots, size=need, replace=False) * run
    offsets = (starts[:, None] + np.arange(run)).reshape(-1)
    offsets = offsets[offsets < num_rows]
    return np.sort(rng.choice(offsets, size=k, replace=False))


def kept_samples(plan) -> tuple[int, ...] | None:
    """The rows of each fragment's sample its sampling task sends on to the training task,
    or ``None`` for all of them. Pure.

    An SQ build draws Lance's SQ sample (``2**num_bits x 256`` rows: 65,536), of which the
    SQ bounds are the smallest and largest value, and IVF needs only ``num_partitions x
    sample_rate`` rows (2,048 at 8 partitions). Where the SQ sample is the larger, each
    sampling task reduces all of its rows to their bounds itself and sends on its share of
    IVF's rows (by largest remainder): at 8 partitions of 75,122 sentence rows the training
    task gathered 65,536 rows (100 MB) and took 0.37-0.47 s."""
    params = plan.params
    if params.quantizer != "SQ" or "sq_bounds" not in plan.train:
        return None
    ivf_rows = params.num_partitions * params.sample_rate
    if ivf_rows >= sum(plan.samples):
        return None
    return apportion(plan.samples, ivf_rows)


def sample_fragment(
    uri: str,
    version: int,
    column: str,
    dimension: int,
    fragment_id: int,
    fragment_rows: int,
    num_samples: int,
    seed: int | None,
    build_id: str,
    storage_options: dict | None = None,
    keep: int | None = None,
    metric: str = "l2",
):
    """Sampling task: ``num_samples`` random rows of one fragment
    (:func:`sample_offsets`), valid rows only.

    Returns ``(vectors (k, d) float32, (started, finished))``; with ``keep``,
    ``(keep of the vectors drawn at random, (started, finished), bounds)``, where
    ``bounds`` is ``(smallest, largest, rows)``: the SQ bounds of all the valid rows drawn,
    prepared for ``metric`` (:func:`dask_lance_index.model.train_sq_bounds`), and how many
    they were (``None`` where there were none).
    """
    t0 = time.time()
    x = np.empty((0, dimension), np.float32)
    rng = np.random.default_rng(seed_for(seed, build_id, fragment_id))
    if num_samples > 0 and fragment_rows > 0:
        offsets = sample_offsets(fragment_rows, num_samples, rng)
        ds = open_dataset(uri, version, storage_options)
        x, valid = take_vectors(ds, column, dimension, fragment_id, offsets)
        x = np.ascontiguousarray(x[valid])
    if keep is None:
        return x, (t0, time.time())
    bounds = (*train_sq_bounds(prepare_vectors(x, metric)), len(x)) if len(x) else None
    kept = x[np.sort(rng.choice(len(x), min(keep, len(x)), replace=False))]
    return kept, (t0, time.time()), bounds


@dataclass(frozen=True)
class SampleFragment:
    """Sampling task of one build: called with ``(fragment_id, fragment_rows, num_samples)``,
    returns ``(vectors, (started, finished))``; called with ``keep`` too (:func:`kept_samples`),
    ``(vectors kept, (started, finished), SQ bounds of all the rows drawn)``
    (:func:`sample_fragment`; ``metric`` the index's, which the bounds are taken in).

    With a journal that holds the trained model already (a recomputation after a
    worker died, or a resumed build), it samples nothing.
    """

    uri: str
    version: int
    column: str
    dimension: int
    seed: int | None
    build_id: str
    storage_options: dict | None = None
    journal: str | None = None
    metric: str = "l2"

    @in_bulk  # large temporaries from the heap, not one mmap each (runtime.malloc)
    @with_small_pages  # fresh arrays without huge pages (runtime.malloc)
    def __call__(self, fragment_id: int, fragment_rows: int, num_samples: int, keep: int | None = None):
        if has_model(self.journal, self.storage_options):
            now = time.time()
            nothing = np.empty((0, self.dimension), np.float32), (now, now)
            return nothing if keep is None else (*nothing, None)
        return sample_fragment(self.uri, self.version, self.column, self.dimension, fragment_id, fragment_rows,
                               num_samples, self.seed, self.build_id, self.storage_options, keep, self.metric)
