"""The per-round CPU record: every phase of a round is charged, and the run JSON sums them."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset
from typer.testing import CliRunner

from dp.randomness import SeededRandomSource
from fl_core.cli import app
from fl_core.federation import Federation
from fl_core.pipeline import PHASES, CpuTimer


def test_cpu_timer_charges_phases_and_starts_afresh() -> None:
    timer = CpuTimer()
    with timer.phase("encode"):
        sum(i * i for i in range(20000))
    timer.add("mask", 0.25)
    timer.add("mask", 0.5)
    first = timer.take()
    assert first["mask"] == 0.75 and first["encode"] > 0.0
    assert timer.take() == {}


def _train(model: nn.Module, data: TensorDataset) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = data.tensors
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def test_round_result_charges_each_phase_of_a_masked_round() -> None:
    g = torch.Generator().manual_seed(0)
    data = []
    for _ in range(5):
        x = torch.randn(8, 3, generator=g)
        data.append(TensorDataset(x, (x[:, 0] > 0).long()))
    fed = Federation(nn.Linear(3, 2), _train, data, rng=SeededRandomSource(3), secure_sum="masking")
    res = fed.run_round()
    assert {"train", "clip", "encode", "mask", "unmask", "decode"} <= res.cpu_s.keys() <= set(PHASES)
    assert all(v >= 0.0 for v in res.cpu_s.values()) and res.cpu_s["mask"] > 0.0
    assert fed.run_round().cpu_s.keys() == res.cpu_s.keys()  # each round its own record


def test_run_json_reports_cpu_by_phase(tmp_path: Path) -> None:
    args = ["run", "--json", "--rounds", "2", "--clients", "10", "--seed", "1", "--sampling-rate", "0.5"]
    out = CliRunner().invoke(app, [*args, "--ledger", str(tmp_path / "ledger.jsonl")])
    assert out.exit_code == 0, out.output
    summary = json.loads(out.output.strip().splitlines()[-1])
    phases = summary["cpu_s_by_phase"]
    assert {"train", "clip", "noise", "encode", "mask", "unmask", "decode", "account"} <= phases.keys()
    assert all(v >= 0.0 for v in phases.values())


def test_run_limits_blas_threads_to_the_configured_threads() -> None:
    """A multithreaded BLAS spins on a loaded machine: a run's numpy BLAS uses ``threads`` threads."""
    from threadpoolctl import threadpool_info

    from fl_core.config import RunConfig
    from fl_core.runner import build_federation

    build_federation(RunConfig(clients=10, rounds=1, dp="none", secure_sum="plain", threads=1))
    assert all(p["num_threads"] == 1 for p in threadpool_info() if p["user_api"] == "blas")
