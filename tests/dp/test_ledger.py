"""Tests of dp.ledger: the chain, its canonical form, tamper detection, torn tails, resume."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dp.errors import ConfigurationError, LedgerError
from dp.events import DPMode, Mechanism, RoundEvent, Sampling
from dp.ledger import (
    GENESIS_HASH,
    Ledger,
    TornTailWarning,
    canonical_json,
    inspect_ledger,
    record_hash,
    verify_ledger,
)

DELTA = 1e-5


def make_event(r: int, *, sigma: float = 1.2, survivors: int = 9) -> RoundEvent:
    return RoundEvent(
        round=r,
        mode=DPMode.CENTRAL,
        mechanism=Mechanism.GAUSSIAN,
        l2_sensitivity=1.0,
        noise_variance=sigma * sigma,
        clip_norm=1.0,
        sampling=Sampling.POISSON,
        sampling_rate=0.01,
        population=1000,
        cohort=10,
        survivors=survivors,
        dim=7,
    )


def write_ledger(path: Path, rounds: int) -> list[str]:
    with Ledger.open(path, create_meta={"run": "test", "seed": 3}) as led:
        for r in range(1, rounds + 1):
            led.append(make_event(r, sigma=1.0 + 0.01 * r), epsilon=0.1 * r, delta=DELTA)
    return path.read_bytes().split(b"\n")[:-1]  # type: ignore[return-value]


def rewrite_chain(path: Path, records: list[dict]) -> None:
    """A forger that rebuilds a consistent chain: tests semantic checks beyond the hashes."""
    prev = GENESIS_HASH
    out = []
    for rec in records:
        rec = dict(rec)
        rec["prev_hash"] = prev
        rec["hash"] = record_hash(rec)
        prev = rec["hash"]
        out.append(canonical_json(rec) + b"\n")
    path.write_bytes(b"".join(out))


def load(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_bytes().split(b"\n")[:-1]]


# ---------------------------------------------------------------- round trip and format


def test_round_trip_records_events_and_head(tmp_path: Path) -> None:
    p = tmp_path / "l.jsonl"
    with Ledger.open(p, create_meta={"run": "x"}, ledger_id="abc", accountant="pld", accountant_version="v9") as led:
        recs = [led.append(make_event(r), epsilon=0.5 * r, delta=DELTA) for r in (1, 2, 5)]
        head = led.head_hash
        assert led.last_round == 5 and led.epsilon == 2.5
        assert led.events == [make_event(1), make_event(2), make_event(5)]
        assert led.meta == {"run": "x"} and led.ledger_id == "abc"
    rep = verify_ledger(p)
    assert rep.verified and rep.rounds == 3 and rep.head_hash == head == recs[-1].hash
    assert rep.events == [make_event(1), make_event(2), make_event(5)]
    assert [r.epsilon for r in rep.records] == [0.5, 1.0, 2.5]
    assert rep.delta == DELTA and rep.epsilon == 2.5 and rep.ledger_id == "abc"
    assert rep.records[0].accountant == "pld" and rep.records[0].accountant_version == "v9"
    assert [r.line for r in rep.records] == [2, 3, 4] == [r.line for r in recs]


def test_every_line_is_canonical_and_chained(tmp_path: Path) -> None:
    p = tmp_path / "l.jsonl"
    lines = write_ledger(p, 4)
    prev = GENESIS_HASH
    for raw in lines:
        rec = json.loads(raw)
        assert canonical_json(rec) == raw
        assert b" " not in raw and list(rec) == sorted(rec)
        body = {k: v for k, v in rec.items() if k != "hash"}
        expected = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
        assert rec["hash"] == expected and rec["prev_hash"] == prev
        prev = rec["hash"]
    header, first = json.loads(lines[0]), json.loads(lines[1])
    assert header["kind"] == "header" and header["meta"] == {"run": "test", "seed": 3}
    for key in (
        "round",
        "time",
        "mechanism",
        "sampling",
        "cohort",
        "survivors",
        "delta",
        "epsilon",
        "prev_hash",
        "hash",
    ):
        assert key in first
    assert first["mechanism"]["noise_multiplier"] == pytest.approx(1.01)


def test_genesis_constant_is_documented_value() -> None:
    assert GENESIS_HASH == hashlib.sha256(b"privagg epsilon ledger v1 genesis").hexdigest()


def test_known_answer_vector_still_verifies() -> None:
    """A v1 ledger written by this module (see tests/vectors/ledger/PROVENANCE.md)."""
    vec = Path(__file__).parents[1] / "vectors" / "ledger" / "v1_three_rounds.jsonl"
    rep = verify_ledger(vec)
    expected = json.loads((vec.parent / "v1_three_rounds.expected.json").read_text())
    assert rep.head_hash == expected["head_hash"]
    assert rep.rounds == expected["rounds"] and rep.epsilon == expected["epsilon"]
    assert rep.ledger_id == expected["ledger_id"]


def test_canonical_json_refuses_nan() -> None:
    with pytest.raises(LedgerError, match="canonically"):
        canonical_json({"x": float("nan")})


# ---------------------------------------------------------------- tamper detection


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_single_byte_change_is_detected(tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    p = tmp_path_factory.mktemp("b") / "l.jsonl"
    if not p.exists():
        write_ledger(p, 5)
    original = p.read_bytes()
    pos = data.draw(st.integers(0, len(original) - 1), label="pos")
    new = data.draw(st.integers(0, 255).filter(lambda b: b != original[pos]), label="byte")
    tampered = bytearray(original)
    tampered[pos] = new
    q = p.with_name("t.jsonl")
    q.write_bytes(bytes(tampered))
    line_of_pos = original[:pos].count(b"\n")  # 0 = header
    rep = inspect_ledger(q)
    if pos == len(original) - 1:
        # The final newline: the last record now looks torn and is not counted.
        assert rep.torn_tail is not None or not rep.verified
        assert rep.rounds < 5
    else:
        assert not rep.verified
        assert rep.first_bad_round is not None and rep.first_bad_round <= max(line_of_pos, 1)
        with pytest.raises(LedgerError) as ei:
            verify_ledger(q)
        assert ei.value.round == rep.first_bad_round


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(k=st.integers(1, 6))
def test_deleting_any_record_is_detected(tmp_path_factory: pytest.TempPathFactory, k: int) -> None:
    p = tmp_path_factory.mktemp("d") / "l.jsonl"
    lines = write_ledger(p, 6)
    head = json.loads(lines[-1])["hash"]
    del lines[k]  # line k holds round k
    p.write_bytes(b"".join(x + b"\n" for x in lines))
    if k < 6:
        with pytest.raises(LedgerError) as ei:
            verify_ledger(p)
        assert ei.value.round == k
    else:
        # Truncation at the end keeps a valid prefix: only the external anchor reveals it.
        assert verify_ledger(p).rounds == 5
        with pytest.raises(LedgerError, match="expected head") as ei:
            verify_ledger(p, expected_head=head)
        assert ei.value.round == 6


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pair=st.lists(st.integers(0, 6), min_size=2, max_size=2, unique=True))
def test_swapping_any_two_lines_is_detected(tmp_path_factory: pytest.TempPathFactory, pair: list[int]) -> None:
    i, j = sorted(pair)
    p = tmp_path_factory.mktemp("s") / "l.jsonl"
    lines = write_ledger(p, 6)
    lines[i], lines[j] = lines[j], lines[i]
    p.write_bytes(b"".join(x + b"\n" for x in lines))
    with pytest.raises(LedgerError) as ei:
        verify_ledger(p)
    assert ei.value.round == i  # line i held round i (0 = the header)


def test_anchor_in_chain_reports_its_round(tmp_path: Path) -> None:
    p = tmp_path / "l.jsonl"
    lines = write_ledger(p, 4)
    h2 = json.loads(lines[2])["hash"]
    assert verify_ledger(p, expected_head=h2).anchor_round == 2
    assert verify_ledger(p, expected_head=json.loads(lines[0])["hash"]).anchor_round == 0


# ---------------------------------------------------------------- semantic checks (forged chains)


def test_forged_chain_with_non_increasing_round_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "l.jsonl"
    write_ledger(p, 3)
    recs = load(p)
    recs[3]["round"] = 2
    rewrite_chain(p, recs)
    with pytest.raises(LedgerError, match="does not follow") as ei:
        verify_ledger(p)
    assert ei.value.round == 3


def test_forged_chain_with_changed_delta_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "l.jsonl"
    write_ledger(p, 3)
    recs = load(p)
    recs[2]["delta"] = 1e-6
    rewrite_chain(p, recs)
    with pytest.raises(LedgerError, match="delta") as ei:
        verify_ledger(p)
    assert ei.value.round == 2


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda r: r["mechanism"].update(noise_multiplier=9.0), "noise_multiplier"),
        (lambda r: r.pop("survivors"), "malformed"),
        (lambda r: r.update(cohort=10.0), "malformed"),
        (lambda r: r.update(epsilon=1), "malformed"),
        (lambda r: r["mechanism"].update(name="laplace"), "malformed"),
        (lambda r: r.update(survivors=11), "malformed"),
        (lambda r: r.update(time=5), "malformed"),
        (lambda r: r.update(kind="note"), "not a round record"),
        (lambda r: r.update(v=2), "unsupported version"),
        (lambda r: r.update(epsilon=-1.0), "out of range"),
    ],
)
def test_forged_malformed_record_is_refused(tmp_path: Path, mutate, match: str) -> None:
    p = tmp_path / "l.jsonl"
    write_ledger(p, 2)
    recs = load(p)
    mutate(recs[1])
    rewrite_chain(p, recs)
    with pytest.raises(LedgerError, match=match) as ei:
        verify_ledger(p)
    assert ei.value.round == 1


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda r: r.update(kind="round"), "not a ledger header"),
        (lambda r: r.pop("ledger_id"), "lacks ledger_id"),
    ],
)
def test_forged_bad_header_is_round_zero(tmp_path: Path, mutate, match: str) -> None:
    p = tmp_path / "l.jsonl"
    write_ledger(p, 1)
    recs = load(p)
    mutate(recs[0])
    rewrite_chain(p, recs)
    with pytest.raises(LedgerError, match=match) as ei:
        verify_ledger(p)
    assert ei.value.round == 0


def test_non_object_and_non_utf8_lines(tmp_path: Path) -> None:
    p = tmp_path / "l.jsonl"
    lines = write_ledger(p, 2)
    p.write_bytes(lines[0] + b"\n[1,2]\n")
    with pytest.raises(LedgerError, match="not a JSON object"):
        verify_ledger(p)
    p.write_bytes(lines[0] + b"\n\xff\xfe\n")
    with pytest.raises(LedgerError, match="UTF-8 JSON"):
        verify_ledger(p)
    p.write_bytes(lines[0] + b'\n{"x":NaN}\n')
    with pytest.raises(LedgerError, match="canonically"):
        verify_ledger(p)


def test_empty_and_unreadable_files(tmp_path: Path) -> None:
    p = tmp_path / "empty.jsonl"
    p.write_bytes(b"")
    with pytest.raises(LedgerError, match="empty") as ei:
        verify_ledger(p)
    assert ei.value.round == 0
    with pytest.raises(LedgerError, match="cannot read"):
        verify_ledger(tmp_path / "missing.jsonl")


# ---------------------------------------------------------------- torn tails and resume


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frac=st.floats(0.0, 1.0, exclude_max=True))
def test_torn_tail_is_reported_never_counted_and_repaired_on_resume(
    tmp_path_factory: pytest.TempPathFactory, frac: float
) -> None:
    d = tmp_path_factory.mktemp("t")
    p = d / "l.jsonl"
    lines = write_ledger(p, 4)
    good = b"".join(x + b"\n" for x in lines[:4])  # header + rounds 1..3
    cut = int(frac * (len(lines[4]) + 1))  # any strict prefix of "record 4 + newline"
    if cut == len(lines[4]) + 1:
        cut -= 1
    p.write_bytes(good + (lines[4] + b"\n")[:cut])
    rep = inspect_ledger(p)
    assert rep.verified and rep.rounds == 3
    if cut == 0:
        assert rep.torn_tail is None
        return
    assert rep.torn_tail is not None and rep.torn_tail.round == 4 and rep.torn_tail.line == 5
    assert rep.torn_tail.offset == len(good) and rep.torn_tail.length == cut
    with pytest.warns(TornTailWarning, match="round 4"):
        led = Ledger.open(p)
    with led:
        assert led.last_round == 3 and led.head_hash == json.loads(lines[3])["hash"]
        led.append(make_event(4, sigma=2.0), epsilon=0.4, delta=DELTA)
    rep2 = verify_ledger(p)
    assert rep2.rounds == 4 and rep2.torn_tail is None
    assert rep2.records[-1].event.noise_variance == 4.0
    assert (d / "l.jsonl.torn").read_bytes() == (lines[4] + b"\n")[:cut] + b"\n"


def test_torn_header_is_replaced_on_open(tmp_path: Path) -> None:
    p = tmp_path / "l.jsonl"
    p.write_bytes(b'{"created":"2026')
    rep = inspect_ledger(p)
    assert rep.torn_tail is not None and rep.torn_tail.offset == 0 and rep.rounds == 0
    with pytest.warns(TornTailWarning, match="the header"):
        led = Ledger.open(p, create_meta={"a": 1})
    with led:
        led.append(make_event(1), epsilon=0.1, delta=DELTA)
    assert verify_ledger(p).meta == {"a": 1}


def test_resume_continues_the_chain(tmp_path: Path) -> None:
    p = tmp_path / "l.jsonl"
    write_ledger(p, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with Ledger.open(p, create_meta={"ignored": True}) as led:
            assert led.meta == {"run": "test", "seed": 3} and led.last_round == 3
            led.append(make_event(4), epsilon=0.5, delta=DELTA)
    rep = verify_ledger(p)
    assert [r.round for r in rep.records] == [1, 2, 3, 4]


def test_open_refuses_a_corrupt_ledger(tmp_path: Path) -> None:
    p = tmp_path / "l.jsonl"
    lines = write_ledger(p, 3)
    del lines[2]
    p.write_bytes(b"".join(x + b"\n" for x in lines))
    with pytest.raises(LedgerError) as ei:
        Ledger.open(p)
    assert ei.value.round == 2


# ---------------------------------------------------------------- append misuse and failures


def test_append_validates_its_inputs(tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "l.jsonl") as led:
        led.append(make_event(1), epsilon=1.0, delta=DELTA)
        with pytest.raises(ConfigurationError, match="does not follow"):
            led.append(make_event(1), epsilon=1.0, delta=DELTA)
        with pytest.raises(ConfigurationError, match="one ledger has one delta"):
            led.append(make_event(2), epsilon=1.0, delta=1e-6)
        with pytest.raises(ConfigurationError, match="below the previous"):
            led.append(make_event(2), epsilon=0.5, delta=DELTA)
        with pytest.raises(ConfigurationError, match="epsilon must be"):
            led.append(make_event(2), epsilon=float("nan"), delta=DELTA)
        with pytest.raises(ConfigurationError, match="delta must be in"):
            led.append(make_event(2), epsilon=2.0, delta=0.0)
        with pytest.raises(ConfigurationError, match="RoundEvent"):
            led.append(make_event(2).to_dict(), epsilon=2.0, delta=DELTA)  # type: ignore[arg-type]
        assert led.last_round == 1
    assert verify_ledger(tmp_path / "l.jsonl").rounds == 1


def test_append_after_close_is_refused(tmp_path: Path) -> None:
    led = Ledger.open(tmp_path / "l.jsonl")
    led.close()
    led.close()  # idempotent
    with pytest.raises(LedgerError, match="closed") as ei:
        led.append(make_event(1), epsilon=0.1, delta=DELTA)
    assert ei.value.round == 1


def test_second_writer_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "l.jsonl"
    with Ledger.open(p):
        with pytest.raises(LedgerError, match="another process"):
            Ledger.open(p)
    Ledger.open(p).close()  # the lock is released on close


def test_failed_write_truncates_and_poisons_the_ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "l.jsonl"
    led = Ledger.open(p)
    led.append(make_event(1), epsilon=0.1, delta=DELTA)
    size = p.stat().st_size
    real_write = os.write

    def half_write(fd: int, data: bytes) -> int:
        real_write(fd, bytes(data[:10]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", half_write)
    with pytest.raises(LedgerError, match="do not publish") as ei:
        led.append(make_event(2), epsilon=0.2, delta=DELTA)
    assert ei.value.round == 2
    monkeypatch.setattr(os, "write", real_write)
    assert p.stat().st_size == size  # the partial line was truncated away
    with pytest.raises(LedgerError, match="unusable"):
        led.append(make_event(2), epsilon=0.2, delta=DELTA)
    led.close()
    assert verify_ledger(p).rounds == 1


def test_open_reports_uncreatable_path(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="cannot open") as ei:
        Ledger.open(tmp_path / "no" / "such" / "dir.jsonl")
    assert ei.value.round == 0


def test_header_write_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(fd: int, data: bytes) -> int:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(os, "write", fail)
    with pytest.raises(LedgerError, match="header"):
        Ledger.open(tmp_path / "l.jsonl")


def test_torn_tail_repair_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "l.jsonl"
    write_ledger(p, 1)
    with open(p, "ab") as f:
        f.write(b'{"acc')

    def fail(fd: int, length: int) -> None:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(os, "ftruncate", fail)
    with pytest.raises(LedgerError, match="cannot repair") as ei:
        Ledger.open(p)
    assert ei.value.round == 2


def test_infinite_epsilon_is_recorded_and_stays_infinite(tmp_path: Path) -> None:
    p = tmp_path / "l.jsonl"
    with Ledger.open(p) as led:
        led.append(make_event(1), epsilon=0.5, delta=DELTA)
        led.append(make_event(2), epsilon=float("inf"), delta=DELTA)
        with pytest.raises(ConfigurationError, match="below the previous"):
            led.append(make_event(3), epsilon=1.0, delta=DELTA)
    assert b'"epsilon":"inf"' in p.read_bytes()
    rep = verify_ledger(p)
    assert rep.epsilon == float("inf") and rep.records[0].epsilon == 0.5
