"""The Ray engine writes the in-process cache bit for bit, also when a worker is killed mid-shard.

A local Ray instance on loopback (2 CPUs, a small object store) lives for this module only.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from _synthetic import write_cache
from PIL import Image

from featurecache import LocalEngine, RayEngine, RunOptions, extract, open_cache
from featurecache.app.cli import main
from featurecache.cache import _format as fmt
from featurecache.data._datasets import Dataset
from featurecache.engines._runner import resolve_dtype
from featurecache.exceptions import FeatureCacheError, InvalidArgumentError

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'featurecache[ray]'")

pytestmark = [pytest.mark.ray, pytest.mark.slow]

# Ray workers cannot import this test module: ship its classes (_DiesOnce) by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

RUN = dict(device="cpu", shard_size=8, batch_size=4)
SETTINGS = dict(
    model="resnet18",
    weights="none",
    image_size=32,
    dtype="float32",
    options=RunOptions(**RUN),
)


@pytest.fixture(scope="module")
def ray_cluster():
    if ray.is_initialized():  # left running by another module: start ours with known resources
        ray.shutdown()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=200 * 2**20,
    )
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Two classes of 12 random RGB images of different sizes, and one file that is no image."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for cls in ("ant", "bee"):
        (root / cls).mkdir()
        for i in range(12):
            h, w = (int(v) for v in rng.integers(32, 48, 2))
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i:02d}.png")
    (root / "bee" / "broken.png").write_bytes(b"not an image")
    return root


def _arrays(n=40):
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    splits = ["train"] * (n - n // 4) + ["test"] * (n // 4)
    return Dataset.from_arrays(pixels, np.arange(n) % 2, splits, ["a", "b"])


@dataclasses.dataclass(frozen=True, eq=False)
class _DiesOnce(Dataset):
    """The worker that first loads ``row`` kills itself with SIGKILL, in the middle of a shard."""

    marker: str = ""
    row: int = 13

    def load_image(self, index: int):
        if index == self.row:
            try:
                fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass  # the retry: load normally
            else:
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                os.kill(os.getpid(), signal.SIGKILL)
        return super().load_image(index)


def _plain(value):
    if isinstance(value, np.ndarray) and value.dtype.kind not in "OSU":
        return (value.dtype.str, value.shape, value.tobytes())
    if isinstance(value, np.ndarray):
        return [v.decode() if isinstance(v, bytes) else v for v in value.tolist()]
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return (value.dtype.str, value.tobytes())
    return value


#: How a run went (its time and device), not what it computed: engines differ there.
RUN_ATTRIBUTES = ("extract_seconds", "images_per_second", "extract_device")


def _snapshot(cache) -> dict:
    """Every dataset (virtual ones read through) and every attribute of the index, as bytes,
    but the run attributes."""
    out = {}
    with h5py.File(cache, "r") as f:

        def visit(name, obj):
            keys = sorted(set(obj.attrs) - set(RUN_ATTRIBUTES))
            out[f"{name}@attrs"] = {key: _plain(obj.attrs[key]) for key in keys}
            if isinstance(obj, h5py.Dataset):
                out[name] = _plain(obj[()])

        f.visititems(visit)
        out["@attrs"] = {key: _plain(f.attrs[key]) for key in sorted(f.attrs)}
    return out


def _caches(tmp_path):
    """Two caches with the same file name, since the index records paths relative to it."""
    (tmp_path / "local").mkdir()
    (tmp_path / "ray").mkdir()
    return tmp_path / "local" / "cache.h5", tmp_path / "ray" / "cache.h5"


def test_cli_ray_engine_equals_in_process_bit_for_bit(ray_cluster, images, tmp_path):
    local, remote = _caches(tmp_path)
    args = [str(images), "--model", "resnet18", "--weights", "none", "--image-size", "32"]
    args += ["--dtype", "float32", "--device", "cpu", "--shard-size", "8", "--batch-size", "4"]
    args += ["--no-progress"]
    assert main(["extract", *args, "--cache", str(local), "--workers", "0"]) == 0
    assert (
        main(["extract", *args, "--cache", str(remote), "--engine", "ray", "--ray-workers", "2"])
        == 0
    )

    snapshot = _snapshot(remote)
    assert snapshot == _snapshot(local)
    status = snapshot[fmt.status_path("resnet18", "embedding")]
    assert np.frombuffer(status[2], np.int8).tolist().count(2) == 1  # the broken file, one row
    with h5py.File(remote, "r") as f:
        ids = f[fmt.sample_path("ids")].asstr()[:]
        failed = f[fmt.failures_path("resnet18", "row")][:]
        assert ids[failed].tolist() == ["bee/broken.png"]
        assert f[fmt.failures_path("resnet18", "reason")].asstr()[0]  # why it failed
        assert np.isnan(f[fmt.features_path("resnet18", "embedding")][failed[0]]).all()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The in-process cache of the arrays dataset."""
    cache = tmp_path_factory.mktemp("reference") / "cache.h5"
    extract(_arrays(), cache, **{**SETTINGS, "options": RunOptions(**RUN, workers=0)})
    return _snapshot(cache)


def _dies_once(marker) -> _DiesOnce:
    dataset = _arrays()
    fields = {f.name: getattr(dataset, f.name) for f in dataclasses.fields(Dataset)}
    return _DiesOnce(**fields, marker=str(marker))


def test_killed_worker_is_retried_and_the_cache_is_identical(ray_cluster, reference, tmp_path):
    cache = tmp_path / "cache.h5"
    marker = tmp_path / "killed.pid"
    result = extract(_dies_once(marker), cache, **SETTINGS, engine=RayEngine(workers=2))

    killed = int(marker.read_text())
    assert killed != os.getpid()
    with pytest.raises(ProcessLookupError):
        os.kill(killed, 0)
    assert result.shards_written == 5 and result.n_ok == 40 and result.device == "ray 2 x cpu"
    assert _snapshot(cache) == reference
    assert not list(tmp_path.rglob("*.tmp-*"))

    again = extract(_arrays(), cache, **SETTINGS, engine=RayEngine(workers=2))
    assert again.hit and again.rows_computed == 0


def test_worker_dying_beyond_retries_keeps_finished_shards_and_resumes(
    ray_cluster, reference, tmp_path
):
    cache = tmp_path / "cache.h5"
    with pytest.raises(FeatureCacheError, match=r"a Ray worker died .* re-run the same command"):
        extract(
            _dies_once(tmp_path / "killed.pid"), cache, **SETTINGS,
            engine=RayEngine(workers=1, max_retries=0),
        )  # fmt: skip
    with h5py.File(cache, "r") as f:  # shard 0 finished before the worker died in shard 1
        assert f[fmt.status_path("resnet18", "embedding")][:8].tolist() == [1] * 8
        assert f[fmt.status_path("resnet18", "embedding")][8:16].tolist() == [0] * 8

    in_process = {**SETTINGS, "options": RunOptions(**RUN, workers=0)}
    resumed = extract(_arrays(), cache, **in_process)  # the other engine resumes
    assert 0 < resumed.shards_written < 5
    assert _snapshot(cache) == reference


def test_views_on_ray_equal_the_in_process_views_bit_for_bit(ray_cluster, tmp_path):
    """Issue 14: each view is seeded by (sample id, view, seed), never by where it runs."""
    local, remote = _caches(tmp_path)
    views = dict(views=3, augment="rrc:0.5-1,flip,jitter:0.2", tta="flip")
    data = _arrays(24)
    extract(data, local, **SETTINGS, **views, engine=LocalEngine())
    extract(data, remote, **SETTINGS, **views, engine=RayEngine(workers=2))
    assert _snapshot(remote) == _snapshot(local)
    for kind in ("augment", "tta"):
        got = open_cache(remote).load_views("resnet18", "embedding", kind)
        want = open_cache(local).load_views("resnet18", "embedding", kind)
        assert got[0].tobytes() == want[0].tobytes() and got[1].tolist() == want[1].tolist()


def test_ray_settings_are_checked_before_any_work(ray_cluster, tmp_path):
    dataset = _arrays(8)
    cuda = {**SETTINGS, "options": RunOptions(**{**RUN, "device": "cuda"})}
    with pytest.raises(
        InvalidArgumentError,
        match=r"^The 'gpus_per_worker' parameter of RayEngine must be > 0 for device 'cuda'",
    ):
        extract(dataset, tmp_path / "a.h5", **cuda, engine=RayEngine())
    assert not (tmp_path / "a.h5.d").exists()
    with pytest.raises(
        InvalidArgumentError,
        match=r"^The 'workers' parameter of RayEngine must be an int >= 1. Got 0 instead.$",
    ):
        RayEngine(workers=0)
    gpus = {**SETTINGS, "options": RunOptions(**{**RUN, "device": "auto"})}
    with pytest.raises(InvalidArgumentError, match=r"the Ray cluster has 2 CPUs and 0 GPUs"):
        extract(dataset, tmp_path / "b.h5", **gpus, engine=RayEngine(gpus_per_worker=1))


def _dead_temporary(folder, final: str):
    """A temporary file as a writer killed mid-write leaves it: named after a dead process."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)  # fmt: skip
    tag = f"{socket.gethostname()}-{int(child.stdout)}-0123abcd"
    path = folder / f"{final}.tmp-{tag}"
    path.write_bytes(b"half a shard")
    return path


@pytest.mark.parametrize("engine", [LocalEngine(), RayEngine(workers=1)], ids=["local", "ray"])
def test_both_engines_apply_the_same_dtype_rule_and_the_same_cleanup(ray_cluster, tmp_path, engine):
    cache = tmp_path / "cache.h5"
    auto = {**SETTINGS, "dtype": "auto"}  # the rule decides, on the device the shards run on
    first = extract(_arrays(8), cache, **auto, engine=engine)
    assert first.compute_dtype == resolve_dtype("auto", torch.device("cpu"))
    with h5py.File(cache, "r") as f:
        assert f[fmt.features_path("resnet18")].attrs["compute_dtype"] == first.compute_dtype

    model_dir = tmp_path / "cache.h5.d" / "resnet18"
    leftovers = [
        _dead_temporary(model_dir, "shard-000000.h5"),
        _dead_temporary(tmp_path, "cache.h5"),
    ]
    hit = extract(_arrays(8), cache, **auto, engine=engine)
    assert hit.hit and not any(path.exists() for path in leftovers)

    cache.unlink()  # a stale (here: missing) index is rebuilt from the shard files on a hit
    leftovers = [_dead_temporary(model_dir, "shard-000000.h5")]
    again = extract(_arrays(8), cache, **auto, engine=engine)
    assert again.hit and cache.exists() and not leftovers[0].exists()
    with h5py.File(cache, "r") as f:
        assert f[fmt.status_path("resnet18", "embedding")][:].tolist() == [1] * 8


def _results(out) -> tuple[pd.DataFrame, dict[str, bytes]]:
    """``results.csv`` without its timings, and every prediction file's bytes."""
    table = pd.read_csv(out / "results.csv").drop(
        columns=["fit_seconds", "predict_seconds_per_1000"]
    )
    predictions = {
        str(path.relative_to(out)): path.read_bytes()
        for path in sorted((out / "predictions").rglob("*.csv"))
    }
    return table, predictions


def test_fit_on_ray_equals_loky(ray_cluster, tmp_path):
    cache = write_cache(tmp_path / "cache.h5")
    # One layer, one head: Ray's joblib backend starts a pool of workers for every search.
    fit = ["--layers", "informative", "--heads", "logreg", "--cv", "3", "--jobs", "2"]
    assert main(["fit", str(cache), "--out", str(tmp_path / "loky"), *fit]) == 0
    assert main(["fit", str(cache), "--out", str(tmp_path / "ray"), *fit, "--backend", "ray"]) == 0

    loky_table, loky_predictions = _results(tmp_path / "loky")
    ray_table, ray_predictions = _results(tmp_path / "ray")
    assert len(loky_table) == 1 and len(loky_predictions) == 1
    pd.testing.assert_frame_equal(ray_table, loky_table, check_exact=True)
    assert ray_predictions == loky_predictions
    assert ray.is_initialized()  # fit used the running instance and left it running
