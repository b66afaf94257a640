"""``shitu-features embed``: images -> ``OUT.npy`` + ``OUT.paths.txt`` (or one ``OUT.npz``), resumable and shardable.

Crash safety: the input list is cut into chunks of ``--chunk-size`` images. Each finished chunk is committed
to ``<output>.partial/`` (its ``.npy`` rows, then a small ``.json`` that marks it done; both written atomically),
next to a ``manifest.json`` naming the run (inputs, model, options). A run killed at any point loses at most the
chunk in progress; ``--resume`` checks the manifest and embeds only the chunks not yet committed. At the end the
chunks are concatenated into the outputs (written atomically, byte-for-byte the same whether or not the run was
interrupted: batches never cross chunk boundaries and the files carry no timestamps), and the folder is removed.

Sharding: ``--shard I/N`` takes the I-th of N contiguous, near-equal slices of the input list (whose order is
deterministic, see :func:`~shitu_features.cli._common.expand_inputs`), so concatenating the outputs of shards
0..N-1 in order gives the output of the whole run.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import zipfile
from pathlib import Path
from typing import IO, Any, Iterator, Sequence

import numpy as np

from shitu_features.cli._common import (
    add_model_options,
    add_subcommand,
    atomic_write,
    check_single_line,
    encode_lines,
    expand_inputs,
    iter_chunks,
    load_extractor,
    model_identity,
    one_line,
    output_stem,
    positive_int,
    progress_bar,
    say,
)
from shitu_features.cli._embedding import embed_paths
from shitu_features.errors import ConfigError, ImageNotFoundError, ShituFeaturesError

MANIFEST = "manifest.json"
PARTS_FORMAT = 1
# A zip entry's timestamp is part of the file's bytes; a fixed one makes .npz outputs reproducible.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
# Manifest key -> what the user changed, for the message of a refused --resume.
_OPTION_OF = {"images": "inputs", "paths_sha256": "inputs", "shard": "--shard", "chunk_size": "--chunk-size",
              "model": "--model", "normalize": "--no-normalize", "precision": "--precision",
              "format": "partial-folder format"}

_DESCRIPTION = """\
Embed images into a float32 array, one row per image, and record which row is which image.

Outputs: OUT.npy (float32 [N, D]) + OUT.paths.txt (N lines, the image of each row, same order); or, when OUT ends
in .npz, one file with the arrays 'embeddings' and 'paths'. With --on-error skip, unreadable images are left out
and listed with the reason in OUT.errors.tsv.

Order: inputs in command-line order; a directory or glob expands to its images sorted by path; a list file keeps
its line order. Interrupted runs: results are committed in chunks to OUT.npy.partial/ (or OUT.npz.partial/);
--resume continues from the last committed chunk and produces the same bytes as an uninterrupted run."""

_EPILOG = """\
examples:
  shitu-features embed photos/ -o feats                  # feats.npy + feats.paths.txt
  shitu-features embed 'shop/**/*.jpg' extra.png -o feats.npz
  shitu-features embed @train.txt -o train --on-error skip   # train.errors.tsv lists unreadable files
  shitu-features embed photos/ -o feats --resume         # continue after a crash or kill
  shitu-features embed photos/ -o part1 --shard 1/8      # 2nd of 8 slices, e.g. SLURM_ARRAY_TASK_ID
  python -c "import numpy as np; x = np.load('feats.npy'); print(x.shape)"

list files: one image per line, 'path [label [unique_id]]' (spaces or commas between columns; '#' comments);
relative paths are relative to the list file's folder, or to --root."""


def add_parser(subparsers: Any) -> None:
    """Register ``embed``."""
    parser = add_subcommand(subparsers, "embed", help="embed images into an .npy/.npz file (resumable, shardable)",
                            description=_DESCRIPTION, epilog=_EPILOG, run=run)
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image file, directory (recursive), quoted glob pattern, or list file (@FILE, or a "
                             ".txt/.lst/.list file)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT",
                        help="output: OUT.npy + OUT.paths.txt, or one OUT.npz")
    parser.add_argument("--root", metavar="DIR", help="folder for relative paths in list files "
                                                      "(default: each list file's folder)")
    add_model_options(parser)
    group = parser.add_argument_group("run options")
    group.add_argument("--no-normalize", dest="normalize", action="store_false",
                       help="write the raw BN-neck features instead of L2-normalised embeddings")
    group.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                       help="'raise': stop at the first unreadable image (committed chunks are kept for --resume); "
                            "'skip': leave it out and list it in OUT.errors.tsv")
    group.add_argument("--shard", type=parse_shard, metavar="I/N",
                       help="embed only the I-th (0-based) of N contiguous slices of the input list")
    group.add_argument("--chunk-size", type=positive_int, default=512, metavar="N",
                       help="images per committed chunk; a killed run loses at most one chunk")
    mode = group.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true",
                      help="continue an interrupted run of the same command, skipping committed chunks")
    mode.add_argument("--restart", action="store_true",
                      help="discard the partial results of an interrupted run and start over")


def parse_shard(text: str) -> tuple[int, int]:
    """argparse type for ``--shard I/N`` (``0 <= I < N``)."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected I/N such as 0/4, got {text!r}")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or index >= count:
        raise argparse.ArgumentTypeError(f"shard index must be in 0..N-1 with N >= 1, got {text!r}")
    return index, count


def shard_slice(count: int, shard: tuple[int, int] | None) -> slice:
    """The slice of a ``count``-long list that ``shard = (I, N)`` covers; shards 0..N-1 tile it in order."""
    if shard is None:
        return slice(0, count)
    index, total = shard
    return slice(index * count // total, (index + 1) * count // total)


def run(args: argparse.Namespace) -> int:
    """Run ``embed``; see the module docstring."""
    all_paths = expand_inputs(args.inputs, root=args.root)
    if not all_paths:
        raise ImageNotFoundError(f"no images in {' '.join(args.inputs)}")
    paths = all_paths[shard_slice(len(all_paths), args.shard)]
    stem, final = output_stem(args.output)
    npz = final.lower().endswith(".npz")
    if not npz:
        check_single_line(paths, "image path")
    Path(final).parent.mkdir(parents=True, exist_ok=True)

    run_id = {
        "format": PARTS_FORMAT,
        "images": len(paths),
        "paths_sha256": _digest(paths),
        "shard": None if args.shard is None else f"{args.shard[0]}/{args.shard[1]}",
        "chunk_size": args.chunk_size,
        "model": model_identity(args.model),
        "normalize": args.normalize,
    }
    if args.precision != "fp32":  # absent means fp32, so partial folders of earlier versions still resume
        run_id["precision"] = args.precision
    store = ChunkStore(Path(final + ".partial"))
    with store.session():
        done = store.open(run_id, resume=args.resume, restart=args.restart)
        chunks = list(iter_chunks(len(paths), args.chunk_size))
        todo = [c for c in chunks if c[0] not in done]
        done_images = sum(stop - start for k, start, stop in chunks if k in done)
        if done:
            say(args, f"resuming: {done_images} of {len(paths)} images already embedded")
        if todo or not chunks:
            try:
                _embed_chunks(args, store, paths, todo, done_images)
            except KeyboardInterrupt:
                say(args, f"committed chunks are kept in {store.directory}: rerun the command with --resume")
                raise
        ok_rows, failures = _assemble(store, paths, chunks, stem, final, npz)
    store.remove()
    written = final if npz else f"{final} + {stem}.paths.txt"
    say(args, f"embedded {ok_rows} of {len(paths)} images -> {written}"
        + (f"; skipped {len(failures)}, see {stem}.errors.tsv" if failures else ""))
    return 0


def _embed_chunks(args: argparse.Namespace, store: ChunkStore, paths: Sequence[str],
                  todo: Sequence[tuple[int, int, int]], done_images: int) -> None:
    extractor = load_extractor(args)
    store.dim = int(extractor.embedding_size)
    bar = progress_bar(args, total=len(paths), initial=done_images)
    try:
        for index, start, stop in todo:
            try:
                got = embed_paths(extractor, paths[start:stop], batch_size=args.batch_size,
                                  normalize=args.normalize, on_error=args.on_error, bar=bar)
            except ShituFeaturesError as exc:
                raise _with_resume_hint(exc, store) from exc
            store.commit(index, got.vectors, got.ok, got.failed)
    finally:
        bar.close()


def _with_resume_hint(exc: ShituFeaturesError, store: ChunkStore) -> ShituFeaturesError:
    hint = (f" (chunks already embedded are kept in {store.directory}; fix the input or add --on-error skip, "
            "and rerun with --resume)")
    try:
        return type(exc)(f"{exc}{hint}")
    except Exception:  # an error type with another constructor: keep it as it is
        return exc


def _digest(paths: Sequence[str]) -> str:
    sha = hashlib.sha256()
    for path in paths:
        sha.update(path.encode("utf-8", errors="surrogateescape") + b"\0")
    return sha.hexdigest()


# --------------------------------------------------------------------------------------------- chunk store


class ChunkStore:
    """The ``<output>.partial/`` folder of a run: ``manifest.json`` plus ``chunk-NNNNNN.{npy,json}`` pairs.

    A chunk is committed when its ``.json`` exists: the ``.npy`` is renamed into place first, the ``.json`` last.

    Attributes:
        directory: The folder.
        dim: Embedding width ``D`` (known once the model is loaded, or from a committed chunk).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.dim: int | None = None

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Hold a lock on the folder so two processes never write the same run."""
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            from filelock import FileLock, Timeout
        except ImportError:  # filelock comes with huggingface-hub; without it, no protection
            yield
            return
        lock = FileLock(str(self.directory / ".lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise ConfigError(f"another process is writing {self.directory}; wait for it to finish") from None
        try:
            yield
        finally:
            lock.release()

    def open(self, run_id: dict[str, Any], *, resume: bool, restart: bool) -> set[int]:
        """Start or continue a run; return the indices of the committed chunks that can be reused.

        Raises:
            ConfigError: Committed chunks exist without ``resume``/``restart``, or they belong to another run.
        """
        manifest = self.directory / MANIFEST
        old = _read_json(manifest)
        done = self._committed() if old is not None else set()
        if done and not (resume or restart):
            raise ConfigError(
                f"an interrupted run left {len(done)} committed chunk(s) in {self.directory}: "
                "pass --resume to continue it or --restart to discard it"
            )
        if done and resume and old != run_id:
            changed = sorted({_OPTION_OF.get(k, k) for k in set(old) | set(run_id) if old.get(k) != run_id.get(k)})
            raise ConfigError(
                f"cannot resume: the run in {self.directory} was started with other {', '.join(changed)} "
                "(the inputs, --shard, --chunk-size, --model, --precision and --no-normalize must be the same); "
                "pass --restart to discard it"
            )
        if not (resume and done):
            self._clear()
            atomic_write(manifest, lambda f: f.write(json.dumps(run_id, indent=1).encode()))
            return set()
        return done

    def _committed(self) -> set[int]:
        done = set()
        for entry in os.listdir(self.directory):
            match = re.fullmatch(r"chunk-(\d+)\.json", entry)
            if match and (self.directory / entry.replace(".json", ".npy")).is_file():
                done.add(int(match.group(1)))
        return done

    def _clear(self) -> None:
        for entry in os.listdir(self.directory):
            if entry != ".lock":
                target = self.directory / entry
                shutil.rmtree(target) if target.is_dir() else target.unlink()

    def _name(self, index: int, suffix: str) -> Path:
        return self.directory / f"chunk-{index:06d}{suffix}"

    def commit(self, index: int, vectors: np.ndarray, ok: list[int], failed: list[tuple[int, str]]) -> None:
        """Write chunk ``index``: ``vectors`` ``float32 [len(ok), D]``, local ``ok`` indices and ``failed``."""
        array = np.ascontiguousarray(vectors, dtype="<f4")
        atomic_write(self._name(index, ".npy"), lambda f: np.lib.format.write_array(f, array, allow_pickle=False))
        meta = {"ok": ok, "failed": [[i, reason] for i, reason in failed]}
        atomic_write(self._name(index, ".json"), lambda f: f.write(json.dumps(meta).encode()))

    def load(self, index: int) -> tuple[np.ndarray, list[int], list[tuple[int, str]]]:
        """Read chunk ``index`` back: (``float32 [k, D]``, ok indices, failures).

        Raises:
            ConfigError: The chunk is damaged (it does not match its own record).
        """
        meta = _read_json(self._name(index, ".json"))
        try:
            vectors = np.load(self._name(index, ".npy"), mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{self._name(index, '.npy')} is damaged ({exc}); pass --restart") from exc
        if meta is None or vectors.ndim != 2 or vectors.shape[0] != len(meta["ok"]):
            raise ConfigError(f"chunk {index} in {self.directory} is damaged; pass --restart")
        return vectors, [int(i) for i in meta["ok"]], [(int(i), str(r)) for i, r in meta["failed"]]

    def remove(self) -> None:
        """Delete the folder (the run is complete)."""
        shutil.rmtree(self.directory, ignore_errors=True)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------------------------- outputs


def _assemble(store: ChunkStore, paths: Sequence[str], chunks: Sequence[tuple[int, int, int]], stem: str,
              final: str, npz: bool) -> tuple[int, list[tuple[str, str]]]:
    """Concatenate the committed chunks into the outputs; return (rows written, [(path, reason)] skipped)."""
    ok_paths: list[str] = []
    failures: list[tuple[str, str]] = []
    arrays: list[np.ndarray] = []  # memory-mapped: checked here, streamed out below, never all in memory
    dim = store.dim
    for index, start, _ in chunks:
        vectors, ok, failed = store.load(index)
        arrays.append(vectors)
        dim = vectors.shape[1]
        ok_paths.extend(paths[start + i] for i in ok)
        failures.extend((paths[start + i], reason) for i, reason in failed)
    if dim is None:
        raise ConfigError("internal: embedding width unknown")  # chunks exist whenever paths do
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False,
              "shape": (len(ok_paths), dim)}

    def write_rows(handle: IO[bytes]) -> None:  # streamed: the whole array is never held in memory
        np.lib.format.write_array_header_1_0(handle, header)
        for vectors in arrays:
            handle.write(vectors.astype("<f4", copy=False).tobytes())

    errors_file = f"{stem}.errors.tsv"
    if failures:
        rows = ["path\treason"] + [f"{p}\t{one_line(r)}" for p, r in failures]
        atomic_write(errors_file, lambda f: f.write(encode_lines(rows)))
    elif os.path.exists(errors_file):
        os.unlink(errors_file)  # left by an earlier run of the same command; it would be wrong now
    if npz:
        atomic_write(final, lambda f: _write_npz(f, write_rows, ok_paths))
    else:
        atomic_write(f"{stem}.paths.txt", lambda f: f.write(encode_lines(ok_paths)))
        atomic_write(final, write_rows)
    return len(ok_paths), failures


def _write_npz(handle: IO[bytes], write_rows: Any, paths: list[str]) -> None:
    """An ``np.load``-able .npz with ``embeddings`` and ``paths``, with fixed entry timestamps."""
    with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, write in (("embeddings.npy", write_rows),
                            ("paths.npy", lambda f: np.lib.format.write_array(
                                f, np.array(paths, dtype=str).reshape(len(paths)), allow_pickle=False))):
            info = zipfile.ZipInfo(name, date_time=_ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            with archive.open(info, "w", force_zip64=True) as entry:
                write(entry)
