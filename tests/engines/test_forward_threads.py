"""The in-process engine can give the forward pass fewer threads than cores (issue 22)."""

from __future__ import annotations

import pytest
import torch
from _workers import make_images, run_options

from featurecache import LocalEngine, extract, open_cache
from featurecache.core._validation import ParameterError
from featurecache.engines._runner import ShardRunner

ARGS = dict(model="resnet18", weights="none", layers=["embedding"], image_size=32, dtype="float32")


def test_the_forward_runs_on_the_threads_asked_for_and_they_are_restored(tmp_path, monkeypatch):
    seen = []
    original = ShardRunner._forward

    def forward(self, *args, **kwargs):
        seen.append(torch.get_num_threads())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ShardRunner, "_forward", forward)
    data = make_images(tmp_path / "data", n_per_class=3)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        extract(data, tmp_path / "one.h5", **ARGS, options=run_options(batch_size=2),
                engine=LocalEngine(forward_threads=1))  # fmt: skip
        assert seen == [1, 1, 1] and torch.get_num_threads() == 2
        seen.clear()
        extract(data, tmp_path / "two.h5", **ARGS, options=run_options(batch_size=2))
        assert seen == [2, 2, 2]
    finally:
        torch.set_num_threads(before)
    one, two = open_cache(tmp_path / "one.h5"), open_cache(tmp_path / "two.h5")
    assert (
        one.load("resnet18", "embedding")[2].tolist()
        == two.load("resnet18", "embedding")[2].tolist()
    )


def test_a_bad_thread_count_is_refused_with_the_template():
    with pytest.raises(ParameterError, match=r"^The 'forward_threads' parameter of LocalEngine "
                       r"must be None or an int >= 1\. Got 0 instead\."):  # fmt: skip
        LocalEngine(forward_threads=0)
