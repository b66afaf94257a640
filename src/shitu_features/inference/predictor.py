"""A thin wrapper over ``paddle.inference``: one configured predictor, no preprocessing.

Loading follows the recipe of spec §11.x 2.2, which is what makes both export formats load on Paddle 3:

- the model and params **files** are passed explicitly (``Config(model_file, params_file)``), never
  ``(dir, prefix)``, which on Paddle 3 only ever looks for ``<prefix>.json`` and so fails on the legacy
  ``inference.pdmodel`` ("Cannot open file .../inference.json"); a ``.pdmodel`` given by path is translated to
  PIR at load time;
- on CPU oneDNN is on by default with an explicit thread count, and ``enable_new_executor()`` is called before
  ``enable_memory_optim()`` (without it a PIR ``.json`` model fails with "Not find predictor_id 0 and pass_name
  memory_optimize_pass");
- the input and output are taken by position, because their names differ between formats (``x`` /
  ``save_infer_model/scale_0.tmp_0`` in the legacy export, ``x`` / ``fetch_name_0`` in a PIR one).

``use_mkldnn=False`` is the escape hatch for the Paddle 3.3.x oneDNN regression of spec §11.x 2.3 (this
architecture does not trigger it, but other builds might).

The predictor is configured once, in ``__init__``; :meth:`Predictor.run` only copies data in and out. It is
not thread-safe: call ``run`` from one thread at a time.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from pathlib import Path
from typing import Literal, Union, get_args

import numpy as np

from shitu_features.errors import ConfigError, DeviceError, ModelNotFoundError

__all__ = ["Predictor", "parse_device", "physical_cpu_count", "cpu_bf16_support", "Precision"]

logger = logging.getLogger(__name__)

Precision = Literal["fp32", "fp16", "bf16"]

_DEVICE_RE = re.compile(r"^(cpu|gpu|cuda)(?::(\d+))?$")


def parse_device(device: str) -> tuple[str, int]:
    """Parse ``"cpu"``, ``"gpu"``, ``"gpu:1"`` (``"cuda"`` / ``"cuda:1"`` are aliases) into ``(kind, index)``.

    Raises:
        ConfigError: an unknown device string.
    """
    m = _DEVICE_RE.match(str(device).strip().lower())
    if not m:
        raise ConfigError(f"unknown device {device!r}: use 'cpu', 'gpu' or 'gpu:<index>'")
    kind = "cpu" if m.group(1) == "cpu" else "gpu"
    if kind == "cpu" and m.group(2) is not None:
        raise ConfigError(f"unknown device {device!r}: the CPU takes no index, use 'cpu'")
    return kind, int(m.group(2) or 0)


def physical_cpu_count() -> int:
    """Physical cores usable by this process (hyper-threads not counted); at least 1.

    Reads ``/proc/cpuinfo`` (core id per physical package) restricted to the CPUs in this process's affinity
    mask; elsewhere falls back to the usable logical CPU count.
    """
    try:
        usable = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = list(range(os.cpu_count() or 1))
    cores = _physical_cores_linux(set(usable))
    return max(1, cores if cores else len(usable))


def _physical_cores_linux(usable: set[int]) -> int:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return 0
    cores: set[tuple[str, str]] = set()
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(":", 1) for line in block.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        try:
            cpu = int(fields["processor"])
        except (KeyError, ValueError):
            continue
        if cpu in usable:
            # Without topology fields (some VMs / ARM) each logical CPU counts as its own core.
            cores.add((fields.get("physical id", "0"), fields.get("core id", f"cpu{cpu}")))
    return len(cores)


class Predictor:
    """A configured ``paddle.inference`` predictor for a one-input, one-output model.

    Args:
        model_file: ``inference.json`` (Paddle 3 PIR) or legacy ``inference.pdmodel``.
        params_file: ``inference.pdiparams``.
        device: ``"cpu"``, ``"gpu"`` or ``"gpu:<index>"``.
        num_threads: CPU math threads (oneDNN / OpenMP); default: the physical cores of this process.
        use_mkldnn: use oneDNN on CPU (default). ``False`` is the escape hatch for oneDNN regressions.
        precision: ``"fp32"`` (default; parity with the reference within 1e-5); ``"fp16"`` on GPU (mixed
            precision, about 1e-3 relative difference); ``"bf16"`` on CPU (oneDNN bfloat16, opt-in: the forward
            pass runs 1.8-2.6x faster on CPUs with AMX or AVX512-BF16, but the vectors are approximate: on a small
            trained model the cosine similarity to the fp32 vector was 0.973-1.0, median 0.998, and Recall@1 went
            from 0.81 to 0.80; it needs oneDNN, and a CPU without bfloat16 support raises :class:`DeviceError`).
        memory_pool_mb: initial GPU memory pool of the predictor.
        max_batch_size: the most images one forward pass gets; :meth:`run` splits larger batches (results do
            not depend on the split). ``"auto"`` (default): on CPU ``max(8, 4 * num_threads)``, because oneDNN
            runs this model fastest per image around 8 images per 2 threads and slower above (measured on 2 cores:
            batch 32 is 12% slower per image than batch 8 on an idle machine, about 30% under load;
            docs/performance.md); no limit on GPU. ``None``: no limit.

    Raises:
        ModelNotFoundError: a model or params file is missing.
        DeviceError: a GPU was requested but Paddle has no CUDA, or the GPU index does not exist; or bf16 was
            requested on a CPU without bfloat16 support.
        ConfigError: an invalid option (unknown device, fp16 on CPU, bf16 on GPU or without oneDNN, ...).
    """

    backend = "paddle"
    #: Paddle's ``run`` holds the GIL for the whole forward pass (measured on 3.3.1): Python threads, such as the
    #: Extractor's decode workers, only run between two batches.
    releases_gil = False

    def __init__(
        self,
        model_file: Union[str, os.PathLike[str]],
        params_file: Union[str, os.PathLike[str]],
        *,
        device: str = "cpu",
        num_threads: int | None = None,
        use_mkldnn: bool = True,
        precision: Precision = "fp32",
        memory_pool_mb: int = 256,
        max_batch_size: int | Literal["auto"] | None = "auto",
    ) -> None:
        self.model_file = Path(model_file)
        self.params_file = Path(params_file)
        for what, path in (("model", self.model_file), ("params", self.params_file)):
            if not path.is_file():
                raise ModelNotFoundError(f"inference {what} file not found: {str(path)!r}")
        self.device_kind, self.device_index = parse_device(device)
        if precision not in get_args(Precision):
            raise ConfigError(f"precision must be 'fp32', 'fp16' (GPU) or 'bf16' (CPU), got {precision!r}")
        if precision == "fp16" and self.device_kind == "cpu":
            raise ConfigError("precision='fp16' needs a GPU (device='gpu'); on CPU use 'fp32', or 'bf16' on a "
                              "CPU with AMX / AVX512-BF16")
        if precision == "bf16":
            if self.device_kind != "cpu":
                raise ConfigError("precision='bf16' is the CPU (oneDNN) option; on a GPU use 'fp16' or 'fp32'")
            if not use_mkldnn:
                raise ConfigError("precision='bf16' runs through oneDNN: it cannot be combined with "
                                  "use_mkldnn=False")
            _require_cpu_bf16()
        if num_threads is not None and int(num_threads) < 1:
            raise ConfigError(f"num_threads must be >= 1, got {num_threads}")
        self.precision: Precision = precision
        self.num_threads = int(num_threads) if num_threads is not None else physical_cpu_count()
        self.use_mkldnn = bool(use_mkldnn) and self.device_kind == "cpu"
        self.max_batch_size = self._batch_limit(max_batch_size)
        self._predictor = self._create(memory_pool_mb)
        self._input = self._predictor.get_input_handle(self._predictor.get_input_names()[0])
        self._output = self._predictor.get_output_handle(self._predictor.get_output_names()[0])

    @property
    def device(self) -> str:
        """The device as a string, e.g. ``"cpu"`` or ``"gpu:0"``."""
        return "cpu" if self.device_kind == "cpu" else f"gpu:{self.device_index}"

    def _batch_limit(self, max_batch_size: int | str | None) -> int | None:
        if max_batch_size == "auto":
            return max(8, 4 * self.num_threads) if self.device_kind == "cpu" else None
        if max_batch_size is None:
            return None
        if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 1:
            raise ConfigError(f"max_batch_size must be a positive integer, 'auto' or None, got {max_batch_size!r}")
        return max_batch_size

    def _create(self, memory_pool_mb: int):  # -> paddle.inference.Predictor
        import paddle
        import paddle.inference as paddle_infer

        config = paddle_infer.Config(str(self.model_file), str(self.params_file))
        if self.device_kind == "gpu":
            self._check_gpu(paddle)
            precision = paddle_infer.PrecisionType.Half if self.precision == "fp16" else \
                paddle_infer.PrecisionType.Float32
            config.enable_use_gpu(int(memory_pool_mb), self.device_index, precision)
        else:
            config.disable_gpu()
            if self.use_mkldnn:
                _call_first(config, ("enable_onednn", "enable_mkldnn"))
                # Cache at most a few input shapes (a smaller last batch is a new shape): bounds memory,
                # as PaddleClas' deploy predictor does (spec §12 #13).
                _call_first(config, ("set_onednn_cache_capacity", "set_mkldnn_cache_capacity"), 10)
                if self.precision == "bf16":
                    _call_first(config, ("enable_onednn_bfloat16", "enable_mkldnn_bfloat16"))
            else:
                _call_first(config, ("disable_onednn", "disable_mkldnn"))
            config.set_cpu_math_library_num_threads(self.num_threads)
        config.switch_ir_optim(True)
        config.enable_new_executor()  # must precede enable_memory_optim for PIR models (spec §11.x 2.2)
        config.enable_memory_optim()
        config.disable_glog_info()
        try:
            predictor = paddle_infer.create_predictor(config)
        except Exception as exc:  # Paddle raises bare RuntimeError / ValueError subclasses with long C++ traces
            raise ModelNotFoundError(
                f"Paddle could not load the inference model {str(self.model_file)!r} with "
                f"{str(self.params_file)!r} on {self.device}: {str(exc).strip().splitlines()[0] if str(exc) else exc}"
                " (if this is a oneDNN error on CPU, retry with use_mkldnn=False)"
            ) from exc
        logger.debug("loaded %s on %s (threads=%d, onednn=%s, precision=%s)", self.model_file, self.device,
                    self.num_threads, self.use_mkldnn, self.precision)
        return predictor

    def _check_gpu(self, paddle) -> None:
        if not paddle.device.is_compiled_with_cuda():
            raise DeviceError(
                f"device={self.device!r} was requested but this PaddlePaddle ({paddle.__version__}) is built "
                "without CUDA; install the GPU build (see https://www.paddlepaddle.org.cn/install) or use "
                "device='cpu'"
            )
        count = paddle.device.cuda.device_count()
        if self.device_index >= count:
            raise DeviceError(f"device={self.device!r} was requested but only {count} GPU(s) are visible")

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Run the model on one batch (in forward passes of at most :attr:`max_batch_size` images).

        Args:
            batch: ``float32`` ``[N, 3, H, W]``, C-contiguous (preprocessed images).

        Returns:
            ``float32`` ``[N, D]`` model outputs (a fresh array).
        """
        if batch.dtype != np.float32 or batch.ndim != 4:
            raise ConfigError(f"Predictor.run expects float32 [N, 3, H, W], got {batch.dtype} {batch.shape}")
        limit = self.max_batch_size
        if limit is None or batch.shape[0] <= limit:
            return self._forward(batch)
        return np.concatenate([self._forward(batch[i:i + limit]) for i in range(0, batch.shape[0], limit)])

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch)
        self._input.reshape(list(batch.shape))
        self._input.copy_from_cpu(batch)
        self._predictor.run()
        return np.asarray(self._output.copy_to_cpu(), dtype=np.float32)

    def __repr__(self) -> str:
        extra = f", threads={self.num_threads}, onednn={self.use_mkldnn}" if self.device_kind == "cpu" else ""
        extra += f", max_batch_size={self.max_batch_size}" if self.max_batch_size is not None else ""
        return (f"Predictor(model_file={str(self.model_file)!r}, device={self.device!r}, "
                f"precision={self.precision!r}{extra})")


def cpu_bf16_support() -> tuple[bool, bool]:
    """Whether this CPU runs oneDNN bfloat16 at all, and natively (AMX / AVX512-BF16) rather than emulated.

    Asks the installed Paddle (``paddle.base.core.supports_bfloat16*``); ``(False, False)`` when it cannot say.
    """
    try:
        from paddle.base import core
    except ImportError:  # pragma: no cover - paddle is a hard dependency
        return False, False
    try:
        return bool(core.supports_bfloat16()), bool(core.supports_bfloat16_fast_performance())
    except AttributeError:  # older builds without the probes
        return False, False


def _require_cpu_bf16() -> None:
    supported, fast = cpu_bf16_support()
    if not supported:
        raise DeviceError("precision='bf16' was requested but this CPU (or this Paddle build) has no oneDNN "
                          "bfloat16 support; use precision='fp32'")
    if not fast:
        # Without AVX512-BF16 / AMX oneDNN emulates bfloat16: correct, but slower than fp32, which defeats the
        # only reason to ask for it.
        warnings.warn("precision='bf16': this CPU has no AVX512-BF16 / AMX, so oneDNN emulates bfloat16 and it "
                      "is likely slower than precision='fp32'", RuntimeWarning, stacklevel=3)


def _call_first(config, names: tuple[str, ...], *args) -> None:
    # Paddle renamed mkldnn -> onednn in 3.x; call whichever this build has.
    for name in names:
        fn = getattr(config, name, None)
        if fn is not None:
            fn(*args)
            return
    logger.debug("paddle.inference.Config has none of %s", names)
