"""The engines by name, and the choice of one for an index (``engine="auto"``)."""

from __future__ import annotations

from ...errors import InvalidInputError
from .artifact import ArtifactEngine
from .base import Engine
from .lance import LanceEngine
from .partitions import PartitionsEngine
from .precomputed import PrecomputedEngine, graphs_left_to_lance
from .scalar import ScalarEngine

__all__ = ["ENGINES", "ENGINE_NAMES", "get_engine", "resolve_engine"]

ENGINES: dict[str, Engine] = {e.name: e for e in (LanceEngine(), PartitionsEngine(), PrecomputedEngine(), ArtifactEngine(),
                                                  ScalarEngine())}
ENGINE_NAMES = ("auto", *ENGINES)


def get_engine(name: str) -> Engine:
    """The engine called ``name``."""
    try:
        return ENGINES[name]
    except KeyError:
        raise InvalidInputError(f"engine {name!r} is not one of {ENGINE_NAMES}") from None


def resolve_engine(name: str, params, num_rows: int | None = None, dimension: int | None = None,
                   directions: int | None = None, one_norm: bool = False, spread: bool = False) -> Engine:
    """The engine that builds an index of ``params`` over ``num_rows`` rows of ``dimension``
    (``directions``, ``one_norm``, ``spread``: of rows drawn at planning, :func:`.precomputed.dot_graph_rows`).
    Pure.

    ``"auto"``: ``"precomputed"`` where it applies (our workers assign and encode
    with NumPy BLAS and write the segments: 8-bit PQ types, IVF_FLAT, IVF_SQ, IVF_RQ under
    l2 and cosine, IVF_HNSW_FLAT and IVF_HNSW_SQ (under dot up to the rows a partition of
    :func:`.precomputed.dot_graph_rows`: :func:`.precomputed.graphs_left_to_lance`), IVF_HNSW_PQ (past 1 GiB of codes, and under
    dot, its graphs are Lance's, from our codes)),
    ``"partitions"`` otherwise (our workers assign, Lance encodes).
    An engine that cannot build the index is refused with the reason and the fix.
    ``benchmarks/bench_build.py`` measures them side by side.
    """
    if name == "auto":
        precomputed = ENGINES["precomputed"]
        # IVF_HNSW_PQ whose graphs Lance builds: we still encode (the engine hands Lance the codes)
        if precomputed.refuses(params) is None and (params.quantizer == "PQ"
                                                    or not graphs_left_to_lance(params, num_rows, dimension,
                                                                                directions, one_norm, spread)):
            return precomputed
        return ENGINES["partitions"]
    engine = get_engine(name)
    why = engine.refuses(params)
    if why is not None:
        raise InvalidInputError(f"{why}. Fix: engine='auto', 'partitions' or 'lance'.")
    return engine
