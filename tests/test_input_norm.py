"""A member's input_norm: the per-image stretch and grey input, the same in training and prediction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from competition.errors import UserError
from competition.predict.members import LoadedMember, predict_member
from competition.predict.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    INPUT_NORMS,
    STRETCH_PERCENTILES,
    equalise_input,
    stretch,
    to_gray,
)
from competition.train.dataset import CropDataset, TrainImage
from competition.train.recipe import Member, parse_recipe


def stained(seed=0, shape=(90, 120)):
    """Dark purple disks on a pink background, with noise."""
    rng = np.random.default_rng(seed)
    h, w = shape
    label = np.zeros(shape, np.int32)
    yy, xx = np.mgrid[:h, :w]
    for k in range(1, 9):
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(5, 12)
        label[((yy - cy) ** 2 + (xx - cx) ** 2 < r * r) & (label == 0)] = k
    image = np.where(label[..., None] > 0, (110, 60, 150), (225, 170, 200)).astype(np.float32)
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), label


def grey_of(image):
    return image.astype(np.float32).mean(axis=2)


def test_stretch_maps_the_percentiles_to_the_full_range():
    image, _ = stained()
    dim = to_gray((image * 0.4 + 20).astype(np.uint8))  # colour channels clip one by one
    out = stretch(dim)
    lo, hi = np.percentile(grey_of(out), STRETCH_PERCENTILES)
    assert lo <= 2 and hi >= 253
    assert out.dtype == np.uint8 and out.shape == image.shape


def test_the_lookup_table_gives_what_mapping_every_pixel_gives():
    from competition.predict.preprocess import _subsample

    rng = np.random.default_rng(3)
    for image in (stained()[0], rng.integers(0, 256, (300, 410, 3), dtype=np.uint8),
                  rng.integers(90, 140, (64, 64, 3), dtype=np.uint8)):
        lo, hi = np.percentile(_subsample(image).astype(np.float32).mean(axis=2), STRETCH_PERCENTILES)
        x = (image.astype(np.float32) - lo) * np.float32(255.0 / (hi - lo))
        assert np.array_equal(stretch(image), np.clip(np.rint(x), 0, 255).astype(np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        stretch(np.zeros((8, 8, 3), np.float32))


def test_normalise_by_table_gives_what_the_per_pixel_formula_gives():
    from competition.predict.preprocess import normalise

    def formula(image, invert, mean, std):
        x = image.astype(np.float32)
        if invert:
            x = 255.0 - x
        x = (x / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1))

    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    image[0, :3] = [[0, 0, 0], [255, 255, 255], [1, 128, 254]]
    for invert in (False, True):
        for mean, std in ((IMAGENET_MEAN, IMAGENET_STD), (0.5, 0.25), ([0.1, 0.2, 0.3], [0.9, 0.8, 0.7])):
            got = normalise(image, invert, mean, std)
            assert got.dtype == np.float32 and got.shape == (3, 37, 53) and got.flags.c_contiguous
            assert np.array_equal(got, formula(image, invert, mean, std))
    # other dtypes take the formula itself
    as_float = image.astype(np.float32)
    assert np.array_equal(normalise(as_float, True), formula(as_float, True, IMAGENET_MEAN, IMAGENET_STD))


def test_a_dimmer_or_brighter_copy_stretches_to_about_the_same_image():
    image, _ = stained()
    ref = stretch(image).astype(int)
    for gain, offset in ((0.5, 0), (0.8, 40), (1.1, -20)):
        copy = np.clip(image * gain + offset, 0, 255).astype(np.uint8)
        assert np.abs(stretch(copy).astype(int) - ref).mean() < 3.0


def test_stretch_keeps_colour_order_and_leaves_a_flat_image_alone():
    image, label = stained()
    out = stretch(image).astype(int)
    background, nuclei = out[label == 0].mean(axis=0), out[label > 0].mean(axis=0)
    assert background[0] > background[2] > background[1]  # pink stays pink
    assert nuclei[2] > nuclei[0] > nuclei[1]  # purple stays purple
    flat = np.full((20, 30, 3), 77, np.uint8)
    assert stretch(flat) is flat


def test_gray_input_is_blind_to_channel_order_and_commutes_with_inversion():
    image, _ = stained()
    g = equalise_input(image, "gray")
    assert (g[..., 0] == g[..., 1]).all() and (g[..., 1] == g[..., 2]).all()
    shuffled = equalise_input(image[..., ::-1].copy(), "gray")
    assert np.array_equal(shuffled, g)
    inverted = equalise_input(255 - image, "gray").astype(int)
    assert np.abs((255 - g.astype(int)) - inverted).max() <= 2


def test_imagenet_is_the_image_itself_and_unknown_modes_are_refused():
    image, _ = stained()
    assert equalise_input(image, "imagenet") is image
    with pytest.raises(ValueError, match="input_norm"):
        equalise_input(image, "sepia")
    assert INPUT_NORMS == ("imagenet", "stretch", "gray")


def test_recipes_check_input_norm_and_its_init_from_parent():
    base = {"defaults": {"encoder": "mobilenet_v2", "crop_size": 64, "pad": 16}}
    recipe = parse_recipe({**base, "all": [{"name": "a", "input_norm": "gray"}]}, name="t")
    assert recipe.members[0].input_norm == "gray"
    with pytest.raises(UserError, match="input_norm"):
        parse_recipe({**base, "all": [{"name": "a", "input_norm": "sepia"}]}, name="t")
    with pytest.raises(UserError, match="input_norm"):
        parse_recipe({**base, "all": [{"name": "a", "input_norm": "gray"}],
                      "histology": [{"name": "h", "init_from": "all/a"}]}, name="t")


def _member(input_norm):
    return Member(type="all", name="m", encoder="mobilenet_v2", crop_size=32, pad=16,
                  augment="strong", input_norm=input_norm, seed=3)


def _unnormalise(x):
    mean = np.asarray(IMAGENET_MEAN, np.float32)[:, None, None]
    std = np.asarray(IMAGENET_STD, np.float32)[:, None, None]
    return (x * std + mean) * 255.0


def test_training_crops_of_a_gray_member_are_grey_after_colour_augmentation():
    image, label = stained()
    data = CropDataset([TrainImage("a", image, label, "histology", 0)], _member("gray"),
                       ("body",), False, 8)
    for i in range(8):
        x = _unnormalise(data[i][0].numpy())
        assert np.abs(x[0] - x[1]).max() < 0.5 and np.abs(x[1] - x[2]).max() < 0.5
    colour = CropDataset([TrainImage("a", image, label, "histology", 0)], _member("imagenet"),
                         ("body",), False, 8)
    assert np.abs(_unnormalise(colour[0][0].numpy())[0] - _unnormalise(colour[0][0].numpy())[1]).max() > 5


def test_training_stretches_each_whole_image_once():
    image, label = stained()
    dim = (image * 0.4 + 20).astype(np.uint8)
    data = CropDataset([TrainImage("a", dim, label, "histology", 0)], _member("stretch"),
                       ("body",), False, 4)
    assert np.array_equal(data.images[0].image, stretch(dim))
    assert data.invert == [False]


class _FirstChannels(torch.nn.Module):
    """A 'network' whose logits are its input, so the probabilities show what reached it."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return x


def _seen(probs):
    """The network input back from the sigmoid the prediction path applies."""
    p = np.clip(probs.astype(np.float64), 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def _probs(input_norm, image):
    config = {"channels": ["r", "g", "b"], "invert": False,
              "member": {"pad": 16, "input_norm": input_norm}}
    return _seen(predict_member(LoadedMember("all/x", Path("."), _FirstChannels(), config), image))


def test_prediction_applies_the_members_input_norm_to_the_whole_image():
    image, _ = stained()
    # what the network sees is the equalised, normalised image
    seen = _unnormalise(_probs("gray", image))
    assert np.abs(seen - equalise_input(image, "gray").transpose(2, 0, 1)).max() < 0.05
    # so a gray member cannot tell a channel-shuffled image from the original
    assert np.array_equal(_probs("gray", image), _probs("gray", image[..., [2, 0, 1]].copy()))
    # and a stretch member sees a dimmed copy as about the same image
    dim = (image * 0.5).astype(np.uint8)
    assert np.abs(_unnormalise(_probs("stretch", dim)) - _unnormalise(_probs("stretch", image))).mean() < 3.0
    # members from before input_norm existed see the image as it is
    old = {"channels": ["r", "g", "b"], "invert": False, "member": {"pad": 16}}
    raw = _seen(predict_member(LoadedMember("all/x", Path("."), _FirstChannels(), old), image))
    assert np.abs(_unnormalise(raw) - image.transpose(2, 0, 1)).max() < 0.05
