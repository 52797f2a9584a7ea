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


def test_consistency_drop_is_offered_with_identity_keys_only() -> None:
    """With identity keys the round has a consistency check and clients can vanish right after it:
    still counted in the sum (their masked input arrived), absent from unmasking. Without identity
    keys there is no such stage, and the option is refused instead of benchmarking no dropout."""
    out = bench_secagg(
        clients=12, dim=300, dropout=0.2, graph="complete", drop_stage="consistency", identity_keys=True, seed=1
    )
    assert out["verified"] is True and out["error"] is None
    assert out["dropped"] == 2 and out["survivors"] == 12
    assert out["stages"] == ["advertise-keys", "share-keys", "masked-input", "consistency-check", "unmasking"]
    assert set(out["server_stage_cpu_s"]) == set(out["stages"])
    with pytest.raises(ValueError, match="'consistency' needs identity keys.*no consistency-check stage"):
        bench_secagg(clients=12, dim=300, dropout=0.2, graph="complete", drop_stage="consistency", seed=1)


@pytest.mark.parametrize("identity_keys", [False, True])
def test_masked_input_drop_misses_unmasking_in_both_variants(identity_keys: bool) -> None:
    out = bench_secagg(clients=12, dim=300, dropout=0.2, graph="complete", identity_keys=identity_keys, seed=1)
    assert out["verified"] is True and out["survivors"] == 12
    assert len(out["stages"]) == (5 if identity_keys else 4) and out["stages"][-1] == "unmasking"
    assert ("consistency-check" in out["server_stage_cpu_s"]) is identity_keys


def test_cli_prints_one_json_object() -> None:
    res = CliRunner().invoke(
        app, ["bench", "secagg", "--clients", "6", "--dim", "64", "--dropout", "0.2", "--graph", "complete", "--json"]
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["verified"] is True and out["clients"] == 6 and out["graph"] == "complete"


@pytest.mark.parametrize(
    "args",
    [["--drop-stage", "never"], ["--dropout", "1.5"], ["--graph", "ring"], ["--drop-stage", "consistency"]],
)
def test_cli_rejects_bad_options(args: list[str]) -> None:
    res = CliRunner().invoke(app, ["bench", "secagg", "--clients", "6", "--dim", "8", *args])
    assert res.exit_code == 2


def test_cli_consistency_drop_needs_identity_keys() -> None:
    base = ["bench", "secagg", "--clients", "6", "--dim", "8", "--dropout", "0.2", "--graph", "complete"]
    res = CliRunner().invoke(app, [*base, "--drop-stage", "consistency"])
    assert res.exit_code == 2 and "needs identity keys" in res.output
    res = CliRunner().invoke(app, [*base, "--drop-stage", "consistency", "--identity-keys", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["verified"] is True and out["dropped"] == 1 and out["survivors"] == 6
