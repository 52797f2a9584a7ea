"""Epsilon per adversary: against the server (per client, no amplification) and against model users.

Every round is accounted twice:

* **against the server** (:data:`Adversary.SERVER`): the server chooses the cohort and
  sees who survived, so no amplification by sampling is claimed. Each client's
  epsilon composes the rounds *that client* took part in (its update was in the
  released sum), each charged as a full-participation round; the run's epsilon is
  the maximum over clients. In central mode the server sees the exact sum, so its
  epsilon is unbounded (``math.inf``; :data:`CENTRAL_UNBOUNDED_REASON` says why).
  With Paillier, "the server" means whoever can decrypt: the key holders, and the
  server when it colludes with them.
* **against model users** (:data:`Adversary.PUBLIC`): those who only see the released
  models do not know the cohorts, so amplification by sampling applies where the
  sampling is real (the rules of :mod:`dp.accountants`, including the abort term of
  :mod:`dp.accountants.aborts`). It is stated for adding or removing one client: it
  hides whether a client took part, which the server's books take as given. Where
  the relations agree (nobody's participation hides behind an abort rule,
  :func:`capped_by_server`) everything model users see the server sees too, and the
  epsilon is capped by the one against the server.

Which rounds a client is charged for: a round with ``survivor_ids`` is charged to
those clients; one without them but with ``cohort_ids`` (a planned round, before
it runs) to every cohort member; one with neither (an older ledger) to every
client, which is the conservative reading.

Security:
    Assumption: the events are faithful, in particular ``survivor_ids`` lists every
    client whose update is in the released sum (the ledger writer takes it from the
    secure sum's outcome). Guarantee: :func:`epsilon_vs_server` upper-bounds, for
    every client, the privacy loss of the sequence of sums the server saw, at
    ``delta``, for that client's update being in the sum or not (its update
    replaced by nothing; local mode: by another, sensitivity 2C), with the cohorts,
    the survivors and every attempt's outcome fixed by the server. Whether an
    attempt aborts or releases depends on who took part and who dropped, never on
    an update, so aborts and redraws change nothing here; the relation that also
    hides participation is the model users' (:mod:`dp.accountants.aborts`).
    Composition per client is exact for Gaussian rounds (the composed
    Gaussian is mu-GDP with mu = sqrt(sum z_i^-2), Dong, Roth, Su 2019, Cor. 3.3;
    exact (eps, delta) by Balle & Wang 2018, Thm. 8) and by Renyi DP otherwise
    (Skellam, discrete Gaussian). Both remain valid when the rounds and the point
    where a client stops are chosen adaptively, as the client's own limit does
    (GDP: Smith & Thakurta 2022, fully adaptive composition; RDP filters: Feldman &
    Zrnic 2021), which is why no PLD engine is used here.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from enum import Enum
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt

from dp.accountants import (
    ChargeKind,
    RoundCharge,
    _rdp_eps_from_total,
    _rdp_matrix,
    abort_delta,
    analytic_gaussian_epsilon,
    charge_of,
    compute_epsilon,
    subject_to_abort_term,
)
from dp.errors import ConfigurationError
from dp.events import DPMode, Mechanism, RoundEvent, Sampling

__all__ = [
    "ANY_CLIENT",
    "CENTRAL_UNBOUNDED_REASON",
    "Adversary",
    "capped_by_server",
    "charged_clients",
    "epsilon_for",
    "epsilon_vs_public",
    "epsilon_vs_server",
    "epsilon_vs_server_per_client",
    "ServerAccount",
    "epsilon_vs_server_curve",
    "public_unbounded_reason",
    "server_view",
    "unbounded_reason",
    "uncapped_round",
]


class Adversary(str, Enum):
    """Against whom an epsilon is stated."""

    SERVER = "server"  # chooses the cohort, sees who survived and every sum it decrypts or unmasks
    PUBLIC = "public"  # sees only the released models


#: Why epsilon against the server is not a number in central mode.
CENTRAL_UNBOUNDED_REASON = (
    "central mode: the server sees the exact (un-noised) sum and adds the noise itself, "
    "so nothing bounds what it learns about a client"
)

#: The pseudo-client that stands for "every client" when a round names no ids.
ANY_CLIENT = -1


def _unnoised(event: RoundEvent, **changes: Any) -> RoundEvent:
    """``event`` as a release without noise (Mechanism.NONE, zero sensitivity and noise)."""
    return dataclasses.replace(
        event,
        mechanism=Mechanism.NONE,
        l2_sensitivity=0.0,
        l1_sensitivity=0.0,
        noise_variance=0.0,
        clip_query_noise_multiplier=0.0,
        **changes,
    )


@lru_cache(maxsize=4096)  # a pure function of a frozen event: every client's view of a round is built once
def server_view(event: RoundEvent) -> RoundEvent:
    """The round as the server sees it: no amplification by sampling.

    The cohort is the server's choice and the survivors are known to it, so the round
    is charged as a full-participation round (q = 1, add-or-remove relation). In
    central mode the server holds the sum before its own noise: un-noised release.
    """
    if event.sampling_rate == 0.0:
        return event  # nobody could be sampled: free under any view
    if event.survivors == 0:
        # Nobody's update is in the release and the server knows it (it saw the sample): free,
        # even when the round released the noise alone (``releases_empty``).
        return _unnoised(event)
    if event.mode is DPMode.CENTRAL and event.mechanism is not Mechanism.NONE:
        return _unnoised(event, sampling=Sampling.FULL, sampling_rate=1.0)
    return dataclasses.replace(event, sampling=Sampling.FULL, sampling_rate=1.0)


def charged_clients(event: RoundEvent) -> tuple[int, ...]:
    """The clients a round is charged to against the server (``(ANY_CLIENT,)`` if it names none)."""
    if event.survivor_ids or (event.survivors == 0 and event.cohort_ids):
        return event.survivor_ids
    if event.cohort_ids:
        return event.cohort_ids
    return (ANY_CLIENT,)


def unbounded_reason(events: Sequence[RoundEvent]) -> str | None:
    """Why epsilon against the server is infinite for ``events``, or None if it is finite."""
    for e in events:
        if e.survivors == 0 or e.sampling_rate == 0.0:
            continue
        if e.mode is DPMode.CENTRAL and e.mechanism is not Mechanism.NONE:
            return CENTRAL_UNBOUNDED_REASON
        if e.mechanism is Mechanism.NONE:
            return f"round {e.round} released an un-noised sum (no DP)"
        if e.noise_variance <= 0.0:
            return f"round {e.round} carried no noise"
    return None


def _check_delta(delta: float) -> None:
    if not (isinstance(delta, (int, float)) and 0.0 < delta < 1.0):
        raise ConfigurationError(f"delta must be in (0, 1), got {delta!r}")


@lru_cache(maxsize=65536)
def _gdp_epsilon(mu2: float, delta: float) -> float:
    """Exact epsilon of a mu-GDP mechanism, mu^2 = ``mu2`` (composed Gaussian rounds)."""
    return 0.0 if mu2 <= 0.0 else analytic_gaussian_epsilon([mu2**-0.5], delta)


@lru_cache(maxsize=4096)
def _rdp_row(charge: RoundCharge) -> npt.NDArray[np.float64]:
    """One charge's RDP curve (read-only; a pure function of the frozen charge, so rounds with
    the same parameters, as every client's own record has, compute it once)."""
    row = np.asarray(_rdp_matrix([charge])[0], dtype=np.float64)
    row.setflags(write=False)
    return row


class ServerAccount:
    """Epsilon against the server, kept per client and updated one round at a time.

    The per-client state is what composition needs: with only Gaussian rounds, the
    sum of z^-2 (exact: the composition is mu-GDP); otherwise the Renyi-DP curve at
    :data:`dp.accountants.rdp.INTEGER_ORDERS`. The first non-Gaussian round switches
    the account to RDP (every round so far is re-composed), so the result always
    equals :func:`epsilon_vs_server_per_client` on the same events.

    Args:
        delta: the delta epsilon is stated at.

    Raises:
        ConfigurationError: delta outside (0, 1).
    """

    def __init__(self, delta: float) -> None:
        _check_delta(delta)
        self.delta = float(delta)
        self._events: list[RoundEvent] = []
        self._gaussian = True
        self._state: dict[int, npt.NDArray[np.float64]] = {}
        self._common: npt.NDArray[np.float64] = np.zeros(1)
        self._nonprivate: set[int] = set()
        self._everyone_nonprivate = False
        self._eps: dict[int, float] = {}
        self._max = 0.0

    # -- reading

    @property
    def events(self) -> list[RoundEvent]:
        return list(self._events)

    @property
    def count(self) -> int:
        """How many events have been charged."""
        return len(self._events)

    @property
    def last(self) -> RoundEvent | None:
        """The last event charged (None before any)."""
        return self._events[-1] if self._events else None

    def epsilon(self) -> float:
        """The largest epsilon over clients (0 before any charged round)."""
        return self._max

    def per_client(self) -> dict[int, float]:
        """Every charged client's epsilon (:data:`ANY_CLIENT`: a client in every round that names no ids)."""
        return dict(self._eps)

    def epsilon_of(self, client: int) -> float:
        """The epsilon of ``client`` (one never charged has only the rounds that name no ids)."""
        if client in self._eps:
            return self._eps[client]
        return self._eps.get(ANY_CLIENT, 0.0)

    # -- updating

    def _row(self, event: RoundEvent) -> tuple[str, npt.NDArray[np.float64]]:
        c = charge_of(server_view(event))
        if c.kind is ChargeKind.FREE:
            return "free", np.zeros(1)
        if c.kind is ChargeKind.NON_PRIVATE:
            return "nonprivate", np.zeros(1)
        if self._gaussian and c.kind is ChargeKind.GAUSSIAN_POISSON and c.q == 1.0:
            return "gaussian", np.array([c.z**-2], dtype=np.float64)
        return "rdp", _rdp_row(c)

    def _eps_rows(self, rows: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        if self._gaussian:
            return np.array([_gdp_epsilon(float(m2), self.delta) for m2 in rows[:, 0]], dtype=np.float64)
        return np.asarray(_rdp_eps_from_total(rows, self.delta), dtype=np.float64).reshape(-1)

    def _refresh(self, clients: Sequence[int]) -> None:
        if not clients:
            return
        rows = np.stack([self._state.get(c, np.zeros_like(self._common)) + self._common for c in clients])
        vals = self._eps_rows(rows)
        for c, v in zip(clients, vals, strict=True):
            v = float(v)
            if self._everyone_nonprivate or c in self._nonprivate:
                v = math.inf
            self._eps[c] = v
            self._max = max(self._max, v)

    def _switch_to_rdp(self) -> None:
        events = self._events
        self.__init__(self.delta)  # type: ignore[misc]
        self._gaussian = False
        for e in events:
            self.add(e)

    def add(self, event: RoundEvent) -> float:
        """Charge ``event`` to its clients (:func:`charged_clients`); returns the new maximum."""
        kind, row = self._row(event)
        if kind == "rdp" and self._gaussian:
            self._events.append(event)
            self._switch_to_rdp()
            return self._max
        self._events.append(event)
        if kind == "free":
            return self._max
        ids = charged_clients(event)
        if self._common.shape != row.shape:
            self._common = np.zeros_like(row)
        if ids == (ANY_CLIENT,):
            if kind == "nonprivate":
                self._everyone_nonprivate = True
            else:
                self._common = self._common + row
            self._refresh([*self._state, ANY_CLIENT])
            return self._max
        for c in ids:
            if kind == "nonprivate":
                self._nonprivate.add(c)
                self._state.setdefault(c, np.zeros_like(row))
            else:
                self._state[c] = self._state.get(c, np.zeros_like(row)) + row
        self._refresh(list(ids))
        return self._max

    def extend(self, events: Sequence[RoundEvent]) -> ServerAccount:
        for e in events:
            self.add(e)
        return self

    def epsilon_if(self, event: RoundEvent) -> float:
        """The largest epsilon over clients if ``event`` were charged next (nothing is changed)."""
        kind, _ = self._row(event)
        if kind == "rdp" and self._gaussian:  # it would switch the engine: recompose everything
            return ServerAccount(self.delta).extend([*self._events, event]).epsilon()
        return self._epsilon_if_same_engine(event)

    def client_epsilon_if(self, client: int, event: RoundEvent) -> float:
        """``client``'s epsilon if ``event`` were charged to it next (nothing is changed)."""
        kind, row = self._row(event)
        if kind == "free":
            return self.epsilon_of(client)
        if kind == "nonprivate" or self._everyone_nonprivate or client in self._nonprivate:
            return math.inf
        if kind == "rdp" and self._gaussian:
            trial = ServerAccount(self.delta).extend(self._events)
            trial._switch_to_rdp()
            return trial.client_epsilon_if(client, event)
        common = self._common if self._common.shape == row.shape else np.zeros_like(row)
        total = self._state.get(client, np.zeros_like(row)) + common + row
        return float(self._eps_rows(total[None, :])[0])

    def _epsilon_if_same_engine(self, event: RoundEvent) -> float:
        kind, row = self._row(event)
        if kind == "free":
            return self._max
        ids = charged_clients(event)
        if kind == "nonprivate":
            return math.inf
        common = self._common if self._common.shape == row.shape else np.zeros_like(row)
        if ids == (ANY_CLIENT,):
            clients = [*self._state, ANY_CLIENT]
            extra_common = row
            extra_each = np.zeros_like(row)
        else:
            clients = list(ids)
            extra_common = np.zeros_like(row)
            extra_each = row
        rows = np.stack(
            [self._state.get(c, np.zeros_like(row)) + common + extra_common + extra_each for c in clients]
        )
        vals = self._eps_rows(rows)
        worst = self._max
        for c, v in zip(clients, vals, strict=True):
            if self._everyone_nonprivate or c in self._nonprivate:
                return math.inf
            worst = max(worst, float(v))
        return worst


def epsilon_vs_server_per_client(events: Sequence[RoundEvent], delta: float) -> dict[int, float]:
    """Each client's epsilon against the server: the rounds it was charged for, composed without amplification.

    Keys are client ids; :data:`ANY_CLIENT` appears when some round names no ids (its
    value is then the epsilon of a client that took part in every such round and in
    no named one; every named client is charged those rounds too).

    Raises:
        ConfigurationError: delta outside (0, 1).
        AccountingError: an event no accountant can bound.
    """
    return ServerAccount(delta).extend(events).per_client()


def epsilon_vs_server(events: Sequence[RoundEvent], delta: float) -> float:
    """The largest epsilon against the server over all clients (``math.inf`` in central mode)."""
    return ServerAccount(delta).extend(events).epsilon()


def epsilon_vs_server_curve(events: Sequence[RoundEvent], delta: float) -> list[float]:
    """Cumulative epsilon against the server after each event (entry k = :func:`epsilon_vs_server` of events[:k+1])."""
    acc = ServerAccount(delta)
    out = []
    for e in events:
        acc.add(e)
        out.append(acc.epsilon())
    return out


def capped_by_server(events: Sequence[RoundEvent]) -> bool:
    """Whether the epsilon against model users may be capped by the one against the server.

    Yes when no round's participation is hidden behind an abort rule (local mode, full
    participation, fixed-size cohorts, rounds without an abort rule): the relation then
    keeps who takes part, as the server's books do, and a model user sees a
    post-processing of what the server sees. No when some round is Poisson-sampled with an
    abort rule (:func:`dp.accountants.subject_to_abort_term`): the amplified epsilon is
    stated for adding or removing a client, whose presence the server's per-client books
    take as given, so they do not bound it (an abort that hinges on the client makes its
    presence visible: see :mod:`dp.accountants.aborts`). No either when some round released
    the noise alone for an empty sample (``releases_empty``, central mode): the server's books
    charge nobody for a round nobody took part in, while against model users the round is one
    outcome of a subsampled mechanism that could have sampled the target, and is charged
    (a run whose every sample was empty would otherwise report 0).
    """
    return not any(uncapped_round(e) for e in events)


def uncapped_round(event: RoundEvent) -> bool:
    """Whether ``event`` keeps epsilon against model users from being capped by the server's
    (:func:`capped_by_server`): a Poisson round with an abort rule, or one without (it releases the
    noise alone for an empty sample)."""
    return subject_to_abort_term(event) or event.releases_empty


def public_unbounded_reason(events: Sequence[RoundEvent], delta: float) -> str | None:
    """Why epsilon against model users is infinite because of the abort term, or None."""
    h = abort_delta(events)
    if h < delta:
        return None
    m = max((e.min_survivors for e in events if subject_to_abort_term(e)), default=0)
    fix = "lower --min-survivors, sample more clients per round" if m > 1 else "sample more clients per round"
    return (
        f"the abort rule (min-survivors {m}) makes a round's release hinge on one client with probability "
        f"{h:.3g} over these rounds, not below delta = {delta:g}: no amplified guarantee against model users "
        f"({fix}, or use fixed-size cohorts --per-round)"
    )


def epsilon_vs_public(events: Sequence[RoundEvent], delta: float, *, accountant: str = "pld") -> float:
    """Epsilon against those who only see the released models.

    Amplified by sampling where it is real (:func:`dp.accountants.compute_epsilon`, with
    the abort term of :mod:`dp.accountants.aborts` spending part of delta), and capped by
    :func:`epsilon_vs_server` where the relations agree (:func:`capped_by_server`).
    """
    public = compute_epsilon(events, delta, accountant=accountant)
    if public == 0.0 or not capped_by_server(events):
        return public
    return min(public, epsilon_vs_server(events, delta))


def epsilon_for(
    adversary: Adversary, events: Sequence[RoundEvent], delta: float, *, accountant: str = "pld"
) -> float:
    """Epsilon of ``events`` against ``adversary`` (see :func:`epsilon_vs_server`, :func:`epsilon_vs_public`)."""
    if Adversary(adversary) is Adversary.SERVER:
        return epsilon_vs_server(events, delta)
    return epsilon_vs_public(events, delta, accountant=accountant)
