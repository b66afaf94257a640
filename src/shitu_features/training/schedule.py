"""Learning-rate schedule: linear warmup then cosine annealing, a pure function of the iteration (spec §7.4).

PaddleClas builds ``LinearWarmup(CosineAnnealingDecay(lr, T_max=(epochs - warmup_epoch) * iters), warmup_steps=
round(warmup_epoch * iters), start_lr=warmup_start_lr, end_lr=lr)`` and steps it once per iteration
(``by_epoch: false``). Paddle's ``CosineAnnealingDecay`` uses a recursive update whose exact value is the closed
form used here; the two agree to float rounding (checked in the tests). Being a pure function of the step, the
schedule needs no state in a checkpoint: resuming at step ``t`` gives the same learning rate as a straight run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List

from shitu_features.errors import ConfigError

__all__ = ["cosine_with_warmup", "CosineWarmupSchedule"]


def cosine_with_warmup(step: int, *, base_lr: float, total_steps: int, warmup_steps: int = 0,
                       warmup_start_lr: float = 0.0, eta_min: float = 0.0) -> float:
    """Learning rate of iteration ``step`` (0-based: the lr used by the ``step``-th optimizer update).

    - ``step < warmup_steps``: ``warmup_start_lr + (base_lr - warmup_start_lr) * step / warmup_steps``;
    - otherwise, with ``t = step - warmup_steps`` and ``T = total_steps - warmup_steps``:
      ``eta_min + (base_lr - eta_min) * (1 + cos(pi * t / T)) / 2``, held at ``eta_min`` after ``total_steps``.

    Args:
        step: iteration index, ``>= 0``.
        base_lr: peak learning rate (after warmup).
        total_steps: iterations of the whole run (``epochs * iters_per_epoch``).
        warmup_steps: iterations of linear warmup (``round(warmup_epochs * iters_per_epoch)``).
        warmup_start_lr: learning rate at step 0 of the warmup.
        eta_min: learning rate at the end of the cosine.

    Returns:
        The learning rate as a Python float.
    """
    if step < 0:
        raise ConfigError(f"step must be >= 0, got {step}")
    if warmup_steps > 0 and step < warmup_steps:
        return warmup_start_lr + (base_lr - warmup_start_lr) * step / warmup_steps
    cosine_steps = total_steps - warmup_steps
    if cosine_steps <= 0:
        return base_lr
    t = min(step - warmup_steps, cosine_steps)
    return eta_min + (base_lr - eta_min) * (1.0 + math.cos(math.pi * t / cosine_steps)) / 2.0


@dataclass(frozen=True)
class CosineWarmupSchedule:
    """:func:`cosine_with_warmup` bound to one run's settings; call it with the step.

    Attributes:
        base_lr: peak learning rate.
        iters_per_epoch: optimizer steps per epoch.
        epochs: epochs of the run.
        warmup_epochs: warmup length in epochs (may be fractional; rounded to steps as the reference does).
        warmup_start_lr: learning rate at step 0.
        eta_min: final learning rate.
    """

    base_lr: float
    iters_per_epoch: int
    epochs: int
    warmup_epochs: float = 0.0
    warmup_start_lr: float = 0.0
    eta_min: float = 0.0

    def __post_init__(self) -> None:
        if self.iters_per_epoch <= 0 or self.epochs <= 0:
            raise ConfigError(f"iters_per_epoch ({self.iters_per_epoch}) and epochs ({self.epochs}) must be positive")

    @property
    def total_steps(self) -> int:
        """Optimizer steps in the whole run."""
        return self.epochs * self.iters_per_epoch

    @property
    def warmup_steps(self) -> int:
        """``round(warmup_epochs * iters_per_epoch)``, as PaddleClas's ``Cosine`` computes it."""
        return int(round(self.warmup_epochs * self.iters_per_epoch))

    def __call__(self, step: int) -> float:
        return cosine_with_warmup(step, base_lr=self.base_lr, total_steps=self.total_steps,
                                  warmup_steps=self.warmup_steps, warmup_start_lr=self.warmup_start_lr,
                                  eta_min=self.eta_min)

    def trace(self) -> List[float]:
        """The learning rate of every step of the run, ``[total_steps]``."""
        return [self(step) for step in range(self.total_steps)]
