"""Bytes per contributor per round, 32-bit words against reduced encodings, and what the
reduction costs in the final metric.

    .venv/bin/python benchmarks/communication.py [--quick] [--readme README.md]

Two jobs in the simulator, secure aggregation on, short runs of their example
files (``examples/digits.toml``: 100 nodes, 30 a round, 40 rounds;
``examples/chem97.toml``: one node per school, about 430 a round, 15 rounds),
each run three times from the same seed:

- ``32-bit, full``: the defaults (32-bit ring words, the float32 model sent whole);
- ``32-bit, delta``: ``[simulation] downlink = "delta"`` (the compressed exact XOR
  delta from the model each node last used; the same model, bit for bit);
- ``q-bit, delta``: also ``[secure] precision = q``, q the largest word that still
  fits a 16-bit ring with the round's contributors (digits 8, Chem97 7), whose
  spare bits the ring spends on precision.

Printed for each, all measured in the same run: the ring width, the mean bytes
up per contributor (sealed shares) and bytes down per selected node (train
request with the model) over the rounds, each as a ratio to the first run's,
and the final accuracy with its ratio to the first run's. ``--quick`` runs 3
rounds (a smoke test, not the README's figures). Progress to stderr, the table
to stdout; ``--readme`` writes it between the communication markers.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
BEGIN, END = "<!-- communication:begin -->", "<!-- communication:end -->"
JOBS = (("digits", "digits.toml", 40, 8), ("Chem97 (schools)", "chem97.toml", 15, 7))
QUICK_ROUNDS = 3


@dataclass
class Run:
    job: str
    encoding: str
    ring_bits: int
    up: float
    down: float
    value: float


def run_one(job_name: str, file: str, rounds: int, precision: int | None, downlink: str) -> Run:
    from tessera.config import load_config
    from tessera.jobs.prepared import prepare_job
    from tessera.jobs.secure import summarize
    from tessera.runtime.sim.job import simulate
    from tessera.runtime.sim.statistics import totals_for

    cfg = load_config(EXAMPLES / file)
    cfg = cfg.model_copy(
        update={
            "federation": cfg.federation.model_copy(update={"rounds": rounds}),
            "secure": cfg.secure.model_copy(update={"precision": precision}),
            "simulation": cfg.simulation.model_copy(update={"downlink": downlink}),
            "baseline": cfg.baseline.model_copy(update={"enabled": False}),
        }
    )
    job = prepare_job(cfg, totals_of=totals_for(cfg, secure=True))
    result = simulate(job, secure=True)
    trained = [r for r in result.rounds if r.participants and r.selected]
    words = "32-bit" if precision is None else f"{precision}-bit"
    return Run(
        job=job_name,
        encoding=f"{words}, {downlink}",
        ring_bits=summarize(job).ring_bits,
        up=statistics.fmean(r.bytes_up / r.participants for r in trained),
        down=statistics.fmean(r.bytes_down / r.selected for r in trained),
        value=result.rounds[-1].value,
    )


def table(runs: list[Run]) -> str:
    head = [
        "job",
        "encoding, downlink",
        "ring bits",
        "bytes up / contributor",
        "vs 32-bit",
        "bytes down / node",
        "vs full",
        "accuracy",
        "vs 32-bit",
    ]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    first: dict[str, Run] = {}
    for r in runs:
        base = first.setdefault(r.job, r)
        cells = [
            r.job,
            r.encoding,
            str(r.ring_bits),
            f"{r.up:,.0f}",
            f"{r.up / base.up:.3f}x",
            f"{r.down:,.0f}",
            f"{r.down / base.down:.3f}x",
            f"{r.value:.4f}",
            f"{r.value / base.value:.3f}x",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_ROUNDS} rounds each")
    parser.add_argument("--readme", type=Path, help="write the table into this README")
    args = parser.parse_args()
    runs = []
    for name, file, rounds, q in JOBS:
        for precision, downlink in ((None, "full"), (None, "delta"), (q, "delta")):
            print(f"{name}: precision {precision}, downlink {downlink} ...", file=sys.stderr)
            run = run_one(name, file, QUICK_ROUNDS if args.quick else rounds, precision, downlink)
            print(f"  {run}", file=sys.stderr, flush=True)
            runs.append(run)
    text = table(runs)
    print(text)
    if args.readme is not None and not args.quick:
        from _readme import write_between  # beside this script

        write_between(args.readme, BEGIN, END, text)


if __name__ == "__main__":
    main()
