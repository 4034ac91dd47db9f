"""Commands of a real deployment: the services, the node agent, jobs, certificates.

``tessera coordinator`` / ``provider`` / ``node`` each run one party as its
own process; ``tessera job submit|status|fetch`` is the AI provider's side;
``tessera certs`` makes a throwaway local CA; ``tessera up`` starts all of
it on loopback and runs a job through it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from tessera.cli.help import Command, Group
from tessera.cli.main import (
    app,
    console,
    done_line,
    missing_line,
    privacy_line,
    progress_bar,
)
from tessera.cli.sizes import memory_option
from tessera.deploy.supervise import Stopped, ignoring_stop_signals, stop_on_signals
from tessera.errors import TesseraError

job_app = typer.Typer(
    cls=Group, no_args_is_help=True, help="The AI provider's side: submit, watch, fetch."
)
app.add_typer(job_app, name="job")

Cert = Annotated[Path | None, typer.Option("--cert", help="TLS certificate (PEM)")]
Key = Annotated[Path | None, typer.Option("--key", help="TLS private key (PEM)")]
ReadyFile = Annotated[
    Path | None, typer.Option("--ready-file", help="write the bound URL here once listening")
]
MaxParameters = Annotated[
    int | None,
    typer.Option(
        "--max-parameters",
        help="the node's catalogue: the largest model it trains [default: 5,000,000]",
        min=1,
    ),
]
SandboxStartTimeout = Annotated[
    float,
    typer.Option(
        "--sandbox-start-timeout",
        help="seconds a node waits for its sandbox to start (it loads torch);"
        " raise it when many nodes start at once on few cores",
    ),
]

MemoryLimit = Annotated[
    str | None,
    typer.Option(
        "--memory-limit",
        metavar="SIZE",
        help="the node's training sandbox: its address-space limit, e.g. 2GiB, 512M or bytes"
        " (about 600 MiB go to Python and torch before any training). A job that needs more"
        " fails on this node, which declines its rounds and says so in its log [default: 4GiB]",
    ),
]


#: Log each step (the default), or warnings only with --quiet.
Verbose = Annotated[
    bool, typer.Option("--verbose/--quiet", "-v/-q", help="log each step, or warnings only")
]


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )


def _cert(cert: Path | None, key: Path | None) -> Any:
    if (cert is None) != (key is None):
        raise typer.BadParameter("give both --cert and --key, or neither")
    if cert is None or key is None:
        return None
    from tessera.runtime.transport.tls import CertPaths

    return CertPaths(cert=cert, key=key)


def _verify(ca: Path | None) -> Any:
    if ca is None:
        return True
    from tessera.runtime.transport.tls import client_ssl_context

    return client_ssl_context(ca)


def _passphrase() -> bytes | None:
    """``TESSERA_KEY_PASSPHRASE``, as bytes exactly: it seals every party's key file."""
    value = os.environb.get(b"TESSERA_KEY_PASSPHRASE")
    return value or None


def _fail(exc: Exception) -> None:
    # Escaped: a message may quote a log, whose brackets are not markup.
    console.print(f"[bold red]error:[/] {escape(str(exc))}")
    raise typer.Exit(2) from None


@app.command(cls=Command)
def coordinator(
    db: Annotated[
        str, typer.Option(help="SQLAlchemy URL: sqlite:///FILE or postgresql+psycopg://...")
    ] = "sqlite:///coordinator.db",
    keys: Annotated[
        Path, typer.Option(help="coordinator key file (made if missing, mode 0600)")
    ] = Path("coordinator.key"),
    host: str = "127.0.0.1",
    port: int = 8700,
    cert: Cert = None,
    key: Key = None,
    ready_file: ReadyFile = None,
    max_body: Annotated[
        int | None,
        typer.Option(
            help="largest request body but the mailbox's, bytes [default: what the largest "
            "model's initial weights need]"
        ),
    ] = None,
    mail_dir: Annotated[
        Path,
        typer.Option(help="folder for large envelopes in the mailbox (made 0700 if missing)"),
    ] = Path("coordinator-mail"),
    max_polls: Annotated[
        int,
        typer.Option(
            min=1, help="long polls held at once; past it a poll is answered 503, Retry-After"
        ),
    ] = 4096,
    audit_dir: Annotated[
        Path,
        typer.Option(
            help="folder of each job's signed audit log, JOB_ID.jsonl (made 0700 if missing)"
        ),
    ] = Path("coordinator-audit"),
    verbose: Verbose = True,
) -> None:
    """Run the coordinator service (HTTP API, mailbox, job drivers, audit logs)."""
    _logging(verbose)
    from tessera.coordinator.app import create_coordinator_app
    from tessera.coordinator.service import CoordinatorService
    from tessera.protocol.limits import COORDINATOR_BODY
    from tessera.runtime.transport.serve import run_server
    from tessera.storage import Store
    from tessera.storage.blobs import BlobStore
    from tessera.storage.keyfile import load_or_create_keys

    try:
        keyring = load_or_create_keys(keys, _passphrase())  # a wrong passphrase fails first
        service = CoordinatorService(
            Store(db, blobs=BlobStore(mail_dir)), keyring, audit_dir=audit_dir
        )
        app_ = create_coordinator_app(
            service, max_body=max_body or COORDINATOR_BODY, max_polls=max_polls
        )
        run_server(
            app_,
            host=host,
            port=port,
            ssl=_cert(cert, key),
            ready_file=ready_file,
            on_exit=service.signal.close_all,  # held long polls answer at once
        )
    except TesseraError as exc:
        _fail(exc)


@app.command(cls=Command)
def provider(
    config: Annotated[
        Path, typer.Argument(help="provider config (JSON): datasets and account links")
    ],
    host: str = "127.0.0.1",
    port: int = 8701,
    cert: Cert = None,
    key: Key = None,
    ready_file: ReadyFile = None,
    db: Annotated[
        str | None,
        typer.Option(
            help="SQLAlchemy URL of the database keeping revocations and used request nonces"
            " across restarts: sqlite:///FILE or postgresql+psycopg://..."
            " [default: sqlite:///provider.db in the config file's folder]"
        ),
    ] = None,
    keys: Annotated[
        Path | None,
        typer.Option(
            help="the provider's key file (made if missing): jobs and nodes name it by its"
            " fingerprint [default: provider.key in the config file's folder]"
        ),
    ] = None,
    verbose: Verbose = True,
) -> None:
    """Run a data provider's connector: catalogue and consent-checked record release."""
    _logging(verbose)
    from tessera.data_provider.app import (
        create_provider_app,
        load_provider_config,
        provider_access,
        read_provider_config,
    )
    from tessera.data_provider.gate_state import SqlGateState
    from tessera.runtime.transport.serve import run_server
    from tessera.storage.keyfile import load_or_create_keys

    url = db or provider_db_url(config)
    try:
        identity = load_or_create_keys(keys or config.parent / "provider.key", _passphrase())
        backends, subjects = load_provider_config(config)
        access = provider_access(read_provider_config(config))
        with SqlGateState(url) as state:
            app_ = create_provider_app(
                backends, keys=identity, subjects=subjects, state=state, **access
            )
            run_server(app_, host=host, port=port, ssl=_cert(cert, key), ready_file=ready_file)
    except TesseraError as exc:
        _fail(exc)


def provider_db_url(config: Path) -> str:
    """``tessera provider``'s default database: ``provider.db`` beside its config file.

    Beside the config, not in the working directory, so a restart from
    anywhere finds the revocations and nonces of the same provider.
    """
    return f"sqlite:///{(config.parent / 'provider.db').resolve()}"


@app.command(cls=Command)
def node(
    id: Annotated[str, typer.Option("--id", help="this node's id")],
    coordinator: Annotated[str, typer.Option(help="the coordinator's URL")],
    keys: Annotated[Path, typer.Option(help="key file (made if missing, mode 0600)")] = Path(
        "node.key"
    ),
    state: Annotated[Path, typer.Option(help="folder for receipts and the mailbox cursor")] = Path(
        "node-state"
    ),
    user: Annotated[str | None, typer.Option(help="the user's id at the data provider")] = None,
    provider: Annotated[
        str | None, typer.Option(help="the URL of the data provider the user enrolled with")
    ] = None,
    provider_key: Annotated[
        str | None,
        typer.Option(help="that provider's key fingerprint, as the user was given it at enrolment"),
    ] = None,
    organisation: Annotated[
        str | None, typer.Option(help="organisation, for tree diversity")
    ] = None,
    consent: Annotated[
        list[str] | None, typer.Option(help="consent to this job on the user's behalf")
    ] = None,
    insecure_loopback: Annotated[
        bool,
        typer.Option(help="development only: take plain http from services on this machine"),
    ] = False,
    ca: Annotated[Path | None, typer.Option(help="CA certificate to trust (private PKI)")] = None,
    isolate_network: Annotated[
        str, typer.Option(help="sandbox network isolation: required | best_effort")
    ] = "required",
    sandbox_start_timeout: SandboxStartTimeout = 60.0,
    max_parameters: MaxParameters = None,
    memory_limit: MemoryLimit = None,
    consent_page: Annotated[
        str | None,
        typer.Option(
            help="serve the user's consent page at HOST:PORT (loopback; port 0: any free one);"
            " its login link is printed once and kept in STATE/consent-page.url"
        ),
    ] = None,
    consent_page_remote: Annotated[
        bool,
        typer.Option(help="let --consent-page bind a non-loopback address (not advised)"),
    ] = False,
    verbose: Verbose = True,
) -> None:
    """Run a node agent: register, consent, train in the sandbox, aggregate as the tree says."""
    _logging(verbose)
    from tessera.node.agent import AgentConfig, NodeAgent
    from tessera.sandbox import DEFAULT_CATALOGUE, SandboxLimits

    memory = memory_option(memory_limit, "--memory-limit")
    catalogue = DEFAULT_CATALOGUE
    if max_parameters is not None:
        catalogue = DEFAULT_CATALOGUE.model_copy(update={"max_parameters": max_parameters})

    try:
        if consent_page is not None:  # refused before anything is made
            from tessera.node.consent_page import parse_bind

            parse_bind(consent_page, allow_remote=consent_page_remote)
        limits = SandboxLimits(start_timeout=sandbox_start_timeout)
        if memory is not None:
            limits = replace(limits, memory_bytes=memory)
        agent = NodeAgent(
            AgentConfig(
                node_id=id,
                coordinator=coordinator,
                keys_path=keys,
                state_dir=state,
                subject=user,
                provider=provider,
                provider_key=provider_key,
                insecure_loopback=insecure_loopback,
                organisation=organisation,
                passphrase=_passphrase(),
                verify=_verify(ca),
                consent_to=list(consent or []),
                isolate_network="best_effort" if isolate_network == "best_effort" else "required",
                sandbox_limits=limits,
                catalogue=catalogue,
                consent_page=consent_page,
                consent_page_remote=consent_page_remote,
            )
        )
        agent.run()
    except TesseraError as exc:
        _fail(exc)


@app.command(cls=Command)
def certs(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="folder for the CA and certificates")
    ] = Path("pki"),
    service: Annotated[
        list[str] | None, typer.Option(help="a service to certify (repeatable)")
    ] = None,
    overwrite: bool = False,
) -> None:
    """Make a throwaway local certificate authority and service certificates (loopback)."""
    from tessera.runtime.transport.tls import make_local_pki

    try:
        pki = make_local_pki(
            out, services=tuple(service or ("coordinator", "provider")), overwrite=overwrite
        )
    except TesseraError as exc:
        _fail(exc)
        return
    console.print(f"CA: {pki.ca.cert}")
    for name, paths in pki.services.items():
        console.print(f"{name}: {paths.cert} (key {paths.key}, mode 0600)")


@app.command(cls=Command)
def up(
    config: Annotated[
        Path | None, typer.Argument(help="job file (TOML); none with --resume")
    ] = None,
    nodes: Annotated[int, typer.Option(help="how many node processes")] = 20,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="output folder")] = None,
    rounds: Annotated[int | None, typer.Option(help="override federation.rounds")] = None,
    tls: Annotated[bool, typer.Option(help="TLS with a throwaway local CA")] = True,
    db: Annotated[
        str | None, typer.Option(help="coordinator database URL (default SQLite in OUT)")
    ] = None,
    records: Annotated[
        str, typer.Option(help="what the provider serves: table | xapi (Chem97 as xAPI statements)")
    ] = "table",
    mlflow: Annotated[
        str | None,
        typer.Option(
            "--mlflow", help="MLflow tracking URI: log rounds, the model, audit log and report"
        ),
    ] = None,
    start_timeout: Annotated[
        float,
        typer.Option(
            "--start-timeout", help="seconds for all nodes to consent and the job to start"
        ),
    ] = 600.0,
    start_batch: Annotated[
        int,
        typer.Option(
            "--start-batch",
            help="start this many node processes at a time, the next once they consented"
            " (0: all at once)",
        ),
    ] = 0,
    sandbox_start_timeout: SandboxStartTimeout = 60.0,
    node_max_parameters: Annotated[
        int | None,
        typer.Option(
            "--node-max-parameters",
            help="every node's catalogue: the largest model it trains [default: 5,000,000]",
            min=1,
        ),
    ] = None,
    node_memory: Annotated[
        str | None,
        typer.Option(
            "--node-memory",
            metavar="SIZE",
            help="every node's --memory-limit: its sandbox's address space, e.g. 2GiB"
            " [default: 4GiB]",
        ),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            "--resume",
            help="the output folder of a stopped tessera up: restart its parties and follow "
            "its job to the end, with the job and options it was started with",
        ),
    ] = None,
    ask_consent: Annotated[
        int,
        typer.Option(
            "--ask-consent",
            help="the first K nodes consent on their user's consent page, not on their own:"
            " up prints each page's login link and waits for those consents too",
            min=0,
        ),
    ] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Start coordinator, provider and N nodes on loopback; run the job through them."""
    from tessera.config import load_config
    from tessera.deploy.local import Deployment
    from tessera.deploy.up import UpOptions, default_out, load_up_args, save_up_args

    t0 = time.monotonic()  # the one duration it reports: the whole command's
    memory = memory_option(node_memory, "--node-memory")
    _check_up_options(
        start_timeout=start_timeout,
        start_batch=start_batch,
        ask_consent=ask_consent,
        nodes=nodes,
        one_job=(config is None) != (resume is None),
    )
    try:
        if resume is not None:
            out = resume
            cfg, options = load_up_args(resume)
        else:
            assert config is not None  # checked above
            out = out or default_out(config)
            cfg = load_config(config)
            if rounds is not None:
                cfg = cfg.model_copy(
                    update={"federation": cfg.federation.model_copy(update={"rounds": rounds})}
                )
            options = UpOptions(
                nodes,
                tls,
                db,
                records,
                sandbox_start_timeout,
                node_max_parameters,
                ask_consent,
                memory,
            )
        with console.status(f"preparing {options.nodes} nodes' data"):
            dep = Deployment(
                cfg,
                options.nodes,
                out,
                tls=options.tls,
                db_url=options.db_url,
                records=options.records,
                sandbox_start_timeout=options.sandbox_start_timeout,
                node_max_parameters=options.node_max_parameters,
                node_memory=options.node_memory,
                passphrase=_passphrase(),  # without one, Deployment warns: keys in the clear
                ask_consent=options.ask_consent,
                on_consent_page=_say_consent_page,
            )
        if resume is None:
            save_up_args(out, cfg, options)
    except TesseraError as exc:
        _fail(exc)
        return
    try:
        with stop_on_signals():  # SIGTERM/SIGHUP: stop every party, as Ctrl-C does
            final, metric, centralized, metrics = _up_tracked(
                dep,
                out,
                mlflow=mlflow,
                quiet=quiet,
                start_timeout=start_timeout,
                start_batch=start_batch or None,
                resume=resume is not None,
            )
    except (TesseraError, TimeoutError, RuntimeError) as exc:
        _fail(exc)
        return
    except (Stopped, KeyboardInterrupt) as exc:
        signum = exc.signum if isinstance(exc, Stopped) else signal.SIGINT
        console.print(f"[yellow]{exc or 'interrupted'}: stopping every party it started[/]")
        raise typer.Exit(128 + signum) from None
    finally:
        with ignoring_stop_signals():  # a second signal must not cut the stop short
            console.print(dep.close().line())
    privacy = metrics.get("privacy")
    ran = len(metrics["rounds"]) if privacy is not None else cfg.federation.rounds
    if privacy is not None and ran < cfg.federation.rounds:  # stopped: the budget
        console.print(
            f"[yellow]ended after {ran} of {cfg.federation.rounds} rounds: one more would "
            f"spend past the privacy budget (epsilon {privacy['epsilon']:.3g} of "
            f"{privacy['budget']:g})[/]"
        )
    console.print(
        done_line(
            time.monotonic() - t0,
            metric,
            final,
            centralized,
            errors=metrics["final"],
            centralized_errors=metrics["centralized"],
        )
    )
    console.print(
        f"{dep.n_nodes} node processes; wrote {out}/metrics.json, model.safetensors, curves.png,"
        + (" explanations.json," if cfg.reporting.explain else "")
        + f" report.html; logs in {out}/logs"
    )


def _check_up_options(
    *, start_timeout: float, start_batch: int, ask_consent: int, nodes: int, one_job: bool
) -> None:
    if start_timeout <= 0:
        raise typer.BadParameter("must be positive", param_hint="--start-timeout")
    if start_batch < 0:
        raise typer.BadParameter("must be 0 (all at once) or more", param_hint="--start-batch")
    if ask_consent > nodes:
        raise typer.BadParameter(f"at most --nodes ({nodes})", param_hint="--ask-consent")
    if not one_job:
        raise typer.BadParameter("give a job file, or --resume OUT (not both)")


def _say_consent_page(node: str, login: str) -> None:
    """``tessera up --ask-consent``: a node's page and its login link, said even when quiet."""
    console.print(f"consent page of {node}: {login}", soft_wrap=True, highlight=False)


def _up_tracked(
    dep: Any,
    out: Path,
    *,
    mlflow: str | None,
    quiet: bool,
    start_timeout: float,
    start_batch: int | None,
    resume: bool,
) -> tuple[float, str, float | None, dict[str, Any]]:
    """``_up_with_progress``, logged to MLflow when asked (the run marked FAILED or
    KILLED if it ends early)."""
    tracker = None
    try:
        if mlflow is not None:
            from tessera.reports.mlflow_log import MlflowLogger

            name = dep.config.job.name
            tracker = MlflowLogger(mlflow, experiment=name, run_name=f"up-{out.name}")
            tracker.log_params(dep.config.model_dump(mode="json"))
        result = _up_with_progress(
            dep,
            out,
            quiet=quiet,
            tracker=tracker,
            start_timeout=start_timeout,
            start_batch=start_batch,
            resume=resume,
        )
        if tracker is not None:
            model = out / "model.safetensors"
            tracker.log_model(
                model,
                sha256=hashlib.sha256(model.read_bytes()).hexdigest(),
                signature_doc=json.loads((out / "run" / "job.json").read_text()),
            )
            if (out / "audit.jsonl").exists():
                tracker.log_audit(out / "audit.jsonl")
            if (out / "report.html").exists():
                tracker.log_report(out)
            tracker.close()
        return result
    except BaseException as exc:
        if tracker is not None:
            tracker.close("KILLED" if isinstance(exc, Stopped | KeyboardInterrupt) else "FAILED")
        raise


def _up_with_progress(  # noqa: PLR0915 - the progress callbacks, one each
    dep: Any,
    out: Path,
    *,
    quiet: bool,
    tracker: Any,
    start_timeout: float | None = None,
    start_batch: int | None = None,
    resume: bool = False,
) -> tuple[float, str, float | None, dict[str, Any]]:
    """Run the job with a progress bar; metrics.json and the model are rewritten each round.

    Returns the final metric, its name, the centralized baseline's (None: off) and
    metrics.json's content.
    """
    from tessera.deploy.up import UpAudit, baseline_of, page_link, run_job, upload_report
    from tessera.jobs.records import RoundRecord
    from tessera.jobs.secure import summarize
    from tessera.reports import MetricsWriter, write_views
    from tessera.weights import Vector, save_file

    done: list[RoundRecord] = []
    audit = UpAudit(dep, out)  # DIR/audit.jsonl, once the job is submitted
    metric = "accuracy" if str(dep.job.task) == "classification" else "R^2"
    secure = summarize(dep.job) if dep.config.secure.enabled else None
    with progress_bar(quiet) as progress:
        baseline = baseline_of(dep)
        task = progress.add_task("federated", total=dep.config.federation.rounds, status="")
        writer = MetricsWriter(out, dep.job, baseline, secure=secure)
        progress.update(task, status=f"starting {dep.n_nodes} node processes")

        def on_started(job_id: str) -> None:
            nonlocal secure
            if secure is not None and dep.privacy is not None:  # the signed job's calibration
                secure = replace(secure, privacy=dep.privacy)
                writer.learned(dep.job, secure=secure)
            line = privacy_line(dep.job, secure, statistics_rounds=dep.statistics_rounds)
            if line is not None and not quiet:
                progress.console.print(line)
            progress.update(task, status=f"job {job_id}: {dep.n_nodes} nodes consenting")
            if not quiet:
                progress.console.print(f"the job's pages (a one-time link): {page_link(dep)}")

        def on_consents(job_id: str, consented: int, started: int) -> None:
            progress.update(
                task,
                status=f"job {job_id}: {consented}/{dep.n_nodes} nodes consented"
                f" ({started} started)",
            )

        def on_round(rec: RoundRecord, weights: Vector) -> None:
            if not done:  # the statistics rounds' totals are in: what they say of the data
                writer.learned(dep.job)
                line = missing_line(dep.job.missing)
                if line is not None and dep.privacy and dep.privacy.statistics_clip:
                    line += " (noised totals, as the differential privacy needs)"
                if line is not None and dep.job.statistics is not None:
                    fed = dep.job.statistics
                    progress.console.print(
                        f"{fed.rounds} statistics round(s) over {fed.nodes} nodes; {line}"
                    )
            done.append(rec)
            if tracker is not None:
                values = {
                    "value": rec.value,
                    "participants": rec.participants,
                    "train_loss": rec.train_loss,
                }
                tracker.log_round(rec.round, values)
            progress.update(
                task,
                advance=1,
                status=f"{metric} {rec.value:.4f}  {rec.participants}/{rec.selected} nodes"
                + (f"  epsilon {rec.epsilon:.3g}" if math.isfinite(rec.epsilon) else ""),
            )
            digest = save_file(out / "model.safetensors", dep.job.layout.unflatten(weights))
            writer.add_round(rec, model_digest=digest)

        result = run_job(
            dep,
            on_round=audit.round(on_round),
            on_started=audit.started(on_started),
            on_consents=on_consents,
            on_exit=lambda ended: progress.console.print(f"[yellow]{escape(ended)}[/]"),
            start_timeout=start_timeout,
            start_batch=start_batch,
            resume=resume,
        )
    digest = save_file(out / "model.safetensors", dep.job.layout.unflatten(result.weights))
    writer.extra["deployment"] = {
        "nodes": dep.n_nodes,
        "tls": dep.tls,
        "records": dep.records,
        "job_id": result.job_id,
        "seconds": result.seconds,
    }
    if result.contributions is not None:  # as tessera run writes it
        writer.extra["contributions"] = result.contributions
    # metrics.json's last write, then the audit log's (the final model's hash).
    metrics = audit.finish(writer.finish(model_digest=digest), rounds=len(done))
    # curves.png, explanations.json (this process holds the held-out set) and report.html
    write_views(out, metrics, job=dep.job, weights=result.weights)
    upload_report(dep, result.job_id, out / "report.html")  # shown on the job's pages
    final = done[-1].value if done else float("nan")
    return final, metric, None if baseline is None else baseline.value, metrics


@job_app.command("submit", cls=Command)
def job_submit(
    config: Annotated[Path, typer.Argument(help="job file (TOML)")],
    coordinator: Annotated[str, typer.Option(help="the coordinator's URL")],
    provider: Annotated[str, typer.Option(help="the data provider's URL")],
    dataset: Annotated[str, typer.Option(help="the provider's dataset name")],
    user_field: Annotated[str, typer.Option(help="the field naming each user")],
    min_consents: Annotated[int, typer.Option(help="start once this many users consented")],
    max_weight: Annotated[
        float | None, typer.Option(help="secure: samples where a node's weight saturates")
    ] = None,
    keys: Annotated[
        Path, typer.Option(help="AI provider key file (made if missing, mode 0600)")
    ] = Path("ai-provider.key"),
    purpose: Annotated[str, typer.Option(help="what the model is for, shown to users")] = "",
    ca: Annotated[Path | None, typer.Option(help="CA certificate to trust")] = None,
) -> None:
    """Sign and submit a job (the initial weights are uploaded first)."""
    from tessera.ai_provider.client import (
        build_job,
        fetch_preprocessing,
        fetch_provider_key,
        submit,
    )
    from tessera.config import load_config
    from tessera.deploy.up import with_declared_weight
    from tessera.runtime.transport.client import CoordinatorClient
    from tessera.storage.keyfile import load_or_create_keys

    try:
        cfg = load_config(config)
        if max_weight is not None:
            cfg = with_declared_weight(cfg, max_weight)
        signer = load_or_create_keys(keys, _passphrase())  # before any request: fail early
        verify = _verify(ca)
        pre = fetch_preprocessing(cfg, provider, dataset, keys=signer, verify=verify)
        doc, weights = build_job(
            cfg,
            signer,
            provider=fetch_provider_key(provider, verify=verify),
            dataset=dataset,
            user_field=user_field,
            preprocessing=pre,
            min_consents=min_consents,
            purpose=purpose or f"train {cfg.job.name}",
        )
        with CoordinatorClient(coordinator, verify=verify, keys=signer) as client:
            answer = submit(client, doc, weights)
    except TesseraError as exc:
        _fail(exc)
        return
    console.print(json.dumps(answer))


def _ai_provider_client(coordinator: str, keys: Path, ca: Path | None) -> Any:
    """The AI provider's signed client of the coordinator (its key file unsealed here; a
    missing file is an OSError the commands report)."""
    from tessera.runtime.transport.client import CoordinatorClient
    from tessera.storage.keyfile import load_keys

    ai_keys = load_keys(keys, _passphrase())
    return CoordinatorClient(coordinator, verify=_verify(ca), patience=10, keys=ai_keys)


@job_app.command("status", cls=Command)
def job_status(
    job_id: str,
    coordinator: Annotated[str, typer.Option(help="the coordinator's URL")],
    keys: Annotated[Path, typer.Option(help="AI provider key file")] = Path("ai-provider.key"),
    ca: Annotated[Path | None, typer.Option(help="CA certificate to trust")] = None,
) -> None:
    """A job's state and its rounds so far (JSON; to the job's AI provider)."""
    try:
        with _ai_provider_client(coordinator, keys, ca) as client:
            typer.echo(json.dumps(client.status(job_id), indent=1))
    except (TesseraError, OSError) as exc:  # OSError: no key file
        _fail(exc)


@job_app.command("page", cls=Command)
def job_page(
    coordinator: Annotated[str, typer.Option(help="the coordinator's URL")],
    keys: Annotated[Path, typer.Option(help="AI provider key file")] = Path("ai-provider.key"),
    ca: Annotated[Path | None, typer.Option(help="CA certificate to trust")] = None,
) -> None:
    """A one-time login link (5 minutes) to the coordinator's pages: your jobs, live."""
    try:
        with _ai_provider_client(coordinator, keys, ca) as client:
            typer.echo(client.page_link())
    except (TesseraError, OSError) as exc:  # OSError: no key file
        _fail(exc)


@job_app.command("fetch", cls=Command)
def job_fetch(
    job_id: str,
    coordinator: Annotated[str, typer.Option(help="the coordinator's URL")],
    out: Annotated[Path, typer.Option("--out", "-o")] = Path("model"),
    keys: Annotated[Path, typer.Option(help="AI provider key file")] = Path("ai-provider.key"),
    ca: Annotated[Path | None, typer.Option(help="CA certificate to trust")] = None,
) -> None:
    """Fetch the final model (hash-checked) and the job's report into OUT."""
    from tessera.ai_provider.client import fetch_final
    from tessera.jobs.document import JobSpec
    from tessera.training import layout
    from tessera.weights import save_file

    try:
        with _ai_provider_client(coordinator, keys, ca) as client:
            weights, sha = fetch_final(client, job_id)
            spec = JobSpec.from_document(client.job_document(job_id))
            status = client.status(job_id)
    except (TesseraError, RuntimeError, OSError) as exc:  # OSError: no key file
        _fail(exc)
        return
    out.mkdir(parents=True, exist_ok=True)
    save_file(out / "model.safetensors", layout(spec.model).unflatten(weights))
    (out / "report.json").write_text(
        json.dumps({**status, "model_sha256": sha, "job": spec.document.to_json()}, indent=1)
    )
    console.print(f"wrote {out}/model.safetensors (sha256 {sha[:16]}...) and report.json")


consent_app = typer.Typer(
    cls=Group, no_args_is_help=True, help="A user's consent, signed with their node's key."
)
app.add_typer(consent_app, name="consent")


ProviderUrl = Annotated[
    str | None, typer.Option(help="the URL of the data provider the user enrolled with")
]
ProviderKey = Annotated[
    str | None, typer.Option(help="that provider's key fingerprint, given at enrolment")
]
InsecureLoopback = Annotated[
    bool, typer.Option(help="development only: take plain http from services on this machine")
]


def _agent(
    node_id: str,
    coordinator: str,
    keys: Path,
    state: Path,
    ca: Path | None,
    *,
    user: str | None = None,
    provider: str | None = None,
    provider_key: str | None = None,
    insecure_loopback: bool = False,
) -> Any:
    from tessera.node.agent import AgentConfig, NodeAgent

    return NodeAgent(
        AgentConfig(
            node_id=node_id,
            coordinator=coordinator,
            keys_path=keys,
            state_dir=state,
            subject=user,
            provider=provider,
            provider_key=provider_key,
            insecure_loopback=insecure_loopback,
            passphrase=_passphrase(),
            verify=_verify(ca),
        )
    )


@consent_app.command("grant", cls=Command)
def consent_grant(
    job_id: str,
    id: Annotated[str, typer.Option("--id", help="this node's id")],
    coordinator: Annotated[str, typer.Option(help="the coordinator's URL")],
    user: Annotated[str, typer.Option(help="the user's id at the data provider")],
    provider: ProviderUrl = None,
    provider_key: ProviderKey = None,
    keys: Annotated[Path, typer.Option(help="the node's key file")] = Path("node.key"),
    state: Annotated[Path, typer.Option(help="the node's state folder")] = Path("node-state"),
    ca: Annotated[Path | None, typer.Option(help="CA certificate to trust")] = None,
    insecure_loopback: InsecureLoopback = False,
) -> None:
    """Read the job, check it against the node's catalogue, sign and send a receipt.

    The receipt goes with the attestation the user's own data provider signs
    for this node (``--provider``, ``--provider-key``: from the user's enrolment).
    """
    try:
        agent = _agent(
            id,
            coordinator,
            keys,
            state,
            ca,
            user=user,
            provider=provider,
            provider_key=provider_key,
            insecure_loopback=insecure_loopback,
        )
        receipt = agent.consent(job_id)
    except TesseraError as exc:
        _fail(exc)
        return
    console.print(f"consented to {job_id}: receipt {receipt.digest}")


@consent_app.command("revoke", cls=Command)
def consent_revoke(
    job_id: str,
    id: Annotated[str, typer.Option("--id", help="this node's id")],
    coordinator: Annotated[str, typer.Option(help="the coordinator's URL")],
    provider: ProviderUrl = None,
    provider_key: ProviderKey = None,
    keys: Annotated[Path, typer.Option(help="the node's key file")] = Path("node.key"),
    state: Annotated[Path, typer.Option(help="the node's state folder")] = Path("node-state"),
    ca: Annotated[Path | None, typer.Option(help="CA certificate to trust")] = None,
    insecure_loopback: InsecureLoopback = False,
) -> None:
    """Revoke this user's consent: no training from the next round on, no more records.

    With ``--provider`` the user's own data provider is told too.
    """
    try:
        agent = _agent(
            id,
            coordinator,
            keys,
            state,
            ca,
            provider=provider,
            provider_key=provider_key,
            insecure_loopback=insecure_loopback,
        )
        revocation = agent.revoke(job_id)
    except TesseraError as exc:
        _fail(exc)
        return
    console.print(f"revoked consent to {job_id} ({revocation.digest})")
