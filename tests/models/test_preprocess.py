"""Preprocessing (resize, crop, normalise) and image loading."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from torchvision.models import ResNet50_Weights, ViT_H_14_Weights
from torchvision.transforms._presets import ImageClassification

from featurecache.exceptions import InvalidArgumentError
from featurecache.models._preprocess import Preprocess, load_image


def _random_uint8(shape, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)


# ---------------------------------------------------------------- Preprocess


@pytest.mark.parametrize(("size", "resize"), [(224, 256), (240, 274), (260, 297), (32, 37)])
def test_imagenet_resize_is_size_times_256_over_224(size, resize):
    p = Preprocess.imagenet(size)
    assert (p.resize_size, p.crop_size) == (resize, size)
    assert p.mean == (0.485, 0.456, 0.406)
    assert p.std == (0.229, 0.224, 0.225)
    assert (p.interpolation, p.antialias) == ("bilinear", True)


def test_to_json_is_canonical_and_round_trips():
    p = Preprocess.imagenet(224)
    text = p.to_json()
    assert text == (
        '{"antialias":true,"crop_size":224,"interpolation":"bilinear",'
        '"mean":[0.485,0.456,0.406],"resize_size":256,"std":[0.229,0.224,0.225]}'
    )
    assert Preprocess.from_dict(json.loads(text)) == p
    assert Preprocess.from_dict(p.to_dict()).to_json() == text


def test_from_dict_rejects_missing_keys():
    with pytest.raises(InvalidArgumentError, match=r"must have the keys"):
        Preprocess.from_dict({"crop_size": 224})


def test_invalid_interpolation_suggests():
    with pytest.raises(
        InvalidArgumentError, match=r"Got 'bilnear' instead\. Did you mean 'bilinear'"
    ):
        Preprocess(resize_size=8, crop_size=8, interpolation="bilnear")


def test_call_matches_torchvision_preset():
    image = _random_uint8((3, 50, 70))
    ours = Preprocess.imagenet(32)(image)
    theirs = ImageClassification(crop_size=32, resize_size=37)(image)
    assert ours.dtype == torch.float32 and ours.shape == (3, 32, 32)
    # The v1 and v2 uint8 resize kernels may round a pixel differently by one level.
    one_level = 1 / 255 / min(Preprocess.imagenet(32).std)
    assert (ours - theirs).abs().max() <= one_level + 1e-6


def test_call_normalises_after_scaling_to_unit_range():
    image = torch.full((3, 10, 10), 255, dtype=torch.uint8)
    out = Preprocess(resize_size=10, crop_size=10)(image)
    expected = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(out[:, 0, 0], expected)


def test_squash_resizes_both_sides_and_pad_letterboxes_with_the_mean_colour():
    from torchvision.transforms.v2 import functional as F

    image = _random_uint8((3, 20, 40))
    crop = Preprocess.imagenet(32)
    squash = crop.with_resize("squash")
    assert (squash.resize, squash.resize_size, squash.crop_size) == ("squash", 32, 32)
    expected = F.normalize(
        F.resize(image, [32, 32], antialias=True).float() / 255, list(crop.mean), list(crop.std)
    )
    torch.testing.assert_close(squash(image), expected)
    padded = crop.with_resize("pad")(image)  # 20x40 -> 16x32, 8 mean-coloured rows above and below
    assert padded.shape == (3, 32, 32)
    mean_colour = torch.tensor([round(255 * m) for m in crop.mean]) / 255 - torch.tensor(crop.mean)
    mean_colour = mean_colour / torch.tensor(crop.std)
    for rows in (padded[:, :8], padded[:, 24:]):
        torch.testing.assert_close(rows, mean_colour[:, None, None].expand_as(rows))
    assert padded[:, 8:24].std() > 0.5
    assert crop.with_resize("crop") is crop


def test_resize_and_crop_offset_at_their_defaults_keep_the_old_key():
    p = Preprocess.imagenet(32)
    assert "resize" not in p.to_dict() and "crop_offset" not in p.to_dict()
    assert p.with_resize("squash").to_dict()["resize"] == "squash"
    with pytest.raises(InvalidArgumentError, match=r"'resize' parameter .* Got 'crap'.*'crop'"):
        p.with_resize("crap")


def test_floor_crop_offset_starts_an_odd_margin_one_pixel_earlier():
    image = torch.arange(9, dtype=torch.uint8).repeat(3, 9, 1) * 20  # columns 0..8
    for offset, first in (("round", 2), ("floor", 1)):  # margin 9 - 6 = 3: round(1.5) = 2
        p = Preprocess(resize_size=9, crop_size=6, resize="squash", crop_offset=offset)
        out = p(image)
        expected = (first * 20 / 255 - p.mean[0]) / p.std[0]
        assert out[0, 0, 0].item() == pytest.approx(expected, abs=1e-5)


def test_one_channel_is_repeated():
    grey = _random_uint8((1, 40, 40))
    p = Preprocess.imagenet(32)
    torch.testing.assert_close(p(grey), p(grey.repeat(3, 1, 1)))


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (torch.zeros(3, 8, 8), r"expects a uint8 tensor of shape \(C, H, W\)\. Got torch\.float32"),
        (torch.zeros(4, 8, 8, dtype=torch.uint8), r"with C in \{1, 3\}\. Got shape \(4, 8, 8\)"),
        (torch.zeros(8, 8, dtype=torch.uint8), r"Got shape \(8, 8\) instead"),
    ],
)
def test_call_rejects_bad_input(image, message):
    with pytest.raises(InvalidArgumentError, match=message):
        Preprocess.imagenet(8)(image)


def test_from_torchvision_weights_reads_the_preset():
    p = Preprocess.from_torchvision_weights(ResNet50_Weights.IMAGENET1K_V2)
    assert (p.resize_size, p.crop_size, p.interpolation, p.antialias) == (
        232,
        224,
        "bilinear",
        True,
    )
    vit = Preprocess.from_torchvision_weights(ViT_H_14_Weights.IMAGENET1K_SWAG_E2E_V1)
    assert (vit.resize_size, vit.crop_size, vit.interpolation) == (518, 518, "bicubic")
    small = Preprocess.from_torchvision_weights(ResNet50_Weights.IMAGENET1K_V2, image_size=112)
    assert (small.resize_size, small.crop_size) == (116, 112)


# ---------------------------------------------------------------- load_image


def _save(image: Image.Image, path, **kwargs):
    image.save(path, **kwargs)
    return path


def test_pil_safety_defaults_are_untouched():
    assert Image.MAX_IMAGE_PIXELS == int(1024 * 1024 * 1024 // 4 // 3)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_rgb_jpeg(tmp_path):
    path = _save(Image.new("RGB", (7, 5), (200, 10, 10)), tmp_path / "a.jpg")
    out = load_image(path)
    assert out.dtype == torch.uint8 and out.shape == (3, 5, 7)
    assert abs(int(out[0, 2, 3]) - 200) < 8 and int(out[1, 2, 3]) < 30


def test_grey_png_gives_three_equal_channels(tmp_path):
    path = _save(Image.new("L", (6, 4), 77), tmp_path / "g.png")
    out = load_image(path)
    assert out.shape == (3, 4, 6)
    assert (out == 77).all()


def test_palette_png(tmp_path):
    image = Image.new("RGB", (4, 4), (0, 128, 255)).convert("P", palette=Image.Palette.ADAPTIVE)
    out = load_image(_save(image, tmp_path / "p.png"))
    assert out.shape == (3, 4, 4)
    assert out[:, 0, 0].tolist() == [0, 128, 255]


def test_rgba_is_composited_on_white(tmp_path):
    image = Image.new("RGBA", (2, 1), (10, 20, 30, 255))
    image.putpixel((1, 0), (10, 20, 30, 0))
    out = load_image(_save(image, tmp_path / "a.png"))
    assert out.shape == (3, 1, 2)
    assert out[:, 0, 0].tolist() == [10, 20, 30]
    assert out[:, 0, 1].tolist() == [255, 255, 255]


def test_palette_with_transparency_is_composited_on_white(tmp_path):
    image = Image.new("P", (2, 1), 0)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.putpixel((1, 0), 1)
    image.info["transparency"] = 1
    out = load_image(_save(image, tmp_path / "t.png", transparency=1))
    assert out[:, 0, 0].tolist() == [255, 0, 0]
    assert out[:, 0, 1].tolist() == [255, 255, 255]


def test_cmyk_jpeg(tmp_path):
    out = load_image(_save(Image.new("CMYK", (5, 3), (0, 0, 0, 0)), tmp_path / "c.jpg"))
    assert out.dtype == torch.uint8 and out.shape == (3, 3, 5)
    assert (out > 245).all()  # no ink is white


def test_16_bit_grey_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    path = _save(Image.fromarray(values), tmp_path / "deep.png")
    with Image.open(path) as image:
        assert image.mode == "I;16"
    out = load_image(path)
    assert out.shape == (3, 1, 3)
    assert out[0].tolist() == [[0, 100, 255]]


def test_32_bit_integer_grey(tmp_path):
    values = np.array([[0, 257 * 50, 65535, 70000]], dtype=np.int32)
    path = _save(Image.fromarray(values), tmp_path / "deep.tif")
    out = load_image(path)
    assert out[1].tolist() == [[0, 50, 255, 255]]


def test_animated_gif_gives_first_frame(tmp_path):
    frames = [Image.new("RGB", (4, 4), color) for color in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    with Image.open(path) as image:
        assert image.n_frames == 2
    out = load_image(path)
    assert out.shape == (3, 4, 4)
    assert out[:, 0, 0].tolist() == [255, 0, 0]


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def _truncated_jpeg(path):
    image = Image.fromarray(np.asarray(_random_uint8((64, 64, 3)).numpy()))
    image.save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: _write(p, b""), r"^file is empty \(0 bytes\)$"),
        (lambda p: _write(p, b"this is not an image\n"), r"^cannot identify image file$"),
        (_truncated_jpeg, r"^image file is truncated$"),
        (lambda p: p.parent / "missing.jpg", r"^no such file$"),
        (lambda p: p.parent, r"^is a directory$"),
    ],
    ids=["empty", "text", "truncated", "missing", "directory"],
)
def test_unreadable_files_raise_a_short_reason(tmp_path, make, reason):
    path = make(tmp_path / "bad.jpg")
    with pytest.raises(InvalidArgumentError, match=reason):
        load_image(path)


def test_permission_denied_reason(tmp_path, monkeypatch):
    path = _save(Image.new("RGB", (2, 2)), tmp_path / "secret.png")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(Image, "open", denied)  # root reads any file, so simulate it
    with pytest.raises(InvalidArgumentError, match=r"^permission denied$"):
        load_image(path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_permission_denied(tmp_path):
    path = _save(Image.new("RGB", (2, 2)), tmp_path / "secret.png")
    path.chmod(0)
    try:
        with pytest.raises(InvalidArgumentError, match=r"^permission denied$"):
            load_image(path)
    finally:
        path.chmod(0o600)


def test_decompression_bomb_raises(tmp_path, monkeypatch):
    path = _save(Image.new("L", (64, 64)), tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 4096 pixels > 2 x limit
    with pytest.raises(
        InvalidArgumentError, match=r"^decompression bomb: Image size \(4096 pixels\)"
    ) as info:
        load_image(path)
    assert isinstance(info.value.__cause__, Image.DecompressionBombError)
