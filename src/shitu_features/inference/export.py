"""Export a :class:`~shitu_features.models.RecModel` to a Paddle 3 inference model, and the artifact layout.

An exported model is a directory::

    inference.json        # the PIR program of embed(): [N, 3, H, W] float32 -> [N, D] float32 (not normalised)
    inference.pdiparams   # its fused (re-parameterised) weights
    inference.yml         # preprocessing in the PaddleX layout (spec §11.1.3), so PaddleX can serve it too
    config.json           # ours: model name, input size, preprocessing, embedding size, versions

The export follows PaddleClas' ``tools/export_model.py`` (reference/README "legacy_infer"): head dropped, eval
mode, re-parameterised, ``to_static`` + ``jit.save`` — but with Paddle 3's PIR format and, by default, a dynamic
input height and width. Directories are written atomically: everything goes into a temporary sibling folder,
which is renamed into place only once complete, so a crash never leaves a half-written model behind.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np
import paddle
from paddle import nn
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shitu_features._version import __version__
from shitu_features.errors import ConfigError, ModelNotFoundError, OutputExistsError
from shitu_features.inference.preprocess import PreprocessConfig

__all__ = [
    "CONFIG_FILE",
    "MODEL_FILE",
    "PARAMS_FILE",
    "YML_FILE",
    "ExportedModelConfig",
    "EmbedOnly",
    "export_inference_model",
    "read_model_config",
    "write_model_files",
    "atomic_directory",
]

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
MODEL_FILE = "inference.json"
PARAMS_FILE = "inference.pdiparams"
YML_FILE = "inference.yml"
FORMAT_VERSION = 1

PathLike = Union[str, "os.PathLike[str]"]


class ExportedModelConfig(BaseModel):
    """The ``config.json`` of an exported model (read by ``Extractor.from_pretrained``).

    Unknown keys are ignored when reading, so a file written by a newer version still loads.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    format_version: int = Field(FORMAT_VERSION, description="version of this file's layout")
    model_name: str = Field("PP-ShiTuV2", description="human-readable model name")
    input_size: Tuple[int, int] = Field((224, 224), description="(width, height) the model is fed")
    dynamic_input_size: bool = Field(True, description="whether the graph accepts other heights and widths")
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig, description="image -> tensor")
    embedding_size: int = Field(512, description="width D of the [N, D] output")
    normalize: bool = Field(True, description="whether embeddings are meant to be L2-normalised (always, here)")
    library_version: str = Field(__version__, description="shitu_features version that wrote the model")
    paddle_version: str = Field("", description="PaddlePaddle version that wrote the model")
    source: Optional[Dict[str, Any]] = Field(None, description="where the weights came from (path, sha256, ...)")


def read_model_config(path: PathLike) -> ExportedModelConfig:
    """Read a ``config.json`` (or the one inside a directory).

    Raises:
        ConfigError: the file is unreadable or invalid.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CONFIG_FILE
    try:
        return ExportedModelConfig.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, ValidationError) as exc:
        raise ConfigError(f"cannot read model config {str(path)!r}: {exc}") from exc


@contextlib.contextmanager
def atomic_directory(directory: PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Write a directory atomically: yields a temporary sibling folder, renamed to ``directory`` on success.

    Args:
        directory: the final location.
        overwrite: replace an existing non-empty ``directory`` (it is swapped out, then deleted).

    Raises:
        OutputExistsError: ``directory`` exists, is not empty, and ``overwrite`` is False (checked before and
            after writing).
    """
    target = Path(directory).expanduser().absolute()
    _check_target(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    # A plain mkdir (not mkdtemp's 0700) so the finished directory gets the usual umask permissions.
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        yield tmp
        _check_target(target, overwrite)
        old: Path | None = None
        if target.is_dir() and any(target.iterdir()):
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(target, old)
        elif target.is_dir():
            target.rmdir()
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _check_target(target: Path, overwrite: bool) -> None:
    if target.exists() and not target.is_dir():
        raise OutputExistsError(f"{target} exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise OutputExistsError(f"{target} already exists and is not empty; pass overwrite=True to replace it")


def write_model_files(directory: Path, config: ExportedModelConfig) -> None:
    """Write ``config.json`` and the PaddleX-layout ``inference.yml`` for ``config`` into ``directory``."""
    import yaml

    (directory / CONFIG_FILE).write_text(json.dumps(config.model_dump(mode="json"), indent=2) + "\n",
                                         encoding="utf-8")
    doc = config.preprocess.to_inference_yml(model_name=config.model_name)
    (directory / YML_FILE).write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")


class EmbedOnly(nn.Layer):
    """``forward(x) = model.embed(x)``: what is exported, without the head.

    The first argument of ``forward`` must be named ``self`` or ``to_static`` mis-parses the input spec (spec §10).
    """

    def __init__(self, model: nn.Layer) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.model.embed(x)


def _detached_copy(model: Any):
    """Deep copy of ``model`` without its head (a 192,612-class head is ~394 MB that export never uses)."""
    head = getattr(model, "head", None)
    if head is None:
        return copy.deepcopy(model)
    model.head = None
    try:
        return copy.deepcopy(model)
    finally:
        model.head = head


def export_inference_model(
    model: Any,
    directory: PathLike,
    *,
    input_size: Tuple[int, int] | None = None,
    preprocess: PreprocessConfig | None = None,
    model_name: str = "PP-ShiTuV2",
    dynamic_input_size: bool = True,
    source: Dict[str, Any] | None = None,
    verify: bool = True,
    overwrite: bool = False,
) -> Path:
    """Export ``model.embed`` as a Paddle 3 inference model directory (see the module docstring).

    The model itself is not modified: a deep copy (without head) is switched to eval mode and
    re-parameterised (fused), then traced with ``paddle.jit.to_static`` (``InputSpec [None, 3, H, W]``, ``H`` and
    ``W`` dynamic unless ``dynamic_input_size=False``) and saved with ``paddle.jit.save``.

    Args:
        model: a :class:`~shitu_features.models.RecModel` (any ``nn.Layer`` with ``embed(x) -> [N, D]`` works;
            ``reparameterize()`` is called when it exists).
        directory: output directory; created, or replaced when ``overwrite=True``.
        input_size: ``(width, height)`` the model is fed; default ``preprocess.size`` (224x224).
        preprocess: preprocessing recorded with the model; default the PP-ShiTuV2 deploy config.
        model_name: name recorded in ``config.json`` and ``inference.yml``.
        dynamic_input_size: export with dynamic height and width (the graph then also runs other sizes).
        source: provenance recorded in ``config.json`` (e.g. the checkpoint path and sha256).
        verify: run the exported model once with ``paddle.inference`` and check it matches the dygraph model
            (L2-normalised, within 1e-4) before renaming it into place.
        overwrite: replace an existing non-empty ``directory``.

    Returns:
        The directory (absolute path).

    Raises:
        ConfigError: ``input_size`` disagrees with ``preprocess.size``, or the model has no ``embed``.
        OutputExistsError: ``directory`` is not empty and ``overwrite`` is False.
        ModelNotFoundError: the export did not produce a loadable model (``verify``), or failed to match.
    """
    preprocess = preprocess or PreprocessConfig()
    if input_size is None:
        input_size = tuple(preprocess.size)  # type: ignore[assignment]
    input_size = (int(input_size[0]), int(input_size[1]))
    if input_size != tuple(preprocess.size):
        raise ConfigError(f"input_size {input_size} differs from preprocess.size {tuple(preprocess.size)}; "
                          "pass a PreprocessConfig with the size you want")
    if not callable(getattr(model, "embed", None)):
        raise ConfigError(f"cannot export {type(model).__name__}: it has no embed(x) method")

    net = _detached_copy(model)
    net.eval()
    if callable(getattr(net, "reparameterize", None)):
        net.reparameterize()
    wrapper = EmbedOnly(net)
    wrapper.eval()
    width, height = input_size
    shape = [None, 3, None, None] if dynamic_input_size else [None, 3, height, width]
    spec = [paddle.static.InputSpec(shape=shape, dtype="float32", name="x")]

    probe = np.random.default_rng(0).standard_normal((2, 3, height, width)).astype(np.float32)
    with paddle.no_grad():
        expected = np.asarray(wrapper(paddle.to_tensor(probe)).numpy(), dtype=np.float32)
    embedding_size = int(expected.shape[1])

    with atomic_directory(directory, overwrite=overwrite) as tmp:
        static = paddle.jit.to_static(wrapper, input_spec=spec, full_graph=True)
        paddle.jit.save(static, str(tmp / "inference"))
        model_file = tmp / MODEL_FILE
        if not model_file.is_file():  # FLAGS_enable_pir_api=0 makes Paddle 3 write the legacy .pdmodel
            legacy = tmp / "inference.pdmodel"
            if not legacy.is_file():
                raise ModelNotFoundError(f"paddle.jit.save wrote no model file in {tmp}: {os.listdir(tmp)}")
            model_file = legacy
        config = ExportedModelConfig(
            model_name=model_name, input_size=input_size, dynamic_input_size=dynamic_input_size,
            preprocess=preprocess, embedding_size=embedding_size, paddle_version=paddle.__version__,
            source=source,
        )
        write_model_files(tmp, config)
        if verify:
            _verify_export(model_file, tmp / PARAMS_FILE, probe, expected)
    final = Path(directory).expanduser().absolute()
    logger.info("exported %s (%d-d embeddings, input %dx%d) to %s", model_name, embedding_size, width, height,
                final)
    return final


def _verify_export(model_file: Path, params_file: Path, probe: np.ndarray, expected: np.ndarray) -> None:
    from shitu_features.inference.predictor import Predictor

    got = Predictor(model_file, params_file, num_threads=1).run(probe)

    def l2(x: np.ndarray) -> np.ndarray:
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    diff = float(np.abs(l2(got) - l2(expected)).max()) if got.shape == expected.shape else float("inf")
    if not diff <= 1e-4:
        raise ModelNotFoundError(
            f"the exported model does not reproduce the dygraph model (max |diff| after L2 = {diff:.3g}, "
            f"shapes {got.shape} vs {expected.shape}); please report this with your Paddle version"
        )
    logger.debug("export verified: max |diff| after L2 = %.3g", diff)
