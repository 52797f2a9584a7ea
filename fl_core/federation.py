"""The federated round loop around a user's model and training function.

A round either completes - the new global model is published and the round is
charged to the ledger - or raises a typed error and leaves the model, the server
optimizer, the privacy events and the ledger exactly as they were.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from dp.errors import ClientBudgetExceededError
from fl_core.backends import BackendRequest, build_secure_sum
from fl_core.client import TrainFn, compute_update
from fl_core.errors import ConfigError, RoundFailedError
from fl_core.evaluation import EvalFn
from fl_core.params import BufferPolicy, ParamCodec
from fl_core.pipeline import (
    ClientPipeline,
    ClipOutcome,
    CpuTimer,
    NoPrivacy,
    PrivacyPolicy,
    ServerPipeline,
    plan_for,
)
from fl_core.sampling import Cohort, Sampler
from fl_core.server import ServerOptimizer
from fl_core.transport import InProcessTransport, Transport
from secagg import RingVector, RoundOutcome, SecAggError, SecureSum

__all__ = ["Federation", "RoundResult", "RoundStart"]


@dataclass(frozen=True)
class RoundResult:
    """What one committed round did and measured."""

    round: int
    cohort: tuple[int, ...]
    survivors: tuple[int, ...]
    metrics: dict[str, float]
    epsilon: float | None
    delta: float | None
    bytes_up_per_client: float
    bytes_down_per_client: float
    clipped_fraction: float
    wall_s: float
    event: Any = None
    skipped: bool = False
    saturated_coordinates: int = 0
    ledger_head: str | None = None
    """The ledger's head hash once this round was charged: store it with the published model
    and check it later with ``privagg audit LEDGER --head HASH`` (it detects a truncated ledger)."""
    refused: tuple[int, ...] = ()
    """Cohort members whose own privacy limit refused the round (they sent nothing: dropouts)."""
    cpu_s: dict[str, float] = field(default_factory=dict)
    """Process CPU seconds of this round per phase (:data:`fl_core.pipeline.PHASES`)."""


@dataclass(frozen=True)
class RoundStart:
    """A round that has been sampled and admitted by the budget, not yet run."""

    round: int
    cohort: Cohort
    skipped: bool = False


@dataclass
class _Accounting:
    """Optional DP bookkeeping hooks, filled by :mod:`fl_core.privacy` when DP is on."""

    epsilon_fn: Callable[[Sequence[Any]], float] | None = None
    ledger: Any = None  # has .append(event, epsilon=, delta=)
    budget: Any = None  # has .check(events, next_event) -> float, raises BudgetExceededError
    events: list[Any] = field(default_factory=list)
    admit: Callable[[int, Cohort], Cohort] | None = None  # server: leaves out clients at their limit


class Federation:
    """Federated training of ``model`` with private aggregation.

    Args:
        model: the global model (updated in place after each committed round).
        train_fn: the user's unchanged ``train_fn(model, client_data)``.
        client_data: one entry per client; client ``i`` (1-based) gets ``client_data[i-1]``.
        secure_sum: a backend name (``"plain"``, ``"masking"``, ``"paillier"``) or a built SecureSum.
        secure_sum_options: backend options (e.g. ``{"graph": "sparse"}``).
        sampler: how cohorts are drawn (default: every client every round).
        privacy: the DP policy (default :class:`NoPrivacy`, clip 10).
        server_lr, server_momentum: the server optimizer (FedAvg / FedAvgM).
        bits: ring width of the encoding.
        eval_fn: called on the global model after each round; its dict lands in ``metrics``.
        rng: the random source (OS CSPRNG in production; seeded for reproducible runs).
        dropout: fraction of each cohort that drops out (simulation) after key setup and just
            before sending its masked input: their updates and noise are not in the sum.
        buffers: ``"local"`` or ``"aggregate"`` (see :mod:`fl_core.params`).
        epsilon_fn, ledger, budget: DP accounting hooks (see :mod:`fl_core.privacy`).
        admit: server hook ``admit(round, cohort) -> cohort`` applied to every drawn cohort
            (leaves out clients that reached their participation limit; see :mod:`fl_core.privacy`).
        client_guard: the clients' own privacy limit (see :mod:`fl_core.client_guard`): its
            ``check(client, round)`` raises :class:`dp.errors.ClientBudgetExceededError` to refuse
            before the client touches its data, and ``charge(client, round)`` records the round once
            the client's input is ready, before it leaves. A refusing client is a dropout.
        transport: carries each secure-sum round (default: in-process simulation).
    """

    def __init__(
        self,
        model: nn.Module,
        train_fn: TrainFn,
        client_data: Sequence[Any],
        *,
        rng: Any,
        secure_sum: str | SecureSum = "plain",
        secure_sum_options: dict[str, Any] | None = None,
        sampler: Sampler | None = None,
        privacy: PrivacyPolicy | None = None,
        server_lr: float = 1.0,
        server_momentum: float = 0.0,
        bits: int = 32,
        eval_fn: EvalFn | None = None,
        dropout: float = 0.0,
        buffers: BufferPolicy = "local",
        epsilon_fn: Callable[[Sequence[Any]], float] | None = None,
        ledger: Any = None,
        budget: Any = None,
        admit: Callable[[int, Cohort], Cohort] | None = None,
        client_guard: Any = None,
        transport: Transport | None = None,
    ) -> None:
        if len(client_data) == 0:
            raise ConfigError("client_data is empty: at least one client is needed", option="clients")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout}", option="dropout")
        self.model = model
        self.train_fn = train_fn
        self.client_data = list(client_data)
        self.codec = ParamCodec(model, buffers=buffers)
        self.sampler = sampler or Sampler.full(len(self.client_data))
        if self.sampler.population != len(self.client_data):
            raise ConfigError(
                f"sampler population {self.sampler.population} != {len(self.client_data)} clients",
                option="clients",
            )
        self.privacy: PrivacyPolicy = privacy or NoPrivacy()
        self.optimizer = ServerOptimizer(lr=server_lr, momentum=server_momentum)
        self.rng = rng
        self.plan = plan_for(self.privacy, self.sampler, self.codec.dim, bits)
        from secagg import FixedPointEncoder

        self.encoder = FixedPointEncoder(self.plan)
        if isinstance(secure_sum, str):
            self.secure_sum = build_secure_sum(
                secure_sum,
                BackendRequest(
                    ring=self.plan.ring,
                    dim=self.plan.dim,
                    max_clients=self.sampler.max_cohort(),
                    rng=rng.spawn("secure-sum-setup"),
                    options={"min_survivors": self.privacy.min_survivors, **(secure_sum_options or {})},
                ),
            )
        else:
            self.secure_sum = secure_sum
        self.timer = CpuTimer()
        self.client_pipeline = ClientPipeline(self.privacy, self.encoder, self.sampler, self.timer)
        self.server_pipeline = ServerPipeline(self.privacy, self.encoder, self.sampler, self.timer)
        self.eval_fn = eval_fn
        self.dropout = dropout
        self.transport: Transport = transport or InProcessTransport()
        self.accounting = _Accounting(epsilon_fn=epsilon_fn, ledger=ledger, budget=budget, admit=admit)
        self.client_guard = client_guard
        self.round = 0
        self.history: list[RoundResult] = []
        self._cohorts: dict[int, Any] = {}

    # -- public API ---------------------------------------------------------

    @property
    def dim(self) -> int:
        return self.codec.dim

    @property
    def events(self) -> list[Any]:
        return list(self.accounting.events)

    def resume_accounting(self, events: Sequence[Any], *, last_round: int, epsilon: float) -> None:
        """Continue a ledger's privacy budget: its events count, and rounds go on after its last one."""
        self.accounting.events.extend(events)
        self.round = last_round
        self._last_epsilon = epsilon

    def close(self) -> None:
        """Release the ledger (its file lock); the federation can no longer charge rounds."""
        close = getattr(self.accounting.ledger, "close", None)
        if close is not None:
            close()

    def rounds(self, n: int) -> Iterator[RoundResult]:
        """Run ``n`` rounds, yielding each committed round's result (the step-by-step form)."""
        if n < 0:
            raise ConfigError(f"rounds must be >= 0, got {n}", option="rounds")
        for _ in range(n):
            yield self.run_round()

    def fit(self, n: int, *, on_round: Callable[[RoundResult], None] | None = None) -> list[RoundResult]:
        """Run ``n`` rounds; returns their results (also kept in ``self.history``)."""
        out = []
        for res in self.rounds(n):
            out.append(res)
            if on_round is not None:
                on_round(res)
        return out

    def run_round(self) -> RoundResult:
        """Run one round. On any error the model, optimizer, events and ledger are unchanged."""
        t0 = time.perf_counter()
        start = self.begin_round()
        if start.skipped:
            return self._skip(start, t0)
        global_vec = self.codec.flatten(self.model)
        inputs: dict[int, RingVector] = {}
        clipped = saturated = 0
        refused: list[int] = []
        for c in start.cohort.members:
            try:
                vec, clip = self.client_contribution(c, start.round, global_vec, self.client_data[c - 1])
            except ClientBudgetExceededError:
                refused.append(c)  # its own limit: it sends nothing, the round goes on without it
                continue
            inputs[c] = vec
            clipped += int(clip.clipped)
            saturated += clip.saturated
        try:
            outcome = self.transport.run(
                self.secure_sum,
                inputs,
                round_id=start.round,
                rng_for=lambda c: self.secagg_rng(c, start.round),
                stages_completed=self.dropouts(start.cohort.members, start.round),
            )
        except SecAggError as exc:
            raise RoundFailedError(f"round {start.round}: secure sum failed: {exc}", round=start.round) from exc
        return self.finish_round(
            start, outcome, global_vec, clipped=clipped, saturated=saturated, t0=t0, refused=tuple(refused)
        )

    # -- the round in pieces (a networked transport runs them on different machines) --

    def cohort_of(self, r: int) -> Any:
        """Server: the cohort of round ``r``, drawn once (``begin_round(r)`` uses the same draw).

        A transport may ask for the next round's cohort while the current round is still
        running (to have its members advertise their keys early); sampling depends on
        no data and charges nothing, so drawing it early changes nothing else.
        """
        if r not in self._cohorts:
            self._cohorts = {k: v for k, v in self._cohorts.items() if k > self.round}
            cohort = self.sampler.sample(self.rng.spawn(f"sample/{r}"))
            if self.accounting.admit is not None:
                cohort = self.accounting.admit(r, cohort)
            self._cohorts[r] = cohort
        return self._cohorts[r]

    def begin_round(self) -> RoundStart:
        """Server: sample the cohort and check the budget before anything runs."""
        r = self.round + 1
        self.timer.take()  # a round's CPU record starts here
        cohort = self.cohort_of(r)
        if not cohort.members:
            return RoundStart(r, cohort, skipped=True)
        acc = self.accounting
        if acc.budget is not None:
            planned = self.privacy.round_event(
                round=r,
                cohort=cohort,
                survivors=len(cohort.members),
                scale=self.plan.scale,
                dim=self.dim,
                planned=True,
            )
            if planned is not None:
                acc.budget.check(acc.events, planned)
        return RoundStart(r, cohort)

    def client_contribution(
        self, client: int, round_id: int, global_vec: Any, client_data: Any
    ) -> tuple[RingVector, ClipOutcome]:
        """Client: train on ``client_data`` from ``global_vec``; clip, noise and encode the update.

        Raises:
            ClientBudgetExceededError: the client's own limit refuses the round (before training).
        """
        guard = self.client_guard
        if guard is not None:
            guard.check(client, round_id)
        model = self.model
        if not np.array_equal(self.codec.flatten(model), global_vec):
            model = copy.deepcopy(self.model)
            self.codec.unflatten_into(model, global_vec)
        with self.timer.phase("train"):
            delta = compute_update(model, global_vec, self.codec, self.train_fn, client_data, client_id=client)
        out = self.client_pipeline.run(delta, self.rng.spawn(f"client/{client}/round/{round_id}"))
        if guard is not None:
            guard.charge(client, round_id)  # the input is ready: charged before anything leaves
        return out

    def secagg_rng(self, client: int, round_id: int) -> Any:
        """The random source of ``client``'s secure-sum session in round ``round_id``."""
        return self.rng.spawn(f"secagg/{client}/round/{round_id}")

    def finish_round(
        self,
        start: RoundStart,
        outcome: RoundOutcome,
        global_vec: Any,
        *,
        clipped: int | None = None,
        saturated: int = 0,
        t0: float | None = None,
        refused: tuple[int, ...] = (),
    ) -> RoundResult:
        """Server: decode the sum, add central noise, step the optimizer, charge the ledger, publish."""
        t0 = time.perf_counter() if t0 is None else t0
        r, cohort, acc = start.round, start.cohort, self.accounting
        if outcome.error is not None or outcome.total is None:
            raise RoundFailedError(f"round {r} aborted, model unchanged: {outcome.error}", round=r) from outcome.error
        survivors = tuple(sorted(outcome.survivors))
        self.timer.add("mask", sum(outcome.client_cpu_s.values()))
        self.timer.add("unmask", outcome.server_cpu_s)
        if len(survivors) < self.privacy.min_survivors:
            raise RoundFailedError(
                f"round {r} aborted, model unchanged: {len(survivors)} survivors < the {self.privacy.min_survivors} "
                "the DP noise was sized for (lower --dropout, or raise the cohort size)",
                round=r,
            )
        avg = self.server_pipeline.run(outcome.total, len(survivors), self.rng.spawn(f"server-noise/{r}"))
        new_vec, velocity = self.optimizer.step(global_vec, avg)
        event = self.privacy.round_event(
            round=r,
            cohort=cohort,
            survivors=len(survivors),
            scale=self.plan.scale,
            dim=self.dim,
            planned=False,
            survivor_ids=survivors,
        )
        events_after = acc.events + ([event] if event is not None else [])
        with self.timer.phase("account"):
            epsilon = (
                acc.epsilon_fn(events_after)
                if (acc.epsilon_fn is not None and event is not None)
                else self._current_epsilon()
            )
            ledger_head = None
            if acc.ledger is not None and event is not None:
                acc.ledger.append(event, epsilon=epsilon, delta=self.privacy.delta)  # commit point (fsync)
                ledger_head = getattr(acc.ledger, "head_hash", None)
        # Commit: nothing below can fail on valid state.
        self.codec.unflatten_into(self.model, new_vec)
        self.optimizer.commit(velocity)
        if event is not None:
            acc.events.append(event)
        self._last_epsilon = epsilon
        self.round = r
        n = len(cohort.members)
        fraction = (clipped / n) if clipped is not None else float("nan")
        self.privacy.after_round(fraction)
        with self.timer.phase("eval"):
            metrics = self._evaluate()
        res = RoundResult(
            round=r,
            cohort=cohort.members,
            survivors=survivors,
            metrics=metrics,
            epsilon=epsilon,
            delta=self.privacy.delta,
            bytes_up_per_client=sum(outcome.bytes_up.values()) / n,
            bytes_down_per_client=sum(outcome.bytes_down.values()) / n,
            clipped_fraction=fraction,
            wall_s=time.perf_counter() - t0,
            event=event,
            saturated_coordinates=saturated,
            ledger_head=ledger_head,
            refused=refused,
            cpu_s=self.timer.take(),
        )
        self.history.append(res)
        return res

    def _skip(self, start: RoundStart, t0: float) -> RoundResult:
        # Nobody sampled: no data is touched and nothing is released.
        self.round = start.round
        res = RoundResult(
            start.round,
            (),
            (),
            self._evaluate(),
            self._current_epsilon(),
            self.privacy.delta,
            0.0,
            0.0,
            0.0,
            time.perf_counter() - t0,
            None,
            skipped=True,
        )
        self.history.append(res)
        return res

    # -- internals ----------------------------------------------------------

    _last_epsilon: float | None = None

    def _current_epsilon(self) -> float | None:
        if self.privacy.mode == "none":
            return None
        return self._last_epsilon if self._last_epsilon is not None else 0.0

    def _evaluate(self) -> dict[str, float]:
        return dict(self.eval_fn(self.model)) if self.eval_fn is not None else {}

    def dropouts(self, members: tuple[int, ...], r: int) -> dict[int, int]:
        """The simulated dropout schedule of round ``r`` (client -> stages completed)."""
        if self.dropout <= 0:
            return {}
        k = int(round(self.dropout * len(members)))
        if k == 0:
            return {}
        g = self.rng.spawn(f"dropout/{r}")
        pool = list(members)
        for i in range(k):
            j = i + g.randbelow(len(pool) - i)
            pool[i], pool[j] = pool[j], pool[i]
        # The backend's ``input_stage`` is the stage in which a client sends its input;
        # dropping clients complete every stage before it (key setup) and then vanish.
        stage = int(getattr(self.secure_sum, "input_stage", 0))
        return {c: stage for c in pool[:k]}
