"""The layers point one way, the cache format has one home, and the core needs no torch.

A module's layer is its folder (``docs/architecture.md``), read from :data:`FOLDERS`:

- the core: ``featurecache/core/``, ``featurecache/cache/``, ``featurecache/exceptions.py`` and
  the ``featurecache`` package itself import only the core;
- stage 1: ``featurecache/models/``, ``data/``, ``engines/``, ``extraction/``, in that order;
- stage 2: ``pipelines/rows/`` and ``heads/``, ``results/``, ``fitting/``, ``reporting/``, in
  that order, and the ``pipelines`` package itself on top;
- the application: ``featurecache/app/`` and ``featurecache/__main__.py``, the only layer that
  imports both stages.

Within a layer a folder imports only itself and the folders before it; ``core/`` and
``cache/`` share a rank (the output-path checks use the cache's temporary names, the cache uses
the one validation helper), and the module cycle test keeps the two acyclic. Every import
counts, also one deferred into a function body.

``docs/architecture.md`` names every module under its folder's heading, with the folder's layer
and rank: a module it leaves out, or one that no longer exists, fails here.
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

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("featurecache", "pipelines")

#: Each layer folder: its layer, and its rank in the layer.
FOLDERS = {
    "featurecache/core": ("core", 0),
    "featurecache/cache": ("core", 0),
    "featurecache/models": ("stage 1", 1),
    "featurecache/data": ("stage 1", 2),
    "featurecache/engines": ("stage 1", 3),
    "featurecache/extraction": ("stage 1", 4),
    "pipelines/rows": ("stage 2", 1),
    "pipelines/heads": ("stage 2", 2),
    "pipelines/results": ("stage 2", 3),
    "pipelines/fitting": ("stage 2", 4),
    "pipelines/reporting": ("stage 2", 5),
    "featurecache/app": ("app", 1),
}
#: The only files at the root of a package: its public surface, the exceptions, ``python -m``.
ROOT_FILES = {
    "featurecache/__init__.py": ("core", 0),  # lazy re-exports only, by name
    "featurecache/exceptions.py": ("core", 0),
    "featurecache/__main__.py": ("app", 1),
    "pipelines/__init__.py": ("stage 2", 6),  # lazy re-exports only, by name
}
ALLOWED = {
    "core": {"core"},
    "stage 1": {"core", "stage 1"},
    "stage 2": {"core", "stage 2"},
    "app": {"core", "stage 1", "stage 2", "app"},
}


def place_of(path: str) -> tuple[str, int]:
    """The layer and rank of the module at ``path`` (relative to the repository), by its folder."""
    if path in ROOT_FILES:
        return ROOT_FILES[path]
    parts = path.split("/")
    if len(parts) == 2:
        known = ", ".join(sorted(p.split("/")[1] for p in ROOT_FILES if p.startswith(parts[0])))
        raise AssertionError(
            f"{path} lies at the root of {parts[0]}/, which holds only {known}: "
            "move it into a layer folder"
        )
    folder = "/".join(parts[:2])
    if folder not in FOLDERS:
        raise AssertionError(
            f"{path} is in {folder}/, a folder of no layer: add {folder!r} to FOLDERS in "
            "tests/guarantees/test_architecture.py with its layer and rank"
        )
    return FOLDERS[folder]


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


def _folder(module: str) -> str:
    """The layer folder of ``module``, or its file for the files at a package's root."""
    path = MODULES[module].relative_to(ROOT).as_posix()
    return path if path in ROOT_FILES else "/".join(path.split("/")[:2])


def place(module: str) -> tuple[str, int]:
    return place_of(MODULES[module].relative_to(ROOT).as_posix())


def layer_of(module: str) -> str:
    return place(module)[0]


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


def test_every_module_lies_in_a_layer_folder():
    misplaced = []
    for module in MODULES:
        try:
            place(module)
        except AssertionError as error:
            misplaced.append(str(error))
    assert not misplaced, "\n".join(misplaced)
    assert {layer_of(module) for module in MODULES} == set(ALLOWED)


def test_every_layer_folder_is_a_package_of_the_tree():
    missing = [f for f in FOLDERS if not (ROOT / f / "__init__.py").is_file()]
    assert not missing, f"FOLDERS names folders that are not packages: {missing}"


def test_a_module_outside_the_layer_folders_is_named_with_its_folder():
    with pytest.raises(AssertionError, match=r"^featurecache/widgets/_x.py is in featurecache/"):
        place_of("featurecache/widgets/_x.py")
    with pytest.raises(AssertionError, match=r"^pipelines/_x.py lies at the root of pipelines/"):
        place_of("pipelines/_x.py")


def test_no_module_imports_a_layer_above_or_beside_it():
    wrong = sorted(
        f"{module} ({layer_of(module)}) imports {target} ({layer_of(target)})"
        for module, targets in GRAPH.items()
        for target in targets
        if layer_of(target) not in ALLOWED[layer_of(module)]
    )
    assert not wrong, "\n".join(wrong)


def test_within_a_layer_folders_import_only_the_folders_before_them():
    wrong = sorted(
        f"{module} ({_folder(module)}, rank {place(module)[1]}) imports {target} "
        f"({_folder(target)}, rank {place(target)[1]})"
        for module, targets in GRAPH.items()
        for target in targets
        if layer_of(target) == layer_of(module)
        and _folder(target) != _folder(module)
        and place(target)[1] > place(module)[1]
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


# -- the architecture page names every module ---------------------------------------------

PAGE = ROOT / "docs" / "architecture.md"
#: ``### `featurecache/models/` (stage 1, rank 1)`` or ``### `featurecache/` (package root)``.
FOLDER_HEADING = re.compile(r"^### `(?P<folder>[a-z_/]+)/` \((?P<place>[^)]*)\)\s*$")
#: A table row naming a module: ``| `_spec.py` | ...``.
MODULE_ROW = re.compile(r"^\| `(?P<file>[A-Za-z0-9_]+\.py)` \|")


def documented_modules(text: str) -> dict[str, str]:
    """Each module path the page's "Every module" tables name, with the heading it sits under.

    A folder's modules are the table rows below its ``### `FOLDER/` (PLACE)`` heading, up to
    the next heading.
    """
    found: dict[str, str] = {}
    folder = place = None
    for line in text.splitlines():
        heading = FOLDER_HEADING.match(line)
        if heading:
            folder, place = heading["folder"], heading["place"]
            continue
        if line.startswith("#"):
            folder = place = None
            continue
        row = MODULE_ROW.match(line)
        if row and folder is not None:
            found[f"{folder}/{row['file']}"] = place
    return found


def test_the_page_parser_reads_modules_under_their_folder():
    page = textwrap.dedent(
        """
        ### `featurecache/models/` (stage 1, rank 1)

        | module | its job |
        | --- | --- |
        | `_record.py` | what a backbone is |

        ## One `extract`

        | `_stray.py` | not under a folder heading |
        """
    )
    assert documented_modules(page) == {"featurecache/models/_record.py": "stage 1, rank 1"}


def test_the_architecture_page_names_every_module_and_no_other():
    documented = documented_modules(PAGE.read_text())
    actual = {path.relative_to(ROOT).as_posix() for path in MODULES.values()}
    missing = sorted(actual - set(documented))
    gone = sorted(set(documented) - actual)
    assert not missing, (
        "docs/architecture.md does not name these modules; add a line for each under its "
        "folder's heading in 'Every module': " + ", ".join(missing)
    )
    assert not gone, "docs/architecture.md names modules that do not exist: " + ", ".join(gone)


def test_the_architecture_page_states_each_folders_layer_and_rank():
    stated = {
        path.rpartition("/")[0]: place
        for path, place in documented_modules(PAGE.read_text()).items()
    }
    wrong = []
    for folder, (layer, rank) in FOLDERS.items():
        expected = {f"{layer}, rank {rank}"}
        if [place[0] for place in FOLDERS.values()].count(layer) == 1:
            expected.add(layer)  # a layer of one folder needs no rank: "(app)"
        if stated.get(folder) not in expected:
            wrong.append(
                f"{folder}/: the page says {stated.get(folder)!r}, FOLDERS {layer!r} {rank}"
            )
    assert not wrong, "\n".join(wrong)
