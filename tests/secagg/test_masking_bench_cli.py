"""``privagg bench secagg``: the JSON fields the issue asks for, correctness flag, errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fl_core.cli import app
from fl_core.commands.bench_secagg import bench_secagg

REQUIRED = {
    "total_cpu_s",
    "server_cpu_s",
    "client_cpu_s_median",
    "bytes_per_client",
    "verified",
    "server_floor_cpu_s",
    "upload_bytes_per_parameter",
    "machine",
}


@pytest.mark.parametrize("graph", ["complete", "sparse"])
@pytest.mark.parametrize("drop_stage", ["masked-input", "sharing"])
def test_bench_function_reports_and_verifies(graph: str, drop_stage: str) -> None:
    out = bench_secagg(clients=12, dim=300, dropout=0.2, graph=graph, drop_stage=drop_stage, seed=1)
    assert REQUIRED <= out.keys()
    assert out["verified"] is True and out["error"] is None
    assert out["dropped"] == 2
    survivors = 12 if drop_stage == "masked-input" else 10
    assert out["survivors"] == survivors
    assert out["total_cpu_s"] >= out["server_cpu_s"] > 0
    assert {"cpu", "logical_cpus", "python", "numpy", "cryptography"} <= out["machine"].keys()


def test_cli_prints_one_json_object() -> None:
    res = CliRunner().invoke(
        app, ["bench", "secagg", "--clients", "6", "--dim", "64", "--dropout", "0.2", "--graph", "complete", "--json"]
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["verified"] is True and out["clients"] == 6 and out["graph"] == "complete"


@pytest.mark.parametrize(
    "args",
    [["--drop-stage", "never"], ["--dropout", "1.5"], ["--graph", "ring"]],
)
def test_cli_rejects_bad_options(args: list[str]) -> None:
    res = CliRunner().invoke(app, ["bench", "secagg", "--clients", "6", "--dim", "8", *args])
    assert res.exit_code == 2
