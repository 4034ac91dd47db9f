"""The peer benchmark (``benchmarks/peer_flower.py``): its command line, the export the
Flower side reads, and its tables. No timings are checked.

The last test runs the Flower side's model and one client's training in ``.venv-peer``
(``make peer``) and checks them against Tessera's own: skipped where that venv is absent.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
PEER_PYTHON = ROOT / ".venv-peer" / "bin" / "python"


def _module(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def peer() -> ModuleType:
    return _module(ROOT / "benchmarks" / "peer_flower.py", "peer_flower_under_test")


@pytest.fixture(scope="module")
def exported(peer: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path]:
    folder = tmp_path_factory.mktemp("export")
    job = peer.prepare(12, 2, None)
    peer.export(job, folder)
    return job, folder


def test_command_line_defaults(peer: ModuleType) -> None:
    args = peer.parse_args([])
    assert (args.nodes, args.rounds, args.num_shares, args.threshold, args.cpus) == (
        [100, 500],
        5,
        3,
        2,
        2,
    )
    quick = peer.parse_args(["--quick"])
    assert (quick.nodes, quick.rounds) == ([20], 4)
    given = peer.parse_args(["--quick", "--nodes", "100", "500", "--rounds", "2"])
    assert (given.nodes, given.rounds) == ([100, 500], 2)
    for bad in (["--rounds", "0"], ["--nodes", "0"], ["--only", "nobody"]):
        with pytest.raises(SystemExit):
            peer.parse_args(bad)


def test_job_selects_everyone_without_dropout(peer: ModuleType) -> None:
    raw = peer.job_config(37, 4, None)
    fed = raw["federation"]
    assert (fed["rounds"], fed["fraction"], fed["min_participants"]) == (4, 1.0, 37)
    assert raw["simulation"]["dropout"] == 0.0
    assert raw["model"]["hidden"] == [16]  # the example's model unless asked
    assert peer.job_config(37, 4, [8, 8])["model"]["hidden"] == [8, 8]


def test_export_holds_the_first_nodes(peer: ModuleType, exported: tuple) -> None:
    from safetensors.numpy import load_file

    job, folder = exported
    meta = json.loads((folder / "job.json").read_text())
    assert meta["nodes"] == 12 == job.n_nodes
    assert meta["names"] == list(job.layout.names)
    assert meta["recipe"]["clip_norm"] == job.recipe.clip_norm
    assert meta["parameters"] == job.layout.size
    with np.load(folder / "data.npz") as data:
        assert np.array_equal(data["offsets"], job.offsets)
        assert data["x"].shape == (job.offsets[-1], *job.spec.input_shape)
        assert np.array_equal(data["y"], job.y)
    weights = load_file(str(folder / "weights.safetensors"))
    named = {k: weights[k] for k in job.layout.names}  # safetensors sorts names
    assert np.array_equal(job.layout.flatten(named), job.initial_weights)


def test_tables_show_ratios_and_targets(peer: ModuleType) -> None:
    def tessera(seconds: float, sent: int) -> dict:
        return {"side": "tessera", "nodes": 10, "rounds": [9.0, seconds, seconds]} | {
            "bytes_sent_by_nodes": [sent * 10] * 3
        }

    def flower(seconds: float, sent: int) -> dict:
        per_round = {str(r): {"bytes": sent * 10} for r in (1, 2, 3)}
        return {"side": "flower", "nodes": 10, "rounds": [99.0, seconds, seconds]} | {
            "meter": {"per_round": per_round}
        }

    results = {
        500: {
            "ts": tessera(0.5, 3000),
            "tp": tessera(0.01, 800),
            "fs": flower(100.0, 4500),
            "fp": flower(0.5, 1600),
        }
    }
    text = "\n".join(peer.report(results))
    assert "| 500 | 0.500 | 100.00 | 200x | >= 100x |" in text  # round 1 left out
    assert "| 0.010 | 0.50 | 50x | >= 100x |" in text
    assert "| 500 | 3,000 | 4,500 | 1.50 | 800 | 1,600 | 2.00 |" in text
    assert "secure vs SecAgg+: MET" in text
    assert "plaintext vs Flower plain: MISSED (>= 100x; 0.50 of it)" in text
    missing = {100: {"ts": "failed (exit 1): boom"}}
    assert "| 100 | - | - | - | >= 100x (set at N=500) |" in "\n".join(peer.report(missing))


@pytest.mark.skipif(
    not PEER_PYTHON.exists(), reason="no .venv-peer (make peer): the Flower side is not installed"
)
def test_flower_side_trains_as_tessera_does(exported: tuple) -> None:
    """Same outputs from the same weights, and a node with one minibatch per epoch (so
    no shuffle order matters) gets Tessera's update, clipping included."""
    from tessera.training import BatchedTrainer
    from tessera.training.spec import build_module

    job, folder = exported
    sizes = np.diff(job.offsets)
    node = int(np.flatnonzero(sizes <= job.recipe.batch_size)[0])
    script = f"""
import sys, numpy as np, torch
sys.path.insert(0, {str(ROOT / "benchmarks" / "peer")!r})
import flower_side as fs
task = fs.load_export({str(folder)!r})
names = task["meta"]["names"]
start = [task["weights"][k] for k in names]
model = fs.make_model(task["meta"]["spec"])
model.load_state_dict({{k: torch.from_numpy(v) for k, v in zip(names, start)}})
with torch.no_grad():
    np.save({str(folder / "logits.npy")!r}, model(torch.from_numpy(task["x"])).numpy())
out, n, loss = fs.train_client(task, {node}, start, 1)
np.save({str(folder / "trained.npy")!r}, np.concatenate([p.ravel() for p in out]))
"""
    done = subprocess.run(
        [str(PEER_PYTHON), "-c", script], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    import torch

    with torch.no_grad():
        ours = build_module(job.spec, job.initial_weights)(torch.from_numpy(job.x)).numpy()
    np.testing.assert_allclose(np.load(folder / "logits.npy"), ours, rtol=1e-5, atol=1e-6)
    trainer = BatchedTrainer(job.spec, job.recipe, job.x, job.y, job.offsets)
    delta = trainer.train(job.initial_weights, np.array([node]), seed=0).deltas[0]
    flower_delta = np.load(folder / "trained.npy") - job.initial_weights
    np.testing.assert_allclose(flower_delta, delta, rtol=1e-4, atol=1e-6)
