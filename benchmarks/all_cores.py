"""One ``tessera run`` on every core: the per-student Chem97 job, secure, per backend.

    .venv/bin/python benchmarks/all_cores.py            # 27,911 nodes, 2 rounds each
    .venv/bin/python benchmarks/all_cores.py --quick    # the first 3,000 nodes
    .venv/bin/python benchmarks/all_cores.py --backends inprocess,processes:2 --rounds 3

The job is benchmarks/chem97_per_student.toml (one node per student, 27,911
after the holdout, everyone selected, 10% dropout) with ``[secure]`` on; its
encoding's statistics are totalled in the clear (``totals_for(secure=False)``:
that one-off statistics round is not what is measured here). Each backend
(``NAME`` or ``NAME:WORKERS``: inprocess, processes:1, processes:2, ray:1,
ray:2) runs in a fresh process, and so does the same job in plaintext,
in-process, measured in the same run. Per backend:

- ``s/round``: wall seconds per round (``RoundRecord.seconds``), median of the
  rounds after the first (the first also starts the workers; with one round,
  that one);
- ``x target``: s/round over the 20 s target; ``x plain``: over the plaintext
  round of this run;
- ``main cpu``: this process's CPU seconds per round (same rounds): what a
  core of its own would take, whatever the other processes on the machine do;
- ``workers cpu``: the worker processes' CPU seconds per round (all rounds,
  worker start included; processes backend only: Ray's workers are the
  raylet's children). On an idle machine of C cores a round takes at least
  max(main cpu, (main cpu + workers cpu) / C);
- ``peak MB``: the main process's peak resident memory during the rounds
  (VmHWM, reset after preparing the job; ``prep MB``: the peak before, while
  preparing); ``tree MB``: the peak of the summed resident memory of the main
  process and every process below it (workers; a local Ray instance's
  raylet, GCS and workers), sampled every 0.2 s during the rounds: an upper
  bound, since shared pages count once per process.

Timings on a shared machine move with its load: compare ``main cpu`` across
backends, and rerun the wall figures on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

TARGET_S = 20.0
JOB = Path(__file__).with_name("chem97_per_student.toml")


def _hwm_mb() -> float:
    """This process's peak resident memory since the last reset (VmHWM), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: reset VmHWM to the current RSS
    except OSError:
        return False
    return True


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = list(Path(f"/proc/{parent}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


class TreeSampler(threading.Thread):
    """The peak summed RSS of this process and its descendants, sampled."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_kb = 0
        self.stop = threading.Event()

    def run(self) -> None:
        me = os.getpid()
        while not self.stop.wait(0.2):
            total = sum(_rss_kb(p) for p in [me, *_descendants(me)])
            self.peak_kb = max(self.peak_kb, total)


def one(backend_spec: str, nodes: int | None, rounds: int, secure: bool) -> dict[str, Any]:
    """Prepare the job and simulate it with one backend, in this (fresh) process."""
    import torch

    torch.set_num_threads(1)
    from tessera.config import load_config
    from tessera.jobs.prepared import prepare_job
    from tessera.runtime.sim.backends import make_backend
    from tessera.runtime.sim.job import simulate
    from tessera.runtime.sim.statistics import totals_for

    cfg = load_config(JOB)
    cfg = cfg.model_copy(
        update={
            "federation": cfg.federation.model_copy(update={"rounds": rounds}),
            "secure": cfg.secure.model_copy(update={"enabled": secure}),
        }
    )
    job = prepare_job(cfg, totals_of=totals_for(cfg, secure=False))
    if nodes is not None:
        job = job.first_nodes(nodes)
    name, _, workers = backend_spec.partition(":")
    backend = make_backend(name, workers=int(workers) if workers else None)
    prep_mb = _hwm_mb()
    reset = _reset_hwm()
    cpu: list[float] = []
    mark = [time.process_time()]

    def on_round(*_: object) -> None:
        now = time.process_time()
        cpu.append(now - mark[0])
        mark[0] = now

    sampler = TreeSampler()
    sampler.start()
    result = simulate(job, secure=secure, backend=backend, on_round=on_round)
    sampler.stop.set()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # the pool, joined at the end
    seconds = [r.seconds for r in result.rounds]
    counted = slice(1, None) if len(seconds) > 1 else slice(None)
    return {
        "backend": backend_spec if secure else "plaintext",
        "nodes": job.n_nodes,
        "participants": [r.participants for r in result.rounds],
        "seconds": seconds,
        "s_per_round": statistics.median(seconds[counted]),
        "main_cpu_per_round": statistics.median(cpu[counted]),
        "peak_mb": _hwm_mb() if reset else float("nan"),
        "prep_mb": prep_mb,
        "tree_mb": max(sampler.peak_kb / 1024, _hwm_mb()),
        "workers_cpu_per_round": (children.ru_utime + children.ru_stime) / len(seconds)
        if name == "processes"
        else float("nan"),
        "weights": result.weights.tobytes().hex()[:16],
    }


def spawn(spec: str, args: argparse.Namespace, *, secure: bool = True) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--one", spec, "--rounds", str(args.rounds)]
    if args.nodes is not None:
        cmd += ["--nodes", str(args.nodes)]
    if not secure:
        cmd.append("--plaintext")
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the first 3,000 nodes")
    ap.add_argument("--nodes", type=int, default=None, help="the first N nodes")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument(
        "--backends", default="inprocess,processes:1,processes:2,ray:1,ray:2", help="NAME[:N],..."
    )
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--plaintext", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick and args.nodes is None:
        args.nodes = 3_000
    if args.one:
        print(json.dumps(one(args.one, args.nodes, args.rounds, not args.plaintext)))
        return
    plain = spawn("inprocess", args, secure=False)
    print(
        f"{plain['nodes']:,} nodes, {args.rounds} rounds per backend; plaintext round "
        f"{plain['s_per_round']:.2f} s ({plain['main_cpu_per_round']:.2f} s CPU), "
        f"peak {plain['peak_mb']:.0f} MB (preparing: {plain['prep_mb']:.0f} MB); "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    head = (
        f"{'backend':>12} {'s/round':>8} {'x target':>9} {'x plain':>8} {'main cpu':>9} "
        f"{'workers cpu':>11} "
        f"{'peak MB':>8} {'prep MB':>8} {'tree MB':>8} {'load':>5}"
    )
    print(head)
    weights = set()
    for spec in args.backends.split(","):
        try:
            r = spawn(spec, args)
        except subprocess.CalledProcessError as exc:
            tail = exc.stderr.strip().splitlines()[-1:] if exc.stderr else []
            print(f"{spec:>12} failed: {' '.join(tail)}")
            continue
        weights.add(r["weights"])
        print(
            f"{spec:>12} {r['s_per_round']:>8.2f} {r['s_per_round'] / TARGET_S:>9.2f} "
            f"{r['s_per_round'] / plain['s_per_round']:>8.1f} {r['main_cpu_per_round']:>9.2f} "
            f"{r['workers_cpu_per_round']:>11.2f} "
            f"{r['peak_mb']:>8.0f} {r['prep_mb']:>8.0f} {r['tree_mb']:>8.0f} "
            f"{os.getloadavg()[0]:>5.1f}",
            flush=True,
        )
    same = "the same final weights" if len(weights) == 1 else "DIFFERENT final weights"
    print(f"every backend: {same}; target: <= {TARGET_S:g} s/round and <= 1,000 MB peak")


if __name__ == "__main__":
    main()
