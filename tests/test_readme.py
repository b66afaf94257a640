"""The README's commands and quick start do what the README says, and the docs' links resolve.

The official model is replaced by the fixture weights served from a loopback mirror
(``SHITU_FEATURES_ENDPOINT``) at the official file's path, so "downloaded once, then cached" is exercised for real,
without the internet.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

if TYPE_CHECKING:
    from _http_server import LoopbackServer  # tests/_http_server.py, served by conftest's loopback_server

REPO_ROOT = Path(__file__).resolve().parents[1]
README = REPO_ROOT / "README.md"
TEST_COMMAND = 'python -m pip install -e ".[test]" && python -m pytest'
MAIN_JOB = "python3 -m pip install . && python3 examples/embed_folder.py"
# Path of the first official artifact (inference/registry.py); the mirror keeps the path, replaces the host.
OFFICIAL_PATH = "paddlex/official_inference_model/paddle3.0.0/PP-ShiTuV2_rec_infer.tar"


def _code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def _section(text: str, heading: str) -> str:
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def test_setup_commands() -> None:
    text = README.read_text(encoding="utf-8")
    blocks = [b.strip() for b in _code_blocks(_section(text, "Set-up commands"), "bash")]
    assert blocks == [MAIN_JOB, TEST_COMMAND]
    ci = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert TEST_COMMAND in ci.splitlines(), ".ci/run must run exactly the README's test command"
    assert (REPO_ROOT / "examples" / "embed_folder.py").is_file()


@pytest.fixture()
def mirror(reference_dir: Path, tmp_path: Path, loopback_server: LoopbackServer) -> LoopbackServer:
    """The loopback server holding the fixture model (legacy format) as the official tarball, at its path."""
    tar_path = tmp_path / "mirror" / Path(OFFICIAL_PATH).name
    tar_path.parent.mkdir(parents=True)
    with tarfile.open(tar_path, "w") as tar:
        for name in ("inference.pdmodel", "inference.pdiparams", "inference.pdiparams.info"):
            tar.add(reference_dir / "legacy_infer" / name, arcname=f"PP-ShiTuV2_rec_infer/{name}")
    loopback_server.add(f"/{OFFICIAL_PATH}", tar_path.read_bytes())  # any other path: 404
    return loopback_server


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, GLOG_minloglevel="2", PYTHONIOENCODING="utf-8")  # SHITU_FEATURES_HOME: conftest's
    env.pop("SHITU_FEATURES_EXAMPLE_MODEL", None)
    env.update(extra)
    return env


@pytest.mark.slow
def test_main_job_downloads_once_then_runs_from_the_cache(mirror: LoopbackServer, tmp_path: Path) -> None:
    url = mirror.base_url
    command = [sys.executable, str(REPO_ROOT / "examples" / "embed_folder.py")]  # MAIN_JOB after the install
    first = subprocess.run(command, cwd=tmp_path, env=_env(SHITU_FEATURES_ENDPOINT=url), capture_output=True,
                           text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    assert mirror.requests == [f"/{OFFICIAL_PATH}"]                 # the official file, fetched once
    vectors = np.load(tmp_path / "embeddings.npy")
    assert vectors.shape == (18, 512) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)

    mirror.stop()                                                   # no network any more: the cache serves it
    (tmp_path / "embeddings.npy").unlink()
    second = subprocess.run(command, cwd=tmp_path, env=_env(SHITU_FEATURES_ENDPOINT=url), capture_output=True,
                            text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert len(mirror.requests) == 1
    np.testing.assert_array_equal(np.load(tmp_path / "embeddings.npy"), vectors)


def test_main_job_without_network_fails_fast_with_advice(tmp_path: Path) -> None:
    """No route to the model host (here: a closed loopback port as the mirror): a quick, helpful exit."""
    import socket
    import time

    with socket.socket() as sock:  # a port that nothing listens on once the socket is closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    start = time.monotonic()
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "examples" / "embed_folder.py")], cwd=tmp_path,
                          env=_env(SHITU_FEATURES_ENDPOINT=f"http://127.0.0.1:{port}"), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode != 0
    assert "could not fetch PP-ShiTuV2" in proc.stderr, proc.stderr[-3000:]
    assert "--model /path/to/PP-ShiTuV2_rec_infer" in proc.stderr
    assert time.monotonic() - start < 60
    assert not (tmp_path / "embeddings.npy").exists()


@pytest.mark.slow
def test_quick_start_runs(mirror: LoopbackServer, tmp_path: Path) -> None:
    import cv2

    sys.path.insert(0, str(REPO_ROOT / "examples"))
    try:
        from _sample_images import draw_sample
    finally:
        sys.path.remove(str(REPO_ROOT / "examples"))
    for name, label, seed in [("query", "red_circle", 7), ("cola", "red_circle", 1), ("tea", "blue_square", 1),
                              ("chips", "yellow_star", 1)]:
        assert cv2.imwrite(str(tmp_path / f"{name}.jpg"), draw_sample(label, size=128, seed=seed)[:, :, ::-1])
    code = _code_blocks(_section(README.read_text(encoding="utf-8"), "Quick start"), "python")[0]
    assert len([ln for ln in code.splitlines() if ln.strip()]) <= 10, "the quick start promises ten lines"
    url = mirror.base_url
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(SHITU_FEATURES_ENDPOINT=url),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    sims = np.array(lines[0].strip("[]").split(), dtype=np.float32)   # print(shelf @ query)
    assert sims.shape == (3,) and np.all(np.abs(sims) <= 1.0 + 1e-5)
    label, score = lines[1].split()                                 # print(labels[0], scores[0])
    assert label in {"cola", "tea", "chips"}
    assert float(score) == pytest.approx(float(sims.max()), abs=1e-5)  # the top hit is the most similar image
    assert label == ["cola", "tea", "chips"][int(np.argmax(sims))]
    assert mirror.requests == [f"/{OFFICIAL_PATH}"]


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces -> '-'."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    anchors = {_slug(m) for m in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}
    return anchors | set(re.findall(r'<a id="([^"]+)"', text))


def test_relative_links_in_readme_and_docs_resolve() -> None:
    broken = []
    for page in [README, *sorted((REPO_ROOT / "docs").glob("*.md"))]:
        text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target):  # http(s):, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            dest = (page.parent / file_part).resolve() if file_part else page
            if not dest.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, "\n".join(broken)
