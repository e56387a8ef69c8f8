"""`pipelines` never imports torch: it imports, fits and reports with torch blocked."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import sys

    class BlockTorch:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "torchvision"):
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, BlockTorch())

    import pipelines
    from _synthetic import write_cache

    cache = write_cache(sys.argv[1] + "/c.h5", shards=True)
    entries = pipelines.open_cache(cache).entries
    table = pipelines.fit(
        cache, sys.argv[1] + "/r", heads=["logreg"], grid={"logreg": {"C": [0.1]}},
        cv=2, layers=["informative"],
    )
    pipelines.report(sys.argv[1] + "/r", sys.argv[1] + "/rep")
    head = pipelines.load_head(sys.argv[1] + "/r/heads/toy/informative/logreg.joblib")
    assert len(table) == 1 and table["cv_mean"].iloc[0] > 0.9, table
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision"))
    assert not loaded, loaded
    print("ok", len(entries))
    """
)


def test_pipelines_works_with_torch_blocked(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "ok 3"


def test_registering_the_subcommands_imports_nothing_heavy():
    script = (
        "import argparse, sys\n"
        "from featurecache.app._fit_commands import register\n"
        "register(argparse.ArgumentParser().add_subparsers())\n"
        "heavy = [m for m in ('sklearn', 'matplotlib', 'h5py', 'pandas', 'torch') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
