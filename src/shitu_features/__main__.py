"""``python -m shitu_features``: the ``shitu-features`` command line (see :mod:`shitu_features.cli`)."""

from __future__ import annotations

from shitu_features.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
