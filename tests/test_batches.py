import pytest
import torch

from imgclass.data.batches import epoch_order, iterate_batches, prefetch, to_float


def test_to_float_scales_to_unit_range_channels_last():
    pixels = torch.tensor([[[[0, 128, 255]]]], dtype=torch.uint8)  # (1, 1, 1, 3)
    x = to_float(pixels)
    assert x.shape == (1, 3, 1, 1) and x.dtype == torch.float32
    torch.testing.assert_close(x.flatten(), torch.tensor([0.0, 128 / 255, 1.0]))
    big = to_float(torch.zeros(2, 8, 8, 3, dtype=torch.uint8))
    assert big.is_contiguous(memory_format=torch.channels_last)


def test_batches_cover_every_image_once_per_epoch_in_shuffled_order():
    pixels = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 2, 2, 3).clone()
    labels = torch.arange(10)
    g = torch.Generator().manual_seed(0)
    batches = list(iterate_batches(pixels, labels, 4, order=epoch_order(labels, g)))
    assert [len(y) for _, y in batches] == [4, 4, 2]
    order = torch.cat([y for _, y in batches])
    assert sorted(order.tolist()) == list(range(10)) and order.tolist() != list(range(10))
    for x, y in batches:  # pixels travel with their labels
        torch.testing.assert_close(x[:, 0, 0, 0] * 255, y.float())


def test_balanced_order_draws_every_class_about_equally_often():
    labels = torch.tensor([0] * 900 + [1] * 90 + [2] * 10)
    order = epoch_order(labels, torch.Generator().manual_seed(0), balanced=True)
    assert len(order) == len(labels)
    counts = torch.bincount(labels[order], minlength=3)
    assert all(280 < c < 390 for c in counts.tolist()), counts  # 1/3 each, not 90/9/1 %
    shuffled = epoch_order(labels, torch.Generator().manual_seed(0))
    assert torch.bincount(labels[shuffled]).tolist() == [900, 90, 10]


def test_prefetch_yields_everything_and_passes_errors_on():
    assert list(prefetch(iter(range(7)))) == list(range(7))

    def failing():
        yield 1
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        list(prefetch(failing()))
