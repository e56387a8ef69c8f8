"""Engines as plug-ins: RunOptions, the engines' own settings, the dtype rule, the CLI's mapping.

Everything here runs without Ray; tests/engines/test_ray.py runs both engines for real.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from featurecache import LocalEngine, RayEngine, RunOptions
from featurecache.app.cli import main
from featurecache.engines._ray import _RaySession
from featurecache.engines._runner import resolve_dtype
from featurecache.exceptions import InvalidArgumentError
from featurecache.extraction._extract import ExtractResult

MESSAGES = {
    "batch_size": ({"batch_size": True}, "an int >= 1. Got True"),
    "workers": ({"workers": True}, "'auto' or an int >= 0. Got True"),
    "device": ({"device": "gpu"}, "one of 'auto', 'cpu', 'cuda', 'mps'. Got 'gpu'"),
    "shard_size": ({"shard_size": 0}, "an int >= 1. Got 0"),
    "locking": ({"locking": 0}, "None, True or False. Got 0"),
    "progress": ({"progress": "yes"}, "True or False. Got 'yes'"),
}


@pytest.mark.parametrize("parameter", list(MESSAGES))
def test_run_options_refuse_bad_settings_by_parameter_name(parameter):
    changes, expected = MESSAGES[parameter]
    with pytest.raises(InvalidArgumentError) as caught:
        RunOptions(**changes)
    assert str(caught.value).startswith(f"The {parameter!r} parameter of RunOptions must be ")
    assert f"must be {expected} instead." in str(caught.value)


def test_ray_engine_refuses_bad_settings_by_parameter_name():
    for changes, expected in [
        ({"workers": 0}, "The 'workers' parameter of RayEngine must be an int >= 1. Got 0"),
        ({"workers": True}, "The 'workers' parameter of RayEngine must be an int >= 1. Got True"),
        ({"cpus_per_worker": -1}, "The 'cpus_per_worker' parameter of RayEngine must be a number"),
        ({"gpus_per_worker": True}, "The 'gpus_per_worker' parameter of RayEngine must be a"),
        ({"max_retries": -1}, "The 'max_retries' parameter of RayEngine must be an int >= 0"),
        ({"address": 6379}, "The 'address' parameter of RayEngine must be None or a Ray address"),
    ]:
        with pytest.raises(InvalidArgumentError, match=rf"^{expected}"):
            RayEngine(**changes)


def test_ray_session_resolves_the_dtype_rule_on_a_worker_with_its_resources():
    """``auto`` depends on the hardware, so the one rule runs as a Ray task on the workers'
    resources; an explicit or cached dtype needs no worker (and no connection)."""
    calls = []
    gpus = {"GPU": 1.0}

    class FakeRay:
        def remote(self, function):
            return Task(function)

        def get(self, value):
            return value

        def cluster_resources(self):
            return {"CPU": 4.0, **gpus}

    class Task:
        def __init__(self, function, resources=None):
            self.function, self.resources = function, resources

        def options(self, **resources):
            return Task(self.function, resources)

        def remote(self, *args):
            calls.append((self.function, self.resources, args))
            return self.function(*args)

    engine = RayEngine(gpus_per_worker=0.5, cpus_per_worker=2)
    with engine.session(RunOptions()) as session:
        assert isinstance(session, _RaySession) and session.device == torch.device("cuda")
        session._ray = FakeRay()  # connected, started by someone else
        assert session.resolve_dtype("float16", None) == "float16"
        assert not calls
        answer = session.resolve_dtype("auto", None)
    assert answer == resolve_dtype("auto", torch.device("cuda"))
    assert calls == [
        (resolve_dtype, {"num_cpus": 2, "num_gpus": 0.5}, ("auto", torch.device("cuda"), None))
    ]
    gpus.clear()  # a cluster without GPUs: an error, not a task waiting forever
    with engine.session(RunOptions()) as session:
        session._ray = FakeRay()
        with pytest.raises(InvalidArgumentError, match=r"^the Ray cluster has 4 CPUs and 0 GPUs"):
            session.resolve_dtype("auto", None)


def test_local_engine_applies_the_same_rule_in_process():
    with LocalEngine().session(RunOptions(device="cpu")) as session:
        assert session.device == torch.device("cpu")
        assert session.resolve_dtype("auto", None) == resolve_dtype("auto", torch.device("cpu"))


def test_ray_device_must_fit_the_reserved_gpus():
    with pytest.raises(InvalidArgumentError, match=r"^The 'gpus_per_worker' parameter of Ray"):
        with RayEngine().session(RunOptions(device="cuda")):
            pass
    with pytest.raises(InvalidArgumentError, match=r"^The 'device' parameter of RunOptions must"):
        with RayEngine().session(RunOptions(device="mps")):
            pass


@pytest.fixture
def calls(monkeypatch, tmp_path) -> list[dict]:
    """Replace extraction behind the CLI; record what it was called with."""
    import featurecache.extraction._extract

    seen = []

    def extract_spec(data, cache, spec, **kwargs):
        seen.append(kwargs)
        return ExtractResult(Path(cache), "m", ("x",), (), 2, 2, 0, 0, 0, 0.0)

    monkeypatch.setattr(featurecache.extraction._extract, "extract_spec", extract_spec)
    monkeypatch.chdir(tmp_path)
    return seen


def _extract(*flags) -> list[str]:
    return ["extract", "data", "--cache", "c.h5", "--no-progress", *flags]


def test_cli_reads_workers_with_engine_ray_as_ray_workers_with_a_warning(calls, capsys):
    assert main(_extract("--workers", "3", "--engine", "ray")) == 0
    err = capsys.readouterr().err
    assert err.startswith("featurecache: warning: --workers with --engine ray") and (
        err.count("\n") == 1 and "--ray-workers 3" in err
    )
    (call,) = calls
    assert call["engine"] == RayEngine(workers=3)
    assert call["options"] == RunOptions(workers="auto")


@pytest.mark.parametrize(
    ("flags", "options", "engine"),
    [
        (["--workers", "3"], RunOptions(workers=3), LocalEngine()),
        (
            ["--engine", "ray", "--workers", "1", "--ray-workers", "4", "--cpus-per-worker", "2"],
            RunOptions(workers=1),
            RayEngine(workers=4, cpus_per_worker=2.0),
        ),
        (
            ["--engine", "ray", "--gpus-per-worker", "1", "--address", "auto"],
            RunOptions(),
            RayEngine(address="auto", gpus_per_worker=1.0),
        ),
        (
            ["--batch-size", "8", "--shard-size", "16", "--device", "cpu", "--no-locking"],
            RunOptions(batch_size=8, shard_size=16, device="cpu", locking=False),
            LocalEngine(),
        ),
    ],
    ids=["local", "ray", "ray-gpus", "settings"],
)
def test_cli_maps_flags_onto_run_options_and_the_engine(calls, capsys, flags, options, engine):
    assert main(_extract(*flags)) == 0
    assert "warning" not in capsys.readouterr().err
    (call,) = calls
    assert call["options"] == options and call["engine"] == engine


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--batch-size", "0"], "--batch-size must be an int >= 1. Got 0 instead."),
        (["--engine", "ray", "--ray-workers", "0"], "--ray-workers must be an int >= 1. Got 0"),
        (["--engine", "ray", "--workers", "0"], "--ray-workers must be an int >= 1. Got 0"),
        (["--engine", "ray", "--cpus-per-worker", "-1"], "--cpus-per-worker must be a number"),
    ],
)
def test_cli_errors_name_the_flags(calls, capsys, flags, message):
    assert main(_extract(*flags)) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith(f"featurecache: error: {message}")
    assert not calls


def test_cli_ray_device_error_names_the_flag(tmp_path, capsys):
    """The engine checks the device against its GPUs before anything is read or written."""
    argv = ["extract", str(tmp_path / "nowhere"), "--cache", str(tmp_path / "c.h5")]
    assert main([*argv, "--engine", "ray", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("featurecache: error: --gpus-per-worker must be > 0 for device 'cuda'")
    assert not list(tmp_path.iterdir())


def test_fixed_choices_are_refused_by_argparse(capsys):
    for flags in (["--engine", "dask"], ["--device", "gpu"], ["--dtype", "int8"]):
        assert main(_extract(*flags)) == 2
        err = capsys.readouterr().err
        assert "invalid choice" in err and err.count("\n") == 1


def test_run_options_import_without_torch():
    script = (
        "import sys\n"
        "from featurecache import RunOptions\n"
        "from featurecache.engines import RunOptions as Same\n"
        "assert RunOptions is Same and RunOptions(batch_size=8).batch_size == 8\n"
        "assert 'torch' not in sys.modules\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
