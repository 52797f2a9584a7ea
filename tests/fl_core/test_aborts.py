"""Aborted rounds do not stop training: the next attempt draws a fresh cohort, and the run goes on.

Before, round r's cohort was cached: retrying drew the same too-small cohort and aborted
again, ``fed.rounds()`` stopped at the first abort, and the CLI died at round 1.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from typer.testing import CliRunner

from dp.ledger import verify_ledger
from dp.randomness import SeededRandomSource
from fl_core.cli import app
from fl_core.config import RunConfig
from fl_core.errors import RoundFailedError, TooManyAbortsError
from fl_core.federation import Federation, round_label
from fl_core.params import ParamCodec
from fl_core.runner import execute
from fl_core.sampling import Sampler
from fl_core.task import Task
from secagg import PlainSum, RingSpec

runner = CliRunner()


def _sets(n: int) -> list[TensorDataset]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        x = torch.randn(8, 3, generator=g)
        out.append(TensorDataset(x, (x[:, 0] > 0).long()))
    return out


def _loop(model: nn.Module, data: TensorDataset) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    for x, y in DataLoader(data, batch_size=4):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def _fed(seed: int, *, min_survivors: int, clients: int = 20, rate: float = 0.2) -> Federation:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    dim = ParamCodec(model).dim
    return Federation(
        model, _loop, _sets(clients), rng=SeededRandomSource(seed), sampler=Sampler.poisson(clients, rate),
        secure_sum=PlainSum(RingSpec(32), dim, min_survivors=min_survivors),
    )


def _first_aborting_seed(min_survivors: int) -> int:
    for seed in range(200):
        if len(_fed(seed, min_survivors=min_survivors).cohort_of(1).members) < min_survivors:
            return seed
    raise AssertionError("no seed draws a small first cohort")


def test_after_an_abort_the_next_attempt_draws_a_fresh_cohort():
    seed = _first_aborting_seed(4)
    fed = _fed(seed, min_survivors=4)
    before = ParamCodec(fed.model).flatten(fed.model).copy()
    first = fed.cohort_of(1)
    with pytest.raises(RoundFailedError, match="round 1 aborted"):
        fed.run_round()
    assert fed.round == 0 and fed.attempts == {1: 1} and fed.optimizer.velocity is None
    assert np.array_equal(ParamCodec(fed.model).flatten(fed.model), before)
    second = fed.cohort_of(1)
    # The old code cached round 1's draw and would hand back `first` again, forever.
    assert second.members != first.members
    assert second == fed.sampler.sample(SeededRandomSource(seed).spawn(f"sample/{round_label(1, 1)}"))
    assert fed.begin_round().attempt == 1 and fed._label(1) == "1~1"
    aborted = fed.aborts[-1]
    assert aborted.aborted and aborted.round == 1 and aborted.attempt == 0 and aborted.cohort == first.members
    assert "survivors" in aborted.reason or "inputs received" in aborted.reason


def test_rounds_goes_on_after_aborts_and_yields_them():
    seed = _first_aborting_seed(4)
    fed = _fed(seed, min_survivors=4)
    results = list(fed.rounds(5))
    committed = [r for r in results if not r.aborted]
    assert [r.round for r in committed] == [1, 2, 3, 4, 5]
    assert results[0].aborted and sum(r.aborted for r in results) == len(fed.aborts) >= 1
    assert fed.attempts == {}  # committed rounds forget their counters


def test_too_many_consecutive_aborts_stop_with_a_typed_error():
    fed = _fed(0, min_survivors=15)
    before = ParamCodec(fed.model).flatten(fed.model).copy()
    seen = []
    with pytest.raises(TooManyAbortsError, match="3 consecutive attempts of round 1 aborted.*--min-survivors") as e:
        for res in fed.rounds(2, max_consecutive_aborts=3):
            seen.append(res)
    assert e.value.aborts == 3 and e.value.round == 1 and len(seen) == 3 and all(r.aborted for r in seen)
    assert len({r.cohort for r in seen}) == 3  # three different draws
    assert np.array_equal(ParamCodec(fed.model).flatten(fed.model), before)


def test_cli_small_poisson_federation_with_min_survivors_keeps_training(tmp_path):
    # Expected cohort 5, min survivors 4: about one round in four aborts. (The noise is given: the
    # default, sized for the clients' own limit, refuses a federation this small.)
    res = runner.invoke(app, ["run", "--clients", "20", "--sampling-rate", "0.25", "--min-survivors", "4",
                              "--noise-multiplier", "1", "--client-max-epsilon", "inf", "--rounds", "8", "--seed", "3",
                              "--out", str(tmp_path / "run"), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output.strip().splitlines()[-1])
    assert out["rounds_completed"] == 8 and out["rounds_aborted"] >= 1
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    aborted = [m for m in metrics if m["status"] == "aborted"]
    assert len(aborted) == out["rounds_aborted"] and all(m["reason"] for m in aborted)
    assert verify_ledger(tmp_path / "run" / "ledger.jsonl").rounds == 8  # aborts charge nothing
    assert len(out["per_round_accuracy"]) == 8


def test_cli_exits_3_after_too_many_consecutive_aborts_and_leaves_no_ledger(tmp_path):
    ledger = tmp_path / "l.jsonl"
    res = runner.invoke(app, ["run", "--clients", "20", "--sampling-rate", "0.2", "--min-survivors", "15",
                              "--rounds", "2", "--max-consecutive-aborts", "3", "--ledger", str(ledger), "--json",
                              "--seed", "1"])  # unseeded, a draw is empty 1.2% of the time: a skip, not an abort
    assert res.exit_code == 3, res.output
    assert "3 consecutive attempts of round 1 aborted" in res.output and "--max-consecutive-aborts" in res.output
    assert not ledger.exists()


def test_aborts_after_committed_rounds_end_with_a_summary_and_failure(tmp_path):
    calls = {"n": 0}

    def flaky(model, data):
        calls["n"] += 1
        if calls["n"] > 8:  # from round 3 on, every client's training fails
            raise RuntimeError("dataset server down")
        _loop(model, data)

    cfg = RunConfig(clients=4, per_round=4, rounds=5, dp="none", secure_sum="plain", seed=0,
                    max_consecutive_aborts=2)
    summary = execute(cfg, data=Task.from_objects(nn.Linear(3, 2), flaky, _sets(4)), out=tmp_path / "run")
    out = summary.to_json()
    assert out["rounds_completed"] == 2 and out["rounds_aborted"] == 2
    assert "2 consecutive attempts of round 3 aborted" in out["failure"] and "dataset server down" in out["failure"]
    assert (tmp_path / "run" / "model.pt").exists()
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["rounds_aborted"] == 2


def test_record_mode_reports_epsilon_by_client_id_and_warns_once(tmp_path):
    from fl_core.record_dp import RecordRNGWarning

    cfg = RunConfig(clients=6, per_round=3, rounds=2, dp="none", secure_sum="plain", seed=1,
                    record_noise_multiplier=1.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = execute(cfg)
    rng_warnings = [w for w in caught if issubclass(w.category, RecordRNGWarning) or "Secure RNG" in str(w.message)]
    assert len(rng_warnings) == 1 and issubclass(rng_warnings[0].category, RecordRNGWarning)
    assert all(r.epsilon is not None and r.epsilon > 0 for r in summary.results)
    assert all(r.record_epsilon == r.epsilon for r in summary.results)
    out = summary.to_json()
    assert out["epsilon"] == out["record_level"]["epsilon_max"] and out["delta"] == cfg.delta
    trained = {c for r in summary.results for c in r.cohort}
    fed_report_keys = set(out["record_level"].keys())
    assert "per_client" not in fed_report_keys  # summarised; the keys are checked on the RecordDP itself
    from fl_core.runner import build_federation

    fed, _, extra = build_federation(cfg)
    fed.fit(1)
    keys = set(extra["_record_dp"].report()["record_level"]["per_client"])
    assert keys == {str(c) for c in fed.history[0].cohort}  # client ids, not Python object ids
    assert trained


def test_device_path_runs_on_cpu_and_cuda_without_a_gpu_is_refused(monkeypatch):
    from fl_core.errors import ConfigError
    from fl_core.runner import resolve_device

    seen = []

    def loop(model, data):
        seen.append(next(model.parameters()).device.type)
        _loop(model, data)

    task = Task.from_objects(nn.Linear(3, 2), loop, _sets(4))
    summary = execute(RunConfig(clients=4, per_round=2, rounds=1, dp="none", secure_sum="plain", device="cpu"),
                      data=task)
    assert seen == ["cpu", "cpu"] and summary.to_json()["device"] == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    with pytest.raises(ConfigError, match="torch sees no CUDA device"):
        resolve_device("cuda")
    res = runner.invoke(app, ["run", "--rounds", "1", "--device", "cuda"])
    assert res.exit_code == 2 and "no CUDA device" in res.output
    res = runner.invoke(app, ["run", "--rounds", "1", "--device", "tpu"])
    assert res.exit_code == 2 and "--device 'tpu' is not valid" in res.output
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_cuda_trains_on_the_gpu_and_keeps_dp_on_the_cpu(tmp_path):
    seen = []

    def loop(model, data):
        seen.append(next(model.parameters()).device.type)
        _loop(model, data)

    model = nn.Linear(3, 2)
    summary = execute(RunConfig(clients=4, per_round=2, rounds=2, dp="central", secure_sum="masking", device="cuda",
                                ledger=str(tmp_path / "l.jsonl")), data=Task.from_objects(model, loop, _sets(4)))
    assert set(seen) == {"cuda"} and summary.rounds_completed == 2
    assert next(model.parameters()).device.type == "cpu"


def test_version_and_help_width():
    from fl_core.cli import version

    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"privagg {version()}" and version() != ""
    res = runner.invoke(app, ["run", "--help"])
    assert res.exit_code == 0
    assert "[logreg]" in res.output  # default hints are printed, not eaten as markup
    lines = res.output.splitlines()
    assert any("Exit 3 after this many aborts in a row [10]." in x for x in lines)
    assert any(len(x) > 80 for x in lines)
