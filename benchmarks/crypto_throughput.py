"""Throughput of the secure-aggregation arithmetic, on one CPU core.

    .venv/bin/python benchmarks/crypto_throughput.py [--repeat 7] [--sizes 100000 1000000]

For each vector length n and each ring (32-bit, 64-bit), the median of
``--repeat`` timed runs (time.perf_counter, after one warm-up run) of:

- PRG: ``hazmat.prg.expand`` (AES-256-CTR keystream into a new array), in GB/s;
- encode / decode: float32 values -> ring words -> float64, in million elements/s;
- accumulate: ``ShareAccumulator.add`` of ``--shares`` full shares, against plain
  numpy summation of as many float32 vectors (``np.add(acc, v, out=acc)``, the
  plaintext FedAvg inner loop); ``ratio`` = ring time / float32 time;
- seed add: ``ShareAccumulator.add`` of one seed share (expand and add, chunked);
- split: ``split(words, k)`` for k = 3 and k = 5 (k - 1 expansions and subtractions).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

from tessera.crypto import FullShare, Ring, SeedShare, ShareAccumulator, decode, encode, split
from tessera.crypto.hazmat import prg

RINGS = {"Z_2^32": Ring(bits=32, frac_bits=20, terms=1000), "Z_2^64": Ring(bits=64, frac_bits=40)}


def timed(fn: Callable[[], object], repeat: int) -> float:
    """Median seconds of ``repeat`` calls of ``fn`` after one warm-up call."""
    fn()
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


def bench(n: int, ring: Ring, repeat: int, shares: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    itemsize = np.dtype(ring.dtype).itemsize
    seed = bytes(range(32))
    values = rng.uniform(-0.5, 0.5, n).astype(np.float32)
    words = encode(values, ring, rng)

    t_prg = timed(lambda: prg.expand(seed, n, ring.dtype), repeat)
    t_enc = timed(lambda: encode(values, ring, rng), repeat)
    t_dec = timed(lambda: decode(words, ring), repeat)

    fulls = [FullShare(prg.expand(bytes([i]) * 32, n, ring.dtype)) for i in range(shares)]
    floats = [rng.standard_normal(n, dtype=np.float32) for _ in range(shares)]

    def ring_sum() -> None:
        acc = ShareAccumulator(n, ring)
        for share in fulls:
            acc.add(share)

    def float_sum() -> None:
        acc = np.zeros(n, np.float32)
        for v in floats:
            np.add(acc, v, out=acc)

    acc = ShareAccumulator(n, ring)
    t_ring = timed(ring_sum, repeat)
    t_float = timed(float_sum, repeat)
    t_seed = timed(lambda: acc.add(SeedShare(seed)), repeat)
    t_split3 = timed(lambda: split(words, 3, full_position=0, ring=ring), repeat)
    t_split5 = timed(lambda: split(words, 5, full_position=0, ring=ring), repeat)
    return {
        "prg_gbs": n * itemsize / t_prg / 1e9,
        "enc_meps": n / t_enc / 1e6,
        "dec_meps": n / t_dec / 1e6,
        "ring_ms": t_ring * 1e3,
        "float_ms": t_float * 1e3,
        "ratio": t_ring / t_float,
        "seed_ms": t_seed * 1e3,
        "split3_ms": t_split3 * 1e3,
        "split5_ms": t_split5 * 1e3,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--shares", type=int, default=20, help="shares summed per accumulate run")
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    args = ap.parse_args()
    print(
        f"median of {args.repeat} runs; accumulate = {args.shares} full shares "
        f"vs {args.shares} float32 vectors"
    )
    header = (
        f"{'n':>9} {'ring':>6} {'PRG GB/s':>9} {'enc M/s':>8} {'dec M/s':>8} "
        f"{'acc ms':>8} {'f32 ms':>8} {'ratio':>6} {'seed ms':>8} "
        f"{'split3 ms':>9} {'split5 ms':>9}"
    )
    print(header)
    print("-" * len(header))
    for n in args.sizes:
        for name, ring in RINGS.items():
            r = bench(n, ring, args.repeat, args.shares)
            print(
                f"{n:>9} {name:>6} {r['prg_gbs']:>9.2f} {r['enc_meps']:>8.1f} "
                f"{r['dec_meps']:>8.1f} {r['ring_ms']:>8.2f} {r['float_ms']:>8.2f} "
                f"{r['ratio']:>6.2f} {r['seed_ms']:>8.2f} {r['split3_ms']:>9.2f} "
                f"{r['split5_ms']:>9.2f}"
            )


if __name__ == "__main__":
    main()
