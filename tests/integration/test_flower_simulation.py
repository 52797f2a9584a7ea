"""The fashion-cnn example app in Flower's simulation runtime: 50 virtual SuperNodes, 3 rounds, masking and DP.

Flower's simulation engine (``flower-superlink --simulation``, Ray) runs the same app, the
same ``privagg_mod`` and ``PrivAgg`` as real SuperNodes; each virtual node gets Flower's
``partition-id`` / ``num-partitions`` and loads its own shard. The run must complete every
round with the whole population, and the server's ledger must audit and charge what the
in-process run of the same task and options charges. Wall time and peak memory:
``benchmarks/flower_simulation.py`` (docs/flower.md).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_flower import PRIVAGG, REPO

pytestmark = [
    pytest.mark.flower,
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("ray") is None, reason="Flower's simulation runtime needs flwr[simulation] (Ray)"
    ),
    pytest.mark.skipif(shutil.which("flower-superlink") is None, reason="the Flower CLI is not on PATH"),
    pytest.mark.skipif(
        not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists(),
        reason="dataset-fashion-mnist is not installed (CI installs it)",
    ),
]

APP = REPO / "examples" / "fashion-cnn"
NODES = 50
ROUNDS = 3


def test_fashion_cnn_app_with_50_virtual_supernodes(tmp_path: Path) -> None:
    from fl_core.transport.flower.local import LocalDeployment

    sys.path.insert(0, str(APP))
    try:
        from prepare_data import main as prepare
    finally:
        sys.path.remove(str(APP))
    data = tmp_path / "data"
    prepare(["--clients", str(NODES), "--per-client", "40", "--test", "200", "--out", str(data)])
    privagg = {
        "clients": NODES,
        "per-round": NODES,
        "secure-sum": "masking",
        "dp": "distributed",
        "noise-multiplier": 1.0,
        "clip": 1.0,
        "ledger": str(tmp_path / "ledger.jsonl"),
        "output-dir": str(tmp_path / "out"),
    }
    run = {"num-server-rounds": ROUNDS, "final-model": str(tmp_path / "final.pt")}
    run.update({f"privagg.{k}": v for k, v in privagg.items()})
    with LocalDeployment(0, workdir=tmp_path / "deploy", simulation=True, env={"FASHION_CNN_DATA": str(data)}) as dep:
        try:
            dep.run(APP, run, timeout=900, num_supernodes=NODES)
        finally:
            logs = "\n".join(f"--- {n}\n{t[-3000:]}" for n, t in dep.logs())
        assert (tmp_path / "out" / "summary.json").exists(), f"the ServerApp did not finish\n{logs}"
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [r["survivors"] for r in summary["rounds"]] == [list(range(1, NODES + 1))] * ROUNDS
    assert all(not r["rejected"] for r in summary["rounds"])
    # From round 2 on, key setup ran during the round before: two exchanges per round.
    assert [s["stage"] for s in summary["rounds"][1]["stages"]][:3] == [
        "advertise-keys (ahead)",
        "share-keys (ahead)",
        "train",
    ]
    assert (tmp_path / "final.pt").exists()

    # The ledger audits and charges what the in-process run of the same task and options charges.
    inproc = subprocess.run(
        [
            *PRIVAGG,
            "run",
            "--task",
            str(APP / "fashion_cnn" / "task.py"),
            "--clients",
            str(NODES),
            "--per-round",
            str(NODES),
            "--rounds",
            str(ROUNDS),
            "--dp",
            "distributed",
            "--noise-multiplier",
            "1",
            "--clip",
            "1",
            "--ledger",
            str(tmp_path / "inproc-ledger.jsonl"),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
        env={**os.environ, "FASHION_CNN_DATA": str(data)},
    )
    assert inproc.returncode == 0, inproc.stdout[-3000:] + inproc.stderr[-3000:]
    reports = []
    for ledger in ("ledger.jsonl", "inproc-ledger.jsonl"):
        out = subprocess.run(
            [*PRIVAGG, "audit", str(tmp_path / ledger), "--json"], capture_output=True, text=True, timeout=120, cwd=REPO
        )
        assert out.returncode == 0, out.stdout + out.stderr
        reports.append(json.loads(out.stdout))
    assert reports[0]["verified"] is True and reports[0]["rounds"] == ROUNDS
    assert reports[0]["epsilon"] == pytest.approx(reports[1]["epsilon"], rel=1e-12)
