"""Loading PaddleClas-format state dicts into our models, strictly and with a report (spec §4).

PaddleClas skips mismatched tensors with a log line that users miss. Here nothing is skipped silently: every
tensor is either loaded or listed in the :class:`LoadReport` with its reason, and mismatches outside the head fail
with :class:`~shitu_features.errors.CheckpointMismatchError` unless ``strict=False`` is asked for.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Union

import numpy as np
import paddle
from paddle import nn
from paddle.base.data_feeder import convert_dtype

from shitu_features.errors import CheckpointMismatchError

__all__ = ["LoadReport", "load_checkpoint"]

logger = logging.getLogger(__name__)

StateDict = Mapping[str, Any]
_HEAD_PREFIX = "head."


@dataclass
class LoadReport:
    """What :func:`load_checkpoint` did with each tensor.

    Attributes:
        loaded: keys copied into the model.
        missing: model keys absent from the checkpoint (they keep their current values).
        unexpected: checkpoint keys the model does not have (ignored).
        skipped: checkpoint keys present in the model but not loaded, mapped to the reason (shape mismatch).
        notes: other facts worth knowing (e.g. a key prefix that was added).
    """

    loaded: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    skipped: Dict[str, str] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True when every model tensor was loaded and nothing in the checkpoint was left over."""
        return not (self.missing or self.unexpected or self.skipped)

    def summary(self) -> str:
        """A multi-line human-readable account, listing every key that was not loaded."""
        lines = [f"loaded {len(self.loaded)} tensors"]
        lines += [f"note: {n}" for n in self.notes]
        lines += [f"skipped {k}: {why}" for k, why in self.skipped.items()]
        if self.missing:
            lines.append(f"missing from checkpoint (kept initial values): {', '.join(self.missing)}")
        if self.unexpected:
            lines.append(f"not in model (ignored): {', '.join(self.unexpected)}")
        return "\n".join(lines)

    __str__ = summary


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, paddle.Tensor):
        return value.numpy()
    return np.asarray(value)


def load_checkpoint(model: nn.Layer, state_dict: Union[StateDict, str, "os.PathLike[str]"], *,
                    strict: bool = True) -> LoadReport:
    """Load a PaddleClas-format state dict into ``model`` and report what happened.

    Rules:
      * Head tensors (``head.*``) whose shape differs (another class count) are skipped with the reason, and a
        checkpoint without ``head.*`` leaves the head as initialised: both are normal when fine-tuning.
      * Any other shape mismatch, missing or unexpected key raises :class:`CheckpointMismatchError` naming the
        keys — unless ``strict=False``, which loads what fits and reports the rest (e.g. initialising the ShiTu
        backbone from an ImageNet checkpoint, whose ``last_conv`` and ``fc`` do not fit).
      * A backbone-only checkpoint (keys like ``stem.0.conv.weight``, as in the ImageNet ``.pdparams``) loaded into
        a model with a ``backbone`` gets the ``backbone.`` prefix added; the report notes it.
      * Re-parameterizable blocks are reset to the branch-sum form: a checkpoint's ``dw_conv`` values are stale in
        training form (spec §4), so they are never trusted; call ``reparameterize()`` again to fuse.

    Args:
        model: the target layer, e.g. a :class:`~shitu_features.models.RecModel`.
        state_dict: mapping of key -> array/tensor, or a path to a ``.pdparams`` (read with the restricted loader
            :func:`shitu_features.serialization.load_state_dict`).
        strict: fail on mismatches outside the head (default) or load what fits and report the rest.

    Returns:
        The :class:`LoadReport`; also logged (WARNING when anything was not loaded).
    """
    if isinstance(state_dict, (str, os.PathLike)):
        from shitu_features.serialization import load_state_dict

        state_dict = load_state_dict(state_dict)
    report = LoadReport()
    own = model.state_dict()
    ckpt = dict(state_dict)
    if any(k.startswith("backbone.") for k in own) and ckpt and not any(
            k.startswith(("backbone.", "neck.", "head.")) for k in ckpt):
        ckpt = {f"backbone.{k}": v for k, v in ckpt.items()}
        report.notes.append("backbone-only checkpoint: added the 'backbone.' prefix to its keys")

    errors: List[str] = []
    for key, value in ckpt.items():
        if key not in own:
            report.unexpected.append(key)
            if not key.startswith(_HEAD_PREFIX):
                errors.append(f"unexpected key {key}")
            continue
        array = _to_numpy(value)
        want = list(own[key].shape)
        if list(array.shape) != want:
            reason = f"shape {list(array.shape)} in checkpoint vs {want} in model"
            if key.startswith(_HEAD_PREFIX):
                reason += " (the head has another class count; it keeps its initialisation)"
            else:
                errors.append(f"{key}: {reason}")
            report.skipped[key] = reason
            continue
        # The parameter's numpy dtype from its Paddle dtype (bfloat16 -> uint16, as .numpy() gives), without
        # copying the parameter to the host only to read it (the 192k-class head is ~400 MB).
        own[key].set_value(array.astype(convert_dtype(own[key].dtype), copy=False))
        report.loaded.append(key)
    report.missing = [k for k in own if k not in ckpt]
    errors += [f"missing key {k}" for k in report.missing if not k.startswith(_HEAD_PREFIX)]

    if errors and strict:
        # Nothing must look loaded after a refused checkpoint: the caller gets an exception, and the partial
        # values already copied are not reported as a success.
        raise CheckpointMismatchError(
            f"checkpoint does not fit the model ({len(errors)} problems): " + "; ".join(errors[:20])
            + ("; ..." if len(errors) > 20 else "")
            + ". Pass strict=False to load what fits (e.g. an ImageNet backbone) and get a report of the rest."
        )
    for layer in model.sublayers(include_self=True):
        if getattr(layer, "use_rep", False):
            layer.is_repped = False
    logger.log(logging.INFO if report.complete else logging.WARNING, "checkpoint loaded: %s", report.summary())
    return report
