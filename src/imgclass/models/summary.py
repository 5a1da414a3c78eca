"""A model summary as the reference's table: layer, output shape (H x W x C), parameters.

Parameters are counted as Keras counts them (BatchNorm running statistics included, as
non-trainable), so the seed CNN shows the reference's 8,764,806. An activation that directly
follows a convolution or dense layer is folded into that layer's row, as Keras writes it.
"""

from __future__ import annotations

import torch
from torch import nn

_FOLDED = (nn.ReLU, nn.GELU, nn.SiLU)


def _describe(module: nn.Module) -> str:
    inner = [
        type(m).__name__
        for m in module.modules()
        if m is not module and not isinstance(m, nn.Identity)
    ]
    return ", ".join([_describe_one(module), *inner])


def _describe_one(module: nn.Module) -> str:
    if isinstance(module, nn.Conv2d):
        k = "x".join(map(str, module.kernel_size))
        padding = "same" if module.padding == "same" else f"padding {module.padding}"
        return f"Conv2D {module.out_channels} filters {k}, {padding}"
    if isinstance(module, nn.Linear):
        return f"Dense {module.out_features}"
    if isinstance(module, nn.BatchNorm2d):
        return "BatchNormalization"
    if isinstance(module, nn.MaxPool2d):
        return f"MaxPooling {module.kernel_size}x{module.kernel_size}"
    if isinstance(module, nn.Dropout):
        return f"Dropout {module.p:g}"
    return type(module).__name__


def _shape(output: torch.Tensor) -> str:
    dims = list(output.shape[1:])
    if len(dims) == 3:  # (C, H, W) -> H x W x C, the reference's convention
        dims = [dims[1], dims[2], dims[0]]
    return "x".join(map(str, dims))


def _own_counts(module: nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in module.parameters(recurse=False))
    stats = sum(
        b.numel()
        for name, b in module.named_buffers(recurse=False)
        if name != "num_batches_tracked"
    )
    return trainable, stats


def model_summary(model: nn.Module, image_size: int, title: str = "") -> str:
    rows: list[list] = []  # [description, shape, parameters]
    hooks = []

    def record(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        if isinstance(module, _FOLDED) and rows and rows[-1][0].startswith(("Conv2D", "Dense")):
            rows[-1][0] += f", {type(module).__name__}"
            return
        trainable, stats = _own_counts(module)
        rows.append([_describe(module), _shape(output), trainable + stats])

    inside: set[nn.Module] = set()  # the children of a layer that has a row of its own
    for module in model.modules():  # the leaves, and modules with parameters of their own
        # (timm's BatchNormAct2d: one row, its activation named in it); no Identity rows
        if module in inside or isinstance(module, nn.Identity):
            continue
        children = [m for m in module.modules() if m is not module]
        if children and next(module.parameters(recurse=False), None) is None:
            continue
        inside.update(children)
        hooks.append(module.register_forward_hook(record))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            model(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(_own_counts(m)[1] for m in model.modules()) + sum(
        p.numel() for p in model.parameters() if not p.requires_grad
    )
    total = trainable + frozen
    width = max(len(r[0]) for r in rows) + 2
    lines = [title] if title else []
    lines.append(f"{'layer':<{width}}{'output shape':>14}{'parameters':>14}")
    lines += [f"{d:<{width}}{s:>14}{p:>14,}" for d, s, p in rows]
    lines.append(
        f"Total {total:,} parameters ({total * 4 / 2**20:.2f} MB in float32): "
        f"{trainable:,} trainable, {frozen:,} non-trainable"
    )
    return "\n".join(lines)
