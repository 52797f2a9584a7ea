"""One client's side of asynchronous training: train on a fetched version, hold the update, report it once.

The client keeps its own state and enforces its own rules from values it holds, never
from a parameter the server sent (see SECURITY.md, asynchronous secure aggregation):

* it computes the staleness weight itself from the version it trained on and the
  version the buffer is applied to, refuses a buffer version older than its own
  (a version from the future), and refuses to report beyond its own staleness bound;
* it counts the buffer sessions its (masked or encrypted) input left it in, and
  refuses a session beyond its own contribution cap; with DP it keeps its own
  hash-chained record (:class:`dp.client_record.ClientRecord`), charged with the
  event of its own DP configuration when its input leaves, and refuses a session
  that would take its epsilon against the server past its own limit;
* once its input has left it in one session, that update is spent: it is never put
  into a second session, whatever the server later says about the first one. A
  client that missed its session before its input left keeps the update and may
  report it to a later buffer (with a new staleness weight and fresh masks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from dp.calibration import DPConfig
from dp.client_record import ClientRecord, client_round_event
from dp.errors import ClientBudgetExceededError
from fl_core.asynchronous.errors import ClientRefusal
from fl_core.asynchronous.staleness import StalenessWeight
from fl_core.asynchronous.weighting import StalenessWeighted
from fl_core.client import compute_update
from fl_core.pipeline import ClientPipeline, ClipOutcome
from secagg import RingVector

__all__ = ["AsyncClient", "ClientRules", "HeldUpdate"]


@dataclass(frozen=True, slots=True)
class ClientRules:
    """The limits a client enforces on itself (its own copy; the server's options are not trusted).

    Attributes:
        staleness: the weight function.
        max_staleness: refuse to report an update older than this many versions (None: no bound).
        max_contributions: refuse a session once this many of its inputs have left it (None: no cap).
        dp_config: the DP configuration the client enforces (its floor: noise, clip, minimum
            survivors, colluders); None without DP (then no record is kept).
        max_epsilon: refuse a session that would take its own epsilon against the server
            (from its own record) past this (``math.inf``: no limit).
        delta: the delta of its record.
    """

    staleness: StalenessWeight = field(default_factory=StalenessWeight)
    max_staleness: int | None = None
    max_contributions: int | None = None
    dp_config: DPConfig | None = None
    max_epsilon: float = math.inf
    delta: float = 1e-5


@dataclass(frozen=True, slots=True)
class HeldUpdate:
    """An update trained on model ``version`` (``task`` numbers the client's check-ins)."""

    task: int
    version: int
    delta: npt.NDArray[np.float32]


class AsyncClient:
    """Client ``cid`` of an asynchronous run (in-process simulation).

    Args:
        cid: 1-based client id.
        rules: the limits this client enforces on itself.
    """

    def __init__(self, cid: int, rules: ClientRules) -> None:
        self.cid = cid
        self.rules = rules
        self.held: HeldUpdate | None = None
        self.spent = False
        """True once the held update's input left this client in some session."""
        self.tasks = 0
        self.record: ClientRecord | None = (
            ClientRecord.create(str(cid), delta=rules.delta) if rules.dp_config is not None else None
        )
        """Its own hash-chained record of the sessions its input left it in (with DP)."""
        self.contributions = 0
        self._pending: Any = None

    # -- check-in: fetch a version and train ------------------------------------------

    def train(self, fed: Any, version: int, global_vec: npt.NDArray[np.float32]) -> HeldUpdate:
        """Train the user's ``train_fn`` on this client's data from ``global_vec`` (model ``version``)."""
        delta = compute_update(
            fed.model,
            global_vec,
            fed.codec,
            fed.train_fn,
            fed.client_data[self.cid - 1],
            client_id=self.cid,
            device=getattr(fed, "device", "cpu"),
        )
        self.tasks += 1
        self.held = HeldUpdate(self.tasks, version, delta)
        self.spent = False
        return self.held

    # -- report: the checks, then the weighted pipeline ----------------------------------

    def staleness_for(self, base_version: int) -> int:
        """The staleness of the held update in a buffer applied on top of ``base_version``.

        Raises:
            ClientRefusal: no update held, or ``base_version`` older than the version trained on.
        """
        if self.held is None:
            raise ClientRefusal(f"client {self.cid} holds no update", client=self.cid, reason="no-update")
        s = base_version - self.held.version
        if s < 0:
            raise ClientRefusal(
                f"client {self.cid}: buffer version {base_version} is older than the version {self.held.version} "
                "it trained on (a version from the future)",
                client=self.cid,
                reason="future-version",
            )
        return s

    def own_event(self, fed: Any, session: int) -> Any:
        """The event this client charges for ``session``, from its own DP configuration (None without DP)."""
        cfg = self.rules.dp_config
        if cfg is None:
            return None
        return client_round_event(
            cfg,
            round=session,
            dim=fed.dim + fed.privacy.extra_coordinates,
            scale=fed.plan.scale,
            clip_norm=fed.privacy.clip_norm,
        )

    def check_admissible(self, base_version: int, event: Any = None) -> float:
        """Every check this client makes before its input may leave it; returns its weight.

        Raises:
            ClientRefusal: the reason is in ``reason``; nothing was sent.
        """
        r = self.rules
        if self.spent:
            raise ClientRefusal(
                f"client {self.cid}: its update already left it in an earlier session; it is never sent twice",
                client=self.cid,
                reason="spent",
            )
        s = self.staleness_for(base_version)
        if r.max_staleness is not None and s > r.max_staleness:
            raise ClientRefusal(
                f"client {self.cid}: update is {s} versions old, above its bound {r.max_staleness}",
                client=self.cid,
                reason="stale",
            )
        if r.max_contributions is not None and self.contributions >= r.max_contributions:
            raise ClientRefusal(
                f"client {self.cid}: already contributed to {self.contributions} buffers, its cap",
                client=self.cid,
                reason="cap",
            )
        if self.record is not None and event is not None:
            try:
                self.record.check(event, max_epsilon=r.max_epsilon)
            except ClientBudgetExceededError as exc:
                raise ClientRefusal(str(exc), client=self.cid, reason="budget") from exc
        w = r.staleness(s)
        if not (math.isfinite(w) and 0.0 < w <= 1.0):
            raise ClientRefusal(f"client {self.cid}: staleness weight {w!r} outside (0, 1]", client=self.cid,
                                reason="stale")
        return w

    def prepare_input(self, fed: Any, *, session: int, base_version: int) -> tuple[RingVector, ClipOutcome, float]:
        """Clip, weight, noise and encode the held update for buffer ``session`` (applied on ``base_version``).

        Returns:
            (ring vector, clip outcome, weight). Nothing leaves the client here: the
            secure-sum session sends it, and calls :meth:`input_leaving` just before.

        Raises:
            ClientRefusal: see :meth:`check_admissible`.
        """
        event = self.own_event(fed, session)
        w = self.check_admissible(base_version, event)
        if self.held is None:  # pragma: no cover - check_admissible raised already
            raise ClientRefusal(f"client {self.cid} holds no update", client=self.cid, reason="no-update")
        pipeline = ClientPipeline(StalenessWeighted(fed.privacy, w), fed.encoder, fed.sampler)
        vec, clip = pipeline.run(self.held.delta, fed.rng.spawn(f"async/client/{self.cid}/session/{session}"))
        self._pending = event
        return vec, clip, w

    def input_leaving(self) -> None:
        """Its input is about to leave it in the prepared session: charge its record, mark the update spent.

        Called by the session before the message goes out (the check in :meth:`prepare_input`
        already passed for the same event, so the charge cannot be refused here).
        """
        if self.record is not None and self._pending is not None:
            self.record.charge(self._pending, max_epsilon=self.rules.max_epsilon)
        self._pending = None
        self.spent = True
        self.contributions += 1

    def release(self) -> None:
        """Drop the held update (applied, lost with its session, or refused)."""
        self.held = None
        self.spent = False
        self._pending = None

    def epsilon_vs_server(self) -> float:
        """Its own epsilon against the server, from its own record (0 without DP or before any charge)."""
        return self.record.epsilon_vs_server() if self.record is not None else 0.0
