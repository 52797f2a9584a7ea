"""A client's own hash-chained record of the rounds it joined, and the epsilon limit it enforces from it.

The server keeps the run's ledger; a client cannot rely on it. Each client (in
process, or on a Flower node) therefore keeps its own record: one entry per round
in which it sent anything derived from its input, with the noise parameters *it*
verified (from its own configuration or policy floor, never numbers the server
sent). From that record alone it computes its epsilon against the server and
refuses a round that would take it past its own limit, before the round touches
its data.

API (everything a Flower node or the in-process guard needs)::

    from dp.client_record import ClientRecord, client_round_event, DEFAULT_CLIENT_MAX_EPSILON

    record = ClientRecord.create("7", delta=1e-5)       # new, in memory
    record = ClientRecord.open(path, client="7", delta=1e-5)  # JSONL file: load + verify, or create
    record = ClientRecord.from_bytes(blob, client="7")  # e.g. from a Flower node's state

    event = client_round_event(dp_config, round=r, dim=d, scale=s, clip_norm=c)
    record.check(event, max_epsilon=DEFAULT_CLIENT_MAX_EPSILON)  # ClientBudgetExceededError: refuse
    record.charge(event, max_epsilon=...)  # check + append (+ fsync when opened from a file);
                                           # call it BEFORE the first message derived from the input leaves
    record.epsilon_vs_server()             # from the record alone
    blob = record.to_bytes()               # the same bytes as the JSONL file
    report = verify_client_record(path_or_bytes, expected_head=None)  # what ``privagg audit --client-record`` prints

When a client charges a round: when it sends anything derived from its input, even
if the round later aborts (the client cannot know whether the server combined it).
``charge`` is therefore called once the input is ready and before it is sent; a
refused round (``check`` raised) charges nothing and the client sends nothing.

File format (version 1): canonical JSON lines (see :func:`dp.ledger.canonical_json`).
Line 1 is the header ``{"client", "created", "delta", "hash", "kind": "client-record",
"prev_hash": CLIENT_GENESIS_HASH, "record_id", "v": 1}``; every later line is a charge
``{"epsilon", "event", "hash", "kind": "charge", "max_epsilon", "n", "prev_hash",
"round", "time", "v": 1}`` whose ``event`` is :meth:`dp.events.RoundEvent.to_dict` of
the server's view of the round (q = 1) and ``epsilon`` the cumulative epsilon
against the server after it (``"inf"`` when unbounded). Hashes chain exactly as in
the ledger (SHA-256 of the canonical JSON without ``hash``).

Security:
    Assumption: the parameters in ``event`` are ones the client enforced itself
    (its own noise share, and the min-survivors, colluders, clip, ring scale and
    mechanism of its own floor), so that the noise of ``survivors - colluders``
    honest clients really is in every sum its update entered. Guarantee: the
    record's epsilon upper-bounds the client's privacy loss against the server
    (which chooses cohorts and sees who survived: no amplification, see
    :mod:`dp.adversary`) over every round it sent something in; :meth:`check`
    refuses before anything leaves, and the composition it uses (exact Gaussian
    DP, or Renyi DP) stays valid when the stopping point is chosen adaptively
    (Smith & Thakurta 2022; Feldman & Zrnic 2021). The hash chain makes an edited,
    reordered or truncated-in-the-middle record detectable; truncation at the end
    is detectable only against a head hash kept elsewhere (``expected_head``).
    Central mode: the client's update reaches the server un-noised, so its epsilon
    against the server is infinite and any finite limit refuses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import json
import math
import os
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from dp.adversary import ServerAccount, epsilon_vs_server, server_view
from dp.calibration import DPConfig, make_round_event
from dp.errors import ClientBudgetExceededError, ConfigurationError, LedgerError
from dp.events import RoundEvent, Sampling
from dp.ledger import TornTailWarning, canonical_json, record_hash

__all__ = [
    "CLIENT_GENESIS_HASH",
    "CLIENT_RECORD_VERSION",
    "DEFAULT_CLIENT_DELTA",
    "DEFAULT_CLIENT_MAX_EPSILON",
    "ClientCharge",
    "ClientRecord",
    "ClientRecordReport",
    "client_round_event",
    "verify_client_record",
]

#: The epsilon (against the server, at the record's delta) past which a client refuses
#: by default. 10 is the upper end of the "reasonable formal guarantee" tier of
#: Ponomareva et al. 2023 ("How to DP-fy ML", JAIR 77, Sec. 5.2: eps <= 1 strong,
#: eps <= 10 reasonable, above 10 weak or none). It is stated against the strongest
#: adversary of the model (the server, which picks the cohorts: no amplification is
#: credited), so a run whose accounting against model users is far smaller still
#: stops at a number a client can defend. A client wanting a stronger promise sets a
#: lower limit (``max-epsilon`` on a Flower node).
DEFAULT_CLIENT_MAX_EPSILON = 10.0

#: The delta a client states its epsilon at when its configuration names none
#: (the run default; it must stay below 1 / the number of clients for client-level DP).
DEFAULT_CLIENT_DELTA = 1e-5

CLIENT_RECORD_VERSION = 1
#: prev_hash of a client record's header line.
CLIENT_GENESIS_HASH = hashlib.sha256(b"privagg client record v1 genesis").hexdigest()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _check_delta(delta: float) -> float:
    if isinstance(delta, bool) or not (isinstance(delta, (int, float)) and 0.0 < delta < 1.0):
        raise ConfigurationError(f"delta must be in (0, 1), got {delta!r}")
    return float(delta)


def _check_limit(max_epsilon: float) -> float:
    if isinstance(max_epsilon, bool) or not (
        isinstance(max_epsilon, (int, float)) and not math.isnan(max_epsilon) and max_epsilon > 0
    ):
        raise ConfigurationError(f"max_epsilon must be a number > 0 (inf: no limit), got {max_epsilon!r}")
    return float(max_epsilon)


def _client_view(event: RoundEvent) -> RoundEvent:
    """The server's view of ``event`` with the (unverifiable, irrelevant) id lists dropped."""
    if not isinstance(event, RoundEvent):
        raise ConfigurationError(f"expected a RoundEvent, got {type(event).__name__}")
    return _client_view_of(event)


@lru_cache(maxsize=1024)  # a pure function of a frozen event: built once per round, not per client and check
def _client_view_of(event: RoundEvent) -> RoundEvent:
    return dataclasses.replace(server_view(event), cohort_ids=(), survivor_ids=())


def client_round_event(
    config: DPConfig,
    *,
    round: int,  # noqa: A002
    dim: int,
    scale: float | None = None,
    clip_norm: float | None = None,
) -> RoundEvent:
    """The event a client charges for a round, from parameters it enforces itself.

    The round is charged as if only ``config.survivors_planned`` clients (its own
    min-survivors floor) survived, ``config.colluders`` of them with the server,
    each adding the noise share the client adds (distributed), or with the client's
    own local noise (local); full participation (q = 1). In central mode the event
    is the server's noise, which the client cannot verify: :func:`dp.adversary.server_view`
    turns it into an un-noised release (infinite epsilon).

    Args:
        config: the DP configuration the client enforces (its floor).
        round: the round id (informational).
        dim: the encoded vector's dimension (model + side-query coordinates).
        scale: the encoding scale (distributed mode).
        clip_norm: the clip the client applied (defaults to ``config.clip_norm``).

    Raises:
        ConfigurationError: inconsistent arguments (e.g. distributed without a scale).
    """
    m = config.survivors_planned
    return _client_view(
        make_round_event(
            config,
            round=round,
            sampling=Sampling.FULL,
            sampling_rate=1.0,
            population=m,
            cohort=m,
            survivors=m,
            dim=dim,
            scale=scale,
            clip_norm=clip_norm,
        )
    )


@dataclass(frozen=True, slots=True)
class ClientCharge:
    """One verified entry of a client record.

    Attributes:
        index: 1-based position in the record.
        round: the round id the client was told (informational: charges are never keyed by it).
        event: the round as charged (server view, q = 1, no id lists).
        epsilon: cumulative epsilon against the server after this charge, as recorded.
        max_epsilon: the limit the client enforced when it charged.
        time: RFC 3339 UTC timestamp.
        prev_hash: hash of the previous line.
        hash: this line's hash.
    """

    index: int
    round: int
    event: RoundEvent
    epsilon: float
    max_epsilon: float
    time: str
    prev_hash: str
    hash: str


@dataclass(frozen=True, slots=True)
class ClientRecordReport:
    """What :func:`verify_client_record` found.

    Attributes:
        client: the client the record belongs to ('' if the header is bad).
        record_id: from the header.
        delta: the record's delta (None if the header is bad).
        charges: the verified prefix of charges.
        head_hash: hash of the last verified line.
        error: why verification stopped early (or the head anchor did not match), None if intact.
        first_bad_charge: 1-based index of the first charge that does not verify (0 = header).
        epsilon_recorded: the last verified charge's recorded epsilon (0 with none).
        epsilon_recomputed: epsilon against the server recomputed from the verified charges.
        disagreements: indices of charges whose recorded epsilon differs from the recomputation.
        torn_tail: bytes after the last newline (an interrupted write: that charge was never sent).
        head_matches: None when no anchor was given; else whether it is the last line's hash.
    """

    client: str
    record_id: str
    delta: float | None
    charges: tuple[ClientCharge, ...]
    head_hash: str
    error: str | None
    first_bad_charge: int | None
    epsilon_recorded: float
    epsilon_recomputed: float
    disagreements: tuple[int, ...]
    torn_tail: int
    head_matches: bool | None = None

    @property
    def verified(self) -> bool:
        """True when every complete line verified, every epsilon agrees, and the anchor (if any) matched."""
        return self.error is None and not self.disagreements and self.head_matches is not False

    def to_dict(self) -> dict[str, Any]:
        return {
            "client": self.client,
            "record_id": self.record_id,
            "delta": self.delta,
            "charges": len(self.charges),
            "rounds": [c.round for c in self.charges],
            "head_hash": self.head_hash,
            "verified": self.verified,
            "error": self.error,
            "first_bad_charge": self.first_bad_charge,
            "epsilon_recorded": _json_eps(self.epsilon_recorded),
            "epsilon_vs_server": _json_eps(self.epsilon_recomputed),
            "disagreements": list(self.disagreements),
            "torn_tail_bytes": self.torn_tail,
            "head_matches": self.head_matches,
        }


def _json_eps(x: float) -> float | str:
    return "inf" if math.isinf(x) else float(x)


def _parse_eps(v: Any) -> float:
    if v == "inf":
        return math.inf
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"epsilon must be a number or 'inf', got {v!r}")
    return float(v)


class _Stop(Exception):
    def __init__(self, message: str, index: int) -> None:
        super().__init__(message)
        self.index = index


def _cumulative(events: Sequence[RoundEvent], delta: float) -> list[float]:
    return [epsilon_vs_server(events[: i + 1], delta) for i in range(len(events))]


def _parse(data: bytes, *, expected_head: str | None, rtol: float = 1e-6) -> ClientRecordReport:
    complete_end = data.rfind(b"\n") + 1
    body, tail = data[:complete_end], data[complete_end:]
    lines = body.split(b"\n")[:-1] if body else []
    client, record_id, delta = "", "", None
    charges: list[ClientCharge] = []
    head = CLIENT_GENESIS_HASH
    error: str | None = None
    first_bad: int | None = None
    try:
        if not lines:
            raise _Stop("the client record is empty (no header)", 0)
        for idx, raw in enumerate(lines):
            try:
                rec = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as exc:
                raise _Stop(f"line {idx + 1} is not valid UTF-8 JSON: {exc}", idx) from exc
            if not isinstance(rec, dict):
                raise _Stop(f"line {idx + 1} is not a JSON object", idx)
            try:
                canon = canonical_json(rec)
            except LedgerError as exc:
                raise _Stop(f"line {idx + 1}: {exc}", idx) from exc
            if canon != raw:
                raise _Stop(f"line {idx + 1} is not in canonical form (edited?)", idx)
            if rec.get("v") != CLIENT_RECORD_VERSION:
                raise _Stop(f"line {idx + 1} has unsupported version {rec.get('v')!r}", idx)
            if rec.get("hash") != record_hash(rec):
                raise _Stop(f"line {idx + 1}: stored hash does not match its content", idx)
            if rec.get("prev_hash") != head:
                raise _Stop(
                    f"line {idx + 1}: prev_hash does not match the line before (a charge was changed, "
                    "removed, inserted or reordered)",
                    idx,
                )
            if idx == 0:
                if rec.get("kind") != "client-record":
                    raise _Stop("line 1 is not a client-record header", 0)
                c, rid, d = rec.get("client"), rec.get("record_id"), rec.get("delta")
                if not (isinstance(c, str) and isinstance(rid, str) and isinstance(d, float) and 0 < d < 1):
                    raise _Stop("the header lacks client/record_id/delta", 0)
                client, record_id, delta = c, rid, d
            else:
                if rec.get("kind") != "charge":
                    raise _Stop(f"line {idx + 1} is not a charge", idx)
                try:
                    n, rnd, when = rec["n"], rec["round"], rec["time"]
                    if not (isinstance(n, int) and isinstance(rnd, int) and isinstance(when, str)):
                        raise TypeError("n and round must be integers, time a string")
                    event = RoundEvent.from_dict(rec["event"])
                    eps = _parse_eps(rec["epsilon"])
                    limit = _parse_eps(rec["max_epsilon"])
                except (KeyError, TypeError, ValueError, ConfigurationError) as exc:
                    raise _Stop(f"line {idx + 1}: malformed charge: {exc}", idx) from exc
                if n != idx:
                    raise _Stop(f"line {idx + 1}: charge number {n} is not {idx}", idx)
                if event != _client_view(event):
                    raise _Stop(f"line {idx + 1}: the event is not a server-view event (q = 1, no ids)", idx)
                charges.append(ClientCharge(idx, rnd, event, eps, limit, when, head, rec["hash"]))
            head = rec["hash"]
    except _Stop as stop:
        error, first_bad = str(stop), stop.index
    recomputed = 0.0
    disagreements: list[int] = []
    if delta is not None and charges:
        curve = _cumulative([c.event for c in charges], delta)
        recomputed = curve[-1]
        for c, e in zip(charges, curve, strict=True):
            same = (math.isinf(c.epsilon) and math.isinf(e)) or math.isclose(c.epsilon, e, rel_tol=rtol, abs_tol=1e-9)
            if not same:
                disagreements.append(c.index)
    head_matches = None if expected_head is None else expected_head == head
    return ClientRecordReport(
        client=client,
        record_id=record_id,
        delta=delta,
        charges=tuple(charges),
        head_hash=head,
        error=error,
        first_bad_charge=first_bad,
        epsilon_recorded=charges[-1].epsilon if charges else 0.0,
        epsilon_recomputed=recomputed,
        disagreements=tuple(disagreements),
        torn_tail=len(tail),
        head_matches=head_matches,
    )


def verify_client_record(
    source: bytes | str | os.PathLike[str], *, expected_head: str | None = None
) -> ClientRecordReport:
    """Verify a client record (file path or bytes) without raising on a broken chain.

    Recomputes epsilon against the server from the charges alone and compares it with
    every recorded value. ``expected_head``: a head hash kept elsewhere (e.g. the one
    the node last reported); the report says whether the record still ends there.

    Raises:
        LedgerError: a path that cannot be read.
    """
    if isinstance(source, bytes):
        data = source
    else:
        try:
            data = Path(source).read_bytes()
        except OSError as exc:
            raise LedgerError(f"cannot read client record {source}: {exc}", round=0) from exc
    return _parse(data, expected_head=expected_head)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class ClientRecord:
    """One client's record; see the module docstring. Build with :meth:`create`, :meth:`open` or :meth:`from_bytes`."""

    def __init__(self, *, client: str, delta: float, header: dict[str, Any], charges: Sequence[ClientCharge]) -> None:
        self._client = client
        self._delta = delta
        self._header = header
        self._charges = list(charges)
        self._lines = [canonical_json(header) + b"\n"]
        self._path: Path | None = None
        self._epsilon = charges[-1].epsilon if charges else 0.0
        self._acc: ServerAccount | None = None  # the charges composed so far (see _account)
        self._acc_charges = 0

    # -- construction

    @classmethod
    def create(
        cls, client: str | int, *, delta: float = DEFAULT_CLIENT_DELTA, record_id: str | None = None
    ) -> ClientRecord:
        """A new, empty record held in memory (persist it with :meth:`to_bytes` or :meth:`save`)."""
        name = str(client)
        if not name:
            raise ConfigurationError("client must be a non-empty id")
        header: dict[str, Any] = {
            "v": CLIENT_RECORD_VERSION,
            "kind": "client-record",
            "client": name,
            "record_id": record_id if record_id is not None else uuid.uuid4().hex,
            "created": _now(),
            "delta": _check_delta(delta),
            "prev_hash": CLIENT_GENESIS_HASH,
        }
        header["hash"] = record_hash(header)
        return cls(client=name, delta=float(delta), header=header, charges=())

    @classmethod
    def from_bytes(
        cls, data: bytes, *, client: str | int | None = None, delta: float | None = None
    ) -> ClientRecord:
        """Load and verify a record (e.g. from a Flower node's state).

        A torn last line (an interrupted write) is dropped: the charge it would have
        recorded was never followed by a send.

        Raises:
            LedgerError: the record does not verify, belongs to another client, or is
                stated at another delta than ``delta``.
        """
        report = _parse(data, expected_head=None)
        if report.error is not None or report.disagreements:
            why = report.error or f"recorded epsilon disagrees with the recomputation at charges {report.disagreements}"
            raise LedgerError(f"client record does not verify: {why}", round=report.first_bad_charge)
        if client is not None and report.client != str(client):
            raise LedgerError(f"client record belongs to client {report.client!r}, not {str(client)!r}", round=0)
        if delta is not None and report.delta != float(delta):
            raise LedgerError(f"client record is stated at delta {report.delta}, not {delta}", round=0)
        lines = data[: data.rfind(b"\n") + 1].split(b"\n")[:-1]
        header = json.loads(lines[0].decode("utf-8"))
        rec = cls(client=report.client, delta=float(report.delta or 0.0), header=header, charges=report.charges)
        rec._lines = [line + b"\n" for line in lines]
        return rec

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], *, client: str | int, delta: float = DEFAULT_CLIENT_DELTA
    ) -> ClientRecord:
        """Load ``path`` (verifying it) or create it; later charges are appended and fsync'd.

        Raises:
            LedgerError: the file does not verify, belongs to another client or delta,
                or cannot be written.
        """
        p = Path(path)
        if p.exists() and p.stat().st_size > 0:
            data = p.read_bytes()
            rec = cls.from_bytes(data, client=client, delta=delta)
            end = data.rfind(b"\n") + 1
            if end < len(data):
                try:
                    with open(p, "r+b") as f:
                        f.truncate(end)
                        f.flush()
                        os.fsync(f.fileno())
                except OSError as exc:
                    raise LedgerError(f"cannot truncate the torn tail of {p}: {exc}", round=0) from exc
                warnings.warn(
                    f"client record {p}: an interrupted write ({len(data) - end} bytes) was dropped; "
                    "that round was never sent",
                    TornTailWarning,
                    stacklevel=2,
                )
        else:
            rec = cls.create(client, delta=delta)
            p.parent.mkdir(parents=True, exist_ok=True)
            tmp = p.with_name(p.name + ".tmp")
            try:
                with open(tmp, "wb") as f:
                    f.write(rec.to_bytes())
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, p)
            except OSError as exc:
                raise LedgerError(f"cannot create client record {p}: {exc}", round=0) from exc
        rec._path = p
        return rec

    # -- reading

    @property
    def client(self) -> str:
        return self._client

    @property
    def delta(self) -> float:
        return self._delta

    @property
    def record_id(self) -> str:
        return str(self._header["record_id"])

    @property
    def charges(self) -> tuple[ClientCharge, ...]:
        return tuple(self._charges)

    @property
    def events(self) -> list[RoundEvent]:
        return [c.event for c in self._charges]

    @property
    def head_hash(self) -> str:
        return self._charges[-1].hash if self._charges else str(self._header["hash"])

    @property
    def path(self) -> Path | None:
        return self._path

    def epsilon_vs_server(self) -> float:
        """This client's epsilon against the server after every charged round (from the record alone)."""
        return self._epsilon

    def epsilon_if_charged(self, event: RoundEvent) -> float:
        """The epsilon against the server if ``event`` were charged next.

        Equal to ``epsilon_vs_server([*self.events, view])`` (the same compositions in the same
        order), from an account kept up to date with the charges instead of recomposed at
        every check.
        """
        return self._account().epsilon_if(_client_view(event))

    def _account(self) -> ServerAccount:
        """The charged events composed so far (extended with charges appended since the last call)."""
        acc, done = self._acc, self._acc_charges
        if acc is None or done > len(self._charges):
            acc, done = ServerAccount(self._delta), 0
        for c in self._charges[done:]:
            acc.add(c.event)
        self._acc, self._acc_charges = acc, len(self._charges)
        return acc

    def to_bytes(self) -> bytes:
        """The record as JSON lines (exactly the file :meth:`open` and :meth:`save` write)."""
        return b"".join(self._lines)

    # -- enforcing

    def check(self, event: RoundEvent, *, max_epsilon: float = DEFAULT_CLIENT_MAX_EPSILON) -> float:
        """Epsilon if ``event`` were charged; refuse (raise) if that exceeds ``max_epsilon``.

        Raises:
            ClientBudgetExceededError: taking part would exceed the limit; nothing is charged.
            ConfigurationError: a bad limit or event.
        """
        limit = _check_limit(max_epsilon)
        eps = self.epsilon_if_charged(event)
        if eps > limit:
            why = (
                "the server would see its update un-noised (central mode)"
                if math.isinf(eps)
                else f"taking part would take its epsilon against the server to {eps:.4g}"
            )
            raise ClientBudgetExceededError(
                f"client {self._client} refuses round {event.round}: {why} > its limit {limit:.4g} "
                f"(delta={self._delta:g}, {len(self._charges)} rounds charged so far). Nothing derived from its "
                "input was sent; the round can go on without it. Raise the client's max-epsilon, or add noise.",
                epsilon_if_run=eps,
                target_epsilon=limit,
                client=self._client,
            )
        return eps

    def charge(self, event: RoundEvent, *, max_epsilon: float = DEFAULT_CLIENT_MAX_EPSILON) -> ClientCharge:
        """Check ``event`` against the limit and append it (durably when opened from a file).

        Call it after the input is ready and before anything derived from it is sent.

        Raises:
            ClientBudgetExceededError: the limit would be exceeded (nothing appended).
            LedgerError: the file write failed (nothing appended; do not send).
        """
        limit = _check_limit(max_epsilon)
        view = _client_view(event)
        eps = self.check(view, max_epsilon=limit)
        rec: dict[str, Any] = {
            "v": CLIENT_RECORD_VERSION,
            "kind": "charge",
            "n": len(self._charges) + 1,
            "round": int(view.round),
            "time": _now(),
            "event": view.to_dict(),
            "epsilon": _json_eps(eps),
            "max_epsilon": _json_eps(limit),
            "prev_hash": self.head_hash,
        }
        rec["hash"] = record_hash(rec)
        line = canonical_json(rec) + b"\n"
        if self._path is not None:
            try:
                fd = os.open(self._path, os.O_WRONLY | os.O_APPEND)
            except OSError as exc:
                raise LedgerError(f"cannot open client record {self._path}: {exc}", round=rec["n"]) from exc
            try:
                size = os.fstat(fd).st_size
                try:
                    _write_all(fd, line)
                    os.fsync(fd)
                except OSError as exc:
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, size)
                    raise LedgerError(
                        f"cannot append to client record {self._path}: {exc}; do not send this round",
                        round=rec["n"],
                    ) from exc
            finally:
                os.close(fd)
        entry = ClientCharge(rec["n"], view.round, view, eps, limit, rec["time"], rec["prev_hash"], rec["hash"])
        self._charges.append(entry)
        self._lines.append(line)
        self._epsilon = eps
        return entry

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the record to ``path`` atomically (temporary file, fsync, rename).

        Raises:
            LedgerError: the write failed.
        """
        p = Path(path)
        tmp = p.with_name(p.name + ".tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(self.to_bytes())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, p)
        except OSError as exc:
            raise LedgerError(f"cannot write client record {p}: {exc}", round=0) from exc

    def __repr__(self) -> str:
        return (
            f"ClientRecord(client={self._client!r}, charges={len(self._charges)}, "
            f"epsilon_vs_server={self._epsilon:.4g}, delta={self._delta:g})"
        )
