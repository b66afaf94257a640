"""Release check: build the sdist and the wheel, install the wheel into a fresh venv, import it and embed.

Slow (about 1-2 minutes, mostly pip installing PaddlePaddle into the new venv from PyPI or the pip cache), so it
runs once, in CI. The fresh venv sees nothing of the development install: the smoke run happens from a temporary
folder with the venv's own interpreter, and checks that ``shitu_features`` comes from the venv's site-packages.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import tarfile
import venv
import zipfile
from email.parser import HeaderParser
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SRC = REPO_ROOT / "src" / "shitu_features"

pytestmark = pytest.mark.slow


def _version() -> str:
    text = (SRC / "_version.py").read_text(encoding="utf-8")
    match = re.search(r'__version__\s*=\s*"([^"]+)"', text)
    assert match, "src/shitu_features/_version.py must define __version__"
    return match.group(1)


def _run(cmd: list[str], timeout: float, **kwargs: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)  # type: ignore[call-overload]
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n" \
                                 f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The sdist and the wheel, built like a release: ``python -m build`` (the wheel is built from the sdist)."""
    out = tmp_path_factory.mktemp("dist")
    if importlib.util.find_spec("build") is not None:
        _run([sys.executable, "-m", "build", "--outdir", str(out), str(REPO_ROOT)], timeout=600)
    else:  # no `build` installed: pip can still build the wheel (no sdist then)
        _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(out), str(REPO_ROOT)], timeout=600)
    found = {"wheel": next(out.glob("shitu_features-*.whl"))}
    sdists = list(out.glob("shitu_features-*.tar.gz"))
    if sdists:
        found["sdist"] = sdists[0]
    return found


def test_wheel_contents_and_metadata(dists: dict[str, Path]) -> None:
    wheel = dists["wheel"]
    assert wheel.name == f"shitu_features-{_version()}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        metadata = HeaderParser().parsestr(zf.read(f"shitu_features-{_version()}.dist-info/METADATA").decode())
        entry_points = zf.read(f"shitu_features-{_version()}.dist-info/entry_points.txt").decode()
    assert "shitu_features/py.typed" in names
    source_modules = {p.relative_to(SRC.parent).as_posix() for p in SRC.rglob("*.py")}
    assert source_modules <= names, f"missing from the wheel: {sorted(source_modules - names)}"
    assert not [n for n in names if n.startswith(("tests/", "examples/", "docs/"))]
    assert metadata["Name"] == "shitu-features" and metadata["Version"] == _version()
    requires = " ".join(metadata.get_all("Requires-Dist") or [])
    assert "paddlepaddle" in requires and "numpy" in requires
    assert metadata["License-Expression"] == "Apache-2.0"
    assert "shitu-features = shitu_features.cli:main" in entry_points


def test_sdist_contents(dists: dict[str, Path]) -> None:
    if "sdist" not in dists:
        pytest.skip("built with pip wheel (the `build` package is not installed): no sdist")
    with tarfile.open(dists["sdist"]) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    for required in ("pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md", "src/shitu_features/py.typed",
                     "src/shitu_features/__init__.py", "examples/quickstart.ipynb", "tests/conftest.py"):
        assert required in names, f"{required} missing from the sdist"
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


SMOKE = r"""
import importlib.metadata, json, sys, pathlib
import numpy as np
import shitu_features
from shitu_features import Extractor

package = pathlib.Path(shitu_features.__file__).resolve().parent
vector = Extractor.from_pretrained(sys.argv[1]).embed(sys.argv[2])
print(json.dumps({
    "package": str(package),
    "version": shitu_features.__version__,
    "metadata_version": importlib.metadata.version("shitu-features"),
    "py_typed": (package / "py.typed").is_file(),
    "shape": list(vector.shape),
    "dtype": str(vector.dtype),
    "vector": vector.tolist(),
}))
"""


def test_wheel_installs_into_a_fresh_venv_and_embeds(dists: dict[str, Path], reference_dir: Path,
                                                     tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    bindir = env_dir / ("Scripts" if sys.platform == "win32" else "bin")
    python = bindir / "python"
    # Dependencies come from the package index (or pip's cache), exactly as for a user.
    _run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", str(dists["wheel"])],
         timeout=900)
    _run([str(python), "-m", "pip", "check"], timeout=120)

    model = reference_dir / "legacy_infer"                       # legacy inference model of the fixture weights
    image = reference_dir / "preprocess" / "img0_square.jpg"
    expected = np.load(reference_dir / "preprocess" / "expected_features_l2.npy")[0]
    work = tmp_path / "work"                                      # not the repository: src/ is not importable
    work.mkdir()
    env = {"PATH": str(bindir), "SHITU_FEATURES_HOME": str(tmp_path / "home"), "SHITU_FEATURES_OFFLINE": "1",
           "GLOG_minloglevel": "2", "HOME": str(tmp_path)}
    proc = _run([str(python), "-c", SMOKE, str(model), str(image)], timeout=300, cwd=work, env=env)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(result["package"]).is_relative_to(env_dir.resolve()), result["package"]
    assert result["version"] == result["metadata_version"] == _version()
    assert result["py_typed"]
    assert result["shape"] == [512] and result["dtype"] == "float32"
    assert np.abs(np.asarray(result["vector"], dtype=np.float32) - expected).max() <= 1e-5

    # The console script is installed and works from the venv.
    out = tmp_path / "feats.npy"
    _run([str(bindir / "shitu-features"), "-q", "embed", str(image), "-m", str(model), "-o", str(out)],
         timeout=300, cwd=work, env=env)
    np.testing.assert_allclose(np.load(out)[0], expected, atol=1e-5)
