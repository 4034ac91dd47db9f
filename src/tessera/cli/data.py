"""``tessera data check JOB.toml``: what a job will train on, before it trains."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tessera.cli.help import Command, Group
from tessera.cli.main import app, console
from tessera.errors import TesseraError

data_app = typer.Typer(
    cls=Group, no_args_is_help=True, help="Look at a job's data before training on it."
)
app.add_typer(data_app, name="data")

_BAR = 30  # characters of the widest histogram bar


@data_app.command("check", cls=Command)
def check(config: Annotated[Path, typer.Argument(help="job file (TOML)")]) -> None:
    """Schema, missing values, node sizes, the target's distribution and warnings; no training.

    Exits 1 when there is a warning, 2 when the job cannot be prepared at all.
    """
    from tessera.config import load_config
    from tessera.jobs.check import check_job, count_histogram

    try:
        with console.status("loading and partitioning the data as a run would"):
            report = check_job(load_config(config))
    except TesseraError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None
    out = console.print
    out(
        f"{report.rows:,} rows for the nodes ({report.usable_rows:,} usable), "
        f"{report.holdout_rows:,} held out; {len(report.node_sizes):,} nodes; task {report.task}"
    )
    columns = Table(
        "column",
        "type",
        "role",
        "missing",
        "distinct",
        "policy",
        "dropped",
        "imputed",
        title="columns (missing values in the nodes' part; derived columns marked *)",
    )
    unused = [c.name for c in report.columns if c.role == "unused"]
    for c in report.columns:
        if c.role == "unused":
            continue
        columns.add_row(
            c.name + (" *" if c.derived else ""),
            c.dtype,
            c.role,
            f"{c.missing:,}",
            f"{c.distinct:,}",
            c.policy or "",
            f"{c.dropped:,}" if c.policy else "",
            f"{c.imputed:,}" if c.policy else "",
        )
    out(columns)
    if unused:
        out(f"{len(unused):,} column(s) the job does not use: {', '.join(unused)}")
    out(
        f"missing-value policy: {report.dropped_rows:,} rows dropped, "
        f"{report.imputed_values:,} values imputed"
    )
    for what, counts in (
        ("dropped rows", report.node_dropped),
        ("imputed values", report.node_imputed),
    ):
        if not counts or not any(counts):
            continue
        spread = Table(what, "nodes", "", title=f"{what} per node")
        histogram = count_histogram(counts)
        widest = max((n for _, _, n in histogram), default=1) or 1
        for lo, hi, n in histogram:
            spread.add_row(
                str(lo) if lo == hi else f"{lo}-{hi}", f"{n:,}", "#" * round(_BAR * n / widest)
            )
        out(spread)
    sizes = Table("records", "nodes", "", title="records per node")
    histogram = report.size_histogram()
    widest = max((n for _, _, n in histogram), default=1) or 1
    for lo, hi, n in histogram:
        span = str(lo) if lo == hi else f"{lo}-{hi}"
        sizes.add_row(span, f"{n:,}", "#" * round(_BAR * n / widest))
    out(sizes)
    if report.target_summary:
        s = report.target_summary
        out(
            f"target: mean {s['mean']:.4g}, std {s['std']:.4g}, "
            f"min {s['min']:.4g}, max {s['max']:.4g}"
        )
    else:
        out("target classes: " + ", ".join(f"{k} ({v:,})" for k, v in report.classes.items()))
    for warning in report.warnings:
        out(f"[bold yellow]warning:[/] {warning}")
    if report.warnings:
        raise typer.Exit(1)
    out("[bold green]no warnings[/]")
