"""The ledger records who took part and epsilon against the server; the audit recomputes both views."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dp.accountants import ACCOUNTANT_VERSIONS, compute_epsilon
from dp.adversary import epsilon_vs_public, epsilon_vs_server, epsilon_vs_server_curve
from dp.audit.report import audit_ledger
from dp.events import DPMode, Mechanism, RoundEvent, Sampling
from dp.ledger import Ledger, canonical_json, inspect_ledger, record_hash

DELTA = 1e-5


def ev(r: int, ids: tuple[int, ...], *, mode: DPMode = DPMode.DISTRIBUTED) -> RoundEvent:
    return RoundEvent(
        round=r,
        mode=mode,
        mechanism=Mechanism.GAUSSIAN,
        l2_sensitivity=1.0,
        noise_variance=4.0,
        clip_norm=1.0,
        sampling=Sampling.POISSON,
        sampling_rate=0.05,
        population=100,
        cohort=len(ids) + 1,
        survivors=len(ids),
        cohort_ids=(*ids, 99),
        survivor_ids=ids,
    )


def write(path: Path, events: list[RoundEvent], *, server_scale: float = 1.0) -> None:
    server = epsilon_vs_server_curve(events, DELTA)
    with Ledger.open(path, accountant="pld", accountant_version=ACCOUNTANT_VERSIONS["pld"]) as led:
        for i, e in enumerate(events):
            led.append(
                e,
                epsilon=epsilon_vs_public(events[: i + 1], DELTA),
                delta=DELTA,
                epsilon_vs_server=server[i] * server_scale,
            )


def test_ids_and_both_epsilons_round_trip_and_audit(tmp_path: Path) -> None:
    p = tmp_path / "l.jsonl"
    events = [ev(r, (1, 2) if r % 3 == 0 else (2, 3)) for r in range(1, 10)]
    write(p, events)
    rep = inspect_ledger(p)
    assert rep.verified and [r.event for r in rep.records] == events
    assert rep.records[3].event.survivor_ids == (2, 3) and rep.records[3].event.cohort_ids == (2, 3, 99)
    assert rep.epsilon_vs_server == pytest.approx(epsilon_vs_server(events, DELTA))
    audit = audit_ledger(p, checkpoints=3)
    assert audit.ok, audit.disagreements
    assert audit.recomputed_vs_server == pytest.approx(rep.epsilon_vs_server)
    assert audit.epsilon_vs_server >= audit.epsilon
    d = audit.to_dict()
    assert d["epsilon_vs_server"] == pytest.approx(d["epsilon_vs_server_recomputed"])
    assert d["epsilon_vs_public"] == d["epsilon"]


def test_under_reported_epsilon_vs_server_is_a_disagreement(tmp_path: Path) -> None:
    p = tmp_path / "l.jsonl"
    events = [ev(r, (1,)) for r in range(1, 5)]
    write(p, events, server_scale=0.5)
    audit = audit_ledger(p, checkpoints=2)
    assert not audit.ok
    assert {d.accountant for d in audit.disagreements} == {"server"}
    assert all(d.relative_error == pytest.approx(-0.5) for d in audit.disagreements)


def test_central_mode_is_recorded_unbounded_against_the_server(tmp_path: Path) -> None:
    p = tmp_path / "l.jsonl"
    events = [ev(r, (1, 2), mode=DPMode.CENTRAL) for r in range(1, 4)]
    write(p, events)
    line = json.loads(p.read_text().splitlines()[-1])
    assert line["epsilon_vs_server"] == "inf"
    audit = audit_ledger(p, checkpoints=2)
    assert audit.ok and audit.epsilon_vs_server == math.inf
    assert audit.vs_server_reason is not None and "central" in audit.vs_server_reason
    assert audit.epsilon == pytest.approx(compute_epsilon(events, DELTA))


def test_a_record_written_before_ids_existed_is_read_and_charged_to_everyone(tmp_path: Path) -> None:
    p = tmp_path / "old.jsonl"
    with Ledger.open(p, accountant="pld", accountant_version=ACCOUNTANT_VERSIONS["pld"]) as led:
        led.append(ev(1, (1,)), epsilon=0.1, delta=DELTA)
    lines = p.read_bytes().split(b"\n")[:-1]
    old = json.loads(lines[1])
    for key in ("cohort_ids", "survivor_ids"):
        old.pop(key)
    old["hash"] = record_hash(old)
    p.write_bytes(lines[0] + b"\n" + canonical_json(old) + b"\n")
    rep = inspect_ledger(p)
    assert rep.verified and rep.records[0].event.survivor_ids == () and rep.records[0].epsilon_vs_server is None
    audit = audit_ledger(p, recompute=True, checkpoints=1)
    assert audit.recomputed_vs_server == pytest.approx(epsilon_vs_server([ev(1, (1,))], DELTA))


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sets(st.integers(1, 8), min_size=1, max_size=8), st.floats(0.8, 4.0)),
                min_size=1, max_size=6))
def test_replaying_the_ledger_gives_the_same_epsilon_against_the_server(
    tmp_path_factory: pytest.TempPathFactory, rounds: list[tuple[set[int], float]]
) -> None:
    """Both epsilons are recomputable from the ledger alone: replaying it gives the recorded numbers."""
    events = [
        RoundEvent.from_dict({**ev(r, tuple(sorted(ids))).to_dict(), "noise_variance": z * z})
        for r, (ids, z) in enumerate(rounds, start=1)
    ]
    p = tmp_path_factory.mktemp("replay") / "l.jsonl"
    write(p, events)
    rep = inspect_ledger(p)
    replayed = epsilon_vs_server_curve(rep.events, DELTA)
    assert [r.epsilon_vs_server for r in rep.records] == pytest.approx(replayed, rel=1e-12)
    assert rep.records[-1].epsilon == pytest.approx(epsilon_vs_public(rep.events, DELTA), rel=1e-9)
