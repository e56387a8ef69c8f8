"""The command line is one module per command: ``featurecache.app._command_<name>`` holds its
``add_parser`` and ``run``; ``cli.py`` only assembles them and runs ``main``."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import featurecache.app
from featurecache.app import _fit_commands
from featurecache.app.cli import build_parser

APP = Path(featurecache.app.__file__).parent
ROOT = APP.parents[1]


def test_every_command_runs_the_run_of_its_own_module():
    commands = build_parser()._subparsers._group_actions[0].choices
    shared = {"fit": _fit_commands.run_fit, "report": _fit_commands.run_report}
    assert set(shared) < set(commands)
    for name, parser in commands.items():
        if name in shared:
            assert parser.get_default("func") is shared[name], name
            continue
        module = importlib.import_module(f"featurecache.app._command_{name}")
        assert parser.get_default("func") is module.run, name
        assert {"add_parser", "run"} <= set(module.__all__), name


def test_no_application_module_is_over_800_lines():
    sizes = {path.name: len(path.read_text().splitlines()) for path in APP.glob("*.py")}
    assert max(sizes.values()) <= 800, sizes
    assert sizes["cli.py"] <= 200, sizes["cli.py"]


def test_both_entry_points_run():
    for module in ("featurecache", "featurecache.app.cli"):
        done = subprocess.run(
            [sys.executable, "-m", module, "--version"],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert (done.returncode, done.stdout.split()[0]) == (0, "featurecache"), done.stderr
