"""What contribution indicators catch, and what leaving the flagged out gives back: poor
and hostile data on Chem97 and digits, with and without exclusion, next to a clean run.

    .venv/bin/python benchmarks/contributions.py [--quick] [--readme README.md]

Two jobs in the simulator with secure aggregation and group sums
(``[contributions]``, leave-one-group-out valuation on the AI provider's
validation rows): ``examples/chem97_poisoned.toml`` (one node per school)
and ``examples/digits.toml`` (100 nodes, Dirichlet label skew), each run
clean and with a fifth of the nodes holding corrupted data (``label_flip``,
then separately ``noise_features``) plus one in twenty sending its update
scaled by -10. Each corrupted case runs twice: ``policy = "report"`` (flags
only: the model trains on everyone) and ``policy = "exclude"`` (a flagged node
is left out from the next round opened). The clean job also runs with the
robust combinations of group sums (``combine = "median"``, ``"trimmed_mean"``),
to show what they cost when nobody is hostile.

Printed beside each other, all measured in this run: the precision and recall
of the flagged (report) or excluded (exclude) nodes against the simulator's
truth, the final accuracy and its ratio to the clean run's. ``--quick`` runs
a few rounds (a smoke test, not the README's figures). Two runs at a time
(``--workers``); progress to stderr, the table to stdout; ``--readme`` writes
it into that file between the contributions markers.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
BEGIN, END = "<!-- contributions:begin -->", "<!-- contributions:end -->"
QUICK_ROUNDS = 4


@dataclass(frozen=True)
class Case:
    job: str
    data: str  # "clean", "label_flip" or "noise_features" (+ scaled updates)
    policy: str = "report"
    combine: str = "mean"


@dataclass
class Run:
    case: Case
    accuracy: float
    judged: int  # nodes flagged (report) or excluded (exclude)
    precision: float
    recall: float
    rounds: int
    seconds: float


def cases() -> list[Case]:
    out = []
    for job in ("digits", "Chem97"):  # the quick job first
        out += [Case(job, "clean"), Case(job, "clean", combine="median")]
        out.append(Case(job, "clean", combine="trimmed_mean"))
        for data in ("label_flip", "noise_features"):
            out += [Case(job, data, "report"), Case(job, data, "exclude")]
    return out


def config(case: Case, rounds: int | None) -> object:
    from tessera.config import ContributionsSection, PoisonSection, load_config

    if case.job == "Chem97":
        cfg = load_config(EXAMPLES / "chem97_poisoned.toml")
        contributions = cfg.contributions
        assert contributions is not None
    else:
        cfg = load_config(EXAMPLES / "digits.toml")
        # Few rounds for a label-skewed job: evidence must come early to matter.
        cfg = cfg.model_copy(
            update={
                "federation": cfg.federation.model_copy(update={"rounds": 60, "fraction": 0.5}),
                "secure": cfg.secure.model_copy(update={"enabled": True, "group_size": 5}),
            }
        )
        contributions = ContributionsSection(method="leave_one_out", min_evidence=8, threshold=2.0)
    poison = PoisonSection()
    if case.data != "clean":
        poison = PoisonSection(fraction=0.2, kind=case.data, scaled_fraction=0.05, scale=-10.0)
    federation = cfg.federation
    if rounds is not None:
        federation = federation.model_copy(update={"rounds": rounds})
    return cfg.model_copy(
        update={
            "contributions": contributions.model_copy(
                update={"policy": case.policy, "combine": case.combine}
            ),
            "simulation": cfg.simulation.model_copy(update={"poison": poison}),
            "federation": federation,
            "baseline": cfg.baseline.model_copy(update={"enabled": False}),
        }
    )


def run_one(case: Case, rounds: int | None) -> Run:
    from tessera.config import JobConfig
    from tessera.jobs.prepared import prepare_job
    from tessera.jobs.valuation import GroupValuer
    from tessera.runtime.sim.job import simulate
    from tessera.runtime.sim.statistics import totals_for

    cfg = config(case, rounds)
    assert isinstance(cfg, JobConfig)
    assert cfg.contributions is not None
    job = prepare_job(cfg, totals_of=totals_for(cfg, secure=True))
    valuer = GroupValuer(job, method=cfg.contributions.method, policy=case.policy)
    started = time.perf_counter()
    result = simulate(job, secure=True, on_groups=valuer)
    seconds = time.perf_counter() - started
    entry = valuer.entry()
    judged = entry["flagged"] if case.policy == "report" else entry["excluded"]
    assert isinstance(judged, dict)
    precision, recall = entry.get("precision"), entry.get("recall")
    return Run(
        case=case,
        accuracy=result.rounds[-1].value,
        judged=len(judged),
        precision=math.nan if precision is None else float(precision),  # type: ignore[arg-type]
        recall=math.nan if recall is None else float(recall),  # type: ignore[arg-type]
        rounds=len(result.rounds),
        seconds=seconds,
    )


def table(runs: list[Run]) -> str:
    head = ["job", "data", "policy", "combine", "flagged / excluded", "precision", "recall"]
    head += ["accuracy", "vs clean", "s / round"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    clean = {r.case.job: r for r in runs if r.case == Case(r.case.job, "clean")}
    for r in runs:
        peer = clean.get(r.case.job)
        ratio = r.accuracy / peer.accuracy if peer and peer.accuracy else math.nan
        poisoned = r.case.data != "clean"
        data = "clean" if not poisoned else f"{r.case.data.replace('_', ' ')} 20% + scaled 5%"
        cells = [
            r.case.job,
            data,
            r.case.policy if poisoned else "",
            r.case.combine,
            f"{r.judged}" if poisoned else "",
            "" if math.isnan(r.precision) else f"{r.precision:.2f}",
            "" if math.isnan(r.recall) else f"{r.recall:.2f}",
            f"{r.accuracy:.4f}",
            f"{ratio:.3f}x",
            f"{r.seconds / max(r.rounds, 1):.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_readme(path: Path, text: str) -> None:
    from _readme import write_between  # beside this script

    write_between(path, BEGIN, END, text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_ROUNDS} rounds each")
    parser.add_argument("--readme", type=Path, help="write the table into this README")
    parser.add_argument("--jobs", choices=("all", "chem97", "digits"), default="all")
    parser.add_argument("--workers", type=int, default=2, help="runs at a time")
    args = parser.parse_args()
    rounds = QUICK_ROUNDS if args.quick else None
    todo = [c for c in cases() if args.jobs in ("all", c.job.lower())]
    runs: dict[Case, Run] = {}
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        futures = {pool.submit(run_one, case, rounds): case for case in todo}
        for future, case in futures.items():
            run = runs[case] = future.result()
            print(f"{case}: {run}", file=sys.stderr, flush=True)
    text = table([runs[c] for c in todo])
    print(text)
    if args.readme is not None and not args.quick:
        write_readme(args.readme, text)


if __name__ == "__main__":
    main()
