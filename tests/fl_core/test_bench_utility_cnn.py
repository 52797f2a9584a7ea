"""The CNN rows of privagg bench utility: their spec, populations, seed aggregation and both epsilons."""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fl_core.errors import ConfigError
from fl_core.utility_bench import Mode, SweepSpec, build_cells, default_hyper, run_cells, run_sweep, summarize
from fl_core.utility_bench.engine import load_cell_data
from fl_core.utility_bench.spec import base_options

FASHION_CNN = SweepSpec(
    dataset="fashion-mnist",
    clients=6000,
    per_round=600,
    epsilons=(2.0,),
    models=("cnn",),
    modes=(Mode.DISTRIBUTED,),
)


def test_cnn_row_trains_with_distributed_noise_inside_secagg_plus() -> None:
    dp = default_hyper("fashion-mnist", "cnn", 2.0, Mode.DISTRIBUTED)
    base = base_options("fashion-mnist", "cnn")
    assert dp.clip == base["clip"]
    spec = dataclasses.replace(FASHION_CNN, modes=())  # baselines only: nothing to calibrate
    (baseline,) = build_cells(spec)
    assert baseline.mode is Mode.NONE and baseline.config.dp == "none"
    # The baseline has its own knobs: a clip far above the private rows' (it never binds, see
    # the end-to-end test below), so the gap to it measures privacy and not a shared clip.
    assert baseline.hyper.clip >= 100 * dp.clip
    assert baseline.config.clip == baseline.hyper.clip
    assert baseline.config.model == "cnn" and baseline.config.clients == 6000
    assert baseline.config.sampling_rate == pytest.approx(0.1)


def test_the_fashion_cnn_baseline_is_clip_free_in_practice(tmp_path: Path) -> None:
    # A few rounds of the baseline's own configuration on the 6,000 x 10 population: no update
    # reaches its clip, so the non-private number is not held back by one.
    spec = dataclasses.replace(FASHION_CNN, modes=(), per_round=8, rounds=3)
    cells = build_cells(spec)
    (rec,), _ = run_cells(cells, tmp_path, workers=1, progress=False)
    assert rec["status"] == "ok", rec.get("error")
    assert [r["clipped_fraction"] for r in rec["rounds"]] == [0.0, 0.0, 0.0]
    assert rec["config"]["clip"] == cells[0].hyper.clip


@pytest.mark.parametrize("partition", ["iid", "dirichlet-balanced"])
def test_populations_reach_the_cells(partition: str) -> None:
    spec = dataclasses.replace(FASHION_CNN, modes=(), clients=1000, partition=partition, alpha=0.3)
    (cell,) = build_cells(spec)
    assert cell.config.partition == partition and cell.config.alpha == 0.3
    data = load_cell_data(cell.config, cell.split)
    assert sorted(set(data.client_sizes)) == [60]  # 1,000 x 60 under both partitions
    assert sum(data.client_sizes) == 60_000


def test_population_options_are_part_of_the_cell_identity() -> None:
    a = build_cells(dataclasses.replace(FASHION_CNN, modes=()))[0]
    b = build_cells(dataclasses.replace(FASHION_CNN, modes=(), partition="dirichlet-balanced"))[0]
    c = build_cells(dataclasses.replace(FASHION_CNN, modes=(), partition="dirichlet-balanced", alpha=0.1))[0]
    assert len({a.cell_id, b.cell_id, c.cell_id}) == 3


@pytest.mark.parametrize(
    ("changes", "match"),
    [({"partition": "zipf"}, "--partition"), ({"alpha": 0.0}, "--alpha"), ({"alpha": math.nan}, "--alpha")],
)
def test_population_option_errors(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        dataclasses.replace(FASHION_CNN, **changes)


def _rec(mode: str, eps: float | None, seed: int, acc: float, server: float | None, public: float | None) -> dict:
    return {
        "cell_id": f"{mode}-{eps}-{seed}",
        "status": "ok",
        "model": "cnn",
        "mode": mode,
        "target_epsilon": eps,
        "epsilon": public,
        "epsilon_vs_server": server,
        "epsilon_vs_public": public,
        "epsilon_enforced_on": None if mode == "none" else "public",
        "seed": seed,
        "accuracy": acc,
        "config": {"noise_multiplier": 1.0, "clip": 0.3, "server_lr": 2.0, "server_momentum": 0.9},
        "rounds": [],
    }


def test_three_seeds_give_mean_and_sample_standard_deviation() -> None:
    accs, base = [0.851, 0.843, 0.862], [0.871, 0.874, 0.866]
    servers, publics = [9.1, 11.4, 10.2], [1.93, 1.95, 1.91]
    recs = [_rec("none", None, s, a, None, None) for s, a in enumerate(base)]
    recs += [_rec("distributed", 2.0, s, a, e, p) for s, (a, e, p) in enumerate(zip(accs, servers, publics))]
    out = summarize(recs)
    b = out["baselines"]["cnn"]
    assert b["accuracy"] == pytest.approx(statistics.fmean(base)) and b["seeds"] == 3
    assert b["accuracy_std"] == pytest.approx(statistics.stdev(base))
    (row,) = out["results"]
    assert row["seeds"] == 3
    assert row["accuracy"] == pytest.approx(statistics.fmean(accs))
    assert row["accuracy_std"] == pytest.approx(statistics.stdev(accs))
    # Both epsilons, each the largest over the seeds (the guarantee every seed's run holds).
    assert row["epsilon_vs_server"] == max(servers) and row["epsilon_vs_public"] == max(publics)
    assert row["gap_to_baseline"] == pytest.approx(statistics.fmean(base) - statistics.fmean(accs))


TINY_CNN = SweepSpec(
    dataset="digits",
    clients=40,
    per_round=20,
    epsilons=(8.0,),
    models=("cnn",),
    modes=(Mode.DISTRIBUTED,),
    rounds=2,
    seeds=2,
    secure_sum="masking",
    partition="dirichlet-balanced",
)


def test_tiny_cnn_sweep_end_to_end_through_the_cli(tmp_path: Path) -> None:
    from fl_core.cli import app

    args = [
        "bench", "utility", "--dataset", "digits", "--model", "cnn", "--clients", "40", "--per-round", "20",
        "--epsilons", "8", "--modes", "distributed", "--rounds", "2", "--seeds", "2",
        "--partition", "dirichlet-balanced", "--alpha", "0.5", "--workers", "1", "--out", str(tmp_path), "--json",
    ]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output.strip().splitlines()[-1])
    assert 0.0 < doc["baseline_accuracy"] <= 1.0 and doc["cells"]["total"] == 4
    (row,) = doc["results"]
    assert row["model"] == "cnn" and row["mode"] == "distributed" and row["seeds"] == 2
    assert row["secure_sum"] == "masking"
    assert row["accuracy_std"] >= 0.0
    # Both epsilons are numbers in every row; the target holds against model users.
    assert row["epsilon_enforced_on"] == "public"
    assert row["epsilon"] == row["epsilon_vs_public"] <= 8.0 * 1.10
    assert row["epsilon_vs_server"] >= row["epsilon_vs_public"] > 0
    spec = json.loads((tmp_path / "results.json").read_text())["spec"]
    assert spec["partition"] == "dirichlet-balanced" and spec["alpha"] == 0.5
    runs = json.loads((tmp_path / "results.json").read_text())["runs"]
    private = [r for r in runs if r["mode"] == "distributed"]
    assert len(private) == 2 and {r["seed"] for r in private} == {0, 1}
    for r in private:
        assert r["epsilon_vs_server"] >= r["epsilon_vs_public"] > 0
    # The same options again: every cell is resumed.
    again = run_sweep(TINY_CNN, tmp_path, workers=1, progress=False, command="test")
    assert again["cells"]["resumed"] == 4 and again["cells"]["ran"] == 0


def _load_cnn_script() -> Any:
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "utility_cnn.py"
    spec = importlib.util.spec_from_file_location("utility_cnn_script", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_fashion_cnn_baseline_has_its_own_clip_free_knobs() -> None:
    base = default_hyper("fashion-mnist", "cnn", None)
    dp = default_hyper("fashion-mnist", "cnn", 2.0, Mode.DISTRIBUTED)
    (cell,) = build_cells(dataclasses.replace(FASHION_CNN, modes=()))
    # Its own client learning rate reaches the run; the private cells keep the dataset's.
    assert base.lr is not None and cell.config.lr == base.lr != base_options("fashion-mnist", "cnn")["lr"]
    assert dp.lr is None and cell.config.rounds == base_options("fashion-mnist", "cnn")["rounds"]
    assert (cell.config.server_lr, cell.config.server_momentum) == (base.server_lr, base.server_momentum)


def test_clipped_noiseless_cells_differ_from_the_private_cells_only_in_the_noise() -> None:
    script = _load_cnn_script()
    spec = dataclasses.replace(TINY_CNN, seeds=2)
    private = [c for c in build_cells(spec) if c.mode is Mode.DISTRIBUTED]
    clipped = script.clipped_cells(spec, epsilon=8.0)
    assert [c.seed for c in clipped] == [c.seed for c in private] == [0, 1]
    # What a run without noise cannot have: noise, the secure sum that hides it, a budget, a client limit.
    noise_only = {"dp", "noise_multiplier", "secure_sum", "budget_against", "client_max_epsilon"}
    for a, b in zip(private, clipped, strict=True):
        assert b.mode is Mode.NONE and b.config.dp == "none" and b.config.noise_multiplier is None
        da, db = a.config.to_dict(), b.config.to_dict()
        assert {k for k in da if da[k] != db[k]} <= noise_only
        assert a.hyper == b.hyper  # clip, server lr, momentum, client lr and epochs
        assert a.cell_id != b.cell_id


def test_curve_is_the_per_round_mean_and_sd_over_the_seeds_that_have_every_round() -> None:
    script = _load_cnn_script()
    recs = [
        {"status": "ok", "rounds": [{"round": 1, "accuracy": 0.5}, {"round": 2, "accuracy": 0.7}]},
        {"status": "ok", "rounds": [{"round": 1, "accuracy": 0.6}, {"round": 2, "accuracy": None}]},
        {"status": "ok", "rounds": [{"round": 1, "accuracy": 0.7}]},
        {"status": "error", "rounds": [{"round": 1, "accuracy": 0.0}, {"round": 2, "accuracy": 0.0}]},
    ]
    xs, mean, sd = script.curve(recs)
    # Slow reference: round 2 is missing from two of the three finished seeds, so it is left out.
    assert xs == [1]
    assert mean == pytest.approx([statistics.fmean([50.0, 60.0, 70.0])])
    assert sd == pytest.approx([statistics.stdev([50.0, 60.0, 70.0])])
