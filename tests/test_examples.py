"""Every example script and the quick-start notebook run, offline, on the fixture weights.

The fixture checkpoint (``reference/model/rec_model.pdparams``, random weights) is exported once per session and
handed to the examples through ``SHITU_FEATURES_EXAMPLE_MODEL`` (an inference folder) and
``SHITU_FEATURES_EXAMPLE_CHECKPOINT`` (the ``.pdparams``). ``SHITU_FEATURES_OFFLINE=1`` guarantees no example
reaches for the official weights. The fixture weights are untrained, so outputs are checked for form and
consistency (shapes, unit norms, numbers in range), not for retrieval quality.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = REPO_ROOT / "examples"


@pytest.fixture(scope="session")
def fixture_checkpoint(reference_dir: Path) -> Path:
    return reference_dir / "model" / "rec_model.pdparams"


@pytest.fixture(scope="session")
def example_model(fixture_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture checkpoint exported once as an inference folder (what a user would download)."""
    from shitu_features import build_rec_model, load_checkpoint, load_state_dict
    from shitu_features.inference.export import export_inference_model

    state = {k: v for k, v in load_state_dict(fixture_checkpoint).items() if not k.startswith("head.")}
    model = build_rec_model(None)
    load_checkpoint(model, state)
    return export_inference_model(model, tmp_path_factory.mktemp("example_model") / "model")


@pytest.fixture()
def example_env(example_model: Path, fixture_checkpoint: Path) -> dict[str, str]:
    env = dict(os.environ)  # carries the per-test SHITU_FEATURES_HOME of conftest
    env.update(SHITU_FEATURES_EXAMPLE_MODEL=str(example_model),
               SHITU_FEATURES_EXAMPLE_CHECKPOINT=str(fixture_checkpoint),
               SHITU_FEATURES_OFFLINE="1", GLOG_minloglevel="2", PYTHONIOENCODING="utf-8")
    return env


def run_example(script: str, args: list[str], env: dict[str, str], cwd: Path,
                timeout: float = 300) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{script} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc


# Every example script (examples/*.py not starting with "_") must have a test below, listed here.
COVERED = {"embed_folder.py", "search_gallery.py", "finetune.py", "export_and_serve.py", "train_ddp.py"}


def test_every_example_script_is_exercised() -> None:
    scripts = {p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("_")}
    assert scripts == COVERED, f"add a test for: {sorted(scripts - COVERED)}; stale: {sorted(COVERED - scripts)}"


def test_embed_folder(example_env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "out" / "feats.npy"
    proc = run_example("embed_folder.py", ["-o", str(out)], example_env, tmp_path)
    vectors = np.load(out)
    paths = (tmp_path / "out" / "feats.npy.paths.txt").read_text(encoding="utf-8").splitlines()
    assert vectors.dtype == np.float32 and vectors.shape == (18, 512)      # 6 classes x 3 generated images
    assert len(paths) == 18 and all(p.endswith(".png") for p in paths)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert "embedded 18 of 18 images" in proc.stdout


def test_embed_folder_on_a_user_folder_skips_bad_files(example_env: dict[str, str], tmp_path: Path) -> None:
    sys.path.insert(0, str(EXAMPLES))
    try:
        from _sample_images import make_sample_dataset
    finally:
        sys.path.remove(str(EXAMPLES))
    make_sample_dataset(tmp_path / "photos", per_class=1, classes=["red_circle", "blue_square"], size=64)
    (tmp_path / "photos" / "broken.jpg").write_bytes(b"not a jpeg")
    proc = run_example("embed_folder.py", ["photos", "-o", "e.npy"], example_env, tmp_path)
    assert np.load(tmp_path / "e.npy").shape == (2, 512)
    assert "skipped" in proc.stdout and "broken.jpg" in proc.stdout
    assert "embedded 2 of 3 images" in proc.stdout


def test_embed_folder_offline_without_weights_fails_fast_with_advice(tmp_path: Path) -> None:
    """The README's main-job command, with no network and no cached model: a quick exit that says what to do."""
    env = dict(os.environ, SHITU_FEATURES_OFFLINE="1", GLOG_minloglevel="2")
    env.pop("SHITU_FEATURES_EXAMPLE_MODEL", None)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, str(EXAMPLES / "embed_folder.py")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    assert "offline" in proc.stderr.lower() and "--model /path/to/PP-ShiTuV2_rec_infer" in proc.stderr
    assert elapsed < 60, f"took {elapsed:.0f} s to fail"
    assert not (tmp_path / "embeddings.npy").exists()


def test_search_gallery_prints_recall(example_env: dict[str, str], tmp_path: Path) -> None:
    proc = run_example("search_gallery.py", [], example_env, tmp_path)
    assert "gallery: 18 images of 6 labels; 6 queries" in proc.stdout
    match = re.search(r"Recall@1: ([0-9.]+)\s+Recall@3: ([0-9.]+)\s+mAP: ([0-9.]+)", proc.stdout)
    assert match, proc.stdout
    r1, r3, ap = map(float, match.groups())
    assert 0.0 <= r1 <= r3 <= 1.0 and 0.0 < ap <= 1.0
    # Recall@1 is the share of "ok" lines among the 6 queries: the printed table and the metric agree.
    assert r1 == pytest.approx(proc.stdout.count(": ok ") / 6)


@pytest.mark.slow
def test_finetune(example_env: dict[str, str], tmp_path: Path) -> None:
    proc = run_example("finetune.py", ["-o", "run", "--steps-per-epoch", "2"], example_env, tmp_path)
    match = re.search(r"epoch 1: loss ([0-9.]+), Recall@1 ([0-9.]+)", proc.stdout)
    assert match, proc.stdout
    assert np.isfinite(float(match.group(1))) and 0.0 <= float(match.group(2)) <= 1.0
    assert "exported inference/: input (64, 64), embedding (512,) float32" in proc.stdout
    assert (tmp_path / "run" / "inference" / "inference.pdiparams").is_file()
    assert json.loads((tmp_path / "run" / "inference" / "label_map.json").read_text())  # 6 classes recorded


@pytest.mark.slow
def test_export_and_serve_self_test(example_env: dict[str, str], tmp_path: Path) -> None:
    proc = run_example("export_and_serve.py", ["-o", "exported", "--self-test"], example_env, tmp_path)
    assert "self-test passed" in proc.stdout
    assert "bad image -> HTTP 400" in proc.stdout
    assert {"inference.json", "inference.pdiparams"} <= {p.name for p in (tmp_path / "exported").iterdir()}


@pytest.mark.slow
def test_train_ddp_single_process(example_env: dict[str, str], fixture_checkpoint: Path, tmp_path: Path) -> None:
    sys.path.insert(0, str(EXAMPLES))
    try:
        from _sample_images import make_sample_dataset
    finally:
        sys.path.remove(str(EXAMPLES))
    make_sample_dataset(tmp_path / "data", per_class=2, classes=["red_circle", "blue_square", "yellow_star"],
                        size=64)
    config = {
        "model": {"pretrained": str(fixture_checkpoint)},
        "data": {"train": {"format": "folder", "root": str(tmp_path / "data")}, "batch_size": 4,
                 "sample_per_id": 2, "image_size": [64, 64], "num_workers": 0},
        "schedule": {"epochs": 1, "warmup_epochs": 0, "iters_per_epoch": 1},
        "output": {"dir": str(tmp_path / "run"), "export": False},   # export is covered by test_finetune
        "runtime": {"progress_bar": False},
    }
    (tmp_path / "train.yaml").write_text(json.dumps(config), encoding="utf-8")   # JSON is YAML
    proc = run_example("train_ddp.py", ["--config", "train.yaml"], example_env, tmp_path)
    assert "done:" in proc.stderr + proc.stdout
    assert (tmp_path / "run" / "checkpoints" / "latest").is_dir()
    assert (tmp_path / "run" / "config.yaml").is_file()


@pytest.mark.slow
def test_quickstart_notebook_executes(example_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat", reason="pip install -e '.[test]' installs nbformat/nbclient")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("SHITU_FEATURES_EXAMPLE_MODEL", str(example_model))
    monkeypatch.setenv("SHITU_FEATURES_OFFLINE", "1")
    monkeypatch.setenv("GLOG_minloglevel", "2")
    notebook = nbformat.read(EXAMPLES / "quickstart.ipynb", as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), \
        "commit the notebook without outputs"
    client = nbclient.NotebookClient(notebook, timeout=180, kernel_name="python3",
                                     resources={"metadata": {"path": str(EXAMPLES)}})
    client.execute()   # raises CellExecutionError naming the cell when one fails
    text = "\n".join(out.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                     for out in cell.outputs)
    assert "(512,) float32 (24, 512)" in text
    assert re.search(r"'recall@1': [0-9.]+", text)
