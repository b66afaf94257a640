"""Finding model files: local paths, the download cache, official names, URLs and the Hugging Face Hub.

Everything that touches the network or the cache lives here; the Extractor only calls :func:`resolve` and
:func:`find_inference_files`. Guarantees:

* a download goes to a unique temporary file next to its destination and is renamed into place only once it
  is complete (``Content-Length``) and verified (size, sha256); on any failure the temporary file is removed;
* a :class:`filelock.FileLock` per artifact makes concurrent processes download once: the second one waits
  and then finds the verified file;
* tar archives are checked member by member (no absolute paths, no ``..``, no links out of the target, no
  device files) and extracted into a temporary folder that is renamed into place, so a half-extracted
  folder is never used;
* offline mode (``SHITU_FEATURES_OFFLINE=1``, ``HF_HUB_OFFLINE=1`` or ``local_files_only=True``) uses the
  cache or fails at once, without a network attempt, saying which URL to fetch and where to put it.

Environment variables, all read at call time: ``SHITU_FEATURES_HOME`` (cache root, default
``~/.cache/shitu-features``), ``SHITU_FEATURES_OFFLINE``, ``HF_HUB_OFFLINE`` and ``SHITU_FEATURES_ENDPOINT``
(a mirror ``scheme://host[:port][/prefix]`` that replaces the scheme and host of the official URLs).
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import re
import shutil
import tarfile
import tempfile
import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal, Optional, Union

from shitu_features._version import __version__
from shitu_features.errors import (
    ArchiveError,
    ChecksumError,
    ConfigError,
    DownloadError,
    InvalidInputError,
    ModelNotFoundError,
    OfflineError,
    ShituFeaturesError,
    UnknownModelError,
    UnsafeArchiveError,
)
from shitu_features.inference.registry import DEFAULT_MODEL, OfficialModel, resolve_official

__all__ = [
    "ENV_HOME",
    "ENV_OFFLINE",
    "ENV_ENDPOINT",
    "InferenceFiles",
    "ResolvedModel",
    "cache_home",
    "is_offline",
    "mirror_url",
    "download",
    "safe_extract_tar",
    "find_inference_files",
    "resolve",
    "sha256_file",
]

logger = logging.getLogger(__name__)

ENV_HOME = "SHITU_FEATURES_HOME"
ENV_OFFLINE = "SHITU_FEATURES_OFFLINE"
ENV_ENDPOINT = "SHITU_FEATURES_ENDPOINT"
_HF_OFFLINE = "HF_HUB_OFFLINE"

#: (connect, read) seconds for ``requests``; the read timeout applies between chunks, not to the whole file.
DEFAULT_TIMEOUT: tuple[float, float] = (10.0, 60.0)
_CHUNK_BYTES = 1 << 20
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
_EXTRACTED = "extracted"
_HF_REPO_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*(@[\w./-]+)?$")

PathLike = Union[str, "os.PathLike[str]"]


# --------------------------------------------------------------------------------------------------------------
# Environment


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def cache_home() -> Path:
    """Root of the download cache: ``$SHITU_FEATURES_HOME``, else ``~/.cache/shitu-features`` (read now)."""
    env = os.environ.get(ENV_HOME, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "shitu-features"


def is_offline() -> bool:
    """Whether ``SHITU_FEATURES_OFFLINE`` or ``HF_HUB_OFFLINE`` is set to 1/true/yes/on (read now)."""
    return _truthy(os.environ.get(ENV_OFFLINE)) or _truthy(os.environ.get(_HF_OFFLINE))


def _offline_reason(local_files_only: bool) -> str:
    reasons = [f"{var}={os.environ[var]}" for var in (ENV_OFFLINE, _HF_OFFLINE) if _truthy(os.environ.get(var))]
    if local_files_only:
        reasons.append("local_files_only=True")
    return ", ".join(reasons)


def mirror_url(url: str) -> str:
    """Rewrite an official URL's scheme and host to ``$SHITU_FEATURES_ENDPOINT`` when it is set.

    ``SHITU_FEATURES_ENDPOINT=http://mirror:8080/paddle`` turns ``https://host/a/b.tar`` into
    ``http://mirror:8080/paddle/a/b.tar``; the path and query are kept.

    Raises:
        ConfigError: The variable is set but is not an ``http(s)://host`` URL.
    """
    endpoint = os.environ.get(ENV_ENDPOINT, "").strip()
    if not endpoint:
        return url
    mirror = urllib.parse.urlsplit(endpoint.rstrip("/"))
    if mirror.scheme not in ("http", "https") or not mirror.netloc:
        raise ConfigError(f"{ENV_ENDPOINT}={endpoint!r} must look like http(s)://host[:port][/prefix]")
    original = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((mirror.scheme, mirror.netloc, mirror.path + original.path, original.query, ""))


@contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """Hold an inter-process lock, logging when another process has it (it is downloading the same file)."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(lock_path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        logger.info("waiting for another process to finish with %s", lock_path.parent)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


# --------------------------------------------------------------------------------------------------------------
# Download


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in blocks (constant memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def _mismatch(path: Path, sha256: str | None, size: int | None) -> str | None:
    """Why ``path`` does not have the expected size / sha256, or ``None`` when it does (or nothing is expected)."""
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        return f"size mismatch, expected {size} bytes, got {actual_size}"
    if sha256 is not None:
        actual = sha256_file(path)
        if actual != sha256.lower():
            return f"sha256 mismatch, expected {sha256.lower()}, got {actual}"
    return None


def _progress_bar(total: int | None, desc: str, progress: bool | None):  # type: ignore[no-untyped-def]
    from tqdm.auto import tqdm

    # progress=None lets tqdm decide (shown only on a terminal).
    disable = None if progress is None else not progress
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, disable=disable, leave=False)


def _describe(exc: Exception) -> str:
    """A one-line cause for a ``requests`` exception (urllib3 wraps the useful part in ``MaxRetryError``)."""
    cause = exc.args[0] if exc.args and isinstance(exc.args[0], Exception) else exc
    cause = getattr(cause, "reason", None) or cause
    text = re.sub(r"^\w*Connection(Pool)?\([^)]*\): ", "", str(cause))
    return f"{type(cause).__name__}: {text}"


def _stream_to(url: str, tmp: Path, desc: str, size: int | None, progress: bool | None, timeout: object) -> int:
    """GET ``url`` into ``tmp``; returns the bytes written. Raises DownloadError on any transfer problem."""
    import requests

    headers = {"Accept-Encoding": "identity", "User-Agent": f"shitu-features/{__version__}"}
    written, expected, started = 0, None, False
    try:
        with requests.get(url, stream=True, timeout=timeout, headers=headers) as response:
            if response.status_code != 200:
                reason = "not found" if response.status_code in (403, 404, 410) else "server error"
                raise DownloadError(
                    f"cannot download {url}: HTTP {response.status_code} {response.reason} ({reason})"
                )
            announced = response.headers.get("Content-Length")
            expected = int(announced) if announced and announced.isdigit() else None
            if expected is not None and size is not None and expected != size:
                raise ChecksumError(
                    f"download of {url}: size mismatch, the server announces {expected} bytes but {size} are "
                    "expected; nothing was kept"
                )
            started = True
            with tmp.open("xb") as out, _progress_bar(expected or size, desc, progress) as bar:
                for chunk in response.iter_content(_CHUNK_BYTES):
                    out.write(chunk)
                    written += len(chunk)
                    bar.update(len(chunk))
                out.flush()
                os.fsync(out.fileno())
    except requests.exceptions.RequestException as exc:
        if not started:
            raise DownloadError(f"cannot download {url}: {_describe(exc)}") from exc
        raise DownloadError(
            f"download of {url} broke off after {written} bytes ({_describe(exc)}); the partial file was discarded"
        ) from exc
    if expected is not None and written != expected:
        raise DownloadError(
            f"download of {url} is truncated: got {written} of {expected} bytes; the partial file was discarded"
        )
    return written


def download(
    url: str,
    dest: PathLike,
    *,
    sha256: str | None = None,
    size: int | None = None,
    progress: bool | None = True,
    timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
) -> Path:
    """Download ``url`` to ``dest`` atomically and verified, once across concurrent processes.

    If ``dest`` already exists and matches ``size`` / ``sha256`` it is returned without network access (a file
    at ``dest`` only ever appears complete, through ``os.replace``; a cached file that fails the check is
    fetched again). Otherwise the body is streamed into a unique temporary file next to ``dest``, which is
    renamed to ``dest`` only when its byte count equals ``Content-Length`` and ``size`` and the sha256 of the
    bytes on disk equals ``sha256``; on any failure it is deleted. The whole operation holds ``<dest>.lock``.

    Args:
        url: ``http(s)://`` URL.
        dest: Final file path; its folder is created.
        sha256: Expected hex digest, or ``None`` to skip the check.
        size: Expected size in bytes, or ``None``.
        progress: Show a tqdm bar on stderr (``None``: only on a terminal).
        timeout: ``requests`` timeout: seconds, or (connect, read) seconds.

    Returns:
        ``dest`` as a :class:`~pathlib.Path`.

    Raises:
        OfflineError: Offline mode is on and ``dest`` is not there.
        DownloadError: HTTP error, connection error or truncated transfer; nothing is left at ``dest``.
        ChecksumError: Size or sha256 mismatch; the downloaded file was discarded.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _locked(dest.with_name(dest.name + ".lock")):
        if dest.is_file():
            problem = _mismatch(dest, sha256, size)
            if problem is None:
                logger.debug("using cached %s", dest)
                return dest
            logger.warning("cached file %s: %s; downloading it again", dest, problem)
            dest.unlink()
        if is_offline():
            raise OfflineError(
                f"offline mode is on ({_offline_reason(False)}) and {dest} is missing: download {url} "
                f"and save it as {dest}, or unset the variable"
            )
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.part")
        try:
            logger.info("downloading %s to %s", url, dest)
            _stream_to(url, tmp, dest.name, size, progress, timeout)
            problem = _mismatch(tmp, sha256, size)
            if problem is not None:
                raise ChecksumError(f"download of {url}: {problem}; the downloaded file was discarded")
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
    return dest


# --------------------------------------------------------------------------------------------------------------
# Tar extraction


def _member_path(name: str) -> str | None:
    """Normalised relative POSIX path of a member, ``None`` for the archive root; raise when unsafe."""
    unified = name.replace("\\", "/")
    if unified.startswith("/") or re.match(r"^[A-Za-z]:", unified):
        raise UnsafeArchiveError(f"archive member {name!r} has an absolute path; refusing to extract")
    if ".." in unified.split("/"):
        raise UnsafeArchiveError(f"archive member {name!r} contains '..'; refusing to extract")
    normalised = posixpath.normpath(unified)
    return None if normalised in ("", ".") else normalised


def _link_target(member: tarfile.TarInfo, path: str) -> str:
    """Archive-relative path a symlink or hard link points to; raise when it leaves the archive."""
    link = member.linkname.replace("\\", "/")
    if link.startswith("/") or re.match(r"^[A-Za-z]:", link):
        raise UnsafeArchiveError(f"archive link {member.name!r} -> {member.linkname!r} is absolute; refusing")
    # Symlinks are relative to the link's folder, hard links to the archive root (tar semantics).
    base = posixpath.dirname(path) if member.issym() else ""
    target = posixpath.normpath(posixpath.join(base, link))
    if target == ".." or target.startswith("../"):
        raise UnsafeArchiveError(f"archive link {member.name!r} -> {member.linkname!r} points outside; refusing")
    return target


def _plan(members: list[tarfile.TarInfo]) -> list[tuple[str, tarfile.TarInfo]]:
    """Check every member before anything is written; links become copies of their (regular) targets."""
    regular: dict[str, tarfile.TarInfo] = {}
    plan: list[tuple[str, tarfile.TarInfo]] = []
    for member in members:
        path = _member_path(member.name)
        if member.isdir() or path is None:
            if path is not None:
                plan.append((path, member))
            continue
        if member.isreg():
            regular[path] = member
            plan.append((path, member))
        elif member.issym() or member.islnk():
            target = _link_target(member, path)
            if target not in regular:
                raise UnsafeArchiveError(
                    f"archive link {member.name!r} -> {member.linkname!r} does not point to a regular file "
                    "stored earlier in the archive; links to folders or missing files are not supported"
                )
            plan.append((path, regular[target]))
        else:
            raise UnsafeArchiveError(
                f"archive member {member.name!r} is a device file, FIFO or other special file; refusing to extract"
            )
    return plan


def safe_extract_tar(tar_path: PathLike, dest_dir: PathLike) -> Path:
    """Extract a (possibly gzip/bz2/xz-compressed) tar safely and atomically.

    All members are checked before anything is written. Refused, with :class:`UnsafeArchiveError`: absolute
    paths, any ``..`` component, symlinks or hard links whose target is outside the archive, device files and
    FIFOs. Links to regular files inside the archive are written as plain copies, so no link is ever created
    on disk. Extraction goes to a temporary folder next to ``dest_dir`` that is renamed to ``dest_dir`` when
    complete; on any error it is removed.

    Args:
        tar_path: The archive.
        dest_dir: Target folder; must not exist or be empty.

    Returns:
        ``dest_dir`` as a :class:`~pathlib.Path`.

    Raises:
        UnsafeArchiveError: A member would escape ``dest_dir`` or is a special file.
        ArchiveError: The file is truncated, corrupted or not a tar archive.
        FileExistsError: ``dest_dir`` exists and is not empty.
    """
    tar_path, dest_dir = Path(tar_path), Path(dest_dir)
    if dest_dir.exists() and (not dest_dir.is_dir() or any(dest_dir.iterdir())):
        raise FileExistsError(f"cannot extract {tar_path} into {dest_dir}: it exists and is not an empty folder")
    dest_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest_dir.name}.", suffix=".extracting", dir=dest_dir.parent))
    try:
        with tarfile.open(tar_path, mode="r:*") as archive:
            for path, member in _plan(archive.getmembers()):
                out = tmp.joinpath(*PurePosixPath(path).parts)
                if member.isdir():
                    out.mkdir(parents=True, exist_ok=True)
                    continue
                out.parent.mkdir(parents=True, exist_ok=True)
                source = archive.extractfile(member)
                if source is None:  # unreachable for regular members; kept as an explicit guard
                    raise ArchiveError(f"cannot read member {member.name!r} of {tar_path}")
                with source, out.open("wb") as sink:
                    shutil.copyfileobj(source, sink, _CHUNK_BYTES)
        if dest_dir.exists():
            dest_dir.rmdir()
        os.rename(tmp, dest_dir)
    except ShituFeaturesError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:  # zlib/gzip errors are OSError
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, FileExistsError):
            raise
        raise ArchiveError(
            f"cannot extract {tar_path}: truncated, corrupted or not a tar archive ({type(exc).__name__}: {exc}); "
            "delete it and download it again"
        ) from exc
    logger.debug("extracted %s into %s", tar_path, dest_dir)
    return dest_dir


# --------------------------------------------------------------------------------------------------------------
# Inference files


@dataclass(frozen=True)
class InferenceFiles:
    """The files of an exported Paddle inference model.

    Attributes:
        model_file: ``inference.json`` (Paddle 3 PIR) or ``inference.pdmodel`` (Paddle 2 program).
        params_file: ``inference.pdiparams``.
        yml_file: ``inference.yml`` (PaddleX preprocessing description) or ``None``.
        config_file: ``config.json`` written by ``save_pretrained`` or ``None``.
        format: ``"pir"`` for ``.json``, ``"legacy"`` for ``.pdmodel``.
    """

    model_file: Path
    params_file: Path
    yml_file: Optional[Path]
    config_file: Optional[Path]
    format: Literal["pir", "legacy"]

    @property
    def directory(self) -> Path:
        """Folder holding the files."""
        return self.model_file.parent


def _inference_files_in(folder: Path) -> InferenceFiles | None:
    """Model files directly in ``folder``: ``inference.*`` first, else one unambiguous ``<prefix>.*`` set."""
    prefixes = sorted(p.name[: -len(".pdiparams")] for p in folder.glob("*.pdiparams") if p.is_file())
    if "inference" in prefixes:
        prefixes = ["inference"]
    found = []
    for prefix in prefixes:
        for suffix, fmt in ((".json", "pir"), (".pdmodel", "legacy")):  # PIR first, as PaddleX get_model_paths
            model = folder / f"{prefix}{suffix}"
            if model.is_file():
                found.append((prefix, model, fmt))
                break
    if not found:
        return None
    if len(found) > 1:
        raise ModelNotFoundError(
            f"{folder} holds several exported models ({', '.join(p for p, _, _ in found)}); "
            "keep one, or name it inference.json / inference.pdmodel + inference.pdiparams"
        )
    prefix, model, fmt = found[0]
    yml = next((f for f in (folder / f"{prefix}.yml", folder / "inference.yml") if f.is_file()), None)
    config = folder / "config.json"
    return InferenceFiles(
        model_file=model,
        params_file=folder / f"{prefix}.pdiparams",
        yml_file=yml,
        config_file=config if config.is_file() else None,
        format=fmt,  # type: ignore[arg-type]
    )


def _listing(folder: Path, limit: int = 20) -> str:
    entries = sorted(folder.iterdir())
    names = [e.name + ("/" if e.is_dir() else "") for e in entries[:limit]]
    more = f", ... ({len(entries) - limit} more)" if len(entries) > limit else ""
    return (", ".join(names) + more) if names else "nothing (empty folder)"


def find_inference_files(directory: PathLike) -> InferenceFiles:
    """Locate an exported inference model in ``directory`` or one folder below it.

    Prefers ``inference.json`` (Paddle 3) over ``inference.pdmodel`` (Paddle 2) and requires
    ``inference.pdiparams`` next to it (spec §11.1.3). Tars usually extract into a sub-folder, hence the
    one-level search. Other prefixes (``model.json`` + ``model.pdiparams``) are accepted when unambiguous.

    Args:
        directory: Folder to search.

    Returns:
        The located files.

    Raises:
        ModelNotFoundError: Nothing loadable, or several candidates; the message lists what was found.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ModelNotFoundError(f"model folder {directory} does not exist or is not a folder")
    files = _inference_files_in(directory)
    if files is not None:
        return files
    below = [f for sub in sorted(directory.iterdir()) if sub.is_dir() for f in [_inference_files_in(sub)] if f]
    if len(below) == 1:
        return below[0]
    if len(below) > 1:
        raise ModelNotFoundError(
            f"{directory} holds several exported models ({', '.join(str(f.directory) for f in below)}); "
            "pass the one you want"
        )
    raise ModelNotFoundError(
        f"no exported Paddle inference model in {directory}: expected inference.json (Paddle 3) or "
        "inference.pdmodel (Paddle 2) together with inference.pdiparams, in the folder or one level below. "
        f"Found: {_listing(directory)}"
    )


# --------------------------------------------------------------------------------------------------------------
# Resolution


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model's files are on disk after :func:`resolve`.

    Attributes:
        kind: ``"inference_dir"`` (pass ``path`` to :func:`find_inference_files`) or ``"pdparams"`` (a
            training checkpoint file; load it with :func:`shitu_features.serialization.load_state_dict`).
        path: The folder holding the inference files, or the ``.pdparams`` file.
        name: Official name, repo id, or file/folder name.
        source: What it came from: the URL used, ``hf://org/name``, or the local path given.
        downloaded: Whether this call used the network (``False`` when served from disk; for a Hugging Face
            repo, ``True`` whenever the hub was contacted, even if the files were already cached).
    """

    kind: Literal["inference_dir", "pdparams"]
    path: Path
    name: str
    source: str
    downloaded: bool = False


def _url_key(url: str) -> str:
    return hashlib.sha256(url.encode("utf-8")).hexdigest()[:12]


def _tar_suffix(name: str) -> str | None:
    lowered = name.lower()
    return next((s for s in _TAR_SUFFIXES if lowered.endswith(s)), None)


def _resolve_folder(folder: Path, name: str, source: str, downloaded: bool = False) -> ResolvedModel:
    """An exported model in ``folder`` (or one below), else its single ``.pdparams`` file."""
    try:
        files = find_inference_files(folder)
    except ModelNotFoundError:
        checkpoints = sorted(folder.glob("*.pdparams"))
        if len(checkpoints) == 1:
            return ResolvedModel("pdparams", checkpoints[0], name, source, downloaded)
        raise
    return ResolvedModel("inference_dir", files.directory, name, source, downloaded)


def _cached(root: Path, fmt: str, filename: str, sha256: str | None, size: int | None, offline: bool) -> Path | None:
    """The usable cache entry under ``root`` (extracting a complete tar found there), or ``None``."""
    file = root / filename
    if fmt == "pdparams":
        return file if file.is_file() else None
    extracted = root / _EXTRACTED
    if extracted.is_dir():
        return extracted
    if not file.is_file():
        return None
    # A tar without its extracted folder: an interrupted first run, or a file placed by hand (offline).
    problem = _mismatch(file, sha256, size)
    if problem is not None:
        if offline:
            raise ChecksumError(f"cached file {file}: {problem}; delete it and download it again")
        logger.warning("discarding cached file %s: %s", file, problem)
        file.unlink()
        return None
    return safe_extract_tar(file, extracted)


def _fetch(
    url: str,
    fmt: str,
    filename: str,
    root: Path,
    *,
    sha256: str | None,
    size: int | None,
    offline: bool,
    allow_download: bool,
    force: bool,
    progress: bool | None,
) -> tuple[Path, bool] | None:
    """Cache entry for one artifact: ``(path, downloaded)``, or ``None`` if not cached and not downloaded."""
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / ".lock"):
        if force and allow_download:
            shutil.rmtree(root / _EXTRACTED, ignore_errors=True)
            (root / filename).unlink(missing_ok=True)
        else:
            hit = _cached(root, fmt, filename, sha256, size, offline)
            if hit is not None or not allow_download:
                return (hit, False) if hit is not None else None
        file = download(url, root / filename, sha256=sha256, size=size, progress=progress)
        if fmt == "pdparams":
            return file, True
        return safe_extract_tar(file, root / _EXTRACTED), True


def _as_resolved(entry: Path, fmt: str, name: str, source: str, downloaded: bool) -> ResolvedModel:
    if fmt == "pdparams":
        return ResolvedModel("pdparams", entry, name, source, downloaded)
    return _resolve_folder(entry, name, source, downloaded)


def _resolve_official(
    model: OfficialModel, home: Path, offline: bool, local_files_only: bool, force: bool, progress: bool | None
) -> ResolvedModel:
    plans = [(artifact, mirror_url(artifact.url)) for artifact in model.artifacts]
    roots = [home / model.name / _url_key(url) for _, url in plans]

    def fetch(i: int, allow_download: bool) -> ResolvedModel | None:
        artifact, url = plans[i]
        got = _fetch(
            url, artifact.format, artifact.filename, roots[i], sha256=artifact.sha256, size=artifact.size,
            offline=offline, allow_download=allow_download, force=force, progress=progress,
        )  # fmt: skip
        return None if got is None else _as_resolved(got[0], artifact.format, model.name, url, got[1])

    if not force:  # any cached artifact beats a download, whatever its rank
        for i in range(len(plans)):
            hit = fetch(i, allow_download=False)
            if hit is not None:
                return hit
    if offline:
        where = "\n".join(f"  {url}\n    -> {root / a.filename}" for (a, url), root in zip(plans, roots))
        raise OfflineError(
            f"offline mode is on ({_offline_reason(local_files_only)}) and {model.name} is not in the cache "
            f"{home}. Either run once with network access, or download one of these files and save it at the "
            f"path shown (it is verified and extracted on first use):\n{where}\n"
            "or pass a local path instead of a name: a folder with inference.json or inference.pdmodel plus "
            "inference.pdiparams, or a .pdparams checkpoint."
        )
    attempts: list[tuple[str, ShituFeaturesError]] = []
    for i, (_, url) in enumerate(plans):
        try:
            resolved = fetch(i, allow_download=True)
        except (DownloadError, ArchiveError, UnsafeArchiveError, ModelNotFoundError) as exc:
            logger.info("could not use %s: %s", url, exc)
            attempts.append((url, exc))
            continue
        assert resolved is not None  # allow_download=True always yields an entry or raises
        if attempts:
            logger.warning(
                "%s: using %s after %d earlier source(s) failed: %s",
                model.name, url, len(attempts), "; ".join(f"{u}: {e}" for u, e in attempts),
            )
        return resolved
    if len(attempts) == 1:
        raise attempts[0][1]
    tried = "\n".join(f"  {n}. {type(e).__name__}: {e}" for n, (_, e) in enumerate(attempts, 1))
    raise DownloadError(
        f"could not fetch {model.name} from any of its {len(attempts)} sources:\n{tried}\n"
        f"Check the network or proxy, set {ENV_ENDPOINT} to a mirror, or download one of these files yourself "
        "and pass its local path (an extracted folder or a .pdparams file)."
    ) from attempts[-1][1]


def _resolve_url(
    url: str, home: Path, offline: bool, local_files_only: bool, force: bool, progress: bool | None
) -> ResolvedModel:
    filename = posixpath.basename(urllib.parse.urlsplit(url).path)
    suffix = _tar_suffix(filename)
    if suffix is None and not filename.lower().endswith(".pdparams"):
        raise ConfigError(f"cannot tell the format of {url}: the URL must end in .tar, .tar.gz, .tgz or .pdparams")
    fmt = "pdparams" if suffix is None else "tar"
    stem = filename[: -len(suffix)] if suffix else filename[: -len(".pdparams")]
    name = re.sub(r"[^A-Za-z0-9._-]", "_", stem) or "download"
    root = home / name / _url_key(url)
    got = _fetch(
        url, fmt, filename, root, sha256=None, size=None, offline=offline,
        allow_download=not offline, force=force, progress=progress,
    )  # fmt: skip
    if got is None:
        raise OfflineError(
            f"offline mode is on ({_offline_reason(local_files_only)}) and {url} is not in the cache: download it "
            f"and save it as {root / filename}, or pass a local path"
        )
    return _as_resolved(got[0], fmt, name, url, got[1])


def _resolve_hf(spec: str, home: Path, offline: bool, local_files_only: bool, force: bool) -> ResolvedModel:
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import (
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo_id, _, revision = spec.partition("@")
    source = f"hf://{spec}"
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision or None,
            cache_dir=home / "huggingface",
            local_files_only=offline,  # HF reads HF_HUB_OFFLINE at import time; pass it explicitly
            force_download=force,
            library_name="shitu-features",
            library_version=__version__,
        )
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise ModelNotFoundError(
            f"{spec!r} is neither a local path nor a Hugging Face repo that exists (or is accessible): {exc}"
        ) from exc
    except LocalEntryNotFoundError as exc:
        if offline:
            raise OfflineError(
                f"offline mode is on ({_offline_reason(local_files_only)}) and the Hugging Face repo {repo_id!r} "
                f"is not in the cache {home / 'huggingface'}; {spec!r} is not a local path either. Run once with "
                "network access or pass a local folder."
            ) from exc
        raise DownloadError(f"cannot download {source}: {exc}") from exc
    except HFValidationError as exc:
        raise ConfigError(f"{spec!r} is not a valid Hugging Face repo id: {exc}") from exc
    except (HfHubHTTPError, OSError) as exc:
        raise DownloadError(f"cannot download {source}: {type(exc).__name__}: {exc}") from exc
    return _resolve_folder(Path(folder), repo_id, source, downloaded=not offline)


def _resolve_local(path: Path, home: Path) -> ResolvedModel:
    if path.is_dir():
        return _resolve_folder(path, path.resolve().name, str(path))
    if path.name.lower().endswith(".pdparams"):
        return ResolvedModel("pdparams", path, path.name[: -len(".pdparams")], str(path))
    if path.suffix.lower() in (".json", ".pdmodel", ".pdiparams", ".yml"):
        return _resolve_folder(path.parent, path.parent.resolve().name, str(path))
    suffix = _tar_suffix(path.name)
    if suffix is not None:
        stat = path.stat()
        key = _url_key(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}")
        root = home / "local" / key
        root.mkdir(parents=True, exist_ok=True)
        with _locked(root / ".lock"):
            extracted = root / _EXTRACTED
            if not extracted.is_dir():
                safe_extract_tar(path, extracted)
        return _resolve_folder(extracted, path.name[: -len(suffix)], str(path))
    raise ModelNotFoundError(
        f"{path} is not a model: pass a folder with an exported model, a .pdparams checkpoint or a .tar archive"
    )


def _looks_like_path(text: str) -> bool:
    return text.startswith((".", "~", "/")) or "\\" in text or text.lower().endswith((".pdparams", *_TAR_SUFFIXES))


def resolve(
    name_or_path: PathLike | None = None,
    *,
    cache_dir: PathLike | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
    progress: bool | None = None,
) -> ResolvedModel:
    """Turn a model name, path, URL or hub id into files on disk, downloading and caching as needed.

    Accepted forms, checked in this order:

    1. ``None``: the default official model (``"PP-ShiTuV2"``).
    2. An ``os.PathLike``: always a local path.
    3. ``"http://..."`` / ``"https://..."`` ending in ``.tar``, ``.tar.gz``, ``.tgz`` or ``.pdparams``.
    4. ``"hf://org/name[@revision]"``: a Hugging Face Hub repo (``huggingface_hub.snapshot_download``).
    5. An official name or alias (case-insensitive, e.g. ``"PP-ShiTuV2_rec"``); a folder of the same name
       is only used when written as a path (``"./PP-ShiTuV2"``).
    6. An existing local path: a folder with an exported model (or holding a single ``.pdparams``), a
       ``.pdparams`` file, a ``.tar`` archive (extracted into the cache) or a model file inside a folder.
    7. ``"org/name[@revision]"`` that is not an existing path: a Hugging Face Hub repo.

    Official models try their artifacts in registry order: any already-cached one is used first without
    network access; otherwise they are downloaded in order, falling through on "not found", connection,
    checksum or archive errors, and all attempts are reported if none works. The cache layout is
    ``<cache>/<name>/<sha256(url)[:12]>/<filename>`` (plus ``extracted/`` for tars).

    Args:
        name_or_path: What to resolve, see above.
        cache_dir: Cache root; default :func:`cache_home`.
        local_files_only: Never use the network (like ``SHITU_FEATURES_OFFLINE=1``).
        force_download: Download again even when cached.
        progress: Show download progress bars (``None``: only on a terminal).

    Returns:
        A :class:`ResolvedModel`.

    Raises:
        UnknownModelError: Not a path, URL or hub id, and not an official name (close matches listed).
        ModelNotFoundError: A local path without a loadable model, or a hub repo that does not exist.
        OfflineError: Offline and not cached; the message says what to download and where to put it.
        DownloadError: Every download attempt failed (:class:`ChecksumError` for a bad file).
        UnsafeArchiveError: A downloaded archive tries to write outside its folder.
        ConfigError: A URL of unknown format, or a bad ``SHITU_FEATURES_ENDPOINT``.
    """
    home = Path(cache_dir).expanduser() if cache_dir is not None else cache_home()
    offline = local_files_only or is_offline()
    if name_or_path is None:
        return _resolve_official(resolve_official(DEFAULT_MODEL), home, offline, local_files_only, force_download,
                                 progress)  # fmt: skip
    if isinstance(name_or_path, os.PathLike):
        path = Path(name_or_path).expanduser()
        if not path.exists():
            raise ModelNotFoundError(f"model path {path} does not exist")
        return _resolve_local(path, home)
    if not isinstance(name_or_path, str):
        raise InvalidInputError(f"name_or_path must be a str, a path or None, not {type(name_or_path).__name__}")
    text = name_or_path.strip()
    if text.lower().startswith(("http://", "https://")):
        return _resolve_url(text, home, offline, local_files_only, force_download, progress)
    if text.startswith("hf://"):
        return _resolve_hf(text[len("hf://") :], home, offline, local_files_only, force_download)
    unknown: UnknownModelError | None = None
    if not _looks_like_path(text):
        try:
            model = resolve_official(text)
        except UnknownModelError as exc:
            unknown = exc
        else:
            return _resolve_official(model, home, offline, local_files_only, force_download, progress)
    path = Path(text).expanduser()
    if path.exists():
        return _resolve_local(path, home)
    if unknown is not None and _HF_REPO_RE.match(text):
        return _resolve_hf(text, home, offline, local_files_only, force_download)
    if unknown is None or "/" in text or os.sep in text:
        raise ModelNotFoundError(f"model path {path} does not exist")
    raise unknown
