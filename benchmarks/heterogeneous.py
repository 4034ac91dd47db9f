"""Heterogeneous devices: waiting for everyone against deadline rounds, in simulated time.

    .venv/bin/python benchmarks/heterogeneous.py [--quick] [--readme README.md]

Two jobs in the simulator, secure aggregation on, with the ``mixed`` device
profile (70% phones, 30% laptops, each online part of the virtual day):
``examples/digits_hetero.toml`` (100 label-skewed nodes, 30 asked a round) and
``examples/chem97_hetero.toml`` (one node per school, about 430 asked a round),
each run from the same seed in these modes:

- ``wait-all``: no deadline; a round waits for every selected node up to
  ``federation.round_timeout`` (120 s) and each secure phase up to 30 s, as
  plain FedAvg does;
- ``deadline, no partial``: the example's ``[deadline]``, a node that cannot
  finish its local work in time is a straggler (FedAvg);
- ``deadline + partial, FedAvg``: slow nodes do the minibatches that fit, their
  updates averaged by samples as they are;
- ``deadline + partial, FedNova``: the example as written: FedNova normalises
  the unequal steps;
- ``deadline + partial, FedNova, reweighted``: also ``[federation] availability
  = "reweight"``, so nodes online less often count as much over the job;
- ``buffered async (FedBuff)``: no deadline, every node asked each round, a
  round's training phase closed once ``federation.min_participants`` updates
  are in (``[strategy] buffer``), a node still training carrying its update
  into a later round, down-weighted by its staleness.

Printed for each, measured in the same run: the final and best accuracy, the
simulated hours in all, and the simulated hours until the accuracy first
reaches the target (95% of the best accuracy any mode reached on that job),
each beside the wait-all run's as a ratio. ``--quick`` runs 5 rounds (a smoke
test, not the README's figures). Progress to stderr, the table to stdout;
``--readme`` writes it between the heterogeneous markers.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
BEGIN, END = "<!-- heterogeneous:begin -->", "<!-- heterogeneous:end -->"
JOBS = (("digits", "digits_hetero.toml", 150), ("Chem97 (schools)", "chem97_hetero.toml", 60))
QUICK_ROUNDS = 5
TARGET = 0.95  # of the best accuracy reached on the job, by any mode


@dataclass
class Run:
    job: str
    mode: str
    values: list[float]  # accuracy after each round
    seconds: list[float]  # simulated seconds of each round
    stragglers: int
    partial: int

    @property
    def hours(self) -> float:
        return sum(self.seconds) / 3600

    def hours_to(self, target: float) -> float | None:
        """Simulated hours until the accuracy first reaches ``target`` (None: never)."""
        elapsed = 0.0
        for value, seconds in zip(self.values, self.seconds, strict=True):
            elapsed += seconds
            if value >= target:
                return elapsed / 3600
        return None


def _wait_all(cfg: Any) -> dict[str, Any]:
    return {
        "deadline": None,
        "strategy": cfg.strategy.model_copy(update={"normalize": "none"}),
        "federation": cfg.federation.model_copy(update={"round_timeout": 120.0}),
        "secure": cfg.secure.model_copy(update={"phase_timeout": 30.0}),
    }


def _no_partial(cfg: Any) -> dict[str, Any]:
    return {
        "deadline": cfg.deadline.model_copy(update={"partial_work": False}),
        "strategy": cfg.strategy.model_copy(update={"normalize": "none"}),
    }


def _fedavg(cfg: Any) -> dict[str, Any]:
    return {"strategy": cfg.strategy.model_copy(update={"normalize": "none"})}


def _buffered(cfg: Any) -> dict[str, Any]:
    """FedBuff: every node asked each round (a busy one carries its update over), the
    training phase closed once ``min_participants`` updates are in, no deadline."""
    return _wait_all(cfg) | {
        "strategy": cfg.strategy.model_copy(
            update={"normalize": "none", "buffer": cfg.federation.min_participants}
        ),
        "federation": cfg.federation.model_copy(update={"round_timeout": 120.0, "fraction": 1.0}),
    }


def _reweighted(cfg: Any) -> dict[str, Any]:
    return {"federation": cfg.federation.model_copy(update={"availability": "reweight"})}


MODES: tuple[tuple[str, Callable[[Any], dict[str, Any]]], ...] = (
    ("wait-all", _wait_all),
    ("deadline, no partial", _no_partial),
    ("deadline + partial, FedAvg", _fedavg),
    ("deadline + partial, FedNova", lambda _cfg: {}),
    ("deadline + partial, FedNova, reweighted", _reweighted),
    ("buffered async (FedBuff)", _buffered),
)


def run_one(job_name: str, file: str, rounds: int, mode: str, change: Callable[[Any], Any]) -> Run:
    from tessera.config import load_config
    from tessera.jobs.prepared import prepare_job
    from tessera.runtime.sim.job import simulate
    from tessera.runtime.sim.statistics import totals_for

    cfg = load_config(EXAMPLES / file)
    cfg = cfg.model_copy(
        update={
            "federation": cfg.federation.model_copy(update={"rounds": rounds}),
            "baseline": cfg.baseline.model_copy(update={"enabled": False}),
        }
    )
    cfg = cfg.model_copy(update=change(cfg))
    job = prepare_job(cfg, totals_of=totals_for(cfg, secure=True))
    result = simulate(job, secure=True)
    return Run(
        job=job_name,
        mode=mode,
        values=[r.value for r in result.rounds],
        seconds=[r.virtual_round_seconds for r in result.rounds],
        stragglers=sum(r.stragglers for r in result.rounds),
        partial=sum(r.partial for r in result.rounds),
    )


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or base is None or base == 0:
        return "-"
    return f"{value / base:.2f}x"


def table(runs: list[Run]) -> str:
    head = [
        "job",
        "mode",
        "final accuracy",
        "best",
        "simulated hours",
        "vs wait-all",
        "hours to target",
        "vs wait-all",
        "stragglers",
        "partial",
    ]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    jobs = {r.job for r in runs}
    targets = {j: TARGET * max(max(r.values) for r in runs if r.job == j) for j in jobs}
    first: dict[str, Run] = {}
    for r in runs:
        base = first.setdefault(r.job, r)
        target = targets[r.job]
        to, base_to = r.hours_to(target), base.hours_to(target)
        cells = [
            r.job,
            r.mode,
            f"{r.values[-1]:.4f}",
            f"{max(r.values):.4f}",
            f"{r.hours:.2f}",
            _ratio(r.hours, base.hours),
            "never" if to is None else f"{to:.2f} (acc. {target:.3f})",
            _ratio(to, base_to),
            str(r.stragglers),
            str(r.partial),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_ROUNDS} rounds each")
    parser.add_argument("--readme", type=Path, help="write the table into this README")
    parser.add_argument("--only", help="run only the job of this name (e.g. digits)")
    args = parser.parse_args()
    runs = []
    for name, file, rounds in JOBS:
        if args.only and args.only.lower() not in name.lower():
            continue
        for mode, change in MODES:
            print(f"{name}: {mode} ...", file=sys.stderr, flush=True)
            run = run_one(name, file, QUICK_ROUNDS if args.quick else rounds, mode, change)
            print(
                f"  final {run.values[-1]:.4f}, {run.hours:.2f} simulated hours",
                file=sys.stderr,
                flush=True,
            )
            runs.append(run)
    text = table(runs)
    print(text)
    if args.readme is not None and not args.quick and not args.only:
        from _readme import write_between  # beside this script

        write_between(args.readme, BEGIN, END, text)


if __name__ == "__main__":
    main()
