from __future__ import annotations

import json
from pathlib import Path


def test_reference_fixtures_are_present_and_complete(reference_dir: Path) -> None:
    manifest = json.loads((reference_dir / "MANIFEST.json").read_text())
    missing = [name for name in manifest["files"] if not (reference_dir / name).is_file()]
    assert missing == []
    assert (reference_dir / "model" / "rec_model.pdparams").stat().st_size > 1_000_000
