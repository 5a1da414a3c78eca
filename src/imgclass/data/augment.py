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
        n = x.shape[0]
        c = self.config
        if not (c.hflip or c.rotation or c.zoom or c.translate):
            return x
        u = torch.rand(n, 5, generator=self.generator)
        angle = (2 * u[:, 0] - 1) * c.rotation * 2 * math.pi
        # Keras: a zoom factor z > 1 samples a larger area, i.e. zooms out
        zoom = 1 + (2 * u[:, 1] - 1) * c.zoom
        flip = torch.where((u[:, 2] < 0.5) & c.hflip, -1.0, 1.0)
        # grid coordinates span [-1, 1], so a shift of t of the side is 2 t
        shift = (2 * u[:, 3:5] - 1) * c.translate * 2
        cos, sin = torch.cos(angle) * zoom, torch.sin(angle) * zoom
        theta = torch.stack([
            torch.stack([cos * flip, -sin, shift[:, 0]], dim=1),
            torch.stack([sin * flip, cos, shift[:, 1]], dim=1),
        ], dim=1).to(x.device, x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection",
                            align_corners=False)
        return out.contiguous(memory_format=torch.channels_last)
