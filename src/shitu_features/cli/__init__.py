"""The ``shitu-features`` command line: ``embed``, ``eval``, ``export``, ``train``, ``info`` and ``gallery``.

Each subcommand lives in its own module with two functions, ``add_parser(subparsers)`` and ``run(args) -> int``;
:data:`COMMANDS` lists them. The modules hold argument handling, file listing, sharding, resume bookkeeping and
output writing only; the work is done by the library (``Extractor``, ``retrieval_metrics``, ``Gallery``, ...).
Nothing in this package imports Paddle until a command needs it (``shitu_features/__init__.py`` may, though).

Exit codes: 0 success, 1 error (any :class:`~shitu_features.errors.ShituFeaturesError`, a missing file, ...;
one line on stderr, the traceback only with ``--debug``), 2 usage error (argparse), 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from types import ModuleType
from typing import Callable, Sequence

from shitu_features.cli import embed, evaluate, export, gallery, info, train
from shitu_features.cli._common import PROG, common_options, configure_logging, error_line

__all__ = ["main", "build_parser", "COMMANDS"]

#: Subcommand name -> module with ``add_parser(subparsers)`` and ``run(args) -> int``, in help order.
COMMANDS: dict[str, ModuleType] = {
    "embed": embed,
    "eval": evaluate,
    "gallery": gallery,
    "export": export,
    "train": train,
    "info": info,
}

_DESCRIPTION = """\
PP-ShiTuV2 image embeddings (512-d, L2-normalised) on PaddlePaddle: embed folders of images, evaluate
retrieval, build and search a gallery, export and train models.

Models: --model takes an official name (default PP-ShiTuV2, downloaded once into the cache, see
`shitu-features info`), an exported inference directory, or a .pdparams checkpoint."""

_EPILOG = """\
examples:
  shitu-features embed photos/ -o feats            # feats.npy + feats.paths.txt
  shitu-features embed @list.txt -o feats.npz --shard 0/4 --resume
  shitu-features eval --model out/inference --query val.txt
  shitu-features gallery build catalogue/ -o shop.gallery
  shitu-features gallery search shop.gallery new_photo.jpg -k 3
  shitu-features export ckpt.pdparams -o out/inference
  shitu-features info

exit codes: 0 success, 1 error (one line on stderr; --debug shows the traceback), 2 usage error.
Run `shitu-features COMMAND --help` for the options of a command."""


def _version() -> str:
    from shitu_features._version import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of ``shitu-features`` and all its subcommands (imports no Paddle).

    Returns:
        The top-level parser; ``parse_args`` leaves the chosen subcommand's ``run`` in ``args.run``.
    """
    parser = argparse.ArgumentParser(
        prog=PROG, description=_DESCRIPTION, epilog=_EPILOG, parents=[common_options()],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS.values():
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit code (the console script passes it to ``sys.exit``).

    Args:
        argv: Arguments without the program name; ``None`` reads ``sys.argv[1:]``.

    Returns:
        0 on success, 1 on an error (message on stderr), 2 on a usage error, 130 when interrupted.
    """
    # Paddle warnings that mean nothing to a user of this command: ccache on import (only for compiling custom
    # ops), and a notice on every BatchNorm in training mode.
    warnings.filterwarnings("ignore", message="No ccache found")
    warnings.filterwarnings("ignore", message="When training, we now always track global mean and variance")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help / --version (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    debug, verbose = getattr(args, "debug", False), getattr(args, "verbose", 0)
    restore_native_logs = _quiet_native_logs() if not (debug or verbose) else (lambda: None)
    handler = configure_logging(quiet=getattr(args, "quiet", False), verbose=verbose, debug=debug)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `shitu-features gallery search ... | head`: the reader left, not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush of stdout does not fail again
        return 0
    except Exception as exc:  # one line for the user; the traceback only on request
        if debug:
            raise
        print(error_line(exc), file=sys.stderr)
        return 1
    finally:
        logging.getLogger("shitu_features").removeHandler(handler)
        restore_native_logs()


def _quiet_native_logs() -> Callable[[], None]:
    """Silence the C++ loggers of Paddle (glog) and OpenCV below errors; return a function that undoes it.

    Paddle's glog prints INFO/WARNING lines that say nothing actionable to a user ("W1130 ... PIR not support
    input out tensor"); OpenCV prints "[ERROR:0@3.2] global loadsave.cpp ... can't read data" for every corrupt
    image, which the command reports itself (or lists in the skip report). glog reads ``GLOG_minloglevel`` when
    Paddle is first imported, so it only helps if Paddle is not imported yet; OpenCV's level is set directly.
    """
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("OPENCV_LOG_LEVEL", "FATAL")
    try:
        import cv2

        cv_logging = cv2.utils.logging
        previous = cv_logging.getLogLevel()
        cv_logging.setLogLevel(cv_logging.LOG_LEVEL_FATAL)
    except (ImportError, AttributeError):  # an OpenCV build without the logging API: nothing to undo
        return lambda: None
    return lambda: cv_logging.setLogLevel(previous)
