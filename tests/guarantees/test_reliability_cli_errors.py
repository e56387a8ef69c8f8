"""Item 8: every bad argument is a one-line error, exit code 2, and nothing is written.

Each case runs ``featurecache.app.cli.main`` in-process (the console script calls the same
function) with the working directory set to the test's folder, then checks: exit code 2,
exactly one line on stderr starting ``featurecache: error:`` that says what was expected
and what was given, and no file or folder created, changed or removed anywhere in the
inputs, the caches, the results folders or the working directory.
"""

from __future__ import annotations

import re

import pandas as pd
import pytest
from _workers import SETTINGS, make_images, one_torch_thread

from featurecache import extract
from featurecache.app.cli import main
from featurecache.exceptions import InvalidArgumentError, UnknownNameError
from pipelines import fit, open_cache

pytestmark = pytest.mark.slow

EXTRACT = ["--model", "resnet18", "--weights", "none", "--image-size", "32", "--device", "cpu",
           "--dtype", "float32", "--workers", "0", "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Inputs good and bad, two caches of different samples, and a results folder of one."""
    root = tmp_path_factory.mktemp("world")
    make_images(root / "data", n_per_class=5)
    make_images(root / "other", n_per_class=4)
    (root / "empty").mkdir()
    make_images(root / "one-class", n_per_class=3, classes=("ant",))
    rows = [f"data/ant/{i:02d}.png" for i in range(3)] + [f"data/bee/{i:02d}.png" for i in range(3)]
    manifests = {
        "test-only.csv": {"path": rows, "label": ["ant"] * 3 + ["bee"] * 3, "split": ["test"] * 6},
        "columns.csv": {"file": rows, "class": ["ant"] * 3 + ["bee"] * 3},
        "no-path.csv": {"path": rows[:5] + [""], "label": ["ant"] * 3 + ["bee"] * 3},
    }
    for name, columns in manifests.items():
        pd.DataFrame(columns).to_csv(root / name, index=False)
    with one_torch_thread():
        for data in ("data", "other"):
            extract(root / data, root / f"{data}.h5", layers=["embedding"], split="random:0.3",
                    **SETTINGS)  # fmt: skip
    fit(root / "data.h5", root / "results", heads=["logreg"], cv=2, n_jobs=1)
    return root


def _listing(root) -> dict[str, tuple]:
    return {
        str(p.relative_to(root)): (p.is_dir(), p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


CASES = {
    "unknown model": (
        ["extract", "data", "--cache", "new.h5", *EXTRACT, "--model", "resnet81"],
        r"Unknown backbone 'resnet81'\. Did you mean 'resnet18'",
    ),
    "unknown layer": (
        ["extract", "data", "--cache", "new.h5", *EXTRACT, "--layers", "layer9"],
        r"Unknown layer 'layer9' for resnet18\. Did you mean 'layer4'",
    ),
    "unknown split": (
        ["extract", "data", "--cache", "new.h5", *EXTRACT, "--split", "halves"],
        r"--split must be 'random:FRACTION' with 0 < FRACTION < 1, or 'none'. Got 'halves' instead.",
    ),
    "unknown resize mode": (
        ["extract", "data", "--cache", "new.h5", *EXTRACT, "--resize", "stretch"],
        r"--resize must be one of 'crop', 'squash', 'pad'\. Got 'stretch' instead\.",
    ),
    "prompts without {}": (
        ["extract", "data", "--cache", "new.h5", *EXTRACT, "--prompts", "columns.csv"],
        r"the prompts file 'columns.csv' must hold one template per line, each with \{\} once",
    ),
    "predict with neither head nor imagenet": (
        ["predict", "data", "--out", "p.csv"],
        r"predict takes either --head FILE or --imagenet --cache CACHE\.",
    ),
    "zeroshot without a text tower": (
        ["fit", "data.h5", "--out", "new-results", "--heads", "zeroshot"],
        r"head 'zeroshot' needs a stored zeroshot classifier and its layer; no model of cache "
        r"'data.h5' stores one",
    ),
    "empty folder": (
        ["extract", "empty", "--cache", "new.h5", *EXTRACT],
        r"DATA folder '.*/empty' holds no images; expected class sub-folders of images",
    ),
    "one class": (
        ["extract", "one-class", "--cache", "new.h5", *EXTRACT],
        r"must hold at least two classes to train a classifier; found 'ant'",
    ),
    "labels only in test": (
        ["extract", "test-only.csv", "--cache", "new.h5", *EXTRACT],
        r"has labels only in the test split; heads need labelled train \(or val\) rows",
    ),
    "CSV columns": (
        ["extract", "columns.csv", "--cache", "new.h5", *EXTRACT],
        r"must have columns path,label\[,split\]; missing path,label \(found file,class\)",
    ),
    "CSV paths": (
        ["extract", "no-path.csv", "--cache", "new.h5", *EXTRACT],
        r"has 1 rows without a path \(first at line 7\); every row needs a path",
    ),
    "missing data": (
        ["extract", "nowhere", "--cache", "new.h5", *EXTRACT],
        r"DATA must be a folder of class sub-folders, a CSV manifest or builtin:NAME; "
        r"'nowhere' does not exist",
    ),
    "cache is a directory": (
        ["extract", "data", "--cache", "empty", *EXTRACT],
        r"--cache must be a file path like features.h5, not a directory. Got '.*/empty' instead.",
    ),
    "cache is another file": (
        ["extract", "data", "--cache", "columns.csv", *EXTRACT],
        r"--cache must be a new path or an existing featurecache cache. Got '.*/columns.csv' "
        r"instead. Choose a new path: featurecache never overwrites other files.",
    ),
    "unknown head": (
        ["fit", "data.h5", "--out", "new-results", "--heads", "logreg,forest"],
        r"head 'forest' is not registered; choose from logreg, linsvm, svm, mlp",
    ),
    "unknown model to fit": (
        ["fit", "data.h5", "--out", "new-results", "--models", "resnet81"],
        r"model 'resnet81' is not in cache 'data.h5'; it has resnet18\. Did you mean 'resnet18'",
    ),
    "unknown layer to fit": (
        ["fit", "data.h5", "--out", "new-results", "--layers", "layer9"],
        r"layer 'layer9' is in none of the models resnet18; they have embedding",
    ),
    "fit a directory": (
        ["fit", "empty", "--out", "new-results"],
        r"CACHE must be a featurecache HDF5 file, not a directory; got '.*empty'",
    ),
    "results of another cache": (
        ["fit", "other.h5", "--out", "results", "--heads", "logreg", "--cv", "2"],
        r"results folder 'results' was made from other samples \(samples digest \w+…, "
        r"cache 'other.h5' has \w+…\); write into a new results folder",
    ),
    "report of no results": (
        ["report", "empty", "--out", "new-report"],
        r"RESULTS must be a results folder written by fit\. Got 'empty' instead\. It has no "
        r"run.json",
    ),
    "ls of a directory": (
        ["ls", "empty"],
        r"CACHE must be a featurecache HDF5 file, not a directory; got 'empty'",
    ),
    "ls of a missing file": (
        ["ls", "nowhere.h5"],
        r"CACHE must be an existing featurecache HDF5 file; 'nowhere.h5' does not exist",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_argument_is_one_line_exit_2_and_writes_nothing(world, monkeypatch, capsys, case):
    argv, expected = CASES[case]
    monkeypatch.chdir(world)
    before = _listing(world)
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, err
    assert err.startswith("featurecache: error: ") and err.count("\n") == 1, err
    assert re.search(expected, err), err
    # extract states what it understood of the data (stdout), then refuses the model
    assert out == "" or re.fullmatch(r"data: [^\n]*\n", out), out
    assert _listing(world) == before, "something was written"


def test_the_api_raises_the_same_errors(world):
    """The functions behind the commands raise ``ValueError`` subclasses before writing."""
    before = _listing(world)
    with pytest.raises(UnknownNameError, match=r"split 'validation' is not in cache"):
        open_cache(world / "data.h5").load("resnet18", "embedding", split="validation")
    with pytest.raises(UnknownNameError, match=r"forest"):
        fit(world / "data.h5", world / "new-results", heads=["forest"])
    with pytest.raises(InvalidArgumentError, match=r"holds no images"):
        extract(world / "empty", world / "new.h5", **SETTINGS)
    assert _listing(world) == before
