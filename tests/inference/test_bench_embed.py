"""The embedding benchmark's ``--smoke`` run: the only use of ``benchmarks/bench_embed.py`` in CI.

It runs the real script in a subprocess, on the session's export and eight real JPEGs, and checks the table and
the JSON report are complete and the batch-size / thread-count parity check passes. No timing is asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_embed.py"


@pytest.mark.slow
def test_bench_embed_smoke(exported_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    from shitu_features.inference.predictor import cpu_bf16_support

    bf16 = cpu_bf16_support()[1]  # the CI machine has AMX; elsewhere the bf16 rows are left out
    report_file = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", str(BENCH), "--smoke", "--model", str(exported_dir), "--images",
         str(data_dir / "grocery_store"), "--cache-dir", str(tmp_path / "cache"), "--json", str(report_file),
         *(["--bf16"] if bf16 else [])],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for part in ("forward only", "naive deploy loop", "Extractor.embed", "peak RSS", "cold start", "streaming",
                 "PASS", "8 JPEGs from"):
        assert part in out, f"{part!r} missing from the benchmark output:\n{out}"

    report = json.loads(report_file.read_text())
    rows = report["rows"]
    kinds = [("forward", "paddle"), ("naive", "paddle"), ("embed", "paddle")]
    kinds += [("forward", "bf16"), ("embed", "bf16")] if bf16 else []
    assert sorted((r["kind"], r["backend"], r["batch"]) for r in rows) == sorted(
        (kind, backend, batch) for kind, backend in kinds for batch in (1, 4))
    if bf16:
        assert "Extractor.embed (bf16)" in out and report["summary"]["bf16_embed_best"][0] > 0
    for row in rows:
        assert all(rate > 0 for rate in row["result"]["rates"]) and row["result"]["peak_rss"] > 0
        if row["kind"] == "embed":
            assert row["x_forward"] > 0 and row["x_naive"] > 0
    assert report["parity"]["max_abs_diff"] <= 1e-5 and report["parity"]["images"] == 8
    assert set(report["stream"]["rss"]) == {"16", "48"} and report["stream"]["images"] == 48
    cold = report["cold_start_paddle"]
    assert cold["import"] > 0 and cold["from_pretrained"] > 0 and cold["process_total"] >= cold["import"]
