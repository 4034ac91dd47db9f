"""A local deployment on loopback: coordinator, data provider and N node processes.

``tessera up`` and the end-to-end tests drive this. Every party is its own
OS process talking HTTP(S) to the others, exactly as across a data space;
this class only plays the operators who start and stop them, and the
users who link their node to their account at the data provider. The data
it serves is the job's real records: the provider holds the nodes' part of
the table, the AI provider keeps the held-out part for evaluation.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from tessera.config import JobConfig
from tessera.crypto.keys import NodeKeys
from tessera.errors import ConfigError
from tessera.jobs.prepared import PreparedJob, prepare_job, split_table
from tessera.runtime.transport.client import CoordinatorClient
from tessera.storage.keyfile import load_keys, load_or_create_keys, save_keys

PROVIDER_DATASET = "records"


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
    job: PreparedJob = field(init=False)
    processes: dict[str, Process] = field(default_factory=dict)
    coordinator_url: str = ""
    provider_url: str = ""
    _coordinator_port: int = 0

    def __post_init__(self) -> None:
        if self.n_nodes < 1:
            raise ConfigError("nodes", "a deployment needs at least one node")
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "logs").mkdir(exist_ok=True)
        (self.out / "run").mkdir(exist_ok=True)
        self.job = prepare_job(self.config).first_nodes(self.n_nodes)
        if self.db_url is None:
            self.db_url = f"sqlite:///{(self.out / 'coordinator.db').resolve()}"
        self.ca: Path | None = None
        if self.tls:
            from tessera.runtime.transport.tls import make_local_pki

            pki = make_local_pki(
                self.out / "pki", services=("coordinator", "provider"), overwrite=True
            )
            self.ca = pki.ca.cert
            self._certs = pki.services
        self._node_keys = [self._keys_of(i) for i in range(self.n_nodes)]

    # -- parties ----------------------------------------------------------------------
    @property
    def verify(self) -> ssl.SSLContext | bool:
        if self.ca is None:
            return True
        from tessera.runtime.transport.tls import client_ssl_context

        return client_ssl_context(self.ca)

    @property
    def ai_provider_keys(self) -> NodeKeys:
        """The AI provider's keys: it signs the job and every request about it."""
        return load_or_create_keys(self.out / "keys" / "ai-provider.key", None)

    def client(self, patience: float = 120.0) -> CoordinatorClient:
        """The AI provider's client of the coordinator (its requests signed)."""
        return CoordinatorClient(
            self.coordinator_url, verify=self.verify, patience=patience, keys=self.ai_provider_keys
        )

    def _spawn(self, name: str, args: list[str]) -> Process:
        log = self.out / "logs" / f"{name}.log"
        handle = open(log, "ab")  # noqa: SIM115 - the child owns it
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TESSERA_THREADS": "1"}
        popen = subprocess.Popen(
            args, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        handle.close()
        proc = Process(name, popen, log)
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
        folder = self.out / "provider"
        folder.mkdir(exist_ok=True)
        train_df, _ = split_table(self.config)
        column = self.config.partition.column
        if self.config.partition.scheme != "natural" or column is None:
            raise ConfigError("partition", "a deployment needs a natural partition (a user column)")
        # Each user linked their node to their account: the provider knows their keys.
        subjects = {
            name: keys.public.fingerprint
            for name, keys in zip(self.job.node_names, self._node_keys, strict=True)
        }
        dataset: dict[str, object] = {"name": PROVIDER_DATASET, "user_field": column}
        if self.records == "xapi":
            dataset.update(self._statement_store(folder, train_df))
        elif self.records == "table":
            train_df.to_parquet(folder / "records.parquet")
            dataset.update(backend="table", path="records.parquet")
        else:
            raise ConfigError("records", f"choose table or xapi, not {self.records!r}")
        # Statistics go to this deployment's AI provider only.
        config = {
            "datasets": [dataset],
            "subjects": subjects,
            "ai_providers": [self.ai_provider_keys.public.fingerprint],
        }
        (folder / "provider.json").write_text(json.dumps(config, indent=1))
        ready = self.out / "run" / "provider.url"
        ready.unlink(missing_ok=True)
        proc = self._spawn(
            "provider",
            _tessera(
                "provider",
                str(folder / "provider.json"),
                "--db",  # revocations and used nonces outlive a restart of the provider
                f"sqlite:///{(folder / 'provider.db').resolve()}",
                "--port",
                "0",
                "--ready-file",
                str(ready),
                *self._tls_args("provider"),
            ),
        )
        self.provider_url = wait_for_file(ready, proc)
        return self.provider_url

    def _statement_store(self, folder: Path, train_df: pd.DataFrame) -> dict[str, object]:
        """Chem97's records as the xAPI statements a learning-record store would hold."""
        if self.config.data.dataset != "mlmRev/Chem97":
            raise ConfigError("records", "the xAPI demo store is built from mlmRev/Chem97")
        from tessera.data.connectors import (
            CHEM97_EXTRACTION,
            CHEM97_QUERY,
            write_chem97_statements,
        )

        write_chem97_statements(folder / "lrs.jsonl", df=train_df)
        return {
            "backend": "xapi",
            "statements": "lrs.jsonl",
            "query": CHEM97_QUERY.model_dump(mode="json"),
            "extraction": CHEM97_EXTRACTION.model_dump(mode="json"),
        }

    def _keys_of(self, i: int) -> NodeKeys:
        path = self.out / "nodes" / f"{i:06d}" / "node.key"
        if path.exists():
            return load_keys(path)
        keys = NodeKeys.generate()
        path.parent.mkdir(parents=True, exist_ok=True)
        save_keys(keys, path)
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
            self.coordinator_url,
            "--keys",
            str(folder / "node.key"),
            "--state",
            str(folder),
            "--user",
            self.job.node_names[i],
            "--consent",
            job_id,
            "--isolate-network",
            self.isolate_network,
        ]
        orgs = self.job.organisations
        if orgs and orgs[i] is not None:
            args += ["--organisation", str(orgs[i])]
        if self.ca is not None:
            args += ["--ca", str(self.ca)]
        if self.sandbox_start_timeout is not None:
            args += ["--sandbox-start-timeout", repr(float(self.sandbox_start_timeout))]
        return self._spawn(self.node_id(i), _tessera(*args))

    def exited(self) -> list[Process]:
        """The parties started so far whose process has ended, in start order."""
        return [proc for proc in self.processes.values() if not proc.alive()]

    def kill_node(self, i: int) -> None:
        self.processes[self.node_id(i)].stop(kill=True)

    def close(self) -> None:
        """Stop everything: nodes first, then the provider, then the coordinator."""
        order = sorted(self.processes.values(), key=lambda p: p.name in ("provider", "coordinator"))
        for proc in order:
            proc.stop()
