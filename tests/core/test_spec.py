"""The extraction request (``FeatureSpec``): its vocabularies, one validation per request, the
command line's choices taken from it, and the split of a ``Dataset`` given as it is."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

import featurecache.core._spec as spec_module
import featurecache.extraction._extract as extract_module
from featurecache import FeatureSpec, RunOptions, extract, load_dataset, open_cache
from featurecache.app.cli import build_parser, main
from featurecache.core._spec import (
    DECODE_CHOICES,
    DTYPE_CHOICES,
    POOL_METHODS,
    RESIZE_MODES,
    STORE_DTYPES,
)
from featurecache.core._validation import ParameterError
from featurecache.data._datasets import Dataset
from featurecache.engines._local import LocalEngine

SETTINGS = dict(model="resnet18", weights="none", image_size=32, dtype="float32")
RUN = RunOptions(batch_size=8, workers=0, device="cpu")
FLAGS = ["--model", "resnet18", "--weights", "none", "--image-size", "32", "--dtype", "float32",
         "--device", "cpu", "--workers", "0", "--no-progress", "--layers", "layer1"]  # fmt: skip


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Two classes of 4 random RGB images."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name in ("ant", "bee"):
        (root / name).mkdir()
        for i in range(4):
            pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def _arrays(splits) -> Dataset:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (len(splits), 8, 8, 3), dtype=np.uint8)
    labels = [i % 2 for i in range(len(splits))]
    return Dataset.from_arrays(images, labels, splits, ["ant", "bee"])


# -- the vocabularies ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (dict(pool="median"), "The 'pool' parameter of extract must be one of avg, max, avgmax, "
         "flatten for conv maps, or cls, mean, cls+mean for token outputs. Got 'median' instead. "
         "Did you mean 'mean', 'cls+mean'?"),
        (dict(pool=3), "The 'pool' parameter of extract must be one of avg, max, avgmax, "
         "flatten for conv maps, or cls, mean, cls+mean for token outputs. Got 3 instead."),
        (dict(resize="stretch"), "The 'resize' parameter of extract must be one of 'crop', "
         "'squash', 'pad'. Got 'stretch' instead."),
        (dict(dtype="float64"), "The 'dtype' parameter of extract must be one of 'auto', "
         "'float32', 'bfloat16', 'float16'. Got 'float64' instead. Did you mean 'float16', "
         "'bfloat16', 'float32'?"),
        (dict(store_dtype="bfloat16"), "The 'store_dtype' parameter of extract must be one of "
         "'float32', 'float16'. Got 'bfloat16' instead. Did you mean 'float16', 'float32'?"),
        (dict(decode="slow"), "The 'decode' parameter of extract must be one of 'auto', "
         "'exact', 'fast', 'gpu'. Got 'slow' instead."),
        (dict(image_size=0), "The 'image_size' parameter of extract must be None or an int in "
         "the range [1, 4096]. Got 0 instead."),
        (dict(image_size=4097), "The 'image_size' parameter of extract must be None or an int "
         "in the range [1, 4096]. Got 4097 instead."),
        (dict(image_size=True), "The 'image_size' parameter of extract must be None or an int "
         "in the range [1, 4096]. Got True instead."),
        (dict(split=0.2), "The 'split' parameter of extract must be 'random:FRACTION' with 0 < "
         "FRACTION < 1, or 'none'. Got 0.2 instead. Write 'random:0.2'."),
        (dict(split="random:1.5"), "The 'split' parameter of extract must be 'random:FRACTION' "
         "with 0 < FRACTION < 1, or 'none'. Got 'random:1.5' instead."),
        (dict(model=""), "The 'model' parameter of extract must be a backbone name (str). "
         "Got '' instead. List them with list_backbones()."),
        (dict(name="a/b"), "The 'name' parameter of extract must be letters, digits and _.+- "
         "(it names a folder). Got 'a/b' instead."),
        (dict(verify=1), "The 'verify' parameter of extract must be True or False. Got 1 "
         "instead."),
    ],
    ids=lambda value: next(iter(value)) if isinstance(value, dict) else "",
)  # fmt: skip
def test_each_vocabulary_error_is_one_exact_line(given, message):
    with pytest.raises(ParameterError, match="^" + re.escape(message) + "$"):
        FeatureSpec(**given).validate()


def test_the_image_size_rule_is_the_same_in_every_public_function():
    from featurecache.models import Preprocess, load_backbone

    with pytest.raises(ParameterError, match=r"^The 'image_size' parameter of load_backbone "
                                             r"must be None or an int in the range \[1, 4096\]\. "
                                             r"Got 5000 instead\.$"):  # fmt: skip
        load_backbone("resnet18", "none", image_size=5000)
    with pytest.raises(ParameterError, match=r"^The 'image_size' parameter of "
                                             r"Preprocess.imagenet must be an int in the range "
                                             r"\[1, 4096\]\. Got 0 instead\.$"):  # fmt: skip
        Preprocess.imagenet(0)


def test_the_torch_modules_take_their_vocabularies_from_the_spec():
    from featurecache.engines import _options, _runner
    from featurecache.models import _layers, _preprocess, _prompts

    assert _layers.POOL_METHODS is spec_module.POOL_METHODS
    assert _preprocess.RESIZE_MODES is spec_module.RESIZE_MODES
    assert _options.DECODE_MODES is spec_module.DECODE_MODES
    assert _options.STORE_DTYPES is spec_module.STORE_DTYPES
    assert _options.COMPUTE_DTYPE_NAMES is spec_module.COMPUTE_DTYPE_NAMES
    assert _runner.DEFAULT_DECODE is spec_module.DEFAULT_DECODE
    assert _prompts.DEFAULT_PROMPTS is spec_module.DEFAULT_PROMPTS


def test_validate_normalises_and_a_validated_spec_is_returned_as_it_is():
    spec = FeatureSpec(layers=["layer1", "layer1", "layer2"], views=2, augment="flip,rrc:0.5-1",
                       tta="flip,crops:0.875", seed=3)  # fmt: skip
    checked = spec.validate()
    assert not spec.validated and checked.validated
    assert checked.layers == ("layer1", "layer2")
    assert (checked.augment, checked.tta) == ("rrc:0.5-1,flip", "crops:0.875,flip")
    assert checked.prompts == spec_module.DEFAULT_PROMPTS
    assert checked.view_sets.to_dict() == {"k": 2, "augment": "rrc:0.5-1,flip", "seed": 3,
                                           "tta_k": 12, "tta": "crops:0.875,flip"}  # fmt: skip
    assert checked.validate() is checked
    assert checked.validate().validate(owner="other") is checked


# -- validated once ----------------------------------------------------------------------


@pytest.fixture
def counted(monkeypatch):
    """How many times each check ran: the spec's, the cache path's, the engine's session."""
    calls = {"spec": [], "cache": 0, "session": 0}
    check, check_cache, session = (
        FeatureSpec._check,
        extract_module.check_cache,
        LocalEngine.session,
    )

    def spec_check(self, owner):
        calls["spec"].append(owner)
        return check(self, owner)

    def cache_check(*args, **kwargs):
        calls["cache"] += 1
        return check_cache(*args, **kwargs)

    def opened(self, options):
        calls["session"] += 1
        return session(self, options)

    monkeypatch.setattr(FeatureSpec, "_check", spec_check)
    monkeypatch.setattr(extract_module, "check_cache", cache_check)
    monkeypatch.setattr(LocalEngine, "session", opened)
    return calls


def test_extract_validates_its_request_once(images, tmp_path, counted):
    result = extract(images, tmp_path / "c.h5", layers=["layer1"], **SETTINGS, options=RUN)
    assert result.n_ok == 8
    assert counted == {"spec": ["extract"], "cache": 1, "session": 1}


def test_the_command_line_validates_its_request_once(images, tmp_path, counted, capsys):
    assert main(["extract", str(images), "--cache", str(tmp_path / "c.h5"), *FLAGS]) == 0
    assert counted == {"spec": ["extract"], "cache": 1, "session": 1}
    out = capsys.readouterr().out
    assert out.startswith("data: 2 classes, 8 images") and "extracted resnet18" in out


def test_the_command_line_refuses_a_bad_request_before_reading_the_data(tmp_path, counted,
                                                                       capsys):  # fmt: skip
    missing = tmp_path / "no-such-folder"
    argv = ["extract", str(missing), "--cache", str(tmp_path / "c.h5"), *FLAGS, "--pool", "mdn"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == (
        "featurecache: error: --pool must be one of avg, max, avgmax, flatten for conv maps, "
        "or cls, mean, cls+mean for token outputs. Got 'mdn' instead. Did you mean 'mean'?\n"
    )
    assert counted == {"spec": ["extract"], "cache": 0, "session": 0}
    assert not (tmp_path / "c.h5").exists()


# -- the command line's choices are the spec's ----------------------------------------


def _subcommand(name: str):
    return build_parser()._subparsers._group_actions[0].choices[name]


def test_the_command_line_choices_are_the_spec_vocabularies():
    actions = {action.dest: action for action in _subcommand("extract")._actions}
    assert tuple(actions["dtype"].choices) == DTYPE_CHOICES
    assert tuple(actions["store_dtype"].choices) == STORE_DTYPES
    assert tuple(actions["decode"].choices) == DECODE_CHOICES
    # --pool and --resize name the spec's vocabularies in their help, refused in its words
    assert actions["pool"].choices is None and actions["resize"].choices is None
    assert "|".join(POOL_METHODS["map"]) in actions["pool"].help
    assert "|".join(POOL_METHODS["tokens"]) in actions["pool"].help
    assert actions["resize"].help.startswith("|".join(RESIZE_MODES) + ".")
    demo = {action.dest: action for action in _subcommand("demo")._actions}
    assert demo["resize"].help.startswith("|".join(RESIZE_MODES) + ".")


# -- a Dataset and a split -------------------------------------------------------------


def test_a_dataset_without_splits_gets_the_split_asked_for(tmp_path):
    dataset = _arrays([""] * 20)
    result = extract(dataset, tmp_path / "c.h5", layers=["layer1"], split="random:0.2",
                     **SETTINGS, options=RUN)  # fmt: skip
    assert {name: c["ok"] for name, c in result.counts.items()} == {
        "all": 20, "train": 16, "test": 4,
    }  # fmt: skip
    expected = load_dataset(dataset, split="random:0.2")  # the split load_dataset gives
    assert open_cache(tmp_path / "c.h5").splits.tolist() == expected.splits.tolist()


def test_a_dataset_with_its_own_splits_refuses_another_in_one_line(tmp_path):
    dataset = _arrays(["train"] * 16 + ["test"] * 4)
    with pytest.raises(ParameterError, match=r"^The 'split' parameter of load_dataset must be "
                                             r"left out for data that has its own splits\. Got "
                                             r"'random:0\.5' instead\. Leave it out, or pass "
                                             r"resplit=True to replace the data's splits\.$"):  # fmt: skip
        extract(dataset, tmp_path / "c.h5", layers=["layer1"], split="random:0.5", **SETTINGS,
                options=RUN)  # fmt: skip
    assert not (tmp_path / "c.h5").exists()
    resplit = load_dataset(dataset, split="random:0.5", resplit=True)
    assert int((resplit.splits == "test").sum()) == 10


def test_a_dataset_that_has_exactly_the_split_keeps_it():
    split = load_dataset(_arrays([""] * 20), split="random:0.2", seed=4)
    assert load_dataset(split, split="random:0.2", seed=4) is split
    assert load_dataset(split) is split
