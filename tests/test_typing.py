"""The public API type-checks with mypy (config: ``[tool.mypy]`` in pyproject.toml), and client code sees its types.

Scope: ``src/shitu_features/__init__.py`` as configured. mypy reports errors only in the files it is given, so
the modules behind the API are exercised through a client snippet that uses them; a deliberately wrong snippet
must be rejected, which proves mypy resolves the package's own annotations rather than treating it as ``Any``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow  # mypy's first, uncached run takes ~15-20 s

GOOD_CLIENT = '''
from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

import shitu_features
from shitu_features import EmbedResult, Extractor, Gallery, PreprocessConfig, retrieval_metrics
from shitu_features.errors import OfflineError, ShituFeaturesError


def embed_paths(paths: list[Path]) -> npt.NDArray[np.float32]:
    try:
        extractor = Extractor.from_pretrained("PP-ShiTuV2", device="cpu", local_files_only=True, num_threads=2)
    except OfflineError as exc:
        raise SystemExit(str(exc)) from exc
    size: int = extractor.embedding_size
    config: PreprocessConfig = extractor.preprocess_config
    result = extractor.embed(paths, batch_size=16, on_error="skip")
    assert isinstance(result, EmbedResult) and size > 0 and config is not None
    return result.embeddings


def search(vectors: npt.NDArray[np.float32], labels: list[str]) -> float:
    gallery = Gallery(dim=vectors.shape[1])
    gallery.add(vectors, labels=labels)
    scores, found, ids = gallery.search(vectors[:1], k=3)
    gallery.save("g.gallery")
    metrics = retrieval_metrics(vectors, np.array(labels), vectors, np.array(labels), topk=(1, 5))
    return float(metrics["recall@1"]) + float(scores.max())


version: str = shitu_features.__version__
caught: type[Exception] = ShituFeaturesError
'''

BAD_CLIENT = '''
from shitu_features import Extractor, Gallery

Extractor.from_pretrained(device=3)          # device is a str
Gallery(dim="512")                           # dim is an int
n: str = Extractor.from_pretrained().embedding_size
'''


def run_mypy(*files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mypy", *map(str, files)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)


def test_mypy_passes_on_the_public_api() -> None:
    pytest.importorskip("mypy", reason="pip install -e '.[test]' installs mypy")
    proc = run_mypy()  # the files of [tool.mypy]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Success: no issues found" in proc.stdout


def test_client_code_type_checks_and_wrong_calls_are_caught(tmp_path: Path) -> None:
    pytest.importorskip("mypy", reason="pip install -e '.[test]' installs mypy")
    good, bad = tmp_path / "good_client.py", tmp_path / "bad_client.py"
    good.write_text(GOOD_CLIENT, encoding="utf-8")
    bad.write_text(BAD_CLIENT, encoding="utf-8")
    proc = run_mypy(good)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = run_mypy(bad)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    errors = [line for line in proc.stdout.splitlines() if ": error:" in line]
    assert [int(line.split(":")[1]) for line in errors] == [4, 5, 6], proc.stdout


def test_embed_result_type_follows_on_error(tmp_path: Path) -> None:
    pytest.importorskip("mypy", reason="pip install -e '.[test]' installs mypy")
    client = tmp_path / "client.py"
    client.write_text("from shitu_features import Extractor\n"
                      "vecs = Extractor.from_pretrained().embed(['a.jpg', 'b.jpg'])\n"
                      "sims = vecs @ vecs.T\n"
                      "res = Extractor.from_pretrained().embed(['a.jpg'], on_error='skip')\n"
                      "print(res.failed, res.embeddings.shape)\n", encoding="utf-8")
    proc = run_mypy(client)
    assert proc.returncode == 0, proc.stdout
