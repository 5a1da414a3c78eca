"""Training-time augmentation: the reference's Keras flip / rotation / zoom, and beyond it
TrivialAugment, random erasing, MixUp and CutMix (TrainAugment, off in the seed recipe).

KerasAugment: one affine transform per image (flip, rotate, zoom), sampled bilinearly with
reflected borders, as Keras' RandomFlip("horizontal"), RandomRotation(0.1) and RandomZoom(0.1)
do by default.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from imgclass.config import AugmentConfig
from imgclass.data.batches import Batch, to_float


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
        theta = torch.stack(
            [
                torch.stack([cos * flip, -sin, shift[:, 0]], dim=1),
                torch.stack([sin * flip, cos, shift[:, 1]], dim=1),
            ],
            dim=1,
        ).to(x.device, x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        out = F.grid_sample(
            x, grid, mode="bilinear", padding_mode="reflection", align_corners=False
        )
        return out.contiguous(memory_format=torch.channels_last)


def _draw_beta(alpha: float, generator: torch.Generator) -> float:
    """One Beta(alpha, alpha) draw from the stream (torch samples Beta from its global RNG only)."""
    seed = int(torch.randint(2**62, (), generator=generator))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


# TrivialAugment Wide (Müller & Hutter, 2021) as torchvision's TrivialAugmentWide defines it:
# 31 magnitude bins per op, the op's maximum magnitude, and whether its sign is random.
_BINS = 31
_WIDE_OPS: dict[str, tuple[float, bool]] = {
    "identity": (0.0, False),
    "shear_x": (0.99, True),
    "shear_y": (0.99, True),
    "translate_x": (32.0, True),
    "translate_y": (32.0, True),
    "rotate": (135.0, True),
    "brightness": (0.99, True),
    "color": (0.99, True),
    "contrast": (0.99, True),
    "sharpness": (0.99, True),
    "posterize": (6.0, False),
    "solarize": (1.0, False),
    "autocontrast": (0.0, False),
    "equalize": (0.0, False),
}


def _wide_op(image: torch.Tensor, op: str, m: float) -> torch.Tensor:
    """One TrivialAugment op on a (3, H, W) uint8 image through torchvision's functionals."""
    import torchvision.transforms.v2.functional as TF  # only when asked for: ~160 MB imported

    if op in ("shear_x", "shear_y"):
        shear = [math.degrees(math.atan(m)), 0.0][:: 1 if op == "shear_x" else -1]
        return TF.affine(image, angle=0.0, translate=[0, 0], scale=1.0, shear=shear, center=[0, 0])
    if op in ("translate_x", "translate_y"):
        shift = [int(m), 0][:: 1 if op == "translate_x" else -1]
        return TF.affine(image, angle=0.0, translate=shift, scale=1.0, shear=[0.0, 0.0])
    adjust = {
        "rotate": lambda: TF.rotate(image, m),
        "brightness": lambda: TF.adjust_brightness(image, 1 + m),
        "color": lambda: TF.adjust_saturation(image, 1 + m),
        "contrast": lambda: TF.adjust_contrast(image, 1 + m),
        "sharpness": lambda: TF.adjust_sharpness(image, 1 + m),
        "posterize": lambda: TF.posterize(image, 8 - round(m)),
        "solarize": lambda: TF.solarize(image, 255.0 * (1 - m)),
        "autocontrast": lambda: TF.autocontrast(image),
        "equalize": lambda: TF.equalize(image),
    }
    return adjust[op]() if op in adjust else image


class TrainAugment:
    """All training-only augmentation of a batch, from the uint8 pixels to the model's input.

    Order: TrivialAugment (per image, uint8) -> [0, 1] floats -> Keras flip/rotation/zoom/
    translation -> random erasing (per image) -> MixUp or CutMix (batch; the targets become
    class probabilities). Every random draw comes from one generator, never from torch's global
    one (which dropout uses on the training thread at the same time), so a run is reproducible
    and resumes bit for bit; that is why torchvision's transform classes are not used directly.
    """

    def __init__(self, config: AugmentConfig, generator: torch.Generator, num_classes: int):
        self.config, self.generator, self.num_classes = config, generator, num_classes
        self.keras = KerasAugment(config, generator)

    def _rand(self, *shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=self.generator)

    def trivial_augment(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels: (N, H, W, 3) uint8 -> the same, each image through one random wide op."""
        ops = list(_WIDE_OPS)
        choice = torch.randint(len(ops), (len(pixels),), generator=self.generator)
        bins, signs = self._rand(len(pixels)), self._rand(len(pixels))
        images = pixels.permute(0, 3, 1, 2)
        out = []
        for image, k, b, s in zip(images, choice.tolist(), bins.tolist(), signs.tolist()):
            top, signed = _WIDE_OPS[ops[k]]
            m = top * min(int(b * _BINS), _BINS - 1) / (_BINS - 1)
            out.append(_wide_op(image, ops[k], -m if signed and s < 0.5 else m))
        return torch.stack(out).permute(0, 2, 3, 1)

    def random_erasing(self, x: torch.Tensor) -> torch.Tensor:
        """Erase (to 0) one rectangle of 2-33 % of the area, aspect 0.3-3.3, in a share of images:
        torchvision's RandomErasing defaults."""
        h, w = x.shape[-2:]
        for i in torch.nonzero(self._rand(len(x)) < self.config.random_erasing).flatten():
            for _ in range(10):  # torchvision's number of attempts to fit a rectangle
                area, log_ratio = self._rand(2).tolist()
                target = h * w * (0.02 + area * (0.33 - 0.02))
                ratio = math.exp(math.log(0.3) + log_ratio * (math.log(3.3) - math.log(0.3)))
                eh, ew = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
                if 0 < eh < h and 0 < ew < w:
                    top = int(torch.randint(h - eh + 1, (), generator=self.generator))
                    left = int(torch.randint(w - ew + 1, (), generator=self.generator))
                    x[i, :, top : top + eh, left : left + ew] = 0
                    break
        return x

    def mix(self, x: torch.Tensor, labels: torch.Tensor) -> Batch:
        """MixUp (blend with the batch rolled by one) or CutMix (paste a box from it); the
        targets are mixed in the same proportion. Both configured: each batch picks one."""
        c = self.config
        use_cutmix = c.cutmix > 0 and (c.mixup == 0 or float(self._rand(1)) < 0.5)
        lam = _draw_beta(c.cutmix if use_cutmix else c.mixup, self.generator)
        other = x.roll(1, 0)
        if use_cutmix:  # a box of area (1 - lam) at a uniform centre, clipped to the image
            h, w = x.shape[-2:]
            cy, cx = (self._rand(2) * torch.tensor([h, w])).tolist()
            rh, rw = 0.5 * math.sqrt(1 - lam) * h, 0.5 * math.sqrt(1 - lam) * w
            y0, y1 = int(max(cy - rh, 0)), int(min(cy + rh, h))
            x0, x1 = int(max(cx - rw, 0)), int(min(cx + rw, w))
            x = x.clone()
            x[..., y0:y1, x0:x1] = other[..., y0:y1, x0:x1]
            lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
        else:
            x = x * lam + other * (1 - lam)
        onehot = F.one_hot(labels, self.num_classes).float()
        return x, onehot * lam + onehot.roll(1, 0) * (1 - lam)

    def __call__(self, pixels: torch.Tensor, labels: torch.Tensor) -> Batch:
        """(N, H, W, 3) uint8 pixels and int64 labels -> model input and targets (the labels,
        or (N, classes) probabilities when MixUp/CutMix is on)."""
        c = self.config
        if c.trivial_augment:
            pixels = self.trivial_augment(pixels)
        x = self.keras(to_float(pixels))
        if c.random_erasing:
            x = self.random_erasing(x)
        if c.mixup or c.cutmix:
            x, targets = self.mix(x, labels)
            return x.contiguous(memory_format=torch.channels_last), targets
        return x, labels
