"""The federated round loop around a user's model and training function.

A round either completes - the new global model is published and the round is
charged to the ledger - or raises a typed error and leaves the model, the server
optimizer, the privacy events and the ledger exactly as they were.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from dp.errors import ClientBudgetExceededError
from fl_core.backends import BackendRequest, build_secure_sum
from fl_core.binding import bind, terms_binding
from fl_core.client import TrainFn, compute_update
from fl_core.errors import ClientTrainingError, ConfigError, RoundFailedError, TooManyAbortsError, UpdateError
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
from fl_core.sampling import Cohort, Sampler, SamplingScheme
from fl_core.server import ServerOptimizer
from fl_core.sources import ClientDataView, ClientSource, InMemoryClients
from fl_core.transport import InProcessTransport, Transport
from secagg import (
    DeferredInput,
    InputWithdrawnError,
    RingVector,
    RoundOutcome,
    SecAggError,
    SecureSum,
    TooFewSurvivorsError,
)
from secagg.masking import TermsBinding

__all__ = ["Federation", "RoundResult", "RoundStart", "round_label"]


def round_label(round_id: int, attempt: int) -> str:
    """The label that keys a round attempt's randomness: ``"R"`` for the first attempt, ``"R~A"`` after
    ``A`` aborts, so a retried round draws a fresh cohort, fresh noise and fresh secure-sum keys."""
    return str(round_id) if attempt == 0 else f"{round_id}~{attempt}"


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
    aborted: bool = False
    """The attempt released nothing and left the model, optimizer and ledger as they were;
    the next attempt of the same round draws a fresh cohort."""
    reason: str | None = None
    """Why the attempt aborted (None for a committed round)."""
    attempt: int = 0
    """How many attempts of this round aborted before this one."""
    dropouts: Mapping[int, str] = field(default_factory=dict)
    """Cohort members whose training failed (``train_fn`` raised, or a NaN/Inf update), with the
    reason: they sent nothing and counted as dropouts."""
    record_epsilon: float | None = None
    """Record-level (Opacus DP-SGD) epsilon, the maximum over clients, when record-level DP is on."""


@dataclass(frozen=True)
class RoundStart:
    """A round that has been sampled and admitted by the budget, not yet run."""

    round: int
    cohort: Cohort
    skipped: bool = False
    attempt: int = 0

    @property
    def label(self) -> str:
        """The label keying this attempt's randomness (see :func:`round_label`)."""
        return round_label(self.round, self.attempt)


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
        client_data: one entry per client (client ``i``, 1-based, gets ``client_data[i-1]``), or a
            :class:`~fl_core.sources.ClientSource` (loaded lazily from a task, none on a server,
            one client's on a node).
        secure_sum: a backend name (``"plain"``, ``"masking"``, ``"paillier"``) or a built SecureSum.
        secure_sum_options: backend options (e.g. ``{"graph": "sparse"}``).
        sampler: how cohorts are drawn (default: every client every round).
        privacy: the DP policy (default :class:`NoPrivacy`, clip 10).
        server_lr, server_momentum: the server optimizer (FedAvg / FedAvgM).
        bits: ring width of the encoding (None: the narrowest that cannot overflow, see
            :func:`fl_core.pipeline.plan_for`).
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
        transport: carries each secure-sum round (default: in-process simulation). It gets each
            client's input deferred: the client trains, clips, noises and encodes when its session
            asks (masking: at the masked-input stage, after key setup, as Flower's SecAgg+
            workflow trains), so a ``train_fn`` failure makes it a dropout of that stage.
        device: where clients train (``"cpu"``, ``"cuda"``, a torch.device): the local copy of the
            model is moved there for ``train_fn``; the update comes back to the CPU before clipping,
            so DP and secure-sum arithmetic never leave the CPU. The global model stays on the CPU.
        record_dp: a :class:`fl_core.record_dp.RecordDP` whose per-client accountants are
            reported in each result's ``record_epsilon`` (and in ``epsilon`` when no client-level
            DP is on).

    Hooks (set as attributes): ``commit_guard`` - a context-manager factory entered from the
    ledger append to the end of the round's commit (a signal handler defers interruption
    there); ``on_commit(result)`` - called inside it once the round is committed (a
    checkpoint writer); ``on_abort(result)`` - called after an attempt aborted.
    """

    def __init__(
        self,
        model: nn.Module,
        train_fn: TrainFn,
        client_data: Sequence[Any] | ClientSource,
        *,
        rng: Any,
        secure_sum: str | SecureSum = "plain",
        secure_sum_options: dict[str, Any] | None = None,
        sampler: Sampler | None = None,
        privacy: PrivacyPolicy | None = None,
        server_lr: float = 1.0,
        server_momentum: float = 0.0,
        bits: int | None = 32,
        eval_fn: EvalFn | None = None,
        dropout: float = 0.0,
        buffers: BufferPolicy = "local",
        epsilon_fn: Callable[[Sequence[Any]], float] | None = None,
        ledger: Any = None,
        budget: Any = None,
        admit: Callable[[int, Cohort], Cohort] | None = None,
        client_guard: Any = None,
        transport: Transport | None = None,
        device: Any = "cpu",
        record_dp: Any = None,
    ) -> None:
        source: ClientSource = client_data if isinstance(client_data, ClientSource) else InMemoryClients(client_data)
        if source.population == 0:
            raise ConfigError("client_data is empty: at least one client is needed", option="clients")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout}", option="dropout")
        self.model = model
        self.train_fn = train_fn
        self.source = source
        self.client_data = ClientDataView(source)
        self.codec = ParamCodec(model, buffers=buffers)
        self.sampler = sampler or Sampler.full(source.population)
        if self.sampler.population != source.population:
            raise ConfigError(
                f"sampler population {self.sampler.population} != {source.population} clients",
                option="clients",
            )
        self.device = device
        self.record_dp = record_dp
        self.commit_guard: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext
        self.on_commit: Callable[[RoundResult], None] | None = None
        self.on_abort: Callable[[RoundResult], None] | None = None
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
        if self.privacy.releases_empty and getattr(self.secure_sum, "name", "plain") == "masking":
            raise ConfigError(
                "central mode under Poisson sampling releases the noise alone for an empty cohort, but a masked "
                "sum needs two clients, so a cohort of one would abort: a release rule the accountant would not "
                "charge. Build the policy with DPPolicy(..., secure_floor=2) (build_privacy does), or use the "
                "plain sum",
                option="secure_sum",
            )
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
        self._cohorts: dict[str, Any] = {}
        self.attempts: dict[int, int] = {}
        """Round -> how many of its attempts aborted (the next attempt's randomness is keyed by it)."""
        self.aborts: list[RoundResult] = []

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

    def rounds(self, n: int, *, max_consecutive_aborts: int = 10) -> Iterator[RoundResult]:
        """Commit ``n`` rounds, yielding each round's result (the step-by-step form).

        An aborted attempt (too few survivors, a failed secure sum) released nothing and
        changed nothing; it is yielded with ``aborted=True`` and the round is attempted again
        with a fresh cohort. After ``max_consecutive_aborts`` aborts in a row a
        :class:`~fl_core.errors.TooManyAbortsError` ends the loop.
        """
        if n < 0:
            raise ConfigError(f"rounds must be >= 0, got {n}", option="rounds")
        if max_consecutive_aborts < 1:
            raise ConfigError("max_consecutive_aborts must be >= 1", option="max_consecutive_aborts")
        done = consecutive = 0
        while done < n:
            seen = len(self.aborts)
            try:
                res = self.run_round()
            except RoundFailedError as exc:
                if len(self.aborts) == seen:  # raised outside the loop's own bookkeeping
                    self.attempts[exc.round] = self.attempts.get(exc.round, 0) + 1
                    self.aborts.append(self._aborted(exc, None, {}))
                    if self.on_abort is not None:  # e.g. begin_round refused a cohort too small to release
                        self.on_abort(self.aborts[-1])
                res = self.aborts[-1]
                consecutive += 1
                yield res
                if consecutive >= max_consecutive_aborts:
                    raise TooManyAbortsError(
                        f"{consecutive} consecutive attempts of round {exc.round} aborted (last: {exc}); each released "
                        "nothing. Make aborts rarer: lower --min-survivors or --dropout, or raise the cohort size "
                        "(--per-round / --sampling-rate); or allow more with --max-consecutive-aborts",
                        round=exc.round,
                        aborts=consecutive,
                    ) from exc
                continue
            consecutive = 0
            done += 1
            yield res

    def fit(
        self, n: int, *, on_round: Callable[[RoundResult], None] | None = None, max_consecutive_aborts: int = 10
    ) -> list[RoundResult]:
        """Commit ``n`` rounds; returns every attempt's result (committed rounds are also in ``self.history``)."""
        out = []
        for res in self.rounds(n, max_consecutive_aborts=max_consecutive_aborts):
            out.append(res)
            if on_round is not None:
                on_round(res)
        return out

    def run_round(self) -> RoundResult:
        """Run one round. On any error the model, optimizer, events and ledger are unchanged.

        The round streams: each client trains, clips, noises and encodes when its secure-sum
        session asks for its input (the masked-input stage of the masking backend, the start
        of the others), and the server folds what it sends into a running sum, so no more than
        one client's encoded input is alive at a time, whatever the cohort size (see
        :class:`_RoundInputs`).
        """
        t0 = time.perf_counter()
        start = self.begin_round()
        if start.skipped:
            return self._skip(start, t0)
        global_vec = self.codec.flatten(self.model)
        r = start.round
        refused: list[int] = []
        admitted: list[int] = []
        for c in start.cohort.members:
            try:
                self._check_own_limit(c, r)
            except ClientBudgetExceededError:
                refused.append(c)  # its own limit: it sends nothing, the round goes on without it
                continue
            admitted.append(c)
        stages = self.dropouts(start.cohort.members, r)
        feed = _RoundInputs(self, r, global_vec, admitted, stages)
        try:
            outcome = self.transport.run(
                self.bound_secure_sum(),
                feed.deferred(),
                round_id=r,
                rng_for=lambda c: self.secagg_rng(c, r),
                stages_completed=stages,
            )
            feed.finish()
        except SecAggError as exc:
            self._abort(start, f"round {r}: secure sum failed: {exc}", feed.failed, t0)
            raise RoundFailedError(f"round {r}: secure sum failed: {exc}", round=r) from exc
        return self.finish_round(
            start,
            outcome,
            global_vec,
            clipped=feed.clipped,
            saturated=feed.saturated,
            t0=t0,
            failed=feed.failed,
            refused=tuple(refused + feed.refused),
        )

    # -- the round in pieces (a networked transport runs them on different machines) --

    def cohort_of(self, r: int) -> Any:
        """Server: the cohort of round ``r``, drawn once (``begin_round(r)`` uses the same draw).

        A transport may ask for the next round's cohort while the current round is still
        running (to have its members advertise their keys early); sampling depends on
        no data and charges nothing, so drawing it early changes nothing else.
        """
        label = round_label(r, self.attempts.get(r, 0))
        if label not in self._cohorts:
            self._cohorts = {k: v for k, v in self._cohorts.items() if int(k.split("~")[0]) > self.round}
            cohort = self.sampler.sample(self.rng.spawn(f"sample/{label}"))
            if self.accounting.admit is not None:
                cohort = self.accounting.admit(r, cohort)
            self._cohorts[label] = cohort
        return self._cohorts[label]

    def begin_round(self) -> RoundStart:
        """Server: sample the cohort and check the budget before anything runs."""
        r = self.round + 1
        self.timer.take()  # a round's CPU record starts here
        cohort = self.cohort_of(r)
        attempt = self.attempts.get(r, 0)
        acc = self.accounting
        # An empty Poisson draw of a DP run is never a skipped round: a skip would be a release
        # that the target client's presence alone turns into a redraw (dp.accountants.aborts).
        # Central mode releases the noise alone for it (finish_round); the other modes redraw it
        # like a too-small one (the budget's check aborts it).
        redraw_empty = cohort.scheme is SamplingScheme.POISSON and getattr(acc.budget, "min_cohort", 0) >= 1
        if not cohort.members and not redraw_empty and not self.privacy.releases_empty:
            return RoundStart(r, cohort, skipped=True, attempt=attempt)
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
        return RoundStart(r, cohort, attempt=attempt)

    def client_contribution(
        self, client: int, round_id: int, global_vec: Any, client_data: Any
    ) -> tuple[RingVector, ClipOutcome]:
        """Client: train on ``client_data`` from ``global_vec``; clip, noise and encode the update.

        Raises:
            ClientBudgetExceededError: the client's own limit refuses the round (before training).
        """
        self._check_own_limit(client, round_id)
        return self._contribute(client, round_id, global_vec, client_data)

    def _check_own_limit(self, client: int, round_id: int) -> None:
        """The client's own limit, before it touches its data (raises ClientBudgetExceededError)."""
        if self.client_guard is not None:
            self.client_guard.check(client, round_id)

    def _contribute(
        self, client: int, round_id: int, global_vec: Any, client_data: Any
    ) -> tuple[RingVector, ClipOutcome]:
        """:meth:`client_contribution` once the client's own limit admitted the round."""
        model = self.model
        if not np.array_equal(self.codec.flatten(model), global_vec):
            model = copy.deepcopy(self.model)
            self.codec.unflatten_into(model, global_vec)
        with self.timer.phase("train"):
            delta = compute_update(
                model, global_vec, self.codec, self.train_fn, client_data, client_id=client, device=self.device
            )
        out = self.client_pipeline.run(delta, self.rng.spawn(f"client/{client}/round/{self._label(round_id)}"))
        if self.client_guard is not None:
            self.client_guard.charge(client, round_id)  # the input is ready: charged before anything leaves
        return out

    def terms_binding(self) -> TermsBinding:
        """The digests of this round's terms (the run's DP configuration and encoding, the round's clip).

        In process every client runs this federation's pipeline, so each client's own terms
        are these; a Flower node computes them from its own federation after checking the
        announced clip (:mod:`fl_core.binding`).
        """
        return terms_binding(self)

    def bound_secure_sum(self) -> SecureSum:
        """The secure sum with its sessions bound to :meth:`terms_binding` (masking; other backends unchanged)."""
        bound: SecureSum = bind(self.secure_sum, self.terms_binding())
        return bound

    def secagg_rng(self, client: int, round_id: int) -> Any:
        """The random source of ``client``'s secure-sum session in round ``round_id`` (its current attempt)."""
        return self.rng.spawn(f"secagg/{client}/round/{self._label(round_id)}")

    def _label(self, round_id: int) -> str:
        return round_label(round_id, self.attempts.get(round_id, 0))

    def finish_round(
        self,
        start: RoundStart,
        outcome: RoundOutcome,
        global_vec: Any,
        *,
        clipped: int | None = None,
        saturated: int = 0,
        t0: float | None = None,
        failed: Mapping[int, str] | None = None,
        refused: tuple[int, ...] = (),
    ) -> RoundResult:
        """Server: decode the sum, add central noise, step the optimizer, charge the ledger, publish.

        ``failed``: cohort members whose training failed (client -> reason), recorded in the
        result. An abort raises :class:`~fl_core.errors.RoundFailedError` after recording the
        attempt (``self.aborts``); the round's next attempt draws a fresh cohort.
        """
        t0 = time.perf_counter() if t0 is None else t0
        r, cohort, acc = start.round, start.cohort, self.accounting
        failed = dict(failed or {})
        if start.cohort.scheme is SamplingScheme.POISSON and self._noise_alone(outcome):
            # Central mode, Poisson: nobody's input reached the sum (an empty draw, or every member
            # dropped): the round releases the noise alone on a zero sum, as DP-FedAvg does.
            outcome = dataclasses.replace(outcome, total=self.encoder.ring.zeros(self.plan.dim), error=None)
        if outcome.error is not None or outcome.total is None:
            msg = f"round {r} aborted, model unchanged: {outcome.error}" + _failures(failed)
            self._abort(start, msg, failed, t0)
            raise RoundFailedError(msg, round=r) from outcome.error
        survivors = tuple(sorted(outcome.survivors))
        self.timer.add("mask", sum(outcome.client_cpu_s.values()))
        self.timer.add("unmask", outcome.server_cpu_s)
        if len(survivors) < self.privacy.min_survivors:
            msg = (
                f"round {r} aborted, model unchanged: {len(survivors)} survivors < the {self.privacy.min_survivors} "
                "the DP noise was sized for (lower --dropout, or raise the cohort size)" + _failures(failed)
            )
            self._abort(start, msg, failed, t0)
            raise RoundFailedError(msg, round=r)
        avg = self.server_pipeline.run(
            outcome.total, len(survivors), self.rng.spawn(f"server-noise/{round_label(r, start.attempt)}")
        )
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
        with self.commit_guard():  # from the ledger append on, the round commits whole
            ledger_head = None
            if acc.ledger is not None and event is not None:
                with self.timer.phase("account"):
                    acc.ledger.append(event, epsilon=epsilon, delta=self.privacy.delta)  # commit point (fsync)
                ledger_head = getattr(acc.ledger, "head_hash", None)
            # Commit: nothing below can fail on valid state.
            self.codec.unflatten_into(self.model, new_vec)
            self.optimizer.commit(velocity)
            if event is not None:
                acc.events.append(event)
            self._last_epsilon = epsilon
            self.round = r
            self.attempts.pop(r, None)
            n = len(cohort.members)
            fraction = (clipped / n) if (clipped is not None and n) else float("nan")
            self.privacy.after_round(fraction)
            record_eps = self._record_epsilon(cohort.members)
            with self.timer.phase("eval"):
                metrics = self._evaluate()
            res = RoundResult(
                round=r,
                cohort=cohort.members,
                survivors=survivors,
                metrics=metrics,
                epsilon=epsilon if self.privacy.mode != "none" else record_eps,
                delta=self.privacy.delta if self.privacy.mode != "none" else self._record_delta(),
                bytes_up_per_client=sum(outcome.bytes_up.values()) / max(n, 1),
                bytes_down_per_client=sum(outcome.bytes_down.values()) / max(n, 1),
                clipped_fraction=fraction,
                wall_s=time.perf_counter() - t0,
                event=event,
                saturated_coordinates=saturated,
                ledger_head=ledger_head,
                attempt=start.attempt,
                dropouts=failed,
                record_epsilon=record_eps,
                refused=refused,
                cpu_s=self.timer.take(),
            )
            self.history.append(res)
            if self.on_commit is not None:
                self.on_commit(res)
        return res

    def _noise_alone(self, outcome: RoundOutcome) -> bool:
        """Whether ``outcome`` is a secure sum that no input reached, which this run releases as
        the noise alone (:attr:`fl_core.pipeline.PrivacyPolicy.releases_empty`) instead of aborting.

        Only a sum that failed for lack of inputs (0 survivors) qualifies; any other failure, and
        a sum with too few (but some) survivors, still aborts.
        """
        return (
            self.privacy.releases_empty
            and outcome.total is None
            and not outcome.survivors
            and isinstance(outcome.error, TooFewSurvivorsError)
            and outcome.error.survivors == 0
        )

    def abort_round(self, start: RoundStart, reason: str) -> RoundResult:
        """Server: record that ``start``'s attempt aborted (nothing released); the next
        :meth:`begin_round` draws a fresh cohort for the same round. For transports that
        fail a round before :meth:`finish_round` (``run_round`` and ``finish_round`` call it
        themselves)."""
        return self._abort(start, reason, {}, time.perf_counter())

    def _abort(self, start: RoundStart, reason: str, failed: Mapping[int, str], t0: float) -> RoundResult:
        res = self._aborted(RoundFailedError(reason, round=start.round), start, failed, t0=t0)
        self.attempts[start.round] = start.attempt + 1
        self.aborts.append(res)
        if self.on_abort is not None:
            self.on_abort(res)
        return res

    def _aborted(
        self, exc: RoundFailedError, start: RoundStart | None, failed: Mapping[int, str], t0: float | None = None
    ) -> RoundResult:
        members = start.cohort.members if start is not None else ()
        res = RoundResult(
            round=exc.round,
            cohort=members,
            survivors=(),
            metrics={},
            epsilon=self._current_epsilon(),
            delta=self.privacy.delta,
            bytes_up_per_client=0.0,
            bytes_down_per_client=0.0,
            clipped_fraction=float("nan"),
            wall_s=(time.perf_counter() - t0) if t0 is not None else 0.0,
            aborted=True,
            reason=str(exc),
            attempt=start.attempt if start is not None else self.attempts.get(exc.round, 1) - 1,
            dropouts=dict(failed),
            record_epsilon=self._record_epsilon(members),
        )
        return res

    def _skip(self, start: RoundStart, t0: float) -> RoundResult:
        # Nobody sampled: no data is touched and nothing is released.
        self.round = start.round
        self.attempts.pop(start.round, None)
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
            return self._record_epsilon()
        return self._last_epsilon if self._last_epsilon is not None else 0.0

    _record_max: float = 0.0

    def _record_epsilon(self, trained: Sequence[int] = ()) -> float | None:
        """Max record-level epsilon over clients; only ``trained`` clients' can have grown since the last call."""
        if self.record_dp is None:
            return None
        for c in trained:
            self._record_max = max(self._record_max, float(self.record_dp.epsilon(c)))
        return self._record_max

    def _record_delta(self) -> float | None:
        return None if self.record_dp is None else float(self.record_dp.config.delta)

    def _evaluate(self) -> dict[str, float]:
        return dict(self.eval_fn(self.model)) if self.eval_fn is not None else {}

    def dropouts(self, members: tuple[int, ...], r: int) -> dict[int, int]:
        """The simulated dropout schedule of round ``r`` (client -> stages completed)."""
        if self.dropout <= 0:
            return {}
        k = int(round(self.dropout * len(members)))
        if k == 0:
            return {}
        g = self.rng.spawn(f"dropout/{self._label(r)}")
        pool = list(members)
        for i in range(k):
            j = i + g.randbelow(len(pool) - i)
            pool[i], pool[j] = pool[j], pool[i]
        # The backend's ``input_stage`` is the stage in which a client sends its input;
        # dropping clients complete every stage before it (key setup) and then vanish.
        stage = int(getattr(self.secure_sum, "input_stage", 0))
        return {c: stage for c in pool[:k]}


class _RoundInputs:
    """The clients' inputs of one in-process round, each produced when its session asks for it.

    A deferred input trains the client, runs its pipeline (clip, noise, encode) and charges
    its own record, then hands the encoded vector to the session, which masks and sends it
    at once; nothing here keeps it. ``train_fn`` failing (or a NaN/Inf update) withdraws the
    input (:class:`secagg.InputWithdrawnError`): the client is a dropout of that stage.

    A member the dropout schedule sends away before its input stage is never asked; as
    before streaming, it still trains and charges its record ("it vanished just before
    sending"), in cohort order among the others: its input is produced and dropped when the
    first later member is asked, or at :meth:`finish`. So every member computes in cohort
    order, exactly as when all inputs were computed up front.
    """

    def __init__(
        self, fed: Federation, round_id: int, global_vec: Any, members: Sequence[int], stages: Mapping[int, int]
    ) -> None:
        self._fed = fed
        self._round = round_id
        self._global = global_vec
        self._members = tuple(members)
        last = int(getattr(fed.secure_sum, "input_stage", 0))
        self._vanishing = [c for c in self._members if c in stages and stages[c] <= last]
        self._done: set[int] = set()
        self.clipped = 0
        self.saturated = 0
        self.failed: dict[int, str] = {}
        self.refused: list[int] = []

    def deferred(self) -> dict[int, RingVector | DeferredInput]:
        """Member -> its deferred input (a :data:`secagg.DeferredInput`)."""
        return {c: functools.partial(self._asked, c) for c in self._members}

    def finish(self) -> None:
        """Members sent away before their input stage that no later member's turn covered."""
        self._catch_up(None)

    def _asked(self, c: int) -> RingVector:
        self._catch_up(c)
        vec = self._produce(c)
        if vec is None:
            raise InputWithdrawnError(f"client {c} has no input: {self.failed.get(c, 'refused')}", client=c)
        return vec

    def _catch_up(self, before: int | None) -> None:
        while self._vanishing and (before is None or self._vanishing[0] < before):
            self._produce(self._vanishing.pop(0))  # computed, then lost with its client

    def _produce(self, c: int) -> RingVector | None:
        if c in self._done:  # pragma: no cover - a session asks for its input once
            raise InputWithdrawnError(f"client {c}'s input was already produced", client=c)
        self._done.add(c)
        fed = self._fed
        try:
            vec, clip = fed._contribute(c, self._round, self._global, fed.source.get(c))
        except ClientBudgetExceededError:
            self.refused.append(c)  # its own limit, at charge time: it sends nothing
            return None
        except (ClientTrainingError, UpdateError) as exc:
            self.failed[c] = str(exc)  # the client's own code failed: a dropout of this round
            return None
        self.clipped += int(clip.clipped)
        self.saturated += clip.saturated
        return vec


def _failures(failed: Mapping[int, str]) -> str:
    if not failed:
        return ""
    items = sorted(failed.items())
    shown = "; ".join(f"client {c}: {why}" for c, why in items[:3])
    more = f" (and {len(items) - 3} more)" if len(items) > 3 else ""
    return f"; {len(items)} cohort member(s) failed to train: {shown}{more}"
