"""``tessera up`` with a 10M-parameter model between 10 nodes: round time and peak memory.

    .venv/bin/python benchmarks/large_model_up.py                  # 10 nodes, 2 rounds
    .venv/bin/python benchmarks/large_model_up.py --rounds 1 --nodes 10

Runs ``examples/chem97_large.toml`` (a 10.3M-parameter MLP on Chem97, one node per school,
secure aggregation with audits, a 32-bit ring) through a real local
deployment: ``Deployment`` and ``run_job``, TLS on, a coordinator, a data
provider and N node processes, each node's catalogue raised to the model
(``--max-parameters``). Every 0.25 s it reads each party's resident set
(VmRSS, /proc): the coordinator, the data provider, each node agent and,
apart, each node's sandbox (the child that trains, with torch). It prints
each round's time (from the coordinator's round record: opened to closed)
and each party's peak RSS in bytes and in copies of the model (4 bytes a
parameter: one float32 copy is 41 MB). No targets: every figure is a
measurement on this machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "chem97_large.toml"


def _rss(pid: int) -> int:
    """VmRSS of ``pid`` in bytes (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        here = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{here}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{here}/task/{task}/children") as f:
                    kids = [int(k) for k in f.read().split()]
            except OSError:
                continue
            out.extend(kids)
            todo.extend(kids)
    return out


@dataclass
class Peaks:
    """Each party's peak resident set, sampled in a thread."""

    period: float = 0.25
    peak: dict[str, int] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def sample(self, processes: dict[str, int]) -> None:
        for name, pid in processes.items():
            roles = {name: _rss(pid)}
            if name not in ("coordinator", "provider"):
                roles[f"{name} sandbox"] = sum(_rss(p) for p in _descendants(pid))
            for role, rss in roles.items():
                self.peak[role] = max(self.peak.get(role, 0), rss)

    def run(self, dep: object) -> threading.Thread:
        def loop() -> None:
            while not self.stop.is_set():
                procs = dict(getattr(dep, "processes", {}))
                self.sample({name: p.popen.pid for name, p in procs.items()})
                time.sleep(self.period)

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        return thread


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--out", type=Path, default=None, help="keep the deployment here")
    args = parser.parse_args()

    from tessera.config import load_config
    from tessera.deploy.local import Deployment
    from tessera.deploy.up import run_job
    from tessera.training.spec import parameter_count

    cfg = load_config(CONFIG)
    federation = cfg.federation.model_copy(update={"rounds": args.rounds})
    cfg = cfg.model_copy(update={"federation": federation})
    with tempfile.TemporaryDirectory(prefix="tessera-large-") as tmp:
        out = args.out or Path(tmp)
        t0 = time.monotonic()
        dep = Deployment(cfg, args.nodes, out, tls=True, node_max_parameters=11_000_000)
        n_params = parameter_count(dep.job.spec)
        copy = 4 * n_params
        print(f"model: {n_params:,} parameters, one float32 copy {copy / 1e6:.1f} MB")
        peaks = Peaks()
        sampler = peaks.run(dep)
        try:
            result = run_job(dep, timeout=args.timeout, start_timeout=1200.0)
        finally:
            peaks.stop.set()
            sampler.join(5)
            dep.close()
        total = time.monotonic() - t0
    print(f"{args.nodes} nodes, {len(result.rounds)} rounds, {total:.0f} s in all")
    print(f"{'round':>5} {'seconds':>8} {'participants':>12} {'accuracy':>9}")
    for rec in result.rounds:
        print(f"{rec.round:>5} {rec.seconds:>8.1f} {rec.participants:>12} {rec.value:>9.3f}")
    nodes = [k for k in peaks.peak if k not in ("coordinator", "provider") and "sandbox" not in k]
    sandboxes = [k for k in peaks.peak if "sandbox" in k]
    rows = [
        ("coordinator", peaks.peak.get("coordinator", 0)),
        ("data provider", peaks.peak.get("provider", 0)),
        ("node agent (largest)", max((peaks.peak[k] for k in nodes), default=0)),
        ("node agent (median)", sorted(peaks.peak[k] for k in nodes)[len(nodes) // 2]),
        ("node sandbox (largest)", max((peaks.peak[k] for k in sandboxes), default=0)),
    ]
    print(f"{'party':<24} {'peak RSS MB':>12} {'model copies':>13}")
    for name, rss in rows:
        print(f"{name:<24} {rss / 1e6:>12.0f} {rss / copy:>13.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
