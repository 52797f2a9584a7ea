"""Tests of the empirical (canary, one-run) audit and `privagg audit --empirical`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from dp.accountants import analytic_gaussian_epsilon
from dp.audit.one_run import audit_from_scores
from dp.randomness import SeededRandomSource
from fl_core.canary_audit import (
    AuditMode,
    CanaryAuditConfig,
    PlantedBug,
    noise_multiplier_for_epsilon,
    run_canary_audit,
)
from fl_core.cli import app
from fl_core.errors import ConfigError

runner = CliRunner()
Z2 = noise_multiplier_for_epsilon(2.0, 1e-5)  # claimed epsilon 2 for one Gaussian release


def test_noise_multiplier_for_epsilon_inverts_the_analytic_gaussian() -> None:
    for eps in (0.5, 2.0, 8.0):
        z = noise_multiplier_for_epsilon(eps, 1e-5)
        got = analytic_gaussian_epsilon([z], 1e-5)
        assert got <= eps and got == pytest.approx(eps, rel=1e-9)
    with pytest.raises(ConfigError, match="epsilon"):
        noise_multiplier_for_epsilon(0.0, 1e-5)
    with pytest.raises(ConfigError, match="delta"):
        noise_multiplier_for_epsilon(1.0, 1.0)


@pytest.mark.parametrize("mode", [AuditMode.CENTRAL, AuditMode.DISTRIBUTED])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_correct_noise_is_never_refuted(mode: AuditMode, seed: int) -> None:
    cfg = CanaryAuditConfig(canaries=1000, noise_multiplier=Z2, mode=mode)
    res = run_canary_audit(cfg, SeededRandomSource(seed))
    assert res.epsilon_lower <= res.epsilon_accounted
    assert not res.violation and not res.noise_too_small and not res.flagged
    assert 1.5 < res.epsilon_accounted <= 2.05  # distributed: noise sized for fewer survivors
    assert res.noise_std_measured == pytest.approx(res.noise_std_claimed, rel=0.1)
    assert res.included == res.event.survivors and 400 < res.included < 600


@pytest.mark.parametrize("seed", [4, 5])
def test_correct_noise_lower_bound_with_strong_signal(seed: int) -> None:
    # Little noise (z = 0.5, epsilon ~ 10): the bound is far from 0 yet stays below the claim.
    cfg = CanaryAuditConfig(canaries=2000, noise_multiplier=0.5)
    res = run_canary_audit(cfg, SeededRandomSource(seed))
    assert 1.0 < res.epsilon_lower <= res.epsilon_accounted and not res.flagged


def test_planted_bug_is_flagged_at_claimed_epsilon_2_with_10k_canaries() -> None:
    cfg = CanaryAuditConfig(canaries=10_000, noise_multiplier=Z2, bug=PlantedBug.HALVE_NOISE)
    res = run_canary_audit(cfg, SeededRandomSource(1))
    assert res.epsilon_accounted <= 2.0 + 1e-3
    assert res.flagged
    assert res.noise_too_small and res.noise_std_measured < 0.6 * res.noise_std_claimed
    assert res.violation and res.epsilon_lower > res.epsilon_accounted


@pytest.mark.slow
def test_planted_bug_one_run_bound_power_over_seeds() -> None:
    """How often the one-run bound alone refutes the claim (reported in SECURITY.md)."""
    cfg = CanaryAuditConfig(canaries=10_000, noise_multiplier=Z2, bug=PlantedBug.HALVE_NOISE)
    results = [run_canary_audit(cfg, SeededRandomSource(100 + s)) for s in range(10)]
    assert all(r.flagged for r in results)
    assert sum(r.violation for r in results) >= 7


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(10, 20))
def test_correct_noise_many_seeds(seed: int) -> None:
    cfg = CanaryAuditConfig(canaries=10_000, noise_multiplier=Z2)
    res = run_canary_audit(cfg, SeededRandomSource(seed))
    assert res.epsilon_lower <= res.epsilon_accounted and not res.flagged


def test_distributed_planted_bug_is_flagged() -> None:
    cfg = CanaryAuditConfig(canaries=1000, noise_multiplier=Z2, mode=AuditMode.DISTRIBUTED,
                            bug=PlantedBug.HALVE_NOISE)
    res = run_canary_audit(cfg, SeededRandomSource(7))
    assert res.flagged and res.noise_too_small


def test_scores_match_a_slow_per_canary_reference() -> None:
    """Recompute the pipeline's released sum and scores with plain loops and compare."""
    cfg = CanaryAuditConfig(canaries=64, noise_multiplier=0.2, dim=80)
    res = run_canary_audit(cfg, SeededRandomSource(9))
    # With little noise, each included canary's coordinate holds +-C, others ~N(0, 0.04):
    # the auditor's top and bottom guesses are right.
    assert res.one_run.v == res.one_run.r
    gen = SeededRandomSource(9).spawn("directions").numpy_generator()
    coord = gen.permutation(80)[:64]
    assert len(set(coord.tolist())) == 64  # canaries on distinct coordinates
    coins = SeededRandomSource(9).spawn("coins").random_bytes(64)
    included = [b & 1 == 1 for b in coins]
    assert res.included == sum(included)


def test_one_run_on_harness_scores_matches_direct_call() -> None:
    rng = np.random.default_rng(3)
    inc = rng.random(300) < 0.5
    scores = inc + rng.normal(0, 0.5, 300)
    a = audit_from_scores(scores, inc, delta=1e-5, guess_counts=[9])
    order = np.argsort(-scores, kind="stable")
    v = int(inc[order[:5]].sum() + (~inc[order[-4:]]).sum())
    assert (a.r, a.v) == (9, v)


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"canaries": 1, "noise_multiplier": 1.0}, "canaries"),
        ({"canaries": 10, "noise_multiplier": 0.0}, "noise_multiplier"),
        ({"canaries": 10, "noise_multiplier": 0.1}, "noise_multiplier"),
        ({"canaries": 10, "noise_multiplier": math.inf}, "noise_multiplier"),
        ({"canaries": 10, "noise_multiplier": 1.0, "clip": -1.0}, "clip"),
        ({"canaries": 10, "noise_multiplier": 1.0, "dim": 5}, "dim"),
        ({"canaries": 10, "noise_multiplier": 1.0, "delta": 0.0}, "delta"),
        ({"canaries": 10, "noise_multiplier": 1.0, "batch": 0}, "batch"),
    ],
)
def test_config_errors_name_the_option(kwargs: dict, option: str) -> None:
    with pytest.raises(ConfigError) as ei:
        CanaryAuditConfig(**kwargs)
    assert ei.value.option == option


@pytest.mark.parametrize("mode", [AuditMode.CENTRAL, AuditMode.DISTRIBUTED])
def test_encoding_that_cannot_hold_the_sum_is_refused(mode: AuditMode) -> None:
    cfg = CanaryAuditConfig(canaries=200, noise_multiplier=1.0, bits=8, mode=mode)
    with pytest.raises(ConfigError, match="cannot encode") as ei:
        run_canary_audit(cfg, SeededRandomSource(1))
    assert ei.value.option == "bits"


def test_cli_empirical_passes_with_correct_noise() -> None:
    res = runner.invoke(app, ["audit", "--empirical", "--canaries", "1000", "--epsilon", "2",
                              "--seed", "3", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["epsilon_lower"] <= out["epsilon_accounted"] and out["flagged"] is False
    assert out["canaries"] == 1000 and out["seed"] == 3 and out["confidence"] == 0.95


def test_cli_empirical_flags_planted_bug() -> None:
    res = runner.invoke(app, ["audit", "--empirical", "--canaries", "1000", "--noise-multiplier",
                              str(Z2), "--seed", "3", "--plant-bug", "halve-noise"])
    assert res.exit_code == 4
    assert "refuted" in res.output and "noise std" in res.output


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ([], "exactly one of"),
        (["--epsilon", "1", "--noise-multiplier", "2"], "exactly one of"),
        (["--epsilon", "1", "--mode", "local"], "--mode"),
        (["--epsilon", "1", "--plant-bug", "other"], "--plant-bug"),
        (["--epsilon", "1", "--dim", "3"], "dim"),
        (["--epsilon", "-1"], "epsilon"),
    ],
)
def test_cli_empirical_usage_errors(extra: list[str], match: str) -> None:
    res = runner.invoke(app, ["audit", "--empirical", "--canaries", "10", *extra])
    assert res.exit_code == 2 and match in res.output
