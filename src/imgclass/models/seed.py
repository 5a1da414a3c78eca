"""The reference CNN ("finpros_6_class_cnn_model"), layer for layer.

Keras conventions kept where they change the numbers: ReLU inside the convolution and BatchNorm
after it, BatchNorm momentum 0.99 / epsilon 1e-3, Glorot-uniform kernels with zero biases.
"""

from __future__ import annotations

from torch import nn


def _conv_block(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding="same"),
        nn.ReLU(inplace=True),
        nn.BatchNorm2d(out_channels, eps=1e-3, momentum=0.01),  # Keras momentum 0.99
        nn.MaxPool2d(2),
    ]


class SeedCNN(nn.Sequential):
    """conv64-conv128-conv256 (each ReLU, BatchNorm, 2x2 max-pool), dense 512, dropout 0.4."""

    def __init__(self, num_classes: int, image_size: int = 64, dropout: float = 0.4):
        if image_size % 8:
            raise ValueError(f"the seed CNN needs an image size divisible by 8, got {image_size}")
        side = image_size // 8
        super().__init__(
            *_conv_block(3, 64),
            *_conv_block(64, 128),
            *_conv_block(128, 256),
            nn.Flatten(),
            nn.Linear(256 * side * side, 512),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(512, num_classes),  # logits; softmax lives in the loss and in predict
        )
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight)  # Keras glorot_uniform
                nn.init.zeros_(module.bias)
