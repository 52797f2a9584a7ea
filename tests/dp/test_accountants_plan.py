"""``privagg plan``: JSON and human output, target-epsilon bisection, option errors; slow full grid."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from dp.accountants import analytic_gaussian_epsilon, compute_epsilon
from fl_core.cli import app
from fl_core.commands.plan import PlanAccountant, PlanMechanism, plan_epsilon, plan_noise_multiplier

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "dp"
runner = CliRunner()


def invoke(*args: str) -> tuple[int, str, str]:
    r = runner.invoke(app, ["plan", *args])
    return r.exit_code, r.stdout, r.stderr


def test_plan_json_epsilon_and_rdp() -> None:
    code, out, _ = invoke(
        "--noise-multiplier", "1.2", "--sampling-rate", str(120 / 3383), "--rounds", "100", "--delta", "1e-5", "--json"
    )
    assert code == 0
    d = json.loads(out.strip().splitlines()[-1])
    assert d["epsilon_rdp"] == pytest.approx(1.986, rel=3e-3)  # TFF tutorial anchor
    assert d["epsilon"] < d["epsilon_rdp"]
    assert d["engine"] == "pld" and d["rounds"] == 100 and d["delta"] == 1e-5


def test_plan_human_output() -> None:
    code, out, _ = invoke("--noise-multiplier", "2", "--sampling-rate", "1", "--rounds", "3", "--delta", "1e-5")
    assert code == 0
    assert "epsilon =" in out and "RDP cross-check" in out


def test_plan_target_epsilon_bisection() -> None:
    code, out, _ = invoke(
        "--target-epsilon", "1.0", "--sampling-rate", "1", "--rounds", "10", "--delta", "1e-5", "--json"
    )
    assert code == 0
    d = json.loads(out)
    z = d["noise_multiplier"]
    assert d["epsilon"] <= 1.0
    # Against the exact answer: the analytic Gaussian at z is <= 1 and at z * (1 - 2e-3) is > 1.
    assert analytic_gaussian_epsilon([z] * 10, 1e-5) <= 1.0 + 1e-3
    assert analytic_gaussian_epsilon([z * (1 - 3e-3)] * 10, 1e-5) > 1.0


def test_plan_skellam() -> None:
    d = plan_epsilon(noise_multiplier=1.0, sampling_rate=1.0, rounds=10, delta=1e-5, mechanism=PlanMechanism.skellam)
    assert d["engine"] == "rdp" and d["epsilon"] == d["epsilon_rdp"]
    gauss_rdp = plan_epsilon(noise_multiplier=1.0, sampling_rate=1.0, rounds=10, delta=1e-5)["epsilon_rdp"]
    # Skellam at a large scale is a little worse than the Gaussian (its extra RDP term is small).
    assert gauss_rdp < d["epsilon"] < gauss_rdp * 1.05
    t = plan_noise_multiplier(
        target_epsilon=d["epsilon"], sampling_rate=1.0, rounds=10, delta=1e-5, mechanism=PlanMechanism.skellam
    )
    assert t["noise_multiplier"] == pytest.approx(1.0, rel=3e-3)
    code, out, _ = invoke(
        "--noise-multiplier",
        "1",
        "--sampling-rate",
        "0.1",
        "--rounds",
        "5",
        "--delta",
        "1e-5",
        "--mechanism",
        "skellam",
        "--dim",
        "100",
        "--scale",
        "1024",
        "--json",
    )
    assert code == 0 and json.loads(out)["dim"] == 100


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--noise-multiplier", "1", "--target-epsilon", "1"], "exactly one"),
        (["--target-epsilon", "0"], "--target-epsilon"),
        (["--noise-multiplier", "-1"], "--noise-multiplier"),
        (["--noise-multiplier", "1", "--sampling-rate", "0"], "--sampling-rate"),
        (["--noise-multiplier", "1", "--rounds", "0"], "--rounds"),
        (["--noise-multiplier", "1", "--delta", "1"], "--delta"),
        (["--noise-multiplier", "1", "--clip", "0"], "--clip"),
        (["--noise-multiplier", "1", "--scale", "-2"], "--scale"),
        (["--noise-multiplier", "1", "--dim", "0"], "--dim"),
    ],
)
def test_plan_option_errors(args: list[str], option: str) -> None:
    base = {"--sampling-rate": "0.1", "--rounds": "10", "--delta": "1e-5"}
    for i in range(0, len(args), 2):
        base.pop(args[i], None)
    flat = [x for kv in base.items() for x in kv]
    code, _, err = invoke(*args, *flat)
    assert code == 2
    assert option in err


def test_plan_unreachable_target() -> None:
    with pytest.raises(typer.BadParameter, match="no noise multiplier"):
        plan_noise_multiplier(
            target_epsilon=1e-9, sampling_rate=1.0, rounds=10, delta=1e-5, accountant=PlanAccountant.rdp
        )
    code, _, err = invoke(
        "--target-epsilon", "1e-9", "--sampling-rate", "1", "--rounds", "10", "--delta", "1e-5", "--accountant", "rdp"
    )
    assert code == 2 and "no noise multiplier" in err


GRID = [(q, s, t) for q in (0.001, 0.01, 0.1, 1.0) for s in (0.5, 1.0, 3.0) for t in (1, 100, 10_000)]


@pytest.mark.slow
@pytest.mark.parametrize(("q", "sigma", "rounds"), GRID)
def test_plan_grid_against_dp_accounting_pld(q: float, sigma: float, rounds: int) -> None:
    # Done-when grid: no lower than dp-accounting's pessimistic PLD (beyond 0.5%) and at most 2% above it.
    ref = next(
        r
        for r in json.loads((VECTORS / "pld_grid_reference.json").read_text())
        if (r["q"], r["sigma"], r["rounds"]) == (q, sigma, rounds)
    )
    eps = plan_epsilon(noise_multiplier=sigma, sampling_rate=q, rounds=rounds, delta=1e-5)["epsilon"]
    assert ref["epsilon"] * (1 - 0.005) <= eps <= ref["epsilon"] * 1.02
    if q == 1.0:
        assert eps == pytest.approx(analytic_gaussian_epsilon([sigma] * rounds, 1e-5), rel=1e-3)


@pytest.mark.slow
def test_plan_grid_reference_is_reproducible() -> None:
    # Recompute two stored references with dp-accounting at the stored interval.
    import dp_accounting as dpa

    for r in json.loads((VECTORS / "pld_grid_reference.json").read_text())[::17]:
        acc = dpa.pld.PLDAccountant(value_discretization_interval=r["interval"])
        acc.compose(dpa.PoissonSampledDpEvent(r["q"], dpa.GaussianDpEvent(r["sigma"])), r["rounds"])
        assert acc.get_epsilon(r["delta"]) == pytest.approx(r["epsilon"], rel=1e-9)
    assert compute_epsilon([], 1e-5) == 0.0


def test_plan_reports_both_adversaries_and_the_noise_share() -> None:
    """Issue 14: plan reports epsilon against the server (no amplification, the rounds one client
    joins) beside the amplified one; issue 15: with --clients it shows each client's noise share."""
    code, out, _ = invoke(
        "--noise-multiplier", "1", "--sampling-rate", "0.01", "--rounds", "100", "--delta", "1e-5",
        "--mechanism", "skellam", "--max-participation", "3", "--json",
    )
    assert code == 0
    d = json.loads(out)
    assert d["epsilon_enforced_on"] == "server" and d["epsilon"] == d["epsilon_vs_server"]
    assert d["epsilon_vs_server_rounds"] == 3
    three = plan_epsilon(noise_multiplier=1.0, sampling_rate=1.0, rounds=3, delta=1e-5,
                         mechanism=PlanMechanism.skellam)["epsilon"]
    assert d["epsilon_vs_server"] == pytest.approx(three, rel=1e-9)
    assert d["epsilon_vs_public"] < 2.0 < 8.0 < d["epsilon_vs_server"]
    code, out, _ = invoke("--noise-multiplier", "1", "--sampling-rate", "0.2", "--rounds", "30", "--delta", "1e-5",
                          "--mechanism", "skellam", "--clients", "50")
    assert code == 0 and "each client adds 0.167 of a round's noise (min-survivors 6)" in out
    assert "a client in 10 rounds" in out
    code, out, _ = invoke("--noise-multiplier", "1", "--sampling-rate", "0.2", "--rounds", "3", "--delta", "1e-5",
                          "--mechanism", "skellam", "--clients", "100", "--min-survivors", "4", "--json")
    assert code == 0 and json.loads(out)["warnings"] and json.loads(out)["noise_share"]["per_client_share"] == 0.25


def test_plan_gaussian_is_central_mode_unbounded_against_the_server() -> None:
    code, out, _ = invoke("--noise-multiplier", "1", "--sampling-rate", "0.1", "--rounds", "5", "--delta", "1e-5",
                          "--json")
    d = json.loads(out)
    assert code == 0 and d["epsilon_vs_server"] is None and d["epsilon_enforced_on"] == "public"
    code, _, err = invoke("--noise-multiplier", "1", "--sampling-rate", "0.1", "--rounds", "5", "--delta", "1e-5",
                          "--against", "server")
    assert code == 2 and "unbounded" in err


def test_plan_target_against_the_server_calibrates_for_the_participation() -> None:
    d = plan_noise_multiplier(target_epsilon=2.0, sampling_rate=0.1, rounds=20, delta=1e-5,
                              mechanism=PlanMechanism.skellam, participation=6)
    assert d["epsilon_vs_server"] <= 2.0 and d["epsilon_vs_server"] == pytest.approx(2.0, rel=5e-3)
    assert d["epsilon_vs_public"] < d["epsilon_vs_server"]
