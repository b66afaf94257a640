"""Shared test fixtures: where the golden reference fixtures and real datasets live.

The reference fixtures are used in place at ``../shared/reference`` (relative to the repository root),
or wherever ``SHITU_FEATURES_REFERENCE`` points. The datasets are at ``../shared/data`` or
``SHITU_FEATURES_DATA``. When they are absent the tests that need them skip, unless
``SHITU_FEATURES_REQUIRE_FIXTURES=1`` (set by ``.ci/run``): then absence is a failure, so a wrong path can
never turn the parity tests green by skipping.

Network: every test runs with ``NO_PROXY``/``no_proxy`` covering loopback (inherited by subprocesses that copy
``os.environ``), and tests that need a server use the ``loopback_server`` fixture (``tests/_http_server.py``).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from _http_server import LoopbackServer

REPO_ROOT = Path(__file__).resolve().parents[1]


def _require_fixtures() -> bool:
    return os.environ.get("SHITU_FEATURES_REQUIRE_FIXTURES", "") not in ("", "0", "false", "False")


def _shared_dir(env_var: str, default: Path, what: str) -> Path:
    path = Path(os.environ.get(env_var) or default)
    if not path.is_dir():
        msg = f"{what} not found at {path} (set {env_var} to their location)"
        if _require_fixtures():
            pytest.fail(msg + "; SHITU_FEATURES_REQUIRE_FIXTURES is set, so this is an error", pytrace=False)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The golden fixtures folder (``../shared/reference``)."""
    return _shared_dir("SHITU_FEATURES_REFERENCE", REPO_ROOT.parent / "shared" / "reference", "reference fixtures")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real datasets folder (``../shared/data``)."""
    return _shared_dir("SHITU_FEATURES_DATA", REPO_ROOT.parent / "shared" / "data", "shared datasets")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never touch the user's cache or the network from a test: a fresh cache home, offline hub."""
    monkeypatch.setenv("SHITU_FEATURES_HOME", str(tmp_path_factory.mktemp("shitu_home")))
    for var in ("SHITU_FEATURES_OFFLINE", "SHITU_FEATURES_ENDPOINT", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    # A proxy configured on the machine must not intercept loopback traffic (the test servers below).
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def _load_http_helper() -> ModuleType:
    # pytest runs with --import-mode=importlib (tests/ is not on sys.path), so the helper is loaded by path.
    name = "_http_server"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("_http_server.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look the module up while the class body runs
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def loopback_server() -> Iterator[LoopbackServer]:
    """A started :class:`_http_server.LoopbackServer` on 127.0.0.1 (free port), stopped after the test.

    ``add(path, body, ...)`` serves bytes (optionally truncated, delayed or with another status), ``hits[path]``
    and ``requests`` count what was fetched, ``stop()`` takes it down early (idempotent).
    """
    with _load_http_helper().LoopbackServer() as server:
        yield server
