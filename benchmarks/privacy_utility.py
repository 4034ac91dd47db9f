"""What distributed differential privacy costs: the final metric at epsilon 1, 3 and 8
against the same job without noise, with the accountant's figures and the time a round.

    .venv/bin/python benchmarks/privacy_utility.py [--quick] [--readme README.md]

Two jobs, each run four times in the simulator with secure aggregation (the
noise is added inside it): ``examples/chem97_dp.toml`` (one node per school,
every school each round) and ``examples/digits.toml`` made user-level (one
node per image, every node each round, the same rounds as Chem97), with
``[privacy] epsilon`` set to 1, 3 and 8 (delta 1e-5, the budget stopping
the job) and removed. Every figure is printed beside its peer measured in
the same run: the metric as a ratio to the no-noise run's, the seconds a
round as a ratio to the no-noise run's (the noise's own cost: drawing it and
a 64-bit ring). ``epsilon`` is the accountant's after the last round,
``noise std`` the Skellam noise's standard deviation per word of a round's
total, in the units of the clipped update (whose norm is at most clip_norm).
``--quick`` runs 5 rounds of each, a smoke test whose figures are not the
README's; ``--rounds N`` and ``--strategy NAME`` (e.g. ``fedavg``, no server
momentum) override every job's, to find what the noise interacts with (not
written to the README either); ``--jobs digits`` runs one job. Progress goes
to stderr, the table to stdout; ``--readme`` writes it into that file between
the privacy-utility markers.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
EPSILONS = (1.0, 3.0, 8.0, None)
QUICK_ROUNDS = 5
BEGIN, END = "<!-- privacy-utility:begin -->", "<!-- privacy-utility:end -->"


@dataclass
class Run:
    job: str
    epsilon: float | None
    metric: str
    value: float
    spent: float
    rounds: int
    planned: int
    noise_std: float
    seconds_per_round: float


def configs(rounds: int | None, strategy: str | None = None) -> list[tuple[str, object]]:
    from tessera.config import load_config

    chem = load_config(EXAMPLES / "chem97_dp.toml")
    digits = load_config(EXAMPLES / "digits.toml")
    digits = digits.model_copy(
        update={
            "partition": digits.partition.model_copy(
                update={"scheme": "per_record", "nodes": None, "alpha": None}
            ),
            "federation": digits.federation.model_copy(
                update={"rounds": chem.federation.rounds, "fraction": 1.0}
            ),
            "privacy": chem.privacy,
        }
    )
    out = []
    for name, job in (("Chem97 (schools)", chem), ("digits (one image a node)", digits)):
        federation = job.federation.model_copy(update={"rounds": rounds or job.federation.rounds})
        update: dict[str, object] = {"federation": federation}
        if strategy is not None:
            from tessera.config import StrategySection

            update["strategy"] = StrategySection(name=strategy)
        out.append((name, job.model_copy(update=update)))
    return out


def run_one(name: str, cfg: object, epsilon: float | None) -> Run:
    from tessera.config import JobConfig
    from tessera.jobs.prepared import prepare_job
    from tessera.jobs.secure import summarize
    from tessera.runtime.sim.job import simulate
    from tessera.runtime.sim.statistics import totals_for

    assert isinstance(cfg, JobConfig)
    base = cfg.privacy
    assert base is not None
    privacy = None if epsilon is None else base.model_copy(update={"epsilon": epsilon})
    cfg = cfg.model_copy(
        update={"privacy": privacy, "baseline": cfg.baseline.model_copy(update={"enabled": False})}
    )
    job = prepare_job(cfg, totals_of=totals_for(cfg, secure=True))
    summary = summarize(job)
    started = time.perf_counter()
    result = simulate(job, secure=True)
    seconds = time.perf_counter() - started
    last = result.rounds[-1]
    noise = (
        math.nan
        if summary.privacy is None
        else math.sqrt(summary.privacy.variance) / 2.0**summary.privacy.frac_bits
    )
    return Run(
        job=name,
        epsilon=epsilon,
        metric="accuracy",
        value=last.value,
        spent=last.epsilon,
        rounds=len(result.rounds),
        planned=cfg.federation.rounds,
        noise_std=noise,
        seconds_per_round=seconds / max(len(result.rounds), 1),
    )


def table(runs: list[Run]) -> str:
    head = [
        "job",
        "epsilon budget",
        "epsilon spent (delta 1e-5)",
        "rounds",
        "noise std",
        "accuracy",
        "vs no noise",
        "s / round",
        "vs no noise",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    clean = {r.job: r for r in runs if r.epsilon is None}
    for r in runs:
        peer = clean.get(r.job)
        ratio = r.value / peer.value if peer and peer.value else math.nan
        speed = r.seconds_per_round / peer.seconds_per_round if peer else math.nan
        lines.append(
            "| "
            + " | ".join(
                [
                    r.job,
                    "none" if r.epsilon is None else f"{r.epsilon:g}",
                    "" if math.isnan(r.spent) else f"{r.spent:.3f}",
                    f"{r.rounds}/{r.planned}",
                    "" if math.isnan(r.noise_std) else f"{r.noise_std:.3g}",
                    f"{r.value:.4f}",
                    f"{ratio:.3f}x",
                    f"{r.seconds_per_round:.2f}",
                    f"{speed:.2f}x",
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def write_readme(path: Path, text: str) -> None:
    from _readme import write_between  # beside this script

    write_between(path, BEGIN, END, text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_ROUNDS} rounds each")
    parser.add_argument("--readme", type=Path, help="write the table into this README")
    parser.add_argument("--rounds", type=int, help="every job's rounds (not for the README)")
    parser.add_argument("--strategy", help="every job's server strategy (not for the README)")
    parser.add_argument("--jobs", choices=("all", "chem97", "digits"), default="all")
    args = parser.parse_args()
    override = args.rounds is not None or args.strategy is not None
    runs = []
    rounds = QUICK_ROUNDS if args.quick else args.rounds
    for name, cfg in configs(rounds, args.strategy):
        if args.jobs != "all" and not name.lower().startswith(args.jobs):
            continue
        for epsilon in EPSILONS:
            print(f"{name}: epsilon {epsilon} ...", file=sys.stderr, flush=True)
            run = run_one(name, cfg, epsilon)
            print(f"  {run}", file=sys.stderr, flush=True)
            runs.append(run)
    text = table(runs)
    print(text)
    if args.readme is not None and not (args.quick or override):
        write_readme(args.readme, text)


if __name__ == "__main__":
    main()
