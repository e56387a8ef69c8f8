"""The index carries the throughput of its model's runs from the end of the first run on."""

from __future__ import annotations

import json

import h5py
from PIL import Image

import featurecache
from featurecache.cache import _format as fmt


def test_a_finished_run_leaves_its_throughput_in_the_index_read_with_plain_h5py(tmp_path):
    for label in ("a", "b"):
        (tmp_path / "photos" / label).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (16, 16), (60 * i, 90, 200)).save(
                tmp_path / "photos" / label / f"{i}.png"
            )
    cache = tmp_path / "c.h5"
    result = featurecache.extract(
        tmp_path / "photos", cache, layers=["embedding"], image_size=32, split="random:0.25"
    )
    runs = [
        json.loads(line)
        for line in fmt.run_log(cache, "efficientnet_lite0").read_text().splitlines()
    ]
    with h5py.File(cache, "r") as f:
        attrs = dict(f[fmt.features_path("efficientnet_lite0")].attrs)
    assert attrs["extract_seconds"] == round(runs[0]["seconds"], 3) > 0
    assert attrs["images_per_second"] == round(8 / runs[0]["seconds"], 2)
    assert attrs["extract_device"] == result.device == "cpu"
    # a cache hit writes nothing and the attributes stay
    assert featurecache.extract(
        tmp_path / "photos", cache, layers=["embedding"], image_size=32, split="random:0.25"
    ).hit
    with h5py.File(cache, "r") as f:
        assert f[fmt.features_path("efficientnet_lite0")].attrs["extract_device"] == "cpu"
