"""The client's own record: hash chain, epsilon from the record alone, refusal before anything leaves."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dp.accountants.analytic import analytic_gaussian_epsilon
from dp.adversary import epsilon_vs_server
from dp.calibration import DPConfig, make_round_event
from dp.client_record import (
    CLIENT_GENESIS_HASH,
    DEFAULT_CLIENT_MAX_EPSILON,
    ClientRecord,
    _client_view,
    client_round_event,
    verify_client_record,
)
from dp.errors import ClientBudgetExceededError, ConfigurationError, LedgerError
from dp.events import DPMode, Mechanism, RoundEvent, Sampling
from dp.ledger import TornTailWarning

DELTA = 1e-5


def gauss(r: int, z: float = 1.0, *, q: float = 0.01) -> RoundEvent:
    return RoundEvent(
        round=r,
        mode=DPMode.LOCAL,
        mechanism=Mechanism.GAUSSIAN,
        l2_sensitivity=2.0,
        noise_variance=(2.0 * z) ** 2,
        clip_norm=1.0,
        sampling=Sampling.POISSON,
        sampling_rate=q,
        population=1000,
        cohort=10,
        survivors=10,
        cohort_ids=tuple(range(1, 11)),
        survivor_ids=tuple(range(1, 11)),
    )


def distributed(m: int = 80, colluders: int = 0, z: float = 1.0) -> DPConfig:
    return DPConfig(
        mode=DPMode.DISTRIBUTED, noise_multiplier=z, clip_norm=1.0, expected_cohort=100, min_survivors=m,
        colluders=colluders,
    )


def test_default_limit_is_documented_value() -> None:
    assert DEFAULT_CLIENT_MAX_EPSILON == 10.0


def test_charges_compose_without_amplification_and_refuse_past_the_limit() -> None:
    rec = ClientRecord.create("u", delta=DELTA)
    # The server claims q = 0.01; the client charges q = 1 (the server chose the cohort).
    for r in range(1, 4):
        entry = rec.charge(gauss(r), max_epsilon=9.0)
        assert entry.event.sampling is Sampling.FULL and entry.event.survivor_ids == ()
        assert entry.epsilon == pytest.approx(analytic_gaussian_epsilon([1.0] * r, DELTA), rel=1e-9)
    assert rec.epsilon_vs_server() == pytest.approx(8.385418, rel=1e-5)
    head = rec.head_hash
    with pytest.raises(ClientBudgetExceededError) as info:
        rec.charge(gauss(4), max_epsilon=9.0)
    err = info.value
    assert err.client == "u" and err.target_epsilon == 9.0 and err.epsilon_if_run > 9.0
    assert "refuses round 4" in str(err) and "Nothing derived from its input was sent" in str(err)
    # Refusing charges nothing.
    assert len(rec.charges) == 3 and rec.head_hash == head
    with pytest.raises(ClientBudgetExceededError):
        rec.check(gauss(4), max_epsilon=9.0)
    assert rec.check(gauss(4), max_epsilon=10.0) == pytest.approx(analytic_gaussian_epsilon([1.0] * 4, DELTA))


def test_client_round_event_uses_the_clients_own_floor() -> None:
    """The event charges the noise of min_survivors - colluders honest shares, whatever the
    cohort and survivors the server reports."""
    cfg = distributed(m=40, colluders=10)
    ev = client_round_event(cfg, round=3, dim=101, scale=2.0**12)
    ref = make_round_event(cfg, round=3, sampling=Sampling.FULL, sampling_rate=1.0, population=40, cohort=40,
                           survivors=40, dim=101, scale=2.0**12)
    assert ev.noise_variance == ref.noise_variance
    assert ev.noise_multiplier == pytest.approx(1.0, rel=1e-9)
    assert ev.sampling_rate == 1.0 and ev.round == 3
    # Fewer honest clients in the floor -> less noise charged -> more epsilon.
    rec_a, rec_b = ClientRecord.create(1), ClientRecord.create(1)
    rec_a.charge(client_round_event(distributed(m=40, colluders=10, z=2.0), round=1, dim=101, scale=2.0**12))
    rec_b.charge(client_round_event(distributed(m=40, colluders=0, z=2.0), round=1, dim=101, scale=2.0**12))
    assert rec_a.epsilon_vs_server() == pytest.approx(rec_b.epsilon_vs_server())  # z is what the floor guarantees


def test_central_mode_is_refused_by_any_finite_limit() -> None:
    cfg = DPConfig(mode=DPMode.CENTRAL, noise_multiplier=5.0, clip_norm=1.0, expected_cohort=10)
    ev = client_round_event(cfg, round=1, dim=10)
    rec = ClientRecord.create("c")
    assert rec.epsilon_if_charged(ev) == math.inf
    with pytest.raises(ClientBudgetExceededError, match="un-noised"):
        rec.check(ev, max_epsilon=1e9)
    rec.charge(ev, max_epsilon=math.inf)  # a client that chose to trust the server
    assert rec.epsilon_vs_server() == math.inf
    assert verify_client_record(rec.to_bytes()).verified


@settings(max_examples=25)
@given(st.lists(st.floats(0.7, 5.0), min_size=1, max_size=8))
def test_replaying_the_record_gives_the_same_epsilon(zs: list[float]) -> None:
    rec = ClientRecord.create("p", delta=DELTA)
    for r, z in enumerate(zs, start=1):
        rec.charge(gauss(r, z), max_epsilon=math.inf)
    again = ClientRecord.from_bytes(rec.to_bytes(), client="p", delta=DELTA)
    assert again.epsilon_vs_server() == rec.epsilon_vs_server()
    assert epsilon_vs_server(again.events, DELTA) == pytest.approx(rec.epsilon_vs_server(), rel=1e-12)
    assert again.epsilon_vs_server() == pytest.approx(analytic_gaussian_epsilon(zs, DELTA), rel=1e-9)
    report = verify_client_record(rec.to_bytes(), expected_head=rec.head_hash)
    assert report.verified and report.head_matches and len(report.charges) == len(zs)
    assert again.to_bytes() == rec.to_bytes()


def _lines(rec: ClientRecord) -> list[bytes]:
    return rec.to_bytes().split(b"\n")[:-1]


def _record(n: int = 3) -> ClientRecord:
    rec = ClientRecord.create("t", delta=DELTA)
    for r in range(1, n + 1):
        rec.charge(gauss(r, 3.0))
    return rec


def test_edited_reordered_or_removed_charges_do_not_verify() -> None:
    rec = _record()
    lines = _lines(rec)
    # An edited noise (the line re-hashed): the next line's prev_hash no longer matches, and
    # the edited charge's recorded epsilon no longer follows from its event.
    obj = json.loads(lines[2])
    obj["event"]["noise_variance"] = obj["event"]["noise_variance"] * 100
    from dp.ledger import canonical_json, record_hash

    obj["hash"] = record_hash(obj)
    edited = b"\n".join([*lines[:2], canonical_json(obj), *lines[3:]]) + b"\n"
    rep = verify_client_record(edited)
    assert not rep.verified and rep.first_bad_charge == 3 and len(rep.charges) == 2
    assert rep.disagreements == (2,)
    with pytest.raises(LedgerError):
        ClientRecord.from_bytes(edited)
    swapped = b"\n".join([lines[0], lines[2], lines[1], lines[3]]) + b"\n"
    assert verify_client_record(swapped).first_bad_charge == 1
    dropped = b"\n".join([lines[0], lines[1], lines[3]]) + b"\n"
    assert verify_client_record(dropped).first_bad_charge == 2
    # Truncating the end keeps a valid chain: only an anchor kept elsewhere catches it.
    short = b"\n".join(lines[:3]) + b"\n"
    assert verify_client_record(short).verified
    rep = verify_client_record(short, expected_head=rec.head_hash)
    assert rep.head_matches is False and not rep.verified


def test_recorded_epsilon_that_disagrees_is_flagged() -> None:
    """A forged epsilon (chain recomputed by the forger) is caught by recomputing from the events."""
    from dp.ledger import canonical_json, record_hash

    rec = _record(2)
    lines = _lines(rec)
    out = [lines[0]]
    prev = json.loads(lines[0])["hash"]
    for raw in lines[1:]:
        obj = json.loads(raw)
        obj["epsilon"] = obj["epsilon"] / 10
        obj["prev_hash"] = prev
        obj["hash"] = record_hash(obj)
        prev = obj["hash"]
        out.append(canonical_json(obj))
    rep = verify_client_record(b"\n".join(out) + b"\n")
    assert rep.error is None and rep.disagreements == (1, 2) and not rep.verified


def test_wrong_client_or_delta_and_bad_arguments() -> None:
    rec = _record(1)
    with pytest.raises(LedgerError, match="belongs to client"):
        ClientRecord.from_bytes(rec.to_bytes(), client="other")
    with pytest.raises(LedgerError, match="delta"):
        ClientRecord.from_bytes(rec.to_bytes(), delta=1e-6)
    with pytest.raises(ConfigurationError, match="max_epsilon"):
        rec.check(gauss(2), max_epsilon=0.0)
    with pytest.raises(ConfigurationError, match="delta"):
        ClientRecord.create("x", delta=1.5)
    with pytest.raises(ConfigurationError, match="client"):
        ClientRecord.create("")
    with pytest.raises(ConfigurationError, match="RoundEvent"):
        rec.check("round 2", max_epsilon=1.0)  # type: ignore[arg-type]
    assert verify_client_record(b"").first_bad_charge == 0
    assert CLIENT_GENESIS_HASH != rec.head_hash


def test_file_persistence_appends_durably_and_drops_a_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "client-7.jsonl"
    rec = ClientRecord.open(path, client=7, delta=DELTA)
    rec.charge(gauss(1, 2.0))
    rec.charge(gauss(2, 2.0))
    assert path.read_bytes() == rec.to_bytes()
    again = ClientRecord.open(path, client="7", delta=DELTA)
    assert again.epsilon_vs_server() == rec.epsilon_vs_server()
    with open(path, "ab") as f:
        f.write(b'{"v":1,"kind":"charge","n":3')  # a crash mid-write: that round was never sent
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        third = ClientRecord.open(path, client="7", delta=DELTA)
    assert any(issubclass(w.category, TornTailWarning) for w in caught)
    assert len(third.charges) == 2 and path.read_bytes() == rec.to_bytes()
    third.charge(gauss(3, 2.0))
    assert verify_client_record(path).verified and len(verify_client_record(path).charges) == 3
    other = tmp_path / "copy.jsonl"
    third.save(other)
    assert other.read_bytes() == path.read_bytes()
    with pytest.raises(LedgerError):
        ClientRecord.open(path, client="8", delta=DELTA)
    with pytest.raises(LedgerError):
        verify_client_record(tmp_path / "missing.jsonl")


def _skellam_event(r: int, var_scale: float) -> RoundEvent:
    l2 = 1034.0
    return RoundEvent(
        round=r, mode=DPMode.DISTRIBUTED, mechanism=Mechanism.SKELLAM, l2_sensitivity=l2, l1_sensitivity=10 * l2,
        noise_variance=var_scale * l2 * l2, clip_norm=1.0, sampling=Sampling.POISSON, sampling_rate=0.1,
        population=100, cohort=10, survivors=10, dim=100,
    )  # fmt: skip


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.floats(0.5, 4.0)), min_size=1, max_size=8))
def test_epsilon_if_charged_equals_composing_the_record_from_scratch(rounds: list[tuple[bool, float]]) -> None:
    """The record keeps its charges composed (an account extended at each charge, rebuilt on a
    reload); what it checks is exactly the slow reference: every charged event and the next one
    composed from scratch, whatever mix of Gaussian and Skellam rounds (the account switches engine)."""
    rec = ClientRecord.create("u", delta=DELTA)
    for r, (is_skellam, scale) in enumerate(rounds, start=1):
        event = _skellam_event(r, scale) if is_skellam else gauss(r, scale)
        rec.charge(event, max_epsilon=math.inf)
        reloaded = ClientRecord.from_bytes(rec.to_bytes())
        nxt = _skellam_event(r + 1, scale) if not is_skellam else gauss(r + 1, scale)
        for record in (rec, reloaded):
            assert record.epsilon_if_charged(nxt) == epsilon_vs_server([*record.events, _client_view(nxt)], DELTA)
        assert rec.epsilon_vs_server() == epsilon_vs_server(rec.events, DELTA)
