"""docs/api.md is generated from the docstrings by scripts/gen_api_docs.py and must be up to date."""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "scripts" / "gen_api_docs.py"
API_MD = REPO_ROOT / "docs" / "api.md"


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_api_docs", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_api_reference_is_up_to_date(gen: ModuleType) -> None:
    generated = gen.render()
    committed = API_MD.read_text(encoding="utf-8")
    assert committed == generated, "docs/api.md is out of date: run `python scripts/gen_api_docs.py` and commit it"


def test_every_public_name_has_an_entry(gen: ModuleType) -> None:
    text = API_MD.read_text(encoding="utf-8")
    missing = []
    for module_name in gen.MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            if f"`{module_name}.{name}`" not in text and f"- `{name}`: " not in text:
                missing.append(f"{module_name}.{name}")
    assert not missing, f"not in docs/api.md: {missing}"
    assert "shitu_features.Extractor" in text and "#### *classmethod* `Extractor.from_pretrained`" in text
    assert not re.search(r" at 0x[0-9a-fA-F]+", text)  # no object addresses leak into the page


def test_google_sections_become_markdown(gen: ModuleType) -> None:
    doc = '''Embed images.

    Args:
        images: paths or arrays,
            any number.
        batch_size: images per pass.

    Returns:
        ``float32 [N, 512]``.

    Example:
        >>> x = 1

    See :class:`~shitu_features.gallery.Gallery` and :func:`shitu_features.evaluation.retrieval_metrics`.
    '''
    md = gen.docstring_to_markdown(doc)
    assert "**Args**\n\n- `images`: paths or arrays, any number.\n- `batch_size`: images per pass." in md
    assert "**Returns**\n\n``float32 [N, 512]``." in md
    assert "```python\n>>> x = 1\n```" in md
    assert "See `Gallery` and `shitu_features.evaluation.retrieval_metrics`." in md


def test_check_mode_reports_a_stale_file(gen: ModuleType, tmp_path: Path) -> None:
    stale = tmp_path / "api.md"
    stale.write_text("# old\n", encoding="utf-8")
    assert gen.main(["--check", "-o", str(stale)]) == 1
    assert gen.main(["-o", str(stale)]) == 0
    assert gen.main(["--check", "-o", str(stale)]) == 0
