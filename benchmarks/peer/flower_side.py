"""The Flower side of ``benchmarks/peer_flower.py``: runs in ``.venv-peer``, never in ``.venv``.

    .venv-peer/bin/python benchmarks/peer/flower_side.py EXPORT --mode secagg --out result.json

``EXPORT`` is the folder ``peer_flower.py`` writes with Tessera's own job
preparation: ``job.json`` (model spec, recipe, rounds, seed), ``data.npz``
(every node's encoded records, ``x``, ``y`` and ``offsets``: node ``i`` holds
rows ``offsets[i]:offsets[i+1]``) and ``weights.safetensors`` (the initial
weights, by parameter name). This script builds the same MLP in torch (the
names and order of ``tessera.training.spec``), trains each client with the same
recipe (SGD, ``local_epochs`` passes of ``batch_size`` minibatches, mean
cross-entropy, the update ``local - global`` clipped to ``clip_norm`` in L2)
and runs Flower's simulation (``run_simulation``, Ray backend) with every one
of the N supernodes selected in every round (``FedAvg(fraction_fit=1)``, no
evaluation):

* ``--mode secagg``: ``DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(...))``
  on the server, ``secaggplus_mod`` on the clients;
* ``--mode plain``: ``DefaultWorkflow()`` and no mod (plain FedAvg).

Clients return ``global + clipped delta`` with ``num_examples``, so FedAvg's
weighted mean of parameters is Tessera's weighted mean of clipped updates
applied to the global model: the same aggregate.

Measurements (written as JSON to ``--out``):

* round boundaries on the server: ``configure_fit`` called (start) and
  ``aggregate_fit`` returned (end) of the strategy, per round; ``startup`` is
  from just before ``run_simulation`` to the first round's start (Ray, the
  actor pool, the server app); ``teardown`` from the last end to its return;
* SecAgg+ stages on the server (the workflow's four ``*_stage`` methods, wall
  time, which includes waiting for the clients);
* every client reply, by an outermost client mod: its serialized size
  (``message_to_proto(reply).ByteSize()``, the protobuf a deployment's gRPC
  carries, without gRPC framing), the stage it answers, the wall and CPU time
  of everything under the mod (SecAgg+ and the training), and separately the
  training itself (inside ``fit``). Each Ray actor appends these to its own
  file under a temporary folder, read back at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import OrderedDict, defaultdict
from pathlib import Path
from typing import Any

# Before flwr and ray load: no telemetry (no network here), no usage reports.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import numpy as np
from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod

ENV_EXPORT = "PEER_EXPORT"
ENV_METER = "PEER_METER_DIR"

# -- the task: data, model and recipe from the export -------------------------------------

_CACHE: dict[str, Any] = {}


def load_export(folder: str) -> dict[str, Any]:
    """The exported job, loaded once per process (each Ray actor keeps its copy)."""
    if _CACHE.get("folder") != folder:
        from safetensors.numpy import load_file

        meta = json.loads(Path(folder, "job.json").read_text())
        with np.load(Path(folder, "data.npz")) as data:
            arrays = {k: data[k] for k in ("x", "y", "offsets")}
        weights = load_file(str(Path(folder, "weights.safetensors")))
        _CACHE.clear()
        _CACHE.update(folder=folder, meta=meta, weights=weights, **arrays)
    return _CACHE


def make_model(spec: dict[str, Any]) -> Any:
    """Tessera's ``mlp`` (``spec._make_module``): Flatten, (Linear, activation) per
    hidden width, then the head; the same parameter names and order."""
    from torch import nn

    if spec["kind"] != "mlp":
        raise SystemExit(f"the peer benchmark builds an mlp, not a {spec['kind']}")
    acts = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}
    act = acts[spec.get("activation", "relu")]
    layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
    width = int(np.prod(spec["input_shape"]))
    for i, h in enumerate(spec["hidden"]):
        layers[f"fc{i}"] = nn.Linear(width, h)
        layers[f"act{i}"] = act()
        width = h
    layers["head"] = nn.Linear(width, spec["n_outputs"])
    return nn.Sequential(layers)


def train_client(
    task: dict[str, Any], node: int, parameters: list[np.ndarray], round: int
) -> tuple[list[np.ndarray], int, float]:
    """One client's local training from ``parameters``: the recipe of the export.

    Returns ``global + delta`` (the delta clipped to ``clip_norm``), the
    client's record count and its mean training loss over the last epoch.
    """
    import torch
    import torch.nn.functional as F

    meta = task["meta"]
    recipe, names = meta["recipe"], meta["names"]
    lo, hi = int(task["offsets"][node]), int(task["offsets"][node + 1])
    x = torch.from_numpy(task["x"][lo:hi].copy())
    y = torch.from_numpy(task["y"][lo:hi].copy()).long()
    model = make_model(meta["spec"])
    start = [torch.from_numpy(np.ascontiguousarray(p, dtype=np.float32)) for p in parameters]
    model.load_state_dict(dict(zip(names, start, strict=True)))
    opt = torch.optim.SGD(
        model.parameters(),
        lr=recipe["lr"],
        momentum=recipe["momentum"],
        weight_decay=recipe["weight_decay"],
    )
    gen = torch.Generator().manual_seed(meta["seed"] * 1_000_003 + node * 1009 + round)
    n, batch, loss_sum = hi - lo, recipe["batch_size"], 0.0
    for _ in range(recipe["local_epochs"]):
        loss_sum = 0.0
        for idx in torch.randperm(n, generator=gen).split(batch):
            opt.zero_grad()
            loss = F.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(idx)
    with torch.no_grad():
        trained = dict(model.named_parameters())
        deltas = [trained[k].detach() - s for k, s in zip(names, start, strict=True)]
        if recipe["clip_norm"] is not None:
            norm = float(torch.sqrt(sum((d.double() ** 2).sum() for d in deltas)))  # type: ignore[arg-type]
            bound = recipe["clip_norm"] * (1.0 - 1e-6)  # as Tessera's CLIP_SAFETY
            if norm > bound:
                deltas = [d * (bound / norm) for d in deltas]
        out = [(s + d).numpy() for s, d in zip(start, deltas, strict=True)]
    return out, n, loss_sum / max(n, 1)


# -- the meter: what each client sends, and where its time goes ----------------------------


def _record(line: dict[str, Any]) -> None:
    folder = os.environ.get(ENV_METER)
    if folder:
        with open(Path(folder, f"{os.getpid()}.jsonl"), "a") as f:
            f.write(json.dumps(line) + "\n")


def meter_mod(msg: Any, ctxt: Any, call_next: Any) -> Any:
    """Outermost client mod: the reply's serialized size and the time under the mod."""
    from flwr.common.serde import message_to_proto

    configs = msg.content.config_records.get("secaggplus_configs")
    stage = str(configs["stage"]) if configs is not None and "stage" in configs else "fit"
    wall, cpu = time.perf_counter(), time.process_time()
    reply = call_next(msg, ctxt)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    _record(
        {
            "kind": "reply",
            "node": int(ctxt.node_config["partition-id"]),
            "round": int(msg.metadata.group_id or 0),
            "stage": stage,
            "bytes": message_to_proto(reply).ByteSize(),
            "bytes_in": message_to_proto(msg).ByteSize(),
            "wall": wall,
            "cpu": cpu,
        }
    )
    return reply


class PeerClient(NumPyClient):  # type: ignore[misc]
    """One supernode: trains its own records (``partition-id`` = Tessera's node index)."""

    def __init__(self, node: int) -> None:
        self.node = node

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> Any:
        wall, cpu = time.perf_counter(), time.process_time()
        task = load_export(os.environ[ENV_EXPORT])
        round = int(config.get("round", 0))
        out, n, loss = train_client(task, self.node, parameters, round)
        _record(
            {
                "kind": "train",
                "node": self.node,
                "round": round,
                "wall": time.perf_counter() - wall,
                "cpu": time.process_time() - cpu,
            }
        )
        return out, n, {"loss": loss}


def client_fn(context: Any) -> Any:
    return PeerClient(int(context.node_config["partition-id"])).to_client()


def client_app(secure: bool) -> Any:
    """Module-level pieces only, so that Ray pickles them by reference (as for an app
    that ``flwr run`` loads from its module), not by value with their globals."""
    mods = [meter_mod, secaggplus_mod] if secure else [meter_mod]
    return ClientApp(client_fn=client_fn, mods=mods)


# -- CPU of the whole simulation: this process and every process under it -----------------

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def tree_cpu() -> dict[str, float]:
    """CPU seconds so far (user + system) of this process and its descendants (Ray's
    GCS, raylet, the ClientApp actors, ...), by kind; a dead process's time is gone, so
    only differences between two calls with the same processes alive are meaningful."""
    procs: dict[int, tuple[int, str, float]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        procs[int(entry.name)] = (int(fields[1]), name, (int(fields[11]) + int(fields[12])) / _TICK)
    me, out = os.getpid(), {}
    for pid, (_, name, cpu) in procs.items():
        p, mine = pid, False
        while p in procs and p > 1:
            if p == me:
                mine = True
                break
            p = procs[p][0]
        if not mine:
            continue
        kind = (
            "driver"
            if pid == me
            else "actors"
            if name.startswith("ray::")
            else name
            if name in ("raylet", "gcs_server")
            else "other"
        )
        out[kind] = out.get(kind, 0.0) + cpu
    return out


# -- the server: FedAvg over everyone, timed --------------------------------------------

TIMES: dict[str, Any] = {
    "start": {},
    "end": {},
    "cpu_start": {},
    "cpu_end": {},
    "tree_start": {},
    "tree_end": {},
    "stages": defaultdict(list),
    "stages_cpu": defaultdict(list),
    "loss": {},
}


def server_app(args: argparse.Namespace, task: dict[str, Any], n: int) -> Any:
    from flwr.common import ndarrays_to_parameters
    from flwr.server import LegacyContext, ServerApp, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

    names = task["meta"]["names"]
    initial = [task["weights"][k] for k in names]

    class TimedFedAvg(FedAvg):  # type: ignore[misc]
        def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> Any:
            TIMES["tree_start"][server_round] = tree_cpu()
            TIMES["start"][server_round] = time.perf_counter()
            TIMES["cpu_start"][server_round] = time.process_time()
            return super().configure_fit(server_round, parameters, client_manager)

        def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
            out = super().aggregate_fit(server_round, results, failures)
            TIMES["end"][server_round] = time.perf_counter()
            TIMES["cpu_end"][server_round] = time.process_time()
            TIMES["tree_end"][server_round] = tree_cpu()
            TIMES.setdefault("results", {})[server_round] = (len(results), len(failures))
            losses = [(r.num_examples, r.metrics.get("loss")) for _, r in results]
            if losses and all(v is not None for _, v in losses):
                total = sum(k for k, _ in losses)
                TIMES["loss"][server_round] = sum(k * v for k, v in losses) / total
            if out[0] is not None:
                from flwr.common import parameters_to_ndarrays

                TIMES["final"] = parameters_to_ndarrays(out[0])
            return out

    class TimedSecAggPlus(SecAggPlusWorkflow):  # type: ignore[misc]
        def _timed(self, name: str, step: Any, *a: Any) -> bool:
            t0, c0 = time.perf_counter(), time.process_time()
            ok: bool = step(*a)
            TIMES["stages"][name].append(time.perf_counter() - t0)
            TIMES["stages_cpu"][name].append(time.process_time() - c0)
            return ok

        def setup_stage(self, *a: Any) -> bool:
            return self._timed("setup", super().setup_stage, *a)

        def share_keys_stage(self, *a: Any) -> bool:
            return self._timed("share_keys", super().share_keys_stage, *a)

        def collect_masked_vectors_stage(self, *a: Any) -> bool:
            return self._timed("collect_masked_vectors", super().collect_masked_vectors_stage, *a)

        def unmask_stage(self, *a: Any) -> bool:
            return self._timed("unmask", super().unmask_stage, *a)

    app = ServerApp()

    @app.main()  # type: ignore[untyped-decorator]
    def main(grid: Any, context: Any) -> None:
        strategy = TimedFedAvg(
            fraction_fit=1.0,
            fraction_evaluate=0.0,
            min_fit_clients=n,
            min_evaluate_clients=0,
            min_available_clients=n,
            initial_parameters=ndarrays_to_parameters(initial),
            on_fit_config_fn=lambda r: {"round": r},
        )
        legacy = LegacyContext(
            context=context, config=ServerConfig(num_rounds=args.rounds), strategy=strategy
        )
        if args.mode == "secagg":
            fit = TimedSecAggPlus(
                num_shares=args.num_shares,
                reconstruction_threshold=args.threshold,
                max_weight=args.max_weight,
            )
            DefaultWorkflow(fit_workflow=fit)(grid, legacy)
        else:
            DefaultWorkflow()(grid, legacy)

    return app


# -- run and report --------------------------------------------------------------------


def accuracy(task: dict[str, Any], params: list[np.ndarray]) -> float:
    """The final global model's accuracy on every node's records (a sanity check)."""
    import torch

    model = make_model(task["meta"]["spec"])
    names = task["meta"]["names"]
    arrays = zip(names, params, strict=True)
    model.load_state_dict({k: torch.from_numpy(np.asarray(p)) for k, p in arrays})
    with torch.no_grad():
        pred = model(torch.from_numpy(task["x"])).argmax(1).numpy()
    return float((pred == task["y"]).mean())


def summarize_meter(folder: Path) -> dict[str, Any]:
    """Per round (the server's round number): each stage's replies summed over the
    clients (bytes out, bytes in, wall and CPU seconds under the mod), and the
    training's wall and CPU seconds summed over the clients."""
    files = sorted(folder.glob("*.jsonl"))
    lines = [json.loads(s) for p in files for s in p.read_text().splitlines()]
    per_round: dict[str, dict[str, Any]] = {}

    def at(round: int) -> dict[str, Any]:
        empty = {"stages": {}, "bytes": 0, "replies": 0, "train_cpu": 0.0, "train_wall": 0.0}
        return per_round.setdefault(str(round), empty)

    for r in lines:
        d = at(r["round"])
        if r["kind"] == "train":
            d["train_cpu"] += r["cpu"]
            d["train_wall"] += r["wall"]
            continue
        empty = {"bytes": 0, "bytes_in": 0, "wall": 0.0, "cpu": 0.0, "replies": 0}
        s = d["stages"].setdefault(r["stage"], empty)
        for key in ("bytes", "bytes_in", "wall", "cpu"):
            s[key] += r[key]
        s["replies"] += 1
        d["bytes"] += r["bytes"]
        d["replies"] += 1
    return {"actors": len(files), "per_round": per_round}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("export", help="the folder peer_flower.py wrote")
    ap.add_argument("--mode", choices=("secagg", "plain"), required=True)
    ap.add_argument("--out", required=True, help="where to write the JSON result")
    ap.add_argument("--rounds", type=int, default=None, help="default: the export's")
    ap.add_argument("--num-shares", type=int, default=3)
    ap.add_argument("--threshold", type=int, default=2)
    ap.add_argument("--max-weight", type=float, default=1000.0)
    ap.add_argument("--cpus", type=int, default=2, help="Ray's num_cpus")
    ap.add_argument("--client-cpus", type=float, default=1.0, help="num_cpus per ClientApp actor")
    args = ap.parse_args()

    export = str(Path(args.export).resolve())
    task = load_export(export)
    meta = task["meta"]
    n = len(task["offsets"]) - 1
    args.rounds = args.rounds or meta["rounds"]
    meter = Path(tempfile.mkdtemp(prefix="peer-meter-"))
    os.environ[ENV_EXPORT] = export  # Ray's processes inherit the environment
    os.environ[ENV_METER] = str(meter)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"  # one thread per actor: the actors share the cores

    import flower_side as apps  # this file as a module: its functions pickle by reference
    import flwr
    import ray
    import torch
    from flwr.simulation import run_simulation

    torch.set_num_threads(1)
    backend = {
        "init_args": {
            "num_cpus": args.cpus,
            "num_gpus": 0,
            "include_dashboard": False,
            "_node_ip_address": "127.0.0.1",  # loopback only
            "object_store_memory": 1_000_000_000,
            "logging_level": 30,
        },
        "client_resources": {"num_cpus": args.client_cpus, "num_gpus": 0.0},
    }
    t0 = time.perf_counter()
    run_simulation(
        server_app=server_app(args, task, n),
        client_app=apps.client_app(args.mode == "secagg"),
        num_supernodes=n,
        backend_config=backend,  # type: ignore[arg-type]
    )
    t_end = time.perf_counter()
    starts, ends = TIMES["start"], TIMES["end"]
    rounds = sorted(ends)
    per_round = [ends[r] - starts[r] for r in rounds]
    meters = summarize_meter(meter)
    final = TIMES.get("final")
    result = {
        "mode": args.mode,
        "nodes": n,
        "rounds_asked": args.rounds,
        "rounds": per_round,
        "startup": (starts[rounds[0]] - t0) if rounds else None,
        "total": t_end - t0,
        "teardown": (t_end - ends[rounds[-1]]) if rounds else None,
        "results": {str(k): v for k, v in TIMES.get("results", {}).items()},
        # the driver process's CPU (ServerApp, simulation engine, Ray driver) per round
        "server_cpu": [TIMES["cpu_end"][r] - TIMES["cpu_start"][r] for r in rounds],
        # CPU of every process of the simulation per round, by kind (driver, actors, ...)
        "tree_cpu": [
            {k: v - TIMES["tree_start"][r].get(k, 0.0) for k, v in TIMES["tree_end"][r].items()}
            for r in rounds
        ],
        "stages": dict(TIMES["stages"]),
        "stages_cpu": dict(TIMES["stages_cpu"]),
        "train_loss": {str(k): v for k, v in TIMES["loss"].items()},
        "accuracy": accuracy(task, final) if final is not None else None,
        "meter": meters,
        "params": {
            "num_shares": args.num_shares,
            "reconstruction_threshold": args.threshold,
            "max_weight": args.max_weight,
            "clipping_range": 8.0,
            "quantization_range": 4194304,
            "modulus_range": 4294967296,
        }
        if args.mode == "secagg"
        else {},
        "ray_num_cpus": args.cpus,
        "client_num_cpus": args.client_cpus,
        "actors": int(args.cpus // args.client_cpus),
        "versions": {
            "flwr": flwr.__version__,
            "ray": ray.__version__,
            "torch": torch.__version__,
            "python": sys.version.split()[0],
        },
    }
    Path(args.out).write_text(json.dumps(result))
    for p in meter.glob("*.jsonl"):
        p.unlink()
    meter.rmdir()


if __name__ == "__main__":
    main()
