"""``shitu-features info``: versions, devices, the model cache, and the card of the official (or a given) model."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

from shitu_features.cli._common import add_subcommand, load_extractor

_DESCRIPTION = """\
Show what is installed and available: shitu-features, Python, PaddlePaddle and their versions, the devices
Paddle can use, the model cache (location and contents), and the model card of the official models (names,
aliases, embedding size, preprocessing, download artifacts). With MODEL, show that model's card instead: for an
official name from the registry (nothing is downloaded); for a local directory or checkpoint, by loading it."""

_EPILOG = """\
examples:
  shitu-features info
  shitu-features info PP-ShiTuV2_rec
  shitu-features info models/exp1 --format json"""


def add_parser(subparsers: Any) -> None:
    """Register ``info``."""
    parser = add_subcommand(subparsers, "info", help="versions, devices, cache and model card",
                            description=_DESCRIPTION, epilog=_EPILOG, run=run)
    parser.add_argument("model", nargs="?", metavar="MODEL", help="official name, inference directory or .pdparams")
    parser.add_argument("--format", choices=("text", "json"), default="text", help="output on stdout")


def run(args: argparse.Namespace) -> int:
    """Run ``info``."""
    models = [_card(args)] if args.model else _official_cards()  # first: an unknown name fails before Paddle loads
    report = {"environment": _environment(), "devices": _devices(), "cache": _cache(), "models": models}
    print(json.dumps(report, indent=2) if args.format == "json" else _render(report))
    return 0


def _environment() -> dict[str, str]:
    from shitu_features._version import __version__

    versions = {"shitu-features": __version__, "python": platform.python_version(), "platform": platform.platform()}
    for module, label in (("paddle", "paddlepaddle"), ("numpy", "numpy"), ("cv2", "opencv")):
        try:
            versions[label] = __import__(module).__version__
        except Exception as exc:  # a broken install is exactly what `info` should show, not crash on
            versions[label] = f"unavailable ({type(exc).__name__}: {exc})"
    return versions


def _devices() -> dict[str, Any]:
    try:
        import paddle

        cuda = bool(paddle.device.is_compiled_with_cuda())
        gpus = int(paddle.device.cuda.device_count()) if cuda else 0
    except Exception as exc:
        return {"cpu": True, "gpu": f"unknown ({type(exc).__name__}: {exc})"}
    from shitu_features.inference.predictor import cpu_bf16_support, physical_cpu_count

    gpu = f"{gpus} visible" if cuda else "no (this PaddlePaddle is built without CUDA)"
    bf16, bf16_native = cpu_bf16_support()
    return {"cpu": True, "cpu_physical_cores": physical_cpu_count(), "cpu_bf16": bf16,
            "cpu_bf16_native": bf16_native, "gpu_compiled": cuda, "gpu_count": gpus, "gpu": gpu}


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def _cache() -> dict[str, Any]:
    from shitu_features.inference import hub

    home = hub.cache_home()
    env = "SHITU_FEATURES_HOME" if os.environ.get(hub.ENV_HOME, "").strip() else "default"
    entries = []
    if home.is_dir():
        for top in sorted(p for p in home.iterdir() if not p.name.startswith(".")):
            children = sorted(c for c in top.iterdir() if not c.name.startswith(".")) if top.is_dir() else [top]
            for child in children:
                entries.append({"path": str(child.relative_to(home)), "bytes": _size(child)})
    return {"location": str(home), "set_by": env, "exists": home.is_dir(), "offline": hub.is_offline(),
            "entries": entries, "total_bytes": sum(e["bytes"] for e in entries)}


def _official_cards() -> list[dict[str, Any]]:
    from shitu_features.inference.registry import OFFICIAL_MODELS

    return [_official_card(model) for model in OFFICIAL_MODELS.values()]


def _official_card(model: Any) -> dict[str, Any]:
    import dataclasses

    return {
        "name": model.name, "aliases": list(model.aliases), "embedding_size": model.embedding_size,
        "input_size": model.input_size, "description": model.description, "license": model.license,
        "preprocessing": dataclasses.asdict(model.preprocessing),
        "artifacts": [{"format": a.format, "url": a.url, "sha256": a.sha256, "sha256_source": a.sha256_source,
                       "description": a.description} for a in model.artifacts],
    }


def _card(args: argparse.Namespace) -> dict[str, Any]:
    from shitu_features.inference.registry import resolve_official

    if not os.path.exists(args.model):
        return _official_card(resolve_official(args.model))  # UnknownModelError lists the names
    ns = argparse.Namespace(model=args.model, device="cpu", num_threads=1, cache_dir=None, offline=True)
    extractor = load_extractor(ns)
    directory = extractor.model_dir
    files = sorted(p.name for p in directory.iterdir()) if directory is not None else []
    return {"name": extractor.name, "path": os.path.abspath(args.model), "embedding_size": extractor.embedding_size,
            "input_size": list(extractor.input_size), "model_dir": str(directory), "files": files,
            "preprocessing": extractor.preprocess_config.model_dump(mode="json")}


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _bf16_words(dev: dict[str, Any]) -> str:
    if dev.get("cpu_bf16_native"):
        return "native (AMX / AVX512-BF16)"
    return "emulated, slower than fp32" if dev.get("cpu_bf16") else "not supported"


def _render(report: dict[str, Any]) -> str:
    env, dev, cache = report["environment"], report["devices"], report["cache"]
    lines = [f"shitu-features {env['shitu-features']}",
             f"  python {env['python']} on {env['platform']} ({sys.executable})",
             f"  paddlepaddle {env['paddlepaddle']}, numpy {env['numpy']}, opencv {env['opencv']}",
             "devices",
             f"  cpu: yes ({dev.get('cpu_physical_cores', '?')} physical cores; precision='bf16' "
             f"{_bf16_words(dev)})",
             f"  gpu: {dev['gpu']}",
             f"cache: {cache['location']} ({'from ' + cache['set_by'] if cache['set_by'] != 'default' else 'default'}"
             f"{', offline mode' if cache['offline'] else ''})"]
    if not cache["entries"]:
        lines.append("  (empty)" if cache["exists"] else "  (not created yet)")
    for entry in cache["entries"]:
        lines.append(f"  {_mb(entry['bytes']):>10}  {entry['path']}")
    if cache["entries"]:
        lines.append(f"  {_mb(cache['total_bytes']):>10}  total")
    for card in report["models"]:
        lines.append(f"model: {card['name']}")
        if card.get("aliases"):
            lines.append(f"  aliases: {', '.join(card['aliases'])}")
        size = card["input_size"]
        size = f"{size}x{size}" if isinstance(size, int) else "x".join(map(str, size))
        lines.append(f"  embedding size: {card['embedding_size']}, input {size}")
        for key in ("description", "license", "path", "model_dir"):
            if card.get(key):
                lines.append(f"  {key.replace('_', ' ')}: {card[key]}")
        if card.get("files"):
            lines.append(f"  files: {', '.join(card['files'])}")
        for art in card.get("artifacts", []):
            lines.append(f"  artifact ({art['format']}): {art['url']}")
            lines.append(f"    sha256: {art['sha256'] or 'not published'}"
                         + (f" [{art['sha256_source']}]" if art.get("sha256_source") else ""))
    return "\n".join(lines)
