"""Item 6: a damaged or tampered committed file is detected and never yields wrong numbers.

Shard feature data is chunked with HDF5's Fletcher-32 filter and its SHA-256 is recorded
in the index; ``pipelines`` checks both. Each damage is detected with a message naming
the file and how to recompute it, and following that advice (delete, re-run the same
extraction) restores the original numbers exactly: nothing is lost.
"""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
from _workers import SETTINGS, make_images, one_torch_thread, read_layers, run_options

from featurecache import extract
from featurecache.cache import _format as fmt
from featurecache.exceptions import CacheCorruptError
from pipelines import open_cache

LAYERS = ["layer2", "embedding"]
OPTIONS = {**SETTINGS, "layers": LAYERS, "options": run_options(shard_size=4, batch_size=4)}
RECOMPUTE = "re-run the same `featurecache extract` command to recompute it"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A complete cache of 12 images in 3 shards, and its images."""
    root = tmp_path_factory.mktemp("pristine")
    data = make_images(root / "data", n_per_class=6)
    (root / "cache").mkdir()
    with one_torch_thread():
        extract(data, root / "cache" / "c.h5", **OPTIONS)
    return data, root / "cache" / "c.h5"


@pytest.fixture
def copy(pristine, tmp_path):
    """A copy of the pristine cache, its segment file (the run's 3 shards compacted), and
    the images."""
    data, cache = pristine
    shutil.copytree(cache.parent, tmp_path / "cache")
    copied = tmp_path / "cache" / "c.h5"
    (shard,) = copied.parent.glob("c.h5.d/resnet18/p-*/*.h5")
    assert shard.name == "segment-000000-000002.h5"
    return data, copied, shard


def _flip(path, offset: int, n: int = 1) -> None:
    data = bytearray(path.read_bytes())
    for i in range(offset, offset + n):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _recompute(data, cache, shard, pristine_cache) -> None:
    """Follow the error message: delete the named file and re-run the extraction."""
    shard.unlink()
    with one_torch_thread():
        assert extract(data, cache, **OPTIONS).shards_written == 3  # the segment's shards
    got, expected = (
        read_layers(cache, "resnet18", LAYERS),
        read_layers(pristine_cache, "resnet18", LAYERS),
    )
    for layer in LAYERS:
        assert got[layer][0].tobytes() == expected[layer][0].tobytes(), layer
    open_cache(cache).verify()


def test_flipped_bytes_in_feature_data_are_detected(copy, pristine):
    data, cache, shard = copy
    with h5py.File(shard, "r") as f:
        chunk = f[fmt.shard_features_path("embedding")].id.get_chunk_info(0)
    _flip(shard, chunk.byte_offset + chunk.size // 2, n=4)

    with h5py.File(cache, "r") as f, pytest.raises(OSError, match="filter returned failure"):
        f[fmt.features_path("resnet18", "embedding")][:]  # plain h5py: the Fletcher-32 check fails
    message = rf"shard file '{shard}' of resnet18/embedding is corrupt: .*; delete '{shard}' and "
    with pytest.raises(CacheCorruptError, match=message + RECOMPUTE.replace("`", ".")):
        open_cache(cache).load("resnet18", "embedding")
    with pytest.raises(CacheCorruptError, match=str(shard)):
        open_cache(cache).verify()
    open_cache(cache).load("resnet18", "layer2")  # the other layer's chunks are intact
    _recompute(data, cache, shard, pristine[1])


def test_rewritten_numbers_with_valid_hdf5_checksums_fail_the_sha256(copy, pristine):
    data, cache, shard = copy
    with h5py.File(shard, "r+") as f:  # HDF5 recomputes Fletcher-32: only the SHA-256 sees it
        f[fmt.shard_features_path("embedding")][0, 0] += 1.0
    with pytest.raises(
        CacheCorruptError,
        match=rf"shard file '{shard}' of resnet18/embedding is corrupt: the SHA-256 of layer "
        r"'embedding' is \w+…, the commit log records \w+…; delete",
    ):
        open_cache(cache).load("resnet18", "embedding")
    _recompute(data, cache, shard, pristine[1])


def test_truncated_shard_is_detected_by_readers_and_by_the_next_writer(copy, pristine):
    data, cache, shard = copy
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(OSError, match="truncated file"):
        h5py.File(shard, "r")
    with h5py.File(cache, "r") as f, pytest.raises(OSError, match="truncated file"):
        f[fmt.features_path("resnet18", "layer2")][:]
    with pytest.raises(CacheCorruptError, match=rf"shard file '{shard}' of resnet18/layer2 is"):
        open_cache(cache).load("resnet18", "layer2")
    with pytest.raises(
        CacheCorruptError,
        match=rf"shard file '{shard}' cannot be read \(.*truncated file.*\); delete it and "
        + RECOMPUTE.replace("`", "."),
    ):
        extract(data, cache, **OPTIONS)
    _recompute(data, cache, shard, pristine[1])


def test_a_random_flipped_byte_anywhere_in_a_shard_never_gives_wrong_numbers(copy):
    """Whatever byte is flipped, a load raises or returns the stored numbers exactly.

    Bytes outside the feature data (the row numbers, reasons, unused space) may change
    nothing; a flipped status byte can turn a row into "not computed" (the status is not
    checksummed), which loses the row from this load but never returns a wrong number.
    """
    _, cache, shard = copy
    expected = {layer: open_cache(cache).load("resnet18", layer) for layer in LAYERS}
    original = shard.read_bytes()
    rng = np.random.default_rng(6)
    outcomes = {"raised": 0, "exact": 0, "fewer rows": 0}
    for offset in rng.choice(len(original), size=40, replace=False):
        _flip(shard, int(offset))
        for layer in LAYERS:
            X, _, ids = expected[layer]
            try:
                got_X, _, got_ids = open_cache(cache).load("resnet18", layer)
            except (CacheCorruptError, OSError):
                outcomes["raised"] += 1
                continue
            keep = np.isin(ids, got_ids)
            assert got_ids.tolist() == ids[keep].tolist(), offset
            assert got_X.tobytes() == X[keep].tobytes(), f"wrong numbers after flipping {offset}"
            outcomes["exact" if keep.all() else "fewer rows"] += 1
        shard.write_bytes(original)
    assert outcomes["raised"] > 0 and outcomes["exact"] > 0, outcomes


def test_a_damaged_index_is_rebuilt_by_the_next_run(copy, pristine):
    """The index holds no data of its own: readers take the folder, the next run rebuilds it."""
    data, cache, _ = copy
    cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])
    with pytest.raises(OSError):
        h5py.File(cache, "r")  # plain h5py needs the index
    read = open_cache(cache).load("resnet18", "embedding")[0]  # the reader takes the folder
    assert read.tobytes() == open_cache(pristine[1]).load("resnet18", "embedding")[0].tobytes()
    result = extract(data, cache, **OPTIONS)
    assert result.hit and result.n_ok == 12
    got, expected = (
        read_layers(cache, "resnet18", LAYERS),
        read_layers(pristine[1], "resnet18", LAYERS),
    )
    for layer in LAYERS:
        assert got[layer][0].tobytes() == expected[layer][0].tobytes(), layer
    open_cache(cache).verify()
