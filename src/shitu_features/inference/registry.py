"""Registry of the official PP-ShiTuV2 weights: where each artifact lives, its format and what it expects.

The registry is a plain dict literal (:data:`OFFICIAL_MODELS`); nothing registers itself at import time.
URLs and facts come from ``../spec/ppshitu_v2.md`` §11.1. No official sha256 or byte size is published for
any of these files (§11.1.4); the one hash recorded here is a third-party value and is labelled as such.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Literal

from shitu_features.errors import UnknownModelError

__all__ = [
    "ArtifactFormat",
    "OfficialArtifact",
    "OfficialPreprocessing",
    "OfficialModel",
    "OFFICIAL_MODELS",
    "DEFAULT_MODEL",
    "resolve_official",
    "list_official_models",
]

#: ``paddle_pir_tar``: tar of ``inference.json`` + ``inference.pdiparams`` (+ ``inference.yml``), Paddle 3 format.
#: ``paddle_legacy_tar``: tar of ``inference.pdmodel`` + ``inference.pdiparams`` (+ ``.pdiparams.info``), Paddle 2.
#: ``pdparams``: a pickled training state dict (``backbone.*``, ``neck.*``, maybe ``head.*``).
ArtifactFormat = Literal["paddle_pir_tar", "paddle_legacy_tar", "pdparams"]


@dataclass(frozen=True)
class OfficialArtifact:
    """One downloadable file of an official model.

    Attributes:
        url: Canonical download URL (its host can be redirected with ``SHITU_FEATURES_ENDPOINT``).
        format: How the file is laid out, see :data:`ArtifactFormat`.
        filename: Name the file is cached under.
        sha256: Expected sha256 (hex) or ``None`` when unknown; a download that does not match is discarded.
        size: Expected size in bytes or ``None`` when unknown.
        sha256_source: Where ``sha256`` comes from, so a reader can judge how much to trust it.
        description: One line for humans.
    """

    url: str
    format: ArtifactFormat
    filename: str
    sha256: str | None = None
    size: int | None = None
    sha256_source: str | None = None
    description: str = ""


@dataclass(frozen=True)
class OfficialPreprocessing:
    """Deploy-time preprocessing the official weights expect (spec §5.1 and the §11.1.3 ``inference.yml``).

    Attributes:
        size_hw: Resize target ``(height, width)``; the aspect ratio is not kept.
        interpolation: ``cv2.resize`` interpolation (``"bilinear"`` = ``INTER_LINEAR``).
        channel_order: Channel order fed to the network.
        scale: Multiplier applied to uint8 pixels before mean/std (``inference.yml`` writes 1/255).
        mean: Per-channel mean, RGB order.
        std: Per-channel std, RGB order.
        layout: Tensor layout of one image (``"CHW"``); batches are ``float32 [N, 3, H, W]``.
        l2_normalize: Whether the reference L2-normalises the 512-d output row-wise (spec §5.1 step 6).
    """

    size_hw: tuple[int, int] = (224, 224)
    interpolation: str = "bilinear"
    channel_order: str = "RGB"
    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    layout: str = "CHW"
    l2_normalize: bool = True


@dataclass(frozen=True)
class OfficialModel:
    """An official model: its names, its artifacts in the order they are tried, and its I/O facts.

    Attributes:
        name: Canonical name (also the cache folder name).
        aliases: Other accepted names (matched case-insensitively, like ``name``).
        artifacts: Artifacts in preference order; resolution uses the first cached one, else downloads
            them in this order until one succeeds.
        embedding_size: Width of the output feature (512).
        input_size: Square input side in pixels (224).
        preprocessing: Expected preprocessing.
        description: One line for humans.
        license: What is known about the licence of the weights.
    """

    name: str
    aliases: tuple[str, ...]
    artifacts: tuple[OfficialArtifact, ...]
    embedding_size: int = 512
    input_size: int = 224
    preprocessing: OfficialPreprocessing = field(default_factory=OfficialPreprocessing)
    description: str = ""
    license: str = ""


DEFAULT_MODEL = "PP-ShiTuV2"

OFFICIAL_MODELS: dict[str, OfficialModel] = {
    "PP-ShiTuV2": OfficialModel(
        name="PP-ShiTuV2",
        aliases=("PP-ShiTuV2_rec", "general_PPLCNetV2_base_pretrained_v1.0"),
        artifacts=(
            OfficialArtifact(
                url=(
                    "https://paddle-model-ecology.bj.bcebos.com/paddlex/official_inference_model/"
                    "paddle3.0.0/PP-ShiTuV2_rec_infer.tar"
                ),
                format="paddle_pir_tar",
                filename="PP-ShiTuV2_rec_infer.tar",
                description="PaddleX PP-ShiTuV2_rec inference model, Paddle 3 (PIR inference.json), ~16 MB",
            ),
            OfficialArtifact(
                url=(
                    "https://paddle-imagenet-models-name.bj.bcebos.com/dygraph/rec/models/inference/"
                    "PP-ShiTuV2/general_PPLCNetV2_base_pretrained_v1.0_infer.tar"
                ),
                format="paddle_legacy_tar",
                filename="general_PPLCNetV2_base_pretrained_v1.0_infer.tar",
                sha256="b55f63f2f93eb42b0ff232154180f5e54d99da0891a200a2439d7a0a0ef8c026",
                sha256_source=(
                    "third party, not published by PaddlePaddle: gabo1/deepfrigate "
                    "models/vehicle-embedding/README.md (spec §11.1.4)"
                ),
                description="PaddleClas v1.0 inference model, Paddle 2 format (inference.pdmodel), ~19 MB",
            ),
            OfficialArtifact(
                url=(
                    "https://paddle-imagenet-models-name.bj.bcebos.com/dygraph/rec/models/pretrain/"
                    "PPShiTuV2/general_PPLCNetV2_base_pretrained_v1.0.pdparams"
                ),
                format="pdparams",
                filename="general_PPLCNetV2_base_pretrained_v1.0.pdparams",
                description="PaddleClas v1.0 training checkpoint (un-fused RecModel state dict, maybe with head)",
            ),
        ),
        description="PP-ShiTuV2 recognition model: PPLCNetV2_base_ShiTu + BNNeck, 512-d features",
        license="PaddleClas/PaddleX code is Apache-2.0; no separate licence is published for the weights",
    ),
}


def _lookup_table() -> dict[str, str]:
    table: dict[str, str] = {}
    for key, model in OFFICIAL_MODELS.items():
        for name in (key, model.name, *model.aliases):
            table[name.lower()] = key
    return table


def list_official_models() -> list[str]:
    """Canonical names of the official models, sorted.

    Returns:
        e.g. ``["PP-ShiTuV2"]``.
    """
    return sorted(OFFICIAL_MODELS)


def resolve_official(name: str) -> OfficialModel:
    """Look up an official model by canonical name or alias (case-insensitive).

    Args:
        name: e.g. ``"PP-ShiTuV2"``, ``"pp-shituv2_rec"`` or ``"general_PPLCNetV2_base_pretrained_v1.0"``.

    Returns:
        The registry entry.

    Raises:
        UnknownModelError: ``name`` is not registered; the message lists close matches and all names.
    """
    key = _lookup_table().get(name.strip().lower())
    if key is not None:
        return OFFICIAL_MODELS[key]
    spellings = {n.lower(): n for model in OFFICIAL_MODELS.values() for n in _names(model)}
    close = [spellings[c] for c in difflib.get_close_matches(name.strip().lower(), list(spellings), n=3, cutoff=0.5)]
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownModelError(
        f"unknown model {name!r}.{hint} Official models: {', '.join(list_official_models())} "
        f"(aliases: {', '.join(a for m in OFFICIAL_MODELS.values() for a in m.aliases)}). "
        "You can also pass a local directory, a .pdparams file, an http(s) URL or a Hugging Face repo id."
    )


def _names(model: OfficialModel) -> tuple[str, ...]:
    return (model.name, *model.aliases)
