"""Benchmark: exact retrieval metrics on N x N random unit vectors, with time and peak memory.

Run: ``python benchmarks/bench_metrics.py [--num 20000] [--dim 512] [--classes 2000]``.

Peak memory is reported two ways: tracemalloc's peak of numpy allocations made *during* the call (the
working set of the blockwise ranking; the inputs are allocated before tracing starts) and the process's
``ru_maxrss``. A full Q x G float32 similarity matrix would be ``Q * G * 4`` bytes; it is printed for scale.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import tracemalloc

import numpy as np

from shitu_features.evaluation import retrieval_metrics


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=20000, help="queries and gallery items (each)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=2000, help="number of distinct labels")
    parser.add_argument("--compat", action="store_true", help="reference_compat=True")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    query, gallery = _unit(rng, args.num, args.dim), _unit(rng, args.num, args.dim)
    q_labels = rng.integers(0, args.classes, args.num)
    g_labels = rng.integers(0, args.classes, args.num)
    inputs_mib = (query.nbytes + gallery.nbytes) / 2**20
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    tracemalloc.start()
    start = time.perf_counter()
    result = retrieval_metrics(query, q_labels, gallery, g_labels, reference_compat=args.compat)
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    full_mib = args.num * args.num * 4 / 2**20
    print(f"{args.num} x {args.num} x {args.dim}, {args.classes} classes, compat={args.compat}")
    print(f"result: { {k: (round(v, 6) if isinstance(v, float) else v) for k, v in result.items()} }")
    print(f"time: {elapsed:.2f} s ({args.num / elapsed:.0f} queries/s)")
    print(f"inputs: {inputs_mib:.0f} MiB; a full similarity matrix would be {full_mib:.0f} MiB")
    print(f"peak traced allocations during the call: {peak / 2**20:.1f} MiB")
    print(f"ru_maxrss: {rss_before:.0f} MiB before, {rss_after:.0f} MiB after")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
