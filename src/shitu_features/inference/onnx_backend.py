"""Optional ONNX Runtime backend: the same exported model, converted once with paddle2onnx, run by onnxruntime.

>>> extractor = Extractor.from_pretrained(backend="onnxruntime")   # pip install "shitu-features[onnx]"

Selected only when asked for (``backend="onnxruntime"``); Paddle Inference stays the default. The Paddle model
(``inference.json`` or legacy ``inference.pdmodel`` + ``inference.pdiparams``) is converted once with
``paddle2onnx`` (opset 13, the contract of spec §11.x 2.2: input ``x [N, 3, H, W]`` float32, output
``[N, D]`` float32, the BN-neck features before L2) and cached under
``<cache>/onnx/<sha256 of the Paddle files>-paddle2onnx<version>/inference.onnx``, beside the ``exports/``
folder that holds the Paddle exports of ``.pdparams`` checkpoints. A model folder that cannot be written to
(the legacy reference tarball, a read-only mount) works the same way, and a new paddle2onnx version converts
again instead of reusing a file it did not write.

Results equal Paddle's within 1e-4 after L2 normalisation (measured: about 3e-7). ``InferenceSession.run``
releases the GIL, so :class:`~shitu_features.inference.extractor.Extractor`'s decode threads run while the
model does.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Union

import numpy as np

from shitu_features.errors import ConfigError, DeviceError, ModelNotFoundError
from shitu_features.inference.predictor import Precision, parse_device, physical_cpu_count

__all__ = ["ONNX_FILE", "OPSET", "OnnxPredictor", "convert_to_onnx", "cached_onnx_model", "require_onnxruntime"]

logger = logging.getLogger(__name__)

ONNX_FILE = "inference.onnx"
OPSET = 13
_INSTALL_HINT = 'pip install "shitu-features[onnx]"  (installs paddle2onnx and onnxruntime)'

PathLike = Union[str, "os.PathLike[str]"]


def require_onnxruntime() -> ModuleType:
    """Import ``onnxruntime`` or raise an ``ImportError`` that says how to install it."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise ImportError(f"backend='onnxruntime' needs the onnxruntime package: {_INSTALL_HINT}") from exc
    return onnxruntime


def _require_paddle2onnx() -> ModuleType:
    try:
        import paddle2onnx
    except ImportError as exc:
        raise ImportError(
            f"converting a Paddle model for backend='onnxruntime' needs the paddle2onnx package: {_INSTALL_HINT}"
        ) from exc
    return paddle2onnx


def convert_to_onnx(model_file: PathLike, params_file: PathLike, onnx_file: PathLike, *, opset: int = OPSET
                    ) -> Path:
    """Convert a Paddle inference model to ONNX with paddle2onnx, writing ``onnx_file`` atomically.

    Args:
        model_file: ``inference.json`` (Paddle 3) or legacy ``inference.pdmodel``.
        params_file: ``inference.pdiparams``.
        onnx_file: where to write the ONNX model.
        opset: ONNX opset version.

    Returns:
        ``onnx_file`` as a ``Path``.

    Raises:
        ImportError: paddle2onnx is not installed.
        ModelNotFoundError: a Paddle file is missing, or paddle2onnx cannot convert it.
    """
    paddle2onnx = _require_paddle2onnx()
    for path in (model_file, params_file):
        if not Path(path).is_file():
            raise ModelNotFoundError(f"cannot convert to ONNX: {str(path)!r} does not exist")
    onnx_file = Path(onnx_file)
    onnx_file.parent.mkdir(parents=True, exist_ok=True)
    try:
        # save_file=None returns the bytes, so the file can be written atomically below.
        data = paddle2onnx.export(str(model_file), str(params_file), save_file=None, opset_version=opset,
                                  enable_onnx_checker=True)
    except Exception as exc:  # paddle2onnx raises bare exceptions from C++
        raise ModelNotFoundError(f"paddle2onnx could not convert {str(model_file)!r}: {exc}") from exc
    fd, tmp = tempfile.mkstemp(prefix=f".{onnx_file.name}.", suffix=".tmp", dir=onnx_file.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, onnx_file)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    logger.info("converted %s to %s (opset %d, %.1f MB)", model_file, onnx_file, opset, len(data) / 1e6)
    return onnx_file


def _sha256_files(*paths: PathLike) -> str:
    # A hash of the per-file hashes: (ab, c) and (a, bc) cannot collide.
    from shitu_features.inference.hub import sha256_file

    return hashlib.sha256(" ".join(sha256_file(path) for path in paths).encode()).hexdigest()


def cached_onnx_model(model_file: PathLike, params_file: PathLike, cache_home: PathLike, *, opset: int = OPSET
                      ) -> Path:
    """The ONNX conversion of a Paddle model from the cache, converting it once (under a file lock).

    The key is the sha256 of the model and params files plus the paddle2onnx version and opset, so changed
    weights or a new converter never reuse a stale file.

    Args:
        model_file: ``inference.json`` or ``inference.pdmodel``.
        params_file: ``inference.pdiparams``.
        cache_home: the library cache (``$SHITU_FEATURES_HOME``).
        opset: ONNX opset version.

    Returns:
        Path of ``inference.onnx``.
    """
    from filelock import FileLock

    paddle2onnx = _require_paddle2onnx()
    version = getattr(paddle2onnx, "__version__", "unknown")
    key = f"{_sha256_files(model_file, params_file)[:32]}-paddle2onnx{version}-opset{opset}"
    target = Path(cache_home) / "onnx" / key / ONNX_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent) + ".lock"):
        if target.is_file():
            logger.debug("using the cached ONNX model %s", target)
            return target
        logger.info("converting %s to ONNX, once, into %s", model_file, target.parent)
        return convert_to_onnx(model_file, params_file, target, opset=opset)


class OnnxPredictor:
    """An ONNX Runtime session with the interface of :class:`~shitu_features.inference.predictor.Predictor`.

    Args:
        onnx_file: the ONNX model (one input ``[N, 3, H, W]`` float32, one output ``[N, D]``).
        model_file: the Paddle model it was converted from (what ``Extractor.save_pretrained`` copies).
        params_file: the Paddle params it was converted from.
        device: ``"cpu"``, or ``"gpu"`` / ``"gpu:<index>"`` with onnxruntime-gpu (CUDAExecutionProvider).
        num_threads: intra-op threads on CPU; default the physical cores of this process.
        precision: only ``"fp32"``.

    Raises:
        ImportError: onnxruntime is not installed.
        ConfigError: an invalid option (fp16, bad thread count).
        DeviceError: a GPU was asked for but this onnxruntime has no CUDA provider.
        ModelNotFoundError: the ONNX file is missing or onnxruntime cannot load it.
    """

    backend = "onnxruntime"
    #: ``InferenceSession.run`` releases the GIL: decode threads run while the model does.
    releases_gil = True

    def __init__(
        self,
        onnx_file: PathLike,
        *,
        model_file: PathLike | None = None,
        params_file: PathLike | None = None,
        device: str = "cpu",
        num_threads: int | None = None,
        precision: Precision = "fp32",
    ) -> None:
        ort = require_onnxruntime()
        self.onnx_file = Path(onnx_file)
        self.model_file = Path(model_file) if model_file is not None else self.onnx_file
        self.params_file = Path(params_file) if params_file is not None else self.onnx_file
        self.device_kind, self.device_index = parse_device(device)
        if precision != "fp32":
            raise ConfigError(f"backend='onnxruntime' runs fp32 only, got precision={precision!r}; "
                              "use the Paddle backend for fp16 on GPU or bf16 on CPU")
        if num_threads is not None and int(num_threads) < 1:
            raise ConfigError(f"num_threads must be >= 1, got {num_threads}")
        if not self.onnx_file.is_file():
            raise ModelNotFoundError(f"ONNX model not found: {str(self.onnx_file)!r}")
        self.precision: Precision = "fp32"
        self.num_threads = int(num_threads) if num_threads is not None else physical_cpu_count()
        self.use_mkldnn = False
        self._session = self._create(ort)
        self._input_name = self._session.get_inputs()[0].name

    @property
    def device(self) -> str:
        """The device as a string, e.g. ``"cpu"`` or ``"gpu:0"``."""
        return "cpu" if self.device_kind == "cpu" else f"gpu:{self.device_index}"

    def _create(self, ort: ModuleType):  # -> onnxruntime.InferenceSession
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.num_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # paddle2onnx leaves unused initialisers; ORT warns about each one
        if self.device_kind == "gpu":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise DeviceError(
                    f"device={self.device!r} with backend='onnxruntime' needs onnxruntime-gpu (no "
                    f"CUDAExecutionProvider in {ort.get_available_providers()}); use device='cpu' or the Paddle backend"
                )
            providers: list = [("CUDAExecutionProvider", {"device_id": self.device_index}), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        try:
            session = ort.InferenceSession(str(self.onnx_file), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise ModelNotFoundError(f"onnxruntime could not load {str(self.onnx_file)!r}: {exc}") from exc
        logger.debug("loaded %s with onnxruntime %s on %s (threads=%d)", self.onnx_file, ort.__version__,
                     self.device, self.num_threads)
        return session

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Run the model on one batch.

        Args:
            batch: ``float32`` ``[N, 3, H, W]`` preprocessed images.

        Returns:
            ``float32`` ``[N, D]`` model outputs (a fresh array).
        """
        if batch.dtype != np.float32 or batch.ndim != 4:
            raise ConfigError(f"OnnxPredictor.run expects float32 [N, 3, H, W], got {batch.dtype} {batch.shape}")
        out = self._session.run(None, {self._input_name: np.ascontiguousarray(batch)})[0]
        return np.asarray(out, dtype=np.float32)

    def __repr__(self) -> str:
        extra = f", threads={self.num_threads}" if self.device_kind == "cpu" else ""
        return f"OnnxPredictor(onnx_file={str(self.onnx_file)!r}, device={self.device!r}{extra})"
