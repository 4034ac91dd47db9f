"""Large models: the memory one party holds, and the memory a simulated round holds.

    .venv/bin/python benchmarks/large_model.py                  # 10M per party; 4M x 100 nodes
    .venv/bin/python benchmarks/large_model.py --skip-round     # the parties alone
    .venv/bin/python benchmarks/large_model.py --round-params 50000000 --nodes 100

Every figure is in copies of the model (4 bytes a parameter, float32), beside
its floor or target, measured in the same run.

Section 1, one party, in this process (tracemalloc's peak of what numpy and
Python allocate, so the interpreter and torch are not counted):

- contributor: ``protocol.sharing_job.share`` of one update (encode into the
  ring, split into k shares, seal each): the peak, and what it holds after
  (what the contributor keeps until the round commits, for a replacement);
- aggregator: opening one sealed full share and adding it into a running sum
  (``ShareAccumulator``), with the envelope and the sum held before it starts.

Section 2, one secure round of a simulated job in a fresh process: scikit-learn's
digits over ``--nodes`` nodes (everyone selected, audits on), an MLP with two
hidden layers sized to ``--round-params``. It prints the process's peak resident
memory during the round (VmHWM, reset after preparing the job) less its resident
memory before the round, in copies of the model, against the issue's target
(8 copies plus data) and against the protocol's floor: until a round commits,
each contributor keeps its sealed full share (to reseal it for a replacement
aggregator), the seat that received it keeps it (the commitment may leave it
out), and its auditor keeps the forwarded copy (to check the seat's sum), so
the simulator, which holds every party, holds at least 3 copies per node.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tracemalloc
from typing import Any

import numpy as np

TARGET_COPIES = 8
FLOOR_PER_NODE = 3  # the contributor's envelope, the seat's input, the auditor's copy


def _party(n: int) -> dict[str, float]:
    from tessera.crypto.envelope import ReplayGuard, open_sealed
    from tessera.crypto.fixedpoint import choose_ring
    from tessera.crypto.keys import NodeKeys
    from tessera.crypto.sharing import ShareAccumulator
    from tessera.ids import NodeId
    from tessera.protocol.codec import decode_share
    from tessera.protocol.sharing_job import ShareJob, share

    ids = [NodeId(f"node-{i}") for i in range(4)]
    keys = {i: NodeKeys.from_seed(i.encode()) for i in ids}
    directory = {i: k.public for i, k in keys.items()}
    ring = choose_ring(bound=10.0, terms=100)
    model = 4 * n
    vector = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    job = ShareJob(
        node=ids[0],
        job_id="large",
        round=1,
        group="L0",
        aggregators=tuple(ids[1:]),
        full_position=0,
        ring=ring,
        vector=vector,
    )
    gc.collect()
    tracemalloc.start()
    done = share(job, keys[ids[0]], directory)
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    box = done.envelopes[0]
    del done
    gc.collect()
    tracemalloc.start()
    acc = ShareAccumulator(n, ring)  # the seat's running sum, then one input
    before, _ = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    opened = open_sealed(
        box,
        recipient_keys=keys[ids[1]],
        directory=directory,
        expect_job="large",
        expect_round=1,
        expect_recipient=str(ids[1]),
        max_bytes=len(box),
        replay=ReplayGuard(),
    )
    payload = decode_share(opened.payload)
    acc.add(payload.share)
    _, ingest_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "contributor_peak": peak / model,
        "contributor_held": held / model,
        # the envelope (held by the caller) and the sum are there before the ingest starts
        "aggregator_peak": (ingest_peak + len(box)) / model,
        "aggregator_floor": (len(box) + before) / model,
    }


def _hidden(params: int) -> int:
    """The width h of two hidden layers on digits (64 in, 10 out): h^2 + 76h + 10 params."""
    return int((-76 + (76**2 + 4 * (params - 10)) ** 0.5) / 2)


def _round(params: int, nodes: int) -> dict[str, Any]:
    """One secure round in a fresh process (this one has run section 1)."""
    driver = f"""
import json, resource
from pathlib import Path
from tessera.config import parse_config
from tessera.jobs.prepared import prepare_job
from tessera.runtime.sim.job import simulate

def rss(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    raise RuntimeError(field)

raw = {{
    "job": {{"name": "large", "seed": 1, "task": "classification"}},
    "data": {{"source": "sklearn", "dataset": "digits", "target": "target",
              "holdout": {{"fraction": 0.2}}}},
    "partition": {{"scheme": "iid", "nodes": {nodes}}},
    "model": {{"kind": "mlp", "hidden": [{_hidden(params)}, {_hidden(params)}]}},
    "recipe": {{"optimizer": "sgd", "lr": 0.05, "local_epochs": 1, "batch_size": 16,
                "clip_norm": 10.0}},
    "federation": {{"rounds": 1, "fraction": 1.0, "min_participants": 2}},
    "baseline": {{"enabled": False}},
}}
job = prepare_job(parse_config(raw))
Path("/proc/self/clear_refs").write_text("5")  # VmHWM from here
before = rss("VmRSS:")
result = simulate(job, secure=True)
print(json.dumps({{"params": int(job.initial_weights.size), "before": before,
                   "peak": rss("VmHWM:"), "seconds": result.rounds[0].seconds,
                   "included": len(result.rounds[0].included)}}))
"""
    done = subprocess.run(
        [sys.executable, "-c", driver], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"the round failed:\n{done.stderr[-3000:]}")
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", type=int, default=10_000_000, help="section 1's model size")
    ap.add_argument("--round-params", type=int, default=4_000_000, help="section 2's model")
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--skip-round", action="store_true")
    args = ap.parse_args()

    p = _party(args.params)
    print(f"1. One party, {args.params:,} parameters (copies of the float32 model)")
    print(f"   contributor sharing step: peak {p['contributor_peak']:.2f}, held after ")
    print(f"     {p['contributor_held']:.2f} (its k sealed shares, kept for a replacement)")
    print(f"   aggregator ingest: peak {p['aggregator_peak']:.2f} against a floor of ")
    print(f"     {p['aggregator_floor']:.2f} (the envelope and the running sum)")
    if args.skip_round:
        return
    r = _round(args.round_params, args.nodes)
    model = 4 * r["params"]
    copies = (r["peak"] - r["before"]) / model
    floor = FLOOR_PER_NODE * r["included"]
    print(
        f"2. One secure round, {r['params']:,} parameters, {r['included']} nodes included "
        f"({r['seconds']:.0f} s)"
    )
    print(f"   peak during the round: {copies:.0f} copies of the model")
    print(
        f"   x target ({TARGET_COPIES} copies): {copies / TARGET_COPIES:.1f}x; "
        f"x floor ({FLOOR_PER_NODE} per node = {floor}): {copies / floor:.2f}x"
    )


if __name__ == "__main__":
    main()
