"""The buffered asynchronous loop (FedBuff-style) on a simulated clock.

Up to C clients are checked in at once. A client checks in, downloads the current
model version, trains with the user's ``train_fn`` for its simulated time, and reports.
Reports fill the open buffer; the K-th seals it, and after the exchanges of its
secure-sum session (simulated network time) the sum of the survivors' weighted updates
is divided by the data-independent K, goes through the server optimizer, is charged to
the ledger as one round, and publishes the next version. Sealed-buffer members keep
their place in the concurrency until their session ends.

What the server refuses: a report whose staleness (against the version its buffer will
be applied to) exceeds ``max_staleness`` (counted, never mixed in), a client at its
contribution cap (never checked in). What a client refuses is in
:mod:`fl_core.asynchronous.client`. A session that aborts (too few survivors) changes
nothing; its members whose input had left them lose that update (counted, never sent
again), the others report it to a later buffer.
"""

from __future__ import annotations

import heapq
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from dp.client_record import DEFAULT_CLIENT_DELTA, DEFAULT_CLIENT_MAX_EPSILON
from fl_core.asynchronous.client import AsyncClient, ClientRules
from fl_core.asynchronous.errors import ClientRefusal, DoubleApplyError
from fl_core.asynchronous.options import AsyncOptions, check_feasible
from fl_core.asynchronous.session import input_stage_name, post_seal_exchanges, run_buffer_session
from fl_core.errors import ConfigError, RoundFailedError
from fl_core.federation import Federation, RoundResult, RoundStart
from fl_core.sampling import Cohort, SamplingScheme
from secagg import RingVector

__all__ = ["AsyncFederation", "BufferResult", "AsyncStats"]

_ARRIVE, _SESSION = 0, 1


@dataclass(frozen=True)
class BufferResult:
    """One applied buffer."""

    buffer: int
    """The model version it produced (also its ledger round)."""
    session: int
    """The round id of its secure-sum session."""
    members: tuple[int, ...]
    survivors: tuple[int, ...]
    staleness: tuple[int, ...]
    """Staleness of each survivor's update, in the order of ``survivors``."""
    weights: tuple[float, ...]
    sim_time_s: float
    metrics: dict[str, float]
    epsilon: float | None
    round: RoundResult


@dataclass
class AsyncStats:
    """Counters of what happened to every report (nothing is dropped without being counted)."""

    check_ins: int = 0
    reports: int = 0
    sessions: int = 0
    applied_buffers: int = 0
    applied_updates: int = 0
    aborted_sessions: int = 0
    refused_by_server: Counter[str] = field(default_factory=Counter)
    refused_by_client: Counter[str] = field(default_factory=Counter)
    missed_and_reported_again: int = 0
    lost_after_input: int = 0
    """Inputs that left their client in a session that then aborted (never sent again)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "check_ins": self.check_ins,
            "reports": self.reports,
            "sessions": self.sessions,
            "applied_buffers": self.applied_buffers,
            "applied_updates": self.applied_updates,
            "aborted_sessions": self.aborted_sessions,
            "refused_by_server": dict(self.refused_by_server),
            "refused_by_client": dict(self.refused_by_client),
            "missed_and_reported_again": self.missed_and_reported_again,
            "lost_after_input": self.lost_after_input,
        }


def client_limit(options: AsyncOptions, mode: str) -> float:
    """Each client's own epsilon limit: the option, else the default client limit with
    distributed or local DP, else none (central mode: the server sees each update un-noised,
    so the server-side budget is what applies; no DP: nothing to limit)."""
    if options.client_max_epsilon is not None:
        return float(options.client_max_epsilon)
    return DEFAULT_CLIENT_MAX_EPSILON if mode in ("distributed", "local") else math.inf


class AsyncFederation:
    """Buffered asynchronous training around a built :class:`~fl_core.federation.Federation`.

    The federation supplies the user's model, ``train_fn`` and data, the DP policy, the
    encoder, the secure sum, the server optimizer, the evaluator and the ledger; this class
    replaces only the schedule (who trains when, which reports form a buffer).

    Args:
        fed: a federation whose sampler is ``Sampler.fixed_size(N, K)`` (so the encoding and
            the DP noise are sized for buffers of K) and whose secure sum's clients refuse a
            survivor list shorter than the session floor (``min_survivors``).
        options: the asynchronous options.
        rng: randomness of the schedule (speeds, selection, simulated dropouts); default
            a child of the federation's source.

    Raises:
        ConfigError: settings no run could satisfy (see :func:`~fl_core.asynchronous.options.check_feasible`).
    """

    def __init__(self, fed: Federation, options: AsyncOptions, *, rng: Any = None) -> None:
        self.fed = fed
        self.options = options
        self.population = len(fed.client_data)
        if fed.sampler.scheme is SamplingScheme.POISSON or fed.sampler.size != options.buffer:
            raise ConfigError(
                f"the federation must be sized for buffers of {options.buffer} (Sampler.fixed_size(N, "
                f"{options.buffer})): its encoding and DP noise are planned from the sampler",
                option="buffer",
            )
        self.floor = check_feasible(
            options, population=self.population, secure_sum=fed.secure_sum, min_survivors=fed.privacy.min_survivors
        )
        # The masking clients enforce the threshold themselves; they must also refuse survivor lists
        # below 2 (never one update alone) and below the DP minimum survivors.
        backend_floor = int(getattr(fed.secure_sum, "min_survivors", 1) or 1)
        needed = max(2, fed.privacy.min_survivors)
        if getattr(fed.secure_sum, "name", "plain") == "masking" and backend_floor < needed:
            raise ConfigError(
                f"the masking clients would help unmask a survivor list of {backend_floor}; build the secure sum "
                f"with min_survivors >= {needed} (fl_core.asynchronous.build_async_federation does)",
                option="min_survivors",
            )
        self.rng = rng if rng is not None else fed.rng.spawn("async")
        self._select = self.rng.spawn("select")
        self.base_s = options.speed.base_times(self.population, self.rng.spawn("speeds"))
        rules = ClientRules(
            staleness=options.staleness,
            max_staleness=options.max_staleness,
            max_contributions=options.max_contributions,
            dp_config=getattr(fed.privacy, "config", None),
            max_epsilon=client_limit(options, fed.privacy.mode),
            delta=fed.privacy.delta or DEFAULT_CLIENT_DELTA,
        )
        self.clients = {c: AsyncClient(c, rules) for c in range(1, self.population + 1)}
        self.exchanges = post_seal_exchanges(fed.secure_sum)
        self.input_stage = int(getattr(fed.secure_sum, "input_stage", 0)) if input_stage_name(fed.secure_sum) else 0
        self.now = 0.0
        self.stats = AsyncStats()
        self.history: list[BufferResult] = []
        self.stop_reason: str | None = None
        self._queue: list[tuple[float, int, int, Any]] = []
        self._seq = 0
        self._training: set[int] = set()
        self._open: list[int] = []
        self._sealed: int = 0  # sealed buffers whose session has not run yet
        self._waiting_sealed: set[int] = set()
        self._session = 0
        self._applied: set[tuple[int, int]] = set()
        self._retired: set[int] = set()
        self._aborts_in_a_row = 0
        self._started = False

    # -- public API ---------------------------------------------------------------

    @property
    def version(self) -> int:
        """The current model version (buffers applied, plus any resumed rounds)."""
        return self.fed.round

    def buffers(self, n: int) -> Iterator[BufferResult]:
        """Apply ``n`` more buffers, yielding each; stops early (``stop_reason``) if no buffer can fill."""
        if n < 0:
            raise ConfigError(f"rounds must be >= 0, got {n}", option="rounds")
        if not self._started:
            self._started = True
            self._fill()
        done = 0
        while done < n:
            if not self._queue:
                self.stop_reason = (
                    "no client can report any more (contribution caps reached or every client refused); "
                    f"{len(self._open)} report(s) left waiting in the open buffer"
                )
                return
            t, _, kind, payload = self._queue[0]
            if self.options.max_time_s is not None and t > self.options.max_time_s:
                self.stop_reason = f"simulated time limit {self.options.max_time_s:g} s reached"
                return
            heapq.heappop(self._queue)
            self.now = t
            if kind == _ARRIVE:
                self._arrive(int(payload))
            else:
                res = self._run_session(tuple(payload))
                if res is not None:
                    done += 1
                    self._aborts_in_a_row = 0
                    yield res
                else:
                    self._aborts_in_a_row += 1
                    if self._aborts_in_a_row >= self.options.max_consecutive_aborts:
                        self.stop_reason = (
                            f"{self._aborts_in_a_row} buffer sessions in a row released nothing "
                            "(too many members missed them); the model is as the last applied buffer left it"
                        )
                        return
            self._fill()

    def fit(self, n: int, *, on_buffer: Callable[[BufferResult], None] | None = None) -> list[BufferResult]:
        """Apply ``n`` buffers (fewer if the run stops early); returns their results."""
        out = []
        for res in self.buffers(n):
            out.append(res)
            if on_buffer is not None:
                on_buffer(res)
        return out

    def client_epsilons(self) -> dict[int, float]:
        """Each client's epsilon against the server from its own record (clients that were charged)."""
        return {
            c: cl.epsilon_vs_server() for c, cl in self.clients.items() if cl.record is not None and cl.record.charges
        }

    # -- the schedule ---------------------------------------------------------------

    def _push(self, t: float, kind: int, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (t, self._seq, kind, payload))

    def _busy(self, c: int) -> bool:
        return c in self._training or c in self._open or c in self._waiting_sealed

    def _active(self) -> int:
        return len(self._training) + len(self._open) + len(self._waiting_sealed)

    def _fill(self) -> None:
        cap = self.options.max_contributions
        while self._active() < self.options.concurrency:
            idle = [
                c
                for c, cl in self.clients.items()
                if not self._busy(c) and c not in self._retired and (cap is None or cl.contributions < cap)
            ]
            if not idle:
                return
            c = idle[self._select.randbelow(len(idle))]
            self._check_in(c)

    def _task_time(self, c: int) -> float:
        cl = self.clients[c]
        jitter = self.options.speed.jitter(self.rng.spawn(f"task/{c}/{cl.tasks}/{self.stats.check_ins}"))
        return float(self.base_s[c - 1] * jitter)

    def _check_in(self, c: int) -> None:
        fed = self.fed
        cl = self.clients[c]
        cl.train(fed, self.version, fed.codec.flatten(fed.model))
        self.stats.check_ins += 1
        self._training.add(c)
        self._push(self.now + self._task_time(c), _ARRIVE, c)

    def _arrive(self, c: int) -> None:
        self._training.discard(c)
        cl = self.clients[c]
        self.stats.reports += 1
        held = cl.held
        if held is None:  # pragma: no cover - every arrival follows a check-in or a miss with the update kept
            return
        # The version this report's buffer will be applied on, if every sealed session before it releases.
        base = self.version + self._sealed
        staleness = base - held.version
        bound = self.options.max_staleness
        if bound is not None and staleness > bound:
            self.stats.refused_by_server["stale"] += 1
            cl.release()
            return
        self._open.append(c)
        if len(self._open) == self.options.buffer:
            members, self._open = tuple(self._open), []
            self._waiting_sealed.update(members)
            self._sealed += 1
            self._push(self.now + self.exchanges * self.options.speed.stage_s, _SESSION, members)

    # -- one buffer session -----------------------------------------------------------

    def _run_session(self, members: tuple[int, ...]) -> BufferResult | None:
        t0 = time.perf_counter()
        fed = self.fed
        self._sealed -= 1
        self._waiting_sealed.difference_update(members)
        self._session += 1
        sid = self._session
        self.stats.sessions += 1
        base = self.version
        r = base + 1
        planned = fed.privacy.round_event(
            round=r, cohort=self._cohort(members), survivors=len(members), scale=fed.plan.scale, dim=fed.dim,
            planned=True,
        )
        acc = fed.accounting
        if acc.budget is not None and planned is not None:
            try:
                acc.budget.check(acc.events, planned)  # BudgetExceededError: nothing was sent
            except Exception:
                for c in members:
                    self.clients[c].release()
                raise
        global_vec = fed.codec.flatten(fed.model)
        inputs: dict[int, RingVector] = {}
        weights: dict[int, float] = {}
        staleness: dict[int, int] = {}
        clipped = saturated = 0
        for c in members:
            cl = self.clients[c]
            try:
                vec, clip, w = cl.prepare_input(fed, session=sid, base_version=base)
            except ClientRefusal as exc:
                self.stats.refused_by_client[exc.reason] += 1
                if exc.reason in ("budget", "cap"):
                    self._retired.add(c)  # its own limit is reached: never checked in again
                cl.release()
                continue
            inputs[c] = vec
            weights[c] = w
            staleness[c] = cl.staleness_for(base)
            clipped += int(clip.clipped)
            saturated += clip.saturated
        if len(inputs) < self.floor:
            # Too few to release: nobody's input has left; they wait for the next buffer with their update.
            self._requeue_front(tuple(inputs))
            return None
        drops = self._dropouts(tuple(inputs), sid)
        bo = run_buffer_session(
            # Every member's session is bound to this buffer's terms (its clip included): a member
            # told other terms would have masks that do not cancel (fl_core.binding).
            fed.bound_secure_sum(),
            inputs,
            session=sid,
            rng_for=lambda c: fed.rng.spawn(f"async/secagg/{c}/session/{sid}"),
            stages_completed=drops,
            transport=fed.transport,
            on_input=lambda c: self.clients[c].input_leaving(),
        )
        result: BufferResult | None = None
        if bo.released:
            survivors = tuple(sorted(bo.survivors))
            tokens = [(c, self._token(c)) for c in survivors]
            again = [tok for tok in tokens if tok in self._applied]
            if again:
                raise DoubleApplyError(f"buffer {r}: updates {again} were already applied")
            cohort = self._cohort(tuple(inputs))
            try:
                start = RoundStart(r, cohort, attempt=fed.attempts.get(r, 0))
                res = fed.finish_round(start, bo.outcome, global_vec, clipped=clipped, saturated=saturated, t0=t0)
            except RoundFailedError:
                res = None
            if res is not None:
                self._applied.update(tokens)
                self.stats.applied_buffers += 1
                self.stats.applied_updates += len(survivors)
                result = BufferResult(
                    buffer=r,
                    session=sid,
                    members=members,
                    survivors=survivors,
                    staleness=tuple(staleness[c] for c in survivors),
                    weights=tuple(weights[c] for c in survivors),
                    sim_time_s=self.now,
                    metrics=dict(res.metrics),
                    epsilon=res.epsilon,
                    round=res,
                )
                self.history.append(result)
        if result is None:
            self.stats.aborted_sessions += 1
        applied = set(result.survivors) if result is not None else set()
        for c in inputs:
            cl = self.clients[c]
            if c in applied:
                cl.release()
            elif c in bo.inputs_sent:
                self.stats.lost_after_input += 1
                cl.release()
            else:
                # Missed the session before its input left it: it reports the same update again later.
                self.stats.missed_and_reported_again += 1
                self._training.add(c)
                self._push(self.now + self._task_time(c), _ARRIVE, c)
        return result

    def _token(self, c: int) -> int:
        held = self.clients[c].held
        return held.task if held is not None else -1

    def _cohort(self, members: tuple[int, ...]) -> Cohort:
        # Arrivals are not a random sample the server cannot see: no amplification (rate 1).
        return Cohort(tuple(sorted(members)), SamplingScheme.FULL, 1.0, self.population)

    def _requeue_front(self, members: tuple[int, ...]) -> None:
        self._open = [*members, *self._open]
        if len(self._open) >= self.options.buffer:
            sealed, self._open = tuple(self._open[: self.options.buffer]), self._open[self.options.buffer :]
            self._waiting_sealed.update(sealed)
            self._sealed += 1
            self._push(self.now + self.exchanges * self.options.speed.stage_s, _SESSION, sealed)

    def _dropouts(self, members: tuple[int, ...], sid: int) -> dict[int, int]:
        """Simulated members that vanish before their input leaves them (client -> stages completed)."""
        p = self.options.dropout
        if p <= 0:
            return {}
        g = self.rng.spawn(f"dropout/{sid}")
        u = g.uniform(len(members))
        out = {}
        for c, x in zip(members, u, strict=True):
            if x < p:
                out[c] = g.randbelow(self.input_stage + 1)
        return out
