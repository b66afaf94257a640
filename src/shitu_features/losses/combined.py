"""Weighted sum of named loss terms, reporting each term (PaddleClas ``CombinedLoss``), and the loss registry."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Union

import numpy as np
import paddle

from shitu_features.errors import ConfigError, InvalidInputError
from shitu_features.losses.cross_entropy import CELoss
from shitu_features.losses.triplet import TriHardLoss, TripletLoss, TripletLossV2
from shitu_features.losses.triplet_angular import TripletAngularMarginLoss

__all__ = ["LOSSES", "CombinedLoss", "LossOutput", "LossTerm", "WeightedLoss", "build_loss"]

#: Loss classes by the name the reference YAML uses (``Loss.Train: - CELoss: {...}``).
LOSSES: Mapping[str, type[paddle.nn.Layer]] = {
    "CELoss": CELoss,
    "TripletAngularMarginLoss": TripletAngularMarginLoss,
    "TripletLoss": TripletLoss,
    "TripletLossV2": TripletLossV2,
    "TriHardLoss": TriHardLoss,
}


def build_loss(name: str, **kwargs: Any) -> paddle.nn.Layer:
    """Build a registered loss by its reference name.

    Args:
        name: a key of :data:`LOSSES`, e.g. ``"CELoss"``.
        **kwargs: constructor keywords, named as in the reference YAML (``epsilon``, ``margin``, ...).

    Raises:
        ConfigError: unknown name (the message lists close matches) or an unknown keyword.
    """
    if name not in LOSSES:
        close = difflib.get_close_matches(name, list(LOSSES), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown loss {name!r}{hint} (known: {', '.join(LOSSES)})")
    cls = LOSSES[name]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ConfigError(f"{name} does not accept {unknown}; accepted keywords: {sorted(accepted)}")
    return cls(**kwargs)


class LossOutput(NamedTuple):
    """Result of :class:`WeightedLoss`.

    Attributes:
        total: scalar float tensor, the sum of ``parts`` (what to call ``backward()`` on).
        parts: term name -> scalar tensor, each already multiplied by its weight (as the reference reports
            them), in the order the terms were given.
    """

    total: paddle.Tensor
    parts: dict[str, paddle.Tensor]


@dataclass(frozen=True)
class LossTerm:
    """One weighted term of a :class:`WeightedLoss`.

    Attributes:
        name: key of the term in :attr:`LossOutput.parts`.
        loss: a layer called as ``loss(model_outputs[input_key], labels)``.
        weight: multiplier of the term.
        input_key: which model output feeds the term; ``None`` takes the loss's ``input_key`` attribute
            (``"logits"`` for :class:`CELoss`, ``feature_from`` for the triplet losses).
    """

    name: str
    loss: paddle.nn.Layer
    weight: float = 1.0
    input_key: str | None = None


TermsSpec = Union[Mapping[str, tuple[float, paddle.nn.Layer]], Sequence[LossTerm]]


class WeightedLoss(paddle.nn.Layer):
    """Weighted sum of named loss terms; every term is reported (PaddleClas ``CombinedLoss``, spec §7).

    Example::

        loss_fn = WeightedLoss({
            "CELoss": (1.0, CELoss(epsilon=0.1)),
            "TripletAngularMarginLoss": (1.0, TripletAngularMarginLoss(add_absolute=True, ...)),
        })
        out = loss_fn({"features": features, "logits": logits}, labels)
        out.total.backward(); {k: float(v) for k, v in out.parts.items()}

    Args:
        terms: ``name -> (weight, loss)``, or a sequence of :class:`LossTerm`.

    Shape:
        - outputs: a mapping (or an object with attributes) holding each term's input, e.g. ``features``
          ``[B, D]`` and ``logits`` ``[B, C]``.
        - labels: ``[B]`` or ``[B, 1]`` int64.
        - output: :class:`LossOutput` with scalar tensors.

    Raises:
        ConfigError: no terms, a duplicate name, or a term whose input is unknown.
    """

    def __init__(self, terms: TermsSpec) -> None:
        super().__init__()
        if isinstance(terms, Mapping):
            terms = [LossTerm(name=name, loss=loss, weight=weight) for name, (weight, loss) in terms.items()]
        terms = list(terms)
        if not terms:
            raise ConfigError("WeightedLoss needs at least one term")
        names = [t.name for t in terms]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"duplicate loss term names {duplicates}; give each term a distinct name")
        self.weights: dict[str, float] = {}
        self.input_keys: dict[str, str] = {}
        self.terms = paddle.nn.LayerDict()
        for term in terms:
            key = term.input_key or getattr(term.loss, "input_key", None)
            if not key:
                raise ConfigError(f"loss term {term.name!r} has no input_key and its loss defines none")
            self.terms[term.name] = term.loss
            self.weights[term.name] = float(term.weight)
            self.input_keys[term.name] = key

    @classmethod
    def from_config(cls, config: Sequence[Mapping[str, Mapping[str, Any]]]) -> WeightedLoss:
        """Build from the reference YAML form of ``Loss.Train``.

        Args:
            config: e.g. ``[{"CELoss": {"weight": 1.0, "epsilon": 0.1}},
                {"TripletAngularMarginLoss": {"weight": 1.0, "margin": 0.5, "feature_from": "features"}}]``.
                ``weight`` defaults to 1.0; the other keys go to the loss constructor (see :func:`build_loss`).
                Terms are named after their class.

        Raises:
            ConfigError: malformed entry, unknown loss or keyword, or the same loss listed twice.
        """
        terms = []
        for entry in config:
            if not isinstance(entry, Mapping) or len(entry) != 1:
                raise ConfigError(f"each loss entry must be a one-key mapping {{name: {{...}}}}, got {entry!r}")
            ((name, params),) = entry.items()
            params = dict(params or {})
            weight = params.pop("weight", 1.0)
            terms.append(LossTerm(name=name, loss=build_loss(name, **params), weight=weight))
        return cls(terms)

    def forward(self, outputs: Any, labels: paddle.Tensor | np.ndarray) -> LossOutput:
        """Compute every weighted term and their sum.

        Args:
            outputs: model outputs by key (mapping or attribute access), e.g. ``{"features": f, "logits": z}``.
            labels: ``[B]`` or ``[B, 1]`` int64.

        Returns:
            :class:`LossOutput` ``(total, parts)``.
        """
        parts: dict[str, paddle.Tensor] = {}
        for name, loss in self.terms.items():
            parts[name] = loss(_lookup(outputs, self.input_keys[name], name), labels) * self.weights[name]
        total = paddle.add_n(list(parts.values())) if len(parts) > 1 else next(iter(parts.values()))
        return LossOutput(total=total, parts=parts)

    def extra_repr(self) -> str:
        return ", ".join(f"{n}: weight={w}, input={self.input_keys[n]!r}" for n, w in self.weights.items())


def _lookup(outputs: Any, key: str, term: str) -> paddle.Tensor:
    try:
        return outputs[key] if isinstance(outputs, Mapping) else getattr(outputs, key)
    except (KeyError, AttributeError):
        available = list(outputs) if isinstance(outputs, Mapping) else [a for a in dir(outputs) if a[0] != "_"]
        raise InvalidInputError(f"loss term {term!r} needs model output {key!r}; got {available}") from None


#: The reference's name for :class:`WeightedLoss`.
CombinedLoss = WeightedLoss
