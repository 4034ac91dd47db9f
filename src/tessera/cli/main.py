"""``tessera run CONFIG --out DIR`` and ``tessera demo``.

Wiring only: parse arguments, prepare the job, drive the simulator with a
progress bar, and write DIR/metrics.json, DIR/model.safetensors,
DIR/curves.png, DIR/report.html and DIR/audit.jsonl (signed with a key made for the run, whose
public half is DIR/audit.key.pub). Every expected failure ends as one line naming the field.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tessera.cli.help import Command, Group
from tessera.errors import TesseraError

if TYPE_CHECKING:  # the CLI imports the job machinery late: --help stays fast
    from tessera.audit import AuditWriter
    from tessera.config import JobConfig
    from tessera.jobs.prepared import PreparedJob
    from tessera.jobs.secure import SecureSummary
    from tessera.runtime.sim.backends import Backend

app = typer.Typer(
    cls=Group,
    add_completion=False,
    no_args_is_help=True,
    help="Tessera: federated training on data that never leaves its owners.",
)
# Into a pipe or a log, a message stays on one line (grep finds it); a terminal wraps it.
console = Console(stderr=True, soft_wrap=not sys.stderr.isatty())


def done_line(
    seconds: float,
    metric: str,
    final: float,
    centralized: float | None,
    *,
    errors: Mapping[str, Any] | None = None,
    centralized_errors: Mapping[str, Any] | None = None,
) -> str:
    """The last line of a run: its one duration, the result, the baseline and the gap.

    ``errors``: metrics.json's ``final`` (or ``centralized``) entry; a regression's
    RMSE and MAE from it follow its R^2, on the target's own scale.
    """
    line = f"federated {metric} {final:.4f}{_errors(errors)}"
    if centralized is not None:
        line += (
            f" | centralized {centralized:.4f}{_errors(centralized_errors)}"
            f" | gap {centralized - final:+.4f}"
        )
    return f"[bold green]done[/] in {seconds:.1f} s: {line}"


def _per_column(counts: dict[str, int]) -> str:
    return ", ".join(f"{c} {n:,}" for c, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def missing_line(missing: object) -> str | None:
    """What the missing-value policy did (``MissingCounts``), on one line; None if nothing."""
    from tessera.jobs.prepared import MissingCounts

    if not isinstance(missing, MissingCounts):
        return None
    m = missing
    if not (m.dropped_rows or m.imputed_values or m.test_dropped_rows or m.test_imputed_values):
        return "missing values: none in the fields the job uses"
    parts = [f"{m.dropped_rows:,} of {m.rows:,} node rows dropped"]
    if m.dropped:
        where = ""
        if m.node_dropped is not None:
            where = f" on {int((m.node_dropped > 0).sum()):,} nodes"
        parts[0] += f" ({_per_column(m.dropped)}){where}"
    parts.append(f"{m.imputed_values:,} values imputed")
    if m.imputed:
        where = ""
        if m.node_imputed is not None:
            where = f" on {int((m.node_imputed > 0).sum()):,} nodes"
        parts[-1] += f" ({_per_column(m.imputed)}){where}"
    parts.append(
        f"holdout: {m.test_dropped_rows:,} of {m.test_rows:,} rows dropped, "
        f"{m.test_imputed_values:,} values imputed"
    )
    return "missing values: " + "; ".join(parts)


def privacy_line(
    job: PreparedJob, secure: SecureSummary | None, *, statistics_rounds: int = 0
) -> str | None:
    """What a private job promises and what it costs, on one line; None if not private.
    ``statistics_rounds``: a deployment's, when they are private releases too."""
    p = job.config.privacy
    if p is None or secure is None or secure.privacy is None:
        return None
    noise = secure.privacy.variance**0.5 / 2.0**secure.privacy.frac_bits
    counted = ""
    bound = secure.privacy.statistics_clip
    if statistics_rounds and bound is not None and job.recipe.clip_norm:
        counted = (
            f" and {statistics_rounds} statistics round(s) (each node's statistics scaled to"
            f" norm {bound:g}: noise std {noise * bound / job.recipe.clip_norm:.3g} per total)"
        )
    return (
        f"differential privacy: epsilon <= {p.epsilon:g} at delta {p.delta:g} over "
        f"{job.config.federation.rounds} rounds{counted}, one contributor's whole update "
        f"protected (Skellam noise added by the contributors: std {noise:.3g} per word of "
        f"each round's total, against an update norm of at most {job.recipe.clip_norm:g}); "
        f"on budget: {p.on_budget}"
    )


def _errors(entry: Mapping[str, Any] | None) -> str:
    if entry is None or entry.get("rmse") is None or entry.get("mae") is None:
        return ""
    return f" (RMSE {entry['rmse']:.4g}, MAE {entry['mae']:.4g})"


@app.callback()
def _process_setup() -> None:
    """Every command handles model-sized vectors: keep their scratch memory warm."""
    from tessera.runtime.allocator import tune_allocator

    tune_allocator()


def progress_bar(quiet: bool) -> Progress:
    """The one progress display of every long command: task, bar, n/N, status, time."""
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
        disable=quiet,
    )


def _example(name: str) -> Path:
    return Path(str(resources.files("tessera") / "examples" / name))


def _describe(job: PreparedJob, secure: SecureSummary | None) -> None:
    """What is about to run: nodes, records, model, aggregation, data handling."""
    cfg = job.config
    console.print(
        f"[bold]{cfg.job.name}[/]: {job.n_nodes} nodes, {len(job.y)} training records, "
        f"{len(job.test.y)} held-out test records, model {job.spec.kind} "
        f"({job.layout.size} parameters), strategy {cfg.strategy.name}, "
        + (
            f"secure aggregation (k={secure.k}, tree depth {secure.depth}, "
            f"{secure.ring_bits}-bit ring)"
            if secure
            else "plaintext aggregation"
        )
    )
    line = missing_line(job.missing)
    if line is not None:
        console.print(line)
    line = privacy_line(job, secure, statistics_rounds=len(job.statistics_lengths))
    if line is not None:
        console.print(line)
    if job.statistics is not None:
        fed = job.statistics
        console.print(
            f"preprocessing fitted from federated statistics: {fed.rounds} "
            f"{'secure' if fed.secure else 'plaintext'} round(s) over {fed.nodes} nodes"
        )


def _describe_backend(backend: Backend | None, address: str | None, *, secure: bool) -> None:
    """Where the nodes' work runs, when not on this thread."""
    if backend is None:
        return
    where = f" at {address}" if address else ""
    count = f", {backend.workers} workers" if backend.workers else ""
    console.print(f"nodes' sharing and opening on the {backend.name} backend{where}{count}")
    if not secure:
        console.print("[yellow]a plaintext round has no node cryptography to spread[/]")


def _plaintext_notes(cfg: JobConfig) -> None:
    """What a secure job's sections do not do in a --plaintext run."""
    if cfg.privacy is not None:  # the noise is added inside secure aggregation
        console.print("[yellow]--plaintext: no differential privacy noise in this run[/]")
    if cfg.group_sums:  # group sums are disclosed from the secure tree
        console.print("[yellow]--plaintext: no group sums are disclosed in this run[/]")


def _check_end(result: Any) -> None:
    """A failed run is an error (its last finite model was written); a stopped one a note."""
    if result.error is not None:
        raise TesseraError(result.error)
    if result.stopped is not None:
        console.print(f"[yellow]ended after {len(result.rounds)} rounds: {result.stopped}[/]")


def _valuer(job: PreparedJob) -> Any:
    """The job's contribution indicator (``[contributions]``), or None."""
    c = job.config.contributions
    if c is None or not c.enabled:
        return None
    from tessera.jobs.valuation import GroupValuer

    return GroupValuer(job, method=c.method, permutations=c.permutations, policy=c.policy)


def _run(
    config_path: Path,
    out: Path,
    rounds: int | None,
    quiet: bool,
    plaintext: bool,
    backend: Backend | None = None,
    address: str | None = None,
    mlflow: str | None = None,
) -> None:
    # Torch is imported late (slow), with one thread: fastest on small models.
    import torch

    torch.set_num_threads(int(os.environ.get("TESSERA_THREADS", "1")))

    from tessera.config import load_config

    cfg = load_config(config_path)
    if rounds is not None:
        cfg = cfg.model_copy(
            update={"federation": cfg.federation.model_copy(update={"rounds": rounds})}
        )
    secure_job = cfg.secure.enabled and not plaintext
    tracker = _tracker(mlflow, cfg, out)  # before the job: a bad URI fails at once
    if tracker is not None:
        with tracker:  # FAILED if the job raises
            _run_job(cfg, out, quiet, plaintext, secure_job, backend, address)
            _mlflow_log(tracker, out)
        return
    _run_job(cfg, out, quiet, plaintext, secure_job, backend, address)


def _run_job(
    cfg: JobConfig,
    out: Path,
    quiet: bool,
    plaintext: bool,
    secure_job: bool,
    backend: Backend | None,
    address: str | None,
) -> None:
    from tessera.jobs.prepared import prepare_job
    from tessera.jobs.records import RoundRecord
    from tessera.jobs.secure import summarize
    from tessera.reports import MetricsWriter
    from tessera.runtime.sim.job import centralized, simulate
    from tessera.runtime.sim.statistics import totals_for
    from tessera.weights import Vector, save_file

    if plaintext:
        _plaintext_notes(cfg)
    with console.status("preparing data: the nodes' statistics, totalled"):
        job = prepare_job(cfg, totals_of=totals_for(cfg, secure=secure_job))
    secure = summarize(job) if secure_job else None
    _describe(job, secure)
    _describe_backend(backend, address, secure=secure is not None)
    out.mkdir(parents=True, exist_ok=True)
    metric = "accuracy" if str(job.task) == "classification" else "R^2"
    with progress_bar(quiet) as progress:
        baseline = None
        if cfg.baseline.enabled:
            btask = progress.add_task("centralized", total=None, status="")

            def on_epoch(epoch: int, total: int, value: float) -> None:
                progress.update(
                    btask, total=total, completed=epoch + 1, status=f"{metric} {value:.4f}"
                )

            baseline = centralized(job, on_epoch)
        ftask = progress.add_task("federated", total=cfg.federation.rounds, status="")
        writer = MetricsWriter(out, job, baseline, secure=secure)
        audit = _audit_writer(out, cfg, job)

        @audit.hook
        def on_round(rec: RoundRecord, weights: Vector) -> None:
            spent = f"  epsilon {rec.epsilon:.3g}" if math.isfinite(rec.epsilon) else ""
            progress.update(
                ftask,
                advance=1,
                status=f"{metric} {rec.value:.4f}  {rec.participants}/{rec.selected} nodes{spent}",
            )
            for entry in rec.blamed:  # an audit failed: say so as it happens
                progress.console.print(f"[bold red]round {rec.round}: blamed[/] {entry}")
            if rec.capped:  # the secure mean loss hides these: say so
                progress.console.print(
                    f"[yellow]round {rec.round}: {rec.capped} contributor(s) had a training "
                    f"loss over secure.loss_cap ({cfg.secure.loss_cap:g}); the mean loss "
                    "counts them at the cap (divergence if it grows; else raise the cap)[/]"
                )
            # Written every round: a crash loses at most the round in flight.
            digest = save_file(out / "model.safetensors", job.layout.unflatten(weights))
            writer.add_round(rec, model_digest=digest)

        valuer = _valuer(job) if secure is not None else None
        result = simulate(
            job,
            on_round=on_round,
            secure=secure is not None,
            on_groups=valuer,
            backend=backend,
        )
        if valuer is not None:
            writer.extra["contributions"] = valuer.entry()
    metrics = _finish(out, job.layout.unflatten(result.weights), result, writer, audit)
    _views(out, metrics, job, result.weights)
    _check_end(result)
    console.print(
        done_line(
            result.seconds,
            metric,
            metrics["final"]["value"],
            None if baseline is None else baseline.value,
            errors=metrics["final"],
            centralized_errors=metrics["centralized"],
        )
    )
    console.print(
        f"wrote {out}/metrics.json, model.safetensors, curves.png, "
        + ("explanations.json, " if cfg.reporting.explain else "")
        + "report.html, audit.jsonl"
    )


def _tracker(uri: str | None, cfg: JobConfig, out: Path) -> Any:
    """An MLflow run for ``tessera run --mlflow`` (None without), its parameters logged."""
    if uri is None:
        return None
    from tessera.reports.mlflow_log import MlflowLogger

    tracker = MlflowLogger(uri, experiment=cfg.job.name, run_name=f"run-{out.name}")
    tracker.log_params(cfg.model_dump(mode="json"))
    return tracker


def _mlflow_log(tracker: Any, out: Path) -> None:
    """The finished run's rounds, model, audit log and report, as ``tessera up`` logs them."""
    import hashlib
    import json

    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    for r in metrics["rounds"]:
        values = {k: r[k] for k in ("value", "participants", "train_loss") if r.get(k) is not None}
        tracker.log_round(r["round"], values)
    model = out / "model.safetensors"
    tracker.log_model(model, sha256=hashlib.sha256(model.read_bytes()).hexdigest())
    tracker.log_audit(out / "audit.jsonl")
    tracker.log_report(out)


def _views(out: Path, metrics: Any, job: PreparedJob, weights: Any) -> None:
    """DIR/curves.png, DIR/explanations.json (the final model on the held-out set) and
    DIR/report.html, from the finished job's metrics and audit log."""
    from tessera.reports import write_views

    with console.status("explaining the model on the held-out set"):
        write_views(out, metrics, job=job, weights=weights)


def _finish(out: Path, model: Any, result: Any, writer: Any, audit: AuditWriter) -> Any:
    """Write the final model, then metrics.json's and the audit log's last words."""
    from tessera.weights import save_file

    digest = save_file(out / "model.safetensors", model)
    status = "finished" if result.error is None else "failed"
    metrics = writer.finish(status=status, model_digest=digest)
    audit.model_final(out / "model.safetensors", rounds=len(result.rounds), status=status)
    return metrics


def _audit_writer(out: Path, cfg: JobConfig, job: PreparedJob) -> AuditWriter:
    """DIR/audit.jsonl, signed by a key made for this run (its public half is
    DIR/audit.key.pub; the private half is never kept), opened with the job and its
    participants."""
    import hashlib

    from tessera.audit import AuditWriter
    from tessera.crypto.documents import canonical_json
    from tessera.crypto.keys import NodeKeys

    keys = NodeKeys.generate()
    (out / "audit.key.pub").write_text(keys.public.signing.hex() + "\n", encoding="ascii")
    audit = AuditWriter(out / "audit.jsonl", keys)
    config = hashlib.sha256(canonical_json(cfg.model_dump(mode="json"))).hexdigest()
    audit.job_submitted(cfg.job.name, config)
    audit.participants(job.node_ids)
    audit.sync()
    return audit


@app.command(cls=Command)
def run(
    config: Annotated[Path, typer.Argument(help="job file (TOML)", exists=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder")] = Path("runs/job"),
    rounds: Annotated[int | None, typer.Option(help="override federation.rounds")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")] = False,
    plaintext: Annotated[
        bool, typer.Option("--plaintext", help="aggregate in the clear, for comparison")
    ] = False,
    backend: Annotated[
        str,
        typer.Option(
            help="where the nodes' sharing and opening run: inprocess (this thread), "
            "processes (local worker processes) or ray (a Ray cluster)",
        ),
    ] = "inprocess",
    workers: Annotated[
        int | None,
        typer.Option(
            help="worker processes or Ray actors (default: one per core; on an existing "
            "Ray cluster, one per CPU)",
            show_default=False,
        ),
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(
            help="an existing Ray cluster (e.g. ray://head:10001 or auto); --backend ray only"
        ),
    ] = None,
    mlflow: Annotated[
        str | None,
        typer.Option(
            "--mlflow", help="MLflow tracking URI: log rounds, the model, audit log and report"
        ),
    ] = None,
) -> None:
    """Run a federated job in the simulator (on every core with --backend processes or ray)."""
    try:
        from tessera.runtime.sim.backends import make_backend

        # Its errors come first; Ray is imported only for --backend ray.
        chosen = make_backend(backend, workers=workers, address=address)
        _run(config, out, rounds, quiet, plaintext, chosen, address, mlflow)
    except TesseraError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None


@app.command(cls=Command)
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder")] = Path("runs/demo"),
    rounds: Annotated[int | None, typer.Option(help="override federation.rounds")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
    plaintext: Annotated[bool, typer.Option("--plaintext")] = False,
) -> None:
    """Chem97: A-level chemistry grades, one node per school, unseen schools as test."""
    run(_example("chem97.toml"), out, rounds, quiet, plaintext)


@app.command(cls=Command)
def examples() -> None:
    """List the bundled example jobs and where they are."""
    for path in sorted(_example("").glob("*.toml")):
        typer.echo(str(path))
