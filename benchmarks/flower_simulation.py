"""The fashion-cnn example app in Flower's simulation runtime: wall time and peak memory with N virtual SuperNodes.

Prepares one Fashion-MNIST shard per virtual node (``examples/fashion-cnn/prepare_data.py``),
starts a SuperLink with Flower's simulation runtime (``flower-superlink --simulation``;
needs ``flwr[simulation]``, i.e. Ray) and submits the example app (its own CNN and loop,
privagg's mod and PrivAgg strategy) with ``num-supernodes=N``: masking SecAgg+ with
distributed DP over the whole population each round. Each virtual node loads its own shard
(``data-dir`` defaults to ``$FASHION_CNN_DATA/shards/client-<partition-id>``).

Memory is sampled every 0.2 s over the whole process tree (SuperLink, SuperExec, the
simulation process, Ray's GCS, raylet and ClientApp actors, the ``flwr`` CLI): the peak of
the summed resident set size (shared pages counted once per process, so an upper bound)
and the largest single process. Prints one JSON object.

    python benchmarks/flower_simulation.py --nodes 50 --rounds 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "examples" / "fashion-cnn"


class TreeMemory:
    """Samples the resident memory of this process's descendants until stopped."""

    def __init__(self, interval: float = 0.2) -> None:
        import psutil

        self._root = psutil.Process(os.getpid())
        self.interval = interval
        self.peak_total = 0
        self.peak_single = 0
        self.peak_processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            total, single, n = 0, 0, 0
            for p in self._root.children(recursive=True):
                try:
                    rss = p.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                total += rss
                single = max(single, rss)
                n += 1
            self.peak_total = max(self.peak_total, total)
            self.peak_single = max(self.peak_single, single)
            self.peak_processes = max(self.peak_processes, n)
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def run(nodes: int, rounds: int, *, per_client: int, noise_multiplier: float, workdir: Path) -> dict[str, Any]:
    """One simulation run of the example app; returns the figures (see the module docstring)."""
    from fl_core.transport.flower.local import DeploymentError, LocalDeployment

    sys.path.insert(0, str(APP))
    try:
        from prepare_data import main as prepare
    finally:
        sys.path.remove(str(APP))
    data = workdir / "data"
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the JSON only
        prepare(["--clients", str(nodes), "--per-client", str(per_client), "--test", "1000", "--out", str(data)])
    out_dir = workdir / "out"
    run_config = {
        "num-server-rounds": rounds,
        "final-model": str(workdir / "final.pt"),
        "privagg.clients": nodes,
        "privagg.per-round": nodes,
        "privagg.secure-sum": "masking",
        "privagg.dp": "distributed",
        "privagg.noise-multiplier": noise_multiplier,
        "privagg.clip": 1.0,
        "privagg.ledger": str(workdir / "ledger.jsonl"),
        "privagg.output-dir": str(out_dir),
    }
    load_before = os.getloadavg()
    with (
        TreeMemory() as mem,
        LocalDeployment(0, workdir=workdir / "deploy", simulation=True, env={"FASHION_CNN_DATA": str(data)}) as dep,
    ):
        t0 = time.perf_counter()
        dep.run(APP, run_config, timeout=3600, num_supernodes=nodes)
        wall = time.perf_counter() - t0
        if not (out_dir / "summary.json").exists():
            tail = "\n".join(f"--- {n}\n{t[-3000:]}" for n, t in dep.logs())
            raise DeploymentError(f"the run wrote no summary\n{tail}")
    summary = json.loads((out_dir / "summary.json").read_text())
    return {
        "nodes": nodes,
        "rounds": rounds,
        "examples_per_node": per_client,
        "dim": summary["dim"],
        "flwr_run_wall_s": round(wall, 1),
        "round_wall_s": [r["wall_s"] for r in summary["rounds"]],
        "stages_s": [{s["stage"]: s["wall_s"] for s in r["stages"]} for r in summary["rounds"]],
        "survivors": [len(r["survivors"]) for r in summary["rounds"]],
        "epsilon": summary["rounds"][-1]["epsilon"],
        "accuracy": summary["rounds"][-1]["metrics"].get("accuracy"),
        "peak_rss_total_mib": round(mem.peak_total / 2**20, 1),
        "peak_rss_largest_process_mib": round(mem.peak_single / 2**20, 1),
        "peak_processes": mem.peak_processes,
        "machine": {
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--per-client", type=int, default=100, help="training examples per virtual node")
    ap.add_argument("--noise-multiplier", type=float, default=1.0)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args(argv)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="privagg-flower-sim-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        res = run(
            args.nodes, args.rounds, per_client=args.per_client, noise_multiplier=args.noise_multiplier, workdir=workdir
        )
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
