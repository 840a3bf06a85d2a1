"""Dask DataFrames in and out of Lance: read, write, encode, and batch search.

* :func:`read_lance`: a Lance dataset as a Dask DataFrame, one partition per
  fragment, with the column selection and the filter pushed down to Lance's
  scanner.
* :func:`to_lance`: a Dask DataFrame written as dask's ``to_parquet`` writes:
  one write task per partition (``lance.fragment.write_fragments``: data files
  and fragment metadata, no commit), then ONE commit task. ``compute=False``
  returns the lazy graph.

Encoding partitions (:mod:`.encode`) and batch search (:mod:`.search`) live in
their own modules. Embedding columns are Arrow ``fixed_size_list<float32>[d]``
columns (``pd.ArrowDtype``), see :mod:`.vectors`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import dask.dataframe as dd
import lance
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from dask.base import tokenize
from dask.delayed import delayed
from lance.fragment import write_fragments

from ..errors import DaskLanceIndexError, DatasetChangedError, InvalidInputError
from ..runtime import resolve_client
from ..storage import field_paths, filesystem, hide_secrets, open_or_fail, resolve_field
from .vectors import check_vector_type, is_vector_type, vector_array

__all__ = ["CommitWrite", "ReadFragment", "WritePartition", "WriteResult", "read_lance", "to_lance"]

_MODES = ("create", "append", "overwrite")


def _types_mapper(t: pa.DataType):
    # Nested columns stay Arrow-backed: as NumPy object columns Dask would turn them into strings.
    return pd.ArrowDtype(t) if pa.types.is_nested(t) else None


def _to_pandas(table: pa.Table) -> pd.DataFrame:
    return table.to_pandas(types_mapper=_types_mapper)


def _exists(uri: str, storage_options: dict | None) -> bool:
    try:
        lance.dataset(uri, storage_options=storage_options)
    except (ValueError, OSError, FileNotFoundError):
        return False
    return True


# ----------------------------------------------------------------------------------------------
# read


@dataclass(frozen=True)
class ReadFragment:
    """Read task of :func:`read_lance`: called with a fragment id, returns that fragment's
    rows as one pandas partition, with the columns and filter pushed down to Lance."""

    uri: str
    version: int
    columns: list | None = None
    filter: str | None = None
    with_row_id: bool = False
    storage_options: dict | None = None

    def __call__(self, fragment_id: int) -> pd.DataFrame:
        ds = open_or_fail(self.uri, self.version, self.storage_options)
        scanner = ds.scanner(columns=self.columns, filter=self.filter, fragments=[ds.get_fragment(fragment_id)],
                             with_row_id=self.with_row_id)
        return _to_pandas(scanner.to_table())


def read_lance(
    uri,
    columns: Sequence[str] | None = None,
    filter: str | None = None,
    storage_options: dict | None = None,
    *,
    version: int | None = None,
    with_row_id: bool = False,
):
    """Read a Lance dataset as a Dask DataFrame, one partition per fragment.

    Parameters
    ----------
    uri : str, path or LanceDataset
        The dataset.
    columns : list of str, optional
        Columns to read (default all); only these are read from storage.
    filter : str, optional
        A SQL filter (``"id % 2 = 0"``), evaluated by Lance's scanner inside
        each partition's task. A partition whose rows all fail it is empty.
    storage_options : dict, optional
        Passed to Lance in every task.
    version : int, optional
        Dataset version to read; default the latest, pinned when this is
        called so every partition reads the same version.
    with_row_id : bool
        Add Lance's ``_rowid`` column (uint64).

    Returns
    -------
    dask.dataframe.DataFrame
        Unknown divisions; a default integer index per partition. Embedding
        columns are ``pd.ArrowDtype(pa.list_(pa.float32(), d))`` (see
        :func:`~dask_lance_index.dataframe.vectors_to_numpy`).

    Raises
    ------
    InvalidInputError
        The dataset cannot be opened, a column does not exist, or the filter
        does not parse or names an unknown column; raised before any task runs.
    """
    storage_options = hide_secrets(storage_options)  # the tasks carry them: no secret in a logged repr
    ds = open_or_fail(uri, version, storage_options)
    if columns is not None:
        columns = list(columns)
        # A field path (emb.v) reads one field of a struct, named by the path, as Lance's scanner names it.
        missing = [c for c in columns if resolve_field(ds.schema, c) is None]
        if missing:
            raise InvalidInputError(
                f"columns {missing} are not in the dataset; its columns and fields are {field_paths(ds.schema)}. "
                "Fix: pick from those."
            )
    if filter is not None:
        try:
            ds.scanner(columns=columns, filter=filter).explain_plan()
        except (ValueError, OSError) as exc:
            raise InvalidInputError(f"the filter {filter!r} is not valid for this dataset: {exc}") from None
    frag_ids = [f.fragment_id for f in ds.get_fragments()]
    schema = ds.schema if columns is None else pa.schema(
        [pa.field(c, resolve_field(ds.schema, c)[1].type) for c in columns])
    if with_row_id:
        schema = schema.append(pa.field("_rowid", pa.uint64()))
    meta = _to_pandas(schema.empty_table())
    uri_str = ds.uri
    if not frag_ids:
        return dd.from_pandas(meta, npartitions=1)
    return dd.from_map(
        ReadFragment(uri_str, ds.version, columns, filter, with_row_id, storage_options),
        frag_ids,
        meta=meta,
        divisions=None,
        label="read-lance",
        enforce_metadata=False,
    )


# ----------------------------------------------------------------------------------------------
# write


@dataclass(frozen=True)
class WriteResult:
    """What :func:`to_lance` committed.

    Attributes
    ----------
    uri : str
    mode : str
        ``"create"``, ``"append"`` or ``"overwrite"``.
    version : int
        The dataset version the commit made.
    num_rows : int
        Rows written.
    num_fragments : int
        Fragments written (empty partitions write none).
    """

    uri: str
    mode: str
    version: int
    num_rows: int
    num_fragments: int

    def dataset(self, storage_options: dict | None = None):
        """The committed version, opened."""
        return open_or_fail(self.uri, self.version, storage_options)


@dataclass(frozen=True)
class _Written:
    """A write task's output: its fragments and schema, or the input error it met."""

    fragments: list
    schema: pa.Schema | None
    num_rows: int
    error: DaskLanceIndexError | None = None


def _detect_vector_columns(df: pd.DataFrame) -> list[str]:
    out = []
    for name, dtype in df.dtypes.items():
        if isinstance(dtype, pd.ArrowDtype) and is_vector_type(dtype.pyarrow_dtype):
            out.append(name)
        elif dtype == object:
            col = df[name].dropna()
            if len(col) and isinstance(col.iloc[0], (np.ndarray, list, tuple)):
                out.append(name)
    return out


def partition_table(df: pd.DataFrame, vector_columns: Sequence[str] | None = None) -> pa.Table:
    """One pandas partition as the Arrow table :func:`to_lance` writes.

    Embedding columns become ``fixed_size_list<float32>[d]``; the index is
    dropped; the other columns convert as ``pyarrow.Table.from_pandas``.
    """
    vcols = _detect_vector_columns(df) if vector_columns is None else list(vector_columns)
    arrays, fields = [], []
    for name in df.columns:
        s = df[name]
        if name in vcols:
            arr = vector_array(s, str(name))
        else:
            arr = pa.Array.from_pandas(s) if not isinstance(s.dtype, pd.ArrowDtype) else pa.array(s.array)
            if isinstance(arr, pa.ChunkedArray):
                arr = arr.combine_chunks()
        arr = _realigned(arr)
        arrays.append(arr)
        fields.append(pa.field(str(name), arr.type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _realigned(arr: pa.Array) -> pa.Array:
    """``arr``, copied if any of its buffers is not 8-byte aligned.

    A partition that reached a worker through distributed's serialisation can
    hold NumPy columns at odd addresses (measured: an int64 column at an
    address = 15 mod 64); Arrow wraps them without a copy, and Lance's Rust
    side then panics ("Memory pointer from external source (e.g, FFI) is not
    aligned"). A take allocates fresh, aligned buffers.
    """
    if all(b is None or b.address % 8 == 0 for b in arr.buffers()):
        return arr
    return pc.take(arr, pa.array(np.arange(len(arr), dtype=np.int64)))


@dataclass(frozen=True)
class WritePartition:
    """Write task of :func:`to_lance`: called with one pandas partition, writes its data
    files and fragment metadata and never commits.

    ``lance_mode`` is ``write_fragments``'s: "append" checks the rows against the
    dataset's schema, "create"/"overwrite" assign field ids from the table.
    """

    uri: str
    vector_columns: list | None
    lance_mode: str
    max_rows_per_file: int
    storage_options: dict | None = None

    def __call__(self, df: pd.DataFrame) -> _Written:
        if len(df) == 0:
            return _Written([], None, 0)
        try:
            table = partition_table(df, self.vector_columns)
        except DaskLanceIndexError as exc:
            # Reported to the commit task, which deletes what the other tasks wrote.
            return _Written([], None, 0, exc)
        frags = write_fragments(
            table,
            self.uri,
            schema=table.schema,
            mode=self.lance_mode,
            max_rows_per_file=self.max_rows_per_file,
            max_rows_per_group=min(self.max_rows_per_file, 8192),
            storage_options=self.storage_options,
        )
        return _Written(list(frags), table.schema, table.num_rows)


def _delete_data_files(uri: str, written: list[_Written], storage_options: dict | None = None) -> None:
    """Remove the data files of uncommitted fragments, so a refused write leaves nothing behind.

    Object stores are reached with the write's ``storage_options``; if that
    fails the files stay, unreferenced by any version (Lance's
    ``cleanup_old_versions`` removes such files).
    """
    paths = [os.path.join(str(uri), "data", f.path) for w in written for frag in w.fragments for f in frag.files]
    for p in paths:
        try:
            fs, path = filesystem(p if "://" in p else os.path.abspath(p), storage_options)
            fs.delete_file(path)
        except (FileNotFoundError, OSError, ValueError):
            pass
    if "://" not in str(uri):
        # A refused create leaves no empty directories behind either.
        for d in (os.path.join(str(uri), "data"), str(uri)):
            try:
                os.rmdir(d)
            except OSError:
                pass


@dataclass(frozen=True)
class CommitWrite:
    """The barrier task of :func:`to_lance`: called with every write task's output, checks
    every partition's schema, then one Lance commit."""

    uri: str
    mode: str
    read_version: int | None = None
    storage_options: dict | None = None

    def __call__(self, written: list[_Written]) -> WriteResult:
        return _commit_write(written, self.uri, self.mode, self.read_version, self.storage_options)


def _commit_write(written: list[_Written], uri: str, mode: str, read_version, storage_options) -> WriteResult:
    errors = [w.error for w in written if w.error is not None]
    schemas = [w.schema for w in written if w.schema is not None]
    problem: DaskLanceIndexError | None = errors[0] if errors else None
    if problem is None and not schemas and mode != "append":
        problem = InvalidInputError("every partition is empty: there is no row to take a schema from.")
    if problem is None and any(not s.equals(schemas[0]) for s in schemas):
        odd = next(s for s in schemas if not s.equals(schemas[0]))
        problem = InvalidInputError(
            "partitions produced different schemas, so they cannot form one dataset:\n"
            f"{schemas[0]}\nversus\n{odd}\nFix: give every partition the same dtypes (ddf.astype(...)) "
            "and every embedding the same dimension."
        )
    if problem is None and mode == "create" and _exists(uri, storage_options):
        problem = InvalidInputError(f"a dataset was created at {uri!r} during the write; nothing was committed.")
    if problem is None and read_version is not None:
        current = open_or_fail(uri, None, storage_options).version
        if mode == "overwrite" and current != read_version:
            problem = DatasetChangedError(
                f"{uri!r} moved from version {read_version} to {current} during the overwrite; "
                "nothing was committed. Fix: run the write again."
            )
    if problem is not None:
        _delete_data_files(uri, written, storage_options)
        raise problem
    fragments = [f for w in written for f in w.fragments]
    if mode == "append" and not fragments:
        # Nothing to add: no new version.
        return WriteResult(uri=str(uri), mode=mode, version=int(read_version), num_rows=0, num_fragments=0)
    if mode == "append":
        op = lance.LanceOperation.Append(fragments)
    else:
        op = lance.LanceOperation.Overwrite(schemas[0], fragments)
    try:
        ds = lance.LanceDataset.commit(uri, op, read_version=read_version, storage_options=storage_options)
    except Exception:
        _delete_data_files(uri, written, storage_options)
        raise
    return WriteResult(
        uri=str(uri),
        mode=mode,
        version=int(ds.version),
        num_rows=sum(w.num_rows for w in written),
        num_fragments=len(fragments),
    )


def _check_frame(ddf, vector_columns) -> list[str] | None:
    """Checks that need only the DataFrame's meta (no data), raised before any task runs."""
    meta = ddf._meta
    if vector_columns is None:
        # Arrow list columns of floats will be detected as embeddings: check their type now.
        for c, dtype in meta.dtypes.items():
            if isinstance(dtype, pd.ArrowDtype) and is_vector_type(dtype.pyarrow_dtype):
                check_vector_type(dtype.pyarrow_dtype, str(c))
        return None
    vector_columns = [vector_columns] if isinstance(vector_columns, str) else list(vector_columns)
    for c in vector_columns:
        if c not in meta.columns:
            raise InvalidInputError(
                f"vector column {c!r} is not in the DataFrame; its columns are {list(meta.columns)}."
            )
        dtype = meta[c].dtype
        if isinstance(dtype, pd.ArrowDtype):
            check_vector_type(dtype.pyarrow_dtype, c)
        elif dtype != object:
            vector_array(meta[c], c)  # raises the dtype error
    return vector_columns


def to_lance(
    ddf,
    uri,
    mode: str = "create",
    compute: bool = True,
    storage_options: dict | None = None,
    *,
    vector_columns: str | Sequence[str] | None = None,
    max_rows_per_file: int = 1024 * 1024,
    client=None,
    scheduler: str | None = None,
):
    """Write a Dask DataFrame to a Lance dataset: one write task per partition, then one commit.

    As dask's ``to_parquet``: every partition is written by its own task
    (Lance data files and fragment metadata, nothing visible yet), and one
    barrier task checks that all partitions agree on the schema and commits
    them in a single Lance transaction. If any partition is refused, or the
    commit fails, the written data files are deleted and the dataset stays
    as it was.

    Parameters
    ----------
    ddf : dask.dataframe.DataFrame
        The data. Its index is not written (``ddf.reset_index()`` first to
        keep it).
    uri : str or path
        Where the Lance dataset is (or is to be).
    mode : {"create", "append", "overwrite"}
        ``"create"``: the dataset must not exist. ``"append"``: add fragments
        to an existing dataset with the same columns. ``"overwrite"``: a new
        version holding only these rows (older versions stay readable).
    compute : bool
        ``True``: write now and return the committed ``LanceDataset``.
        ``False``: return a ``dask.delayed.Delayed`` whose ``compute()``
        writes, commits and returns a :class:`WriteResult`; nothing is
        written before that.
    storage_options : dict, optional
        Passed to Lance in every task.
    vector_columns : str or list of str, optional
        Embedding columns, written as ``fixed_size_list<float32>[d]`` so an
        index can be built on them. Default: every Arrow list column of floats
        and every ``object`` column holding arrays or lists. Their values must
        be float32 and of one length.
    max_rows_per_file : int
        A partition larger than this is written as several fragments.
    client : distributed.Client, optional
        Cluster to run on when ``compute=True``; default the current client,
        if any, else dask's default scheduler.
    scheduler : str, optional
        A local dask scheduler (``"sync"``, ``"threads"``, ...) used instead of
        a current client when ``compute=True`` (an explicit ``client`` wins).

    Returns
    -------
    lance.LanceDataset or dask.delayed.Delayed

    Raises
    ------
    InvalidInputError
        Bad mode, an existing dataset for ``"create"``, a missing one for
        ``"append"``, columns that differ from the dataset's on append, or a
        vector column of the wrong type (before any task runs); ragged,
        float64 or non-numeric vectors, or partitions of different schemas
        (at the commit, which then writes nothing).
    """
    if mode not in _MODES:
        raise InvalidInputError(f"mode={mode!r} is not one of {_MODES}.")
    if not hasattr(ddf, "to_delayed") or not hasattr(ddf, "_meta"):
        raise InvalidInputError(
            f"to_lance takes a dask DataFrame, got {type(ddf).__name__}. Fix: dask.dataframe.from_pandas(df, npartitions=...)."
        )
    if isinstance(ddf._meta, pd.Series):
        raise InvalidInputError("to_lance takes a DataFrame, not a Series. Fix: ddf.to_frame().")
    if int(max_rows_per_file) < 1:
        raise InvalidInputError("max_rows_per_file must be at least 1.")
    uri = str(uri)
    storage_options = hide_secrets(storage_options)  # the tasks carry them: no secret in a logged repr
    vcols = _check_frame(ddf, vector_columns)
    exists = _exists(uri, storage_options)
    read_version = None
    if mode == "create" and exists:
        raise InvalidInputError(
            f"a Lance dataset already exists at {uri!r}. Fix: mode='append' to add rows, or mode='overwrite'."
        )
    if mode == "append":
        if not exists:
            raise InvalidInputError(f"there is no Lance dataset at {uri!r} to append to. Fix: mode='create'.")
        ds = open_or_fail(uri, None, storage_options)
        have, want = set(ds.schema.names), {str(c) for c in ddf.columns}
        if have != want:
            raise InvalidInputError(
                f"the DataFrame's columns {sorted(want)} differ from the dataset's {sorted(have)}; "
                "an append must write the same columns. Fix: select or rename columns first."
            )
        read_version = ds.version
    if mode == "overwrite" and exists:
        read_version = open_or_fail(uri, None, storage_options).version

    # "create" where nothing exists yet: Lance's "overwrite" would log a warning per task.
    lance_mode = "append" if mode == "append" else ("overwrite" if exists else "create")
    tok = tokenize(ddf, uri, mode, vcols, max_rows_per_file, read_version)
    parts = ddf.to_delayed()
    write = WritePartition(uri, vcols, lance_mode, int(max_rows_per_file), storage_options)
    writes = [delayed(write, pure=False)(p, dask_key_name=f"lance-write-{tok}-{i}") for i, p in enumerate(parts)]
    commit = delayed(CommitWrite(uri, mode, read_version, storage_options), pure=False)(
        writes, dask_key_name=f"lance-commit-{tok}"
    )
    if not compute:
        return commit
    client = resolve_client(client, scheduler)
    result = client.compute(commit).result() if client is not None else commit.compute(scheduler=scheduler)
    return result.dataset(storage_options)
