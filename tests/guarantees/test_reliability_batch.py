"""Item 2 (and 9): a batch that raises or yields NaN/Inf commits nothing of its shard.

A forward hook on ``layer2`` fails on the fourth batch (rows 6 and 7 of 12; shards of
4 rows, batches of 2): it raises, or writes NaN or Inf into one sample. The error is a
:class:`BatchError` naming exactly the batch's sample ids; shard 0 (rows 0-3) stays
committed and bit-identical to a clean run; nothing of shard 1 (rows 4-7, whose first
batch succeeded) or later is on disk. Nothing is lost: resuming without the fault equals
the clean run.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from _workers import (
    SETTINGS,
    make_images,
    one_torch_thread,
    read_layers,
    run_options,
    temporaries,
)

from featurecache import extract
from featurecache.cache import _format as fmt
from featurecache.engines._runner import ShardRunner
from featurecache.exceptions import BatchError

LAYERS = ["layer2", "embedding"]
RUN = {"shard_size": 4, "batch_size": 2}
OPTIONS = {**SETTINGS, "layers": LAYERS, "options": run_options(**RUN)}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The clean run and the faulty runs must use the same kernels to agree bit for bit."""
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("images"), n_per_class=6)  # 12 rows


@pytest.fixture(scope="module")
def reference(images, tmp_path_factory):
    cache = tmp_path_factory.mktemp("reference") / "c.h5"
    extract(images, cache, **OPTIONS)
    return read_layers(cache, "resnet18", LAYERS)


def _inject(monkeypatch, kind: str, at_batch: int = 4) -> None:
    """Make ``layer2`` fail on the ``at_batch``-th batch of the next extraction."""
    original = ShardRunner.model_for
    seen = []

    def hook(module, inputs, output):
        seen.append(1)
        if len(seen) != at_batch:
            return None
        if kind == "raise":
            raise RuntimeError("injected failure in layer2")
        broken = output.clone()
        broken[1 if kind == "nan" else 0, 0, 0, 0] = float("nan" if kind == "nan" else "inf")
        return broken

    def model_for(self, layers):
        first = layers not in self._models
        module = original(self, layers)  # runs the probe batch before the hook exists
        if first:
            module.get_submodule("layer2").register_forward_hook(hook)
        return module

    monkeypatch.setattr(ShardRunner, "model_for", model_for)


@pytest.mark.parametrize(
    ("kind", "locking", "named", "message"),
    [
        ("raise", None, [6, 7], r"a batch of 2 samples failed in resnet18 \(RuntimeError: inj"),
        (
            "nan",
            None,
            [7],
            r"layer '(layer2|embedding)' of resnet18 produced NaN or Inf for 1 samples",
        ),
        (
            "inf",
            None,
            [6],
            r"layer '(layer2|embedding)' of resnet18 produced NaN or Inf for 1 samples",
        ),
        ("raise", False, [6, 7], r"a batch of 2 samples failed in resnet18"),
    ],
    ids=["raises", "nan", "inf", "raises-no-locking"],
)
def test_failed_batch_commits_nothing_of_its_shard_and_keeps_earlier_ones(
    images, reference, tmp_path, monkeypatch, kind, locking, named, message
):
    cache = tmp_path / "c.h5"
    arguments = {**OPTIONS, "options": run_options(**RUN, locking=locking)}
    _inject(monkeypatch, kind)
    with pytest.raises(BatchError, match=message) as caught:
        extract(images, cache, **arguments)
    ids = read_ids(cache)
    text = str(caught.value)
    assert all(ids[row] in text for row in named), text
    assert not [i for row, i in enumerate(ids) if row not in named and i in text], text
    assert "nothing of this batch was committed and earlier shards are kept" in text
    assert "\n" not in text

    for layer, (X, status) in read_layers(cache, "resnet18", LAYERS).items():
        assert status.tolist() == [1] * 4 + [0] * 8, layer
        assert X[:4].tobytes() == reference[layer][0][:4].tobytes(), layer
        assert np.isnan(X[4:]).all(), layer
    shards = sorted(p.name for p in (tmp_path / "c.h5.d").rglob("shard-*"))
    assert shards == ["shard-000000.h5"] and not temporaries(tmp_path)

    monkeypatch.undo()
    result = extract(images, cache, **arguments)
    assert (result.shards_written, result.n_ok) == (2, 12)
    for layer, (X, status) in read_layers(cache, "resnet18", LAYERS).items():
        assert X.tobytes() == reference[layer][0].tobytes() and (status == 1).all(), layer


def read_ids(cache) -> list[str]:
    with h5py.File(cache, "r") as f:
        return f[fmt.sample_path("ids")].asstr()[:].tolist()
