"""The fashion-cnn example app across real Flower processes: its own CNN and loop, one shard per SuperNode.

A SuperLink and five SuperNodes on 127.0.0.1; each node's config names its own data directory
holding only its shard. An audit hook (``sys.addaudithook``, installed by a ``sitecustomize``
the test puts on the path of every process it starts) records every file opened under the
data root by each node's processes and by the server's: each node opened its own shard and
nothing else, the server its test set and no shard. The final model equals the in-process ``privagg run --task``
of the same task file with the same seed (the nodes opt into the seeded run), and the
server's ledger audits with the same epsilon.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from test_flower import PRIVAGG, REPO

pytestmark = [
    pytest.mark.flower,
    pytest.mark.skipif(
        importlib.util.find_spec("flwr") is None, reason="flwr is not installed: pip install 'privagg[flower]'"
    ),
    pytest.mark.skipif(
        not all(shutil.which(x) for x in ("flower-superlink", "flower-supernode", "flwr")),
        reason="the Flower CLI (flower-superlink, flwr) is not on PATH",
    ),
    pytest.mark.skipif(
        not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists(),
        reason="dataset-fashion-mnist is not installed (CI installs it)",
    ),
]

APP = REPO / "examples" / "fashion-cnn"
TASK = APP / "fashion_cnn" / "task.py"
NODES = 5

SITECUSTOMIZE = '''
"""Test hook: log every file this process opens under FCNN_AUDIT_ROOT to FCNN_AUDIT_LOG."""
import os
import sys

_root = os.environ.get("FCNN_AUDIT_ROOT")
_log = os.environ.get("FCNN_AUDIT_LOG")
_busy = []

def _hook(event, args):
    if event != "open" or _busy or not args or args[0] is None or isinstance(args[0], int):
        return
    try:
        path = os.path.abspath(os.fsdecode(args[0]))
    except TypeError:
        return
    if path.startswith(_root + os.sep):
        _busy.append(1)
        try:
            with open(_log, "a", encoding="utf-8") as fh:
                fh.write(f"{os.getpid()} {path}\\n")
        finally:
            _busy.pop()

if _root and _log:
    sys.addaudithook(_hook)
'''


def _opened(log: Path) -> set[Path]:
    if not log.exists():
        return set()
    return {Path(line.split(" ", 1)[1]) for line in log.read_text(encoding="utf-8").splitlines() if " " in line}


def test_fashion_cnn_app_on_five_supernodes_equals_the_in_process_task_run(tmp_path: Path) -> None:
    from fl_core.transport.flower.local import LocalDeployment

    sys.path.insert(0, str(APP))
    try:
        from prepare_data import main as prepare
    finally:
        sys.path.remove(str(APP))
    data = tmp_path / "data"
    prepare(["--clients", str(NODES), "--per-client", "120", "--test", "200", "--out", str(data)])
    shards = (data / "shards").resolve()
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE, encoding="utf-8")
    audit = tmp_path / "audit"
    audit.mkdir()
    pythonpath = os.pathsep.join([str(hook), *filter(None, [os.environ.get("PYTHONPATH")])])
    env = {
        "PYTHONPATH": pythonpath,
        "FCNN_AUDIT_ROOT": str(data.resolve()),
        "FCNN_AUDIT_LOG": str(audit / "server.log"),
        "FASHION_CNN_DATA": str(data),  # the server's test set for evaluate()
    }
    seed = 9
    privagg = {
        "clients": NODES,
        "per-round": NODES,
        "secure-sum": "masking",
        "dp": "distributed",
        "noise-multiplier": 1.0,
        "clip": 1.0,
        "server-momentum": 0.0,
        "seed": seed,
        "ledger": str(tmp_path / "flower-ledger.jsonl"),
        "output-dir": str(tmp_path / "out"),
    }
    run = {"num-server-rounds": 2, "final-model": str(tmp_path / "final.pt")}
    run.update({f"privagg.{k}": v for k, v in privagg.items()})
    with LocalDeployment(
        NODES,
        workdir=tmp_path / "deploy",
        env=env,
        node_config={"allow-seeded-run": True},  # the run is seeded to compare with the in-process run
        node_configs={k: {"data-dir": str(shards / f"client-{k}")} for k in range(NODES)},
        node_env={k: {"FCNN_AUDIT_LOG": str(audit / f"node-{k}.log")} for k in range(NODES)},
    ) as dep:
        try:
            dep.run(APP, run, timeout=600)
        finally:
            logs = "\n".join(f"--- {n}\n{t[-3000:]}" for n, t in dep.logs() if "error" in t.lower())
        assert (tmp_path / "final.pt").exists(), f"the ServerApp did not finish\n{logs}"

    # Each node opened its own shard, and only it; the server opened its test set and no shard.
    for k in range(NODES):
        opened = _opened(audit / f"node-{k}.log")
        assert opened == {shards / f"client-{k}" / "train.npz"}, (k, opened)
    assert _opened(audit / "server.log") == {data.resolve() / "test.npz"}
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [r["survivors"] for r in summary["rounds"]] == [[1, 2, 3, 4, 5]] * 2

    # The in-process run of the same task file, same seed: the same final model, bit for bit.
    inproc = subprocess.run(
        [
            *PRIVAGG,
            "run",
            "--task",
            str(TASK),
            "--clients",
            str(NODES),
            "--per-round",
            str(NODES),
            "--rounds",
            "2",
            "--seed",
            str(seed),
            "--dp",
            "distributed",
            "--noise-multiplier",
            "1",
            "--clip",
            "1",
            "--server-momentum",
            "0",
            "--out",
            str(tmp_path / "inproc"),
            "--ledger",
            str(tmp_path / "inproc-ledger.jsonl"),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env={**os.environ, "FASHION_CNN_DATA": str(data)},
    )
    assert inproc.returncode == 0, inproc.stdout[-3000:] + inproc.stderr[-3000:]
    flower_model: dict[str, Any] = torch.load(tmp_path / "final.pt")
    ref_model: dict[str, Any] = torch.load(tmp_path / "inproc" / "model.pt")
    assert flower_model.keys() == ref_model.keys()
    for name in ref_model:
        assert torch.equal(flower_model[name], ref_model[name]), name

    # The server's ledger audits, with the in-process run's epsilon.
    reports = []
    for ledger in ("flower-ledger.jsonl", "inproc-ledger.jsonl"):
        out = subprocess.run(
            [*PRIVAGG, "audit", str(tmp_path / ledger), "--json"], capture_output=True, text=True, timeout=120, cwd=REPO
        )
        assert out.returncode == 0, out.stdout + out.stderr
        reports.append(json.loads(out.stdout))
    assert reports[0]["verified"] is True and reports[0]["rounds"] == 2
    assert reports[0]["epsilon"] == pytest.approx(reports[1]["epsilon"], rel=1e-12)
