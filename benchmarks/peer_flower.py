"""Tessera against Flower (SecAgg+ and plain FedAvg) on the same task, side by side.

    make peer                                        # once: .venv-peer with Flower
    .venv/bin/python benchmarks/peer_flower.py       # N = 100, 500; 5 rounds each
    .venv/bin/python benchmarks/peer_flower.py --quick              # N = 20, 4 rounds
    .venv/bin/python benchmarks/peer_flower.py --nodes 100 --rounds 4 --json out.json

The task is Tessera's Chem97 example (``tessera/examples/chem97.toml``: A-level
grades, one node per school, schools of the AI provider's holdout left out;
MLP hidden [16], SGD lr 0.1, 2 local epochs of batch 16, updates clipped to
L2 norm 5, FedAvg weighted by records), prepared by Tessera's own
``prepare_job``, with the first N nodes kept, every one of them selected in
every round (fraction 1, ``min_participants`` N), no dropout, ``--rounds``
rounds. For each N, four runs, each in a fresh process:

* Tessera secure and Tessera plaintext: the simulator
  (``tessera.runtime.sim.job.simulate``) in one process with one torch, BLAS and
  OpenMP thread: ONE core. Secure is Tessera's default protocol for the job
  (k = 3 aggregators per leaf group of 16, fan-in 8, audits on, organisations by
  local education authority). Seconds per round are ``RoundRecord.seconds``.
* Flower SecAgg+ and Flower plain FedAvg: ``benchmarks/peer/flower_side.py`` in
  ``.venv-peer`` (Flower's pins conflict with Tessera's), reading the export
  this script writes (the nodes' encoded records, the initial weights as
  safetensors, the spec and recipe), building the same MLP in torch and running
  ``flwr.simulation.run_simulation``: Ray on loopback with ``num_cpus`` 2 and
  one CPU per ClientApp actor (two actors in parallel, one torch thread each),
  the ServerApp in the driver process: TWO cores. SecAgg+ is
  ``SecAggPlusWorkflow(num_shares=3, reconstruction_threshold=2)``: 3 is the
  smallest ``num_shares`` it accepts and the value of Flower's own secure
  aggregation example, matching Tessera's k = 3 share holders; other
  parameters at Flower's defaults (``max_weight`` 1000 > any school's records).
  Seconds per round: the strategy's ``configure_fit`` to its ``aggregate_fit``.

Steady state is the median of rounds 2.. (round 1 is shown apart: Flower's
actors load torch and the ClientApp there); start-up (Tessera: preparing the
job, keys and machines; Flower: Ray, the actor pool, the ServerApp) is reported
separately and counted in neither. Ratios are of figures measured in this run.

Upload per client and round: every byte the N clients send in a round, / N.
Tessera: the ``.nbytes`` of each message a node (not the coordinator) hands the
simulated network (sealed envelopes: their exact bytes; a plaintext update:
header + float32 payload); in a secure round that is the contributor's shares
and, for the nodes drawn as aggregators, their sums, reports and audit evidence.
Flower: the serialized size of every ClientApp reply (``message_to_proto(reply)
.ByteSize()`` in an outermost client mod: the protobuf its gRPC carries, without
framing); in SecAgg+ that is the four stages' replies (public keys, encrypted
key shares, the masked vector, the unmasking shares).

After the tables' inputs, the script prints where each side's round goes:
Flower's round against the CPU of every process of its simulation (from
``/proc``: the driver process with the ServerApp and the simulation engine,
the ClientApp actors, raylet, GCS), each SecAgg+ stage's server wall and driver
CPU, and per client the CPU of training and of each stage (measured in the
client mod); Tessera's secure minus plaintext round per node. A sampling
profile of the Flower driver (not run here: ``pip install py-spy`` into
.venv-peer, then ``py-spy record -f raw`` on ``flower_side.py`` with an export
from ``--export-only``) shows which of its functions that CPU is.

Targets (issue 14): Tessera secure >= 100x faster per round than SecAgg+ at
N = 500; Tessera plaintext >= 100x faster than Flower's plain simulation.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PEER_PYTHON = ROOT / ".venv-peer" / "bin" / "python"
PEER_SIDE = ROOT / "benchmarks" / "peer" / "flower_side.py"
EXAMPLE = "chem97.toml"
SPEED_TARGET = 100.0  # Tessera at least 100x faster per round
TARGET_N = 500  # where the secure target is set
ONE_THREAD_ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


# -- the job: Tessera's own preparation ------------------------------------------------


def job_config(n_nodes: int, rounds: int, hidden: list[int] | None) -> dict[str, Any]:
    """The Chem97 example, everyone of the first N nodes selected, no dropout."""
    from importlib import resources

    raw = tomllib.loads((resources.files("tessera") / "examples" / EXAMPLE).read_text())
    raw["federation"] |= {"rounds": rounds, "fraction": 1.0, "min_participants": n_nodes}
    raw["simulation"] |= {"dropout": 0.0}
    if hidden:
        raw["model"]["hidden"] = hidden
    return raw


def prepare(n_nodes: int, rounds: int, hidden: list[int] | None) -> Any:
    from tessera.config import parse_config
    from tessera.jobs.prepared import prepare_job

    job = prepare_job(parse_config(job_config(n_nodes, rounds, hidden)))
    if n_nodes > job.n_nodes:
        raise SystemExit(f"the Chem97 job has {job.n_nodes} nodes, asked for {n_nodes}")
    return job.first_nodes(n_nodes)


def export(job: Any, folder: Path) -> dict[str, Any]:
    """What the Flower side reads: records, initial weights (safetensors), spec, recipe."""
    from tessera import weights as tw

    folder.mkdir(parents=True, exist_ok=True)
    np.savez(
        folder / "data.npz",
        x=np.ascontiguousarray(job.x, dtype=np.float32),
        y=np.asarray(job.y, dtype=np.int64),
        offsets=np.asarray(job.offsets, dtype=np.int64),
    )
    named = job.layout.unflatten(job.initial_weights)
    tw.save_file(folder / "weights.safetensors", named)
    r = job.recipe
    if r.optimizer != "sgd" or r.prox_mu or r.lr_schedule != "constant" or job.spec.dropout:
        raise SystemExit("the Flower side implements plain SGD without schedule, prox or dropout")
    meta = {
        "spec": json.loads(job.spec.to_json()),
        "names": list(named),
        "recipe": {
            "loss": r.loss,
            "lr": r.lr,
            "momentum": r.momentum,
            "weight_decay": r.weight_decay,
            "local_epochs": r.local_epochs,
            "batch_size": r.batch_size,
            "clip_norm": r.clip_norm,
        },
        "rounds": job.config.federation.rounds,
        "seed": job.config.job.seed,
        "nodes": job.n_nodes,
        "records": len(job.y),
        "parameters": job.layout.size,
    }
    (folder / "job.json").write_text(json.dumps(meta, indent=1))
    return meta


# -- Tessera: one simulated job in a child process ------------------------------------


class SentBytes:
    """Bytes each actor hands the simulated network, by sender: wraps
    ``Simulation.send`` (this process only) and calls the original."""

    def __init__(self) -> None:
        self.by_round: dict[int, int] = {}
        self.coordinator = 0

    @contextlib.contextmanager
    def installed(self) -> Any:
        from tessera.ids import COORDINATOR
        from tessera.runtime.sim.simulator import Simulation

        original = Simulation.send
        meter = self

        def send(sim: Any, sender: Any, effect: Any) -> None:
            size = effect.message.nbytes
            if sender == COORDINATOR:
                meter.coordinator += size
            else:
                r = sim.coordinator.round
                meter.by_round[r] = meter.by_round.get(r, 0) + size
            original(sim, sender, effect)

        Simulation.send = send  # type: ignore[method-assign]
        try:
            yield self
        finally:
            Simulation.send = original  # type: ignore[method-assign]


def run_tessera(n_nodes: int, secure: bool, rounds: int, hidden: list[int] | None) -> dict:
    import torch

    torch.set_num_threads(1)
    from tessera.runtime.sim.job import simulate
    from tessera.training.evaluate import scores

    t0 = time.perf_counter()
    job = prepare(n_nodes, rounds, hidden)
    prepared = time.perf_counter() - t0
    meter = SentBytes()
    t0 = time.perf_counter()
    with meter.installed():
        result = simulate(job, secure=secure)
    total = time.perf_counter() - t0
    per_round = [r.seconds for r in result.rounds]
    acc = scores(job.spec, result.weights, job.x, job.y, job.task).value
    return {
        "side": "tessera",
        "secure": result.secure,
        "nodes": job.n_nodes,
        "parameters": job.layout.size,
        "rounds": per_round,
        "prepare": prepared,
        "startup": total - sum(per_round),
        "participants": [r.participants for r in result.rounds],
        "skipped": [r.skipped for r in result.rounds],
        "bytes_up": [r.bytes_up for r in result.rounds],
        "bytes_aggregation": [r.bytes_aggregation for r in result.rounds],
        "bytes_sent_by_nodes": [meter.by_round.get(r.round, 0) for r in result.rounds],
        "train_loss": [r.train_loss for r in result.rounds],
        "accuracy": acc,
        "error": result.error,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "cores": 1,
    }


def spawn(cmd: list[str], limit_s: float, env: dict[str, str]) -> tuple[str, str, str]:
    """Run ``cmd``; (stdout, stderr, why it failed or '')."""
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, env=env, timeout=limit_s, check=False
        )
    except subprocess.TimeoutExpired:
        return "", "", f"killed after {limit_s:g} s (--max-seconds)"
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-4:])
        return done.stdout, done.stderr, f"failed (exit {done.returncode}): {tail}"
    return done.stdout, done.stderr, ""


def tessera_run(args: argparse.Namespace, n: int, secure: bool) -> dict | str:
    cmd = [sys.executable, __file__, "--tessera-child", str(n), "secure" if secure else "plain"]
    cmd += ["--rounds", str(args.rounds)]
    if args.hidden:
        cmd += ["--hidden", *map(str, args.hidden)]
    out, _, why = spawn(cmd, args.max_seconds, ONE_THREAD_ENV)
    if why:
        return why
    return dict(json.loads(out.strip().splitlines()[-1]))


def flower_run(args: argparse.Namespace, folder: Path, mode: str) -> dict | str:
    if not PEER_PYTHON.exists():
        return f"no {PEER_PYTHON.relative_to(ROOT)}: run `make peer` first"
    out_file = folder / f"flower-{mode}.json"
    cmd = [str(PEER_PYTHON), str(PEER_SIDE), str(folder), "--mode", mode, "--out", str(out_file)]
    cmd += ["--rounds", str(args.rounds), "--cpus", str(args.cpus)]
    cmd += ["--num-shares", str(args.num_shares), "--threshold", str(args.threshold)]
    env = {k: v for k, v in ONE_THREAD_ENV.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    _, err, why = spawn(cmd, args.max_seconds, env)
    if args.verbose:
        print(err[-4000:], file=sys.stderr)
    if why:
        return why
    return dict(json.loads(out_file.read_text()))


# -- figures -------------------------------------------------------------------------


def steady(rounds: list[float]) -> float:
    """Median of the rounds after the first (the first alone if only one ran)."""
    return float(statistics.median(rounds[1:] if len(rounds) > 1 else rounds))


def startup(r: dict) -> float:
    """Start-up: before round 1, plus round 1's excess over a steady round (where Flower
    starts Ray and its actors, and where both sides' first calls warm up)."""
    return float(r["startup"] + max(0.0, r["rounds"][0] - steady(r["rounds"])))


def steady_keys(keys: Any) -> list[str]:
    """Round numbers (strings) after the first, in order (the first alone if only one)."""
    ordered = sorted(keys, key=int)
    return ordered[1:] if len(ordered) > 1 else ordered


def upload_per_client(r: dict) -> float:
    """Bytes the N clients send per round, / N: the median over the steady rounds."""
    if r["side"] == "tessera":
        sent = r["bytes_sent_by_nodes"]
        per_round = sent[1:] if len(sent) > 1 else sent
    else:
        meter = r["meter"]["per_round"]
        per_round = [meter[k]["bytes"] for k in steady_keys(meter)]
    return float(statistics.median(per_round)) / r["nodes"]


def normalize_flower(r: dict) -> dict:
    r["side"] = "flower"
    r["cores"] = r["ray_num_cpus"]
    return r


def fmt_ratio(x: float) -> str:
    return f"{x:,.0f}x" if x >= 10 else f"{x:.1f}x"


def verdict(ratio: float, target: float) -> str:
    return (
        f"MET (>= {target:g}x)"
        if ratio >= target
        else f"MISSED (>= {target:g}x; {ratio / target:.2f} of it)"
    )


def flower_costs(r: dict) -> dict[str, Any]:
    """One Flower run's steady rounds, per round (means): wall, the driver process's CPU,
    and per stage the clients' CPU, bytes and the server's wall."""
    n, meter = r["nodes"], r["meter"]["per_round"]
    keys = steady_keys(meter)
    rounds = r["rounds"][1:] if len(r["rounds"]) > 1 else r["rounds"]
    cpu = r["server_cpu"][1:] if len(r["server_cpu"]) > 1 else r["server_cpu"]
    stages: dict[str, dict[str, float]] = {}
    for k in keys:
        for name, v in meter[k]["stages"].items():
            s = stages.setdefault(name, {"cpu": 0.0, "bytes": 0.0})
            s["cpu"] += v["cpu"] / len(keys)
            s["bytes"] += v["bytes"] / len(keys) / n
    train = sum(meter[k]["train_cpu"] for k in keys) / len(keys)
    last = "collect_masked_vectors" if "collect_masked_vectors" in stages else "fit"
    stages[last]["cpu"] -= train  # the stage that trains: its own cost apart
    server = {name: statistics.mean(v[1:] if len(v) > 1 else v) for name, v in r["stages"].items()}
    server_cpu = {
        name: statistics.mean(v[1:] if len(v) > 1 else v) for name, v in r["stages_cpu"].items()
    }
    return {
        "wall": statistics.mean(rounds),
        "driver_cpu": statistics.mean(cpu),
        "train_cpu": train,
        "client_cpu": train + sum(s["cpu"] for s in stages.values()),
        "stages": stages,
        "server_wall": server,
        "server_cpu": server_cpu,
    }


def breakdown(n: int, r: dict[str, dict | str]) -> list[str]:
    """Where each side's round goes, from the measurements (steady rounds, means)."""
    out = []
    for key, name in (("fs", "SecAgg+"), ("fp", "Flower plain")):
        f = r.get(key)
        if not isinstance(f, dict):
            continue
        c = flower_costs(f)
        ms = 1e3 / n  # seconds summed over the clients -> ms per client
        stages = ", ".join(
            f"{k} {v['cpu'] * ms:.1f} ms / {v['bytes']:,.0f} B" for k, v in c["stages"].items()
        )
        out.append(
            f"N={n} {name}: round {c['wall']:.2f} s wall = clients' CPU {c['client_cpu']:.2f} s "
            f"(on {f['actors']} actors) + driver process CPU {c['driver_cpu']:.2f} s (ServerApp, "
            f"simulation engine, Ray driver) + waiting; per client: training "
            f"{c['train_cpu'] * ms:.1f} ms CPU, then per stage CPU less training / bytes out: "
            f"{stages}"
        )
        trees = f["tree_cpu"][1:] if len(f["tree_cpu"]) > 1 else f["tree_cpu"]
        kinds = sorted({k for t in trees for k in t})
        tree = {k: statistics.mean(t.get(k, 0.0) for t in trees) for k in kinds}
        total = sum(tree.values())
        out.append(
            f"N={n} {name}: CPU per round of every process of the simulation: "
            + ", ".join(f"{k} {v:.2f} s" for k, v in tree.items())
            + f"; total {total:.2f} s over {c['wall']:.2f} s wall on {f['cores']} cores "
            f"({total / (c['wall'] * f['cores']):.0%} busy)"
        )
        if c["server_wall"]:
            walls = ", ".join(
                f"{k} {v:.2f} s wall / {c['server_cpu'][k]:.2f} s driver CPU"
                for k, v in c["server_wall"].items()
            )
            out.append(f"N={n} {name} server stages: {walls}")
    fs, fp = r.get("fs"), r.get("fp")
    if isinstance(fs, dict) and isinstance(fp, dict):
        a, b = flower_costs(fs), flower_costs(fp)
        out.append(
            f"N={n} SecAgg+ over Flower plain: +{a['wall'] - b['wall']:.2f} s wall per round; "
            f"driver process CPU +{a['driver_cpu'] - b['driver_cpu']:.2f} s, clients' CPU "
            f"+{a['client_cpu'] - b['client_cpu']:.2f} s (SecAgg+'s four message rounds "
            "through the simulation engine against one)"
        )
    ts, tp = r.get("ts"), r.get("tp")
    if isinstance(ts, dict) and isinstance(tp, dict):
        sec, plain = steady(ts["rounds"]), steady(tp["rounds"])
        shares = statistics.median(ts["bytes_up"][1:] or ts["bytes_up"]) / n
        sent = upload_per_client(ts)
        out.append(
            f"N={n} Tessera: secure {sec:.3f} s - plaintext {plain:.3f} s = "
            f"{(sec - plain) * 1e3 / n:.2f} ms of protocol work per node (every node's keys, "
            f"shares, sealing, sums and audits, on one core); bytes out per node: contributor "
            f"shares {shares:,.0f} B + aggregator sums, reports and evidence {sent - shares:,.0f} B"
        )
    return out


def report(results: dict[int, dict[str, dict | str]]) -> list[str]:
    lines = []
    head = (
        "| N | Tessera secure s/round | Flower SecAgg+ s/round | ratio | target | "
        "Tessera plaintext s/round | Flower plain s/round | ratio | target |"
    )
    lines += [head, "|" + "---|" * 9]
    notes: list[str] = []
    for n, r in results.items():
        cells = [f"{n:,}"]
        for tk, fk, target in (("ts", "fs", SPEED_TARGET), ("tp", "fp", SPEED_TARGET)):
            t, f = r.get(tk), r.get(fk)
            tt = steady(t["rounds"]) if isinstance(t, dict) else None
            ff = steady(f["rounds"]) if isinstance(f, dict) else None
            cells.append(f"{tt:.3f}" if tt is not None else "-")
            cells.append(f"{ff:.2f}" if ff is not None else "-")
            at = "" if tk == "tp" or n == TARGET_N else f" (set at N={TARGET_N})"
            if tt and ff:
                ratio = ff / tt
                cells += [fmt_ratio(ratio), f">= {target:g}x{at}"]
                if not at:
                    what = "secure vs SecAgg+" if tk == "ts" else "plaintext vs Flower plain"
                    notes.append(f"target N={n} {what}: {verdict(ratio, target)} ({ratio:,.1f}x)")
            else:
                cells += ["-", f">= {target:g}x{at}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "| N | Tessera secure B/client/round | SecAgg+ B/client/round | SecAgg+ / Tessera | "
        "Tessera plaintext B | Flower plain B | Flower / Tessera |",
        "|" + "---|" * 7,
    ]
    for n, r in results.items():
        cells = [f"{n:,}"]
        for tk, fk in (("ts", "fs"), ("tp", "fp")):
            t, f = r.get(tk), r.get(fk)
            tb = upload_per_client(t) if isinstance(t, dict) else None
            fb = upload_per_client(f) if isinstance(f, dict) else None
            cells.append(f"{tb:,.0f}" if tb is not None else "-")
            cells.append(f"{fb:,.0f}" if fb is not None else "-")
            cells.append(f"{fb / tb:.2f}" if tb and fb else "-")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"- {note}" for note in notes]
    return lines


def details(results: dict[int, dict[str, dict | str]]) -> list[str]:
    out = []
    names = {
        "ts": "Tessera secure",
        "tp": "Tessera plaintext",
        "fs": "Flower SecAgg+",
        "fp": "Flower plain",
    }
    for n, r in results.items():
        for key, name in names.items():
            v = r.get(key)
            if not isinstance(v, dict):
                out.append(f"N={n} {name}: {v or 'not run'}")
                continue
            rounds = ", ".join(f"{x:.3f}" for x in v["rounds"])
            loss = v["train_loss"]
            loss_s = (
                ", ".join(f"{x:.3f}" for x in (loss if isinstance(loss, list) else loss.values()))
                or "n/a (SecAgg+ returns no client metrics)"
            )
            extra = ""
            if v["side"] == "tessera":
                if any(p != n for p in v["participants"]) or any(v["skipped"]) or v["error"]:
                    extra = (
                        f"; WARNING participants {v['participants']}, skipped "
                        f"{v['skipped']}, error {v['error']}"
                    )
                extra += f"; peak RSS {v['peak_rss_mb']:.0f} MB"
            else:
                res = v["results"]
                if any(ok != n or bad for ok, bad in res.values()):
                    extra = f"; WARNING results/failures per round {res}"
            out.append(
                f"N={n} {name} ({v['cores']} core{'s' if v['cores'] > 1 else ''}): "
                f"rounds [{rounds}] s; start-up {startup(v):.2f} s; train loss [{loss_s}]; "
                f"accuracy on the nodes' records {v['accuracy']:.3f}{extra}"
            )
    return out


RUNS = {  # key: (side, secure)
    "ts": ("tessera", True),
    "tp": ("tessera", False),
    "fs": ("flower", True),
    "fp": ("flower", False),
}


def run_nodes(args: argparse.Namespace, n: int) -> dict[str, dict | str]:
    """The four runs at one N, sharing one export of the job."""
    job = prepare(n, args.rounds, args.hidden)
    out: dict[str, dict | str] = {}
    with tempfile.TemporaryDirectory(prefix="peer-export-") as tmp:
        meta = export(job, Path(tmp))
        print(
            f"N={n}: {meta['records']:,} records, {meta['parameters']:,} parameters, "
            f"spec {meta['spec']}, recipe {meta['recipe']}",
            flush=True,
        )
        for key, (side, secure) in RUNS.items():
            if args.only not in (None, side):
                continue
            t0 = time.perf_counter()
            if side == "tessera":
                v = tessera_run(args, n, secure)
            else:
                v = flower_run(args, Path(tmp), "secagg" if secure else "plain")
                v = normalize_flower(v) if isinstance(v, dict) else v
            out[key] = v
            status = "ok" if isinstance(v, dict) else v
            print(f"  {key}: {time.perf_counter() - t0:.1f} s, {status}", flush=True)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with ``nodes`` and ``rounds`` resolved (``--quick``: N = 20, 4
    rounds; else N = 100, 500 and 5 rounds, unless given)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--nodes", type=int, nargs="+", default=None, help="N values (100 500)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per run (5; --quick 4)")
    ap.add_argument("--quick", action="store_true", help="smoke run: N = 20, 4 rounds")
    ap.add_argument("--hidden", type=int, nargs="+", default=None, help="MLP widths (example's)")
    ap.add_argument("--num-shares", type=int, default=3, help="SecAgg+ num_shares")
    ap.add_argument("--threshold", type=int, default=2, help="SecAgg+ reconstruction_threshold")
    ap.add_argument("--cpus", type=int, default=2, help="Ray num_cpus (one per ClientApp actor)")
    ap.add_argument("--max-seconds", type=float, default=1800.0, help="per run")
    ap.add_argument("--only", choices=("tessera", "flower"), default=None)
    ap.add_argument("--json", type=Path, default=None, help="write every figure here")
    ap.add_argument("--export-only", type=Path, default=None, help="write the export and stop")
    ap.add_argument("--verbose", action="store_true", help="Flower's log on stderr")
    ap.add_argument("--tessera-child", nargs=2, metavar=("N", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rounds is None:
        args.rounds = 4 if args.quick else 5
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    if args.nodes and min(args.nodes) < 1:
        ap.error("--nodes must be positive")
    args.nodes = args.nodes or ([20] if args.quick else [100, 500])
    return args


def main() -> None:
    from tessera.runtime.allocator import tune_allocator

    tune_allocator()
    args = parse_args()
    if args.tessera_child:
        n, mode = int(args.tessera_child[0]), args.tessera_child[1]
        print(json.dumps(run_tessera(n, mode == "secure", args.rounds, args.hidden)))
        return
    nodes = args.nodes
    if args.export_only:
        meta = export(prepare(max(nodes), args.rounds, args.hidden), args.export_only)
        print(json.dumps(meta))
        return
    print(
        f"== Tessera vs Flower {'(quick) ' if args.quick else ''}on {EXAMPLE}: N = "
        f"{', '.join(map(str, nodes))}, {args.rounds} rounds, every node selected =="
    )
    load = os.getloadavg()
    results = {n: run_nodes(args, n) for n in nodes}
    load_after = os.getloadavg()
    print()
    for line in details(results):
        print(line)
    print()
    for n, r in results.items():
        for line in breakdown(n, r):
            print(line)
    print()
    for line in report(results):
        print(line)
    first = next(
        (
            v
            for r in results.values()
            for v in r.values()
            if isinstance(v, dict) and v.get("side") == "flower"
        ),
        None,
    )
    versions = first["versions"] if first else {}
    print(
        f"\n(Tessera: one process, 1 core; Flower: Ray num_cpus {args.cpus}, 1 CPU per ClientApp "
        f"actor, the ServerApp in the driver; SecAgg+ num_shares {args.num_shares}, "
        f"reconstruction_threshold {args.threshold}; {os.cpu_count()} cores on this machine; "
        f"python {sys.version.split()[0]}; Flower side {versions}; load average (1, 5, 15 min) "
        f"{', '.join(f'{x:.1f}' for x in load)} before, "
        f"{', '.join(f'{x:.1f}' for x in load_after)} after)"
    )
    if args.json:
        args.json.write_text(json.dumps({str(n): r for n, r in results.items()}, indent=1))


if __name__ == "__main__":
    main()
