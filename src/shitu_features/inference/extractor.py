"""``Extractor``: images in, L2-normalised PP-ShiTuV2 embeddings out (the library's main job).

>>> from shitu_features import Extractor
>>> extractor = Extractor.from_pretrained()                 # official PP-ShiTuV2, downloaded once, then cached
>>> extractor.embed("cat.jpg").shape                        # (512,)
>>> extractor.embed(["a.jpg", "b.png"], batch_size=32).shape   # (2, 512)

How ``embed`` works (and why it is fast without changing results):

- inputs are consumed lazily from any iterable, in batches; at most ``prefetch + 1`` batches are in memory, so
  a generator of 10^7 paths streams in bounded memory (use :meth:`Extractor.iter_embed` to also stream the
  output instead of holding one ``[N, D]`` array);
- decoding and resizing run in a thread pool (OpenCV releases the GIL); each worker writes its preprocessed
  image straight into a row of a preallocated ``[B, 3, H, W]`` buffer (buffers are recycled). Paddle's
  ``run`` holds the GIL for the whole forward pass, so with the Paddle backend the workers decode the next
  batch between two forward passes, on every core, while the caller consumes the last result; with
  ``backend="onnxruntime"`` (its ``run`` releases the GIL) they decode while the model runs
  (docs/performance.md has the measurements);
- the predictor is configured once (oneDNN, threads, fused weights) and only fed data afterwards;
- preprocessing is bit-identical to the reference deploy path (spec §5.1) whatever the batch size, and the
  L2 normalisation is NaN-free: a zero feature stays a zero vector and is reported (spec §12 #11).
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import sys
import threading
import warnings
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Literal, Optional, Union, overload

import numpy as np

from shitu_features._version import __version__
from shitu_features.data.images import ChannelOrder, decode_image, describe_input, is_single_image
from shitu_features.errors import (
    ConfigError,
    EmbeddingError,
    ImageDecodeError,
    InvalidInputError,
    ShituFeaturesError,
)
from shitu_features.inference.export import (
    CONFIG_FILE,
    ExportedModelConfig,
    atomic_directory,
    export_inference_model,
    read_model_config,
    write_model_files,
)
from shitu_features.inference.predictor import Precision, Predictor, parse_device, physical_cpu_count
from shitu_features.inference.preprocess import PreprocessConfig, Preprocessor, _load_yaml

__all__ = ["Extractor", "EmbedResult", "EmbedBatch", "EmbedFailure", "ZeroNormWarning"]

logger = logging.getLogger(__name__)

OnError = Literal["raise", "skip"]
Backend = Literal["paddle", "onnxruntime"]
PathLike = Union[str, "os.PathLike[str]"]


class ZeroNormWarning(UserWarning):
    """Some embeddings had zero norm; they were returned as zero vectors instead of NaN."""


@dataclass(frozen=True)
class EmbedFailure:
    """An input that produced no embedding (``on_error="skip"``).

    Attributes:
        index: position of the input in the sequence given to ``embed``.
        input: short description of the input (a path, ``<bytes: 12 bytes>``, an array's shape and dtype, ...).
        reason: why it failed (the error message).
        error: the error class name, e.g. ``"ImageDecodeError"``.
    """

    index: int
    input: str
    reason: str
    error: str


@dataclass(frozen=True)
class EmbedBatch:
    """One batch of results from :meth:`Extractor.iter_embed`.

    Attributes:
        indices: ``int64`` ``[M]`` positions (in the whole input sequence) of the inputs embedded here.
        embeddings: ``float32`` ``[M, D]``, row ``i`` belongs to input ``indices[i]``.
        failed: inputs of this batch that failed (only with ``on_error="skip"``).
        zero_norm: positions whose feature had zero norm (returned as zero vectors when normalising).
    """

    indices: np.ndarray
    embeddings: np.ndarray
    failed: List[EmbedFailure] = field(default_factory=list)
    zero_norm: List[int] = field(default_factory=list)


@dataclass(frozen=True)
class EmbedResult:
    """What ``embed(..., on_error="skip")`` returns.

    Attributes:
        embeddings: ``float32`` ``[M, D]`` for the ``M`` inputs that succeeded, in input order (always 2-D,
            also for a single input).
        indices: ``int64`` ``[M]``: ``embeddings[i]`` belongs to input ``indices[i]``.
        failed: the inputs that failed, with their index, description and reason.
        zero_norm: indices of inputs whose feature had zero norm (returned as zero vectors).
    """

    embeddings: np.ndarray
    indices: np.ndarray
    failed: List[EmbedFailure] = field(default_factory=list)
    zero_norm: List[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no input failed."""
        return not self.failed

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])


@dataclass
class _Job:
    """A batch in flight: its buffer, the inputs' positions and one future per input."""

    buffer: np.ndarray
    indices: List[int]
    items: List[Any]
    futures: List["Future[Optional[BaseException]]"]


def l2_normalize(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise ``x / ||x||`` without NaN: rows with zero norm stay zero.

    Args:
        features: ``float32`` ``[N, D]``.

    Returns:
        ``(normalised float32 [N, D], bool [N] mask of the zero-norm rows)``.
    """
    # Norms in float64: exact enough to match the reference's float32 x / sqrt(sum x^2) within 1e-7, and no
    # overflow / underflow of the sum of squares for extreme feature scales.
    wide = features.astype(np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", wide, wide))
    zero = norms == 0.0
    safe = np.where(zero, 1.0, norms)
    return (features / safe[:, None]).astype(np.float32, copy=False), zero


class Extractor:
    """Embeds images with an exported PP-ShiTuV2 (or compatible) inference model.

    Build it with :meth:`from_pretrained`; the constructor takes an already-configured :class:`Predictor`.
    One instance may be shared by several threads: calls to the predictor are serialised.

    Args:
        predictor: the configured Paddle Inference predictor.
        preprocess: preprocessing the model expects.
        name: model name (for ``repr`` and ``config.json``).
        model_dir: directory the model files came from (what :meth:`save_pretrained` copies).
        embedding_size: output width ``D``; probed with one dummy image when ``None``.
        source: where the model came from (path, URL, hub id).
        num_workers: decode / preprocess threads; default chosen from the device and the CPU count.
    """

    def __init__(
        self,
        predictor: Predictor,
        preprocess: PreprocessConfig | None = None,
        *,
        name: str = "PP-ShiTuV2",
        model_dir: PathLike | None = None,
        embedding_size: int | None = None,
        source: str | None = None,
        num_workers: int | None = None,
    ) -> None:
        self._predictor = predictor
        self._preprocess = preprocess or PreprocessConfig()
        self._preprocessor = Preprocessor(self._preprocess)
        self._name = name
        self._model_dir = Path(model_dir) if model_dir is not None else None
        self._embedding_size = embedding_size
        self._source = source
        # Paddle predictors are not thread-safe: serialise run() when several threads share this Extractor.
        self._run_lock = threading.Lock()
        if num_workers is not None and int(num_workers) < 1:
            raise ConfigError(f"num_workers must be >= 1, got {num_workers}")
        self._num_workers = int(num_workers) if num_workers is not None else self._default_workers()

    # ------------------------------------------------------------------------------------------------------
    # Construction

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: PathLike | None = None,
        *,
        device: str = "cpu",
        cache_dir: PathLike | None = None,
        local_files_only: bool = False,
        force_download: bool = False,
        num_threads: int | None = None,
        use_mkldnn: bool = True,
        precision: Precision = "fp32",
        progress: bool | None = None,
        num_workers: int | None = None,
        backend: Backend = "paddle",
    ) -> Extractor:
        """Load an extractor from an official name, a local directory or checkpoint, a URL or a hub repo.

        Args:
            name_or_path: ``None`` (the official PP-ShiTuV2), an official name or alias (``"PP-ShiTuV2_rec"``),
                a directory with an exported model (``inference.json`` or legacy ``inference.pdmodel`` +
                ``inference.pdiparams``; ``inference.yml`` / ``config.json`` optional), a training checkpoint
                ``.pdparams`` (with or without head: exported once into the cache, keyed by its sha256), an
                ``http(s)://`` URL of a ``.tar`` / ``.pdparams``, or a Hugging Face repo (``hf://org/name``).
            device: ``"cpu"``, ``"gpu"`` or ``"gpu:<index>"``.
            cache_dir: download / export cache; default ``$SHITU_FEATURES_HOME`` or ``~/.cache/shitu-features``.
            local_files_only: never use the network (as ``SHITU_FEATURES_OFFLINE=1``).
            force_download: download again even when cached.
            num_threads: CPU inference threads; default the physical cores.
            use_mkldnn: oneDNN on CPU (default); ``False`` is the escape hatch for oneDNN bugs.
            precision: ``"fp32"`` (default, the reference's numbers); ``"fp16"`` on GPU; ``"bf16"`` on CPU
                (oneDNN bfloat16, opt-in: about 1.7x faster end to end on CPUs with AMX / AVX512-BF16, with
                approximate vectors; see :class:`~shitu_features.inference.predictor.Predictor`).
            progress: download progress bars (``None``: only on a terminal).
            num_workers: decode / preprocess threads of :meth:`embed`.
            backend: ``"paddle"`` (default: Paddle Inference) or ``"onnxruntime"`` (needs the ``[onnx]`` extra;
                the model is converted once with paddle2onnx and cached; CPU, or GPU with onnxruntime-gpu;
                fp32 only; results equal Paddle's within 1e-4 after L2).

        Returns:
            A ready :class:`Extractor`.

        Raises:
            UnknownModelError, ModelNotFoundError, OfflineError, DownloadError: the model cannot be found or
                fetched (the message says what to do).
            UnsafeCheckpointError, CheckpointMismatchError: a ``.pdparams`` is unsafe or does not fit.
            DeviceError: GPU requested but not available.
            ConfigError: an invalid option or model configuration.
            ImportError: ``backend="onnxruntime"`` without onnxruntime / paddle2onnx installed.
        """
        from shitu_features.inference import hub

        parse_device(device)  # fail on a bad device string before any download
        if backend not in _BACKENDS:
            raise ConfigError(f"unknown backend {backend!r}: use one of {', '.join(map(repr, _BACKENDS))}")
        resolved = hub.resolve(name_or_path, cache_dir=cache_dir, local_files_only=local_files_only,
                               force_download=force_download, progress=progress)
        name = resolved.name
        home = Path(cache_dir).expanduser() if cache_dir is not None else hub.cache_home()
        if resolved.kind == "pdparams":
            model_dir = cls._export_checkpoint(Path(resolved.path), home, name)
        else:
            model_dir = Path(resolved.path)
        files = hub.find_inference_files(model_dir)
        preprocess, embedding_size, name = cls._read_model_facts(files, name)
        predictor = _BACKENDS[backend](files.model_file, files.params_file, home, device=device,
                                       num_threads=num_threads, use_mkldnn=use_mkldnn, precision=precision)
        return cls(predictor, preprocess, name=name, model_dir=files.directory, embedding_size=embedding_size,
                   source=resolved.source, num_workers=num_workers)

    @staticmethod
    def _read_model_facts(files: Any, name: str) -> tuple[PreprocessConfig, int | None, str]:
        """Preprocessing, embedding size and name: ``config.json``, else ``inference.yml``, else defaults."""
        if files.config_file is not None:
            config = read_model_config(files.config_file)
            return config.preprocess, config.embedding_size, config.model_name or name
        if files.yml_file is not None:
            doc = _load_yaml(files.yml_file)
            preprocess = PreprocessConfig.from_inference_yml(doc if isinstance(doc, dict) else {})
            model_name = (doc.get("Global") or {}).get("model_name") if isinstance(doc, dict) else None
            return preprocess, None, str(model_name or name)
        # The legacy PaddleClas tarball has no yml: its preprocessing is deploy/configs/inference_rec.yaml
        # (spec §11.1.3), which is PreprocessConfig's default.
        logger.debug("no config.json or inference.yml in %s: using the PP-ShiTuV2 deploy preprocessing",
                     files.directory)
        return PreprocessConfig(), None, name

    @staticmethod
    def _export_checkpoint(checkpoint: Path, home: Path, name: str) -> Path:
        """Export a ``.pdparams`` once into ``<home>/exports/<sha256>-...`` and return that directory."""
        import paddle
        from filelock import FileLock

        from shitu_features.inference.hub import sha256_file

        sha256 = sha256_file(checkpoint)
        # The export depends on the weights, and on the code that traced it: key on all three.
        key = f"{sha256[:32]}-sf{__version__}-paddle{paddle.__version__}"
        target = home / "exports" / key
        target.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(target) + ".lock"):
            if (target / CONFIG_FILE).is_file():
                logger.debug("using the cached export of %s in %s", checkpoint, target)
                return target
            from shitu_features.models import build_rec_model, load_checkpoint
            from shitu_features.serialization import load_state_dict

            logger.info("exporting %s (sha256 %s...) to %s, once", checkpoint, sha256[:12], target)
            state = load_state_dict(checkpoint)
            # The head (192,612 classes in the official checkpoint) is not part of the embedding: leave it out.
            state = {k: v for k, v in state.items() if not k.startswith("head.")}
            model = build_rec_model(class_num=None)
            load_checkpoint(model, state)
            del state
            export_inference_model(model, target, model_name=name, overwrite=True,
                                   source={"checkpoint": str(checkpoint), "sha256": sha256})
        return target

    # ------------------------------------------------------------------------------------------------------
    # Properties

    @property
    def name(self) -> str:
        """Model name, e.g. ``"PP-ShiTuV2"``."""
        return self._name

    @property
    def preprocess_config(self) -> PreprocessConfig:
        """The preprocessing applied to every image (size, interpolation, scale, mean, std)."""
        return self._preprocess

    @property
    def input_size(self) -> tuple[int, int]:
        """``(width, height)`` images are resized to."""
        return tuple(self._preprocess.size)  # type: ignore[return-value]

    @property
    def embedding_size(self) -> int:
        """Width ``D`` of the embeddings (512 for PP-ShiTuV2)."""
        if self._embedding_size is None:
            width, height = self.input_size
            with self._run_lock:
                probe = self._predictor.run(np.zeros((1, 3, height, width), np.float32))
            self._embedding_size = int(probe.shape[1])
        return self._embedding_size

    @property
    def device(self) -> str:
        """``"cpu"`` or ``"gpu:<index>"``."""
        return self._predictor.device

    @property
    def predictor(self) -> Predictor:
        """The underlying :class:`Predictor` (``run`` takes preprocessed ``[N, 3, H, W]`` batches)."""
        return self._predictor

    @property
    def model_dir(self) -> Path | None:
        """Directory holding the inference files in use."""
        return self._model_dir

    @property
    def source(self) -> str | None:
        """Where the model came from (the path, URL or hub id given to :meth:`from_pretrained`)."""
        return self._source

    @property
    def num_workers(self) -> int:
        """Decode / preprocess threads used by :meth:`embed`."""
        return self._num_workers

    @property
    def backend(self) -> str:
        """The inference backend: ``"paddle"`` or ``"onnxruntime"``."""
        return getattr(self._predictor, "backend", "paddle")

    def __repr__(self) -> str:
        pred = self._predictor
        cpu = ""
        if pred.device_kind == "cpu":
            cpu = f", threads={pred.num_threads}" + (f", onednn={pred.use_mkldnn}" if self.backend == "paddle" else "")
        width, height = self.input_size
        dim = self._embedding_size if self._embedding_size is not None else "?"
        return (f"Extractor(name={self._name!r}, backend={self.backend!r}, device={pred.device!r}, "
                f"precision={pred.precision!r}{cpu}, "
                f"input={width}x{height}, embedding_size={dim}, workers={self._num_workers}, "
                f"source={self._source!r})")

    def _default_workers(self) -> int:
        if self._predictor.device_kind == "gpu":
            # The GPU is fast: decoding is the bottleneck, give it every core.
            return max(2, min(16, os.cpu_count() or 2))
        # One per core. With Paddle the workers decode only between two forward passes (see _pipeline), when the
        # cores are otherwise idle, so the gap is shortest with all of them; with onnxruntime they share the cores
        # with its threads, and 2 workers on 2 cores still beat 1 (docs/performance.md).
        return max(1, min(8, physical_cpu_count()))

    # ------------------------------------------------------------------------------------------------------
    # Saving

    def save_pretrained(self, directory: PathLike, *, overwrite: bool = False) -> Path:
        """Write the inference model plus ``config.json`` and ``inference.yml`` to ``directory``.

        ``Extractor.from_pretrained(directory)`` loads it back with the same preprocessing. The model files are
        copied as they are (a legacy ``inference.pdmodel`` stays one). Written atomically.

        Args:
            directory: output directory (created).
            overwrite: replace an existing non-empty directory.

        Returns:
            The directory.

        Raises:
            OutputExistsError: ``directory`` is not empty and ``overwrite`` is False.
            ModelNotFoundError: the extractor was built without a model directory.
        """
        import paddle

        from shitu_features.errors import ModelNotFoundError

        if self._model_dir is None:
            raise ModelNotFoundError("this Extractor was built without model_dir: nothing to save")
        model_file, params_file = self._predictor.model_file, self._predictor.params_file
        config = ExportedModelConfig(
            model_name=self._name, input_size=self.input_size, preprocess=self._preprocess,
            embedding_size=self.embedding_size, paddle_version=paddle.__version__,
            dynamic_input_size=self._dynamic_input_size(), source={"from": self._source},
        )
        with atomic_directory(directory, overwrite=overwrite) as tmp:
            shutil.copy2(model_file, tmp / ("inference" + model_file.suffix))
            shutil.copy2(params_file, tmp / "inference.pdiparams")
            info = params_file.with_name(params_file.name + ".info")
            if info.is_file():
                shutil.copy2(info, tmp / "inference.pdiparams.info")
            write_model_files(tmp, config)
        final = Path(directory).expanduser().absolute()
        logger.info("saved %s to %s", self._name, final)
        return final

    def _dynamic_input_size(self) -> bool:
        if self._model_dir is not None and (self._model_dir / CONFIG_FILE).is_file():
            try:
                return read_model_config(self._model_dir).dynamic_input_size
            except ConfigError:
                return False
        return False  # unknown (e.g. the legacy export, traced at [None, 3, 224, 224])

    # ------------------------------------------------------------------------------------------------------
    # Embedding

    @overload
    def embed(self, images: Any, batch_size: int = ..., *, show_progress: bool | None = ..., normalize: bool = ...,
              on_error: Literal["raise"] = ..., channel_order: ChannelOrder = ...,
              num_workers: int | None = ...) -> np.ndarray: ...

    @overload
    def embed(self, images: Any, batch_size: int = ..., *, show_progress: bool | None = ..., normalize: bool = ...,
              on_error: Literal["skip"], channel_order: ChannelOrder = ...,
              num_workers: int | None = ...) -> EmbedResult: ...

    @overload
    def embed(self, images: Any, batch_size: int = ..., *, show_progress: bool | None = ..., normalize: bool = ...,
              on_error: OnError, channel_order: ChannelOrder = ...,
              num_workers: int | None = ...) -> Union[np.ndarray, EmbedResult]: ...

    def embed(
        self,
        images: Any,
        batch_size: int = 32,
        *,
        show_progress: bool | None = None,
        normalize: bool = True,
        on_error: OnError = "raise",
        channel_order: ChannelOrder = "rgb",
        num_workers: int | None = None,
    ) -> Union[np.ndarray, EmbedResult]:
        """Embed one image or many.

        Args:
            images: one image — a path (``str`` / ``os.PathLike``), encoded ``bytes``, a ``uint8`` ``numpy``
                array ``[H, W, 3]`` (RGB, see ``channel_order``) or ``[H, W]`` (grayscale), a ``PIL.Image`` —
                or a list / tuple / generator / any iterable of them, or a ``uint8`` array ``[N, H, W, 3]``.
            batch_size: images per forward pass; results do not depend on it (within 1e-5).
            show_progress: show a progress bar (needs ``tqdm``); ``None``: only on a terminal and for more than
                one batch of a sized input.
            normalize: L2-normalise each embedding (default; a zero feature stays a zero vector and is reported
                with a :class:`ZeroNormWarning`). ``False`` returns the raw BN-neck features.
            on_error: ``"raise"`` (default) raises the first input's error, typed and naming the input's index;
                ``"skip"`` embeds every good input and returns an :class:`EmbedResult` listing the bad ones.
            channel_order: order of 3-channel ``numpy`` inputs: ``"rgb"`` (default) or ``"bgr"`` (OpenCV's
                ``cv2.imread`` order). Files, bytes and PIL images carry their own order.
            num_workers: decode / preprocess threads for this call (default :attr:`num_workers`).

        Returns:
            With ``on_error="raise"``: ``float32`` ``(D,)`` for one image, ``(N, D)`` for a sequence (``(0, D)``
            for an empty one). With ``on_error="skip"``: an :class:`EmbedResult` (always 2-D embeddings).

        Raises:
            ImageNotFoundError: a path does not exist (also a ``FileNotFoundError``).
            ImageDecodeError: an input cannot be decoded (empty, not an image, truncated JPEG, ...).
            InvalidInputError: an input has an unsupported type, dtype or shape, or ``images`` is not iterable.
            EmbeddingError: the model returned NaN / inf for an input.
            ConfigError: invalid ``batch_size`` / ``on_error`` / ``channel_order``.
        """
        single = is_single_image(images)
        items = [images] if single else images
        total = _length(items)
        progress = self._progress_bar(total, batch_size, show_progress)
        out: np.ndarray | None = None
        chunks: list[np.ndarray] = []
        indices: list[np.ndarray] = []
        failed: list[EmbedFailure] = []
        zero_norm: list[int] = []
        written = 0
        try:
            for batch in self._batches(items, batch_size, normalize, on_error, channel_order, num_workers,
                                       prefetch=2, warn=False):
                failed += batch.failed
                zero_norm += batch.zero_norm
                n = len(batch.indices)
                if total is not None:  # preallocate once the width is known: no concatenation copy at the end
                    if out is None:
                        out = np.empty((total, batch.embeddings.shape[1]), np.float32)
                    out[written:written + n] = batch.embeddings
                else:
                    chunks.append(batch.embeddings)
                indices.append(batch.indices)
                written += n
                if progress is not None:
                    progress.update(n + len(batch.failed))
        finally:
            if progress is not None:
                progress.close()
        if out is not None:
            embeddings = out if written == total else out[:written].copy()  # copy: free the unused rows
        elif chunks:
            embeddings = np.concatenate(chunks)
        else:
            embeddings = np.empty((0, self.embedding_size), np.float32)
        if zero_norm and normalize:
            _warn_zero_norm(zero_norm)
        if on_error == "skip":
            index_array = np.concatenate(indices) if indices else np.empty((0,), np.int64)
            return EmbedResult(np.ascontiguousarray(embeddings), index_array, failed, zero_norm)
        if single:
            return embeddings[0].copy()
        return embeddings

    def iter_embed(
        self,
        images: Iterable[Any],
        batch_size: int = 32,
        *,
        normalize: bool = True,
        on_error: OnError = "raise",
        channel_order: ChannelOrder = "rgb",
        num_workers: int | None = None,
        prefetch: int = 2,
    ) -> Iterator[EmbedBatch]:
        """Stream embeddings batch by batch, in input order, in bounded memory.

        Same inputs and options as :meth:`embed` (``images`` must be an iterable of images). Only
        ``prefetch + 1`` batches of decoded inputs exist at any time, whatever the length of ``images``.

        Args:
            images: an iterable of image inputs (consumed lazily).
            batch_size: images per forward pass.
            normalize: L2-normalise (NaN-free).
            on_error: ``"raise"`` or ``"skip"`` (failures are reported in each :class:`EmbedBatch`).
            channel_order: order of 3-channel ``numpy`` inputs.
            num_workers: decode / preprocess threads.
            prefetch: batches decoded ahead of the one being run through the model, when the backend's ``run``
                releases the GIL (onnxruntime); with Paddle, whose ``run`` holds it, the next batch is decoded
                right after each forward pass instead, so this only bounds the buffers.

        Returns:
            An iterator of :class:`EmbedBatch`, one per input batch (with no rows when every input of it failed).
            Options are checked at the call; closing the iterator early cancels the pending decodes.
        """
        return self._batches(images, batch_size, normalize, on_error, channel_order, num_workers, prefetch,
                             warn=True)

    def _batches(self, images: Iterable[Any], batch_size: int, normalize: bool, on_error: OnError,
                 channel_order: ChannelOrder, num_workers: int | None, prefetch: int, *, warn: bool
                 ) -> Iterator[EmbedBatch]:
        # Options are checked here, eagerly, so that iter_embed() fails at the call and not at the first next().
        batch_size, workers = self._check_options(batch_size, on_error, channel_order, num_workers, prefetch)
        if is_single_image(images):
            raise InvalidInputError("iter_embed expects an iterable of images; use embed() for a single image")
        if isinstance(images, np.ndarray):  # [N, H, W, C] batch array: iterate over its first axis
            images = iter(images)
        try:
            source = enumerate(iter(images))
        except TypeError as exc:
            raise InvalidInputError(
                f"images must be an image or an iterable of images, got {describe_input(images)}") from exc
        return self._pipeline(source, batch_size, workers, normalize, on_error, channel_order, prefetch, warn)

    def _pipeline(self, source: Iterator[tuple[int, Any]], batch_size: int, workers: int, normalize: bool,
                  on_error: OnError, channel_order: ChannelOrder, prefetch: int, warn: bool) -> Iterator[EmbedBatch]:
        # Whether the workers can decode while the model runs. Paddle's run() holds the GIL for the whole forward
        # pass (onnxruntime's releases it), so with Paddle a batch queued for decoding during a run only leaves the
        # workers stalled mid-image, and a worker still inside OpenCV then competes with the model's threads. There
        # the workers decode in the gap after each forward pass instead, on every core, while the caller consumes
        # the result: `group` batches at a time, enough to give every worker an image (batch 1 with 2 workers
        # decodes two batches per gap, then runs them back to back).
        overlap = bool(getattr(self._predictor, "releases_gil", False))
        group = prefetch if overlap else -(-workers // batch_size)
        width, height = self.input_size
        buffers = [np.empty((batch_size, 3, height, width), np.float32) for _ in range(group + 1)]
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="shitu-decode")
        pending: deque[_Job] = deque()

        def submit_next() -> bool:
            chunk = list(itertools.islice(source, batch_size))
            if not chunk:
                return False
            buffer = buffers.pop()
            futures = [pool.submit(self._prepare, item, buffer, row, channel_order)
                       for row, (_, item) in enumerate(chunk)]
            pending.append(_Job(buffer, [i for i, _ in chunk], [item for _, item in chunk], futures))
            return True

        def submit_group() -> None:
            while len(pending) < group and submit_next():
                pass

        try:
            submit_group()
            while pending:
                job = pending.popleft()
                errors = [f.result() for f in job.futures]
                if overlap:
                    submit_next()  # the workers decode the next batch while this one runs through the model
                batch = self._run_job(job, errors, normalize, on_error)
                buffers.append(job.buffer)
                if not overlap and not pending:
                    submit_group()  # decoded on every core while the caller consumes this batch
                if warn and batch.zero_norm and normalize:
                    _warn_zero_norm(batch.zero_norm)
                yield batch
        finally:
            for job in pending:
                for future in job.futures:
                    future.cancel()
            pool.shutdown(wait=True)

    def _check_options(self, batch_size: int, on_error: str, channel_order: str, num_workers: int | None,
                       prefetch: int) -> tuple[int, int]:
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        if on_error not in ("raise", "skip"):
            raise ConfigError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if channel_order not in ("rgb", "bgr"):
            raise ConfigError(f"channel_order must be 'rgb' or 'bgr', got {channel_order!r}")
        if num_workers is not None and int(num_workers) < 1:
            raise ConfigError(f"num_workers must be >= 1, got {num_workers}")
        if int(prefetch) < 1:
            raise ConfigError(f"prefetch must be >= 1, got {prefetch}")
        return int(batch_size), int(num_workers) if num_workers is not None else self._num_workers

    def _prepare(self, item: Any, buffer: np.ndarray, row: int, channel_order: ChannelOrder
                 ) -> Optional[BaseException]:
        """Decode + preprocess one input into ``buffer[row]`` (runs in a worker thread); return its error."""
        try:
            self._preprocessor(decode_image(item, channel_order=channel_order), out=buffer[row])
            return None
        except ShituFeaturesError as exc:
            return exc
        except Exception as exc:  # e.g. MemoryError on a gigantic image, cv2.error: make it this input's error
            wrapped = ImageDecodeError(f"could not process image: {type(exc).__name__}: {exc}")
            wrapped.__cause__ = exc
            return wrapped

    def _run_job(self, job: _Job, errors: list[Optional[BaseException]], normalize: bool, on_error: OnError
                 ) -> EmbedBatch:
        failed: list[EmbedFailure] = []
        good_rows: list[int] = []
        for row, error in enumerate(errors):
            if error is None:
                good_rows.append(row)
                continue
            index, item = job.indices[row], job.items[row]
            if on_error == "raise":
                raise _with_context(error, index, item)
            failed.append(EmbedFailure(index, describe_input(item), str(error), type(error).__name__))
            logger.info("skipping input %d %s: %s", index, describe_input(item), error)
        # Compact the good rows to the front (the buffer's rows are independent images; batch results do not
        # depend on the position of an image within a batch).
        for dst, src in enumerate(good_rows):
            if dst != src:
                job.buffer[dst] = job.buffer[src]
        n = len(good_rows)
        indices = np.asarray([job.indices[r] for r in good_rows], dtype=np.int64)
        if n == 0:
            # The true width even before any image has run (a model without config.json): a (0, 0) batch first
            # would make embed() preallocate a zero-width output that the next good batch cannot fill.
            return EmbedBatch(indices, np.empty((0, self.embedding_size), np.float32), failed)
        with self._run_lock:
            features = self._predictor.run(job.buffer[:n])
        if self._embedding_size is None:
            self._embedding_size = int(features.shape[1])
        finite = np.isfinite(features).all(axis=1)
        if not finite.all():
            bad = [int(i) for i in indices[~finite]]
            message = (f"the model returned non-finite values (NaN/inf) for input(s) {bad[:10]}; with "
                       "precision='fp16' this is an overflow: use precision='fp32'")
            if on_error == "raise":
                raise EmbeddingError(message)
            for pos in np.flatnonzero(~finite):
                failed.append(EmbedFailure(int(indices[pos]), describe_input(job.items[good_rows[pos]]),
                                           message, "EmbeddingError"))
            features, indices = features[finite], indices[finite]
            failed.sort(key=lambda f: f.index)
        zero_norm: list[int] = []
        if normalize:
            features, zero = l2_normalize(features)
            zero_norm = [int(i) for i in indices[zero]]
        return EmbedBatch(indices, features, failed, zero_norm)

    @staticmethod
    def _progress_bar(total: int | None, batch_size: int, show: bool | None):  # -> tqdm | None
        if show is None:
            show = total is not None and total > batch_size and sys.stderr is not None and sys.stderr.isatty()
        if not show:
            return None
        try:
            from tqdm.auto import tqdm
        except ImportError:
            logger.info("show_progress needs tqdm (pip install tqdm); continuing without a progress bar")
            return None
        return tqdm(total=total, unit="img", desc="embedding")


def _length(items: Any) -> int | None:
    try:
        return len(items)
    except TypeError:
        return None


def _with_context(error: BaseException, index: int, item: Any) -> BaseException:
    """The same error type, its message prefixed with the input's position and description."""
    message = f"input {index} {describe_input(item)}: {error}"
    try:
        new = type(error)(message)
    except Exception:  # an error type with an unusual constructor: fall back to the generic decode error
        new = ImageDecodeError(message)
    new.__cause__ = error
    return new


def _warn_zero_norm(indices: list[int]) -> None:
    shown = ", ".join(map(str, indices[:10])) + (", ..." if len(indices) > 10 else "")
    message = (f"{len(indices)} embedding(s) had zero norm (inputs {shown}); they are returned as zero vectors "
               "instead of NaN")
    logger.warning(message)
    warnings.warn(message, ZeroNormWarning, stacklevel=3)


def _paddle_predictor(model_file: Path, params_file: Path, cache_home: Path, *, device: str,
                      num_threads: int | None, use_mkldnn: bool, precision: Precision) -> Predictor:
    return Predictor(model_file, params_file, device=device, num_threads=num_threads, use_mkldnn=use_mkldnn,
                     precision=precision)


def _onnx_predictor(model_file: Path, params_file: Path, cache_home: Path, *, device: str,
                    num_threads: int | None, use_mkldnn: bool, precision: Precision) -> Any:
    from shitu_features.inference.onnx_backend import OnnxPredictor, cached_onnx_model, require_onnxruntime

    require_onnxruntime()  # fail before converting when the runtime is missing
    onnx_file = cached_onnx_model(model_file, params_file, cache_home)
    return OnnxPredictor(onnx_file, model_file=model_file, params_file=params_file, device=device,
                         num_threads=num_threads, precision=precision)


#: backend name -> factory of a configured predictor (``run(float32 [N, 3, H, W]) -> float32 [N, D]``)
_BACKENDS = {"paddle": _paddle_predictor, "onnxruntime": _onnx_predictor}
