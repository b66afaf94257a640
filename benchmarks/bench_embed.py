"""Benchmark: images/s and peak RSS of the forward pass alone, the naive reference loop and ``Extractor.embed``.

Run from the repository root (offline; about 10 minutes on 2 cores):

    python benchmarks/bench_embed.py                      # 512 grocery-store JPEGs, batch sizes 1, 8, 32
    python benchmarks/bench_embed.py --smoke              # seconds: a tiny version (what the unit test runs)
    python benchmarks/bench_embed.py --onnx               # also the onnxruntime backend (needs the [onnx] extra)
    python benchmarks/bench_embed.py --bf16               # also precision="bf16" (CPUs with AMX / AVX512-BF16)

Pipelines (each pipeline at each batch size is a "cell": a fresh subprocess, so its peak RSS is its own;
``--in-process`` runs everything in this process instead):

* **forward only** -- ``extractor.predictor.run`` on preprocessed ``float32 [B, 3, 224, 224]`` batches: the first
  64 images of the set, preprocessed once, cycled until as many images as the set holds have gone through. This
  is the ceiling of any pipeline built on the same predictor (fused weights, oneDNN, ``--threads`` threads).
* **naive** -- PaddleClas's deploy loop (``deploy/python/predict_rec.py`` with ``deploy/configs/inference_rec.yaml``,
  spec §5.1), restated: for each batch, for each path ``cv2.imread`` -> ``[:, :, ::-1]`` -> ``cv2.resize`` to
  224x224 ``INTER_LINEAR`` -> ``(img.astype(float32) * 0.00392157 - mean) / std`` -> ``transpose(2, 0, 1)``; then
  ``np.array(batch)`` -> ``copy_from_cpu`` -> ``run`` -> ``copy_to_cpu`` -> numpy L2; one Python thread. The
  predictor is configured as ``deploy/utils/predictor.py`` does (oneDNN with cache capacity 10, ``ir_optim``,
  ``enable_memory_optim``, no feed/fetch ops), plus ``enable_new_executor()``, which Paddle 3 needs for a PIR model
  with memory optimisation. Its thread count is ``--naive-threads``: by default 1 (the whole loop on one
  thread, as issue 6 words it), the same as ``--threads`` (the fair comparison, used for the "x naive" column)
  and the yaml's literal ``cpu_num_threads: 10``.
* **embed** -- ``Extractor.embed(paths, batch_size=B)``.

Each timed pass goes over every image of the set; the files are read once beforehand (page cache warm) and each
cell warms up on one batch. The cells of one batch size are set up together, then timed round-robin, one pass of
each per round, so that a burst of load from other processes is spread over all of them. The table gives the
median of ``--repeats`` passes, and "other load": the CPU cores that other processes used during the timed
passes (from ``/proc/stat``; 0.0 means the machine was ours).

Also printed: cold start (a fresh ``python``: import, ``from_pretrained`` from the cache, first ``embed`` of one
image), a streaming check (RSS after 1,000, 2,000, 5,000 and 10,000 images of a generator that cycles through the
set, fed to ``iter_embed`` at batch 32 -- images repeat, full resolution; glibc keeps freed decode buffers in its
per-thread arenas, so RSS moves by a few tens of MiB between checkpoints without a trend), and a check that results
do not depend on the batch size or the thread count beyond 1e-5.

Data and weights (``--images``, ``--weights``): ``../shared/data/grocery_store`` and
``../shared/reference/model/rec_model.pdparams`` next to the repository (the fixture weights: the official
architecture with random weights, exported once into ``--cache-dir``). When the images are missing, synthetic
348x348 JPEGs are generated; when the weights are missing, a randomly initialised model is exported. Both say so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = REPO.parent / "shared" / "data" / "grocery_store"
DEFAULT_WEIGHTS = REPO.parent / "shared" / "reference" / "model" / "rec_model.pdparams"
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "shitu_features_bench"
FORWARD_POOL = 64  # preprocessed images the forward-only cell cycles through
PARITY_IMAGES = 64
PARITY_TOLERANCE = 1e-5

# deploy/configs/inference_rec.yaml (spec §5.1)
DEPLOY_SCALE = 0.00392157
DEPLOY_MEAN = (0.485, 0.456, 0.406)
DEPLOY_STD = (0.229, 0.224, 0.225)
DEPLOY_THREADS = 10
#: the bench's name of a configuration -> (Extractor backend, precision)
BACKENDS = {"paddle": ("paddle", "fp32"), "onnxruntime": ("onnxruntime", "fp32"), "bf16": ("paddle", "bf16")}


# ----------------------------------------------------------------------------------------------------------------
# Measurement helpers


def _rss_mib() -> float:
    """Current resident set size (VmRSS) in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return _peak_rss_mib()


def _peak_rss_mib() -> float:
    """Peak resident set size of this process (ru_maxrss) in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine from /proc/stat; (0, 0) where unavailable."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    except (OSError, ValueError, IndexError):
        return 0, 0
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


class _Timer:
    """Wall time of a block, and the CPU cores other processes used meanwhile."""

    def __enter__(self) -> _Timer:
        self._busy0, _ = _cpu_jiffies()
        self._cpu0 = sum(os.times()[:2])
        self._wall0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self._wall0
        ours = sum(os.times()[:2]) - self._cpu0
        busy1, _ = _cpu_jiffies()
        machine = (busy1 - self._busy0) / os.sysconf("SC_CLK_TCK")
        self.others = max(0.0, machine - ours) / max(self.seconds, 1e-9)


# ----------------------------------------------------------------------------------------------------------------
# The pipelines (one "cell" each)


def _load_extractor(spec: dict[str, Any], threads: int | None = None,
                    reuse: dict[tuple, Any] | None = None):
    from shitu_features.inference.extractor import Extractor

    key = (spec["model"], threads or spec["threads"], spec.get("workers"), spec.get("backend", "paddle"))
    if reuse is not None and key in reuse:  # --in-process: one predictor per configuration, not one per cell
        return reuse[key]
    backend, precision = BACKENDS[key[3]]
    extractor = Extractor.from_pretrained(spec["model"], num_threads=key[1], num_workers=key[2], backend=backend,
                                          precision=precision, cache_dir=spec["cache"])
    if reuse is not None:
        reuse[key] = extractor
    return extractor


def _setup_forward(spec: dict[str, Any]) -> tuple[Callable[[], Any], int]:
    from shitu_features.data.images import decode_image
    from shitu_features.inference.preprocess import Preprocessor

    extractor = _load_extractor(spec, reuse=spec.get("_reuse"))
    batch, paths = spec["batch"], spec["images"]
    preprocessor = Preprocessor(extractor.preprocess_config)
    pool = np.stack([preprocessor(decode_image(p)) for p in paths[:FORWARD_POOL]])  # [P, 3, H, W] float32
    distinct: dict[int, np.ndarray] = {}  # batch start in the pool -> that batch (few distinct ones)
    batches = []
    for first in range(0, len(paths), batch):
        start = first % len(pool)
        if start not in distinct:
            distinct[start] = np.ascontiguousarray(pool[(start + np.arange(batch)) % len(pool)])
        batches.append(distinct[start])
    predictor = extractor.predictor
    predictor.run(batches[0])  # oneDNN creates its primitives for this shape on the first run

    def run_pass() -> None:
        for b in batches:
            predictor.run(b)

    return run_pass, len(batches) * batch


def _deploy_predictor(model_dir: Path, threads: int):
    """A predictor configured as PaddleClas deploy/utils/predictor.py does for inference_rec.yaml."""
    import paddle.inference as paddle_infer

    from shitu_features.inference.hub import find_inference_files

    files = find_inference_files(model_dir)
    config = paddle_infer.Config(str(files.model_file), str(files.params_file))
    config.disable_gpu()
    config.set_mkldnn_cache_capacity(10)
    config.enable_mkldnn()
    config.set_cpu_math_library_num_threads(threads)
    config.disable_glog_info()
    config.switch_ir_optim(True)
    config.enable_new_executor()  # not in the deploy code: Paddle 3 needs it for PIR + memory_optim (spec §11.x)
    config.enable_memory_optim()
    config.switch_use_feed_fetch_ops(False)
    return paddle_infer.create_predictor(config)


def naive_embed(predictor, paths: Sequence[str], batch: int) -> np.ndarray:
    """The deploy loop of PaddleClas predict_rec.py, restated: returns L2-normalised ``float32 [N, D]``."""
    import cv2

    mean = np.array(DEPLOY_MEAN).reshape((1, 1, 3)).astype("float32")
    std = np.array(DEPLOY_STD).reshape((1, 1, 3)).astype("float32")
    scale = np.float32(DEPLOY_SCALE)
    inp = predictor.get_input_handle(predictor.get_input_names()[0])
    out = predictor.get_output_handle(predictor.get_output_names()[0])
    results = []
    for first in range(0, len(paths), batch):
        images = []
        for path in paths[first:first + batch]:
            img = cv2.imread(path)[:, :, ::-1]                                         # DecodeImage, to_rgb
            img = cv2.resize(img, (224, 224), interpolation=cv2.INTER_LINEAR)         # ResizeImage
            img = (img.astype("float32") * scale - mean) / std                        # NormalizeImage, hwc
            images.append(img.transpose((2, 0, 1)))                                   # ToCHWImage
        data = np.array(images)
        inp.reshape(list(data.shape))
        inp.copy_from_cpu(data)
        predictor.run()
        features = out.copy_to_cpu()
        results.append(features / np.sqrt(np.sum(np.square(features), axis=1, keepdims=True)))
    return np.concatenate(results)


def _setup_naive(spec: dict[str, Any]) -> tuple[Callable[[], Any], int]:
    reuse = spec.get("_reuse")
    key = ("naive", spec["model"], spec["naive_threads"])
    predictor = reuse.get(key) if reuse is not None else None
    if predictor is None:
        predictor = _deploy_predictor(Path(spec["model"]), spec["naive_threads"])
        if reuse is not None:
            reuse[key] = predictor
    paths, batch = spec["images"], spec["batch"]
    naive_embed(predictor, paths[:batch], batch)  # warm-up: oneDNN primitives
    return (lambda: naive_embed(predictor, paths, batch)), len(paths)


def _setup_embed(spec: dict[str, Any]) -> tuple[Callable[[], Any], int]:
    extractor = _load_extractor(spec, reuse=spec.get("_reuse"))
    paths, batch = spec["images"], spec["batch"]
    extractor.embed(paths[:batch], batch_size=batch)  # warm-up: oneDNN primitives
    return (lambda: extractor.embed(paths, batch_size=batch)), len(paths)


_TIMED = {"forward": _setup_forward, "naive": _setup_naive, "embed": _setup_embed}
MARK = "@@bench "  # prefixes the child's protocol lines (Paddle and paddle2onnx print to stdout too)


def serve_cell(spec: dict[str, Any]) -> None:
    """Child process of a timed cell: set up, then run one timed pass per "pass" line on stdin."""
    run_pass, n_images = _TIMED[spec["kind"]](spec)
    print(MARK + json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if line.strip() == "pass":
            with _Timer() as timer:
                run_pass()
            print(MARK + json.dumps({"rate": n_images / timer.seconds, "others": timer.others}), flush=True)
        else:
            break
    print(MARK + json.dumps({"peak_rss": _peak_rss_mib()}), flush=True)


class TimedCell:
    """One pipeline at one batch size, set up once (in its own process unless ``in_process``), timed pass by pass.

    The parent runs the passes of all cells of a batch size round-robin, so a burst of load from other processes
    spreads over every pipeline instead of hitting one of them.
    """

    def __init__(self, spec: dict[str, Any], in_process: bool, reuse: dict[tuple, Any]) -> None:
        self.rates: list[float] = []
        self.others: list[float] = []
        self._proc: subprocess.Popen | None = None
        if in_process:
            self._run_pass, self._n_images = _TIMED[spec["kind"]](dict(spec, _reuse=reuse))
            return
        self._proc = subprocess.Popen([sys.executable, "-W", "ignore", __file__, "--serve-cell", json.dumps(spec)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._read()  # "ready"

    def _read(self) -> dict[str, Any]:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            if line.startswith(MARK):
                return json.loads(line[len(MARK):])
        raise RuntimeError(f"benchmark cell exited with status {self._proc.wait()} (its stderr is above)")

    def run_pass(self) -> None:
        if self._proc is None:
            with _Timer() as timer:
                self._run_pass()
            self.rates.append(self._n_images / timer.seconds)
            self.others.append(timer.others)
            return
        assert self._proc.stdin is not None
        self._proc.stdin.write("pass\n")
        self._proc.stdin.flush()
        reply = self._read()
        self.rates.append(reply["rate"])
        self.others.append(reply["others"])

    def close(self) -> dict[str, Any]:
        if self._proc is None:
            return {"rates": self.rates, "others": self.others, "peak_rss": _peak_rss_mib()}
        assert self._proc.stdin is not None
        self._proc.stdin.write("quit\n")
        self._proc.stdin.flush()
        peak = self._read()["peak_rss"]
        self._proc.wait()
        return {"rates": self.rates, "others": self.others, "peak_rss": peak}


def _cycle(paths: Sequence[str], count: int) -> Iterator[str]:
    for i in range(count):
        yield paths[i % len(paths)]


def _cell_stream(spec: dict[str, Any]) -> dict[str, Any]:
    extractor = _load_extractor(spec, reuse=spec.get("_reuse"))
    checkpoints = sorted(spec["counts"])
    rss: dict[str, float] = {}
    done, start = 0, time.perf_counter()
    rss_start = _rss_mib()
    for batch in extractor.iter_embed(_cycle(spec["images"], checkpoints[-1]), batch_size=spec["batch"]):
        done += len(batch.indices)
        while checkpoints and done >= checkpoints[0]:
            rss[str(checkpoints.pop(0))] = _rss_mib()
    seconds = time.perf_counter() - start
    return {"rss_start": rss_start, "rss": rss, "images": done, "seconds": seconds}


def _cell_parity(spec: dict[str, Any]) -> dict[str, Any]:
    paths = spec["images"][:PARITY_IMAGES]
    runs: dict[str, np.ndarray] = {}
    for threads in sorted({1, spec["threads"]}):
        extractor = _load_extractor(spec, threads, reuse=spec.get("_reuse"))
        for batch in spec["batches"]:
            runs[f"threads={threads} batch={batch}"] = extractor.embed(paths, batch_size=batch)
    reference = next(iter(runs.values()))
    diffs = {key: float(np.abs(value - reference).max()) for key, value in runs.items()}
    return {"images": len(paths), "max_abs_diff": max(diffs.values()), "diffs": diffs}


_CELLS = {"stream": _cell_stream, "parity": _cell_parity}


def run_cell(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one measurement in this process and return its results (plus this process's peak RSS)."""
    import logging

    logging.getLogger("shitu_features").setLevel(logging.WARNING)
    result = _CELLS[spec["kind"]](spec)
    result["peak_rss"] = _peak_rss_mib()
    return result


def _run_cell_isolated(spec: dict[str, Any], in_process: bool, reuse: dict[tuple, Any] | None = None
                       ) -> dict[str, Any]:
    if in_process:
        return run_cell(dict(spec, _reuse=reuse))
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(spec, fh)
    try:
        proc = subprocess.run([sys.executable, "-W", "ignore", __file__, "--cell", fh.name],
                              capture_output=True, text=True, check=False)
    finally:
        os.unlink(fh.name)
    if proc.returncode != 0:
        raise RuntimeError(f"cell {spec['kind']} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


_COLD_START = """
import json, sys, time
t0 = time.perf_counter()
from shitu_features.inference.extractor import Extractor
t1 = time.perf_counter()
extractor = Extractor.from_pretrained(sys.argv[1], cache_dir=sys.argv[2], backend=sys.argv[4])
t2 = time.perf_counter()
extractor.embed(sys.argv[3])
t3 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "from_pretrained": t2 - t1, "first_embed": t3 - t2}))
"""


def cold_start(source: str, cache: str, image: str, repeats: int, backend: str = "paddle") -> dict[str, float]:
    """Median seconds of a fresh interpreter: start, import, ``from_pretrained`` from the cache, first embed."""
    runs: list[dict[str, float]] = []
    for _ in range(repeats):
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-W", "ignore", "-c", _COLD_START, source, cache, image, backend],
                              capture_output=True, text=True, check=False)
        total = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"cold start failed:\n{proc.stderr[-4000:]}")
        times = json.loads(proc.stdout.strip().splitlines()[-1])
        times["process_total"] = total
        runs.append(times)
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


# ----------------------------------------------------------------------------------------------------------------
# Setup: images, model, machine


def find_images(folder: Path, count: int, cache: Path) -> tuple[list[str], str]:
    """The first ``count`` JPEGs under ``folder`` (sorted), or synthetic ones when the folder is missing."""
    found = sorted(str(p) for p in folder.rglob("*.jpg")) if folder.is_dir() else []
    if len(found) >= count:
        return found[:count], f"{count} JPEGs from {folder}"
    import cv2

    print(f"NOTE: {folder} has {len(found)} of the {count} JPEGs needed (missing?); using {count} synthetic "
          "348x348 JPEGs instead (same size as the grocery-store photos, so timings are comparable)", flush=True)
    out = cache / "synthetic_jpegs"
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:348, 0:348].astype(np.float32)
    paths = []
    for i in range(count):
        path = out / f"synthetic_{i:05d}.jpg"
        if not path.is_file():
            waves = [np.sin(xs / rng.uniform(5, 60) + ys / rng.uniform(5, 60) + rng.uniform(0, 6)) for _ in range(3)]
            img = np.stack(waves, axis=2) * 100 + 128 + rng.normal(0, 12, (348, 348, 3))
            cv2.imwrite(str(path), np.clip(img, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(str(path))
    return paths, f"{count} synthetic 348x348 JPEGs (no {folder})"


def prepare_model(weights: Path, model: Path | None, cache: Path) -> tuple[Path, str, str]:
    """(exported model folder, what it is, what cold start loads): the fixture weights exported once."""
    from shitu_features.inference.extractor import Extractor

    if model is not None:
        return model, f"exported model {model}", str(model)
    if weights.is_file():
        extractor = Extractor.from_pretrained(weights, cache_dir=cache)  # exports once, then cached
        return Path(extractor.model_dir), f"fixture weights {weights} (exported once to {extractor.model_dir})", \
            str(weights)
    target = cache / "random_init_export"
    print(f"NOTE: fixture weights {weights} not found; exporting a randomly initialised PP-ShiTuV2 (same "
          "architecture, so the same speed) to {target}", flush=True)
    if not (target / "config.json").is_file():
        from shitu_features.inference.export import export_inference_model
        from shitu_features.models import build_rec_model

        export_inference_model(build_rec_model(class_num=None), target, model_name="random-init", overwrite=True)
    return target, f"random weights (no {weights}), exported to {target}", str(target)


def describe_machine(threads: int) -> str:
    import cv2
    import paddle

    from shitu_features.inference.predictor import physical_cpu_count

    cpu = platform.processor() or "unknown CPU"
    mem = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        kib = int(next(line for line in Path("/proc/meminfo").read_text().splitlines()
                       if line.startswith("MemTotal")).split()[1])
        mem = f", {kib / 2**20:.1f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    return (f"{cpu}, {physical_cpu_count()} physical cores / {os.cpu_count()} logical{mem}; Python "
            f"{platform.python_version()}, Paddle {paddle.__version__}, OpenCV {cv2.__version__}, numpy "
            f"{np.__version__}; predictor threads {threads}")


# ----------------------------------------------------------------------------------------------------------------
# Table


def _fmt_rate(result: dict[str, Any]) -> str:
    rates = result["rates"]
    median = statistics.median(rates)
    spread = f" [{min(rates):.1f}-{max(rates):.1f}]" if len(rates) > 1 else ""
    return f"{median:7.1f}{spread}"


def print_table(rows: list[dict[str, Any]], repeats: int) -> None:
    rate = "img/s median" + (f" [min-max] of {repeats}" if repeats > 1 else "")
    header = (f"{'pipeline':<34} {'batch':>5}  {rate:<30} {'x forward':>9} {'x naive':>8} {'peak RSS MiB':>12} "
              f"{'other load':>10}")
    print(header)
    print("-" * len(header))
    for row in rows:
        res = row["result"]
        ratio_fwd = f"{row['x_forward']:.2f}" if row.get("x_forward") is not None else ""
        ratio_naive = f"{row['x_naive']:.2f}" if row.get("x_naive") is not None else ""
        print(f"{row['name']:<34} {row['batch']:>5}  {_fmt_rate(res):<30} {ratio_fwd:>9} {ratio_naive:>8} "
              f"{res['peak_rss']:>12.0f} {statistics.median(res['others']):>10.2f}")


def _ratio(rates: list[float], reference: list[float]) -> float:
    """Median over rounds of ``rates[r] / reference[r]``."""
    return statistics.median(a / b for a, b in zip(rates, reference))


def _suffix(backend: str) -> str:
    return "" if backend == "paddle" else f" ({backend})"  # "(onnxruntime)", "(bf16)"


def _median(result: dict[str, Any]) -> float:
    return statistics.median(result["rates"])


# ----------------------------------------------------------------------------------------------------------------
# Main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from shitu_features.inference.predictor import physical_cpu_count

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="folder searched for *.jpg (sorted)")
    parser.add_argument("--num-images", type=int, default=512)
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="a .pdparams to export once")
    parser.add_argument("--model", type=Path, default=None, help="an already exported model folder (skips export)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="export / synthetic image cache")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per cell (the median is shown)")
    parser.add_argument("--threads", type=int, default=physical_cpu_count(), help="predictor threads")
    parser.add_argument("--naive-threads", type=int, nargs="+", default=None,
                        help=f"threads of the naive loop's predictor (default: 1, --threads and {DEPLOY_THREADS})")
    parser.add_argument("--workers", type=int, default=None, help="Extractor decode threads (default: its own)")
    parser.add_argument("--stream", type=int, nargs="+", default=[1000, 2000, 5000, 10000],
                        help="RSS checkpoints of the streaming check (images)")
    parser.add_argument("--stream-batch", type=int, default=32)
    parser.add_argument("--onnx", action="store_true", help="also measure backend='onnxruntime'")
    parser.add_argument("--bf16", action="store_true", help="also measure precision='bf16' (Paddle, oneDNN)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["cold", "stream", "parity", "naive"],
                        help="leave parts out")
    parser.add_argument("--in-process", action="store_true", help="run every cell in this process")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny run in seconds: 8 images, batch 1 and 4, one pass, 16/48 streamed, in-process")
    parser.add_argument("--cell", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--serve-cell", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.num_images, args.batch_sizes, args.repeats = 8, [1, 4], 1
        args.stream, args.stream_batch, args.in_process = [16, 48], 8, True
        args.naive_threads = args.naive_threads or [args.threads]
    if args.naive_threads is None:
        args.naive_threads = sorted({1, args.threads, DEPLOY_THREADS})
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.serve_cell is not None:
        serve_cell(json.loads(args.serve_cell))
        return {}
    if args.cell is not None:
        print(json.dumps(run_cell(json.loads(args.cell.read_text()))))
        return {}
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    paths, image_note = find_images(args.images, args.num_images, args.cache_dir)
    for path in paths:  # warm the page cache: every pipeline then reads from memory
        Path(path).read_bytes()
    model_dir, model_note, cold_source = prepare_model(args.weights, args.model, args.cache_dir)
    machine = describe_machine(args.threads)
    print(f"machine: {machine}\nimages: {image_note}\nmodel: {model_note}\n", flush=True)

    base = {"model": str(model_dir), "images": paths, "threads": args.threads, "workers": args.workers,
            "repeats": args.repeats, "cache": str(args.cache_dir)}
    backends = ["paddle"] + (["onnxruntime"] if args.onnx else []) + (["bf16"] if args.bf16 else [])
    reuse: dict[tuple, Any] = {}  # loaded extractors, shared by the cells of an --in-process run
    rows: list[dict[str, Any]] = []
    for batch in args.batch_sizes:
        plan = [(f"forward only{_suffix(b)}", "forward", b, {}) for b in backends]
        if "naive" not in args.skip:
            plan += [(_naive_name(t), "naive", "paddle", {"naive_threads": t})
                     for t in args.naive_threads]
        plan += [(f"Extractor.embed{_suffix(b)}", "embed", b, {}) for b in backends]
        cells = [TimedCell(dict(base, batch=batch, kind=kind, backend=backend, **extra), args.in_process, reuse)
                 for _, kind, backend, extra in plan]
        for round_ in range(args.repeats):  # round-robin: each pass of each cell, then the next round
            for (name, _, _, _), cell in zip(plan, cells):
                cell.run_pass()
                print(f"[{time.strftime('%H:%M:%S')}] batch {batch}, pass {round_ + 1}: {name} "
                      f"{cell.rates[-1]:.1f} img/s (other load {cell.others[-1]:.2f})", file=sys.stderr, flush=True)
        group = [{"name": name, "kind": kind, "backend": backend, "result": cell.close()}
                 for (name, kind, backend, _), cell in zip(plan, cells)]
        # Ratios are the median of per-round ratios: the passes of one round are seconds apart, so a slow
        # minute of the machine (its speed drifts by tens of percent even when no other process runs) cancels.
        forward = {r["backend"]: r["result"]["rates"] for r in group if r["kind"] == "forward"}
        naive_fair = next((r["result"]["rates"] for r in group if r["kind"] == "naive"
                           and r["name"] == _naive_name(_fair_threads(args))), None)
        for row in group:
            row["batch"] = batch
            if row["kind"] != "forward":
                row["x_forward"] = _ratio(row["result"]["rates"], forward[row["backend"]])
            if row["kind"] == "embed" and naive_fair:
                row["x_naive"] = _ratio(row["result"]["rates"], naive_fair)
        rows += group
    print_table(rows, args.repeats)
    summary = _summarise(rows, args)

    report: dict[str, Any] = {"machine": machine, "images": image_note, "model": model_note, "rows": rows,
                              "summary": summary}
    if "cold" not in args.skip:
        for backend in [b for b in backends if b != "bf16"]:  # bf16 loads like fp32
            cold = cold_start(cold_source, str(args.cache_dir), paths[0], 1 if args.smoke else 3, backend)
            report[f"cold_start_{backend}"] = cold
            print(f"cold start ({backend}, fresh process, model cached, median of {1 if args.smoke else 3}): "
                  f"import {cold['import']:.2f} s + from_pretrained {cold['from_pretrained']:.2f} s + first embed "
                  f"{cold['first_embed']:.2f} s; whole process {cold['process_total']:.2f} s")
    if "stream" not in args.skip:
        stream = _run_cell_isolated(dict(base, kind="stream", counts=args.stream, batch=args.stream_batch,
                                         backend="paddle"), args.in_process, reuse)
        report["stream"] = stream
        marks = ", ".join(f"after {int(k):,} images {v:.0f} MiB" for k, v in stream["rss"].items())
        values = list(stream["rss"].values())
        print(f"streaming (iter_embed, batch {args.stream_batch}, generator cycling {len(paths)} paths): RSS "
              f"{stream['rss_start']:.0f} MiB at start, {marks}; {values[-1] - values[0]:+.1f} MiB from the first to "
              f"the last checkpoint, peak {stream['peak_rss']:.0f} MiB ({stream['images'] / stream['seconds']:.1f} "
              "img/s)")
    if "parity" not in args.skip:
        parity = _run_cell_isolated(dict(base, kind="parity", batches=args.batch_sizes, backend="paddle"),
                                    args.in_process, reuse)
        report["parity"] = parity
        verdict = "PASS" if parity["max_abs_diff"] <= PARITY_TOLERANCE else "FAIL"
        print(f"batch size / thread independence ({parity['images']} images, batch {args.batch_sizes}, threads "
              f"{sorted({1, args.threads})}): max |diff| {parity['max_abs_diff']:.2g} (limit {PARITY_TOLERANCE:g}) "
              f"{verdict}")
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1, default=str))
    return report


def _summarise(rows: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    def best(kind: str, backend: str = "paddle", name: str | None = None) -> tuple[float, int]:
        found = [(_median(r["result"]), r["batch"]) for r in rows
                 if r["kind"] == kind and r.get("backend", "paddle") == backend and (name is None or r["name"] == name)]
        return max(found) if found else (float("nan"), 0)

    fwd, fwd_batch = best("forward")
    emb, emb_batch = best("embed")
    summary: dict[str, Any] = {"forward_best": [fwd, fwd_batch], "embed_best": [emb, emb_batch],
                               "embed_over_forward": emb / fwd}
    print(f"\nbest batch: forward only {fwd:.1f} img/s (batch {fwd_batch}), Extractor.embed {emb:.1f} img/s "
          f"(batch {emb_batch}): {emb / fwd:.2f}x the ceiling")
    at_best = next(r for r in rows if r["kind"] == "embed" and r["backend"] == "paddle" and r["batch"] == emb_batch)
    summary["embed_at_best_batch_per_round"] = {"x_forward": at_best["x_forward"], "x_naive": at_best.get("x_naive")}
    print(f"  at batch {emb_batch}, per-round ratios (passes seconds apart): {at_best['x_forward']:.2f}x forward only"
          + (f", {at_best['x_naive']:.2f}x the naive loop with {_fair_threads(args)} threads"
             if at_best.get("x_naive") else ""))
    for threads in args.naive_threads if "naive" not in args.skip else []:
        naive, naive_batch = best("naive", name=_naive_name(threads))
        summary[f"embed_over_naive_{threads}_threads"] = emb / naive
        print(f"  vs {_naive_name(threads)} at its best batch ({naive:.1f} img/s, batch "
              f"{naive_batch}): {emb / naive:.2f}x")
    shipped = [_median(r["result"]) for r in rows
               if r["kind"] == "naive" and r["batch"] == 1 and r["name"] == _naive_name(DEPLOY_THREADS)]
    if shipped:
        summary["embed_over_naive_as_shipped"] = emb / shipped[0]
        print(f"  vs the deploy loop as shipped (inference_rec.yaml: batch_size 1, cpu_num_threads "
              f"{DEPLOY_THREADS}; {shipped[0]:.1f} img/s): {emb / shipped[0]:.2f}x")
    naive_fair = best("naive", name=_naive_name(_fair_threads(args)))[0] \
        if "naive" not in args.skip else float("nan")
    for backend, label in (("onnxruntime", "backend='onnxruntime'"), ("bf16", "precision='bf16'")):
        if backend not in {r.get("backend") for r in rows}:
            continue
        other, other_batch = best("embed", backend)
        other_fwd, _ = best("forward", backend)
        summary[f"{backend}_embed_best"] = [other, other_batch]
        print(f"  Extractor.embed with {label}: {other:.1f} img/s (batch {other_batch}): "
              f"{other / other_fwd:.2f}x its own forward-only ceiling, {other / fwd:.2f}x Paddle fp32's, "
              f"{other / naive_fair:.2f}x the naive loop with {_fair_threads(args)} threads")
    return summary


def _naive_name(threads: int) -> str:
    return f"naive deploy loop, {threads} thread{'s' if threads != 1 else ''}"


def _fair_threads(args: argparse.Namespace) -> int:
    """The naive loop the "x naive" column compares with: the same thread count as the Extractor, if measured."""
    return args.threads if args.threads in args.naive_threads else args.naive_threads[0]


if __name__ == "__main__":
    main()
