"""Round time stays flat over a long run: seconds per round at rounds 5 and 200.

    .venv/bin/python benchmarks/metrics_writer.py [--rounds 200]

Runs `tessera run` on Chem97 with one node per student (27,911 nodes,
plaintext, every node selected, 10% dropout: ~25,000 contributor ids per
round) and reads each round's wall-clock seconds back from metrics.json.
Before the metrics writer cached each round's JSON, every round re-serialised
every earlier round with its ids and the run slowed about 3x by round 200.
The floor is round 5's time: the ratio of the last round to it should be ~1.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIG = Path(__file__).with_name("chem97_per_student.toml")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "tessera.cli",
                "run",
                str(CONFIG),
                "--out",
                out,
                "--quiet",
                "--rounds",
                str(args.rounds),
            ],
            check=True,
        )
        wall = time.perf_counter() - start
        rounds = json.loads((Path(out) / "metrics.json").read_text())["rounds"]
    seconds = [r["seconds"] for r in rounds]
    early = statistics.median(seconds[3:8])  # around round 5, past the warm-up
    late = statistics.median(seconds[-5:])  # around the last round
    ids = rounds[-1]["participants"]
    print(f"{len(rounds)} rounds, {ids:,} contributors in the last, {wall:.0f} s in all")
    print(f"seconds per round: round 5 {early:.2f}, round {len(rounds)} {late:.2f}")
    print(f"last / round 5: {late / early:.2f}x (flat = 1.00x)")


if __name__ == "__main__":
    main()
