"""The result of :func:`~dask_lance_index.evaluate_index`: a table of recall and latency, and its plot.

Plain frozen dataclasses that round-trip JSON and pickle; matplotlib (optional)
is imported only when ``plot`` is called.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

import pandas as pd

__all__ = ["EvaluationRow", "EvaluationTable", "plot_recall"]


@dataclass(frozen=True)
class EvaluationRow:
    """Recall and latency of the index at one search setting.

    Attributes
    ----------
    nprobes : int
    refine_factor : int or None
    recall : float
        Mean recall@k over the queries.
    latency_ms : float
        Mean milliseconds per query (one query per call).
    p50_ms, p95_ms : float
        Median and 95th-percentile milliseconds per query.
    """

    nprobes: int
    refine_factor: int | None
    recall: float
    latency_ms: float
    p50_ms: float
    p95_ms: float


@dataclass(frozen=True)
class EvaluationTable:
    """Recall@k and latency of a committed index, one row per (nprobes, refine_factor).

    ``str(table)`` (and :meth:`to_markdown`) is a Markdown table;
    :meth:`to_pandas` a DataFrame; :meth:`plot` draws recall against nprobes
    and against latency.
    """

    uri: str
    column: str
    index_name: str
    index_type: str
    metric: str
    version: int
    k: int
    num_queries: int
    exact_seconds: float
    rows: tuple[EvaluationRow, ...]

    # -- serialisation -----------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        d["rows"] = [asdict(r) for r in self.rows]
        return d

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, d: dict) -> "EvaluationTable":
        d = dict(d)
        d["rows"] = tuple(EvaluationRow(**r) for r in d["rows"])
        return cls(**d)

    @classmethod
    def from_json(cls, s: str) -> "EvaluationTable":
        return cls.from_dict(json.loads(s))

    # -- views -------------------------------------------------------------------
    def recall(self, nprobes: int, refine_factor: int | None = None) -> float:
        """The recall at one setting (``KeyError`` when it was not measured)."""
        for r in self.rows:
            if r.nprobes == nprobes and r.refine_factor == refine_factor:
                return r.recall
        raise KeyError((nprobes, refine_factor))

    def to_pandas(self):
        """The rows as a ``pandas.DataFrame``."""
        df = pd.DataFrame([asdict(r) for r in self.rows], columns=[f.name for f in fields(EvaluationRow)])
        df["refine_factor"] = df["refine_factor"].astype("Int64")
        df.attrs.update({k: v for k, v in self.to_dict().items() if k != "rows"})
        return df

    def to_markdown(self) -> str:
        """A Markdown table, one line per setting, under a one-line title."""
        head = (
            f"{self.index_type} index {self.index_name!r} on {self.column!r} ({self.metric}), version {self.version}: "
            f"recall@{self.k} over {self.num_queries} queries (exact search {self.exact_seconds:.2f} s)"
        )
        lines = [
            head,
            "",
            f"| nprobes | refine_factor | recall@{self.k} | mean ms | p50 ms | p95 ms |",
            "|--------:|--------------:|---------:|--------:|-------:|-------:|",
        ]
        for r in self.rows:
            rf = "-" if r.refine_factor is None else str(r.refine_factor)
            lines.append(
                f"| {r.nprobes} | {rf} | {r.recall:.4f} | {r.latency_ms:.3f} | {r.p50_ms:.3f} | {r.p95_ms:.3f} |"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_markdown()

    def _repr_markdown_(self) -> str:  # Jupyter renders the table
        return self.to_markdown()

    def plot(self, **kwargs):
        """Draw the table; see :func:`plot_recall`."""
        return plot_recall(self, **kwargs)


def plot_recall(table: EvaluationTable, *, axes=None, title: str | None = None):
    """Recall against nprobes (left) and against mean latency (right), one line per refine factor.

    Parameters
    ----------
    table : EvaluationTable
    axes : pair of matplotlib Axes, optional
        Where to draw; default a new figure of two panels.
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:  # optional dependency
        raise ImportError("plotting needs matplotlib: pip install matplotlib") from exc
    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    else:
        fig = axes[0].figure
    ax_n, ax_t = axes
    refines = list(dict.fromkeys(r.refine_factor for r in table.rows))
    for rf in refines:
        rows = sorted((r for r in table.rows if r.refine_factor == rf), key=lambda r: r.nprobes)
        label = "no refine" if rf is None else f"refine_factor={rf}"
        ax_n.plot([r.nprobes for r in rows], [r.recall for r in rows], marker="o", label=label)
        ax_t.plot([r.latency_ms for r in rows], [r.recall for r in rows], marker="o", label=label)
        for r in rows:
            ax_t.annotate(str(r.nprobes), (r.latency_ms, r.recall), textcoords="offset points", xytext=(3, 3), fontsize=7)
    ax_n.set_xscale("log", base=2)
    ticks = sorted({r.nprobes for r in table.rows})
    ax_n.set_xticks(ticks, [str(t) for t in ticks])
    ax_n.minorticks_off()
    ax_n.set_xlabel("nprobes")
    ax_t.set_xlabel("mean latency per query (ms)")
    for ax in axes:
        ax.set_ylabel(f"recall@{table.k}")
        ax.set_ylim(0, 1.02)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(title or f"{table.index_type} {table.index_name!r}: recall@{table.k} over {table.num_queries} queries")
    fig.tight_layout()
    return fig
