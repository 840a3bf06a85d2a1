"""How fast this host supplies fresh memory: the floor under writing an index file.

    python benchmarks/bench_page_cache.py --mb 512 --rounds 3 --pause 12

An IVF_FLAT segment of 1M x 128 rows is a 512 MB ``auxiliary.idx`` that one task writes
into the page cache, and the task's array of rows is 512 MB of fresh anonymous memory. On a
virtual machine whose host takes freed memory back (free page reporting), what such fresh
pages cost depends on their size and on what the machine freed lately. Each round, after a
pause of ``--pause`` seconds (time for the host to take freed memory back), this prints the
seconds of:

- ``write 1MB`` / ``write 2MB``: a new file of ``--mb`` MB written in 1 MB or 2 MB ``write``
  calls (the kernel gives larger writes larger page-cache folios);
- ``lance writer``: the same bytes as an ``auxiliary.idx``-like file through Lance's
  ``LanceFileWriter`` in 8 MB batches (file format 2.0; it writes 2 MB at a time);
- ``plain writer``: the same file through ``storage.lance_file.PlainFileWriter``, as a build
  task writes it (``writev`` straight from the rows, 64-row pieces, 2 MB a call);
- ``fill small`` / ``fill huge``: a fresh array of ``--mb`` MB filled, made with small pages
  or with transparent huge pages (NumPy's default);
- ``huge, freed; write 2MB``: a fresh huge-page array filled and freed, then the 2 MB-call
  write at once (what the page cache gets from memory freed a moment before).

The modes run in turn within each round, each on its own new file.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time

import numpy as np

MODES = ("write 1MB", "write 2MB", "lance writer", "plain writer", "fill small", "fill huge", "huge, freed; write 2MB")


def _write(path: str, mb: int, chunk: int) -> None:
    block = np.ones(chunk, np.uint8)
    with open(path, "wb", buffering=0) as f:
        for _ in range((mb << 20) // chunk):
            f.write(block)


def _lance_write(path: str, mb: int) -> None:
    import pyarrow as pa
    from lance.file import LanceFileWriter

    dim, rows = 128, 16384  # 8 MB batches of 128-d float32 rows, as the build task writes them
    schema = pa.schema([pa.field("_rowid", pa.uint64()), pa.field("values", pa.list_(pa.float32(), dim))])
    values = np.ones((rows, dim), np.float32)
    ids = np.arange(rows, dtype=np.uint64)
    batch = pa.record_batch([pa.array(ids), pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), dim)],
                            schema=schema)
    writer = LanceFileWriter(path, schema, version="2.0")
    for _ in range((mb << 20) // values.nbytes):
        writer.write_batch(batch)
    writer.close()


def _plain_write(path: str, mb: int) -> float:
    import pyarrow as pa

    from dask_lance_index.storage import PlainFileWriter, plain_columns

    dim, rows = 128, 16384  # the 8 MB batch the Lance writer mode writes, here in 64-row pieces
    schema = pa.schema([pa.field("_rowid", pa.uint64()), pa.field("values", pa.list_(pa.float32(), dim))])
    values = np.ones((rows, dim), np.float32)
    n = (mb << 20) // values.nbytes * rows
    t = time.perf_counter()
    with PlainFileWriter(path, plain_columns(schema), n) as writer:
        writer.write_column(1, (values[lo : lo + 64] for _ in range(n // rows) for lo in range(0, rows, 64)))
        writer.write_column(0, [np.arange(n, dtype=np.uint64)])
        writer.close()
    return time.perf_counter() - t


def _fill(mb: int, small: bool) -> None:
    from dask_lance_index.runtime import small_pages

    with small_pages() if small else contextlib.nullcontext():
        a = np.empty(mb << 20, np.uint8)
    a.fill(1)
    del a


def run(mode: str, path: str, mb: int) -> float:
    if mode == "huge, freed; write 2MB":
        _fill(mb, small=False)  # not timed: the memory the write then reuses
    t = time.perf_counter()
    if mode == "write 1MB":
        _write(path, mb, 1 << 20)
    elif mode in ("write 2MB", "huge, freed; write 2MB"):
        _write(path, mb, 2 << 20)
    elif mode == "lance writer":
        _lance_write(path, mb)
    elif mode == "plain writer":
        return _plain_write(path, mb)
    else:
        _fill(mb, small=mode == "fill small")
    return time.perf_counter() - t


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mb", type=int, default=512, help="megabytes per file or array")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--pause", type=float, default=12.0, help="seconds before each measurement")
    p.add_argument("--dir", default=None, help="where to write the files (default: a temporary directory)")
    args = p.parse_args()

    root = tempfile.mkdtemp(prefix="dli-pages-", dir=args.dir)
    seconds = {m: [] for m in MODES}
    try:
        for r in range(args.rounds):
            for mode in MODES:
                path = os.path.join(root, f"file-{r}-{MODES.index(mode)}")
                time.sleep(args.pause)
                seconds[mode].append(run(mode, path, args.mb))
                if os.path.exists(path):
                    os.remove(path)
                print(f"round {r + 1}: {mode:24s} {seconds[mode][-1]:.2f} s", flush=True)
    finally:
        for f in os.listdir(root):
            os.remove(os.path.join(root, f))
        os.rmdir(root)
    print(f"\n{args.mb} MB, after {args.pause:g} s pauses ({args.rounds} rounds)")
    print(f"{'mode':24s} {'min s':>6s} {'max s':>6s}")
    for mode in MODES:
        print(f"{mode:24s} {min(seconds[mode]):6.2f} {max(seconds[mode]):6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
