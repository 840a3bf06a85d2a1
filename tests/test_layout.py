"""The package's layout holds: no import cycle (counting imports inside functions), each
layer imports only from the layers below it, imports at the top of modules, small modules."""

from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = "dask_lance_index"

# The layers, bottom first (docs/architecture.md draws them): a module may import from
# its own layer's package and from lower layers, never from a higher one. The pipeline
# stages (train, build, merge, commit) do not import each other: the graph joins them.
LAYERS = [
    ["errors"],
    ["storage"],
    ["model"],
    ["runtime"],
    ["plan"],
    ["partition_artifacts"],
    ["recovery"],
    ["train", "build", "merge", "commit"],
    ["graph"],
    ["api"],
    ["update"],
    ["dataframe", "evaluation", "datagen"],
    ["cli", "demo"],
    ["__main__"],
]
# Imports that may sit inside a function: optional, heavy dependencies.
LAZY_OK = {"matplotlib", "matplotlib.pyplot", "moto", "moto.server", "IPython"}


def _modules() -> dict[str, str]:
    """``{dotted module name: path}`` of every module of the package."""
    out = {}
    for d, _, files in os.walk(os.path.join(ROOT, PKG)):
        if "__pycache__" in d:
            continue
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(d, f), ROOT)[:-3].split(os.sep)
                if rel[-1] == "__init__":
                    rel = rel[:-1]
                out[".".join(rel)] = os.path.join(d, f)
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].endswith("__init__.py")


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if _is_package(module) else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str) -> list[tuple[str, int, bool]]:
    """``(imported module, line, at top level)`` for every import in ``module``."""
    tree = ast.parse(open(MODULES[module]).read())
    top = {id(n) for n in tree.body}
    for n in tree.body:  # imports under a module-level `if`/`try` count as top level too
        if isinstance(n, (ast.If, ast.Try)):
            top |= {id(c) for c in ast.walk(n)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node)
            if node.module == "__future__":
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.append((sub if sub in MODULES else target, node.lineno, id(node) in top))
    return out


def _graph() -> dict[str, set[str]]:
    """Module -> the package modules importing it runs: what it names, and the ``__init__``
    of every package above a named module (Python runs those first) but the root's, which
    runs before anything else and counts only where a module names the root itself."""
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for m in MODULES:
        for target, _, _ in _imports(m):
            if target not in MODULES:
                continue
            if target == PKG:  # the root package named itself (`from . import __version__`)
                edges[m].add(PKG)
                continue
            parts = target.split(".")
            for i in range(2, len(parts) + 1):
                name = ".".join(parts[:i])
                if name != m and not m.startswith(name + "."):  # a package's own modules: it is running
                    edges[m].add(name)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) == 1:
        return None  # the root package's face: it re-exports from every layer
    for i, names in enumerate(LAYERS):
        if parts[1] in names:
            return i
    raise AssertionError(f"{module} is in no layer of tests/test_layout.py: place it in LAYERS")


def test_no_import_cycle():
    assert _cycles(_graph()) == []


def test_a_cycle_is_found():
    """The cycle finder itself: a loop through a package's __init__ is one."""
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert _cycles(edges) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_each_layer_imports_only_from_below():
    wrong = []
    for m in MODULES:
        mine = _layer(m)
        for target, line, _ in _imports(m):
            if target.startswith(PKG + ".") and mine is not None:
                theirs = _layer(target)
                if theirs is not None and (theirs > mine or (theirs == mine and target.split(".")[1] != m.split(".")[1])):
                    wrong.append(f"{m}:{line} imports {target}")
    assert wrong == []


def test_imports_sit_at_the_top_of_modules():
    lazy = [f"{m}:{line} imports {t}" for m in MODULES for t, line, top in _imports(m)
            if not top and t not in LAZY_OK]
    assert lazy == []


def test_the_file_list_shows_the_pipeline():
    top = [m for m in MODULES if m.count(".") == 1 and not _is_package(m)]
    packages = [m for m in MODULES if m.count(".") == 1 and _is_package(m)]
    assert len(top) <= 10, top
    assert {"plan", "train", "build", "merge", "commit"} <= {p.split(".")[1] for p in packages}
    assert len(packages) >= 4
    long = {m: n for m in MODULES if (n := sum(1 for _ in open(MODULES[m]))) > 700}
    assert long == {}


@pytest.mark.parametrize("package", sorted(m for m in MODULES if _is_package(m)))
def test_each_package_says_what_it_holds(package):
    tree = ast.parse(open(MODULES[package]).read())
    assert ast.get_docstring(tree), f"{package}/__init__.py has no docstring"


def test_no_package_hides_a_module_of_its_own_behind_a_name():
    """``pkg/x.py`` beside ``from .x import x`` in ``pkg/__init__`` makes ``import pkg.x as m``
    give the function, not the module: every re-exported name differs from the modules'."""
    import importlib

    clashes = []
    for package in (m for m in MODULES if _is_package(m)):
        mod = importlib.import_module(package)
        for name in getattr(mod, "__all__", ()):
            if f"{package}.{name}" in MODULES and not hasattr(getattr(mod, name), "__path__") \
                    and getattr(getattr(mod, name), "__file__", None) is None:
                clashes.append(f"{package}.{name}")
    assert clashes == []
