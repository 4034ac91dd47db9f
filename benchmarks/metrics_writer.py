"""Round time stays flat over a long run: seconds per round at rounds 5 and 200.

    .venv/bin/python benchmarks/metrics_writer.py [--rounds 200] [--src OTHER/src]
    .venv/bin/python benchmarks/metrics_writer.py --metrics DIR/metrics.json
    .venv/bin/python benchmarks/metrics_writer.py --writer-only

Runs `tessera run` on Chem97 with one node per student (27,911 nodes,
plaintext, every node selected, 10% dropout: ~25,000 contributor ids per
round) and reads each round's wall-clock seconds back from metrics.json.
Before the metrics writer cached each round's JSON, every round re-serialised
every earlier round with its ids (dataclasses.asdict copies each id), and the
run slowed down as it went. The floor is round 5's time: the ratio of the
last round to it should be ~1.

Measured 2026-12-04 on the shared 2-core machine (both runs cut short by an
outside SIGTERM; medians of 5 rounds):
  before (ea97b91, --src): round 5 2.38 s, round 160 5.44 s: 2.29x
  after (MetricsWriter):   round 5 2.62 s, round 142 2.51 s: 0.96x
--writer-only, CPU per round: before 94 ms at round 5, 1,004 ms at round 50,
3,723 ms at round 200 (build_metrics + write_json over every round so far);
after 3.3 ms at round 5 and 2.9 ms at round 200 (ids to rounds.jsonl included).

--src measures another checkout (e.g. the commit before the writer) with this
script; --metrics reads a run already made (or still running); --writer-only
times MetricsWriter.add_round alone, with 25,000 ids a round, in seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "chem97_per_student.toml"


def run(src: Path, rounds: int, out: Path) -> float:
    """`tessera run` from ``src`` (not whatever the venv installed); its wall seconds."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    command = [sys.executable, "-m", "tessera.cli", "run", str(CONFIG), "--out", str(out)]
    start = time.perf_counter()
    subprocess.run([*command, "--quiet", "--rounds", str(rounds)], check=True, env=env)
    return time.perf_counter() - start


def report(rounds: list[dict[str, Any]]) -> None:
    seconds = [r["seconds"] for r in rounds]
    early = statistics.median(seconds[3:8])  # around round 5, past the warm-up
    late = statistics.median(seconds[-5:])  # around the last round
    ids = rounds[-1]["participants"]
    print(f"{len(rounds)} rounds, {ids:,} contributors in the last, {sum(seconds):.0f} s in all")
    print(f"seconds per round: round 5 {early:.2f}, round {len(rounds)} {late:.2f}")
    print(f"last / round 5: {late / early:.2f}x (flat = 1.00x)")


def writer_only(rounds: int, ids: int) -> None:
    """add_round's own cost at round 5 and at the last round, with no simulation around it.

    CPU seconds are the figure (a shared machine's wall clock is noisy); wall beside it.
    """
    sys.path.insert(0, str(HERE.parent / "src"))
    from tessera.config import load_config
    from tessera.jobs.prepared import prepare_job
    from tessera.jobs.records import RoundRecord
    from tessera.reports import MetricsWriter

    job = prepare_job(load_config(HERE.parent / "src" / "tessera" / "examples" / "digits.toml"))
    included = tuple(f"node-{i:06d}" for i in range(ids))  # as prepare_job names them
    cpu: list[float] = []
    wall: list[float] = []
    with tempfile.TemporaryDirectory() as out:
        writer = MetricsWriter(Path(out), job)
        for r in range(rounds):
            record = RoundRecord(
                round=r, selected=ids, participants=ids, skipped=False, included=included
            )
            start, start_cpu = time.perf_counter(), time.process_time()
            writer.add_round(record, model_digest="0" * 64)
            cpu.append(time.process_time() - start_cpu)
            wall.append(time.perf_counter() - start)
        writer.finish()
    for name, xs in (("CPU", cpu), ("wall", wall)):
        early, late = statistics.median(xs[3:8]) * 1e3, statistics.median(xs[-5:]) * 1e3
        print(
            f"add_round with {ids:,} ids, {name}: round 5 {early:.1f} ms, "
            f"round {rounds} {late:.1f} ms, last / round 5: {late / early:.2f}x (flat = 1.00x)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--src", type=Path, default=HERE.parent / "src", help="checkout to run")
    parser.add_argument("--metrics", type=Path, help="read this metrics.json instead of running")
    parser.add_argument("--writer-only", action="store_true", help="time add_round alone")
    args = parser.parse_args()
    if args.writer_only:
        writer_only(args.rounds, 25_000)
        return
    if args.metrics is not None:
        report(json.loads(args.metrics.read_text())["rounds"])
        return
    with tempfile.TemporaryDirectory() as out:
        wall = run(args.src.resolve(), args.rounds, Path(out))
        print(f"tessera run from {args.src}: {wall:.0f} s wall")
        report(json.loads((Path(out) / "metrics.json").read_text())["rounds"])


if __name__ == "__main__":
    main()
