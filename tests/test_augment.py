import torch

from imgclass.config import AugmentConfig
from imgclass.data.augment import KerasAugment


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
