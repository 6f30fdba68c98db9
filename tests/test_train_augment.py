"""Augmentation invariants over the PIPELINES table, and the padded random crops."""

from __future__ import annotations

import cv2
import albumentations as A
import numpy as np
import pytest

from competition.train.augment import (
    FLUORESCENCE_COLOUR,
    HISTOLOGY_COLOUR,
    PIPELINES,
    StainJitter,
    StainRecolour,
    augment,
    build_pipeline,
)
from competition.train.dataset import CropDataset, EpochSampler, TrainImage, cut_window, reflect_index
from competition.train.recipe import Member

CASES = [(s, t) for s in PIPELINES for t in ("fluorescence", "histology")]


def draw(shape=(67, 93), seed=0):
    """Disks (some touching) on a dark background, as image and label."""
    rng = np.random.default_rng(seed)
    h, w = shape
    label = np.zeros(shape, np.int32)
    yy, xx = np.mgrid[:h, :w]
    for k in range(1, 9):
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(4, 12)
        label[((yy - cy) ** 2 + (xx - cx) ** 2 < r * r) & (label == 0)] = k * 1000  # sparse ids
    image = np.where(label[..., None] > 0, 180, 25).astype(np.uint8).repeat(3, axis=2)
    image = (image + rng.integers(0, 20, image.shape)).astype(np.uint8)
    return image, label


def _leaves(transforms):
    for t in transforms:
        if isinstance(t, A.BaseCompose):
            yield from _leaves(t.transforms)
        else:
            yield t


def all_transforms():
    out = []
    for table in (PIPELINES, HISTOLOGY_COLOUR, FLUORESCENCE_COLOUR):
        for strength, factory in table.items():
            for t in _leaves(factory()):
                out.append(pytest.param(t, id=f"{strength}-{type(t).__name__}"))
    return out


@pytest.mark.parametrize("strength,image_type", CASES)
def test_pipeline_keeps_dtypes_shapes_and_label_ids(strength, image_type):
    image, label = draw()
    inside = np.ones(label.shape, np.uint8)
    pipe = build_pipeline(strength, image_type)
    ids = set(np.unique(label).tolist())
    for seed in range(12):
        out, (lab, ins) = augment(pipe, image, [label, inside], np.random.default_rng(seed))
        assert out.dtype == np.uint8
        # RandomRotate90 may swap H and W of a non-square input (training windows are square)
        assert sorted(out.shape[:2]) == sorted(image.shape[:2]) and out.shape[2] == 3
        assert lab.dtype == np.int32
        assert lab.shape == out.shape[:2]
        assert ins.shape == out.shape[:2]
        assert set(np.unique(lab).tolist()) <= ids, "geometric transforms never invent label ids"
        assert set(np.unique(ins).tolist()) <= {0, 1}


@pytest.mark.parametrize("strength,image_type", CASES)
def test_pipeline_is_a_function_of_the_rng(strength, image_type):
    image, label = draw()
    pipe = build_pipeline(strength, image_type)
    a = augment(pipe, image, [label], np.random.default_rng(3))
    b = augment(build_pipeline(strength, image_type), image, [label], np.random.default_rng(3))
    assert np.array_equal(a[0], b[0])
    assert np.array_equal(a[1][0], b[1][0])


@pytest.mark.parametrize("strength", [s for s in PIPELINES if PIPELINES[s]()])
def test_pipeline_varies_with_the_seed(strength):
    image, label = draw()
    pipe = build_pipeline(strength)
    outs = {augment(pipe, image, [label], np.random.default_rng(s))[0].tobytes() for s in range(8)}
    assert len(outs) > 1


@pytest.mark.parametrize("transform", all_transforms())
def test_each_transform_respects_the_label(transform):
    image, label = draw(seed=1)
    transform.p = 1.0
    pipe = A.Compose([transform])
    for seed in range(4):
        out, (lab,) = augment(pipe, image, [label], np.random.default_rng(seed))
        assert out.dtype == np.uint8
        assert sorted(out.shape) == sorted(image.shape)
        assert lab.shape == out.shape[:2]
        if isinstance(transform, A.ImageOnlyTransform):
            assert np.array_equal(lab, label), "image-only transforms leave the label untouched"
        else:
            assert lab.dtype == np.int32
            assert set(np.unique(lab).tolist()) <= set(np.unique(label).tolist())


def test_stain_recolouring_paints_fluorescence_dark_on_light():
    from competition.predict.preprocess import is_dark_on_light

    image, label = draw(seed=2)
    assert not is_dark_on_light(image)
    for seed in range(6):
        out, _ = augment(A.Compose([StainRecolour(p=1.0)]), image, [label], np.random.default_rng(seed))
        assert is_dark_on_light(out)
        grey = out.astype(float).mean(axis=2)
        assert grey[label > 0].mean() < grey[label == 0].mean() - 40, "nuclei darker than the background"


def test_stain_jitter_keeps_a_stained_image_stained():
    from competition.predict.preprocess import is_dark_on_light

    rng = np.random.default_rng(0)
    image = np.full((48, 48, 3), (235, 200, 225), np.uint8)
    image[10:30, 10:30] = (90, 60, 150)
    image = np.clip(image + rng.integers(-5, 5, image.shape), 0, 255).astype(np.uint8)
    out, _ = augment(A.Compose([StainJitter(p=1.0)]), image, [np.zeros((48, 48), np.int32)], np.random.default_rng(1))
    assert not np.array_equal(out, image)
    assert is_dark_on_light(out)
    assert out[15:25, 15:25].mean() < out[35:, 35:].mean()


def test_recoloured_crops_are_inverted_like_stained_images():
    """A fluorescence crop painted dark-on-light reaches the network inverted, as real
    stained images do under invert = true."""
    image, label = draw((64, 64), seed=3)
    member = Member(type="all", name="m", crop_size=32, pad=16, augment="invariant", seed=0)
    data = CropDataset([TrainImage("a", image, label, "fluorescence", 0)], member, ("body",), True, 64)
    data._pipelines["fluorescence"] = A.Compose([StainRecolour(p=1.0)], seed=0)
    _, _, _, invert, _ = data.crop(0)
    assert invert is True
    data_plain = CropDataset([TrainImage("a", image, label, "fluorescence", 0)], member, ("body",), True, 64)
    data_plain._pipelines["fluorescence"] = A.Compose([A.HorizontalFlip(p=1.0)], seed=0)
    assert data_plain.crop(0)[3] is False


def test_flips_move_label_and_image_together():
    image, label = draw(seed=2)
    coded = np.repeat((label // 1000 * 20).astype(np.uint8)[..., None], 3, axis=2)
    for t in (A.HorizontalFlip(p=1), A.VerticalFlip(p=1), A.RandomRotate90(p=1)):
        out, (lab,) = augment(A.Compose([t]), coded, [label], np.random.default_rng(0))
        assert np.array_equal(out[..., 0], (lab // 1000 * 20).astype(np.uint8))


def test_reflect_index_matches_numpy_reflect():
    n = 7
    idx = np.arange(-9, 17)
    ref = np.pad(np.arange(n), 9 + 1, mode="reflect")[idx + 10]
    assert np.array_equal(reflect_index(idx, n), ref)


def test_cut_window_reflects_and_marks_inside():
    image, label = draw((20, 30))
    win, lab, inside = cut_window(image, label, -5, 25, 16)
    padded = np.pad(label, 20, mode="reflect")
    assert np.array_equal(lab, padded[15:31, 45:61])
    assert inside[:5].sum() == 0 and inside[5:, :5].all() and not inside[5:, 5:].any()
    assert win.shape == (16, 16, 3)


def _dataset(crop=32, pad=16, augment_="strong", n=4, shape=(67, 93)):
    images = [TrainImage(f"i{k}", *draw(shape, k), "histology" if k % 2 else "fluorescence", 0)
              for k in range(n)]
    m = Member(type="all", name="t", crop_size=crop, pad=pad, augment=augment_, epochs=2,
               samples_per_epoch=6, seed=5)
    return CropDataset(images, m, ("body", "boundary", "gap"), True, 6)


def test_crops_have_the_network_shapes_and_a_zero_pad_border():
    ds = _dataset()
    x, targets, mask = ds[0]
    s = 32 + 2 * 16
    assert tuple(x.shape) == (3, s, s)
    assert tuple(targets.shape) == (3, s, s)
    assert tuple(mask.shape) == (1, s, s)
    m = mask[0].numpy()
    assert m[:16].sum() == 0 and m[-16:].sum() == 0 and m[:, :16].sum() == 0 and m[:, -16:].sum() == 0
    assert m[16:48, 16:48].all(), "the central crop of a large-enough image is all counted"


def test_crops_of_small_images_mask_what_lies_outside():
    ds = _dataset(crop=64, pad=16, augment_="none", shape=(20, 25))
    for index in range(6):
        _, _, mask = ds[index]
        assert 0 < mask.sum() <= 20 * 25


def test_crops_are_a_function_of_seed_epoch_index():
    a, b = _dataset(), _dataset()
    for index in (0, 5, 7, 11):
        for u, v in zip(a[index], b[index]):
            assert np.array_equal(u.numpy(), v.numpy())
    assert not np.array_equal(a[0][0].numpy(), a[6][0].numpy()), "epochs differ"


def test_epoch_sampler_shards_disjointly():
    s0 = list(EpochSampler(10, 2, batch_size=2, rank=0, world=2))
    s1 = list(EpochSampler(10, 2, batch_size=2, rank=1, world=2))
    assert len(s0) == len(s1) == 4
    assert not set(s0) & set(s1)
    assert all(20 <= i < 30 for i in s0 + s1)


def test_pasted_nuclei_are_copies_of_whole_nuclei_with_new_ids():
    from competition.train.augment import paste_nuclei

    image, label = draw((96, 96), seed=3)
    inside = np.ones(label.shape, np.uint8)
    out_image, out_label = paste_nuclei(image, label, inside, np.random.default_rng(0), max_copies=6)
    new_ids = sorted(set(np.unique(out_label)) - set(np.unique(label)))
    assert new_ids and min(new_ids) > label.max()
    for i in new_ids:
        ys, xs = np.nonzero(out_label == i)
        # the copy's pixels are those of one source nucleus, shifted
        shifted = {(y - ys.min(), x - xs.min()) for y, x in zip(ys, xs)}
        sources = [k for k in np.unique(label)[1:]
                   if {(y - yy.min(), x - xx.min()) for yy, xx in [np.nonzero(label == k)] for y, x in zip(yy, xx)}
                   == shifted]
        assert sources, f"copy {i} matches no source nucleus"
        k = sources[0]
        sy, sx = np.nonzero(label == k)
        assert np.array_equal(out_image[ys, xs], image[sy, sx])
    untouched = out_label == label
    assert np.array_equal(out_image[untouched & (label == 0)], image[untouched & (label == 0)])


def test_pasting_skips_padding_and_windows_without_whole_nuclei():
    from competition.train.augment import paste_nuclei

    image, label = draw((64, 64), seed=1)
    inside = np.zeros(label.shape, np.uint8)  # all padding: nothing may be pasted
    out_image, out_label = paste_nuclei(image, label, inside, np.random.default_rng(0))
    assert out_image is image and out_label is label
    empty = np.zeros((64, 64), np.int32)
    assert paste_nuclei(image, empty, np.ones_like(empty, np.uint8), np.random.default_rng(0))[1] is empty


def test_copy_paste_zero_draws_nothing_so_crops_stay_the_same():
    a = _dataset()
    b = CropDataset(a.images, Member(**{**a.member.to_dict(), "loss": a.member.loss, "copy_paste": 0.0}),
                    a.channels, True, 6)
    c = CropDataset(a.images, Member(**{**a.member.to_dict(), "loss": a.member.loss, "copy_paste": 1.0}),
                    a.channels, True, 6)
    assert np.array_equal(a[0][0].numpy(), b[0][0].numpy())
    assert any(not np.array_equal(a[i][1].numpy(), c[i][1].numpy()) for i in range(6)), "pasting changes targets"


def test_tissue_render_paints_fluorescence_as_stained_tissue():
    """Beer-Lambert H&E: nuclei darker than their surroundings and bluer (haematoxylin) than
    the tissue around them (eosin), the label untouched; dark-on-light where little tissue
    covers the crop (dense tissue may not be, like real tissue: the dataset decides)."""
    from competition.predict.preprocess import is_dark_on_light
    from competition.train.augment import TissueRender

    image, label = draw((96, 96), seed=2)
    light = TissueRender(p=1.0)
    light.get_params = lambda: {**TissueRender.get_params(light), "cover": 0.0}
    out, _ = augment(A.Compose([light]), image, [label], np.random.default_rng(0))
    assert is_dark_on_light(out)
    for seed in range(8):
        out, (lab,) = augment(A.Compose([TissueRender(p=1.0)]), image, [label], np.random.default_rng(seed))
        assert np.array_equal(lab, label)
        px = out.astype(float)
        inner = (label > 0) & (np.abs(np.diff(label, axis=0, prepend=0)) == 0)
        assert px[inner].mean() < px[label == 0].mean() - 25, "nuclei darker than the rest"
        blue_red = px[..., 2] - px[..., 0]
        assert blue_red[inner].mean() > blue_red[label == 0].mean(), "haematoxylin is the bluer stain"


def test_tissue_augmentation_stretches_x_and_y_apart():
    """The tissue pipeline's affine scales the axes independently: a disk comes out as an
    ellipse for some seeds (elongated nuclei)."""
    label = np.zeros((101, 101), np.int32)
    yy, xx = np.mgrid[:101, :101]
    label[(yy - 50) ** 2 + (xx - 50) ** 2 < 20 ** 2] = 1
    image = np.where(label[..., None] > 0, 200, 20).astype(np.uint8).repeat(3, axis=2)
    affine = [t for t in build_pipeline("tissue").transforms if isinstance(t, A.Affine)][0]
    affine.p = 1.0
    ratios = []
    for seed in range(10):
        _, (lab,) = augment(A.Compose([affine]), image, [label], np.random.default_rng(seed))
        ys, xs = np.nonzero(lab)
        ratios.append((np.ptp(ys) + 1) / (np.ptp(xs) + 1))
    assert max(max(ratios), 1 / min(ratios)) > 1.15


def test_tissue_render_paints_red_cells_off_the_nuclei_and_leaves_the_label():
    """``red_cells``: red discs (red well above green and blue) appear off the nuclei, the
    label is untouched, and the rest of the rendering is the one without them (the extra
    numbers are drawn after all others)."""
    from competition.train.augment import TissueRender

    image, label = draw((96, 96), seed=2)
    inner = (label > 0) & (np.abs(np.diff(label, axis=0, prepend=0)) == 0)
    reddest = []
    for seed in range(6):
        plain, _ = augment(A.Compose([TissueRender(p=1.0)]), image, [label], np.random.default_rng(seed))
        red, (lab,) = augment(A.Compose([TissueRender(red_cells=1.0, p=1.0)]), image, [label],
                              np.random.default_rng(seed))
        assert np.array_equal(lab, label)
        px, ref = red.astype(float), plain.astype(float)
        assert np.abs(px[inner] - ref[inner]).max() <= 2, "nuclei stay as they were"
        redness = px[..., 0] - np.maximum(px[..., 1], px[..., 2])
        reddest.append(redness[label == 0].max() - (ref[..., 0] - np.maximum(ref[..., 1], ref[..., 2])).max())
    assert min(reddest) > 40, f"every crop gets clearly red cells: {reddest}"


def test_red_cells_only_where_there_are_no_nuclei():
    from competition.train.augment import red_cell_density

    rng = np.random.default_rng(0)
    assert not red_cell_density(rng, np.ones((64, 64), np.float32), 8).any(), "no room: no cells"
    density = red_cell_density(rng, np.zeros((64, 64), np.float32), 8)
    assert density.dtype == np.float32 and density.max() > 0.4


def test_faint_tissue_render_draws_fainter_nuclei_in_textured_tissue():
    """``faint``: the label is untouched, nuclei stay darker and bluer than the tissue, but by
    less than in the plain rendering on the same crops (the draws widen toward weak
    haematoxylin contrast), and the tissue varies within itself (its texture); the plain
    rendering is unchanged (its numbers come first, the texture's after them)."""
    from competition.train.augment import TissueRender

    image, label = draw((96, 96), seed=2)
    inner = (label > 0) & (np.abs(np.diff(label, axis=0, prepend=0)) == 0)
    far = cv2.dilate((label > 0).astype(np.uint8), np.ones((9, 9), np.uint8)) == 0
    contrast = {False: [], True: []}
    spread = {False: [], True: []}
    for seed in range(24):
        for faint in (False, True):
            render = TissueRender(faint=faint, p=1.0)
            render.get_params = lambda r=render: {**TissueRender.get_params(r), "cover": 1.0}
            out, (lab,) = augment(A.Compose([render]), image, [label], np.random.default_rng(seed))
            assert np.array_equal(lab, label)
            grey = out.astype(float).mean(axis=2)
            contrast[faint].append(grey[far].mean() - grey[inner].mean())
            spread[faint].append(grey[far].std())
    assert min(contrast[True]) > 0, "nuclei stay darker than the tissue"
    assert np.median(contrast[True]) < 0.8 * np.median(contrast[False])
    assert np.median(spread[True]) > np.median(spread[False])
    plain, _ = augment(A.Compose([TissueRender(p=1.0)]), image, [label], np.random.default_rng(5))
    again, _ = augment(A.Compose([TissueRender(faint=False, p=1.0)]), image, [label],
                       np.random.default_rng(5))
    assert np.array_equal(plain, again)
    assert "tissue-faint" in PIPELINES and "tissue-faint" in FLUORESCENCE_COLOUR


def test_tissue_render_refuses_a_red_cell_probability_outside_0_1():
    from competition.train.augment import TissueRender

    with pytest.raises(ValueError, match="red_cells"):
        TissueRender(red_cells=1.5)
