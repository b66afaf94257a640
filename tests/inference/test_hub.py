"""Download, cache, extraction and resolution tests against a loopback HTTP server (no internet)."""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import tarfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from shitu_features.errors import (
    ArchiveError,
    ChecksumError,
    ConfigError,
    DownloadError,
    ModelNotFoundError,
    OfflineError,
    UnknownModelError,
    UnsafeArchiveError,
)
from shitu_features.inference import hub
from shitu_features.inference.registry import resolve_official

if TYPE_CHECKING:
    from _http_server import LoopbackServer  # tests/_http_server.py, served by conftest's loopback_server


PIR_FILES = {"inference.json": b'{"program": "pir"}', "inference.pdiparams": b"\x00" * 64, "inference.yml": b"x: 1\n"}


def make_tar(path: Path, files: dict[str, bytes], folder: str | None = "model_infer", gz: bool = False) -> bytes:
    """Write a tar of ``files`` (inside ``folder/``) to ``path`` and return its bytes."""
    with tarfile.open(path, "w:gz" if gz else "w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{folder}/{name}" if folder else name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path.read_bytes()


def leftovers(folder: Path) -> list[str]:
    """Temporary files or folders a failed download/extraction must not leave behind."""
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith((".part", ".tmp", ".extracting")))


@pytest.fixture()
def server(loopback_server: LoopbackServer) -> LoopbackServer:
    # tests/conftest.py starts it, stops it, and sets NO_PROXY and clears HF_HUB_OFFLINE for every test.
    return loopback_server


@pytest.fixture()
def pir_tar(tmp_path: Path) -> bytes:
    return make_tar(tmp_path / "pir.tar", PIR_FILES, folder="PP-ShiTuV2_rec_infer")


# ------------------------------------------------------------------------------------------------ environment


def test_cache_home_and_offline_are_read_at_call_time(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SHITU_FEATURES_HOME", str(tmp_path / "a"))
    assert hub.cache_home() == tmp_path / "a"
    monkeypatch.delenv("SHITU_FEATURES_HOME")
    assert hub.cache_home() == Path.home() / ".cache" / "shitu-features"
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert not hub.is_offline()
    monkeypatch.setenv("SHITU_FEATURES_OFFLINE", "1")
    assert hub.is_offline()
    monkeypatch.setenv("SHITU_FEATURES_OFFLINE", "0")
    assert not hub.is_offline()
    monkeypatch.setenv("HF_HUB_OFFLINE", "true")
    assert hub.is_offline()


def test_mirror_url_rewrites_scheme_and_host_only(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "https://paddle.example.com/a/b/model.tar?x=1"
    monkeypatch.delenv("SHITU_FEATURES_ENDPOINT", raising=False)
    assert hub.mirror_url(url) == url
    monkeypatch.setenv("SHITU_FEATURES_ENDPOINT", "http://127.0.0.1:9/prefix/")
    assert hub.mirror_url(url) == "http://127.0.0.1:9/prefix/a/b/model.tar?x=1"
    monkeypatch.setenv("SHITU_FEATURES_ENDPOINT", "mirror.local")
    with pytest.raises(ConfigError, match="SHITU_FEATURES_ENDPOINT"):
        hub.mirror_url(url)


# ------------------------------------------------------------------------------------------------ download


def test_url_tar_downloads_once_and_is_reused_with_server_stopped(server: LoopbackServer, pir_tar: bytes) -> None:
    url = server.add("/models/pir_infer.tar", pir_tar)
    first = hub.resolve(url, progress=False)
    assert first.kind == "inference_dir" and first.downloaded
    assert (first.path / "inference.json").read_bytes() == PIR_FILES["inference.json"]
    assert first.path.is_relative_to(hub.cache_home() / "pir_infer")
    second = hub.resolve(url)
    assert server.hits["/models/pir_infer.tar"] == 1
    assert second.path == first.path and not second.downloaded
    server.stop()
    third = hub.resolve(url)
    assert third.path == first.path and not third.downloaded
    files = hub.find_inference_files(third.path)
    assert files.format == "pir" and files.yml_file is not None


def test_download_verifies_sha256(server: LoopbackServer, tmp_path: Path) -> None:
    body = os.urandom(3000)
    url = server.add("/blob.bin", body)
    good = hub.download(url, tmp_path / "good.bin", sha256=hashlib.sha256(body).hexdigest(), size=3000, progress=False)
    assert good.read_bytes() == body
    wrong = "0" * 64
    with pytest.raises(ChecksumError) as info:
        hub.download(url, tmp_path / "bad.bin", sha256=wrong, progress=False)
    message = str(info.value)
    assert wrong in message and hashlib.sha256(body).hexdigest() in message and "discarded" in message
    assert not (tmp_path / "bad.bin").exists()
    assert leftovers(tmp_path) == []


def test_download_size_mismatch_is_refused_before_writing(server: LoopbackServer, tmp_path: Path) -> None:
    url = server.add("/blob.bin", b"x" * 100)
    with pytest.raises(ChecksumError, match="announces 100 bytes but 99"):
        hub.download(url, tmp_path / "blob.bin", size=99, progress=False)
    assert not (tmp_path / "blob.bin").exists() and leftovers(tmp_path) == []


def test_truncated_transfer_is_detected_and_not_cached(server: LoopbackServer, pir_tar: bytes) -> None:
    url = server.add("/cut.tar", pir_tar, truncate_to=len(pir_tar) // 2)
    with pytest.raises(DownloadError) as info:
        hub.resolve(url, progress=False)
    assert not isinstance(info.value, ChecksumError)
    assert "discarded" in str(info.value)
    cache = hub.cache_home()
    assert not list(cache.rglob("*.tar")) and not list(cache.rglob("extracted")) and leftovers(cache) == []
    # Once the server behaves, the same URL downloads and works: nothing bad was cached.
    server.add("/cut.tar", pir_tar)
    assert hub.resolve(url).kind == "inference_dir"


def test_cached_file_with_wrong_sha256_is_downloaded_again(server: LoopbackServer, tmp_path: Path) -> None:
    body = b"correct bytes"
    url = server.add("/f.bin", body)
    dest = tmp_path / "f.bin"
    dest.write_bytes(b"stale")
    hub.download(url, dest, sha256=hashlib.sha256(body).hexdigest(), progress=False)
    assert dest.read_bytes() == body and server.hits["/f.bin"] == 1


def test_http_404_is_a_download_error(server: LoopbackServer) -> None:
    with pytest.raises(DownloadError, match="HTTP 404"):
        hub.resolve(server.url("/missing.tar"))


def test_connection_refused_is_a_download_error(server: LoopbackServer) -> None:
    url = server.url("/gone.pdparams")
    server.stop()
    with pytest.raises(DownloadError, match="cannot download .*gone.pdparams: NewConnectionError"):
        hub.resolve(url)


def test_force_download_fetches_again(server: LoopbackServer, pir_tar: bytes) -> None:
    url = server.add("/m.tar", pir_tar)
    hub.resolve(url)
    again = hub.resolve(url, force_download=True)
    assert server.hits["/m.tar"] == 2 and again.downloaded and again.kind == "inference_dir"


def _resolve_in_child(url: str, home: str, barrier, results) -> None:  # type: ignore[no-untyped-def]
    os.environ["SHITU_FEATURES_HOME"] = home
    barrier.wait()
    try:
        results.put(str(hub.resolve(url, progress=False).path))
    except Exception as exc:  # reported to the parent, which fails the test
        results.put(f"ERROR {type(exc).__name__}: {exc}")


def test_two_processes_download_once(server: LoopbackServer, pir_tar: bytes) -> None:
    # The slow response keeps the first download in flight while the second process asks for the same URL.
    url = server.add("/slow.tar", pir_tar, delay_s=0.6)
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    home = str(hub.cache_home())
    procs = [ctx.Process(target=_resolve_in_child, args=(url, home, barrier, results)) for _ in range(2)]
    for proc in procs:
        proc.start()
    paths = [results.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
    assert all(not p.startswith("ERROR") for p in paths), paths
    assert paths[0] == paths[1]
    assert server.hits["/slow.tar"] == 1


# ------------------------------------------------------------------------------------------------ extraction


def _tar_with(path: Path, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    with tarfile.open(path, "w") as archive:
        ok = tarfile.TarInfo("model/inference.json")
        ok.size = 2
        archive.addfile(ok, io.BytesIO(b"{}"))
        archive.addfile(member, io.BytesIO(data) if member.isreg() else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "", size: int = 4) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    info.size = size if kind == tarfile.REGTYPE else 0
    return info


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        (_member("../evil"), "'..'"),
        (_member("model/../../evil"), "'..'"),
        (_member("/tmp/shitu_evil_abs"), "absolute"),
        (_member("model/link", tarfile.SYMTYPE, "../../evil"), "outside"),
        (_member("model/link", tarfile.SYMTYPE, "/etc/passwd"), "absolute"),
        (_member("model/hard", tarfile.LNKTYPE, "../evil"), "outside"),
        (_member("model/dir_link", tarfile.SYMTYPE, "."), "not supported"),
        (_member("model/dev", tarfile.CHRTYPE), "device"),
        (_member("model/fifo", tarfile.FIFOTYPE), "device"),
    ],
    ids=lambda v: v.name if isinstance(v, tarfile.TarInfo) else None,
)
def test_unsafe_tar_members_are_refused(tmp_path: Path, member: tarfile.TarInfo, reason: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    tar = _tar_with(tmp_path / "bad.tar", member, b"evil")
    dest = work / "out"
    with pytest.raises(UnsafeArchiveError, match=reason):
        hub.safe_extract_tar(tar, dest)
    assert not dest.exists() and list(work.iterdir()) == []  # nothing written, no temp folder left
    assert not (tmp_path / "evil").exists() and not Path("/tmp/shitu_evil_abs").exists()


def test_unsafe_tar_from_url_is_refused_and_not_used(server: LoopbackServer, tmp_path: Path) -> None:
    url = server.add("/bad.tar", _tar_with(tmp_path / "bad.tar", _member("../evil"), b"evil").read_bytes())
    with pytest.raises(UnsafeArchiveError):
        hub.resolve(url)
    home = hub.cache_home()
    assert not list(home.rglob("extracted")) and not list(home.rglob("evil")) and leftovers(home) == []


def test_links_inside_the_archive_become_copies(tmp_path: Path) -> None:
    tar = tmp_path / "links.tar"
    with tarfile.open(tar, "w") as archive:
        data = b"params"
        info = _member("m/real.pdiparams", size=len(data))
        archive.addfile(info, io.BytesIO(data))
        archive.addfile(_member("m/inference.pdiparams", tarfile.SYMTYPE, "real.pdiparams"))
        archive.addfile(_member("m/hard.pdiparams", tarfile.LNKTYPE, "m/real.pdiparams"))
    out = hub.safe_extract_tar(tar, tmp_path / "out")
    for name in ("inference.pdiparams", "hard.pdiparams"):
        target = out / "m" / name
        assert not target.is_symlink() and target.read_bytes() == b"params"


def test_gzip_tar_extracts(tmp_path: Path) -> None:
    make_tar(tmp_path / "m.tar.gz", PIR_FILES, gz=True)
    out = hub.safe_extract_tar(tmp_path / "m.tar.gz", tmp_path / "out")
    assert (out / "model_infer" / "inference.json").read_bytes() == PIR_FILES["inference.json"]


@pytest.mark.parametrize("cut", [0.5, 0.02])
def test_corrupt_or_truncated_tar_is_an_archive_error(tmp_path: Path, cut: float) -> None:
    data = make_tar(tmp_path / "m.tar.gz", {"inference.json": os.urandom(40_000)}, gz=True)
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(ArchiveError, match="truncated, corrupted"):
        hub.safe_extract_tar(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------------------ files


def _touch(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"x")
    return folder


def test_find_inference_files_prefers_pir_and_reports_extras(tmp_path: Path) -> None:
    folder = _touch(tmp_path / "m", "inference.json", "inference.pdmodel", "inference.pdiparams", "config.json")
    files = hub.find_inference_files(folder)
    assert files.format == "pir" and files.model_file.name == "inference.json"
    assert files.config_file == folder / "config.json" and files.yml_file is None


def test_find_inference_files_legacy_reference_one_level_down(tmp_path: Path, reference_dir: Path) -> None:
    legacy = reference_dir / "legacy_infer"
    files = hub.find_inference_files(legacy)
    assert files.format == "legacy" and files.params_file == legacy / "inference.pdiparams"
    (tmp_path / "outer" / "sub").mkdir(parents=True)
    for name in ("inference.pdmodel", "inference.pdiparams"):
        os.symlink(legacy / name, tmp_path / "outer" / "sub" / name)
    below = hub.find_inference_files(tmp_path / "outer")
    assert below.directory == tmp_path / "outer" / "sub" and below.format == "legacy"


def test_find_inference_files_requires_params_and_lists_what_it_found(tmp_path: Path) -> None:
    folder = _touch(tmp_path / "m", "inference.json", "readme.txt")
    with pytest.raises(ModelNotFoundError, match=r"inference\.pdiparams.*Found: inference\.json, readme\.txt"):
        hub.find_inference_files(folder)
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        hub.find_inference_files(tmp_path / "nope")


def test_find_inference_files_other_prefix_and_ambiguity(tmp_path: Path) -> None:
    single = _touch(tmp_path / "a", "model.json", "model.pdiparams")
    assert hub.find_inference_files(single).model_file.name == "model.json"
    _touch(tmp_path / "b" / "x", "inference.json", "inference.pdiparams")
    _touch(tmp_path / "b" / "y", "inference.pdmodel", "inference.pdiparams")
    with pytest.raises(ModelNotFoundError, match="several"):
        hub.find_inference_files(tmp_path / "b")


# ------------------------------------------------------------------------------------------------ resolve


def test_resolve_local_forms(tmp_path: Path, reference_dir: Path) -> None:
    legacy = hub.resolve(reference_dir / "legacy_infer")
    assert legacy.kind == "inference_dir" and legacy.path == reference_dir / "legacy_infer" and not legacy.downloaded
    ckpt = hub.resolve(str(reference_dir / "model" / "rec_model.pdparams"))
    assert ckpt.kind == "pdparams" and ckpt.name == "rec_model"
    only_ckpt = _touch(tmp_path / "run", "last.pdparams")
    assert hub.resolve(only_ckpt).path == only_ckpt / "last.pdparams"
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        hub.resolve(str(tmp_path / "missing" / "model.pdparams"))
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        hub.resolve("./PP-ShiTuV2")  # written as a path: never the official model


def test_resolve_local_tar_is_extracted_into_the_cache(tmp_path: Path) -> None:
    make_tar(tmp_path / "mine.tar", PIR_FILES)
    first = hub.resolve(tmp_path / "mine.tar")
    assert first.kind == "inference_dir" and first.path.is_relative_to(hub.cache_home())
    assert hub.resolve(tmp_path / "mine.tar").path == first.path


def test_url_of_unknown_format_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"\.tar, \.tar\.gz, \.tgz or \.pdparams"):
        hub.resolve("https://example.invalid/model.zip")


def test_unknown_name_lists_close_matches() -> None:
    with pytest.raises(UnknownModelError, match="Did you mean 'PP-ShiTuV2'"):
        hub.resolve("PP-ShiTuV3")


def _official_paths() -> list[str]:
    from urllib.parse import urlsplit

    return [urlsplit(a.url).path for a in resolve_official("PP-ShiTuV2").artifacts]


def test_official_name_via_mirror(server: LoopbackServer, monkeypatch: pytest.MonkeyPatch, pir_tar: bytes) -> None:
    monkeypatch.setenv("SHITU_FEATURES_ENDPOINT", server.base_url)
    pir_path = _official_paths()[0]
    server.add(pir_path, pir_tar)
    resolved = hub.resolve("pp-shituv2_rec", progress=False)
    assert resolved.kind == "inference_dir" and resolved.name == "PP-ShiTuV2"
    assert resolved.source == server.url(pir_path)
    assert hub.find_inference_files(resolved.path).format == "pir"
    assert hub.resolve().path == resolved.path  # the default model, now from the cache
    assert server.total_hits == 1


def test_official_falls_through_404_and_bad_checksum(
    server: LoopbackServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SHITU_FEATURES_ENDPOINT", server.base_url)
    pir_path, legacy_path, pdparams_path = _official_paths()
    # The legacy tar carries the (third-party) sha256 of the real file, which a stand-in cannot match.
    server.add(legacy_path, make_tar(tmp_path / "legacy.tar", {"inference.pdmodel": b"x", "inference.pdiparams": b"y"}))
    server.add(pdparams_path, b"not really a checkpoint")
    resolved = hub.resolve("PP-ShiTuV2")
    assert resolved.kind == "pdparams" and resolved.path.read_bytes() == b"not really a checkpoint"
    assert [server.hits[p] for p in (pir_path, legacy_path, pdparams_path)] == [1, 1, 1]
    assert not list(hub.cache_home().rglob("*_infer.tar"))  # the mismatching tar was discarded


def test_official_reports_every_attempt_when_all_fail(server: LoopbackServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHITU_FEATURES_ENDPOINT", server.base_url)
    with pytest.raises(DownloadError) as info:
        hub.resolve("PP-ShiTuV2")
    message = str(info.value)
    assert "any of its 3 sources" in message and message.count("HTTP 404") == 3
    assert all(server.url(p) in message for p in _official_paths())


@pytest.mark.parametrize("variable", ["SHITU_FEATURES_OFFLINE", "HF_HUB_OFFLINE", None])
def test_offline_with_empty_cache_fails_fast_without_network(
    server: LoopbackServer, monkeypatch: pytest.MonkeyPatch, variable: str | None
) -> None:
    monkeypatch.setenv("SHITU_FEATURES_ENDPOINT", server.base_url)
    if variable:
        monkeypatch.setenv(variable, "1")
    start = time.perf_counter()
    with pytest.raises(OfflineError) as info:
        hub.resolve(None, local_files_only=variable is None)
    assert time.perf_counter() - start < 1.0
    assert server.total_hits == 0
    message = str(info.value)
    assert server.url(_official_paths()[0]) in message and str(hub.cache_home()) in message
    assert "local path" in message and (variable or "local_files_only") in message


def test_offline_error_instructions_work(
    server: LoopbackServer, monkeypatch: pytest.MonkeyPatch, pir_tar: bytes
) -> None:
    monkeypatch.setenv("SHITU_FEATURES_ENDPOINT", server.base_url)
    monkeypatch.setenv("SHITU_FEATURES_OFFLINE", "1")
    with pytest.raises(OfflineError) as info:
        hub.resolve("PP-ShiTuV2")
    # Follow the message: save the first listed file at the path shown, then resolve again, still offline.
    target = Path(str(info.value).split("-> ", 1)[1].splitlines()[0])
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(pir_tar)
    resolved = hub.resolve("PP-ShiTuV2")
    assert resolved.kind == "inference_dir" and not resolved.downloaded and server.total_hits == 0


def test_offline_uses_what_is_cached(server: LoopbackServer, monkeypatch: pytest.MonkeyPatch, pir_tar: bytes) -> None:
    url = server.add("/m.tar", pir_tar)
    online = hub.resolve(url)
    monkeypatch.setenv("SHITU_FEATURES_OFFLINE", "1")
    assert hub.resolve(url).path == online.path
    with pytest.raises(OfflineError, match="other.tar"):
        hub.resolve(server.url("/other.tar"))
    assert server.total_hits == 1


@pytest.mark.parametrize("spec", ["hf://someone/some-model", "someone/some-model"])
def test_hub_repo_offline_fails_fast(monkeypatch: pytest.MonkeyPatch, spec: str) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(OfflineError, match="someone/some-model"):
        hub.resolve(spec)
    assert time.perf_counter() - start < 1.0


def test_existing_local_path_wins_over_hub_repo_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _touch(tmp_path / "org" / "name", "inference.json", "inference.pdiparams")
    monkeypatch.chdir(tmp_path)
    resolved = hub.resolve("org/name")
    assert resolved.kind == "inference_dir" and resolved.source == "org/name"


def test_reference_legacy_model_served_as_tar_resolves_byte_identical(
    server: LoopbackServer, tmp_path: Path, reference_dir: Path
) -> None:
    legacy = reference_dir / "legacy_infer"
    names = ("inference.pdmodel", "inference.pdiparams", "inference.pdiparams.info")
    tar = tmp_path / "general_PPLCNetV2_base_pretrained_v1.0_infer.tar"
    with tarfile.open(tar, "w") as archive:
        for name in names:
            archive.add(legacy / name, arcname=f"general_PPLCNetV2_base_pretrained_v1.0_infer/{name}")
    url = server.add("/legacy/" + tar.name, tar.read_bytes())
    resolved = hub.resolve(url, progress=False)
    files = hub.find_inference_files(resolved.path)
    assert files.format == "legacy" and files.yml_file is None and resolved.name.endswith("_infer")
    for name in names:
        assert (files.directory / name).read_bytes() == (legacy / name).read_bytes()
