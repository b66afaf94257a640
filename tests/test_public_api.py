from __future__ import annotations

import subprocess
import sys

import shitu_features


def test_every_public_name_resolves() -> None:
    for name in shitu_features.__all__:
        assert getattr(shitu_features, name) is not None, name
    assert shitu_features.Extractor.__module__ == "shitu_features.inference.extractor"


def test_unknown_attribute_is_an_attribute_error() -> None:
    try:
        shitu_features.NoSuchThing  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("expected AttributeError")


def test_import_is_cheap_and_does_not_import_paddle() -> None:
    code = "import sys, shitu_features; print(shitu_features.__version__); assert 'paddle' not in sys.modules"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == shitu_features.__version__
