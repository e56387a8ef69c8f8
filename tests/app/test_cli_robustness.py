"""Issue 12: every subcommand against bad inputs and hostile environments.

Each case runs ``featurecache.app.cli.main`` in-process (the console script calls the same
function) in a world of good and bad inputs, and checks: exactly one line on stderr,
``featurecache: error: ...`` matching what the case expects, no ``Traceback``, the
documented exit code (2: bad input, 1: a failing environment), nothing on stdout except
the data summary ``extract`` prints before it refuses, and no file created, changed or
removed anywhere in the world (inputs, caches, results, reports, predictions). Cases that
need another process (a file size limit, a closed stdout pipe) run in a child.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import joblib
import numpy as np
import pandas as pd
import pytest
from _workers import SETTINGS, make_images, one_torch_thread, outcome, run_cli, start
from PIL import Image

import featurecache.core._paths as paths_module
from featurecache import extract
from featurecache.app._predict import predict, write_predictions
from featurecache.app.cli import CLOSED_PIPE, main
from pipelines import fit, report

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
EXTRACT = ["--model", "resnet18", "--weights", "none", "--image-size", "32", "--device", "cpu",
           "--dtype", "float32", "--workers", "0", "--no-progress"]  # fmt: skip
LONG = "n" * 300
HEAD = "results/heads/resnet18/embedding/logreg.joblib"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Good inputs with their outputs, and every kind of bad input."""
    root = tmp_path_factory.mktemp("world")
    make_images(root / "data", n_per_class=5)
    make_images(root / "other", n_per_class=4)
    make_images(root / "split" / "Train", n_per_class=3)
    make_images(root / "split" / "Test", n_per_class=2)
    make_images(root / "mixed" / "train", n_per_class=2)
    make_images(root / "mixed", n_per_class=2, classes=("wasp",))
    make_images(root / "one-class", n_per_class=3, classes=("ant",))
    (root / "empty").mkdir()
    (root / "mine").mkdir()
    (root / "mine" / "notes.txt").write_text("the user's notes\n")
    (root / "notes.txt").write_text("the user's notes\n")
    (root / "readonly").mkdir()
    rows = [f"data/ant/{i:02d}.png" for i in range(3)] + [f"data/bee/{i:02d}.png" for i in range(3)]
    labels = ["ant"] * 3 + ["bee"] * 3
    pd.DataFrame({"path": rows, "label": labels, "split": ["train", "dev", "x"] * 2}).to_csv(
        root / "bad-split.csv", index=False
    )
    pd.DataFrame({"path": rows + rows[:1], "label": labels + ["ant"]}).to_csv(
        root / "duplicates.csv", index=False
    )
    pd.DataFrame({"file": rows, "class": labels}).to_csv(root / "columns.csv", index=False)
    (root / "ragged.csv").write_text("path,label\n" + "data/ant/00.png,ant,extra,fields\n" * 3)
    (root / "empty.csv").write_text("")
    (root / "binary.csv").write_bytes(b"path,label\n\xff\xfe\x00\x81,\x92\n")
    (root / "no-path-column.csv").write_text("file\ndata/ant/00.png\n")
    (root / "bad.yaml").write_text("logreg: {C: [1, 2\n")
    (root / "negative.json").write_text(json.dumps({"logreg": {"C": [-1.0]}}))
    (root / "text-values.json").write_text(json.dumps({"logreg": {"C": ["big"]}}))
    (root / "list.json").write_text(json.dumps([1, 2]))
    (root / "unknown-head.json").write_text(json.dumps({"forest": {"depth": [2]}}))
    (root / "unknown-param.json").write_text(json.dumps({"logreg": {"gamma": [1.0]}}))
    (root / "text.h5").write_text("not a cache\n")
    with h5py.File(root / "foreign.h5", "w") as f:
        f["x"] = np.zeros(3)
    joblib.dump({"estimator": None}, root / "not-a-head.joblib")
    (root / "text.joblib").write_text("not a pickle\n")
    with one_torch_thread():
        for data in ("data", "other"):
            extract(root / data, root / f"{data}.h5", layers=["embedding"], split="random:0.3",
                    **SETTINGS)  # fmt: skip
        fit(root / "data.h5", root / "results", heads=["logreg"], cv=2, n_jobs=1)
        report(root / "results", root / "report")
        write_predictions(predict(root / "data", root / HEAD, workers=0), root / "preds.csv")
    (root / "run-only").mkdir()
    (root / "run-only" / "run.json").write_text((root / "results" / "run.json").read_text())
    (root / "bad-run").mkdir()
    (root / "bad-run" / "run.json").write_text("{not json")
    return root


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under ``root``: a folder, or a file's size, mtime and SHA-256."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_dir():
            found[str(path.relative_to(root))] = ("dir",)
        else:
            stat = path.stat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            found[str(path.relative_to(root))] = (stat.st_size, stat.st_mtime_ns, digest)
    return found


@dataclass(frozen=True)
class Case:
    argv: list[str]
    pattern: str
    code: int = 2
    read_only: tuple[str, ...] = field(default=())  # folders that refuse writes (simulated)


def _extract(*argv: str) -> list[str]:
    return ["extract", "data", "--cache", "new.h5", *EXTRACT, *argv]


def _ray(*argv: str) -> list[str]:
    """``extract --engine ray`` (without --workers, which still means Ray actors there)."""
    return ["extract", "data", "--cache", "new.h5", "--engine", "ray", "--model", "resnet18",
            "--weights", "none", "--device", "cpu", *argv]  # fmt: skip


def _fit(*argv: str) -> list[str]:
    return ["fit", "data.h5", "--out", "new-results", "--heads", "logreg", "--cv", "2", *argv]


def _predict(*argv: str, out: str = "new.csv") -> list[str]:
    return ["predict", "data", "--head", HEAD, "--out", out, "--workers", "0", *argv]


CASES = {
    # -- the command line itself
    "no command": Case([], r"the following arguments are required: COMMAND"),
    "unknown command": Case(["frobnicate"], r"invalid choice: 'frobnicate'"),
    "unknown flag": Case(["ls", "data.h5", "--frobnicate"], r"unrecognized arguments: --frob"),
    "missing required flag": Case(["extract", "data"], r"required: --cache"),
    "flag without its value": Case(["fit", "data.h5", "--out"], r"--out: expected one argument"),
    "extra positional": Case(["ls", "data.h5", "other.h5"], r"unrecognized arguments: other.h5"),
    # -- extract: numbers
    "batch size text": Case(_extract("--batch-size", "many"), r"--batch-size: invalid int"),
    "batch size zero": Case(_extract("--batch-size", "0"), r"--batch-size must be an int >= 1"),
    "batch size negative": Case(_extract("--batch-size", "-5"), r"Got -5 instead"),
    "shard size zero": Case(_extract("--shard-size", "0"), r"--shard-size must be an int >= 1"),
    "image size zero": Case(_extract("--image-size", "0"), r"--image-size must be None or an"),
    "image size huge": Case(_extract("--image-size", "100000"), r"in the range \[1, 4096\]"),
    "image size fraction": Case(_extract("--image-size", "1.5"), r"--image-size: invalid int"),
    "seed negative": Case(_extract("--seed", "-1"), r"--seed must be an int in the range"),
    "seed huge": Case(_extract("--seed", str(2**40)), r"--seed must be an int in the range"),
    "workers negative": Case(_extract("--workers", "-1"), r"--workers must be 'auto' or an int"),
    "workers text": Case(_extract("--workers", "many"), r"--workers: expected 'auto' or an int"),
    "ray workers zero": Case(_ray("--ray-workers", "0"), r"--ray-workers must be an int >= 1"),
    "cpus per worker nan": Case(_ray("--cpus-per-worker", "nan"), r"--cpus-per-worker must be a"),
    "gpus per worker negative": Case(
        _ray("--gpus-per-worker", "-1"), r"--gpus-per-worker must be a"
    ),
    # -- extract: names and choices
    "device unknown": Case(_extract("--device", "tpu"), r"--device: invalid choice: 'tpu'"),
    "engine unknown": Case(_extract("--engine", "spark"), r"--engine: invalid choice"),
    "layers empty": Case(_extract("--layers", ","), r"--layers must be a non-empty list"),
    "layer unknown": Case(_extract("--layers", "layer9"), r"Unknown layer 'layer9'"),
    "model unknown": Case(_extract("--model", "resnet81"), r"Unknown backbone 'resnet81'"),
    "pool unknown": Case(_extract("--pool", "median"), r"--pool must be one of avg"),
    "name with a slash": Case(_extract("--name", "a/b"), r"--name must be letters, digits"),
    "split a number": Case(_extract("--split", "0.2"), r"Got '0.2' instead"),
    "split fraction too big": Case(_extract("--split", "random:1.5"), r"--split must be 'ran"),
    "split on split folders": Case(
        ["extract", "split", "--cache", "new.h5", *EXTRACT, "--split", "random:0.3"],
        r"--split must be left out for data that has its own splits.*add --resplit",
    ),
    "weights file missing": Case(_extract("--weights", "missing.pth"), r"missing\.pth"),
    "weights not a state dict": Case(_extract("--weights", "notes.txt"), r"notes\.txt"),
    # -- extract: the cache path
    "cache is a folder": Case(
        ["extract", "data", "--cache", "empty", *EXTRACT], r"--cache must be a file path"
    ),
    "cache is a user file": Case(
        ["extract", "data", "--cache", "notes.txt", *EXTRACT], r"never overwrites other files"
    ),
    "cache in a missing folder": Case(
        ["extract", "data", "--cache", "nowhere/c.h5", *EXTRACT], r"Create '.*nowhere' first"
    ),
    "cache name too long": Case(
        ["extract", "data", "--cache", f"{LONG}.h5", *EXTRACT], r"names have at most \d+ bytes"
    ),
    "cache in a read-only folder": Case(
        ["extract", "data", "--cache", "readonly/c.h5", *EXTRACT],
        r"--cache must be a path in a folder that can be written.*readonly' cannot be written",
        read_only=("readonly",),
        code=1,
    ),
    "cache on a read-only file system": Case(
        ["extract", "data", "--cache", "/proc/sys/c.h5", *EXTRACT],
        r"'/proc/sys' cannot be",
        code=1,
    ),
    "cache where files cannot be made": Case(
        ["extract", "data", "--cache", "/proc/c.h5", *EXTRACT],
        r"'/proc' refuses new files",
        code=1,
    ),
    "cache under a file": Case(
        ["extract", "data", "--cache", "notes.txt/c.h5", *EXTRACT], r"is a file, not a folder"
    ),
    # -- extract: the data
    "data missing": Case(["extract", "nowhere", "--cache", "new.h5", *EXTRACT], r"does not exi"),
    "data empty folder": Case(["extract", "empty", "--cache", "new.h5", *EXTRACT], r"no images"),
    "data one class": Case(
        ["extract", "one-class", "--cache", "new.h5", *EXTRACT], r"at least two classes"
    ),
    "data mixed layout": Case(
        ["extract", "mixed", "--cache", "new.h5", *EXTRACT], r"mixes split folders \(train/\)"
    ),
    "data a text file": Case(
        ["extract", "notes.txt", "--cache", "new.h5", *EXTRACT], r"CSV manifest \(\.csv\)"
    ),
    "manifest ragged rows": Case(
        ["extract", "ragged.csv", "--cache", "new.h5", *EXTRACT], r"cannot read CSV manifest"
    ),
    "manifest empty": Case(
        ["extract", "empty.csv", "--cache", "new.h5", *EXTRACT], r"cannot read CSV manifest"
    ),
    "manifest not text": Case(
        ["extract", "binary.csv", "--cache", "new.h5", *EXTRACT], r"CSV manifest"
    ),
    "manifest bad split": Case(
        ["extract", "bad-split.csv", "--cache", "new.h5", *EXTRACT], r"got 'x'"
    ),
    "manifest duplicates": Case(
        ["extract", "duplicates.csv", "--cache", "new.h5", *EXTRACT], r"more than once"
    ),
    "manifest columns": Case(
        ["extract", "columns.csv", "--cache", "new.h5", *EXTRACT], r"missing path,label"
    ),
    # -- ls
    "ls missing": Case(["ls", "nowhere.h5"], r"'nowhere.h5' does not exist"),
    "ls folder": Case(["ls", "empty"], r"not a directory"),
    "ls text file": Case(["ls", "text.h5"], r"is not HDF5"),
    "ls foreign HDF5": Case(["ls", "foreign.h5"], r"must be a featurecache file"),
    "ls name too long": Case(["ls", f"{LONG}.h5"], r"File name too long; choose a shorter"),
    # -- fit: numbers and names
    "cv one": Case(_fit("--cv", "1"), r"--cv must be an int >= 2"),
    "cv text": Case(_fit("--cv", "two"), r"--cv: invalid int value"),
    "cv more than the rows": Case(
        _fit("--cv", "50"), r"--cv 50 needs at least 50 train rows per class; .* Use --cv \d"
    ),
    "jobs zero": Case(_fit("--jobs", "0"), r"--jobs must be None or a nonzero int"),
    "jobs huge": Case(_fit("--jobs", "100000"), r"at most \d+ here \(4 per CPU\)\)\. Got 100000"),
    "fit seed negative": Case(_fit("--seed", "-1"), r"--seed must be an int in the range"),
    "pca zero": Case(_fit("--pca", "0"), r"--pca must be None or an int >= 1"),
    "pca negative": Case(_fit("--pca", "-3"), r"Got -3 instead"),
    "backend unknown": Case(_fit("--backend", "spark"), r"--backend must be one of"),
    "head unknown": Case(_fit("--heads", "logreg,forest"), r"head 'forest' is not registered"),
    "heads empty": Case(_fit("--heads", ","), r"--heads must be a non-empty list"),
    "model not in cache": Case(_fit("--models", "resnet81"), r"model 'resnet81' is not in"),
    "layer not in cache": Case(_fit("--layers", "layer9"), r"layer 'layer9' is in none"),
    # -- fit: grid files
    "grid missing": Case(_fit("--grid", "nowhere.yaml"), r"The file does not exist"),
    "grid malformed": Case(_fit("--grid", "bad.yaml"), r"It cannot be parsed"),
    "grid negative value": Case(_fit("--grid", "negative.json"), r"'C' parameter .* Got -1"),
    "grid text value": Case(_fit("--grid", "text-values.json"), r"'C' parameter .* Got 'big'"),
    "grid a folder": Case(
        _fit("--grid", "empty"), r"--grid must be a JSON or YAML file.* It is a folder"
    ),
    "grid a list": Case(_fit("--grid", "list.json"), r"--grid must be"),
    "grid unknown head": Case(_fit("--grid", "unknown-head.json"), r"forest"),
    "grid unknown parameter": Case(_fit("--grid", "unknown-param.json"), r"gamma"),
    # -- fit: the cache and the results folder
    "fit a text file": Case(["fit", "text.h5", "--out", "new-results"], r"is not HDF5"),
    "fit a folder": Case(["fit", "empty", "--out", "new-results"], r"not a directory"),
    "fit a foreign HDF5": Case(["fit", "foreign.h5", "--out", "new-results"], r"featurecache"),
    "out the cache, forced": Case(
        ["fit", "data.h5", "--out", "data.h5", "--force"], r"It is the cache \('.*data\.h5'\)"
    ),
    "out inside the cache's folder": Case(
        ["fit", "data.h5", "--out", "data.h5.d/results", "--force"], r"the cache's folder"
    ),
    "out a user file": Case(
        ["fit", "data.h5", "--out", "notes.txt"], r"It is a file that featurecache did not wr"
    ),
    "out a user folder": Case(
        ["fit", "data.h5", "--out", "mine"], r"non-empty folder that featurecache did not write"
    ),
    "out of other samples": Case(
        ["fit", "other.h5", "--out", "results", "--heads", "logreg", "--cv", "2"],
        r"made from other samples .* or pass --force to replace its results",
    ),
    "out name too long": Case(["fit", "data.h5", "--out", LONG], r"names have at most"),
    "out on a read-only file system": Case(
        ["fit", "data.h5", "--out", "/proc/sys/r"],
        r"'/proc/sys' cannot be written",
        code=1,
    ),
    "out in a read-only folder": Case(
        ["fit", "data.h5", "--out", "readonly/r"],
        r"'readonly' cannot be written",
        read_only=("readonly",),
        code=1,
    ),  # fmt: skip
    # -- report
    "report of a user folder": Case(["report", "mine", "--out", "new-report"], r"no run.json"),
    "report of a file": Case(["report", "notes.txt", "--out", "new-report"], r"no run.json"),
    "report of nothing": Case(["report", "nowhere", "--out", "new-report"], r"no run.json"),
    "report of no combination": Case(
        ["report", "run-only", "--out", "new-report"], r"holds no finished combination"
    ),
    "report of a damaged run": Case(["report", "bad-run", "--out", "new-report"], r"unreadable"),
    "report out a user file": Case(
        ["report", "results", "--out", "notes.txt"], r"It is a file that featurecache did not"
    ),
    "report out a user folder": Case(
        ["report", "results", "--out", "mine"], r"non-empty folder that featurecache did not"
    ),
    "report out read-only": Case(
        ["report", "results", "--out", "/proc/sys/r"],
        r"'/proc/sys' cannot be written",
        code=1,
    ),
    "report out name too long": Case(["report", "results", "--out", LONG], r"at most"),
    # -- predict
    "predictions onto an image": Case(
        _predict(out="data/ant/00.png"), r"--out must be a CSV file path.* It names an image"
    ),
    "predictions onto an image, forced": Case(
        _predict("--force", out="data/ant/00.png"), r"It names an image"
    ),
    "predictions onto a user file": Case(
        _predict(out="notes.txt"), r"It is a file that featurecache did not write.*--force"
    ),
    "predictions onto a folder": Case(_predict(out="mine"), r"It is a folder; name a file"),
    "predictions onto the head, forced": Case(
        _predict("--force", out=HEAD), r"--out must be a path that is not an input.*the head file"
    ),
    "predictions read-only": Case(_predict(out="/proc/sys/p.csv"), r"cannot be written", code=1),
    "predictions where files cannot be made": Case(
        _predict(out="/proc/p.csv"),
        r"'/proc' refuses new files",
        code=1,
    ),
    "predictions name too long": Case(_predict(out=f"{LONG}.csv"), r"at most"),
    "predict batch size zero": Case(_predict("--batch-size", "0"), r"--batch-size must be an"),
    "predict workers negative": Case(_predict("--workers", "-2"), r"--workers must be 'auto'"),
    "predict device unknown": Case(_predict("--device", "tpu"), r"invalid choice: 'tpu'"),
    "head missing": Case(
        ["predict", "data", "--head", "nowhere.joblib", "--out", "p.csv"], r"does not exist"
    ),
    "head a text file": Case(
        ["predict", "data", "--head", "text.joblib", "--out", "p.csv"], r"cannot be loaded"
    ),
    "head not a head": Case(
        ["predict", "data", "--head", "not-a-head.joblib", "--out", "p.csv"], r"lacks model"
    ),
    "head a cache": Case(["predict", "data", "--head", "data.h5", "--out", "p.csv"], r"head"),
    "images missing": Case(
        ["predict", "nowhere", "--head", HEAD, "--out", "p.csv"], r"IMAGES must be a folder"
    ),
    "images empty": Case(["predict", "empty", "--head", HEAD, "--out", "p.csv"], r"no images"),
    "images CSV without path": Case(
        ["predict", "no-path-column.csv", "--head", HEAD, "--out", "p.csv"], r"path column"
    ),
    # -- layers, demo
    "layers of an unknown model": Case(["layers", "resnet81"], r"Unknown backbone 'resnet81'"),
    "layers image size zero": Case(["layers", "resnet18", "--image-size", "0"], r"\[1, 4096\]"),
    "layers image size huge": Case(["layers", "resnet18", "--image-size", "99999"], r"4096"),
    "demo limit one": Case(["demo", "--limit", "1"], r"--limit must be None or an int >= 2"),
    "demo jobs zero": Case(["demo", "--jobs", "0"], r"--jobs must be None or a nonzero int"),
    "demo jobs huge": Case(["demo", "--jobs", "100000"], r"--jobs must be None or a nonzero"),
    "demo dataset unknown": Case(["demo", "--dataset", "builtin:x"], r"invalid choice"),
    "demo head unknown": Case(["demo", "--heads", "forest"], r"head 'forest' is not registered"),
    "demo out a user folder": Case(["demo", "--out", "mine"], r"non-empty folder"),
}


def _refuse_writes_in(monkeypatch, folders: list[Path]) -> None:
    """``os.access`` says no to writing in ``folders``, as for a user without permission (the
    tests run as root, which may write anywhere)."""
    real = os.access

    def access(path, mode, *args, **kwargs):
        if mode & os.W_OK and any(Path(path).resolve() == f.resolve() for f in folders):
            return False
        return real(path, mode, *args, **kwargs)

    monkeypatch.setattr(paths_module.os, "access", access)


@pytest.mark.parametrize("case", list(CASES))
def test_every_failure_is_one_line_with_its_code_and_writes_nothing(
    world, monkeypatch, capsys, case
):
    spec = CASES[case]
    monkeypatch.chdir(world)
    _refuse_writes_in(monkeypatch, [world / name for name in spec.read_only])
    before = snapshot(world)
    code = main(spec.argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in err + out
    assert err.startswith("featurecache: error: ") and err.count("\n") == 1, err
    assert re.search(spec.pattern, err), err
    assert code == spec.code, err
    assert out == "" or re.fullmatch(r"data: [^\n]*\n", out), out
    assert snapshot(world) == before, "something was written"


def test_the_table_covers_every_subcommand_and_sixty_cases():
    commands = {spec.argv[0] for spec in CASES.values() if spec.argv}
    assert commands >= {"extract", "ls", "fit", "report", "predict", "layers", "demo"}
    assert len(CASES) >= 60


# -- hostile environments in a child process ------------------------------------------


FULL_DISK = {
    "fit": ["fit", "data.h5", "--out", "full-results", "--heads", "logreg", "--cv", "2"],
    "report": ["report", "results", "--out", "full-report"],
    "predict": ["predict", "data", "--head", HEAD, "--out", "full.csv", "--workers", "0"],
}


@pytest.mark.parametrize("command", list(FULL_DISK))
def test_a_full_disk_is_one_line_exit_1_and_leaves_nothing(world, tmp_path, command):
    """A file size limit of 700 bytes makes the first real write fail as on a full disk."""
    argv = [str(world / a) if (world / a.split("/")[0]).exists() or a.startswith("full") else a
            for a in FULL_DISK[command]]  # fmt: skip
    argv[0] = command
    before = snapshot(world)
    result = tmp_path / "result.json"
    child = start(run_cli, argv, result, fsize=700)
    child.join()
    done = outcome(result)
    assert done is not None and done["code"] == 1, done
    assert done["stderr"].startswith("featurecache: error: out of disk space"), done
    assert done["stderr"].count("\n") == 1 and "Traceback" not in done["stderr"]
    assert snapshot(world) == before, "a failed command left files behind"


def test_a_closed_stdout_pipe_ends_quietly(world):
    """``featurecache ls X`` whose reader has gone: no message, exit code 141."""
    with subprocess.Popen(
        [sys.executable, "-m", "featurecache", "ls", "data.h5"],
        cwd=world, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(),
    ) as process:  # fmt: skip
        process.stdout.close()  # the reader is gone before the first line is written
        stderr = process.stderr.read().decode()
        assert process.wait(timeout=120) == CLOSED_PIPE, stderr
    assert stderr == ""


def test_ls_into_head_prints_one_line_and_nothing_else(world):
    """The pipeline of the issue, through a shell: ``featurecache ls X | head -1``."""
    command = f"{sys.executable} -m featurecache ls data.h5 | head -1"
    done = subprocess.run(
        ["bash", "-c", command], cwd=world, capture_output=True, text=True, env=_env(), timeout=120
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout.count("\n") == 1 and "data.h5" in done.stdout


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }


# -- tracebacks only when asked; errors nobody planned for -----------------------------


@pytest.mark.parametrize("argv", [["-v", "ls", "nowhere.h5"], ["ls", "nowhere.h5", "--debug"]])
def test_verbose_before_or_after_the_subcommand_adds_the_traceback(world, monkeypatch, capsys,
                                                                   argv):  # fmt: skip
    monkeypatch.chdir(world)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and "InvalidArgumentError" in err
    assert err.splitlines()[-1].startswith("featurecache: error: CACHE must be an existing")


@pytest.mark.parametrize(
    ("error", "code", "pattern"),
    [
        (RuntimeError("boom\nsecond line"), 1, r"unexpected RuntimeError: boom\. This is a bug"),
        (OSError(errno.EROFS, "Read-only file system", "c.h5"), 1, r"refused 'c.h5': Read-only"),
        (OSError(errno.ENOSPC, "No space left on device"), 1, r"free space and re-run"),
        (PermissionError(errno.EACCES, "Permission denied", "x"), 1, r"Permission denied"),
        (OSError(errno.ENAMETOOLONG, "File name too long", "x"), 2, r"choose a shorter name"),
        (MemoryError(), 1, r"out of memory \(MemoryError\); lower --batch-size"),
        (RuntimeError("DefaultCPUAllocator: can't allocate memory"), 1, r"out of memory"),
    ],
    ids=["bug", "read-only", "disk full", "permission", "name too long", "memory", "torch-oom"],
)
def test_any_exception_is_one_line(world, monkeypatch, capsys, error, code, pattern):
    import featurecache.app._command_ls as ls_command

    def fail(args):
        raise error

    monkeypatch.setattr(ls_command, "run", fail)  # the parser is built inside main
    assert main(["ls", str(world / "data.h5")]) == code
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and "Traceback" not in err and out == ""
    assert re.search(pattern, err), err


# -- help that answers ----------------------------------------------------------------


def _subcommands():
    import featurecache.app.cli as cli

    parser = cli.build_parser()
    return parser, parser._subparsers._group_actions[0].choices


def test_every_option_of_every_subcommand_has_help_and_shows_its_default():
    _, commands = _subcommands()
    for name, command in commands.items():
        assert command.description, f"{name} has no description"
        text = command.format_help()
        assert "(default: None)" not in text, name
        for action in command._actions:
            if action.dest == "help" or action.default is argparse.SUPPRESS:  # -v: the top's
                continue
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
            if action.option_strings:
                shown = command.formatter_class(name)._get_help_string(action)
                assert "default" in shown or action.required, (name, action.option_strings)


@pytest.mark.parametrize("name", ["ls", "backbones"])
def test_ls_and_backbones_describe_themselves(name, capsys):
    assert main([name, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") > 4 and "show this help message" in out


# -- the Python API refuses what the CLI refuses ----------------------------------------


def test_extract_refuses_a_string_of_layers_and_a_float_split(world):
    from featurecache.core._validation import ParameterError

    before = snapshot(world)
    with pytest.raises(ParameterError, match=r"'layers' parameter of extract must be a non-empty "
                                             r"list of names \(str\)\. Got 'layer1' instead\. "
                                             r"Write \['layer1'\] for one name\."):  # fmt: skip
        extract(world / "data", world / "new.h5", layers="layer1", **SETTINGS)
    with pytest.raises(ParameterError, match=r"'split' parameter of extract must be "
                                             r"'random:FRACTION'.*Got 0\.2 instead\. Write "
                                             r"'random:0\.2'\."):  # fmt: skip
        extract(world / "data", world / "new.h5", split=0.2, **SETTINGS)
    assert snapshot(world) == before


def test_images_are_refused_as_the_cli_refuses_them(world):
    from featurecache.core._validation import ParameterError

    image = world / "data" / "ant" / "00.png"
    with pytest.raises(ParameterError, match=r"'out' parameter of write_predictions must be"):
        write_predictions(pd.DataFrame({"id": []}), image, force=True)
    with Image.open(image) as still:
        still.verify()  # still an image


# -- nothing left by a refused or failed command; user files never overwritten ---------


def test_predictions_aimed_at_an_image_leave_its_bytes(world, monkeypatch, capsys):
    monkeypatch.chdir(world)
    image = world / "data" / "ant" / "01.png"
    before = image.read_bytes()
    for force in ([], ["--force"]):
        assert main(_predict(*force, out="data/ant/01.png")) == 2
        assert "It names an image" in capsys.readouterr().err
    assert image.read_bytes() == before


def test_force_replaces_a_user_file_and_predictions_replace_their_own(world, tmp_path, capsys):
    target = tmp_path / "out.csv"
    target.write_text("name,value\nmine,1\n")
    argv = ["predict", str(world / "data"), "--head", str(world / HEAD), "--out", str(target),
            "--workers", "0"]  # fmt: skip
    assert main(argv) == 2
    assert (
        "featurecache did not write; choose a new path, or add --force" in capsys.readouterr().err
    )
    assert target.read_text() == "name,value\nmine,1\n"
    assert main([*argv, "--force"]) == 0
    assert target.read_text().startswith("id,path,status,reason,prediction")
    inode = target.stat().st_ino
    assert main(argv) == 0  # predictions featurecache wrote are replaced without --force
    assert target.stat().st_ino != inode


def test_report_writes_into_a_user_folder_only_with_force_and_keeps_its_files(
    world, tmp_path, capsys
):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    argv = ["report", str(world / "results"), "--out", str(mine)]
    assert main(argv) == 2 and sorted(os.listdir(mine)) == ["notes.txt"]
    assert main([*argv, "--force"]) == 0
    assert (mine / "notes.txt").read_text() == "keep me"
    assert (mine / "report.md").is_file() and (mine / ".featurecache-report").is_file()
    assert main(argv) == 0  # now a report folder: no --force needed
    capsys.readouterr()


def test_a_failed_fit_leaves_nothing_and_the_folder_stays_usable(world, tmp_path, monkeypatch,
                                                                 capsys):  # fmt: skip
    """The issue's symptom: a fit that stopped left run.json, and a later fit into the folder
    for another cache was refused."""
    import pipelines.fitting._fit as fit_module

    out = tmp_path / "r"
    argv = ["fit", str(world / "data.h5"), "--out", str(out), "--heads", "logreg", "--cv", "2",
            "--jobs", "1"]  # fmt: skip

    def broken(*args, **kwargs):
        raise RuntimeError("a head crashed")

    with monkeypatch.context() as patch:
        patch.setattr(fit_module, "_fit_layer", broken)
        assert main(argv) == 1
    assert "unexpected RuntimeError: a head crashed" in capsys.readouterr().err
    assert not out.exists()
    out.mkdir()  # an empty folder fails the same way and stays empty
    with monkeypatch.context() as patch:
        patch.setattr(fit_module, "_fit_layer", broken)
        assert main(argv) == 1
    assert list(out.iterdir()) == []
    argv[1] = str(world / "other.h5")
    assert main(argv) == 0
    assert (out / "run.json").is_file()
    capsys.readouterr()


def test_fit_force_replaces_a_user_file_and_other_samples_results(world, tmp_path, capsys):
    target = tmp_path / "r"
    target.write_text("a user's file")
    argv = ["fit", str(world / "other.h5"), "--out", str(target), "--heads", "logreg", "--cv", "2",
            "--jobs", "1"]  # fmt: skip
    assert main(argv) == 2 and target.read_text() == "a user's file"
    assert main([*argv, "--force"]) == 0 and (target / "run.json").is_file()
    shutil.copytree(world / "results", tmp_path / "old")
    argv[3] = str(tmp_path / "old")
    assert main(argv) == 2
    assert main([*argv, "--force"]) == 0
    run = json.loads((tmp_path / "old" / "run.json").read_text())
    assert run["cache"] == str((world / "other.h5").resolve())
    assert len(pd.read_csv(tmp_path / "old" / "results.csv")) == 1
    capsys.readouterr()


# -- extract states what it understood before any compute ------------------------------


def test_extract_states_the_data_and_lists_skipped_entries_with_v(world, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(world / "split", data)
    (data / "Train" / "ant" / ".DS_Store").write_text("")
    (data / "Train" / "ant" / "notes.txt").write_text("")
    (data / "Test" / "wasp").mkdir()
    argv = ["extract", str(data), "--cache", str(tmp_path / "c.h5"), *EXTRACT, "--model", "x"]
    assert main(argv) == 2
    out = capsys.readouterr().out
    assert out == (
        "data: 2 classes, 10 images (train 6, test 4); skipped: 1 hidden file or folder, "
        "1 file that is not an image, 1 class folder without images\n"
    )
    assert main([*argv, "-v"]) == 2
    assert capsys.readouterr().out.splitlines()[1:] == [
        "  skipped (hidden files or folders): Train/ant/.DS_Store",
        "  skipped (files that are not images): Train/ant/notes.txt",
        "  skipped (class folders without images): Test/wasp",
    ]
    assert not (tmp_path / "c.h5").exists()


def test_resplit_replaces_the_data_s_own_splits(world, tmp_path, capsys):
    argv = ["extract", str(world / "split"), "--cache", str(tmp_path / "c.h5"), *EXTRACT,
            "--layers", "embedding", "--split", "random:0.5"]  # fmt: skip
    assert main(argv) == 2
    assert "add --resplit" in capsys.readouterr().err
    with one_torch_thread():
        assert main([*argv, "--resplit"]) == 0
    assert capsys.readouterr().out.startswith("data: 2 classes, 10 images (train 5, test 5)")
