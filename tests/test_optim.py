import pytest
import torch
from torch import nn

from imgclass.config import TrainConfig
from imgclass.optim import build_optimizer, build_schedule


def _lrs(config: TrainConfig, steps_per_epoch: int = 10) -> list[float]:
    optimizer = build_optimizer(nn.Linear(2, 2), config)
    schedule = build_schedule(optimizer, config, steps_per_epoch)
    lrs = []
    for _ in range(config.epochs * steps_per_epoch):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return lrs


def test_cosine_warms_up_linearly_then_decays_to_zero():
    lrs = _lrs(TrainConfig(schedule="cosine", warmup=0.1, lr=1.0, epochs=10))
    assert lrs[0] == pytest.approx(1 / 25) and lrs[10] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11]))  # rising during the warm-up
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # then falling
    assert lrs[55] == pytest.approx(0.5, abs=0.02)  # half-way through the cosine
    assert lrs[-1] < 1e-3
    no_warmup = _lrs(TrainConfig(schedule="cosine", lr=1.0, epochs=10))
    assert no_warmup[0] == 1.0 and no_warmup[50] == pytest.approx(0.5)


def test_onecycle_peaks_at_the_end_of_its_warmup():
    lrs = _lrs(TrainConfig(schedule="onecycle", warmup=0.2, lr=1.0, epochs=10))
    assert lrs[0] == pytest.approx(1 / 25) and max(lrs) == pytest.approx(1.0)
    assert lrs.index(max(lrs)) in (19, 20)


def test_adamw_decouples_weight_decay():
    adamw = build_optimizer(nn.Linear(2, 2), TrainConfig(optimizer="adamw", weight_decay=0.05))
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["weight_decay"] == 0.05
    sgd = build_optimizer(nn.Linear(2, 2), TrainConfig(optimizer="sgd"))
    assert sgd.defaults["nesterov"] is True
