"""A real deployment on loopback: mailbox throughput, and secure rounds with N node processes.

    .venv/bin/python benchmarks/deployment.py                 # N = 50, 2,000 envelopes a row
    .venv/bin/python benchmarks/deployment.py --quick         # N = 20, 400 envelopes a row
    .venv/bin/python benchmarks/deployment.py --nodes 50 --messages 2000 --size 375000
    .venv/bin/python benchmarks/deployment.py --db postgresql+psycopg://postgres@127.0.0.1:5432/test
    .venv/bin/python benchmarks/deployment.py --skip-rounds   # section 1 only

Prints two sections; no targets, every figure is a measurement on this machine.

1. Mailbox throughput through the coordinator, over real loopback HTTP, with
   TLS off and on. A coordinator (``CoordinatorService`` and
   ``create_coordinator_app`` served by ``serve_in_thread`` in this process;
   its store a fresh SQLite file, or a fresh database on the ``--db``
   PostgreSQL server, created here and dropped afterwards) runs a plaintext
   job with a very long round timeout, whose N participants registered with
   signed registrations and consented with signed receipts (attested by the
   data provider the benchmark plays). Its relay policy (kinds per round,
   the tree's roles, per-sender quotas) is off, since the rows post between
   every pair of nodes: they time HTTP, the signature check and the commit
   that every envelope pays (``bench_service``). Then
   ``--clients`` sender processes POST ``--messages`` envelopes node -> node
   (``seal``: signed by the sender, sealed for the recipient, payload of
   ``--small-size`` or ``--size`` bytes), each sender on its own keep-alive
   connection; and after all of them are stored, ``--clients`` receiver
   processes drain every participant's mailbox with
   ``CoordinatorClient.pull_mail`` (signed requests, ``wait=0``). The
   envelopes are sealed before the clock starts and the connections opened
   (TLS handshake done) before it, so the figures are the coordinator's:
   HTTP, signature check, store commit (SQLite ``synchronous=FULL``) and, for
   pulls, the query and the msgpack batch. Each receiver opens one envelope
   per mailbox afterwards, so the bytes are checked to arrive intact. MB/s
   counts envelope bytes (payload + header + tag + signature), 10^6 bytes.
   The clients share the machine's cores with the coordinator; ``load`` is
   the 1-minute load average after the row (the machine's other users show
   there). A row with ``idle polls`` > 0 is TLS on with half the
   participants long-polling their empty mailboxes during the posting, as
   idle nodes do (20 s polls, one thread each in one more process), the
   envelopes going between the other half (``--no-idle-polls`` to leave
   these rows out).
2. Rounds of a deployment: ``Deployment`` + ``run_job`` on
   ``examples/chem97.toml`` (one node per school, the first N schools), 2
   rounds, fraction 1.0, min_participants 1, round_timeout 60, phase_timeout
   5, no baseline, TLS on: a coordinator, a data provider and N node
   processes, each node with its sandbox child (which imports torch). Once
   secure, once plaintext (``secure.enabled = false``). ``prepare s`` is
   ``Deployment(...)`` (data, keys, certificates); ``services s`` starting
   coordinator and provider, fetching the encoding and submitting the job;
   ``start-up s`` from starting the first node process to the job's start
   (every node up, its sandbox ready, registered and consented: the
   coordinator's ``started_at``). Nodes are started at most
   ``--start-concurrency`` (8) at a time, the next as soon as one has
   consented: a node agent exits when its sandbox does not answer within 60 s
   (``SandboxLimits.start_timeout``), and 50 sandboxes importing torch at once
   on 2 cores miss that (``--start-concurrency 0`` starts them all at once, as
   ``run_job`` does; a run stops as soon as a node exits with an error).
   ``round 0 s`` runs from the start to round 0's ``closed_at`` (it includes
   each node's first fetch of its records), ``round 1 s`` from there to
   round 1's ``closed_at`` (the steady state). Memory: every 0.5 s
   the deployment's process tree (the children of this process and theirs,
   from /proc) is summed: resident set (VmRSS, which counts shared library
   pages once per process) and, every 2 s, proportional set (Pss from
   smaps_rollup, shared pages split); ``RSS MB/node`` and ``PSS MB/node``
   are those of the node agents and their sandboxes at the peak, over the
   nodes alive then; ``load`` is the mean 1-minute load average over the run
   (the deployment's own processes count, and so do the machine's other
   users). A guard stops a run when
   MemAvailable drops below ``--min-free-gb``; the benchmark then says so and
   runs both modes again with the largest N the measured memory allows.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import math
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EXAMPLES = Path(__file__).resolve().parents[1] / "src" / "tessera" / "examples"
NODE_PREFIX = "bench-"
ENVELOPE_KIND = 1  # Kind.SHARE: a share-sized box the relay stores unopened (kinds are registered)
BARRIER_TIMEOUT_S = 600.0
MB = 1e6
GIB = 1 << 30


def node_name(i: int) -> str:
    return f"{NODE_PREFIX}{i:04d}"


def node_keys(i: int) -> Any:
    from tessera.crypto.keys import NodeKeys

    return NodeKeys.from_seed(f"tessera-bench-mail-{i}".encode())


def provider_keys() -> Any:
    """The data provider the benchmark plays: it attests the nodes' consents."""
    from tessera.crypto.keys import NodeKeys

    return NodeKeys.from_seed(b"tessera-bench-data-provider")


def bench_service(store: Any, keys: Any) -> Any:
    """The coordinator with its relay policy off (round kinds, tree roles, quotas).

    The rows post envelopes between every pair of nodes, which a real round's
    tree never asks for: they time what every envelope pays, HTTP, the
    signature check and the commit; the policy checks themselves are a few
    dictionary lookups.
    """
    from tessera.coordinator.service import CoordinatorService
    from tessera.protocol.kinds import Kind
    from tessera.protocol.limits import ENVELOPE_LIMITS, RelayBounds

    class _Service(CoordinatorService):
        def _relay_bounds(self, job: Any) -> RelayBounds:  # noqa: ARG002 - every job alike
            limits = {kind: ENVELOPE_LIMITS[kind] for kind in Kind if kind in ENVELOPE_LIMITS}
            return RelayBounds(limits, count=1 << 40, bytes=1 << 60)

        def _check_tree(self, head: Any) -> None:  # noqa: ARG002 - no tree asked
            return None

    return _Service(store, keys)


# -- databases ----------------------------------------------------------------------------


@contextlib.contextmanager
def fresh_database(server_url: str | None, folder: Path, name: str) -> Iterator[str]:
    """A URL to an empty store: a new SQLite file, or a new database on ``server_url``."""
    if server_url is None:
        path = (folder / f"{name}.db").resolve()
        try:
            yield f"sqlite:///{path}"
        finally:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    server = make_url(server_url)
    admin = create_engine(server, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
    database = f"tessera_bench_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{database}"'))
    try:
        yield server.set(database=database).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        admin.dispose()


def backend_name(server_url: str | None) -> str:
    return "SQLite file" if server_url is None else "PostgreSQL"


# -- 1. mailbox throughput -----------------------------------------------------------------


def mailbox_config() -> Any:
    """Chem97's job as a plaintext job that never times out: the coordinator idles."""
    from tessera.config import load_config

    cfg = load_config(EXAMPLES / "chem97.toml")
    return cfg.model_copy(
        update={
            "federation": cfg.federation.model_copy(
                update={"rounds": 1, "fraction": 1.0, "min_participants": 1, "round_timeout": 1e6}
            ),
            "secure": cfg.secure.model_copy(update={"enabled": False}),
            "baseline": cfg.baseline.model_copy(update={"enabled": False}),
        }
    )


def tiny_preprocessing(cfg: Any) -> dict[str, Any]:
    """A feature encoding fitted on a few made-up rows (the relay never looks at it)."""
    import pandas as pd

    from tessera.data.prepare import Preprocessor

    rows = 12
    df = pd.DataFrame(
        {
            "gcsescore": [4.0 + 0.3 * i for i in range(rows)],
            "gender": ["M", "F"] * (rows // 2),
            "age": [float(i % 5) for i in range(rows)],
            "score": [float(2 * (i % 6)) for i in range(rows)],
        }
    )
    d = cfg.data
    pre = Preprocessor.fit(
        df, target=d.target, features=d.features, categorical=d.categorical, task=cfg.job.task
    )
    return pre.to_json()


def start_job(client: Any, n_nodes: int) -> str:
    """Register N nodes, submit a plaintext job and consent for each (attested): it runs."""
    from tessera.ai_provider.client import build_job, submit
    from tessera.consent import ATTESTATION_KIND, ConsentTerms, grant_consent
    from tessera.coordinator.service import REGISTRATION_KIND
    from tessera.crypto.documents import sign_document
    from tessera.crypto.keys import NodeKeys
    from tessera.jobs.document import JobSpec

    for i in range(n_nodes):
        keys = node_keys(i)
        body = {
            "node_id": node_name(i),
            "public_keys": base64.b64encode(keys.public.to_bytes()).decode(),
            "organisation": None,
            "at": time.time(),
        }
        client.register(sign_document(keys, REGISTRATION_KIND, body))
    cfg = mailbox_config()
    doc, weights = build_job(
        cfg,
        NodeKeys.from_seed(b"tessera-bench-ai-provider"),
        provider=provider_keys().public.fingerprint,
        dataset="records",
        user_field="school",
        preprocessing=tiny_preprocessing(cfg),
        min_consents=n_nodes,
        purpose="benchmark the coordinator's mailbox",
    )
    job_id: str = submit(client, doc, weights)["job_id"]
    spec = JobSpec.from_document(doc)
    now = time.time()
    for i in range(n_nodes):
        terms = ConsentTerms(
            job_id=job_id,
            job_digest=spec.digest,
            purpose=spec.purpose,
            data_categories=spec.data.fields,
            ai_provider=spec.ai_provider.fingerprint,
            user=node_name(i),
            issued_at=now - 60,
            expires_at=now + 86400,
        )
        receipt = grant_consent(node_keys(i), terms)
        vouched = {
            "job_id": job_id,
            "job_digest": spec.digest,
            "provider": provider_keys().public.fingerprint,
            "node": node_name(i),
            "node_key": node_keys(i).public.fingerprint,
            "consent": receipt.digest,
            "commitment": "0" * 64,  # a plaintext job has no trees, hence no beacon
            "issued_at": now,
        }
        client.consent(job_id, receipt, sign_document(provider_keys(), ATTESTATION_KIND, vouched))
    end = time.monotonic() + 30
    while client.status(job_id)["state"] != "running":
        if time.monotonic() > end:
            raise RuntimeError(f"job {job_id} did not start: {client.status(job_id)}")
        time.sleep(0.05)
    return job_id


def address(j: int, n_nodes: int) -> tuple[int, int]:
    """Envelope j's sender and recipient: every pair of distinct nodes in turn."""
    sender = j % n_nodes
    return sender, (sender + 1 + (j // n_nodes) % (n_nodes - 1)) % n_nodes


def client_verify(ca: str | None) -> Any:
    if ca is None:
        return True
    from tessera.runtime.transport.tls import client_ssl_context

    return client_ssl_context(Path(ca))


@dataclass(frozen=True)
class MailTask:
    """One sender's or receiver's share of a mailbox row."""

    url: str
    ca: str | None  # the CA's certificate: TLS
    job_id: str
    pairs: list[tuple[int, int]] = field(default_factory=list)  # a sender's (from, to)
    size: int = 0
    nodes: list[int] = field(default_factory=list)  # a receiver's mailboxes
    expected: dict[int, int] = field(default_factory=dict)  # envelopes per mailbox
    after: int = 0  # the last mail id before the row


def sender_worker(task: MailTask, barrier: Any, results: Any) -> None:
    """Seal every envelope, open the connection, wait for the others, POST them all."""
    try:
        from tessera.crypto.envelope import seal
        from tessera.runtime.transport.client import CoordinatorClient

        keys = {i: node_keys(i) for pair in task.pairs for i in pair}
        payload = os.urandom(task.size)
        envelopes = [
            seal(
                kind=ENVELOPE_KIND,
                job_id=task.job_id,
                round=0,
                sender=node_name(s),
                recipient=node_name(r),
                payload=payload,
                sender_keys=keys[s],
                recipient_public=keys[r].public,
            )
            for s, r in task.pairs
        ]
        per_recipient: Counter[int] = Counter()
        nbytes: Counter[int] = Counter()
        for (_, r), env in zip(task.pairs, envelopes, strict=True):
            per_recipient[r] += 1
            nbytes[r] += len(env)
        with CoordinatorClient(task.url, verify=client_verify(task.ca), patience=10) as client:
            client.coordinator_keys()  # the connection (and TLS session) is up before the clock
            barrier.wait(BARRIER_TIMEOUT_S)
            t0 = time.monotonic()
            for env in envelopes:
                if client.post_mail(env) is None:
                    raise RuntimeError("the coordinator took an envelope for a replay")
            t1 = time.monotonic()
        results.put(("ok", {"t0": t0, "t1": t1, "count": per_recipient, "bytes": nbytes}))
    except BaseException:
        results.put(("error", traceback.format_exc()))
        barrier.abort()


def receiver_worker(task: MailTask, barrier: Any, results: Any) -> None:
    """Drain each node's mailbox (signed pulls) until it holds what was sent to it."""
    try:
        from tessera.crypto.envelope import open_envelope, peek
        from tessera.protocol.secure_coordinator import MAX_ENVELOPE_BYTES
        from tessera.runtime.transport.client import CoordinatorClient

        keys = {i: node_keys(i) for i in task.nodes}
        count: Counter[int] = Counter()
        nbytes: Counter[int] = Counter()
        first: dict[int, bytes] = {}
        pulls = 0
        with CoordinatorClient(task.url, verify=client_verify(task.ca), patience=10) as client:
            client.coordinator_keys()
            barrier.wait(BARRIER_TIMEOUT_S)
            t0 = time.monotonic()
            for i in task.nodes:
                cursor = task.after
                client.keys, client.node = keys[i], node_name(i)  # pulls are signed by the node
                while count[i] < task.expected.get(i, 0):
                    items = client.pull_mail(cursor, 0.0)
                    pulls += 1
                    if not items:
                        raise RuntimeError(f"{node_name(i)}: mailbox empty at {count[i]}")
                    for mail_id, data in items:
                        first.setdefault(i, data)
                        count[i] += 1
                        nbytes[i] += len(data)
                        cursor = mail_id
            t1 = time.monotonic()
        for i, data in first.items():  # after the clock: the bytes arrived intact
            sender = int(peek(data).sender.removeprefix(NODE_PREFIX))
            env = open_envelope(
                data,
                recipient_keys=keys[i],
                sender_public=node_keys(sender).public,
                expect_job=task.job_id,
                expect_round=0,
                expect_recipient=node_name(i),
                max_bytes=MAX_ENVELOPE_BYTES,
                replay=None,
            )
            assert env.kind == ENVELOPE_KIND
        results.put(("ok", {"t0": t0, "t1": t1, "count": count, "bytes": nbytes, "pulls": pulls}))
    except BaseException:
        results.put(("error", traceback.format_exc()))
        barrier.abort()


def run_workers(target: Callable[..., None], tasks: list[MailTask]) -> list[dict[str, Any]]:
    """One spawned process per job, released together by a barrier; their reports."""
    ctx = mp.get_context("spawn")  # this process serves HTTP from threads: never fork it
    barrier = ctx.Barrier(len(tasks) + 1)
    results = ctx.Queue()
    procs = [ctx.Process(target=target, args=(task, barrier, results)) for task in tasks]
    for p in procs:
        p.start()
    try:
        # A worker that failed before the start breaks the barrier; its report says why.
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(BARRIER_TIMEOUT_S)
        reports = []
        for _ in procs:
            status, value = results.get(timeout=BARRIER_TIMEOUT_S)
            if status != "ok":
                raise RuntimeError(f"a {target.__name__} failed:\n{value}")
            reports.append(value)
        return reports
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join()


@dataclass
class MailRow:
    tls: bool
    idle: int
    payload: int
    envelope: int
    messages: int
    post_s: float
    pull_s: float
    pulls: int

    def rate(self, seconds: float) -> tuple[float, float]:
        return self.messages / seconds, self.messages * self.envelope / seconds / MB


def idle_poller(url: str, ca: str | None, nodes: list[int], ready: Any, stop: Any) -> None:
    """Long-poll these (empty) mailboxes as idle nodes do, 20 s at a time, until ``stop``."""
    from tessera.runtime.transport.client import CoordinatorClient

    def poll(i: int) -> None:
        keys, name = node_keys(i), node_name(i)
        with CoordinatorClient(url, verify=client_verify(ca), keys=keys, node=name) as client:
            after = client.pull_mail(0, 0.0)[-1][0]  # the job's train request
            ready.put(i)
            while not stop.is_set():
                for mail_id, _ in client.pull_mail(after, 20.0):
                    after = mail_id

    threads = [threading.Thread(target=poll, args=(i,)) for i in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


@contextlib.contextmanager
def idle_polls(url: str, ca: str | None, job_id: str, nodes: list[int]) -> Iterator[None]:
    """A process whose threads long-poll ``nodes``' mailboxes while the block runs."""
    if not nodes:
        yield
        return
    from tessera.crypto.envelope import seal
    from tessera.runtime.transport.client import CoordinatorClient

    ctx = mp.get_context("spawn")
    ready, stop = ctx.Queue(), ctx.Event()
    proc = ctx.Process(target=idle_poller, args=(url, ca, nodes, ready, stop))
    proc.start()
    try:
        for _ in nodes:
            ready.get(timeout=BARRIER_TIMEOUT_S)
        time.sleep(1.0)  # every poll is waiting on the server
        yield
    finally:
        stop.set()
        with CoordinatorClient(url, verify=client_verify(ca), patience=5) as client:
            for i in nodes:  # one envelope each ends the pending polls
                client.post_mail(
                    seal(
                        kind=ENVELOPE_KIND,
                        job_id=job_id,
                        round=0,
                        sender=node_name(0),
                        recipient=node_name(i),
                        payload=b"wake up",
                        sender_keys=node_keys(0),
                        recipient_public=node_keys(i).public,
                    )
                )
        proc.join(30)
        if proc.is_alive():
            proc.kill()
            proc.join()


def mailbox_row(
    *,
    tls: bool,
    size: int,
    messages: int,
    n_nodes: int,
    idle: int,
    clients: int,
    db: str,
    folder: Path,
) -> MailRow:
    from tessera.coordinator.app import create_coordinator_app
    from tessera.crypto.keys import NodeKeys
    from tessera.runtime.transport.client import CoordinatorClient
    from tessera.runtime.transport.serve import serve_in_thread
    from tessera.runtime.transport.tls import make_local_pki
    from tessera.storage import Store

    ca, cert = None, None
    if tls:
        pki = make_local_pki(folder / "pki", services=("coordinator",), overwrite=True)
        ca, cert = str(pki.ca.cert), pki.services["coordinator"]
    active = n_nodes - idle  # envelopes go between these; the others only long-poll
    store = Store(db)
    service = bench_service(store, NodeKeys.from_seed(b"tessera-bench-coordinator"))
    try:
        with serve_in_thread(create_coordinator_app(service), ssl=cert) as server:
            ai = NodeKeys.from_seed(b"tessera-bench-ai-provider")  # start_job's job signer
            with CoordinatorClient(server.url, verify=client_verify(ca), keys=ai) as client:
                job_id = start_job(client, n_nodes)
            after = store.last_message_id()  # the job's train requests are older
            pairs = [address(j, active) for j in range(messages)]
            with idle_polls(server.url, ca, job_id, list(range(active, n_nodes))):
                sent = run_workers(
                    sender_worker,
                    [
                        MailTask(server.url, ca, job_id, pairs=pairs[w::clients], size=size)
                        for w in range(clients)
                    ],
                )
            expected = sum((r["count"] for r in sent), Counter())
            expected_bytes = sum((r["bytes"] for r in sent), Counter())
            groups = [list(range(active))[w::clients] for w in range(clients)]
            got = run_workers(
                receiver_worker,
                [
                    MailTask(server.url, ca, job_id, nodes=g, expected=dict(expected), after=after)
                    for g in groups
                ],
            )
        if sum((r["bytes"] for r in got), Counter()) != expected_bytes:
            raise RuntimeError("the mailboxes did not return exactly what was posted")
    finally:
        service.close()  # the job's driver thread, should the server's shutdown not have
        store.close()
    envelope = round(sum(expected_bytes.values()) / messages)
    return MailRow(
        tls=tls,
        idle=idle,
        payload=size,
        envelope=envelope,
        messages=messages,
        post_s=max(r["t1"] for r in sent) - min(r["t0"] for r in sent),
        pull_s=max(r["t1"] for r in got) - min(r["t0"] for r in got),
        pulls=sum(r["pulls"] for r in got),
    )


def section_mailbox(args: argparse.Namespace, folder: Path) -> None:
    idle = args.nodes // 2
    print(
        f"\n1. Mailbox through the coordinator: {args.nodes} participants, "
        f"{backend_name(args.db)}, {args.clients} sender then {args.clients} receiver "
        "processes, envelopes sealed before the clock"
    )
    head = (
        f"{'TLS':>4} {'idle polls':>10} {'payload B':>10} {'envelope B':>11} {'messages':>9} "
        f"{'post msg/s':>11} {'post MB/s':>10} {'pull msg/s':>11} {'pull MB/s':>10} "
        f"{'pulls':>6} {'post s':>7} {'pull s':>7} {'load':>5}"
    )
    print(head)
    variants = [(False, 0), (True, 0)] + ([(True, idle)] if args.idle_polls else [])
    rows: dict[tuple[int, bool, int], MailRow] = {}
    for size in (args.small_size, args.size):
        for tls, polls in variants:
            name = f"mail-{size}-{'tls' if tls else 'plain'}-{polls}"
            with fresh_database(args.db, folder, name) as db:
                row = mailbox_row(
                    tls=tls,
                    size=size,
                    messages=args.messages,
                    n_nodes=args.nodes,
                    idle=polls,
                    clients=args.clients,
                    db=db,
                    folder=folder / name,
                )
            rows[size, tls, polls] = row
            post, pull = row.rate(row.post_s), row.rate(row.pull_s)
            print(
                f"{'on' if tls else 'off':>4} {polls:>10} {size:>10,} {row.envelope:>11,} "
                f"{row.messages:>9,} {post[0]:>11,.0f} {post[1]:>10,.1f} {pull[0]:>11,.0f} "
                f"{pull[1]:>10,.1f} {row.pulls:>6,} {row.post_s:>7.2f} {row.pull_s:>7.2f} "
                f"{os.getloadavg()[0]:>5.1f}",
                flush=True,
            )
    for size in (args.small_size, args.size):
        on, off = rows[size, True, 0], rows[size, False, 0]
        print(
            f"TLS on / off at {size:,} B: {off.post_s / on.post_s:.2f}x the post "
            f"throughput, {off.pull_s / on.pull_s:.2f}x the pull throughput"
        )
        if args.idle_polls:
            busy = rows[size, True, idle]
            print(
                f"{idle} idle long polls / none at {size:,} B, TLS on: "
                f"{on.post_s / busy.post_s:.2f}x the post throughput"
            )


# -- 2. rounds of a deployment ---------------------------------------------------------


def rounds_config(secure: bool, *, audit: bool = True) -> Any:
    from tessera.config import load_config

    cfg = load_config(EXAMPLES / "chem97.toml")
    return cfg.model_copy(
        update={
            "federation": cfg.federation.model_copy(
                update={"rounds": 2, "fraction": 1.0, "min_participants": 1, "round_timeout": 60.0}
            ),
            "secure": cfg.secure.model_copy(
                update={"enabled": secure, "phase_timeout": 5.0, "audit": audit}
            ),
            "baseline": cfg.baseline.model_copy(update={"enabled": False}),
        }
    )


def _proc_children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = defaultdict(list)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        kids[ppid].append(int(entry.name))
    return kids


def _proc_field(path: str, name: bytes) -> int:
    """A ``Name:  <n> kB`` field of a /proc file, in bytes (0 when gone or unreadable)."""
    try:
        with open(path, "rb") as f:
            for line in f:
                if line.startswith(name):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _tree(kids: dict[int, list[int]], root: int) -> list[int]:
    out, todo = [], list(kids.get(root, ()))
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, ()))
    return out


@dataclass
class MemorySampler:
    """Samples this process's descendants every ``period`` s in a thread; see the module doc."""

    min_free: float  # bytes of MemAvailable below which ``tripped`` is set
    period: float = 0.5
    pss_every: int = 4
    peak_rss: int = 0
    peak_pss: int = 0
    peak_node_rss: int = 0
    nodes_at_peak: int = 0
    peak_node_pss: int = 0
    nodes_at_pss_peak: int = 0
    available_start: int = 0
    available_min: int = 0
    load: list[float] = field(default_factory=list)  # 1-minute load average, each sample
    tripped: threading.Event = field(default_factory=threading.Event)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _kinds: dict[int, str] = field(default_factory=dict)

    def __enter__(self) -> MemorySampler:
        self.available_start = self.available_min = _proc_field("/proc/meminfo", b"MemAvailable:")
        self._thread = threading.Thread(target=self._loop, name="memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def per_node(self) -> float:
        return self.peak_node_rss / self.nodes_at_peak if self.nodes_at_peak else math.nan

    def _kind(self, pid: int) -> str:
        if pid not in self._kinds:
            self._kinds[pid] = "node" if "tessera.cli node" in _cmdline(pid) else "other"
        return self._kinds[pid]

    def per_node_pss(self) -> float:
        return self.peak_node_pss / self.nodes_at_pss_peak if self.nodes_at_pss_peak else math.nan

    def _sample_pss(self, kids: dict[int, list[int]], me: int) -> None:
        pss = nodes_pss = nodes = 0
        for child in kids.get(me, ()):
            tree = [child, *_tree(kids, child)]
            size = sum(_proc_field(f"/proc/{p}/smaps_rollup", b"Pss:") for p in tree)
            pss += size
            if self._kind(child) == "node":
                nodes_pss += size
                nodes += 1
        if pss > self.peak_pss:
            self.peak_pss, self.peak_node_pss, self.nodes_at_pss_peak = pss, nodes_pss, nodes

    def _loop(self) -> None:
        me, tick = os.getpid(), 0
        while not self._stop.wait(self.period):
            kids = _proc_children()
            rss = nodes_rss = nodes = 0
            for child in kids.get(me, ()):
                tree = [child, *_tree(kids, child)]
                size = sum(_proc_field(f"/proc/{p}/status", b"VmRSS:") for p in tree)
                rss += size
                if self._kind(child) == "node":
                    nodes_rss += size
                    nodes += 1
            if rss > self.peak_rss:
                self.peak_rss, self.peak_node_rss, self.nodes_at_peak = rss, nodes_rss, nodes
            if tick % self.pss_every == 0:
                self._sample_pss(kids, me)
            tick += 1
            self.load.append(os.getloadavg()[0])
            available = _proc_field("/proc/meminfo", b"MemAvailable:")
            self.available_min = min(self.available_min, available)
            if available < self.min_free:
                self.tripped.set()


@dataclass
class RoundsRow:
    mode: str
    nodes: int
    prepare_s: float = math.nan
    services_s: float = math.nan
    startup_s: float = math.nan
    round_s: list[float] = field(default_factory=list)
    participants: list[int] = field(default_factory=list)
    peak_rss: int = 0
    peak_pss: int = 0
    per_node: float = math.nan
    per_node_pss: float = math.nan
    total_s: float = math.nan
    error: str | None = None
    out_of_memory: bool = False
    load: float = math.nan
    tracebacks: int = 0
    available_start: int = 0
    available_min: int = 0


class NodeStarter:
    """Replaces ``dep.start_node``: at most ``concurrency`` nodes starting at once (0: all).

    A node has started once it wrote its consent receipt (after its sandbox
    answered and it registered). A node agent gives up when its sandbox does not
    answer within 60 s (``SandboxLimits.start_timeout``), which N sandboxes
    importing torch at once on a few cores can exceed.
    """

    def __init__(self, dep: Any, concurrency: int) -> None:
        self.dep = dep
        self.concurrency = concurrency
        self.first: float | None = None  # when the first node process was started
        self.stopped = threading.Event()
        self._start = dep.start_node
        dep.start_node = self

    def __call__(self, i: int, job_id: str) -> Any:
        if self.first is None:
            self.first = time.time()
        while self.concurrency > 0 and self._starting(i, job_id) >= self.concurrency:
            if self.stopped.wait(0.1):
                break
        if self.stopped.is_set():
            raise RuntimeError("the run was stopped")
        return self._start(i, job_id)

    def _starting(self, i: int, job_id: str) -> int:
        count = 0
        for k in range(i):
            proc = self.dep.processes.get(self.dep.node_id(k))
            receipt = self.dep.out / "nodes" / f"{k:06d}" / "receipts" / f"{job_id}.json"
            count += proc is not None and proc.alive() and not receipt.exists()
        return count

    def failure(self) -> str | None:
        """Why a node process ended with an error, if one did."""
        for proc in list(self.dep.processes.values()):
            if proc.name.startswith("node-") and proc.popen.poll() not in (None, 0):
                last = proc.tail(1).strip() or "no output"
                return f"{proc.name} exited with {proc.popen.returncode}: {last}"
        return None


def watch_run(
    dep: Any, starter: NodeStarter, memory: MemorySampler, timeout: float
) -> dict[str, Any]:
    """``run_job`` in a thread, stopped early on a node's error or short memory."""
    from tessera.deploy.up import run_job

    got: dict[str, Any] = {"services": time.time()}

    def target() -> None:
        try:
            got["result"] = run_job(dep, timeout=timeout)
        except BaseException:
            got["error"] = traceback.format_exc()

    worker = threading.Thread(target=target, name="run_job", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.5)
            if memory.tripped.is_set():
                got["out_of_memory"] = True
                break
            failure = starter.failure()
            if failure is not None:
                got["error"] = f"stopped: {failure}"
                break
    finally:
        starter.stopped.set()
        dep.close()  # when stopped early, the watcher then fails on its own
        worker.join(30)
        dep.close()  # anything it started meanwhile
    return got


def run_deployment(
    secure: bool,
    n_nodes: int,
    db_server: str | None,
    folder: Path,
    args: argparse.Namespace,
    *,
    audit: bool = True,
) -> RoundsRow:
    from tessera.deploy.local import Deployment
    from tessera.storage import Store

    mode = ("secure" if audit else "no-audit") if secure else "plaintext"
    row = RoundsRow(mode, n_nodes)
    out = folder / f"up-{mode}-{n_nodes}"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.monotonic()
    with (
        fresh_database(db_server, folder, f"up-{mode}-{n_nodes}") as db,
        MemorySampler(min_free=args.min_free_gb * GIB) as memory,
    ):
        dep = Deployment(rounds_config(secure, audit=audit), n_nodes, out, tls=True, db_url=db)
        row.prepare_s = time.monotonic() - t0
        starter = NodeStarter(dep, args.start_concurrency)
        got = watch_run(dep, starter, memory, args.run_timeout)
        row.total_s = time.monotonic() - t0
        row.peak_rss, row.peak_pss = memory.peak_rss, memory.peak_pss
        row.per_node, row.per_node_pss = memory.per_node(), memory.per_node_pss()
        row.load = statistics.fmean(memory.load) if memory.load else math.nan
        row.available_start, row.available_min = memory.available_start, memory.available_min
        row.tracebacks = sum(
            p.log.read_text(errors="replace").count("Traceback") for p in dep.processes.values()
        )
        if got.get("out_of_memory"):
            row.out_of_memory = True
            row.error = f"stopped: MemAvailable fell below {args.min_free_gb} GiB"
            return row
        result = got.get("result")
        if result is None or "error" in got:
            row.error = str(got.get("error", "run_job did not return")).strip()
            return row
        with Store(str(dep.db_url)) as store:
            job = store.get_job(result.job_id)
            closed = [r.closed_at for r in store.rounds(result.job_id)]
        assert job.started_at is not None
        assert starter.first is not None
        row.services_s = starter.first - got["services"]
        row.startup_s = job.started_at - starter.first
        row.round_s = [b - a for a, b in zip([job.started_at, *closed], closed, strict=False)]
        row.participants = [r.participants for r in result.rounds]
    return row


def fitting_nodes(row: RoundsRow, margin: float) -> int:
    """The most nodes the memory the stopped run measured leaves room for."""
    used = (row.available_start - row.available_min) / max(1, row.nodes)
    per_node = max(used, row.per_node_pss if math.isfinite(row.per_node_pss) else 0.0, 1.0)
    return max(2, int((row.available_start - margin) / per_node))


def print_rounds(rows: list[RoundsRow]) -> None:
    head = (
        f"{'mode':>10} {'nodes':>6} {'prepare s':>10} {'services s':>11} {'start-up s':>11} "
        f"{'round 0 s':>10} {'round 1 s':>10} {'particip.':>10} {'peak RSS GiB':>13} "
        f"{'peak PSS GiB':>13} {'RSS MB/node':>12} {'PSS MB/node':>12} {'total s':>8} {'load':>5}"
    )
    print(head)
    for r in rows:
        rounds = [*r.round_s, math.nan, math.nan][:2]
        parts = "/".join(str(p) for p in r.participants) or "-"
        print(
            f"{r.mode:>10} {r.nodes:>6} {r.prepare_s:>10.1f} {r.services_s:>11.1f} "
            f"{r.startup_s:>11.1f} {rounds[0]:>10.2f} {rounds[1]:>10.2f} {parts:>10} "
            f"{r.peak_rss / GIB:>13.2f} {r.peak_pss / GIB:>13.2f} {r.per_node / MB:>12.0f} "
            f"{r.per_node_pss / MB:>12.0f} {r.total_s:>8.0f} {r.load:>5.1f}",
            flush=True,
        )
        if r.tracebacks:
            print(f"{'':>10} {r.tracebacks} Traceback(s) in the processes' logs")
        if r.error:
            print(f"{'':>10} {r.error.splitlines()[-1]}")


def section_rounds(args: argparse.Namespace, folder: Path) -> None:
    print(
        f"\n2. Rounds of a deployment: Chem97 schools, N node processes (+ sandboxes), "
        f"coordinator and provider, TLS, {backend_name(args.db)}, nodes started "
        f"{args.start_concurrency or 'all'} at a time; "
        f"{os.cpu_count()} cores, {_proc_field('/proc/meminfo', b'MemTotal:') / GIB:.1f} GiB"
    )
    n = args.nodes
    rows: list[RoundsRow] = []
    for attempt in range(2):
        secure = run_deployment(True, n, args.db, folder, args)
        rows.append(secure)
        plain = secure
        if not secure.out_of_memory:
            plain = run_deployment(False, n, args.db, folder, args)
            rows.append(plain)
        short = secure if secure.out_of_memory else plain
        if not short.out_of_memory or attempt == 1:
            break
        n = min(n - 1, fitting_nodes(short, args.min_free_gb * GIB + GIB))
        print(
            f"{short.mode} with {short.nodes} nodes ran short of memory: node + sandbox RSS "
            f"{short.per_node / MB:.0f} MB (PSS {short.per_node_pss / MB:.0f} MB) each, "
            f"MemAvailable {short.available_start / GIB:.1f} -> "
            f"{short.available_min / GIB:.1f} GiB; running {n} nodes instead",
            flush=True,
        )
    bare = None
    if args.audit_row and not secure.out_of_memory and secure is not plain:
        bare = run_deployment(True, n, args.db, folder, args, audit=False)
        rows.append(bare)
    print_rounds(rows)
    if len(secure.round_s) == 2 and len(plain.round_s) == 2 and secure is not plain:
        ratio = [s / p for s, p in zip(secure.round_s, plain.round_s, strict=True)]
        print(
            f"secure / plaintext at N = {n}: round 0 {ratio[0]:.2f}x, "
            f"round 1 (steady state) {ratio[1]:.2f}x (target <= 1.5); start-up "
            f"{secure.startup_s / plain.startup_s:.2f}x"
        )
    if bare is not None and len(bare.round_s) == 2 and len(secure.round_s) == 2:
        print(
            f"audited / unaudited secure round at N = {n}: round 1 (steady state) "
            f"{secure.round_s[1] / bare.round_s[1]:.2f}x (target <= 1.2)"
        )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="N = 20, 400 envelopes a row")
    ap.add_argument("--nodes", type=int, help="participants and node processes (50; quick 20)")
    ap.add_argument("--messages", type=int, help="envelopes per mailbox row (2,000; quick 400)")
    ap.add_argument("--size", type=int, default=375_000, help="model-size payload, bytes")
    ap.add_argument("--small-size", type=int, default=1_000, help="small payload, bytes")
    ap.add_argument("--clients", type=int, default=4, help="sender and receiver processes")
    ap.add_argument("--db", help="a PostgreSQL server URL (a database is made and dropped)")
    ap.add_argument("--min-free-gb", type=float, default=1.0, help="memory guard of section 2")
    ap.add_argument(
        "--start-concurrency",
        type=int,
        default=8,
        help="section 2: nodes starting at once (0: all at once, as run_job does)",
    )
    ap.add_argument("--run-timeout", type=float, default=1800.0, help="seconds per deployment")
    ap.add_argument(
        "--no-idle-polls",
        dest="idle_polls",
        action="store_false",
        help="leave out the rows posting while half the nodes long-poll",
    )
    ap.add_argument(
        "--out", type=Path, help="keep the deployments' folders (logs) here, not in a temp dir"
    )
    ap.add_argument(
        "--no-audit-row",
        dest="audit_row",
        action="store_false",
        help="leave out the secure deployment without audits (section 2)",
    )
    ap.add_argument("--skip-mailbox", action="store_true")
    ap.add_argument("--skip-rounds", action="store_true")
    args = ap.parse_args()
    args.nodes = args.nodes or (20 if args.quick else 50)
    args.messages = args.messages or (400 if args.quick else 2000)
    if args.nodes < 2:
        ap.error("--nodes must be at least 2")
    t0 = time.monotonic()
    load = os.getloadavg()
    print(
        f"tessera deployment benchmark: python {sys.version.split()[0]}, {os.cpu_count()} cores, "
        f"load average {load[0]:.1f} at the start"
    )
    with contextlib.ExitStack() as stack:
        if args.out is None:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tessera-")))
        else:
            folder = args.out
            folder.mkdir(parents=True, exist_ok=True)
        if not args.skip_mailbox:
            section_mailbox(args, folder)
        if not args.skip_rounds:
            section_rounds(args, folder)
    print(
        f"\nbenchmark wall time {time.monotonic() - t0:.0f} s, "
        f"load average {os.getloadavg()[0]:.1f} at the end"
    )


if __name__ == "__main__":
    main()
