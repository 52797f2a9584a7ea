"""One client's side of asynchronous training: train on a fetched version, hold the update, report it once.

The client keeps its own state and enforces its own rules from values it holds, never
from a parameter the server sent (see SECURITY.md, asynchronous secure aggregation):

* it computes the staleness weight itself from the version it trained on and the
  version the buffer is applied to, refuses a buffer version older than its own
  (a version from the future), and refuses to report beyond its own staleness bound;
* it counts the buffer sessions its (masked or encrypted) input left it in, and
  refuses a session beyond its own contribution cap or its own epsilon limit;
* once its input has left it in one session, that update is spent: it is never put
  into a second session, whatever the server later says about the first one. A
  client that missed its session before its input left keeps the update and may
  report it to a later buffer (with a new staleness weight and fresh masks).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

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
        max_epsilon: refuse a session whose planned event would take its own epsilon
            (composed over the sessions its input left it in) past this (None: no limit).
        delta: the delta of ``max_epsilon``.
        epsilon_fn: composes events into epsilon (needed with ``max_epsilon``).
    """

    staleness: StalenessWeight = field(default_factory=StalenessWeight)
    max_staleness: int | None = None
    max_contributions: int | None = None
    max_epsilon: float | None = None
    delta: float = 1e-5
    epsilon_fn: Callable[[Sequence[Any]], float] | None = None


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
        self.record: list[Any] = []
        """The privacy events of the sessions its input left it in (its own record)."""
        self.contributions = 0

    # -- check-in: fetch a version and train ------------------------------------------

    def train(self, fed: Any, version: int, global_vec: npt.NDArray[np.float32]) -> HeldUpdate:
        """Train the user's ``train_fn`` on this client's data from ``global_vec`` (model ``version``)."""
        delta = compute_update(
            fed.model, global_vec, fed.codec, fed.train_fn, fed.client_data[self.cid - 1], client_id=self.cid
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

    def check_admissible(self, base_version: int, planned_event: Any = None) -> float:
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
        if r.max_epsilon is not None and planned_event is not None:
            if r.epsilon_fn is None:
                raise ClientRefusal(f"client {self.cid}: an epsilon limit needs an accountant", client=self.cid,
                                    reason="budget")
            eps = r.epsilon_fn([*self.record, planned_event])
            if not eps <= r.max_epsilon:
                raise ClientRefusal(
                    f"client {self.cid}: this buffer would take its own epsilon to {eps:.4g} > {r.max_epsilon:.4g}",
                    client=self.cid,
                    reason="budget",
                )
        w = r.staleness(s)
        if not (math.isfinite(w) and 0.0 < w <= 1.0):
            raise ClientRefusal(f"client {self.cid}: staleness weight {w!r} outside (0, 1]", client=self.cid,
                                reason="stale")
        return w

    def prepare_input(
        self, fed: Any, *, session: int, base_version: int, planned_event: Any = None
    ) -> tuple[RingVector, ClipOutcome, float]:
        """Clip, weight, noise and encode the held update for buffer ``session`` (applied on ``base_version``).

        Returns:
            (ring vector, clip outcome, weight). Nothing leaves the client here: the
            secure-sum session sends it, and :meth:`input_left` records that.

        Raises:
            ClientRefusal: see :meth:`check_admissible`.
        """
        w = self.check_admissible(base_version, planned_event)
        if self.held is None:  # pragma: no cover - check_admissible raised already
            raise ClientRefusal(f"client {self.cid} holds no update", client=self.cid, reason="no-update")
        pipeline = ClientPipeline(StalenessWeighted(fed.privacy, w), fed.encoder, fed.sampler)
        vec, clip = pipeline.run(self.held.delta, fed.rng.spawn(f"async/client/{self.cid}/session/{session}"))
        return vec, clip, w

    def input_left(self, event: Any) -> None:
        """The session sent this client's input: the update is spent and the session is charged to its record."""
        self.spent = True
        self.contributions += 1
        if event is not None:
            self.record.append(event)

    def release(self) -> None:
        """Drop the held update (applied, lost with its session, or refused)."""
        self.held = None
        self.spent = False
