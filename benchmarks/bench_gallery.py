"""Benchmark: exact search in a large Gallery, with time and the extra memory of a search.

Run: ``python benchmarks/bench_gallery.py [--num 1000000] [--dim 512] [--queries 200] [--k 10] [--save DIR]``.

The gallery is filled in chunks of random unit vectors (1M x 512 float32 is 2 GiB). The extra memory of a
search is measured with tracemalloc (numpy allocations made during the call) and with ``ru_maxrss``; the
full query x gallery score matrix, which the blocked search never builds, is printed for scale.
``--save DIR`` also times ``save`` and ``load`` (a 2 GiB file for the default size).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import List, Optional

import numpy as np

from shitu_features.gallery import Gallery


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=1_000_000, help="gallery items")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--chunk", type=int, default=100_000, help="items per add() call")
    parser.add_argument("--block-size", type=int, default=None, help="Gallery(block_size=...); default: the library's")
    parser.add_argument("--save", type=Path, default=None, help="also time save/load in this folder")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    gallery = Gallery(args.dim) if args.block_size is None else Gallery(args.dim, block_size=args.block_size)
    start = time.perf_counter()
    for first in range(0, args.num, args.chunk):
        n = min(args.chunk, args.num - first)
        gallery.add(rng.standard_normal((n, args.dim), dtype=np.float32), rng.integers(0, 50_000, n))
    fill_s = time.perf_counter() - start
    queries = rng.standard_normal((args.queries, args.dim), dtype=np.float32)
    print(f"gallery {len(gallery)} x {args.dim} float32 ({gallery.vectors.nbytes / 2**30:.2f} GiB), "
          f"filled in {fill_s:.1f} s")

    gallery.search(queries[:1], k=args.k)  # warm up BLAS threads
    rss_before = _rss_mib()
    tracemalloc.start()
    start = time.perf_counter()
    scores, labels, ids = gallery.search(queries, k=args.k)
    search_s = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    full_mib = args.queries * args.num * 4 / 2**20
    print(f"search {args.queries} queries, k={args.k}: {search_s:.2f} s "
          f"({search_s / args.queries * 1000:.1f} ms/query, {args.queries * args.num / search_s / 1e6:.0f} M scores/s)")
    print(f"peak traced allocations during search: {peak / 2**20:.1f} MiB "
          f"(a full score matrix would be {full_mib:.0f} MiB)")
    print(f"ru_maxrss: {rss_before:.0f} MiB before the search, {_rss_mib():.0f} MiB after")
    assert scores.shape == (args.queries, args.k) and (ids >= 0).all()

    if args.save is not None:
        args.save.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=args.save) as tmp:
            path = Path(tmp) / "bench.gallery"
            start = time.perf_counter()
            gallery.save(path)
            save_s = time.perf_counter() - start
            size_gib = path.stat().st_size / 2**30
            del gallery
            start = time.perf_counter()
            loaded = Gallery.load(path)
            load_s = time.perf_counter() - start
            same = np.array_equal(loaded.search(queries, k=args.k)[2], ids)
            print(f"save {save_s:.1f} s, load {load_s:.1f} s ({size_gib:.2f} GiB file); same results after load: "
                  f"{same}")


if __name__ == "__main__":
    main()
