"""``python -m dask_lance_index``: the ``dask-lance-index`` command line."""

from .cli import main

# The guard matters: LocalCluster starts worker processes that re-import the main module.
if __name__ == "__main__":
    raise SystemExit(main())
