import pytest
import torch

from imgclass.config import AugmentConfig
from imgclass.data.augment import _WIDE_OPS, KerasAugment, TrainAugment, _wide_op


def _batch(n=8, side=16):
    x = torch.rand(n, 3, side, side, generator=torch.Generator().manual_seed(0))
    return x.contiguous(memory_format=torch.channels_last)


def test_no_augmentation_is_the_identity():
    x = _batch()
    out = KerasAugment(AugmentConfig(hflip=False, rotation=0, zoom=0), torch.Generator())(x)
    torch.testing.assert_close(out, x)


def test_flip_only_mirrors_about_half_of_the_images():
    x = _batch(n=64)
    out = KerasAugment(AugmentConfig(rotation=0, zoom=0), torch.Generator().manual_seed(1))(x)
    flipped = [torch.allclose(o, i.flip(-1), atol=1e-5) for o, i in zip(out, x)]
    kept = [torch.allclose(o, i, atol=1e-5) for o, i in zip(out, x)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 16 < sum(flipped) < 48


def test_rotation_turns_an_arrow_by_at_most_36_degrees():
    x = torch.zeros(256, 1, 33, 33)
    x[:, :, 16, 16:] = 1.0  # a ray from the centre pointing right (angle 0)
    out = KerasAugment(AugmentConfig(hflip=False, zoom=0), torch.Generator().manual_seed(2))(x)
    ys, xs = torch.meshgrid(torch.arange(33.0) - 16, torch.arange(33.0) - 16, indexing="ij")
    weight = out[:, 0]
    angles = torch.rad2deg(torch.atan2(-(weight * ys).sum((1, 2)), (weight * xs).sum((1, 2))))
    assert angles.abs().max() <= 37
    assert angles.abs().max() > 25  # the range is used, not just a sliver of it


def test_augmentation_is_reproducible_from_the_seed_and_keeps_layout():
    x = _batch()
    a = KerasAugment(AugmentConfig(), torch.Generator().manual_seed(3))(x)
    b = KerasAugment(AugmentConfig(), torch.Generator().manual_seed(3))(x)
    torch.testing.assert_close(a, b)
    assert a.shape == x.shape and a.is_contiguous(memory_format=torch.channels_last)
    assert not torch.allclose(a, x)


def test_translation_moves_content_by_at_most_the_given_share():
    x = torch.zeros(256, 1, 41, 41)
    x[:, :, 20, 20] = 1.0  # one bright pixel in the centre
    config = AugmentConfig(hflip=False, rotation=0, zoom=0, translate=0.25)
    out = KerasAugment(config, torch.Generator().manual_seed(4))(x)
    ys, xs = torch.meshgrid(torch.arange(41.0), torch.arange(41.0), indexing="ij")
    mass = out[:, 0].sum((1, 2))
    dx = (out[:, 0] * xs).sum((1, 2)) / mass - 20
    dy = (out[:, 0] * ys).sum((1, 2)) / mass - 20
    assert dx.abs().max() <= 0.25 * 41 + 0.5 and dy.abs().max() <= 0.25 * 41 + 0.5
    assert dx.abs().max() > 6 and dy.abs().max() > 6


def _pixels(n=16, side=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, side, side, 3), dtype=torch.uint8, generator=g)


def test_every_trivial_augment_op_gives_a_valid_image_and_all_but_identity_change_it():
    image = _pixels(1, 24)[0].permute(2, 0, 1) // 2 + 60  # a narrow range: autocontrast acts
    for op, (top, _) in _WIDE_OPS.items():
        out = _wide_op(image, op, top)
        assert out.shape == image.shape and out.dtype == torch.uint8, op
        assert torch.equal(out, image) == (op == "identity"), op


def test_train_augment_is_reproducible_and_off_by_default_beyond_keras():
    pixels, labels = _pixels(), torch.arange(16) % 4
    plain = AugmentConfig(hflip=False, rotation=0, zoom=0)
    x, y = TrainAugment(plain, torch.Generator(), 4)(pixels, labels)
    torch.testing.assert_close(x, pixels.permute(0, 3, 1, 2).float() / 255)
    assert y is labels
    config = AugmentConfig(trivial_augment=True, random_erasing=0.5, mixup=0.4, cutmix=1.0)
    a = TrainAugment(config, torch.Generator().manual_seed(5), 4)(pixels, labels)
    b = TrainAugment(config, torch.Generator().manual_seed(5), 4)(pixels, labels)
    torch.testing.assert_close(a, b)
    assert a[0].is_contiguous(memory_format=torch.channels_last)


def test_random_erasing_blanks_one_rectangle_of_2_to_33_percent():
    x = torch.ones(64, 3, 20, 20)
    out = TrainAugment(
        AugmentConfig(random_erasing=1.0), torch.Generator().manual_seed(6), 2
    ).random_erasing(x.clone())
    erased = (out == 0).all(1).float().mean((1, 2))  # share of each image set to 0
    assert ((erased >= 0.015) & (erased <= 0.34)).all(), erased
    rows = (out[:, 0] == 0).any(2).sum(1) * (out[:, 0] == 0).any(1).sum(1)
    torch.testing.assert_close(rows.float() / 400, erased)  # one axis-aligned rectangle


def _one_colour_per_image(n):
    """Image i is filled with i / n and labelled i: a mix can be read back from the pixels."""
    pixels = (torch.arange(n, dtype=torch.float32) / n * 255).round().to(torch.uint8)
    return pixels.view(n, 1, 1, 1).expand(n, 8, 8, 3).clone(), torch.arange(n)


@pytest.mark.parametrize("mode", ["mixup", "cutmix"])
def test_mixed_targets_match_the_mixed_pixels(mode):
    n = 6
    pixels, labels = _one_colour_per_image(n)
    config = AugmentConfig(hflip=False, rotation=0, zoom=0, **{mode: 1.0})
    for seed in range(5):
        x, targets = TrainAugment(config, torch.Generator().manual_seed(seed), n)(pixels, labels)
        torch.testing.assert_close(targets.sum(1), torch.ones(n))
        own = targets[torch.arange(n), labels]
        other = targets[torch.arange(n), labels.roll(1)]
        source = pixels.permute(0, 3, 1, 2).float() / 255
        if mode == "mixup":  # every pixel is the same blend of the image and its neighbour
            expected = own.view(n, 1, 1, 1) * source + other.view(n, 1, 1, 1) * source.roll(1, 0)
            torch.testing.assert_close(x, expected)
        else:  # the share of pasted pixels is the neighbour's weight
            pasted = (x != source).all(1).float().mean((1, 2))
            torch.testing.assert_close(pasted, other)
