"""The hash-chained epsilon ledger: an append-only JSONL file with one fsync'd record per round.

Why hand-written: no maintained library offers a crash-safe, hash-chained JSON
lines log with the exact durability contract the round loop needs (a record is on
stable storage before the model it charges for is published); the whole format is
canonical JSON plus SHA-256 from the standard library.

File format (version 1). Every line is one canonical JSON object (keys sorted, no
whitespace, UTF-8, floats written as Python ``repr``, no NaN/Infinity) followed by
``\\n``. Line 1 is the header::

    {"created": T, "hash": H0, "kind": "header", "ledger_id": ID, "meta": {...},
     "prev_hash": GENESIS_HASH, "v": 1}

and every later line is a round record::

    {"accountant": {"name": "pld", "version": "..."}, "cohort": K, "colluders": c,
     "delta": D, "epsilon": E, "hash": H, "kind": "round",
     "mechanism": {"name": ..., "mode": ..., "l2_sensitivity": ..., "l1_sensitivity": ...,
                   "noise_variance": ..., "noise_multiplier": ..., "clip_norm": ...,
                   "clip_query_noise_multiplier": ..., "dim": ...},
     "prev_hash": P, "round": n, "sampling": {"scheme": ..., "rate": q, "population": N,
                                               "min_survivors": m, "eligible": n_e, "dropout": rho,
                                               "releases_empty": true},
     "survivors": S, "time": "2026-01-01T00:00:00.000000Z", "v": 1,
     "cohort_ids": [...], "survivor_ids": [...], "epsilon_vs_server": E_s}

(``epsilon_vs_server`` only when the writer accounted it; the sampling's ``min_survivors``,
``eligible`` and ``dropout`` only for a round with an abort rule, see
:mod:`dp.accountants.aborts`; ``releases_empty`` only for a round that records it has none:
an empty sample releases the noise alone).

``hash`` is the lowercase hex SHA-256 of the canonical JSON of the record without
its ``hash`` key; ``prev_hash`` is the previous line's ``hash`` (the header's
``prev_hash`` is :data:`GENESIS_HASH`, so the first hash binds the ledger id, the
creation time and the run metadata). ``epsilon`` is the cumulative epsilon after
this round at ``delta`` against those who only see the released models (the string
``"inf"`` once a round had no finite guarantee); ``epsilon_vs_server`` is the
cumulative epsilon against the server (the largest over clients, each composing the
rounds it survived in without amplification; ``"inf"`` in central mode, see
:mod:`dp.adversary`). ``cohort_ids`` and ``survivor_ids`` name the clients asked and
the clients whose update is in the released sum (the server knows both), so that
both numbers are recomputable from the ledger alone. Records written before these
three keys existed are still read (their ids are unknown, so accounting against the
server charges those rounds to every client). Every record of a ledger has the
same ``delta``.

Torn tails: a record is written with one ``write`` of the whole line and then
``fsync``'d; the caller publishes the new model only after :meth:`Ledger.append`
returns. A last line without its terminating newline (a crash mid-write) is
therefore a record whose model update was never published. :func:`verify_ledger`
reports it (``LedgerReport.torn_tail``) and never counts it; :meth:`Ledger.open`
on resume moves the torn bytes to ``<ledger>.torn`` (appending), truncates the
ledger to its last complete record and emits a :class:`TornTailWarning`, then
continues the chain from the last complete record.

Security:
    Assumption: the attacker cannot also rewrite an external anchor, i.e. the
    head hash carried by each published model checkpoint. Guarantee: changing,
    inserting, deleting or reordering any complete record breaks the hash chain
    (SHA-256 collision resistance, FIPS 180-4) or the canonical-encoding check and
    is reported with the first round that does not verify; removing records from
    the *end* of the file is detectable only against an anchor, which
    :func:`verify_ledger` checks when given ``expected_head``. The chain is a
    tamper-evidence device, not a signature: whoever can write the file can
    rebuild a consistent chain, so the anchor must be kept elsewhere.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import math
import os
import uuid
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dp.errors import ConfigurationError, LedgerError
from dp.events import DPMode, Mechanism, RoundEvent, Sampling

try:  # POSIX advisory lock so that two writers never interleave records
    import fcntl as _fcntl
except ImportError:  # pragma: no cover - non-POSIX platforms run without the lock
    _fcntl = None  # type: ignore[assignment]

__all__ = [
    "GENESIS_HASH",
    "LEDGER_VERSION",
    "Ledger",
    "LedgerRecord",
    "LedgerReport",
    "TornTail",
    "TornTailWarning",
    "canonical_json",
    "record_hash",
    "verify_ledger",
    "inspect_ledger",
]

LEDGER_VERSION = 1
#: prev_hash of the header line: SHA-256 of a fixed domain-separation string.
GENESIS_HASH = hashlib.sha256(b"privagg epsilon ledger v1 genesis").hexdigest()
#: Relative slack allowed when a cumulative epsilon is lower than the previous one
#: (accountants are monotone under composition; this absorbs float round-off only).
EPSILON_MONOTONE_RTOL = 1e-9


class TornTailWarning(UserWarning):
    """A resumed ledger ended in a torn record, which was moved aside and truncated."""


def canonical_json(obj: Mapping[str, Any]) -> bytes:
    """The canonical encoding: sorted keys, no whitespace, UTF-8, float repr, no NaN/Infinity.

    Raises:
        LedgerError: the object holds a non-finite float or a non-JSON type.
    """
    try:
        text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise LedgerError(f"value cannot be written canonically: {exc}") from exc
    return text.encode("utf-8")


def record_hash(record: Mapping[str, Any]) -> str:
    """Hex SHA-256 of the canonical JSON of ``record`` without its ``hash`` key."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(canonical_json(body)).hexdigest()


@dataclass(frozen=True, slots=True)
class LedgerRecord:
    """One verified round record.

    Attributes:
        round: the round number of the event.
        time: RFC 3339 UTC timestamp when the record was written.
        event: the privacy event, rebuilt from the record.
        epsilon: cumulative epsilon after this round against model users, as recorded.
        delta: the delta ``epsilon`` is stated at.
        accountant: name of the accountant that produced ``epsilon``.
        accountant_version: its version string.
        prev_hash: hash of the previous line.
        hash: this record's hash.
        line: 1-based line number in the file (the header is line 1).
        epsilon_vs_server: cumulative epsilon against the server, as recorded (None in a
            record written before it was recorded).
    """

    round: int
    time: str
    event: RoundEvent
    epsilon: float
    delta: float
    accountant: str
    accountant_version: str
    prev_hash: str
    hash: str
    line: int
    epsilon_vs_server: float | None = None


@dataclass(frozen=True, slots=True)
class TornTail:
    """An incomplete last line: bytes after the last newline.

    Attributes:
        offset: byte offset where the torn line starts (the length of the valid prefix).
        length: number of torn bytes.
        line: the line number it would have had.
        round: the round it would most likely have recorded (last complete round + 1).
    """

    offset: int
    length: int
    line: int
    round: int


@dataclass(frozen=True, slots=True)
class LedgerReport:
    """What :func:`inspect_ledger` found.

    Attributes:
        path: the file.
        ledger_id: from the header ('' if the header itself is bad).
        meta: run metadata from the header.
        created: header timestamp.
        records: the verified prefix of round records, in order.
        head_hash: hash of the last verified line (the header's if no rounds).
        torn_tail: the incomplete last line, if any (never counted in ``records``).
        error: why verification stopped early, or None if every complete line verified.
        first_bad_round: the first round that cannot be verified (0 = the header), or None.
        anchor_round: the round whose hash equals ``expected_head``, when one was given
            and found (0 = the header).
        head_mismatch: an ``expected_head`` was given, every complete line verified, and the
            head is not in the chain: the ledger is intact as far as it goes, but records were
            removed from its end or the head belongs to another ledger (``error`` says so).
    """

    path: str
    ledger_id: str
    meta: dict[str, Any]
    created: str
    records: tuple[LedgerRecord, ...]
    head_hash: str
    torn_tail: TornTail | None
    error: str | None
    first_bad_round: int | None
    anchor_round: int | None = None
    head_mismatch: bool = False

    @property
    def verified(self) -> bool:
        """True when every complete line verified (a torn tail is reported separately)."""
        return self.error is None

    @property
    def rounds(self) -> int:
        return len(self.records)

    @property
    def events(self) -> list[RoundEvent]:
        return [r.event for r in self.records]

    @property
    def delta(self) -> float | None:
        return self.records[0].delta if self.records else None

    @property
    def epsilon(self) -> float:
        """Recorded cumulative epsilon (against model users) after the last verified round (0 with no rounds)."""
        return self.records[-1].epsilon if self.records else 0.0

    @property
    def epsilon_vs_server(self) -> float | None:
        """Recorded cumulative epsilon against the server after the last verified round (None if not recorded)."""
        return self.records[-1].epsilon_vs_server if self.records else 0.0


# --------------------------------------------------------------------------- records


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _eps_json(x: float) -> float | str:
    return "inf" if math.isinf(x) else float(x)


def _round_dict(event: RoundEvent, *, epsilon: float, delta: float, accountant: str,
                accountant_version: str, prev_hash: str, time: str,
                epsilon_vs_server: float | None) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "v": LEDGER_VERSION,
        "kind": "round",
        "round": int(event.round),
        "time": time,
        "mechanism": {
            "name": event.mechanism.value,
            "mode": event.mode.value,
            "l2_sensitivity": float(event.l2_sensitivity),
            "l1_sensitivity": float(event.l1_sensitivity),
            "noise_variance": float(event.noise_variance),
            "noise_multiplier": float(event.noise_multiplier),
            "clip_norm": float(event.clip_norm),
            "clip_query_noise_multiplier": float(event.clip_query_noise_multiplier),
            "dim": int(event.dim),
        },
        "sampling": _sampling_dict(event),
        "cohort": int(event.cohort),
        "survivors": int(event.survivors),
        "colluders": int(event.colluders),
        "cohort_ids": [int(i) for i in event.cohort_ids],
        "survivor_ids": [int(i) for i in event.survivor_ids],
        "delta": float(delta),
        "epsilon": _eps_json(epsilon),
        "accountant": {"name": accountant, "version": accountant_version},
        "prev_hash": prev_hash,
    }
    if epsilon_vs_server is not None:
        rec["epsilon_vs_server"] = _eps_json(epsilon_vs_server)
    rec["hash"] = record_hash(rec)
    return rec


def _sampling_dict(event: RoundEvent) -> dict[str, Any]:
    samp: dict[str, Any] = {
        "scheme": event.sampling.value,
        "rate": float(event.sampling_rate),
        "population": int(event.population),
    }
    # The abort rule (dp.accountants.aborts), written only when the round had one, so that
    # records of rounds without it keep their old form.
    if event.min_survivors:
        samp["min_survivors"] = int(event.min_survivors)
        samp["eligible"] = int(event.eligible)
        samp["dropout"] = float(event.dropout)
    if event.releases_empty:
        samp["releases_empty"] = True
    return samp


def _event_from_record(rec: Mapping[str, Any]) -> RoundEvent:
    mech = rec["mechanism"]
    samp = rec["sampling"]
    event = RoundEvent(
        round=_as_int(rec["round"]),
        mode=DPMode(mech["mode"]),
        mechanism=Mechanism(mech["name"]),
        l2_sensitivity=_as_float(mech["l2_sensitivity"]),
        noise_variance=_as_float(mech["noise_variance"]),
        clip_norm=_as_float(mech["clip_norm"]),
        sampling=Sampling(samp["scheme"]),
        sampling_rate=_as_float(samp["rate"]),
        population=_as_int(samp["population"]),
        cohort=_as_int(rec["cohort"]),
        survivors=_as_int(rec["survivors"]),
        l1_sensitivity=_as_float(mech["l1_sensitivity"]),
        clip_query_noise_multiplier=_as_float(mech["clip_query_noise_multiplier"]),
        colluders=_as_int(rec["colluders"]),
        dim=_as_int(mech["dim"]),
        cohort_ids=_as_ids(rec.get("cohort_ids", [])),
        survivor_ids=_as_ids(rec.get("survivor_ids", [])),
        min_survivors=_as_int(samp.get("min_survivors", 0)),
        eligible=_as_int(samp.get("eligible", 0)),
        dropout=_as_float(samp.get("dropout", 0.0)),
        releases_empty=_as_bool(samp.get("releases_empty", False)),
    )
    nm = _as_float(mech["noise_multiplier"])
    if not math.isclose(nm, event.noise_multiplier, rel_tol=1e-12, abs_tol=1e-300):
        raise ValueError(f"noise_multiplier {nm} disagrees with the noise and sensitivity "
                         f"({event.noise_multiplier})")
    return event


def _as_int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"expected an integer, got {v!r}")
    return v


def _as_bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise TypeError(f"expected true or false, got {v!r}")
    return v


def _as_ids(v: Any) -> tuple[int, ...]:
    if not isinstance(v, list):
        raise TypeError(f"expected a list of client ids, got {v!r}")
    return tuple(_as_int(i) for i in v)


def _as_eps(v: Any) -> float:
    return math.inf if v == "inf" else _as_float(v)


def _as_float(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, float):
        raise TypeError(f"expected a float, got {v!r}")
    return v


# --------------------------------------------------------------------------- verification


class _Stop(Exception):
    def __init__(self, message: str, round_: int) -> None:
        super().__init__(message)
        self.round = round_


def inspect_ledger(
    path: str | os.PathLike[str], *, expected_head: str | None = None
) -> LedgerReport:
    """Read and verify a ledger without raising on a broken chain.

    Returns the verified prefix, the torn tail (if any) and, when verification
    stopped early, the reason and the first round that does not verify. Use
    :func:`verify_ledger` where a broken ledger must stop the caller.

    Args:
        path: the ledger file.
        expected_head: a head hash kept outside the ledger (e.g. in the published
            model checkpoint). If given, it must be the hash of a verified line;
            otherwise the report carries an error (records were removed from the end,
            or the anchor belongs to another ledger).

    Raises:
        LedgerError: the file cannot be read at all.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise LedgerError(f"cannot read ledger {p}: {exc}", round=0) from exc
    return _inspect_bytes(data, str(p), expected_head=expected_head)


def _inspect_bytes(data: bytes, path: str, *, expected_head: str | None) -> LedgerReport:
    complete_end = data.rfind(b"\n") + 1  # 0 when there is no newline at all
    body, tail = data[:complete_end], data[complete_end:]
    lines = body.split(b"\n")[:-1] if body else []
    records: list[LedgerRecord] = []
    ledger_id, meta, created = "", {}, ""
    head = GENESIS_HASH
    error: str | None = None
    first_bad: int | None = None
    hashes: dict[str, int] = {}
    try:
        if not data:
            raise _Stop("the ledger is empty (no header)", 0)
        for idx, raw in enumerate(lines):
            lineno = idx + 1
            expect_round = records[-1].round + 1 if records else 1
            bad_round = 0 if idx == 0 else expect_round
            try:
                rec = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as exc:
                raise _Stop(f"line {lineno} is not valid UTF-8 JSON: {exc}", bad_round) from exc
            if not isinstance(rec, dict):
                raise _Stop(f"line {lineno} is not a JSON object", bad_round)
            try:
                canon = canonical_json(rec)
            except LedgerError as exc:
                raise _Stop(f"line {lineno}: {exc}", bad_round) from exc
            if canon != raw:
                raise _Stop(f"line {lineno} is not in canonical form (edited?)", bad_round)
            if rec.get("v") != LEDGER_VERSION:
                raise _Stop(f"line {lineno} has unsupported version {rec.get('v')!r}", bad_round)
            if rec.get("hash") != record_hash(rec):
                raise _Stop(f"line {lineno}: stored hash does not match its content", bad_round)
            if rec.get("prev_hash") != head:
                raise _Stop(
                    f"line {lineno}: prev_hash does not match line {lineno - 1} "
                    "(a record was changed, removed, inserted or reordered)", bad_round)
            if idx == 0:
                if rec.get("kind") != "header":
                    raise _Stop("line 1 is not a ledger header", 0)
                lid, m, c = rec.get("ledger_id"), rec.get("meta"), rec.get("created")
                if not (isinstance(lid, str) and isinstance(m, dict) and isinstance(c, str)):
                    raise _Stop("the header lacks ledger_id/meta/created", 0)
                ledger_id, meta, created = lid, m, c
            else:
                if rec.get("kind") != "round":
                    raise _Stop(f"line {lineno} is not a round record", bad_round)
                try:
                    event = _event_from_record(rec)
                    eps = _as_eps(rec["epsilon"])
                    eps_server = _as_eps(rec["epsilon_vs_server"]) if "epsilon_vs_server" in rec else None
                    delta = _as_float(rec["delta"])
                    acc = rec["accountant"]
                    acc_name, acc_ver = acc["name"], acc["version"]
                    when = rec["time"]
                    if not (isinstance(acc_name, str) and isinstance(acc_ver, str)
                            and isinstance(when, str)):
                        raise TypeError("accountant name/version and time must be strings")
                except (KeyError, TypeError, ValueError, ConfigurationError) as exc:
                    raise _Stop(f"line {lineno}: malformed round record: {exc}", bad_round) from exc
                if records and event.round <= records[-1].round:
                    raise _Stop(f"line {lineno}: round {event.round} does not follow round "
                                f"{records[-1].round}", bad_round)
                if records and delta != records[0].delta:
                    raise _Stop(f"line {lineno}: delta {delta} differs from the ledger's "
                                f"{records[0].delta}", bad_round)
                if not (0.0 <= eps and 0.0 < delta < 1.0 and (eps_server is None or eps_server >= 0.0)):
                    raise _Stop(f"line {lineno}: epsilon/delta out of range", bad_round)
                records.append(LedgerRecord(event.round, when, event, eps, delta, acc_name,
                                            acc_ver, head, rec["hash"], lineno, eps_server))
            head = rec["hash"]
            hashes[head] = 0 if idx == 0 else records[-1].round
    except _Stop as stop:
        error, first_bad = str(stop), stop.round
    torn = None
    if tail:
        nxt = records[-1].round + 1 if records else (1 if lines else 0)
        torn = TornTail(offset=complete_end, length=len(tail), line=len(lines) + 1, round=nxt)
    anchor_round = None
    head_mismatch = False
    if expected_head is not None:
        if expected_head in hashes:
            anchor_round = hashes[expected_head]
        elif error is None:
            head_mismatch = True
            error = (f"expected head {expected_head[:16]}... is not in the verified chain "
                     "(records removed from the end, or the anchor belongs to another ledger)")
            first_bad = records[-1].round + 1 if records else 1
    return LedgerReport(path=path, ledger_id=ledger_id, meta=meta, created=created,
                        records=tuple(records), head_hash=head, torn_tail=torn, error=error,
                        first_bad_round=first_bad, anchor_round=anchor_round,
                        head_mismatch=head_mismatch)


def verify_ledger(
    path: str | os.PathLike[str], *, expected_head: str | None = None
) -> LedgerReport:
    """Verify a ledger and return its report; a torn tail is reported, not raised.

    Raises:
        LedgerError: a complete line does not verify, or ``expected_head`` is not in
            the chain; ``round`` is the first round that cannot be verified (0 = header).
    """
    report = inspect_ledger(path, expected_head=expected_head)
    if report.error is not None:
        raise LedgerError(f"ledger {path} does not verify at round {report.first_bad_round}: "
                          f"{report.error}", round=report.first_bad_round)
    return report


# --------------------------------------------------------------------------- writer


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _fsync_dir(path: Path) -> None:
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class Ledger:
    """An open, verified ledger that appends one durable record per round.

    Use :meth:`open`; close with :meth:`close` or a ``with`` block. One process
    may hold a ledger open for writing at a time (POSIX advisory lock).
    """

    def __init__(self, path: Path, fd: int, report: LedgerReport, *, accountant: str,
                 accountant_version: str) -> None:
        self._path = path
        self._fd: int | None = fd
        self._records = list(report.records)
        self._head = report.head_hash
        self._size = os.fstat(fd).st_size
        self._ledger_id = report.ledger_id
        self._meta = dict(report.meta)
        self._accountant = accountant
        self._accountant_version = accountant_version
        self._broken: str | None = None

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        create_meta: Mapping[str, Any] | None = None,
        ledger_id: str | None = None,
        accountant: str = "pld",
        accountant_version: str = "",
    ) -> Ledger:
        """Open ``path`` for appending, creating it if it does not exist.

        An existing ledger is verified first and the chain continues from its last
        record. A torn last line is moved to ``<path>.torn`` and truncated away with a
        :class:`TornTailWarning` (its model update was never published: the caller
        publishes only after :meth:`append` returns).

        Args:
            path: the JSONL file.
            create_meta: JSON-serialisable run metadata bound into the header when the
                file is created (ignored when resuming; see :attr:`meta`).
            ledger_id: the id written into a new header (default: a random UUID).
            accountant: name of the accountant whose epsilon :meth:`append` records.
            accountant_version: its version string (e.g. from ``ACCOUNTANT_VERSIONS``).

        Raises:
            LedgerError: the existing file does not verify (``round`` = first bad round),
                another process holds it open, or it cannot be created or written.
        """
        p = Path(path)
        try:
            fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            raise LedgerError(f"cannot open ledger {p}: {exc}", round=0) from exc
        try:
            if _fcntl is not None:
                try:
                    _fcntl.flock(fd, _fcntl.LOCK_EX | _fcntl.LOCK_NB)
                except OSError as exc:
                    raise LedgerError(f"ledger {p} is open for writing in another process",
                                      round=0) from exc
            data = os.pread(fd, os.fstat(fd).st_size, 0)
            if data:
                report = _inspect_bytes(data, str(p), expected_head=None)
                if report.error is not None:
                    raise LedgerError(f"ledger {p} does not verify at round "
                                      f"{report.first_bad_round}: {report.error}",
                                      round=report.first_bad_round)
                if report.torn_tail is not None:
                    cls._repair_torn_tail(p, fd, data, report.torn_tail)
                    data = data[:report.torn_tail.offset]
            if not data:
                header: dict[str, Any] = {
                    "v": LEDGER_VERSION,
                    "kind": "header",
                    "ledger_id": ledger_id if ledger_id is not None else uuid.uuid4().hex,
                    "created": _now(),
                    "meta": dict(create_meta or {}),
                    "prev_hash": GENESIS_HASH,
                }
                header["hash"] = record_hash(header)
                data = canonical_json(header) + b"\n"
                try:
                    _write_all(fd, data)
                    os.fsync(fd)
                    _fsync_dir(p)
                except OSError as exc:
                    raise LedgerError(f"cannot write ledger header to {p}: {exc}",
                                      round=0) from exc
            report = _inspect_bytes(data, str(p), expected_head=None)
            return cls(p, fd, report, accountant=accountant, accountant_version=accountant_version)
        except BaseException:
            os.close(fd)
            raise

    @staticmethod
    def _repair_torn_tail(p: Path, fd: int, data: bytes, torn: TornTail) -> None:
        side = p.with_name(p.name + ".torn")
        try:
            with open(side, "ab") as f:
                f.write(data[torn.offset:] + b"\n")
                f.flush()
                os.fsync(f.fileno())
            os.ftruncate(fd, torn.offset)
            os.fsync(fd)
        except OSError as exc:
            raise LedgerError(f"cannot repair the torn tail of {p}: {exc}",
                              round=torn.round) from exc
        what = "the header" if torn.offset == 0 else f"round {torn.round}"
        warnings.warn(
            f"ledger {p}: line {torn.line} ({what}) was torn by a crash mid-write; its "
            f"{torn.length} bytes were moved to {side} and the ledger truncated to its last "
            "complete record. That round's update was never published.",
            TornTailWarning, stacklevel=3)

    # -- properties

    @property
    def path(self) -> Path:
        return self._path

    @property
    def ledger_id(self) -> str:
        return self._ledger_id

    @property
    def meta(self) -> dict[str, Any]:
        return dict(self._meta)

    @property
    def records(self) -> tuple[LedgerRecord, ...]:
        return tuple(self._records)

    @property
    def events(self) -> list[RoundEvent]:
        return [r.event for r in self._records]

    @property
    def head_hash(self) -> str:
        """Hash of the last durable line: store it in the published model checkpoint."""
        return self._head

    @property
    def last_round(self) -> int:
        return self._records[-1].round if self._records else 0

    @property
    def epsilon(self) -> float:
        return self._records[-1].epsilon if self._records else 0.0

    # -- writing

    def append(self, event: RoundEvent, *, epsilon: float, delta: float,
               accountant: str | None = None,
               accountant_version: str | None = None,
               epsilon_vs_server: float | None = None) -> LedgerRecord:
        """Append the record of ``event`` and make it durable before returning.

        Publish the new model only after this returns (then a crash can never leave
        a published model whose round is missing from the ledger).

        Args:
            event: the round's privacy event; its round must exceed the last one.
            epsilon: cumulative epsilon after this round against model users, at ``delta``.
            delta: the run's delta (the same for every record).
            epsilon_vs_server: cumulative epsilon against the server (``math.inf`` in
                central mode); None (a caller that accounts one view) leaves it out of the
                record, and the audit then recomputes it without comparing.
            accountant: overrides the accountant name given to :meth:`open`.
            accountant_version: overrides its version.

        Raises:
            ConfigurationError: round not increasing, delta changed, epsilon not finite
                or lower than the previous cumulative epsilon.
            LedgerError: the ledger is closed, a previous write failed, or the write or
                fsync failed (the partial line is truncated away first).
        """
        if self._fd is None:
            raise LedgerError(f"ledger {self._path} is closed", round=event.round)
        if self._broken is not None:
            raise LedgerError(f"ledger {self._path} is unusable after a failed write: "
                              f"{self._broken}", round=event.round)
        if not isinstance(event, RoundEvent):
            raise ConfigurationError(f"expected a RoundEvent, got {type(event).__name__}")
        if event.round <= self.last_round:
            raise ConfigurationError(f"round {event.round} does not follow the ledger's last "
                                     f"round {self.last_round}")
        if not (isinstance(epsilon, (int, float)) and not math.isnan(epsilon) and epsilon >= 0):
            raise ConfigurationError(f"epsilon must be >= 0 (inf: no finite guarantee), "
                                     f"got {epsilon!r}")
        if not (isinstance(delta, (int, float)) and 0.0 < delta < 1.0):
            raise ConfigurationError(f"delta must be in (0, 1), got {delta!r}")
        eps_server = epsilon_vs_server
        if eps_server is not None and not (
            isinstance(eps_server, (int, float)) and not math.isnan(eps_server) and eps_server >= 0
        ):
            raise ConfigurationError(f"epsilon_vs_server must be >= 0 (inf: unbounded), got {eps_server!r}")
        if self._records:
            if float(delta) != self._records[0].delta:
                raise ConfigurationError(f"delta {delta} differs from the ledger's delta "
                                         f"{self._records[0].delta}; one ledger has one delta")
            prev = self._records[-1].epsilon
            if epsilon < prev * (1.0 - EPSILON_MONOTONE_RTOL):
                raise ConfigurationError(f"cumulative epsilon {epsilon} is below the previous "
                                         f"{prev}; pass the cumulative value")
            prev_s = self._records[-1].epsilon_vs_server
            if prev_s is not None and eps_server is not None and eps_server < prev_s * (1.0 - EPSILON_MONOTONE_RTOL):
                raise ConfigurationError(f"cumulative epsilon against the server {eps_server} is below the "
                                         f"previous {prev_s}; pass the cumulative value")
        name = self._accountant if accountant is None else accountant
        version = self._accountant_version if accountant_version is None else accountant_version
        rec = _round_dict(event, epsilon=float(epsilon), delta=float(delta), accountant=name,
                          accountant_version=version, prev_hash=self._head, time=_now(),
                          epsilon_vs_server=None if eps_server is None else float(eps_server))
        line = canonical_json(rec) + b"\n"
        try:
            _write_all(self._fd, line)
            os.fsync(self._fd)
        except OSError as exc:
            self._broken = str(exc)
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)
                os.fsync(self._fd)
            raise LedgerError(f"cannot append round {event.round} to {self._path}: {exc}; "
                              "do not publish this round's model", round=event.round) from exc
        self._size += len(line)
        record = LedgerRecord(event.round, rec["time"], event, float(epsilon), float(delta), name,
                              version, self._head, rec["hash"], len(self._records) + 2,
                              None if eps_server is None else float(eps_server))
        self._records.append(record)
        self._head = rec["hash"]
        return record

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # also releases the flock

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Ledger({str(self._path)!r}, rounds={len(self._records)}, head={self._head[:12]})"


def events_of(records: Sequence[LedgerRecord]) -> list[RoundEvent]:
    """The events of ``records``, in order (for the accountants)."""
    return [r.event for r in records]
