"""``shitu-features``: help, exit codes, error lines, and the eval / gallery / info / export / train commands."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from shitu_features import __version__
from shitu_features.cli import main

from .conftest import RUN_OPTS, WholeRun, run_cli

SUBCOMMANDS = (["embed"], ["eval"], ["gallery"], ["gallery", "build"], ["gallery", "search"], ["export"],
               ["train"], ["info"])


def _one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("shitu-features: error: "), stderr
    return lines[0]


# --------------------------------------------------------------------------------------------- usage (no Paddle)


def test_help_of_the_tool_and_of_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    top = run_cli("--help")  # the installed console script
    assert top.returncode == 0 and top.stderr == ""
    for name in ("embed", "eval", "gallery", "export", "train", "info", "examples:", "exit codes"):
        assert name in top.stdout
    for sub in SUBCOMMANDS:  # in-process: the same main(), without paying for a process per page
        assert main([*sub, "--help"]) == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: shitu-features {' '.join(sub)}")
        assert "examples:" in out and f"shitu-features {sub[0]}" in out.split("examples:")[1]
        assert "(default: True)" not in out and "(default: False)" not in out  # flags show no default


def test_version_through_python_dash_m() -> None:
    result = run_cli("--version", module=True)
    assert result.returncode == 0 and result.stdout.strip() == f"shitu-features {__version__}"


def test_usage_error_of_the_console_script_exits_2() -> None:
    result = run_cli("embed", "x.jpg")
    assert result.returncode == 2 and result.stdout == ""
    assert "usage: shitu-features embed" in result.stderr and "-o/--output" in result.stderr


@pytest.mark.parametrize("argv, fragment", [
    ([], "required: COMMAND"),
    (["embed", "x.jpg", "-o", "o", "--shard", "2/2"], "--shard"),
    (["embed", "x.jpg", "-o", "o", "--shard", "one/two"], "expected I/N"),
    (["embed", "x.jpg", "-o", "o", "--resume", "--restart"], "not allowed with"),
    (["embed", "x.jpg", "-o", "o", "--batch-size", "0"], "positive integer"),
    (["gallery"], "ACTION"),
    (["frobnicate"], "invalid choice"),
])
def test_usage_errors_exit_2(argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "usage: shitu-features" in captured.err and fragment in captured.err


def test_user_errors_exit_1_with_one_line_and_no_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    missing = run_cli("embed", str(tmp_path / "nothing"), "-o", str(tmp_path / "out"))
    assert missing.returncode == 1 and missing.stdout == ""
    assert "no such file or directory" in _one_error_line(missing.stderr)
    debug = run_cli("embed", str(tmp_path / "nothing"), "-o", str(tmp_path / "out"), "--debug")
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
    assert "ImageNotFoundError" in debug.stderr

    # The same main() in-process for the other cases (the environment it sets is restored by monkeypatch).
    monkeypatch.setenv("GLOG_minloglevel", "2")
    monkeypatch.setenv("OPENCV_LOG_LEVEL", "FATAL")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.md").write_text("not an image")
    assert main(["embed", str(tmp_path / "empty"), "-o", str(tmp_path / "out")]) == 1
    assert "no images in directory" in _one_error_line(capsys.readouterr().err)
    bad_list = tmp_path / "list.txt"
    bad_list.write_text("a.jpg 1 2 3\n")
    assert main(["embed", f"@{bad_list}", "-o", str(tmp_path / "out")]) == 1
    assert f"{bad_list}:1" in _one_error_line(capsys.readouterr().err)
    assert main(["eval", "--query", str(tmp_path / "absent.txt")]) == 1
    assert "list file not found" in _one_error_line(capsys.readouterr().err)


def test_corrupt_gallery_file_is_a_one_line_error(tmp_path: Path) -> None:
    fake = tmp_path / "shop.gallery"
    fake.write_bytes(b"SHITUGAL" + b"\0" * 40)
    result = run_cli("gallery", "search", str(fake), "x.jpg")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert str(fake) in _one_error_line(result.stderr)
    absent = run_cli("gallery", "search", str(tmp_path / "absent.gallery"), "x.jpg")
    assert absent.returncode == 1 and "gallery file not found" in _one_error_line(absent.stderr)


# --------------------------------------------------------------------------------------------- commands with a model


def test_eval_matches_retrieval_metrics_on_the_same_embeddings(whole_run: WholeRun, model_dir: Path,
                                                               cli_home: Path, tmp_path: Path) -> None:
    from shitu_features.evaluation import retrieval_metrics

    paths = whole_run.path_list
    subjects = [Path(p).parent.name for p in paths]
    listing = tmp_path / "val.txt"  # query == gallery, with the row number as unique id (spec §6)
    listing.write_text("".join(f"{os.path.abspath(whole_run.workdir / p)} {s[1:]} {i}\n"
                               for i, (p, s) in enumerate(zip(paths, subjects))))
    result = run_cli("eval", "--query", str(listing), "--model", str(model_dir), "--topk", "1", "3",
                     "--format", "json", *RUN_OPTS[:2], cwd=tmp_path, home=cli_home)
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    labels = np.array([int(s[1:]) for s in subjects])
    ids = np.arange(len(paths))
    expected = retrieval_metrics(whole_run.vectors, labels, whole_run.vectors, labels, topk=(1, 3),
                                 query_cameras=ids, gallery_cameras=ids)
    for key in ("recall@1", "recall@3", "mAP"):
        assert got[key] == pytest.approx(expected[key], abs=1e-6)
    assert got["num_queries"] == len(paths) and got["num_valid_queries"] == len(paths)



def test_eval_table_lists_each_metric_then_the_counts() -> None:
    import argparse

    from shitu_features.cli.evaluate import _table

    result = {"recall@1": 0.5, "recall@5": 0.75, "mAP": float("nan"), "num_queries": 10, "num_valid_queries": 8,
              "num_excluded_queries": 2, "num_gallery": 12, "skipped_query_images": 1, "skipped_gallery_images": 0,
              "model": "m"}
    lines = _table(result, argparse.Namespace(reference_compat=True)).splitlines()
    assert lines[:4] == ["metric    value", "recall@1  0.5000", "recall@5  0.7500", "mAP       nan"]
    assert "queries: 10 (8 with a match in the gallery, 2 without); gallery: 12 images" in lines[5]
    assert lines[6:] == ["unreadable images left out: 1", "numbers computed as PaddleClas does (--reference-compat)"]


@pytest.mark.slow
def test_gallery_build_and_search(whole_run: WholeRun, model_dir: Path, cli_home: Path, tmp_path: Path) -> None:
    catalogue = tmp_path / "catalogue"
    shutil.copytree(whole_run.workdir / "faces", catalogue)
    gallery = tmp_path / "faces.gallery"
    build = run_cli("gallery", "build", str(catalogue), "-o", str(gallery), "--model", str(model_dir),
                    *RUN_OPTS[:2], cwd=tmp_path, home=cli_home)
    assert build.returncode == 0, build.stderr
    assert "32 items, 8 labels, 512-d" in build.stderr

    queries = [catalogue / "s3" / "2.pgm", catalogue / "s7" / "4.pgm"]
    search = run_cli("gallery", "search", str(gallery), *map(str, queries), "-k", "3", "--format", "json",
                     "--model", str(model_dir), cwd=tmp_path, home=cli_home)
    assert search.returncode == 0, search.stderr
    results = json.loads(search.stdout)
    assert [r["query"] for r in results] == list(map(str, queries))
    for query, result in zip(queries, results):
        hits = result["results"]
        assert [h["rank"] for h in hits] == [1, 2, 3]
        scores = [h["score"] for h in hits]
        assert scores == sorted(scores, reverse=True)
        # An image that is in the gallery finds itself first, with its folder as label and cosine ~1.
        assert hits[0]["path"] == str(query) and hits[0]["label"] == query.parent.name
        assert hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
        # Every hit carries its own item's path (metadata is looked up for all rows at once).
        assert all(Path(h["path"]).parent.name == h["label"] for h in hits)
        assert len({h["path"] for h in hits}) == len(hits)



def test_gallery_search_table_and_tsv_rendering() -> None:
    from shitu_features.cli.gallery import _render

    results = [{"query": "q1.jpg", "results": [
        {"rank": 1, "label": "apple", "score": 0.93124, "id": 12, "path": "cat/apple/3.jpg"},
        {"rank": 2, "label": 7, "score": 0.5, "id": 40, "path": None}]},
        {"query": "q2.jpg", "results": []}]
    assert _render(results, "table").splitlines() == [
        "q1.jpg", "   1  0.9312  apple  id 12  cat/apple/3.jpg", "   2  0.5000  7      id 40",
        "q2.jpg", "  (no result above the threshold)"]
    assert _render(results, "tsv").splitlines() == [
        "query\trank\tlabel\tscore\tid\tpath", "q1.jpg\t1\tapple\t0.931240\t12\tcat/apple/3.jpg",
        "q1.jpg\t2\t7\t0.500000\t40\t"]


def test_info_reports_versions_devices_cache_and_model_card(model_dir: Path, cli_home: Path) -> None:
    import paddle

    result = run_cli("info", "--format", "json", home=cli_home)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["environment"]["shitu-features"] == __version__
    assert info["environment"]["paddlepaddle"] == paddle.__version__
    assert info["devices"]["cpu"] is True and info["devices"]["gpu_compiled"] == paddle.device.is_compiled_with_cuda()
    from paddle.base import core

    assert info["devices"]["cpu_bf16"] == core.supports_bfloat16()
    assert info["devices"]["cpu_bf16_native"] == core.supports_bfloat16_fast_performance()
    assert info["cache"]["location"] == str(cli_home) and info["cache"]["set_by"] == "SHITU_FEATURES_HOME"
    card = info["models"][0]
    assert card["name"] == "PP-ShiTuV2" and "PP-ShiTuV2_rec" in card["aliases"] and card["embedding_size"] == 512
    assert card["artifacts"] and all(a["url"].startswith("https://") for a in card["artifacts"])

    local = run_cli("info", str(model_dir), home=cli_home)
    assert local.returncode == 0, local.stderr
    assert "precision='bf16' " in local.stdout  # says whether the CPU runs bf16 natively
    assert "embedding size: 512, input 224x224" in local.stdout and "inference.json" in local.stdout

    unknown = run_cli("info", "PP-ShiTuV3", home=cli_home)
    assert unknown.returncode == 1 and "PP-ShiTuV2" in _one_error_line(unknown.stderr)


def test_export_refuses_a_file_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pdparams"
    junk.write_bytes(b"\x80\x04this is not a pickle")
    result = run_cli("export", str(junk), "-o", str(tmp_path / "model"))
    assert result.returncode == 1 and str(junk) in _one_error_line(result.stderr)
    assert not (tmp_path / "model").exists()


def test_train_print_config_applies_overrides_and_names_bad_keys(tmp_path: Path) -> None:
    config = tmp_path / "train.yaml"
    config.write_text("schedule:\n  epochs: 12\n")
    result = run_cli("train", str(config), "optimizer.lr=0.01", "--print-config")
    assert result.returncode == 0, result.stderr
    import yaml

    resolved = yaml.safe_load(result.stdout)
    assert resolved["schedule"]["epochs"] == 12 and resolved["optimizer"]["lr"] == 0.01
    bad = run_cli("train", str(config), "optimizer.lrr=0.01", "--print-config")
    assert bad.returncode == 1 and "lrr" in _one_error_line(bad.stderr)


@pytest.mark.slow
def test_train_then_export_then_embed(data_dir: Path, tmp_path: Path, cli_home: Path) -> None:
    from .conftest import copy_faces

    copy_faces(data_dir, tmp_path / "faces", subjects=("s1", "s2", "s3", "s4"))
    (tmp_path / "tiny.yaml").write_text(
        "model: {pretrained: null, embedding_size: 32}\n"
        "data: {train: {format: folder, root: faces}, batch_size: 8, image_size: [64, 64], num_workers: 0}\n"
        "schedule: {epochs: 3, warmup_epochs: 0}\n"
        "output: {dir: run, export: false}\n"
        "runtime: {progress_bar: false}\n")
    train = run_cli("train", "tiny.yaml", "schedule.epochs=1", cwd=tmp_path, home=cli_home)
    assert train.returncode == 0, train.stderr
    assert "training finished: 1 epochs, 2 steps; checkpoints in run" in train.stderr
    assert "UserWarning" not in train.stderr
    checkpoint = tmp_path / "run" / "checkpoints" / "latest" / "model.pdparams"
    export = run_cli("export", str(checkpoint), "-o", "model32", "--name", "tiny", cwd=tmp_path, home=cli_home)
    assert export.returncode == 0, export.stderr
    assert "exported tiny (32-d" in export.stderr  # the width comes from the checkpoint
    embed = run_cli("embed", "faces/s1", "-o", "e.npz", "--model", "model32", cwd=tmp_path, home=cli_home)
    assert embed.returncode == 0, embed.stderr
    assert np.load(tmp_path / "e.npz")["embeddings"].shape == (4, 32)
