from torch import nn

from imgclass.checkpoint import count_parameters
from imgclass.models import build_model
from imgclass.models.summary import model_summary


def test_seed_cnn_has_the_reference_parameter_count():
    model = build_model("seed_cnn", num_classes=6, image_size=64)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    running = sum(
        b.numel()
        for name, b in model.named_buffers()
        if name.endswith(("running_mean", "running_var"))
    )
    assert trainable == 8_763_910
    assert running == 896
    assert count_parameters(model) == 8_764_806


def test_seed_cnn_layer_order_is_conv_relu_batchnorm_pool():
    model = build_model("seed_cnn", num_classes=6, image_size=64)
    kinds = [type(m) for m in model]
    block = [nn.Conv2d, nn.ReLU, nn.BatchNorm2d, nn.MaxPool2d]
    assert kinds[:12] == block * 3
    assert kinds[12:] == [nn.Flatten, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert model[13].in_features == 16384 and model[13].out_features == 512
    assert model[15].p == 0.4


def test_batchnorm_uses_keras_momentum_and_epsilon():
    model = build_model("seed_cnn", num_classes=6, image_size=64)
    for bn in (m for m in model if isinstance(m, nn.BatchNorm2d)):
        assert bn.momentum == 0.01 and bn.eps == 1e-3


def test_summary_matches_the_reference_table():
    text = model_summary(build_model("seed_cnn", 6, 64), 64)
    assert "Conv2D 64 filters 3x3, same, ReLU" in text
    assert "64x64x64" in text and "8x8x256" in text and "16384" in text
    assert "8,389,120" in text and "3,078" in text
    assert "Total 8,764,806 parameters (33.44 MB in float32): 8,763,910 trainable, 896" in text


def test_unknown_model_and_bad_size_are_clear_errors():
    import pytest

    with pytest.raises(ValueError, match="unknown model"):
        build_model("nope", 2, 64)
    with pytest.raises(ValueError, match="divisible by 8"):
        build_model("seed_cnn", 2, 60)
