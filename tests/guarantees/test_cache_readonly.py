"""A cache on a read-only file system is read, fitted, listed and hit, and nothing in it changes.

The cache is extracted normally, then seen through a read-only bind mount inside a private
mount namespace (``unshare -m``; as root) or made read-only with ``chmod`` (as another
user). A child process then reads it every way a user does; an extraction that would have
to write fails before any compute with one line naming the folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from _workers import make_images, one_torch_thread, run_options

from featurecache import extract, open_cache

ROOT = Path(__file__).resolve().parents[2]
ARGS = dict(model="resnet18", weights="none", layers=["layer1", "embedding"], image_size=32)

CHILD = textwrap.dedent(
    """
    import contextlib, io, json, sys
    import torch
    torch.set_num_threads(1)
    import pipelines
    from featurecache import RunOptions, extract, open_cache
    from featurecache.app.cli import main

    data, cache, out = sys.argv[1:4]
    args = json.loads(sys.argv[4])
    found = {}
    reader = open_cache(cache)
    found["entries"] = [[e.layer, e.n_ok, e.n_pending] for e in reader.entries]
    found["rows"] = int(reader.load("resnet18", "embedding")[0].shape[0])
    with contextlib.redirect_stdout(io.StringIO()) as listing:
        found["ls"] = main(["ls", cache])
    found["ls_lines"] = len(listing.getvalue().splitlines())
    table = pipelines.fit(cache, out + "/results", heads=["logreg"],
                          grid={"logreg": {"C": [1.0]}}, cv=2)
    found["fitted"] = len(table)
    pipelines.report(out + "/results", out + "/report")
    options = RunOptions(workers=0, device="cpu")
    found["hit"] = extract(data, cache, **args, dtype="float32", options=options).hit
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        found["new_layer"] = main([
            "extract", data, "--cache", cache, "--model", "resnet18", "--weights", "none",
            "--image-size", "32", "--layers", "layer2", "--dtype", "float32", "--workers", "0",
            "--device", "cpu", "--split", "random:0.34",
        ])
    found["new_layer_error"] = err.getvalue()
    print(json.dumps(found))
    """
)


def _snapshot(folder: Path) -> dict:
    return {
        str(p.relative_to(folder)): (
            hashlib.sha256(p.read_bytes()).hexdigest(),
            p.stat().st_mtime_ns,
        )
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _read_only_command(source: Path, view: Path, argv: list[str]) -> list[str]:
    """The child's command line, seeing ``source`` read-only at ``view``."""
    if os.getuid() != 0:
        for path in [source, *source.rglob("*")]:
            path.chmod(path.stat().st_mode & ~0o222)
        view.symlink_to(source, target_is_directory=True)
        return argv
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        pytest.skip("needs unshare and mount to make a read-only view as root")
    quoted = " ".join(f"'{a}'" for a in argv)
    script = (
        f"mount --bind '{source}' '{view}' && mount -o remount,ro,bind '{view}' && exec {quoted}"
    )
    return ["unshare", "-m", "sh", "-c", script]


def test_a_read_only_cache_is_read_fitted_listed_and_hit_and_nothing_changes(tmp_path):
    data = make_images(tmp_path / "data", n_per_class=6)
    source = tmp_path / "source"
    source.mkdir()
    with one_torch_thread():
        extract(data, source / "c.h5", **ARGS, dtype="float32", split="random:0.34",
                options=run_options())  # fmt: skip
    before = _snapshot(source)
    view, out = tmp_path / "view", tmp_path / "out"
    view.mkdir()
    out.mkdir()
    argv = [sys.executable, "-c", CHILD, str(data), str(view / "c.h5"), str(out),
            json.dumps({**ARGS, "split": "random:0.34"})]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    done = subprocess.run(
        _read_only_command(source, view, argv), env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    if done.returncode != 0 and "mount" in done.stderr and "permission" in done.stderr.lower():
        pytest.skip(f"no read-only bind mount here: {done.stderr.strip()[:200]}")
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["entries"] == [["layer1", 12, 0], ["embedding", 12, 0]]
    assert found["rows"] == 12 and found["ls"] == 0 and found["ls_lines"] > 3
    assert found["fitted"] == 2 and found["hit"] is True
    assert found["new_layer"] == 1
    assert found["new_layer_error"] == (
        f"featurecache: error: the cache '{view / 'c.h5'}' needs new files in "
        f"'{view / 'c.h5.d'}', which this user cannot write (a read-only disk or folder); "
        "extract into a cache on a writable disk, or copy this one there first.\n"
    )
    assert _snapshot(source) == before, "a file under the read-only cache changed"
    assert (out / "report" / "report.html").is_file()


def test_a_cache_hit_writes_nothing_at_all(tmp_path, forward_calls):
    data = make_images(tmp_path / "data", n_per_class=4)
    cache = tmp_path / "c.h5"
    with one_torch_thread():
        extract(data, cache, **ARGS, dtype="float32", split="random:0.5", options=run_options())
        before = _snapshot(tmp_path)
        forward_calls.clear()
        result = extract(
            data, cache, **ARGS, dtype="float32", split="random:0.5", options=run_options()
        )
    assert result.hit and not forward_calls
    assert _snapshot(tmp_path) == before
    provenance = open_cache(cache).entry("resnet18", "embedding").provenance
    assert provenance["images_per_second"] > 0 and provenance["extract_seconds"] > 0
