"""One coordinator under load: many long-polling nodes, several jobs, a stream of requests.

    .venv/bin/python benchmarks/coordinator_load.py                  # 1,000 polls, 3 jobs
    .venv/bin/python benchmarks/coordinator_load.py --nodes 2000 --jobs 5
    .venv/bin/python benchmarks/coordinator_load.py --write-readme

A coordinator process (``tessera coordinator``, plain HTTP on loopback, a
fresh SQLite store) holds ``--jobs`` plaintext jobs that never time out,
each with its share of ``--nodes`` registered, consenting nodes. Then:

1. Floor: ``--probes`` closed-loop clients send signed requests for
   ``--seconds`` (a job's status as its AI provider, a node's own
   registration, the health check, in turn) with no poll held: requests per
   second and latency percentiles of an idle coordinator.
2. Hold: ``--pollers`` client processes (asyncio, httpx) open one long
   poll per node (``GET /v1/mail``, signed, 20 s) and keep re-polling as
   real nodes do. Once every node's poll is held, the coordinator's
   resident memory and its CPU over ``--seconds`` of holding are read from
   /proc: memory per connection is the growth over the floor's divided by
   the held polls; CPU per connection is its CPU seconds per minute.
3. Loaded: the same probes again, while the polls are held. Each figure is
   printed as a ratio to the floor's.

Beyond what it can hold, the coordinator must push back, not collapse: the
pollers count refusals (503 with Retry-After, back-pressure) and failures
(timeouts, resets) separately. The client processes share the machine's
cores with the coordinator; the load average is printed with the rows.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks' own helpers
from deployment import mailbox_config, provider_keys, tiny_preprocessing

ROOT = Path(__file__).resolve().parents[1]
README_BEGIN, README_END = "<!-- load:begin -->", "<!-- load:end -->"
POLL_WAIT = 20.0
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


def node_name(i: int) -> str:
    return f"load-{i:05d}"


def node_keys(i: int) -> Any:
    from tessera.crypto.keys import NodeKeys

    return NodeKeys.from_seed(f"tessera-bench-load-{i}".encode())


def ai_keys() -> Any:
    from tessera.crypto.keys import NodeKeys

    return NodeKeys.from_seed(b"tessera-bench-load-ai-provider")


# -- the coordinator's process ---------------------------------------------------------------


def start_coordinator(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    ready = folder / "coordinator.url"
    log = (folder / "coordinator.log").open("wb")
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("tessera")),
            "coordinator",
            "--db",
            f"sqlite:///{folder / 'coordinator.db'}",
            "--keys",
            str(folder / "coordinator.key"),
            "--mail-dir",
            str(folder / "mail"),
            "--audit-dir",  # (the default is the working directory's coordinator-audit)
            str(folder / "audit"),
            "--port",
            "0",
            "--ready-file",
            str(ready),
            "--quiet",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "TESSERA_THREADS": "1"},
    )
    end = time.monotonic() + 60
    while not ready.exists() or not ready.read_text().strip():
        if proc.poll() is not None or time.monotonic() > end:
            raise RuntimeError((folder / "coordinator.log").read_text()[-2000:])
        time.sleep(0.1)
    return proc, ready.read_text().strip()


@dataclass
class Usage:
    rss_bytes: int
    cpu_seconds: float


def usage(pid: int) -> Usage:
    with open(f"/proc/{pid}/statm") as f:
        rss = int(f.read().split()[1]) * PAGE
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return Usage(rss, (int(fields[11]) + int(fields[12])) / TICKS)


# -- the federation it serves ----------------------------------------------------------------


def set_up(url: str, n_nodes: int, n_jobs: int) -> list[str]:
    """Register the nodes, submit the jobs, consent each node to one job: all running."""
    from tessera.ai_provider.client import build_job, submit
    from tessera.consent import ATTESTATION_KIND, ConsentTerms, grant_consent
    from tessera.coordinator.service import REGISTRATION_KIND
    from tessera.crypto.documents import sign_document
    from tessera.jobs.document import JobSpec
    from tessera.runtime.transport.client import CoordinatorClient

    client = CoordinatorClient(url, keys=ai_keys())
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
    jobs: list[str] = []
    for j in range(n_jobs):
        members = range(j, n_nodes, n_jobs)
        doc, weights = build_job(
            cfg,
            ai_keys(),
            provider=provider_keys().public.fingerprint,
            dataset="records",
            user_field="school",
            preprocessing=tiny_preprocessing(cfg),
            min_consents=len(members),
            purpose=f"load the coordinator (job {j})",
        )
        job_id: str = submit(client, doc, weights)["job_id"]
        spec, now = JobSpec.from_document(doc), time.time()
        for i in members:
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
                "commitment": "0" * 64,
                "issued_at": now,
            }
            attestation = sign_document(provider_keys(), ATTESTATION_KIND, vouched)
            client.consent(job_id, receipt, attestation)
        jobs.append(job_id)
    end = time.monotonic() + 60
    while any(client.status(j)["state"] != "running" for j in jobs):
        if time.monotonic() > end:
            raise RuntimeError("the jobs did not start")
        time.sleep(0.1)
    client.close()
    return jobs


# -- long polls --------------------------------------------------------------------------------


def poller(url: str, nodes: list[int], held: Any, counts: Any, stop: Any) -> None:
    """One process: a long poll per node, re-polled as a node does, until ``stop``."""
    asyncio.run(_poll_all(url, nodes, held, counts, stop))


async def _poll_all(url: str, nodes: list[int], held: Any, counts: Any, stop: Any) -> None:
    import httpx

    from tessera.runtime.transport.auth import sign_request

    limits = httpx.Limits(max_connections=len(nodes) + 8, max_keepalive_connections=len(nodes))
    timeout = httpx.Timeout(POLL_WAIT + 30, connect=60)
    tally = {"ok": 0, "refused": 0, "failed": 0}

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as http:

        async def one(i: int) -> None:
            keys, name, after, first, announced = node_keys(i), node_name(i), 0, True, False
            while not stop.is_set():
                path = f"/v1/mail?after={after}&wait={0 if first else POLL_WAIT}"
                headers = sign_request(keys, "GET", path, at=time.time(), node=name)
                try:
                    request = http.build_request("GET", path, headers=headers)
                    sent = http.send(request)
                    if not first and not announced:  # the held poll is on its way
                        announced = True
                        asyncio.get_running_loop().call_later(1.0, held.put, i)
                    response = await sent
                except httpx.HTTPError:
                    tally["failed"] += 1
                    await asyncio.sleep(1.0)
                    continue
                if response.status_code == 503:
                    tally["refused"] += 1
                    await asyncio.sleep(float(response.headers.get("retry-after", "1")))
                    continue
                if response.status_code != 200:
                    tally["failed"] += 1
                    await asyncio.sleep(1.0)
                    continue
                tally["ok"] += 1
                first = False
                after = max(after, _last_id(response.content))

        tasks = [asyncio.create_task(one(i)) for i in nodes]
        while not stop.is_set():
            await asyncio.sleep(0.2)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    counts.put(tally)


def _last_id(batch: bytes) -> int:
    import msgpack

    items = msgpack.unpackb(batch)
    return int(items[-1][0]) if items else 0


# -- probes ------------------------------------------------------------------------------------


@dataclass
class ProbeRow:
    requests: int
    seconds: float
    latencies: list[float]
    errors: int

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def probe(url: str, job_ids: list[str], clients: int, seconds: float) -> ProbeRow:
    """Closed-loop signed requests from ``clients`` threads for ``seconds``."""
    import httpx

    from tessera.runtime.transport.auth import sign_request

    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def work(c: int) -> None:
        ai = ai_keys()
        node_i = c  # a node reads its own registration
        mine: list[float] = []
        with httpx.Client(base_url=url, timeout=30) as http:
            k = 0
            while time.monotonic() < end:
                choice = k % 3
                if choice == 0:
                    path = f"/v1/jobs/{job_ids[k % len(job_ids)]}"
                    headers = sign_request(ai, "GET", path, at=time.time())
                elif choice == 1:
                    path = f"/v1/nodes/{node_name(node_i)}"
                    headers = sign_request(
                        node_keys(node_i), "GET", path, at=time.time(), node=node_name(node_i)
                    )
                else:
                    path, headers = "/v1/health", {}
                t0 = time.perf_counter()
                try:
                    ok = http.get(path, headers=headers).status_code == 200
                except httpx.HTTPError:
                    ok = False
                mine.append(time.perf_counter() - t0)
                if not ok:
                    with lock:
                        errors[0] += 1
                k += 1
        with lock:
            latencies.extend(mine)

    t0 = time.monotonic()
    threads = [threading.Thread(target=work, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return ProbeRow(len(latencies), time.monotonic() - t0, latencies, errors[0])


# -- the run -----------------------------------------------------------------------------------


def load_average() -> float:
    return os.getloadavg()[0]


@dataclass
class Measured:
    floor: ProbeRow
    loaded: ProbeRow
    base: Usage  # the coordinator idle, its jobs running
    before: Usage  # every poll held
    after: Usage  # ``--seconds`` later
    ramp: float  # seconds until every poll was held
    tallies: list[dict[str, int]]


def measure(args: argparse.Namespace) -> Measured:
    with tempfile.TemporaryDirectory(prefix="tessera-load-") as tmp:
        folder = Path(tmp)
        proc, url = start_coordinator(folder)
        try:
            t0 = time.monotonic()
            jobs = set_up(url, args.nodes, args.jobs)
            print(f"set up {args.nodes} nodes in {args.jobs} jobs: {time.monotonic() - t0:.0f} s")
            floor = probe(url, jobs, args.probes, args.seconds)
            base = usage(proc.pid)

            ctx = mp.get_context("spawn")
            held, counts, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
            shares = [list(range(p, args.nodes, args.pollers)) for p in range(args.pollers)]
            procs = [
                ctx.Process(target=poller, args=(url, share, held, counts, stop))
                for share in shares
            ]
            for p in procs:
                p.start()
            t0 = time.monotonic()
            for _ in range(args.nodes):
                held.get(timeout=300)
            ramp = time.monotonic() - t0
            time.sleep(2.0)
            before = usage(proc.pid)
            time.sleep(args.seconds)
            after = usage(proc.pid)
            loaded = probe(url, jobs, args.probes, args.seconds)
            stop.set()
            tallies = [counts.get(timeout=POLL_WAIT + 60) for _ in procs]
            for p in procs:
                p.join(30)
        finally:
            proc.terminate()
            proc.wait(30)
    return Measured(floor, loaded, base, before, after, ramp, tallies)


def table(args: argparse.Namespace, m: Measured) -> str:
    per_conn_kib = (m.after.rss_bytes - m.base.rss_bytes) / args.nodes / 1024
    cpu_per_min = (m.after.cpu_seconds - m.before.cpu_seconds) / args.seconds * 60 / args.nodes
    refused = sum(t["refused"] for t in m.tallies)
    failed = sum(t["failed"] for t in m.tallies)
    floor, loaded = m.floor, m.loaded
    lines = [
        f"Coordinator under load on this machine ({os.cpu_count()} cores, shared with the "
        f"clients), `{args.command}`:",
        "",
        "| | idle (floor) | holding polls | ratio |",
        "| --- | ---: | ---: | ---: |",
        f"| long polls held | 0 | {args.nodes:,} | |",
        f"| jobs running | {args.jobs} | {args.jobs} | |",
        f"| requests/s ({args.probes} closed-loop clients) | {floor.rate:,.0f} | "
        f"{loaded.rate:,.0f} | {loaded.rate / floor.rate:.2f}x |",
    ]
    for q, name in ((0.5, "p50"), (0.99, "p99")):
        a, b = floor.pct(q) * 1e3, loaded.pct(q) * 1e3
        lines.append(f"| latency {name}, ms | {a:.1f} | {b:.1f} | {b / a:.2f}x |")
    lines += [
        f"| coordinator RSS, MB | {m.base.rss_bytes / 1e6:.0f} | {m.after.rss_bytes / 1e6:.0f} "
        f"| {m.after.rss_bytes / m.base.rss_bytes:.2f}x |",
        "",
        f"- memory per held poll: {per_conn_kib:.1f} KiB; CPU per held poll: "
        f"{cpu_per_min * 1e3:.1f} ms a minute (the coordinator's own, over {args.seconds:.0f} s).",
        f"- every poll held after {m.ramp:.1f} s; refused (503, back-pressure) {refused}, "
        f"failed {failed}; probe errors {floor.errors} idle, {loaded.errors} loaded; "
        f"load average {load_average():.1f}.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=3)
    parser.add_argument("--pollers", type=int, default=4, help="client processes")
    parser.add_argument("--probes", type=int, default=8, help="closed-loop probe clients")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args()
    given = " ".join(a for a in sys.argv[1:] if a != "--write-readme")
    args.command = f".venv/bin/python benchmarks/coordinator_load.py {given}".strip()
    text = table(args, measure(args))
    print(text)
    if args.write_readme:
        from _readme import write_between

        write_between(ROOT / "README.md", README_BEGIN, README_END, text)


if __name__ == "__main__":
    main()
