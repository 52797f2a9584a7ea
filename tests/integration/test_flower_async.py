"""Asynchronous mode on real Flower processes: 5 SuperNodes of different speeds, masking + distributed DP.

A SuperLink and five SuperNodes on 127.0.0.1 run ``tests/integration/async_app`` (its own task:
logistic regression on digits, one shard per node; each node's operator slows it down with its
own ``train-delay-s``). The server keeps all five training, takes reports as they arrive, and
applies buffers of 4, each one masking session with distributed DP. The slowest node misses
the first buffer. During the second buffer's session, right after its opening exchange, one
member's SuperNode is killed (SIGKILL): the session goes on without it (a dropout of that
session, its update never in the sum), the buffer is applied with the other three, and the
server's ledger audits with one round per buffer at full participation.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from test_flower import PRIVAGG, REPO

pytestmark = [
    pytest.mark.flower,
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("flwr") is None, reason="flwr is not installed: pip install 'privagg[flower]'"
    ),
    pytest.mark.skipif(
        not all(shutil.which(x) for x in ("flower-superlink", "flower-supernode", "flwr")),
        reason="the Flower CLI (flower-superlink, flwr) is not on PATH",
    ),
]

APP = Path(__file__).resolve().parent / "async_app"
DELAYS = {0: 0.0, 1: 0.5, 2: 1.0, 3: 1.5, 4: 40.0}  # partition id -> injected seconds per training


def test_async_buffers_with_masking_and_dp_survive_a_node_killed_mid_buffer(tmp_path: Path) -> None:
    from fl_core.transport.flower.local import LocalDeployment

    out = tmp_path / "out"
    ledger = tmp_path / "ledger.jsonl"
    run = {
        "rounds": 2,
        "ledger": str(ledger),
        "output-dir": str(out),
        "stage-timeout": 25.0,
        "train-timeout": 240.0,
        "pause-after": "2:train",  # buffer 2's opening exchange: its members have opened their sessions
        "resume-file": str(tmp_path / "resume"),
    }
    progress = out / "progress.jsonl"
    result: dict[str, Any] = {}
    victim: dict[str, int] = {}
    with LocalDeployment(
        5, workdir=tmp_path / "deploy", node_configs={p: {"train-delay-s": d} for p, d in DELAYS.items()}
    ) as dep:

        def submit() -> None:
            try:
                result["run"] = dep.run(APP, run, timeout=420)
            except Exception as exc:  # surfaced below
                result["error"] = exc

        th = threading.Thread(target=submit, daemon=True)
        th.start()
        deadline = time.monotonic() + 425
        while th.is_alive() and time.monotonic() < deadline:
            if not victim and progress.exists() and '"paused"' in progress.read_text():
                events = [json.loads(line) for line in progress.read_text().splitlines()]
                opened = next(e for e in events if e.get("event") == "stage" and e["round"] == 2)["answered"]
                victim["client"] = opened[0]
                dep.kill_supernode(opened[0] - 1)  # SIGKILL mid-buffer: no goodbye, like a crashed device
                (tmp_path / "resume").touch()
            time.sleep(0.05)
        th.join(timeout=5)
        logs = "\n".join(f"--- {n}\n{t[-3000:]}" for n, t in dep.logs() if "error" in t.lower())
        assert "error" not in result, f"{result.get('error')}\n{logs}"
        run_out = getattr(result.get("run"), "stdout", "")[-4000:]
        assert (out / "summary.json").exists(), f"the ServerApp did not finish\n{run_out}\n{logs}"
        assert victim, "the server never opened buffer 2"

    summary = json.loads((out / "summary.json").read_text())
    assert summary["schedule"] == "async" and summary["buffer"] == 4 and summary["stopped"] is None
    b1, b2 = summary["rounds"]
    # Buffer 1: the four fast nodes; the slowest (client 5, 40 s per training) missed it.
    assert b1["survivors"] == [1, 2, 3, 4]
    # Buffer 2: opened by four members; the victim vanished after the opening, before its masked input.
    opening = next(s for s in b2["stages"] if s["stage"] == "train")
    assert len(opening["answered"]) == 4 and victim["client"] in opening["answered"]
    assert victim["client"] not in b2["survivors"] and len(b2["survivors"]) == 3
    later = [s for s in b2["stages"] if s["stage"] != "train"]
    assert later and all(victim["client"] not in s["answered"] for s in later)
    assert summary["async_stats"]["applied_buffers"] == 2 and summary["async_stats"]["applied_updates"] == 7

    audit = subprocess.run(
        [*PRIVAGG, "audit", str(ledger), "--json"], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert audit.returncode == 0, audit.stdout + audit.stderr
    report = json.loads(audit.stdout)
    assert report["verified"] is True and report["rounds"] == 2 and not report["disagreements"]
    assert [r["survivors"] for r in report["per_round"]] == [4, 3]
    records = [json.loads(line) for line in ledger.read_text().splitlines()[1:]]
    # Buffers are full-participation rounds (no amplification); an abort rule recorded beside it
    # (min_survivors, eligible, dropout: dp.accountants.aborts) charges nothing for that scheme.
    assert all(
        {k: r["sampling"][k] for k in ("scheme", "rate", "population")}
        == {"scheme": "full", "rate": 1.0, "population": 5}
        for r in records
    )
    assert report["meta"]["schedule"] == "async"
    # Epsilon per adversary in the ServerApp's summary, as privagg run --json states it: enforced against
    # the server (distributed DP), the value the ledger's records recompute to.
    assert summary["epsilon_enforced_on"] == "server"
    assert summary["epsilon"] == summary["epsilon_vs_server"] >= summary["epsilon_vs_public"] > 0
    assert summary["epsilon_vs_server"] == pytest.approx(report["epsilon_vs_server_recomputed"], rel=1e-9)
