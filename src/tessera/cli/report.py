"""``tessera report DIR``: write DIR/report.html, the job's trust report, from its outputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from tessera.cli.help import Command
from tessera.cli.main import app, console
from tessera.errors import TesseraError


@app.command("report", cls=Command)
def report(
    out: Annotated[Path, typer.Argument(help="a job's output folder (holds metrics.json)")],
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="the job file: recompute DIR/explanations.json from DIR/model.safetensors first",
        ),
    ] = None,
) -> None:
    """Write DIR/report.html: one self-contained file, readable offline.

    Built from DIR/metrics.json, DIR/explanations.json and DIR/audit.jsonl
    (checked, if present): the metric against the centralized baseline,
    participation, contributions, privacy spent, bytes and seconds per round,
    the execution tree, explanations, metrics per group, a model card and the
    audit log. With --config, the job is prepared again (its held-out set) and
    the explanations recomputed as its [report] asks. Exits 2 when DIR has no
    metrics.json, or --config cannot explain DIR's model.
    """
    from tessera.reports.html import write_report

    if not (out / "metrics.json").is_file():
        console.print(f"[bold red]error:[/] no metrics.json in {out}")
        raise typer.Exit(2)
    if config is not None:
        try:
            _explain(out, config)
        except TesseraError as exc:
            console.print(f"[bold red]error:[/] {exc}")
            raise typer.Exit(2) from None
    path = write_report(out)
    console.print(f"wrote {path}")


def _explain(out: Path, config: Path) -> None:
    """DIR/explanations.json for DIR/model.safetensors, on the held-out set of the job
    prepared again as ``tessera run`` prepares it."""
    from tessera.config import load_config
    from tessera.errors import ConfigError
    from tessera.jobs.prepared import prepare_job
    from tessera.reports import explain_views
    from tessera.runtime.sim.statistics import totals_for
    from tessera.weights import digest, load_file

    model = out / "model.safetensors"
    if not model.is_file():
        raise ConfigError("--config", f"no model.safetensors in {out} to explain")
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    cfg = load_config(config)
    if metrics.get("job") not in (None, cfg.job.name):
        raise ConfigError("--config", f"{config} is job {cfg.job.name!r}, not {metrics['job']!r}")
    with console.status("preparing the job's held-out set"):
        job = prepare_job(cfg, totals_of=totals_for(cfg, secure=bool(metrics.get("secure"))))
    weights = job.layout.flatten(load_file(model, job.layout))
    with console.status("explaining the model on the held-out set"):
        path = explain_views(out, job, weights, model_digest=digest(model.read_bytes()))
    console.print(f"wrote {path}" if path else "[report] explain = false: no explanations")
