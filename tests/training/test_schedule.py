"""The learning-rate schedule: linear warmup + cosine per iteration (spec §7.4), as PaddleClas builds it."""

from __future__ import annotations

import math

import paddle
import pytest

from shitu_features.training import CosineWarmupSchedule, cosine_with_warmup


def _paddleclas_trace(lr: float, epochs: int, warmup_epoch: float, iters: int, steps: int) -> list[float]:
    """What ppcls.optimizer.learning_rate.Cosine builds: LinearWarmup(CosineAnnealingDecay), stepped per iteration."""
    warmup = round(warmup_epoch * iters)
    cosine = paddle.optimizer.lr.CosineAnnealingDecay(learning_rate=lr, T_max=int((epochs - warmup_epoch) * iters),
                                                      eta_min=0.0)
    sched = paddle.optimizer.lr.LinearWarmup(learning_rate=cosine, warmup_steps=warmup, start_lr=0.0, end_lr=lr)
    trace = []
    for _ in range(steps):
        trace.append(sched.get_lr())
        sched.step()
    return trace


def test_matches_paddle_linear_warmup_cosine() -> None:
    sched = CosineWarmupSchedule(base_lr=0.06, iters_per_epoch=7, epochs=10, warmup_epochs=2)
    expected = _paddleclas_trace(0.06, 10, 2, 7, sched.total_steps)
    # Paddle's cosine is a recursive update of the closed form used here: equal to float rounding.
    assert sched.trace() == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_spec_formula_values() -> None:
    iters, lr = 10, 0.06
    sched = CosineWarmupSchedule(base_lr=lr, iters_per_epoch=iters, epochs=100, warmup_epochs=5)
    warmup, total = 5 * iters, 95 * iters
    assert sched.warmup_steps == warmup and sched.total_steps == 100 * iters
    assert sched(0) == 0.0
    assert sched(25) == pytest.approx(lr * 25 / warmup)
    assert sched(warmup) == pytest.approx(lr)
    t = 300
    assert sched(warmup + t) == pytest.approx(0.5 * lr * (1 + math.cos(math.pi * t / total)))
    assert sched(sched.total_steps - 1) < 1e-5 * lr
    assert sched(sched.total_steps + 50) == 0.0  # held at eta_min past the end


def test_warmup_start_and_eta_min() -> None:
    kwargs = dict(base_lr=1.0, total_steps=20, warmup_steps=10, warmup_start_lr=0.5, eta_min=0.1)
    assert cosine_with_warmup(0, **kwargs) == 0.5
    assert cosine_with_warmup(5, **kwargs) == pytest.approx(0.75)
    assert cosine_with_warmup(10, **kwargs) == pytest.approx(1.0)
    assert cosine_with_warmup(20, **kwargs) == pytest.approx(0.1)


def test_fractional_warmup_rounds_like_paddleclas() -> None:
    sched = CosineWarmupSchedule(base_lr=0.1, iters_per_epoch=3, epochs=4, warmup_epochs=0.5)
    assert sched.warmup_steps == round(0.5 * 3) == 2  # Python's round, as ppcls Cosine
    # (PaddleClas itself cannot run a fractional warmup on Paddle 3: CosineAnnealingDecay wants an int T_max.)
    assert sched(1) == pytest.approx(0.05) and sched(2) == pytest.approx(0.1)
    assert sched(11) == pytest.approx(0.05 * (1 + math.cos(math.pi * 9 / 10)))


def test_warmup_longer_than_the_run_never_reaches_the_peak() -> None:
    sched = CosineWarmupSchedule(base_lr=0.1, iters_per_epoch=2, epochs=2, warmup_epochs=5)
    assert sched.trace() == pytest.approx([0.0, 0.01, 0.02, 0.03])
