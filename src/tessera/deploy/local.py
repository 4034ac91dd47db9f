"""A local deployment on loopback: coordinator, data provider and N node processes.

``tessera up`` and the end-to-end tests drive this. Every party is its own
OS process talking HTTP(S) to the others, exactly as across a data space;
this class only plays the operators who start and stop them, and the
users who link their node to their account at the data provider. The data
it serves is the job's real records: the provider holds the nodes' part of
the table, the AI provider keeps the held-out part for evaluation.

What it writes is private: the output folder (when made here) and every
folder under it 0700, keys, databases, the provider's config and records
0600; the parties' processes run under umask 077, so what they make is
too. With ``passphrase`` every party's key file is sealed under it (the
processes get it as ``TESSERA_KEY_PASSPHRASE``); without one, a warning
says the keys lie in the clear.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from tessera.config import JobConfig
from tessera.crypto.keys import NodeKeys
from tessera.deploy.supervise import PARENT_ENV, StopReport, stop_all
from tessera.errors import ConfigError
from tessera.jobs.poison import poisoned_records
from tessera.jobs.prepared import PreparedJob, prepare_job, split_table
from tessera.protocol.noise import PrivacyParams
from tessera.runtime.transport.client import CoordinatorClient
from tessera.storage.keyfile import load_keys, load_or_create_keys, save_keys
from tessera.storage.private import open_private, private_dir, private_file, write_private

PROVIDER_DATASET = "records"
SERVICES = ("coordinator", "provider")
PASSPHRASE_ENV = "TESSERA_KEY_PASSPHRASE"
log = logging.getLogger(__name__)


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, *, kill: bool = False, timeout: float = 15.0) -> None:
        if not self.alive():
            return
        self.popen.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def how_it_ended(self, lines: int = 20) -> str:
        """For an error message: its name, exit status and the last lines of its log."""
        code = self.popen.poll()
        if code is None:
            ended = "is still running"
        elif code < 0:
            ended = f"was killed by signal {-code}"
        else:
            ended = f"exited with status {code}"
        tail = self.tail(lines).strip() or "(empty)"
        return f"{self.name} {ended}; last lines of {self.log}:\n{tail}"


@dataclass(frozen=True)
class Placement:
    """Where a party runs: its command's prefix (``ip netns exec NS``, say) and the
    address a service listens on. The default is this machine's loopback."""

    prefix: tuple[str, ...] = ()
    host: str = "127.0.0.1"


LOOPBACK = Placement()


def _tessera(*args: str) -> list[str]:
    return [sys.executable, "-m", "tessera.cli", *args]


def wait_for_file(path: Path, proc: Process, timeout: float = 60.0) -> str:
    """What a starting service writes to its ready file (its URL)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited during start-up:\n{proc.tail()}")
        time.sleep(0.05)
    raise TimeoutError(f"{proc.name} did not start within {timeout:.0f} s:\n{proc.tail()}")


@dataclass
class Deployment:
    config: JobConfig
    n_nodes: int
    out: Path
    tls: bool = True
    db_url: str | None = None
    isolate_network: str = "required"
    records: str = "table"  # or "xapi": the provider serves a learning-record store
    sandbox_start_timeout: float | None = None  # seconds; None: the node's default
    node_max_parameters: int | None = None  # the nodes' catalogue bound; None: its default
    node_memory: int | None = None  # bytes: the nodes' sandbox memory limit; None: its default
    # Some nodes' own limit in place of node_memory, by node index (tests: a node short of it).
    node_memory_of: dict[int, int] = field(default_factory=dict)
    passphrase: bytes | None = field(default=None, repr=False)  # seals every party's key
    # The first ask_consent nodes consent on their user's consent page (node.consent_page),
    # not on their own: each serves it on loopback; on_consent_page hears (node, login link).
    ask_consent: int = 0
    on_consent_page: Callable[[str, str], None] | None = field(default=None, repr=False)
    # Where each party runs, by name ("coordinator", "provider" or a node id): the fault
    # tests put each in a network namespace of its own (tessera.testing.netns).
    place: Callable[[str], Placement] = field(default=lambda _name: LOOPBACK, repr=False)
    # The coordinator's URL as the nodes are given it, from its own: a test puts a relay
    # in front of it (tessera.testing.latency), whose address cert_hosts then names too.
    node_coordinator: Callable[[str], str] = field(default=lambda url: url, repr=False)
    cert_hosts: tuple[str, ...] = ()  # more addresses the services' certificates name
    consent_pages: dict[str, str] = field(default_factory=dict, init=False)
    job: PreparedJob = field(init=False)
    processes: dict[str, Process] = field(default_factory=dict)
    coordinator_url: str = ""
    provider_url: str = ""
    _coordinator_port: int = 0  # 0 until started: a restart takes the same port
    _provider_port: int = 0
    # The signed job's privacy, once built: its calibration spans the statistics rounds.
    privacy: PrivacyParams | None = field(default=None, init=False)
    statistics_rounds: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.n_nodes < 1:
            raise ConfigError("nodes", "a deployment needs at least one node")
        private_dir(self.out)
        for folder in ("logs", "run", "keys", "nodes"):
            private_dir(self.out / folder, tighten=True)
        if self.passphrase is None:
            log.warning(
                "no TESSERA_KEY_PASSPHRASE: the node keys in %s and the coordinator's and AI"
                " provider's keys in %s are stored in the clear (mode 0600); set it to seal them",
                self.out / "nodes",
                self.out / "keys",
            )
        self.job = prepare_job(self.config).first_nodes(self.n_nodes)
        if self.job.scaled:  # a deployed node's update is its own: nothing scales it
            log.warning(
                "[simulation.poison] scaled_fraction is simulated by tessera run only; here"
                " the %d corrupted users' records are served changed, no update is scaled",
                len(self.job.corrupted),
            )
            self.job = replace(self.job, scaled=())
        if self.db_url is None:
            self.db_url = f"sqlite:///{(self.out / 'coordinator.db').resolve()}"
        self.ca: Path | None = None
        if self.tls:
            from tessera.runtime.transport.tls import DEFAULT_HOSTS, make_local_pki

            placed = (self.place(s).host for s in SERVICES)
            hosts = dict.fromkeys((*DEFAULT_HOSTS, *placed, *self.cert_hosts))
            pki = make_local_pki(
                self.out / "pki", services=SERVICES, hosts=list(hosts), overwrite=True
            )
            self.ca = pki.ca.cert
            self._certs = pki.services
        self._node_keys = [self._keys_of(i) for i in range(self.n_nodes)]
        # The provider's keys, made by its operator: users are given the fingerprint when
        # they enrol their node, and their nodes trust no other (never one a job names).
        self.provider_keys = self._stored_keys(self.out / "keys" / "provider.key")

    # -- parties ----------------------------------------------------------------------
    @property
    def verify(self) -> ssl.SSLContext | bool:
        if self.ca is None:
            return True
        from tessera.runtime.transport.tls import client_ssl_context

        return client_ssl_context(self.ca)

    @functools.cached_property
    def ai_provider_keys(self) -> NodeKeys:
        """The AI provider's keys: it signs the job and every request about it."""
        return load_or_create_keys(self.out / "keys" / "ai-provider.key", self.passphrase)

    def client(self, patience: float = 120.0) -> CoordinatorClient:
        """The AI provider's client of the coordinator (its requests signed)."""
        return CoordinatorClient(
            self.coordinator_url, verify=self.verify, patience=patience, keys=self.ai_provider_keys
        )

    def _spawn(self, name: str, args: list[str]) -> Process:
        logfile = private_file(self.out / "logs" / f"{name}.log")
        handle = open(logfile, "ab")  # noqa: SIM115 - the child owns it
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TESSERA_THREADS": "1"}
        env[PARENT_ENV] = str(os.getpid())  # it stops itself if we die uncleanly (supervise)
        env.pop(PASSPHRASE_ENV, None)
        if self.passphrase is not None:
            env[PASSPHRASE_ENV] = os.fsdecode(self.passphrase)  # the child reads os.environb
        popen = subprocess.Popen(
            [*self.place(name).prefix, *args],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            umask=0o077,  # whatever a party makes (databases, ready files, state) is private
        )
        handle.close()
        proc = Process(name, popen, log=logfile)
        self.processes[name] = proc
        return proc

    def _tls_args(self, service: str) -> list[str]:
        if not self.tls:
            return []
        cert = self._certs[service]
        return ["--cert", str(cert.cert), "--key", str(cert.key)]

    def start_coordinator(self) -> str:
        ready = self.out / "run" / "coordinator.url"
        ready.unlink(missing_ok=True)
        proc = self._spawn(
            "coordinator",
            _tessera(
                "coordinator",
                "--db",
                str(self.db_url),
                "--keys",
                str(self.out / "keys" / "coordinator.key"),
                "--mail-dir",
                str(self.out / "mail"),
                "--audit-dir",
                str(self.out / "audit"),
                "--host",
                self.place("coordinator").host,
                "--port",
                str(self._coordinator_port),
                "--ready-file",
                str(ready),
                *self._tls_args("coordinator"),
            ),
        )
        self.coordinator_url = wait_for_file(ready, proc)
        self._coordinator_port = int(self.coordinator_url.rsplit(":", 1)[1].rstrip("/"))
        return self.coordinator_url

    def stop_coordinator(self, *, kill: bool) -> None:
        self.processes["coordinator"].stop(kill=kill)

    def start_provider(self) -> str:
        config = self.write_provider_files()
        ready = self.out / "run" / "provider.url"
        ready.unlink(missing_ok=True)
        proc = self._spawn(
            "provider",
            _tessera(
                "provider",
                str(config),
                "--db",  # revocations and used nonces outlive a restart of the provider
                f"sqlite:///{(config.parent / 'provider.db').resolve()}",
                "--keys",
                str(self.out / "keys" / "provider.key"),
                "--host",
                self.place("provider").host,
                "--port",
                str(self._provider_port),
                "--ready-file",
                str(ready),
                *self._tls_args("provider"),
            ),
        )
        self.provider_url = wait_for_file(ready, proc)
        self._provider_port = int(self.provider_url.rsplit(":", 1)[1].rstrip("/"))
        return self.provider_url

    def write_provider_files(self) -> Path:
        """The provider's records and config (users' data: 0600 in a 0700 folder); its path."""
        folder = private_dir(self.out / "provider", tighten=True)
        train_df, _ = split_table(self.config)
        column = self.config.partition.column
        if self.config.partition.scheme != "natural" or column is None:
            raise ConfigError("partition", "a deployment needs a natural partition (a user column)")
        # [simulation.poison]: the corrupted users' records are poor at the source.
        train_df = poisoned_records(train_df, self.job, column, seed=self.config.job.seed)
        # Each user linked their node to their account: the provider knows their keys.
        subjects = {
            name: keys.public.fingerprint
            for name, keys in zip(self.job.node_names, self._node_keys, strict=True)
        }
        dataset: dict[str, object] = {"name": PROVIDER_DATASET, "user_field": column}
        if self.records == "xapi":
            dataset.update(self._statement_store(folder, train_df))
        elif self.records == "table":
            with open_private(folder / "records.parquet", "wb") as fh:
                train_df.to_parquet(fh)
            dataset.update(backend="table", path="records.parquet")
        else:
            raise ConfigError("records", f"choose table or xapi, not {self.records!r}")
        # Statistics go to this deployment's AI provider only.
        config = {
            "datasets": [dataset],
            "subjects": subjects,
            "ai_providers": [self.ai_provider_keys.public.fingerprint],
        }
        write_private(folder / "provider.json", json.dumps(config, indent=1))
        return folder / "provider.json"

    def _statement_store(self, folder: Path, train_df: pd.DataFrame) -> dict[str, object]:
        """Chem97's records as the xAPI statements a learning-record store would hold."""
        if self.config.data.dataset != "mlmRev/Chem97":
            raise ConfigError("records", "the xAPI demo store is built from mlmRev/Chem97")
        from tessera.data.connectors import (
            CHEM97_EXTRACTION,
            CHEM97_QUERY,
            write_chem97_statements,
        )

        write_chem97_statements(private_file(folder / "lrs.jsonl"), df=train_df)
        return {
            "backend": "xapi",
            "statements": "lrs.jsonl",
            "query": CHEM97_QUERY.model_dump(mode="json"),
            "extraction": CHEM97_EXTRACTION.model_dump(mode="json"),
        }

    def _keys_of(self, i: int) -> NodeKeys:
        """Node i's keys, made once (its folder 0700: the node's state lives there too)."""
        path = private_dir(self.out / "nodes" / f"{i:06d}", tighten=True) / "node.key"
        return self._stored_keys(path)

    def _stored_keys(self, path: Path) -> NodeKeys:
        if path.exists():  # warned once for all of them, above
            return load_keys(path, self.passphrase, warn_clear=False)
        keys = NodeKeys.generate()
        save_keys(keys, path, self.passphrase, warn_clear=False)
        return keys

    def node_id(self, i: int) -> str:
        return str(self.job.node_ids[i])

    def start_node(self, i: int, job_id: str) -> Process:
        folder = self.out / "nodes" / f"{i:06d}"
        args = [
            "node",
            "--id",
            self.node_id(i),
            "--coordinator",
            self.node_coordinator(self.coordinator_url),
            "--keys",
            str(folder / "node.key"),
            "--state",
            str(folder),
            "--user",
            self.job.node_names[i],
            "--provider",
            self.provider_url,
            "--provider-key",
            self.provider_keys.public.fingerprint,
            *(["--consent-page", "127.0.0.1:0"] if i < self.ask_consent else ["--consent", job_id]),
            "--isolate-network",
            self.isolate_network,
        ]
        orgs = self.job.organisations
        if orgs and orgs[i] is not None:
            args += ["--organisation", str(orgs[i])]
        if self.ca is not None:
            args += ["--ca", str(self.ca)]
        if not self.tls:  # a development run on this machine: plain http on loopback
            args += ["--insecure-loopback"]
        if self.sandbox_start_timeout is not None:
            args += ["--sandbox-start-timeout", repr(float(self.sandbox_start_timeout))]
        if self.node_max_parameters is not None:
            args += ["--max-parameters", str(self.node_max_parameters)]
        memory = self.node_memory_of.get(i, self.node_memory)
        if memory is not None:
            args += ["--memory-limit", str(memory)]
        page = folder / "consent-page.url"
        page.unlink(missing_ok=True)  # a previous run's
        proc = self._spawn(self.node_id(i), _tessera(*args))
        if i < self.ask_consent:  # its page serves before its sandbox starts: seconds
            self.consent_pages[self.node_id(i)] = login = wait_for_file(page, proc)
            if self.on_consent_page is not None:
                self.on_consent_page(self.node_id(i), login)
        return proc

    def exited(self) -> list[Process]:
        """The parties started so far whose process has ended, in start order."""
        return [proc for proc in self.processes.values() if not proc.alive()]

    def kill_node(self, i: int) -> None:
        self.processes[self.node_id(i)].stop(kill=True)

    def close(self, grace: float = 10.0) -> StopReport:
        """Stop everything: nodes first, then the provider, then the coordinator, each
        group at once, killed after ``grace`` seconds (``supervise.stop_all``)."""
        return stop_all(list(self.processes.values()), grace=grace)
