"""Tests of dp.audit.report (ledger audit) and the `privagg audit LEDGER` command."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from dp.accountants import ACCOUNTANT_VERSIONS, compute_epsilon, epsilon_curve
from dp.audit.report import AUDIT_RTOL, audit_ledger
from dp.errors import ConfigurationError
from dp.events import DPMode, Mechanism, RoundEvent, Sampling
from dp.ledger import Ledger, canonical_json
from fl_core.cli import app

DELTA = 1e-5
runner = CliRunner()


def ev(
    r: int, *, z: float = 1.0, q: float = 0.05, mech: Mechanism = Mechanism.GAUSSIAN, mode: DPMode = DPMode.CENTRAL
) -> RoundEvent:
    return RoundEvent(
        round=r,
        mode=mode,
        mechanism=mech,
        l2_sensitivity=1.0,
        noise_variance=z * z,
        clip_norm=1.0,
        sampling=Sampling.POISSON,
        sampling_rate=q,
        population=1000,
        cohort=50,
        survivors=48,
        dim=10,
    )


def write(
    path: Path, events: list[RoundEvent], *, accountant: str = "rdp", scale: float = 1.0, version: str | None = None
) -> list[float]:
    """Write a ledger the way a round loop does: cumulative epsilon after each round."""
    eps = epsilon_curve(events, DELTA, accountant=accountant)
    with Ledger.open(
        path,
        create_meta={"test": True},
        accountant=accountant,
        accountant_version=ACCOUNTANT_VERSIONS[accountant] if version is None else version,
    ) as led:
        for e, x in zip(events, eps, strict=True):
            led.append(e, epsilon=x * scale, delta=DELTA)
    return eps


def test_clean_pld_ledger_agrees_with_both_accountants(tmp_path: Path) -> None:
    p = tmp_path / "l.jsonl"
    events = [ev(r) for r in range(1, 7)]
    with Ledger.open(p, accountant="pld", accountant_version=ACCOUNTANT_VERSIONS["pld"]) as led:
        for r in range(1, 7):
            led.append(events[r - 1], epsilon=compute_epsilon(events[:r], DELTA), delta=DELTA)
    rep = audit_ledger(p, checkpoints=3)
    # These Poisson rounds record no abort rule, which the audit notes (dp.accountants.aborts); nothing else.
    others = [n for n in rep.accountant_notes if "do not record their abort rule" not in n]
    assert rep.ok and rep.verified and not rep.disagreements and not others and len(rep.accountant_notes) == 1
    assert rep.rounds == 6 and rep.delta == DELTA
    assert rep.recomputed["pld"] == pytest.approx(rep.epsilon, rel=1e-9)
    rdp = rep.recomputed["rdp"]
    assert rdp is not None and rdp >= rep.epsilon  # RDP is the looser bound
    # RDP at every round, PLD at the checkpoints (first, middle, last).
    assert all("rdp" in r.cumulative for r in rep.per_round)
    assert [r.round for r in rep.per_round if "pld" in r.cumulative] == [1, 3, 6]
    assert sum(r.increment["rdp"] for r in rep.per_round) == pytest.approx(rdp)
    assert all(r.noise_multiplier == 1.0 and r.survivors == 48 for r in rep.per_round)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(zs=st.lists(st.floats(0.6, 4.0), min_size=1, max_size=12), q=st.sampled_from([0.01, 0.1, 1.0]))
def test_replaying_the_ledger_gives_the_same_epsilon(
    tmp_path_factory: pytest.TempPathFactory, zs: list[float], q: float
) -> None:
    p = tmp_path_factory.mktemp("r") / "l.jsonl"
    events = [ev(i + 1, z=z, q=q) for i, z in enumerate(zs)]
    eps = write(p, events, accountant="rdp")
    rep = audit_ledger(p, accountants=("rdp",))
    assert rep.ok
    assert [r.cumulative["rdp"] for r in rep.per_round] == eps
    assert rep.recomputed == {"rdp": eps[-1]}


@pytest.mark.parametrize("scale", [0.9, 1.01])
def test_under_and_over_reported_epsilon_is_flagged(tmp_path: Path, scale: float) -> None:
    p = tmp_path / "l.jsonl"
    eps = write(p, [ev(r) for r in range(1, 5)], scale=scale)
    rep = audit_ledger(p, accountants=("rdp",))
    assert rep.verified and not rep.ok
    assert [d.round for d in rep.disagreements] == [1, 2, 3, 4]
    d = rep.disagreements[-1]
    assert d.recomputed == pytest.approx(eps[-1]) and d.recorded == pytest.approx(eps[-1] * scale)
    assert d.relative_error == pytest.approx(scale - 1.0) and d.accountant == "rdp"
    res = runner.invoke(app, ["audit", str(p), "--json", "--accountant", "rdp"])
    assert res.exit_code == 3
    out = json.loads(res.stdout)
    assert out["verified"] is True and out["ok"] is False and len(out["disagreements"]) == 4


def test_disagreement_within_tolerance_is_not_flagged(tmp_path: Path) -> None:
    p = tmp_path / "l.jsonl"
    write(p, [ev(r) for r in range(1, 4)], scale=1.0 + AUDIT_RTOL / 2)
    assert audit_ledger(p, accountants=("rdp",)).ok


def test_broken_chain_names_first_bad_round_and_exits_1(tmp_path: Path) -> None:
    p = tmp_path / "l.jsonl"
    write(p, [ev(r) for r in range(1, 6)])
    lines = p.read_bytes().split(b"\n")[:-1]
    rec = json.loads(lines[3])  # round 3
    rec["survivors"] = 49
    lines[3] = canonical_json(rec)
    p.write_bytes(b"".join(x + b"\n" for x in lines))
    rep = audit_ledger(p, accountants=("rdp",))
    assert not rep.verified and rep.first_bad_round == 3 and rep.rounds == 2
    res = runner.invoke(app, ["audit", str(p), "--accountant", "rdp"])
    assert res.exit_code == 1
    assert "round 3" in res.output
    res = runner.invoke(app, ["audit", str(p), "--json", "--accountant", "rdp"])
    assert res.exit_code == 1
    out = json.loads(res.stdout)
    assert out["verified"] is False and out["first_bad_round"] == 3 and out["rounds"] == 2


def test_torn_tail_is_reported_and_not_counted(tmp_path: Path) -> None:
    p = tmp_path / "l.jsonl"
    write(p, [ev(r) for r in range(1, 4)])
    with open(p, "ab") as f:
        f.write(b'{"accountant":{"na')
    res = runner.invoke(app, ["audit", str(p), "--json", "--accountant", "rdp"])
    assert res.exit_code == 0
    out = json.loads(res.stdout)
    assert out["rounds"] == 3 and out["torn_tail"]["round"] == 4
    assert "torn" in res.stderr


def test_head_anchor_reports_unpublished_rounds(tmp_path: Path) -> None:
    p = tmp_path / "l.jsonl"
    write(p, [ev(r) for r in range(1, 5)])
    h3 = json.loads(p.read_bytes().split(b"\n")[3])["hash"]
    rep = audit_ledger(p, accountants=("rdp",), expected_head=h3)
    assert rep.ok and rep.anchor_round == 3 and rep.unpublished_rounds == (4,)
    res = runner.invoke(app, ["audit", str(p), "--head", h3, "--verify-only"])
    assert res.exit_code == 0 and "unpublished rounds: [4]" in res.output
    res = runner.invoke(app, ["audit", str(p), "--head", "ab" * 32, "--verify-only", "--json"])
    out = json.loads(res.stdout)
    assert res.exit_code == 1 and out["chain_verified"] and out["head_matches"] is False and out["rounds"] == 4


def test_a_wrong_head_on_an_intact_ledger_is_reported_as_such(tmp_path: Path) -> None:
    """Issue 15: a wrong --head on an intact 12-round ledger was reported as "BROKEN at round 13"."""
    p = tmp_path / "l.jsonl"
    write(p, [ev(r) for r in range(1, 13)])
    res = runner.invoke(app, ["audit", str(p), "--head", "ab" * 32])
    assert res.exit_code == 1
    assert "BROKEN" not in res.output and "HEAD DOES NOT MATCH" in res.output
    assert "intact" in res.output and "12 rounds" in res.output
    # A chain broken in the middle is still reported as broken, with its first bad round.
    lines = p.read_bytes().split(b"\n")
    lines[5] = lines[5].replace(b'"survivors":48', b'"survivors":47')
    p.write_bytes(b"\n".join(lines))
    res = runner.invoke(app, ["audit", str(p), "--head", "ab" * 32])
    assert res.exit_code == 1 and "BROKEN at round 5" in res.output and "HEAD DOES NOT MATCH" not in res.output


def test_verify_only_skips_recomputation(tmp_path: Path) -> None:
    p = tmp_path / "l.jsonl"
    write(p, [ev(r) for r in range(1, 4)], scale=0.5)  # wrong epsilons, but not checked
    rep = audit_ledger(p, recompute=False)
    assert rep.ok and rep.recomputed == {} and rep.per_round[0].cumulative == {}


def test_accountant_that_cannot_account_is_noted(tmp_path: Path) -> None:
    from dp.errors import AccountingError

    p = tmp_path / "l.jsonl"
    with Ledger.open(p, accountant="rdp") as led:
        led.append(ev(1), epsilon=1.0, delta=DELTA)

    def refuse(events, delta, accountant):  # an accountant that has no bound for these events
        raise AccountingError("no bound for this mechanism")

    rep = audit_ledger(p, curve=refuse, single=refuse, versions={})
    assert rep.recomputed == {"pld": None, "rdp": None}
    assert any("cannot account" in n for n in rep.accountant_notes)
    assert rep.verified and not rep.disagreements


def test_version_mismatch_and_unknown_accountant_are_noted(tmp_path: Path) -> None:
    p = tmp_path / "l.jsonl"
    write(p, [ev(1)], version="old-version")
    rep = audit_ledger(p, accountants=("rdp",))
    assert any("old-version" in n for n in rep.accountant_notes)
    q = tmp_path / "m.jsonl"
    with Ledger.open(q, accountant="homegrown", accountant_version="1") as led:
        led.append(ev(1), epsilon=123.0, delta=DELTA)
    rep = audit_ledger(q, accountants=("rdp",))
    assert any("unknown accountant" in n for n in rep.accountant_notes)
    assert not rep.disagreements  # nothing to compare a homegrown accountant with


def test_infinite_epsilon_round_trips(tmp_path: Path) -> None:
    p = tmp_path / "l.jsonl"
    none_ev = RoundEvent(
        round=1,
        mode=DPMode.NONE,
        mechanism=Mechanism.NONE,
        l2_sensitivity=0.0,
        noise_variance=0.0,
        clip_norm=1.0,
        sampling=Sampling.FULL,
        sampling_rate=1.0,
        population=10,
        cohort=10,
        survivors=10,
    )
    with Ledger.open(p, accountant="rdp") as led:
        led.append(none_ev, epsilon=math.inf, delta=DELTA)
    rep = audit_ledger(p, accountants=("rdp",))
    assert rep.ok and rep.recomputed["rdp"] == math.inf
    d = rep.to_dict()
    assert d["epsilon"] == "inf" and d["recomputed"]["rdp"] == "inf"


def test_audit_argument_errors(tmp_path: Path) -> None:
    p = tmp_path / "l.jsonl"
    write(p, [ev(1)])
    with pytest.raises(ConfigurationError, match="rtol"):
        audit_ledger(p, rtol=0.0)
    with pytest.raises(ConfigurationError, match="checkpoints"):
        audit_ledger(p, checkpoints=0)
    with pytest.raises(ConfigurationError, match="accountant"):
        audit_ledger(p, accountants=("gdp",))


def test_plot_is_a_png(tmp_path: Path) -> None:
    p = tmp_path / "l.jsonl"
    write(p, [ev(r) for r in range(1, 4)], accountant="pld")
    png = tmp_path / "eps.png"
    res = runner.invoke(app, ["audit", str(p), "--plot", str(png), "--json"])
    assert res.exit_code == 0, res.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = json.loads(res.stdout)
    assert out["plot"] == str(png) and out["accountant"] == "pld"
    for key in ("verified", "epsilon", "delta", "rounds", "per_round", "recomputed", "disagreements", "torn_tail"):
        assert key in out
    assert out["epsilon_recomputed"] == pytest.approx(out["epsilon"], rel=AUDIT_RTOL)


def test_text_output_and_every_round(tmp_path: Path) -> None:
    p = tmp_path / "l.jsonl"
    write(p, [ev(r) for r in range(1, 3)], accountant="pld")
    res = runner.invoke(app, ["audit", str(p), "--every-round"])
    assert res.exit_code == 0 and "VERIFIED" in res.output and "pld" in res.output


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["audit"], "give a LEDGER"),
        (["audit", "no-such-ledger.jsonl"], "no such ledger"),
        (["audit", "x.jsonl", "--accountant", "gdp"], "--accountant"),
        (["audit", "x.jsonl", "--empirical"], "does not read a ledger"),
    ],
)
def test_cli_usage_errors(argv: list[str], match: str) -> None:
    res = runner.invoke(app, argv)
    assert res.exit_code == 2 and match in res.output


def test_cli_reports_unreadable_ledger(tmp_path: Path) -> None:
    res = runner.invoke(app, ["audit", str(tmp_path)])  # a directory: exists, cannot be read
    assert res.exit_code == 1 and "cannot read" in res.output
