"""privagg bench utility, record mode: Opacus DP-SGD inside each client, calibrated on Opacus' accountant.

Oracles: Opacus' own accountant stepped one DP-SGD step at a time, Opacus' make_private
run on real client data (RecordDP), scipy's binomial tail, and the round loop's cohorts.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import create_accountant
from typer.testing import CliRunner

from fl_core.config import RunConfig
from fl_core.errors import ConfigError
from fl_core.utility_bench import (
    RECORD_DEFAULTS,
    RECORD_GRID,
    Mode,
    Split,
    SweepSpec,
    build_cells,
    calibrate_record_noise,
    default_hyper,
    grid_for,
    participation_bound,
    run_sweep,
)
from fl_core.utility_bench.calibrate import (
    cohort_schedule,
    record_epsilon,
    record_groups,
    record_mechanism,
    record_steps,
)
from fl_core.utility_bench.engine import load_cell_data

pytestmark = [
    pytest.mark.filterwarnings("ignore:Secure RNG turned off"),
    pytest.mark.filterwarnings("ignore:Optimal order"),
]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# 40 clients of about 36 digits each: 3 Poisson batches of 16 per epoch (sample rate 1/3), so
# the record accountant sees amplification by sampling, unlike the 1-2 records of the README sweep.
TINY = SweepSpec(
    dataset="digits",
    clients=40,
    per_round=20,
    epsilons=(4.0, 16.0),
    models=("logreg",),
    modes=(Mode.CENTRAL, Mode.RECORD),
    rounds=2,
    secure_sum="masking",
)


def _opacus_epsilon_stepwise(z: float, q: float, steps: int, delta: float, mechanism: str = "rdp") -> float:
    """Reference: Opacus' accountant charged one DP-SGD step at a time, as its optimizer hook does."""
    acc = create_accountant(mechanism=mechanism)
    for _ in range(steps):
        acc.step(noise_multiplier=z, sample_rate=q)
    return float(acc.get_epsilon(delta=delta))


def _digits_cfg(**changes: Any) -> RunConfig:
    base = RunConfig(
        dataset="digits",
        clients=40,
        rounds=6,
        sampling_rate=0.5,
        dp="none",
        secure_sum="plain",
        clip=1.0,
        local_epochs=2,
        batch_size=16,
        seed=0,
    )
    return base.replace(**changes)


# -- end to end ------------------------------------------------------------------


@pytest.fixture(scope="module")
def record_sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    out = tmp_path_factory.mktemp("record-sweep")
    first = run_sweep(TINY, out, workers=1, progress=False, command="test")
    second = run_sweep(TINY, out, workers=1, progress=False, command="test")
    return out, first, second


def test_record_sweep_writes_every_output(record_sweep: tuple[Path, dict[str, Any], dict[str, Any]]) -> None:
    out, first, second = record_sweep
    assert first["failed"] == [] and first["cells"]["ran"] == 5
    assert second["cells"] == {"total": 5, "resumed": 5, "ran": 0, "pending": 0}
    assert second["results"] == first["results"]
    for name in ("accuracy_vs_epsilon.png", "rounds.png", "cost.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC, name
    runs = list(csv.DictReader(open(out / "runs.csv", encoding="utf-8")))
    rec = [r for r in runs if r["mode"] == "record"]
    assert len(runs) == 5 and len(rec) == 2
    for r in rec:
        assert r["privacy_unit"] == "record" and r["status"] == "ok"
        assert r["secure_sum"] == "masking"  # the sweep's secure sum, not the plain one
        assert float(r["record_clip"]) == RECORD_DEFAULTS["record_clip"]
        assert float(r["epsilon_median"]) <= float(r["epsilon"])
        assert 0 < int(r["clients_trained"]) <= TINY.clients
        assert int(r["k_calibrated"]) <= int(r["k_star"]) <= TINY.rounds  # type: ignore[operator]
    rounds = list(csv.DictReader(open(out / "rounds.csv", encoding="utf-8")))
    assert sum(r["mode"] == "record" for r in rounds) == 2 * TINY.rounds  # type: ignore[operator]
    doc = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert {r["mode"] for r in doc["results"]} == {"central", "record"}
    report = (out / "report.md").read_text(encoding="utf-8")
    import opacus

    for needle in (
        "one record (training example) of one client",
        "client-level DP",
        f"Opacus {opacus.__version__} RDP accountant",
        "per-record gradient clip 1",
        "k* = ",
        "union bound",
        "exact maximum participation count",
        "## Record mode (record-level DP)",
        "| ε max over clients | ε median | clients trained |",
        "Poisson batches",
        "| logreg | record | 4 |",
    ):
        assert needle in report, needle


def test_record_epsilon_is_the_measured_one(record_sweep: tuple[Path, dict[str, Any], dict[str, Any]]) -> None:
    out, first, _ = record_sweep
    rec = [r for r in first["results"] if r["mode"] == "record"]
    assert [r["target_epsilon"] for r in rec] == [4.0, 16.0]
    assert rec[0]["noise_multiplier"] > rec[1]["noise_multiplier"] > 0
    doc = json.loads((out / "results.json").read_text(encoding="utf-8"))
    for run in (r for r in doc["runs"] if r["mode"] == "record"):
        level, cal = run["record_level"], run["calibration"]
        # The run's own Opacus report, not the target:
        assert run["epsilon"] == level["epsilon_max"]
        assert level["noise_multiplier"] == run["config"]["record_noise_multiplier"]
        # Calibrated on the seed's exact schedule: the worst client is the predicted one, and the
        # cohorts the run drew are the schedule's (same participation maximum).
        assert cal["source"] == "opacus-record" and cal["details"]["participation_rule"] == "exact"
        assert level["participations_max"] == cal["details"]["k_calibrated"]
        assert run["epsilon"] <= run["target_epsilon"]
        assert run["epsilon"] == pytest.approx(cal["predicted_epsilon"], rel=1e-5)
        # The per-round curve ends at the reported epsilon and never decreases.
        curve = [p["epsilon"] for p in run["rounds"]]
        assert curve[-1] == pytest.approx(run["epsilon"], rel=1e-12)
        assert curve == sorted(curve)


def test_record_calibrations_are_cached(
    record_sweep: tuple[Path, dict[str, Any], dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    out, _, _ = record_sweep
    saved = json.loads((out / "calibrations.json").read_text(encoding="utf-8"))
    assert sum(v["source"] == "opacus-record" for v in saved.values()) == 2
    from fl_core.utility_bench import engine

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("calibrated again instead of reading calibrations.json")

    monkeypatch.setattr(engine, "calibrate_record_noise", fail)
    monkeypatch.setattr(engine, "calibrate_noise", fail)
    cells = build_cells(TINY, store=out)
    assert sum(c.mode is Mode.RECORD for c in cells) == 2


def test_cli_record_json(tmp_path: Path) -> None:
    from fl_core.cli import app

    args = ["bench", "utility", "--clients", "40", "--per-round", "20", "--epsilons", "8", "--modes", "record"]
    args += ["--rounds", "1", "--secure-sum", "plain", "--workers", "1", "--out", str(tmp_path), "--json"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    obj = json.loads(res.output.strip().splitlines()[-1])
    assert 0.0 < obj["baseline_accuracy"] <= 1.0
    (r,) = obj["results"]
    assert r["mode"] == "record" and r["target_epsilon"] == 8.0
    assert 0.0 < r["epsilon"] <= 8.0 and 0.0 <= r["accuracy"] <= 1.0


# -- calibration against Opacus ---------------------------------------------------


@pytest.mark.parametrize("target", [0.5, 2.0, 8.0])
@pytest.mark.parametrize(("size", "rate"), [(1, 0.1), (36, 0.5), (60, 0.05)])
def test_record_calibration_is_tight_against_opacus(size: int, rate: float, target: float) -> None:
    # Unseeded: every client is calibrated for the union bound's k*.
    cfg = _digits_cfg(clients=200, rounds=20, sampling_rate=rate, seed=None)
    rel_tol = 1e-3
    cal = calibrate_record_noise(cfg, target, sizes=[size] * cfg.clients, rel_tol=rel_tol)
    d = cal.details
    k_star = participation_bound(cfg.clients, rate, cfg.rounds)
    assert d["participation_rule"] == "union-bound" and d["k_calibrated"] == d["k_star"] == k_star
    batches = math.ceil(size / cfg.batch_size)
    steps = cfg.local_epochs * batches * k_star
    assert d["max_steps"] == steps
    z = cal.noise_multiplier
    ref = _opacus_epsilon_stepwise(z, 1 / batches, steps, cfg.delta)
    assert ref <= target
    assert cal.predicted_epsilon == pytest.approx(ref, rel=1e-9)
    # Minimal: the bisection's bracket is within rel_tol, so a little less noise misses the target.
    assert _opacus_epsilon_stepwise(z / (1 + rel_tol), 1 / batches, steps, cfg.delta) > target


def test_exact_schedule_calibration_takes_the_worst_client() -> None:
    cfg = _digits_cfg()
    sizes = [1 + (i % 50) for i in range(cfg.clients)]  # several sample rates
    cal = calibrate_record_noise(cfg, 3.0, sizes=sizes)
    counts = [0] * cfg.clients
    for members in cohort_schedule(cfg):
        for c in members:
            counts[c - 1] += 1
    assert cal.details["participation_rule"] == "exact"
    assert cal.details["k_calibrated"] == cal.details["k_max"] == max(counts)
    # Reference: every client's own Opacus accountant, charged step by step.
    per_client = []
    for n, k in zip(sizes, counts, strict=True):
        if k:
            b = math.ceil(n / cfg.batch_size)
            per_client.append(
                _opacus_epsilon_stepwise(cal.noise_multiplier, 1 / b, cfg.local_epochs * b * k, cfg.delta)
            )
    assert max(per_client) == pytest.approx(cal.predicted_epsilon, rel=1e-9)
    assert max(per_client) <= 3.0


@pytest.mark.parametrize(("size", "batch", "epochs"), [(1, 16, 2), (16, 16, 1), (17, 16, 2), (36, 16, 2), (49, 1, 1)])
def test_record_steps_match_opacus_make_private(size: int, batch: int, epochs: int) -> None:
    """The steps and sample rate assumed per participation are those Opacus charges in the built-in train_fn."""
    from torch.utils.data import TensorDataset

    from dp.randomness import SeededRandomSource
    from fl_core.models import build_model
    from fl_core.record_dp import RecordDP, RecordDPConfig
    from fl_core.training import make_sgd_train_fn

    torch.manual_seed(0)
    data = TensorDataset(torch.rand(size, 1, 8, 8), torch.randint(0, 10, (size,)))
    record = RecordDP(RecordDPConfig(noise_multiplier=1.3, max_grad_norm=1.0), rng=SeededRandomSource(1))
    train = record.wrap(make_sgd_train_fn(epochs=epochs, lr=0.1, batch_size=batch, record_dp=True))
    model = build_model("logreg", (1, 8, 8), 10)
    participations = 3
    for _ in range(participations):
        train(model, data)
    q, per = record_steps(size, batch_size=batch, epochs=epochs)
    assert record.steps(id(data)) == per * participations
    groups = record_groups([size], [participations], batch_size=batch, epochs=epochs)
    assert record_epsilon(1.3, groups, 1e-5, "rdp") == pytest.approx(record.epsilon(id(data)), rel=1e-12)
    assert q == pytest.approx(1 / math.ceil(size / batch))


def test_record_dp_epsilons_computes_each_history_once_and_right() -> None:
    from fl_core.record_dp import RecordDP, RecordDPConfig

    record = RecordDP(RecordDPConfig(noise_multiplier=1.1, max_grad_norm=1.0))
    hist = {"a": [[1.1, 0.25, 8]], "b": [[1.1, 0.25, 8]], "c": [[1.1, 0.25, 16]], "d": [[1.1, 0.5, 8]]}
    record.load_state_dict(hist)
    calls = []
    original = record.epsilon

    def counting(client: Any) -> float:
        calls.append(client)
        return original(client)

    record.epsilon = counting  # type: ignore[method-assign]
    eps = record.epsilons()
    assert len(calls) == 3  # a and b share one history
    for k, h in hist.items():
        acc = create_accountant(mechanism="rdp")
        acc.history = [tuple(x) for x in h]
        assert eps[k] == float(acc.get_epsilon(delta=1e-5))
    assert eps["a"] == eps["b"] < eps["c"]


def test_seeded_record_run_is_reproducible_with_fresh_data_objects() -> None:
    """Opacus' generators are seeded per client id, not per object identity (which differs per process)."""
    from fl_core.runner import execute, load_federated_data

    cfg = _digits_cfg(rounds=2, record_noise_multiplier=1.5)
    runs = [execute(cfg, data=load_federated_data(cfg)).to_json() for _ in range(2)]
    assert runs[0]["accuracy"] == runs[1]["accuracy"] and runs[0]["loss"] == runs[1]["loss"]
    assert runs[0]["record_level"] == runs[1]["record_level"]


def test_record_mechanism_is_the_runners() -> None:
    from fl_core.runner import build_federation

    cfg = _digits_cfg(record_noise_multiplier=2.0, rounds=1)
    _fed, _data, extra = build_federation(cfg, load_cell_data(cfg, Split.TEST))
    assert extra["_record_dp"].config.accountant == record_mechanism(cfg)


def test_cohort_schedule_is_the_round_loops() -> None:
    from fl_core.runner import build_federation

    for cfg in (_digits_cfg(rounds=4), _digits_cfg(rounds=3, sampling_rate=None, per_round=7, seed=5)):
        fed, _data, _extra = build_federation(cfg, load_cell_data(cfg, Split.TEST))
        ran = [res.cohort for res in fed.rounds(cfg.rounds)]
        fed.close()
        assert ran == cohort_schedule(cfg)


# -- the union bound ---------------------------------------------------------------


def _k_star_scipy(n: int, q: float, rounds: int, fail: float) -> int:
    from scipy.stats import binom

    return next(k for k in range(rounds + 1) if n * binom.sf(k, rounds, q) <= fail)


def test_participation_bound_of_the_readme_sweep() -> None:
    assert participation_bound(1000, 0.1, 30) == _k_star_scipy(1000, 0.1, 30, 1e-3) == 13
    assert participation_bound(1000, 0.05, 40, fail_prob=1e-3) == _k_star_scipy(1000, 0.05, 40, 1e-3)
    assert participation_bound(10, 1.0, 7) == 7


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(1, 100_000),
    q=st.floats(1e-4, 1.0),
    rounds=st.integers(1, 300),
    fail=st.floats(1e-9, 0.5),
)
def test_participation_bound_matches_scipy(n: int, q: float, rounds: int, fail: float) -> None:
    from scipy.stats import binom

    k = participation_bound(n, q, rounds, fail_prob=fail)
    ref = _k_star_scipy(n, q, rounds, fail)
    if k != ref:  # only at a floating-point tie with the budget
        edge = min(k, ref)
        assert n * binom.sf(edge, rounds, q) == pytest.approx(fail, rel=1e-9)
    # The guarantee itself: P[any of n clients exceeds k] <= n * P[Bin > k] <= fail (up to ties).
    assert n * binom.sf(k, rounds, q) <= fail * (1 + 1e-9)


# -- defaults, grid, tuning --------------------------------------------------------


def test_record_defaults_and_grid() -> None:
    h = default_hyper("digits", "logreg", 2.0, Mode.RECORD)
    assert h.record_clip == RECORD_DEFAULTS["record_clip"] and h.to_dict()["record_clip"] == h.record_clip
    assert default_hyper("digits", "logreg", 2.0).record_clip is None
    assert "record_clip" not in default_hyper("digits", "logreg", 2.0).to_dict()
    grid = grid_for("digits", "logreg", Mode.RECORD)
    assert len(grid) == len(RECORD_GRID["record_clip"]) * len(RECORD_GRID["server_lr"]) * len(
        RECORD_GRID["server_momentum"]
    )
    assert {g.record_clip for g in grid} == set(RECORD_GRID["record_clip"])
    cells = build_cells(dataclasses.replace(TINY, modes=(Mode.RECORD,), epsilons=(8.0,), secure_sum="plain"))
    rec = [c for c in cells if c.mode is Mode.RECORD]
    assert len(rec) == 1 and rec[0].config.dp == "none" and rec[0].config.noise_multiplier is None
    assert rec[0].config.record_noise_multiplier is not None
    assert rec[0].config.record_clip == RECORD_DEFAULTS["record_clip"]


def test_record_calibration_is_per_seed() -> None:
    spec = dataclasses.replace(TINY, modes=(Mode.RECORD,), epsilons=(8.0,), seeds=2, rounds=6, secure_sum="plain")
    cells = [c for c in build_cells(spec) if c.mode is Mode.RECORD]
    assert [c.seed for c in cells] == [0, 1]
    for c in cells:
        counts = [0] * spec.clients
        for members in cohort_schedule(c.config):
            for m in members:
                counts[m - 1] += 1
        assert c.calibration["details"]["k_max"] == max(counts)


def test_tune_searches_the_record_grid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fl_core.utility_bench import spec as spec_mod
    from fl_core.utility_bench import tune

    monkeypatch.setitem(spec_mod.GRID, "clip_factor", (1.0,))
    monkeypatch.setitem(spec_mod.GRID, "server_lr", (1.0,))
    monkeypatch.setitem(spec_mod.GRID, "server_momentum", (0.5,))
    monkeypatch.setitem(spec_mod.RECORD_GRID, "record_clip", (0.25, 4.0))
    monkeypatch.setitem(spec_mod.RECORD_GRID, "server_lr", (1.0,))
    monkeypatch.setitem(spec_mod.RECORD_GRID, "server_momentum", (0.5,))
    spec = dataclasses.replace(TINY, modes=(Mode.RECORD,), epsilons=(16.0,), rounds=1, secure_sum="plain")
    chosen, runs = tune(spec, tmp_path, workers=1, progress=False)
    rec = [r for r in runs if r["mode"] == "record"]
    assert len(runs) == 3 and sorted(r["config"]["record_clip"] for r in rec) == [0.25, 4.0]
    best = max(rec, key=lambda r: r["accuracy"])
    assert chosen[("logreg", "record", 16.0)].record_clip == best["config"]["record_clip"]


# -- errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "match", "option"),
    [
        ((0, 0.1, 10), "clients", "clients"),
        ((10, 0.1, 0), "rounds", "rounds"),
        ((10, 0.0, 10), "sampling rate", "sampling_rate"),
        ((10, 1.5, 10), "sampling rate", "sampling_rate"),
    ],
)
def test_participation_bound_errors(args: tuple[int, float, int], match: str, option: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        participation_bound(*args)
    assert info.value.option == option


@pytest.mark.parametrize("fail", [0.0, 1.0, -0.1, math.nan])
def test_participation_bound_rejects_a_bad_failure_probability(fail: float) -> None:
    with pytest.raises(ConfigError, match="fail_prob") as info:
        participation_bound(10, 0.1, 10, fail_prob=fail)
    assert info.value.option == "fail_prob"


def test_unseeded_run_has_no_schedule() -> None:
    with pytest.raises(ConfigError, match="CSPRNG") as info:
        cohort_schedule(_digits_cfg(seed=None))
    assert info.value.option == "seed"


def test_record_calibration_errors() -> None:
    cfg = _digits_cfg()
    with pytest.raises(ConfigError, match="entries for 40 clients") as info:
        calibrate_record_noise(cfg, 1.0, sizes=[10] * 39)
    assert info.value.option == "clients"
    with pytest.raises(ConfigError, match="no client holds a record"):
        calibrate_record_noise(cfg, 1.0, sizes=[0] * 40)
    with pytest.raises(ConfigError, match="positive number"):
        calibrate_record_noise(cfg, 0.0, sizes=[10] * 40)
