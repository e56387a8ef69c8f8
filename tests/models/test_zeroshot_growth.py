"""The zero-shot classifier follows the dataset's classes: a grown class list gets its own."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from PIL import Image

from featurecache import RunOptions, extract, open_cache
from featurecache.cache import StoredClassifier, read_classifiers, write_classifier
from featurecache.cache import _format as fmt
from featurecache.cache._classifiers import class_list_version
from featurecache.exceptions import ConfigMismatchError, InvalidArgumentError
from pipelines.heads._fixed import stored_classifier

OPTIONS = RunOptions(workers=0, batch_size=4)
TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def _zeroshot(names, prompts=("a photo of a {}.",), seed=1):
    rng = np.random.default_rng(seed)
    return StoredClassifier(
        kind="zeroshot", layer="embedding.proj", weight=rng.normal(size=(len(names), 4)),
        bias=np.zeros(len(names)), class_names=names, normalize=True, scale=100.0,
        prompts=prompts,
    )  # fmt: skip


def test_each_class_list_has_its_own_write_once_version(tmp_path):
    index = tmp_path / "c.h5"
    first, grown = _zeroshot(("ant", "bee")), _zeroshot(("ant", "bee", "cow"))
    assert write_classifier(index, "m", first) and write_classifier(index, "m", grown)
    assert not write_classifier(index, "m", grown)  # the same one: nothing to do
    version = class_list_version(("ant", "bee", "cow"))
    assert fmt.classifier_files(index, "m", "zeroshot") == [
        fmt.classifier_file(index, "m", "zeroshot"),
        fmt.classifier_file(index, "m", "zeroshot", version),
    ]
    by_list = {names: read_classifiers(index, "m", names)["zeroshot"] for names in
               (("ant", "bee"), ("ant", "bee", "cow"))}  # fmt: skip
    assert [c.digest() for c in by_list.values()] == [first.digest(), grown.digest()]
    assert read_classifiers(index, "m")["zeroshot"].digest() == grown.digest()  # the longest
    assert read_classifiers(index, "m", ("ant",)) == {}  # no version of that list
    with pytest.raises(ConfigMismatchError, match=r"another zeroshot classifier \(other weights\)"):
        write_classifier(index, "m", _zeroshot(("ant", "bee"), seed=2))
    with pytest.raises(ConfigMismatchError, match=r"prompts: stored a photo of a \{\}\."):
        write_classifier(index, "m", _zeroshot(("ant", "cow"), prompts=("art of the {}.",)))


def _images(root, classes, n=2):
    rng = np.random.default_rng(len(classes))
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = rng.integers(0, 256, (36, 40, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")


def test_a_grown_clip_dataset_extracts_the_new_rows_and_stores_the_new_classifier(
    tmp_path, forward_calls, caplog
):
    open_clip = pytest.importorskip("open_clip")
    (tmp_path / "fc-tiny-grow.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(tmp_path / "fc-tiny-grow.json")
    data, cache = tmp_path / "data", tmp_path / "c.h5"
    common = dict(
        model="open_clip:fc-tiny-grow", weights="none", layers=["embedding.proj"],
        split="none", dtype="float32", options=OPTIONS,
    )  # fmt: skip
    _images(data, ["ant", "bee"])
    first = extract(data, cache, **common)
    _images(data, ["cow"])  # a new class folder
    extract(data, cache, model="resnet18", weights="none", layers=["embedding"],
            image_size=32, split="none", options=OPTIONS)  # grows the table first  # fmt: skip
    with pytest.raises(
        InvalidArgumentError,
        match=r"stores a zero-shot classifier of the classes ant, bee, not of the cache's ant, "
        r"bee, cow; run `featurecache extract` with this model again to store the classifier "
        r"of the grown class list\.$",
    ):
        stored_classifier(open_cache(cache), first.model, "zeroshot")
    forward_calls.clear()
    with caplog.at_level(logging.INFO, logger="featurecache.extraction._extract"):
        grown = extract(data, cache, **common)
    assert grown.rows_computed == 2 and len(forward_calls) == 1  # the two new images only
    assert any("the classes changed (added 'cow'): building the zero-shot classifier of 3 "
               "classes" in r.getMessage() for r in caplog.records)  # fmt: skip
    opened = open_cache(cache)
    stored = opened.classifiers(grown.model)["zeroshot"]
    assert stored.class_names == ("ant", "bee", "cow") == tuple(opened.class_names)
    old = read_classifiers(cache, first.model, ("ant", "bee"))["zeroshot"]
    # The text side of the same two classes is unchanged; the new class adds a row
    np.testing.assert_allclose(stored.weight[:2], old.weight, rtol=1e-6)
    backbone_names = stored.source.split(" text tower")[0]
    assert backbone_names == "open_clip:fc-tiny-grow"
    forward_calls.clear()
    assert extract(data, cache, **common).hit and not forward_calls  # stored: nothing to do
