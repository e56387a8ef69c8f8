"""The data loader: worker processes that persist from pass to pass, ``workers="auto"``, and
the share of the run the forward waited for data."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch
from PIL import Image

from featurecache import load_dataset
from featurecache.data._datasets import Dataset
from featurecache.engines import _runner as _runner_module
from featurecache.engines._options import MAX_LOADERS, resolve_loader_workers
from featurecache.engines._runner import (
    DataClock,
    Plan,
    ShardRunner,
    data_loader,
)
from featurecache.models._rebuild import feature_config
from featurecache.models._registry import load_backbone


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (root / label).mkdir()
        for i in range(6):
            pixels = rng.integers(0, 256, (50 + i, 60, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / label / f"{i}.jpg", quality=90)
    return root


def _runner() -> ShardRunner:
    backbone = load_backbone("resnet18", "none", image_size=32)
    infos = {info.name: info for info in backbone.layers}
    config = feature_config(backbone, "avg", "float32", "float32")
    return ShardRunner(backbone, infos, "avg", config, torch.device("cpu"))


def test_one_set_of_loader_processes_serves_every_pass(folder):
    dataset = load_dataset(folder, split="none")
    plan = Plan(4, len(dataset), tuple((shard, ("layer1",)) for shard in range(3)))
    runner = _runner()
    expected = next(runner.run(dataset, Plan(12, 12, ((0, ("layer1",)),)), 4, 0))
    loaders = set()
    parts = []
    for part in plan.parts():  # one pass per shard, as a Ray actor runs them
        (result,) = runner.run(dataset, part, 4, 2)
        parts.append(result.features["layer1"])
        loaders.add(id(runner._persistent[2]))
    assert len(loaders) == 1
    np.testing.assert_allclose(np.concatenate(parts), expected.features["layer1"], rtol=1e-5)
    # A pass abandoned half-way leaves the loader usable.
    abandoned = runner.run(dataset, Plan(4, 12, ((0, ("layer1",)), (1, ("layer1",)))), 2, 2)
    next(abandoned)
    abandoned.close()
    (again,) = runner.run(dataset, plan.parts()[2], 4, 2)
    assert np.array_equal(again.features["layer1"], parts[2])


@pytest.mark.parametrize(
    ("cpus", "device", "expected"),
    [
        (1, "cpu", 1),
        (2, "cpu", 2),
        (16, "cpu", 16),
        (128, "cpu", MAX_LOADERS),
        (1, "cuda", 1),
        (2, "cuda", 1),
        (16, "cuda", 15),
        (128, "cuda", MAX_LOADERS),
    ],
)
def test_auto_workers_scale_with_the_cores(folder, cpus, device, expected):
    # On the CPU the loaders take every core at the lowest priority; beside an accelerator
    # one core is left to feed it.
    dataset = load_dataset(folder, split="none")
    assert resolve_loader_workers("auto", dataset, cpus, device) == expected
    assert resolve_loader_workers(3, dataset, cpus, device) == 3
    arrays = Dataset.from_arrays(np.zeros((2, 4, 4), np.uint8), [0, 1], ["", ""], ["a", "b"])
    assert resolve_loader_workers("auto", arrays, cpus, device) == 0


def _niceness(image) -> torch.Tensor:
    """A "preprocess" that reports the priority of the process it runs in."""
    return torch.full((1, 2, 2), float(os.nice(0)))


@pytest.mark.parametrize("background", [True, False])
def test_loader_processes_yield_the_cores_to_a_cpu_forward(folder, background):
    dataset = load_dataset(folder, split="none")
    before = os.nice(0)
    loader = data_loader(dataset, _niceness, "exact", 4, 1, background=background)
    seen = {float(v) for _, images, *_ in loader for v in images.flatten()}
    assert seen == ({19.0} if background else {float(before)})
    assert os.nice(0) == before  # this process keeps its priority


def test_a_cpu_runner_starts_background_loaders(folder, monkeypatch):
    calls = []
    real = _runner_module.data_loader

    def spy(*args, **kwargs):
        calls.append(kwargs.get("background", False))
        return real(*args, **kwargs)

    monkeypatch.setattr(_runner_module, "data_loader", spy)
    dataset = load_dataset(folder, split="none")
    next(_runner().run(dataset, Plan(12, 12, ((0, ("layer1",)),)), 4, 1))
    assert calls == [True]


class _Bar:
    def __init__(self) -> None:
        self.postfix = ""

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.postfix = text


def _slow(n: int, seconds: float):
    for i in range(n):
        time.sleep(seconds)
        yield i


def test_the_clock_tells_decode_bound_from_compute_bound():
    decode_bound, bar = DataClock(), _Bar()
    assert list(decode_bound.wrap(_slow(4, 0.05), bar)) == [0, 1, 2, 3]
    assert decode_bound.share > 0.9 and decode_bound.describe().endswith("(decode-bound)")
    assert bar.postfix.startswith("data wait ") and bar.postfix.endswith("(decode-bound)")

    compute_bound = DataClock()
    for _ in compute_bound.wrap(range(4)):
        time.sleep(0.05)  # the forward
    assert compute_bound.share < 0.2
    assert compute_bound.describe() == f"data wait {compute_bound.share:.0%} (compute-bound)"
