"""The layers point one way, the cache format has one home, and the core needs no torch.

Layers (``docs/architecture.md``): the core (``featurecache.cache``, ``featurecache.exceptions``,
``featurecache._validation``, the ``featurecache`` package itself) imports only the core;
stage 1 (``featurecache.models``, ``featurecache.engines``, ``featurecache._extract``,
``featurecache._data``) and stage 2 (``pipelines``) import the core and themselves; the
application (``featurecache.app``) is the only layer that imports both stages. Every import
counts, also one deferred into a function body.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("featurecache", "pipelines")

CORE = (
    "featurecache.cache",
    "featurecache.exceptions",
    "featurecache._validation",
    "featurecache._paths",
    "featurecache._lazy",
    "featurecache._process",
    "featurecache._spec",
    "featurecache._views",
)
STAGE1 = (
    "featurecache.models",
    "featurecache.engines",
    "featurecache._extract",
    "featurecache._data",
    "featurecache.sources",
)
STAGE2 = ("pipelines",)
APP = ("featurecache.app", "featurecache.__main__")
ALLOWED = {
    "core": {"core"},
    "stage 1": {"core", "stage 1"},
    "stage 2": {"core", "stage 2"},
    "app": {"core", "stage 1", "stage 2", "app"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {
        _module_name(path): path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


MODULES = _modules()


def layer_of(module: str) -> str:
    if module == "featurecache":
        return "core"  # the package's __init__: lazy re-exports only, by name
    for layer, prefixes in (("core", CORE), ("stage 1", STAGE1), ("stage 2", STAGE2), ("app", APP)):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return layer
    raise AssertionError(
        f"module {module} belongs to no layer; add it to tests/test_architecture.py"
    )


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".")
    is_package = MODULES[module].name == "__init__.py"
    base = package if is_package else package[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str) -> set[str]:
    """Project modules that ``module`` imports anywhere in its body."""
    tree = ast.parse(MODULES[module].read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node)
            names = [
                f"{target}.{alias.name}" if f"{target}.{alias.name}" in MODULES else target
                for alias in node.names
            ]
        else:
            continue
        for name in names:
            while name and name not in MODULES:  # import a.b.c names module a.b.c, or a.b
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


GRAPH = {module: imports_of(module) for module in MODULES}


def test_every_module_belongs_to_a_layer():
    assert {layer_of(module) for module in MODULES} == set(ALLOWED)


def test_no_module_imports_a_layer_above_or_beside_it():
    wrong = sorted(
        f"{module} ({layer_of(module)}) imports {target} ({layer_of(target)})"
        for module, targets in GRAPH.items()
        for target in targets
        if layer_of(target) not in ALLOWED[layer_of(module)]
    )
    assert not wrong, "\n".join(wrong)


def test_only_the_application_imports_both_stages():
    both = [
        module
        for module, targets in GRAPH.items()
        if {"stage 1", "stage 2"} <= {layer_of(t) for t in targets}
    ]
    assert all(layer_of(module) == "app" for module in both), both


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles_among_the_modules():
    assert _cycles(GRAPH) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# -- the format's one home ----------------------------------------------------------------

LITERAL = re.compile(r"""[fFrRbB]{0,2}["'](?:samples|features|status|shards|failures)/""")


def _python_files() -> list[Path]:
    folders = ("featurecache", "pipelines", "tests", "benchmarks")
    return [p for folder in folders for p in sorted((ROOT / folder).rglob("*.py"))]


def test_hdf5_layout_literals_live_in_the_cache_package_only():
    home = ROOT / "featurecache" / "cache"
    outside = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in _python_files()
        if home not in path.parents
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if LITERAL.search(line)
    ]
    inside = [p for p in home.rglob("*.py") if LITERAL.search(p.read_text())]
    assert not outside, "\n".join(outside)
    assert inside, "the pattern no longer finds the layout's own definitions"


def test_the_literal_pattern_catches_each_spelling():
    quote = '"'
    spellings = [  # assembled, so that this file holds no literal itself
        "f[" + quote + "samples" + "/ids" + quote + "]",
        "f'" + "features" + "/{m}'",
        "x = " + quote + "status" + "/a/b" + quote,
        quote + "shards" + "/m/file" + quote,
    ]
    assert all(LITERAL.search(s) for s in spellings)
    assert not LITERAL.search('f[fmt.features_path("m")]')


# -- torch-free ---------------------------------------------------------------------------

BLOCKED_IMPORT = textwrap.dedent(
    """
    import importlib, sys

    class BlockTorch:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "torchvision"):
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, BlockTorch())
    for name in sys.argv[1:]:
        importlib.import_module(name)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision"))
    assert not loaded, loaded
    print("ok", len(sys.argv) - 1)
    """
)


@pytest.mark.parametrize("layer", ["core", "stage 2"])
def test_the_core_and_stage_2_import_with_torch_blocked(layer):
    names = sorted(m for m in MODULES if layer_of(m) == layer)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", BLOCKED_IMPORT, *names],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == f"ok {len(names)}"
