"""``shitu-features embed``: outputs, kill + resume, sharding, skipping unreadable files (real console script)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from .conftest import RUN_OPTS, SUBJECTS, WholeRun, cli_env, command, run_cli


def test_whole_run_outputs(whole_run: WholeRun) -> None:
    vectors, paths = whole_run.vectors, whole_run.path_list
    assert vectors.dtype == np.float32 and vectors.shape == (len(SUBJECTS) * 4, 512)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # Directory inputs expand recursively, sorted by path, relative to the working directory as given.
    assert paths == sorted(paths) and paths[0] == os.path.join("faces", "s1", "1.pgm")
    assert len(set(map(bytes, vectors))) == len(paths)  # distinct images, distinct rows
    assert not (whole_run.workdir / "out" / "whole.npy.partial").exists()  # cleaned up after success


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_kill_then_resume_is_byte_identical(whole_run: WholeRun, model_dir: Path, cli_home: Path,
                                            tmp_path: Path) -> None:
    workdir = tmp_path
    shutil.copytree(whole_run.workdir / "faces", workdir / "faces")
    args = ["embed", "faces", "-o", "out/feats", "--model", str(model_dir), *RUN_OPTS]
    parts = workdir / "out" / "feats.npy.partial"
    proc = subprocess.Popen(command(*args), cwd=workdir, env=cli_env(cli_home), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(list(parts.glob("chunk-*.json"))) < 2:  # two chunks (4 images) committed: kill it now
            assert proc.poll() is None, "embed exited before it could be interrupted"
            assert time.monotonic() < deadline, "no chunk was committed in time"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (workdir / "out" / "feats.npy").exists(), "the run finished before the kill: not an interruption"
    committed = sorted(parts.glob("chunk-*.json"))
    assert 2 <= len(committed) < len(whole_run.path_list) // 2

    # Without --resume the partial run is not silently thrown away or mixed in.
    refused = run_cli(*args, cwd=workdir, home=cli_home)
    assert refused.returncode == 1 and "--resume" in refused.stderr and "Traceback" not in refused.stderr
    # Resuming with options that change the numbers is refused, naming the option.
    mismatch = run_cli(*args, "--resume", "--no-normalize", cwd=workdir, home=cli_home)
    assert mismatch.returncode == 1 and "normalize" in mismatch.stderr
    other_precision = run_cli(*args, "--resume", "--precision", "bf16", cwd=workdir, home=cli_home)
    assert other_precision.returncode == 1 and "--precision" in other_precision.stderr

    # Committed chunks are not recomputed: break an image of chunk 0. Recomputing it would fail (on-error raise).
    (workdir / "faces" / "s1" / "1.pgm").write_bytes(b"not an image any more")
    resumed = run_cli(*args, "--resume", cwd=workdir, home=cli_home)
    assert resumed.returncode == 0, resumed.stderr
    done = 2 * len(committed)
    assert f"resuming: {done} of {len(whole_run.path_list)} images already embedded" in resumed.stderr
    assert (workdir / "out" / "feats.npy").read_bytes() == whole_run.npy.read_bytes()
    assert (workdir / "out" / "feats.paths.txt").read_bytes() == whole_run.paths.read_bytes()
    assert not parts.exists()


def test_bf16_precision_option(whole_run: WholeRun, model_dir: Path, cli_home: Path) -> None:
    from shitu_features.inference.predictor import cpu_bf16_support

    if not cpu_bf16_support()[1]:
        pytest.skip("this CPU has no AVX512-BF16 / AMX (the CI machine has both)")
    result = run_cli("embed", "faces", "-o", "out/bf16.npy", "--precision", "bf16", "--model", str(model_dir),
                     *RUN_OPTS, cwd=whole_run.workdir, home=cli_home)
    assert result.returncode == 0, result.stderr
    bf16 = np.load(whole_run.workdir / "out" / "bf16.npy")
    assert bf16.shape == whole_run.vectors.shape
    cosine = np.sum(bf16 * whole_run.vectors, axis=1)
    assert cosine.min() >= 0.999 and np.abs(bf16 - whole_run.vectors).max() > 1e-4  # close, and really bf16


def test_shards_concatenate_to_the_whole_run(whole_run: WholeRun, model_dir: Path, cli_home: Path) -> None:
    outs = []
    for index in range(2):
        out = f"out/shard{index}.npz"  # .npz output: one file with 'embeddings' and 'paths'
        result = run_cli("embed", "faces", "-o", out, "--shard", f"{index}/2", "--model", str(model_dir),
                         *RUN_OPTS, "-q", cwd=whole_run.workdir, home=cli_home)
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""  # --quiet
        outs.append(np.load(whole_run.workdir / out))
    assert [len(o["paths"]) for o in outs] == [16, 16]
    np.testing.assert_array_equal(np.concatenate([o["embeddings"] for o in outs]), whole_run.vectors)
    assert [str(p) for o in outs for p in o["paths"]] == whole_run.path_list


def test_on_error_skip_reports_and_keeps_every_good_file(whole_run: WholeRun, model_dir: Path, cli_home: Path,
                                                         tmp_path: Path) -> None:
    images = tmp_path / "imgs"
    shutil.copytree(whole_run.workdir / "faces" / "s2", images / "s2")
    (images / "s2" / "2.pgm").write_bytes(b"P5\n92 112\n255\n" + b"\0" * 100)  # truncated pixel data
    (images / "s2" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    # A list file mixes a good row, the corrupt ones and a missing file; list order is kept.
    listing = images / "list.txt"
    listing.write_text("s2/1.pgm 1\ns2/broken.jpg 1\ns2/2.pgm 1\nmissing.png 1\ns2/3.pgm 1\ns2/4.pgm 1\n")

    strict = run_cli("embed", "@" + str(listing), "-o", str(tmp_path / "strict"), "--model", str(model_dir),
                     cwd=tmp_path, home=cli_home)
    assert strict.returncode == 1
    lines = strict.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("shitu-features: error:") and "broken.jpg" in lines[0]
    assert "--resume" in lines[0]  # says how to continue

    out = tmp_path / "out" / "faces"
    skip = run_cli("embed", "@" + str(listing), "-o", str(out), "--on-error", "skip", "--model", str(model_dir),
                   *RUN_OPTS, cwd=tmp_path, home=cli_home)
    assert skip.returncode == 0, skip.stderr
    assert "skipped 3" in skip.stderr
    report = (tmp_path / "out" / "faces.errors.tsv").read_text().splitlines()
    assert report[0] == "path\treason"
    assert [row.split("\t")[0] for row in report[1:]] == [str(images / n) for n in
                                                          ("s2/broken.jpg", "s2/2.pgm", "missing.png")]
    assert all(row.split("\t")[1] for row in report[1:])
    kept = (tmp_path / "out" / "faces.paths.txt").read_text().splitlines()
    assert kept == [str(images / "s2" / n) for n in ("1.pgm", "3.pgm", "4.pgm")]
    # Every good image is there, with the same embedding as in the whole run.
    whole = dict(zip(whole_run.path_list, whole_run.vectors))
    got = np.load(tmp_path / "out" / "faces.npy")
    expected = np.stack([whole[os.path.join("faces", "s2", n)] for n in ("1.pgm", "3.pgm", "4.pgm")])
    np.testing.assert_allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("count, shards", [(10, 3), (32, 2), (3, 5), (0, 4), (7, 1)])
def test_shards_tile_the_list_in_order(count: int, shards: int) -> None:
    from shitu_features.cli.embed import shard_slice

    items = list(range(count))
    pieces = [items[shard_slice(count, (i, shards))] for i in range(shards)]
    assert [x for piece in pieces for x in piece] == items
    assert max(map(len, pieces)) - min(map(len, pieces)) <= 1  # near-equal


def test_input_expansion_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from shitu_features.cli._common import expand_inputs

    for name in ("b/2.JPG", "b/10.png", "a/x/1.pgm", "a/.hidden/3.jpg", "a/.4.jpg", "a/notes.txt", "c.webp"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "list.txt").write_text("# a comment\n\nc.webp 3\nb/2.JPG, 1, 0\nzz.jpg\n")
    monkeypatch.chdir(tmp_path)
    # A directory: recursive, image extensions (any case), hidden entries skipped, sorted by path.
    assert expand_inputs(["a", "b"]) == [os.path.join("a", "x", "1.pgm"), os.path.join("b", "10.png"),
                                         os.path.join("b", "2.JPG")]
    # A glob: sorted, filtered by extension; an explicit file whatever its extension; a list file in line order
    # (paths relative to its folder; commas accepted); argument order kept, nothing de-duplicated.
    assert expand_inputs(["b/*", "c.webp", "@list.txt", "list.txt"]) == [
        os.path.join("b", "10.png"), os.path.join("b", "2.JPG"), "c.webp", "c.webp", "b/2.JPG", "zz.jpg",
        "c.webp", "b/2.JPG", "zz.jpg"]
    assert expand_inputs([str(tmp_path / "list.txt")], root="/data") == ["/data/c.webp", "/data/b/2.JPG",
                                                                       "/data/zz.jpg"]
