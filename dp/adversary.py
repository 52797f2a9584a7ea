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
  sampling is real (the rules of :mod:`dp.accountants`). Everything they see the
  server sees too, so this epsilon is also capped by the one against the server.

Which rounds a client is charged for: a round with ``survivor_ids`` is charged to
those clients; one without them but with ``cohort_ids`` (a planned round, before
it runs) to every cohort member; one with neither (an older ledger) to every
client, which is the conservative reading.

Security:
    Assumption: the events are faithful, in particular ``survivor_ids`` lists every
    client whose update is in the released sum (the ledger writer takes it from the
    secure sum's outcome). Guarantee: :func:`epsilon_vs_server` upper-bounds, for
    every client, the privacy loss of the sequence of sums the server saw, at
    ``delta``, for that client under the add-or-remove-one-client relation (local
    mode: the event's substitution sensitivity 2C), with the cohorts fixed by the
    server. Composition per client is exact for Gaussian rounds (the composed
    Gaussian is mu-GDP with mu = sqrt(sum z_i^-2), Dong, Roth, Su 2019, Cor. 3.3;
    exact (eps, delta) by Balle & Wang 2018, Thm. 8) and by Renyi DP otherwise
    (Skellam, discrete Gaussian). Both remain valid when the rounds and the point
    where a client stops are chosen adaptively, as the client's own limit does
    (GDP: Smith & Thakurta 2022, fully adaptive composition; RDP filters: Feldman &
    Zrnic 2021), which is why no PLD engine is used here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from enum import Enum

import numpy as np
import numpy.typing as npt

from dp.accountants import (
    ChargeKind,
    _rdp_eps_from_total,
    _rdp_matrix,
    analytic_gaussian_epsilon,
    charge_of,
    compute_epsilon,
)
from dp.errors import ConfigurationError
from dp.events import DPMode, Mechanism, RoundEvent, Sampling

__all__ = [
    "ANY_CLIENT",
    "CENTRAL_UNBOUNDED_REASON",
    "Adversary",
    "charged_clients",
    "epsilon_for",
    "epsilon_vs_public",
    "epsilon_vs_server",
    "epsilon_vs_server_per_client",
    "server_view",
    "unbounded_reason",
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


def server_view(event: RoundEvent) -> RoundEvent:
    """The round as the server sees it: no amplification by sampling.

    The cohort is the server's choice and the survivors are known to it, so the round
    is charged as a full-participation round (q = 1, add-or-remove relation). In
    central mode the server holds the sum before its own noise: un-noised release.
    """
    if event.sampling_rate == 0.0 or event.survivors == 0:
        return event  # nobody's update was released: free under any view
    if event.mode is DPMode.CENTRAL and event.mechanism is not Mechanism.NONE:
        return dataclasses.replace(
            event,
            mechanism=Mechanism.NONE,
            l2_sensitivity=0.0,
            l1_sensitivity=0.0,
            noise_variance=0.0,
            clip_query_noise_multiplier=0.0,
            sampling=Sampling.FULL,
            sampling_rate=1.0,
        )
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


def epsilon_vs_server_per_client(events: Sequence[RoundEvent], delta: float) -> dict[int, float]:
    """Each client's epsilon against the server: the rounds it was charged for, composed without amplification.

    Keys are client ids; :data:`ANY_CLIENT` appears when some round names no ids (its
    value is then the epsilon of a client that took part in every such round and in
    no named one; every named client is charged those rounds too).

    Raises:
        ConfigurationError: delta outside (0, 1).
        AccountingError: an event no accountant can bound.
    """
    _check_delta(delta)
    views = [server_view(e) for e in events]
    charges = [charge_of(v) for v in views]
    active = [i for i, c in enumerate(charges) if c.kind is not ChargeKind.FREE]
    if not active:
        return {}
    unnamed = [i for i in active if charged_clients(events[i]) == (ANY_CLIENT,)]
    clients = sorted({c for i in active for c in charged_clients(events[i]) if c != ANY_CLIENT})
    if unnamed:
        clients.append(ANY_CLIENT)
    index = {c: k for k, c in enumerate(clients)}
    incidence = np.zeros((len(clients), len(active)), dtype=np.float64)
    for j, i in enumerate(active):
        ids = charged_clients(events[i])
        if ids == (ANY_CLIENT,):
            incidence[:, j] = 1.0
        else:
            incidence[[index[c] for c in ids], j] = 1.0
    act = [charges[i] for i in active]
    nonpriv = np.array([c.kind is ChargeKind.NON_PRIVATE for c in act])
    out: npt.NDArray[np.float64]
    if nonpriv.any():
        hit = incidence[:, nonpriv].sum(axis=1) > 0
    else:
        hit = np.zeros(len(clients), dtype=bool)
    if all(c.kind is ChargeKind.GAUSSIAN_POISSON and c.q == 1.0 for c in act if c.kind is not ChargeKind.NON_PRIVATE):
        # Gaussian rounds compose exactly: mu^2 = sum of z^-2 over the client's rounds.
        inv_z2 = np.array([0.0 if c.kind is ChargeKind.NON_PRIVATE else c.z**-2 for c in act])
        mu2 = incidence @ inv_z2
        cache: dict[float, float] = {}
        vals = []
        for m2 in mu2:
            key = float(m2)
            if key not in cache:
                cache[key] = 0.0 if key <= 0.0 else analytic_gaussian_epsilon([key**-0.5], delta)
            vals.append(cache[key])
        out = np.array(vals, dtype=np.float64)
    else:
        rows = _rdp_matrix(act)
        rows = np.where(np.isinf(rows), 0.0, rows)  # non-private rows are handled by ``hit``
        out = np.asarray(_rdp_eps_from_total(incidence @ rows, delta), dtype=np.float64)
    out = np.where(hit, np.inf, out)
    return {c: float(v) for c, v in zip(clients, out, strict=True)}


def epsilon_vs_server(events: Sequence[RoundEvent], delta: float) -> float:
    """The largest epsilon against the server over all clients (``math.inf`` in central mode)."""
    per = epsilon_vs_server_per_client(events, delta)
    return max(per.values(), default=0.0)


def epsilon_vs_public(events: Sequence[RoundEvent], delta: float, *, accountant: str = "pld") -> float:
    """Epsilon against those who only see the released models.

    Amplified by sampling where it is real (:func:`dp.accountants.compute_epsilon`), and
    never above :func:`epsilon_vs_server`: a model user sees nothing the server does not.
    """
    public = compute_epsilon(events, delta, accountant=accountant)
    if public == 0.0:
        return 0.0
    return min(public, epsilon_vs_server(events, delta))


def epsilon_for(
    adversary: Adversary, events: Sequence[RoundEvent], delta: float, *, accountant: str = "pld"
) -> float:
    """Epsilon of ``events`` against ``adversary`` (see :func:`epsilon_vs_server`, :func:`epsilon_vs_public`)."""
    if Adversary(adversary) is Adversary.SERVER:
        return epsilon_vs_server(events, delta)
    return epsilon_vs_public(events, delta, accountant=accountant)
