"""Helpers shared by the subcommands: options, logging, model loading, input listing and atomic file writing.

Nothing here imports Paddle at module import time (``--help`` must be instant).
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from typing import IO, Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from shitu_features.errors import ConfigError, DatasetFormatError, ImageNotFoundError, ShituFeaturesError

PROG = "shitu-features"

#: Extensions (lower case) picked up when a directory or a glob is expanded; a file named explicitly is taken
#: whatever its extension. These are the formats ``cv2.imdecode`` reads (GIF is not one of them).
IMAGE_EXTENSIONS: frozenset[str] = frozenset({
    ".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".dib", ".tif", ".tiff", ".webp",
    ".pgm", ".ppm", ".pbm", ".pnm", ".jp2",
})
#: An explicitly named file with one of these extensions is read as a list file, not as an image.
LIST_EXTENSIONS: frozenset[str] = frozenset({".txt", ".lst", ".list"})

_GLOB_CHARS = re.compile(r"[*?\[]")
# The reference list format is space separated (spec §6); the Grocery Store lists use ", " — accept both.
_LIST_SEPARATOR = re.compile(r"[\s,]+")

log = logging.getLogger("shitu_features.cli")


# --------------------------------------------------------------------------------------------- options, output


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the hand-wrapped description and epilog, and shows defaults where a help text mentions none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text or action.default in (None, argparse.SUPPRESS) or action.nargs == 0
                or not action.option_strings):  # nargs == 0: a flag, whose "default" would only confuse
            return text
        return text + " (default: %(default)s)"


def common_options() -> argparse.ArgumentParser:
    """A parent parser with ``-q``, ``-v`` and ``--debug``, accepted before or after the subcommand."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("output options")
    # SUPPRESS: a subcommand's parser must not reset a flag given before the subcommand.
    group.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                       help="no progress bar and no status messages (errors are still printed)")
    group.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                       help="log more (INFO; -vv for DEBUG)")
    group.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the full traceback on errors, and DEBUG logs")
    return parent


def add_subcommand(subparsers: Any, name: str, *, help: str, description: str, epilog: str,
                   run: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
    """Add a subcommand parser with the shared options, the house help formatter and its ``run`` function."""
    parser = subparsers.add_parser(name, help=help, description=description, epilog=epilog,
                                   parents=[common_options()], formatter_class=HelpFormatter)
    parser.set_defaults(run=run)
    return parser


def add_model_options(parser: argparse.ArgumentParser, *, batch: bool = True) -> None:
    """``--model``, ``--device``, ``--num-threads``, ``--precision``, ``--no-onednn``, ``--offline``, ``--cache-dir`` (and ``--batch-size``)."""
    group = parser.add_argument_group("model options")
    group.add_argument("-m", "--model", metavar="NAME_OR_PATH",
                       help="official model name, inference directory or .pdparams checkpoint "
                            "(default: the official PP-ShiTuV2 weights)")
    group.add_argument("--device", default="cpu", help="'cpu', 'gpu' or 'gpu:N'")
    group.add_argument("--num-threads", type=positive_int, metavar="N",
                       help="CPU math threads (default: the physical cores)")
    group.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32",
                       help="fp32 (default: the reference's numbers), fp16 (GPU) or bf16 (CPU with AMX / "
                            "AVX512-BF16: about 1.7x faster, approximate vectors)")
    group.add_argument("--no-onednn", dest="use_mkldnn", action="store_false",
                       help="turn oneDNN off on CPU (escape hatch for Paddle builds whose oneDNN misbehaves)")
    group.add_argument("--offline", action="store_true",
                       help="never download; use the cache only (also SHITU_FEATURES_OFFLINE=1)")
    group.add_argument("--cache-dir", metavar="DIR", help="model cache (default: $SHITU_FEATURES_HOME)")
    if batch:
        group.add_argument("-b", "--batch-size", type=positive_int, default=32, metavar="N",
                           help="images per forward pass")


def positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def configure_logging(*, quiet: bool, verbose: int, debug: bool) -> logging.Handler:
    """Route the library's log records to stderr as ``shitu-features: warning: ...`` lines.

    Returns:
        The handler added to the ``shitu_features`` logger (remove it when done, for in-process callers).
    """
    level = logging.ERROR if quiet else logging.WARNING
    if verbose:
        level = logging.INFO if verbose == 1 else logging.DEBUG
    if debug:
        level = logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s: %(message)s"))
    logger = logging.getLogger("shitu_features")
    logger.addHandler(handler)
    logger.setLevel(level)
    return handler


def say(args: argparse.Namespace, message: str) -> None:
    """Print a status line on stderr unless ``--quiet`` (stdout is kept for results)."""
    if not getattr(args, "quiet", False):
        print(message, file=sys.stderr, flush=True)


def one_line(text: str) -> str:
    """Collapse whitespace runs (newlines included) so a message fits one line."""
    return " ".join(str(text).split())


def error_line(exc: BaseException) -> str:
    """The one-line message printed for an error that ends the command."""
    if isinstance(exc, OSError) and not isinstance(exc, ShituFeaturesError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{PROG}: error: {exc.strerror}{where}"
    if isinstance(exc, (ShituFeaturesError, OSError, ValueError)):
        return f"{PROG}: error: {one_line(str(exc)) or type(exc).__name__}"
    return (f"{PROG}: internal error: {type(exc).__name__}: {one_line(str(exc))} "
            "(rerun with --debug for the traceback, and please report it)")


def progress_bar(args: argparse.Namespace, *, total: int, initial: int = 0, desc: str = "embedding") -> Any:
    """A tqdm bar on stderr (hidden with ``--quiet`` or when stderr is not a terminal), or a no-op stand-in."""
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm comes with huggingface-hub; without it there is simply no bar
        return _NoBar()
    disable = True if getattr(args, "quiet", False) else None  # None: tqdm hides itself off a terminal
    return tqdm(total=total, initial=initial, desc=desc, unit="img", disable=disable, dynamic_ncols=True,
                file=sys.stderr)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def load_extractor(args: argparse.Namespace) -> Any:
    """Load the model named by ``--model`` with the device options of ``args``.

    Returns:
        A :class:`shitu_features.inference.extractor.Extractor`.
    """
    from shitu_features.inference.extractor import Extractor

    kwargs: dict[str, Any] = {"device": args.device, "num_threads": args.num_threads,
                              "use_mkldnn": getattr(args, "use_mkldnn", True),
                              "precision": getattr(args, "precision", "fp32")}
    if args.cache_dir:
        kwargs["cache_dir"] = args.cache_dir
    if args.offline:
        kwargs["local_files_only"] = True
    return Extractor.from_pretrained(args.model, **kwargs)


def model_identity(model: str | None) -> str:
    """A stable description of ``--model`` for run manifests: an absolute path for a local path, else the name."""
    if model is None:
        return "<default>"
    return os.path.abspath(model) if os.path.exists(model) else model


# --------------------------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class ListEntry:
    """One line of a list file: ``path [label [unique_id]]`` (spec §6).

    Attributes:
        path: The image path, joined to the root (the list file's folder unless ``--root`` is given).
        label: The second column, or ``None``.
        unique_id: The third column, or ``None``.
        line: 1-based line number in the list file, for messages.
    """

    path: str
    label: str | None
    unique_id: str | None
    line: int


def read_list_file(list_path: str, root: str | None = None) -> list[ListEntry]:
    """Parse a list file: one image per line, ``path [label [unique_id]]``, separated by spaces or commas.

    Blank lines and lines starting with ``#`` are skipped. Relative paths are joined to ``root``, or to the
    list file's own folder when ``root`` is ``None`` (the reference joins them to ``image_root``, spec §6).

    Raises:
        ImageNotFoundError: The list file does not exist.
        DatasetFormatError: A line has more than three columns.
    """
    if not os.path.isfile(list_path):
        raise ImageNotFoundError(f"list file not found: {list_path}")
    base = root if root is not None else os.path.dirname(list_path)
    entries: list[ListEntry] = []
    with open(list_path, encoding="utf-8", errors="surrogateescape") as handle:
        for number, raw in enumerate(handle, start=1):
            text = raw.strip()
            if not text or text.startswith("#"):
                continue
            cols = [c for c in _LIST_SEPARATOR.split(text) if c]
            if len(cols) > 3:
                raise DatasetFormatError(
                    f"{list_path}:{number}: expected 'path [label [unique_id]]', got {len(cols)} columns: {text!r}"
                )
            cols += [None] * (3 - len(cols))  # type: ignore[list-item]
            entries.append(ListEntry(os.path.join(base, cols[0]), cols[1], cols[2], number))
    return entries


@dataclass(frozen=True)
class LabelledList:
    """Labelled images read from a list file or a folder tree.

    Attributes:
        paths: Image paths.
        labels: ``[N]`` labels (``int64`` from a list file, ``str`` class-folder names from a tree).
        unique_ids: ``[N]`` ``int64`` unique ids (the list's third column), or ``None``.
    """

    paths: list[str]
    labels: np.ndarray
    unique_ids: np.ndarray | None = None

    def with_row_ids(self) -> LabelledList:
        """The same list with the row number as unique id (excludes self-matches when query == gallery)."""
        return LabelledList(self.paths, self.labels, np.arange(len(self.paths), dtype=np.int64))


def read_labelled_list(list_path: str, root: str | None = None, delimiter: str | None = None) -> LabelledList:
    """Read a ``path label [unique_id]`` list file (with ``ImageDataset.from_list_file`` of shitu_features.data).

    Args:
        list_path: The list file.
        root: Folder the paths are relative to (default: the list file's folder).
        delimiter: Column separator; ``None`` splits on whitespace, or on ``,`` when the first line has a comma
            (the Grocery Store lists are ``path, label, id``).

    Raises:
        ImageNotFoundError: The list file does not exist.
        DatasetFormatError: A malformed line (named in the message).
    """
    from shitu_features.data.datasets import ImageDataset

    if not os.path.isfile(list_path):
        raise ImageNotFoundError(f"list file not found: {list_path}")
    if delimiter is None:
        with open(list_path, encoding="utf-8") as handle:
            first = next((line for line in handle if line.strip()), "")
        delimiter = "," if "," in first else None
    data = ImageDataset.from_list_file(list_path, root, delimiter=delimiter, check_files=False)
    return LabelledList(data.paths, np.asarray(data.original_labels), data.unique_ids)


def labelled_folder(directory: str, extensions: frozenset[str] = IMAGE_EXTENSIONS) -> LabelledList:
    """Images under ``directory`` labelled by their class folder (``DIR/<label>/**/image``), sorted by path.

    Raises:
        DatasetFormatError: No class folder holds an image.
    """
    from shitu_features.data.datasets import ImageDataset

    data = ImageDataset.from_folder(directory, extensions=sorted(extensions), check_files=False)
    return LabelledList(data.paths, np.asarray(data.original_labels, dtype=str))


def _walk_images(directory: str, extensions: frozenset[str]) -> list[str]:
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]  # .git, .ipynb_checkpoints, ...
        found.extend(os.path.join(dirpath, f) for f in filenames
                     if not f.startswith(".") and os.path.splitext(f)[1].lower() in extensions)
    return sorted(found)


def _is_list_file(spec: str) -> bool:
    return os.path.splitext(spec)[1].lower() in LIST_EXTENSIONS


def expand_inputs(specs: Sequence[str], *, root: str | None = None,
                  extensions: frozenset[str] = IMAGE_EXTENSIONS) -> list[str]:
    """Turn command-line inputs into the list of image paths, in a deterministic order.

    Each input is, in this order of precedence: ``@FILE`` (a list file), an existing directory (searched
    recursively for image extensions, hidden entries skipped, sorted by path), an existing file (a list file if it
    ends in .txt/.lst/.list, else an image whatever its extension), or a glob pattern (``**`` allowed; matches
    filtered by image extension and sorted). Inputs keep their command-line order; a list file keeps its line
    order. Nothing is de-duplicated, so rows stay aligned with list files.

    Raises:
        ImageNotFoundError: An input matches nothing.
    """
    paths: list[str] = []
    for spec in specs:
        if spec.startswith("@"):
            paths.extend(e.path for e in read_list_file(spec[1:], root))
        elif os.path.isdir(spec):
            found = _walk_images(spec, extensions)
            if not found:
                raise ImageNotFoundError(
                    f"no images in directory {spec} (looked for {', '.join(sorted(extensions))})"
                )
            paths.extend(found)
        elif os.path.isfile(spec):
            paths.extend(e.path for e in read_list_file(spec, root)) if _is_list_file(spec) else paths.append(spec)
        elif _GLOB_CHARS.search(spec):
            found = sorted(p for p in glob.glob(spec, recursive=True)
                           if os.path.isfile(p) and os.path.splitext(p)[1].lower() in extensions)
            if not found:
                raise ImageNotFoundError(f"no image matches the pattern {spec!r}")
            paths.extend(found)
        else:
            raise ImageNotFoundError(f"no such file or directory: {spec}")
    return paths


# --------------------------------------------------------------------------------------------- files


def output_stem(out: str) -> tuple[str, str]:
    """Split ``-o OUT`` into the stem for sidecars and the main file: ``feats`` -> (``feats``, ``feats.npy``).

    ``OUT`` ending in ``.npy`` or ``.npz`` names the main file; anything else gets ``.npy`` appended.
    """
    lower = out.lower()
    if lower.endswith((".npy", ".npz")):
        return out[:-4], out
    return out, out + ".npy"


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> None:
    """Write a file through ``write(handle)`` into a temporary file beside it, fsync, then rename over ``path``.

    A reader (or a run killed halfway) sees either the old file or the complete new one, never a torn one.
    """
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix="-" + os.path.basename(path)[:40], dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def encode_lines(lines: Iterable[str]) -> bytes:
    """UTF-8 text, one item per line with ``\\n``; undecodable file-name bytes round-trip (surrogateescape)."""
    return "".join(f"{line}\n" for line in lines).encode("utf-8", errors="surrogateescape")


def check_single_line(values: Iterable[str], what: str) -> None:
    """Refuse values containing a newline, which a line-per-item text file cannot represent."""
    for value in values:
        if "\n" in value or "\r" in value:
            raise ConfigError(f"{what} {value!r} contains a line break; write a .npz output instead")


def iter_chunks(count: int, size: int) -> Iterator[tuple[int, int, int]]:
    """Yield ``(index, start, stop)`` of consecutive chunks of ``size`` covering ``range(count)``."""
    for index, start in enumerate(range(0, count, size)):
        yield index, start, min(count, start + size)
