"""Optimizer of the recipe: Momentum 0.9 with a global L2 decay and the reference's exemptions (spec §7.3).

The exemptions are carried by the parameters themselves, as in PaddleClas: every backbone BatchNorm γ/β has a
``ParamAttr(regularizer=L2Decay(0.0))`` and Paddle's optimizers apply a parameter's own regularizer instead of
the global one (checked in ``tests/training/test_optim.py``). The BN-neck bias keeps the global decay but has a
learning-rate multiplier of 1e-20 (``optimize_attr["learning_rate"]``), which freezes it at 0.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping

import numpy as np

import paddle
from paddle import nn
from paddle.regularizer import L2Decay

from shitu_features.training.config import OptimizerConfig

__all__ = [
    "ParamGroups", "parameter_groups", "build_optimizer", "optimizer_state_to_named", "optimizer_state_from_named",
]

logger = logging.getLogger(__name__)


@dataclass
class ParamGroups:
    """How each trainable parameter is treated by :func:`build_optimizer` (names as in ``model.named_parameters``).

    Attributes:
        decayed: parameters that get the global L2 decay.
        not_decayed: parameters whose own regularizer overrides it (coefficient 0: backbone BN γ/β).
        lr_scaled: parameters with a learning-rate multiplier other than 1, mapped to it (the neck bias: 1e-20).
        frozen: parameters with ``stop_gradient=True`` (not given to the optimizer).
    """

    decayed: List[str] = field(default_factory=list)
    not_decayed: List[str] = field(default_factory=list)
    lr_scaled: Dict[str, float] = field(default_factory=dict)
    frozen: List[str] = field(default_factory=list)


def _own_coeff(param: paddle.Tensor) -> float | None:
    reg = getattr(param, "regularizer", None)
    if reg is None:
        return None
    # L2Decay stores its coefficient as _coeff (2.x) / _regularization_coeff (3.x)
    for attr in ("_coeff", "_regularization_coeff"):
        if hasattr(reg, attr):
            return float(getattr(reg, attr))
    return float("nan")


def parameter_groups(model: nn.Layer) -> ParamGroups:
    """Classify the parameters of ``model`` as the optimizer will treat them (for logging and tests)."""
    groups = ParamGroups()
    for name, param in model.named_parameters():
        if param.stop_gradient:
            groups.frozen.append(name)
            continue
        coeff = _own_coeff(param)
        (groups.decayed if coeff is None or coeff != 0.0 else groups.not_decayed).append(name)
        lr_mult = float(param.optimize_attr.get("learning_rate", 1.0))
        if lr_mult != 1.0:
            groups.lr_scaled[name] = lr_mult
    return groups


def build_optimizer(model: nn.Layer, config: OptimizerConfig, *, lr: float | None = None) -> paddle.optimizer.Optimizer:
    """Momentum optimizer over the trainable parameters of ``model`` (and nothing else).

    Args:
        model: the layer to train (a ``paddle.DataParallel`` wrapper works too).
        config: the optimizer section; ``weight_decay`` is the global L2 coefficient (1e-5).
        lr: initial learning rate; the trainer sets it every step with ``set_lr`` from the schedule, so the
            value only matters before the first step (default ``config.lr``).

    Returns:
        ``paddle.optimizer.Momentum`` with ``multi_precision`` as configured (only matters for fp16/bf16 params).
    """
    params = [p for p in model.parameters() if not p.stop_gradient]
    groups = parameter_groups(model)
    logger.debug("optimizer: %d decayed, %d exempt from L2 (own regularizer), %d with an lr multiplier, %d frozen",
                len(groups.decayed), len(groups.not_decayed), len(groups.lr_scaled), len(groups.frozen))
    clip = paddle.nn.ClipGradByGlobalNorm(config.grad_clip_norm) if config.grad_clip_norm else None
    return paddle.optimizer.Momentum(
        learning_rate=config.lr if lr is None else lr,
        momentum=config.momentum,
        parameters=params,
        use_nesterov=config.nesterov,
        weight_decay=L2Decay(config.weight_decay) if config.weight_decay > 0 else None,
        grad_clip=clip,
        multi_precision=config.multi_precision,
    )


_SEP = "@"


def _internal_to_structured(model: nn.Layer) -> Dict[str, str]:
    return {param.name: name for name, param in model.named_parameters()}


def _split_key(key: str, internal_names: Mapping[str, str]) -> tuple[str, str] | None:
    """``conv2d_3.w_0_velocity_0`` -> (``conv2d_3.w_0``, ``velocity_0``): the longest parameter-name prefix."""
    best = None
    for internal in internal_names:
        if key.startswith(internal + "_") and (best is None or len(internal) > len(best)):
            best = internal
    return None if best is None else (best, key[len(best) + 1:])


def optimizer_state_to_named(optimizer: paddle.optimizer.Optimizer, model: nn.Layer) -> Dict[str, np.ndarray]:
    """The optimizer's state keyed by structured parameter name, portable across processes.

    Paddle names accumulators after the parameters' internal names (``conv2d_0.w_0_velocity_0``), which depend
    on how many layers the process created before; a checkpoint keyed that way does not load into a model built
    elsewhere. Here ``backbone.stem.0.conv.weight@velocity_0`` is used instead; fp32 master weights (AMP O2)
    become ``<name>@master_weight``.

    Returns:
        ``{key: array}``. Learning-rate state is not included: the schedule is a function of the step.
    """
    lookup = _internal_to_structured(model)
    out: Dict[str, np.ndarray] = {}
    for key, value in optimizer.state_dict().items():
        if key == "master_weights":
            for pname, tensor in value.items():
                out[f"{lookup[pname]}{_SEP}master_weight"] = np.asarray(tensor.numpy())
            continue
        if key == "LR_Scheduler":
            continue
        split = _split_key(key, lookup)
        if split is None:
            raise KeyError(f"optimizer state entry {key!r} belongs to no parameter of the model")
        out[f"{lookup[split[0]]}{_SEP}{split[1]}"] = np.asarray(value.numpy())
    return out


def optimizer_state_from_named(optimizer: paddle.optimizer.Optimizer, model: nn.Layer,
                               state: Mapping[str, Any]) -> None:
    """Load a state written by :func:`optimizer_state_to_named` into ``optimizer`` (the inverse mapping).

    Raises:
        KeyError: an entry names a parameter the model does not have.
    """
    structured_to_internal = {name: param.name for name, param in model.named_parameters()}
    converted: Dict[str, Any] = {}
    masters: Dict[str, Any] = {}
    for key, value in state.items():
        pname, _, suffix = key.rpartition(_SEP)
        if pname not in structured_to_internal:
            raise KeyError(f"optimizer state entry {key!r} names no parameter of the model")
        tensor = paddle.to_tensor(np.asarray(value))
        if suffix == "master_weight":
            masters[structured_to_internal[pname]] = tensor
        else:
            converted[f"{structured_to_internal[pname]}_{suffix}"] = tensor
    if masters:
        converted["master_weights"] = masters
    optimizer.set_state_dict(converted)
