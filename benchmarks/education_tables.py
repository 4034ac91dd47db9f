"""Federated against centralized on real education tables, each with its job's defaults.

    .venv/bin/python benchmarks/education_tables.py [--quick] [--readme README.md]

Each table is one job file in examples/ (the data: target, features, partition;
every job shares the same model, recipe and rounds, and no table is tuned). For
each, the simulator runs the federated job as the file says (secure aggregation
unless the file turns it off) and the centralized baseline it already computes
(the same model and recipe on the union of the nodes' records, for the same
expected passes over each record), both scored on the AI provider's held-out
schools. The target (issue 12): federated within 0.01 accuracy of centralized,
or at least 95% of its R^2.

The preprocessing is fitted as ``tessera run`` fits it: from federated
statistics (each node's counts, totalled by secure aggregation, or in the
clear for a plaintext job). ``--quick`` runs 20 rounds of every job, for a
smoke test: its figures are not the README's; ``--activation`` overrides the
model's activation, to measure a default (not written to the README either).
Progress goes to stderr, the markdown table to stdout; ``--readme`` also
writes the table into that file between the education-tables markers.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
#: The job files, one per table.
TABLES = (
    "exam.toml",
    "star_math.toml",
    "chem97_grades.toml",
    "star_reading.toml",
    "hsb82_high.toml",
)
ACCURACY_GAP = 0.01  # classification: centralized - federated at most this
R2_SHARE = 0.95  # regression: federated R^2 at least this share of centralized
QUICK_ROUNDS = 20
BEGIN, END = "<!-- education-tables:begin -->", "<!-- education-tables:end -->"


@dataclass
class Row:
    table: str
    task: str = ""
    rows: int = 0
    nodes: int = 0
    missing: str = ""
    federated: str = ""
    centralized: str = ""
    gap: str = ""
    within: str = ""
    seconds: float = math.nan

    def cells(self) -> list[str]:
        wall = "" if math.isnan(self.seconds) else f"{self.seconds:.0f}"
        return [
            self.table,
            self.task,
            f"{self.rows:,}" if self.rows else "",
            f"{self.nodes:,}" if self.nodes else "",
            self.missing,
            self.federated,
            self.centralized,
            self.gap,
            self.within,
            wall,
        ]


HEADER = [
    "table",
    "task",
    "rows",
    "nodes",
    "missing values",
    "federated",
    "centralized",
    "gap",
    "within target",
    "wall s",
]


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _score(task: str, value: float, rmse: float, mae: float) -> str:
    if task == "classification":
        return f"accuracy {value:.4f}"
    return f"R² {value:.4f} (RMSE {rmse:.4g}, MAE {mae:.4g})"


def within_target(task: str, federated: float, centralized: float) -> tuple[str, bool]:
    """The gap as the issue states it, and whether federated meets the target."""
    if task == "classification":
        gap = centralized - federated
        return f"{gap:+.4f} accuracy", gap <= ACCURACY_GAP
    if centralized <= 0:  # no share of a non-positive R^2 is meaningful: compare directly
        return f"{federated - centralized:+.4f} R²", federated >= centralized
    share = federated / centralized
    return f"{share:.3f}x R²", share >= R2_SHARE


def run_table(
    name: str, rounds: int | None, activation: str | None = None, lr: float | None = None
) -> Row:
    import torch

    torch.set_num_threads(1)
    from tessera.config import load_config
    from tessera.data import load_table
    from tessera.jobs.prepared import prepare_job
    from tessera.runtime.sim.job import centralized, simulate
    from tessera.runtime.sim.statistics import totals_for

    row = Row(table=f"`{name}`")
    cfg = load_config(EXAMPLES / name)
    if rounds is not None:
        fed_cfg = cfg.federation.model_copy(update={"rounds": rounds})
        cfg = cfg.model_copy(update={"federation": fed_cfg})
    if activation is not None:
        model = cfg.model.model_copy(update={"activation": activation})
        cfg = cfg.model_copy(update={"model": model})
    if lr is not None:
        cfg = cfg.model_copy(update={"recipe": cfg.recipe.model_copy(update={"lr": lr})})
    row.table = f"`{name}` ({cfg.data.dataset})"
    row.task = str(cfg.job.task)
    t0 = time.perf_counter()
    secure = cfg.secure.enabled
    job = prepare_job(cfg, totals_of=totals_for(cfg, secure=secure))
    used = len(job.y) + len(job.test.y)
    table = len(load_table(cfg.data.source, cfg.data.dataset))
    row.rows, row.nodes = used, job.n_nodes
    policy = getattr(cfg.data, "missing", None)
    how = "drop" if policy is None else _policy(policy)
    row.missing = f"{how}; {table - used:,} of {table:,} rows dropped"
    fed = simulate(job, secure=secure)
    base = centralized(job)
    row.seconds = time.perf_counter() - t0
    if fed.error is not None:
        row.federated = f"failed: {fed.error}"
        row.within = "no"
        return row
    last = fed.rounds[-1]
    row.federated = _score(row.task, last.value, last.rmse, last.mae)
    row.centralized = _score(row.task, base.value, base.rmse, base.mae)
    gap, ok = within_target(row.task, last.value, base.value)
    row.gap = gap
    row.within = "yes" if ok else "no"
    row.federated += "" if secure else " (plaintext)"
    return row


def _policy(policy: object) -> str:
    default = getattr(policy, "default", "drop")
    columns = getattr(policy, "columns", {}) or {}
    named = ", ".join(f"{c} {how}" for c, how in columns.items())
    return f"{default}, {named}" if named else str(default)


def markdown(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r.cells()) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def update_readme(path: Path, table: str) -> None:
    text = path.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{path} has no {BEGIN} ... {END} section")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{BEGIN}\n{table}{END}{tail}", encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_ROUNDS} rounds of every job")
    ap.add_argument("--readme", type=Path, help="write the table into this file's section")
    ap.add_argument("--only", nargs="*", help="these job files only")
    ap.add_argument("--activation", choices=["relu", "tanh", "gelu"], help="override the model's")
    ap.add_argument("--lr", type=float, help="override the recipe's learning rate")
    args = ap.parse_args()
    rounds = QUICK_ROUNDS if args.quick else None
    rows = []
    start = time.perf_counter()
    for i, name in enumerate(TABLES, 1):
        if args.only and name not in args.only:
            continue
        _say(f"[{i}/{len(TABLES)}] {name} ...")
        row = run_table(name, rounds, args.activation, args.lr)
        _say(f"    {row.federated or '-'} | {row.centralized or '-'} | {row.gap} {row.within}")
        rows.append(row)
    _say(f"total {time.perf_counter() - start:.0f} s")
    table = markdown(rows)
    print(table, end="")
    if args.readme is not None:
        if args.quick or args.activation or args.lr:
            raise SystemExit("--quick, --activation and --lr figures are not the README's")
        update_readme(args.readme, table)


if __name__ == "__main__":
    main()
