"""Training-time augmentation on whole batches: the reference's Keras flip / rotation / zoom.

One affine transform per image (flip, rotate, zoom), sampled bilinearly with reflected borders,
as Keras' RandomFlip("horizontal"), RandomRotation(0.1) and RandomZoom(0.1) do by default.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from imgclass.config import AugmentConfig


class KerasAugment:
    def __init__(self, config: AugmentConfig, generator: torch.Generator):
        self.config = config
        self.generator = generator

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) float batch -> a randomly transformed batch of the same shape."""
        n, c = x.shape[:2]
        if not (self.config.hflip or self.config.rotation or self.config.zoom):
            return x
        u = torch.rand(n, 3, generator=self.generator)
        angle = (2 * u[:, 0] - 1) * self.config.rotation * 2 * math.pi
        # Keras: a zoom factor z > 1 samples a larger area, i.e. zooms out
        zoom = 1 + (2 * u[:, 1] - 1) * self.config.zoom
        flip = torch.where((u[:, 2] < 0.5) & self.config.hflip, -1.0, 1.0)
        cos, sin = torch.cos(angle) * zoom, torch.sin(angle) * zoom
        zero = torch.zeros(n)
        theta = torch.stack([
            torch.stack([cos * flip, -sin, zero], dim=1),
            torch.stack([sin * flip, cos, zero], dim=1),
        ], dim=1).to(x.device, x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection",
                            align_corners=False)
        return out.contiguous(memory_format=torch.channels_last)
