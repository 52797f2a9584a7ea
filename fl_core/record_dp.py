"""Record-level DP inside each client: Opacus DP-SGD in the user's train_fn, one accountant per client across rounds.

The user's loop stays theirs; the only change is one call, exactly where Opacus'
own ``make_private`` would go::

    record_dp = RecordDP(RecordDPConfig(noise_multiplier=1.1, max_grad_norm=1.0))

    @record_dp.wrap
    def train_fn(model, data):
        loader = DataLoader(data, batch_size=32)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        model, opt, loader = make_private(model, opt, loader)   # the one added line
        for x, y in loader:
            ...

:func:`make_private` finds the client being trained (set by the wrapper) and calls
``opacus.PrivacyEngine.make_private`` with that client's own accountant, so a
client's record-level epsilon composes over every round it takes part in.
``record_dp.epsilon(client)`` and :meth:`RecordDP.report` give it beside the
client-level epsilon of the run.

Which client: the round loop declares it (:func:`fl_core.client.current_client`
while a client's ``train_fn`` runs), or a caller with ``with record_dp.client(cid):``;
so accountants, :meth:`RecordDP.report` and :meth:`RecordDP.epsilon` are keyed by
client id. Outside both the wrapper falls back to ``client_key(data)`` (default:
the identity of the data object, stable within one process only).

Security:
    Assumption: Opacus' DP-SGD (Abadi et al. 2016; per-sample clipping, Gaussian
    noise, Poisson sampling of records) and its RDP or PRV accountant (Mironov
    2017; Gopi, Lee, Wutschitz 2021). Guarantee: each client's returned epsilon
    bounds the record-level privacy loss of all its local steps so far, at
    ``delta``, w.r.t. one record of that client's data (add/remove), for Poisson
    sampling; without Poisson sampling the reported epsilon is Opacus' (which
    assumes it) and is flagged ``poisson=False`` in the report. Known weakness:
    Opacus draws noise and samples batches with torch generators seeded here from
    the injected random source; torch's generators are not cryptographic and its
    float Gaussian is open to floating-point attacks (Opacus' ``secure_mode`` needs
    torchcsprng, which is not a dependency). Record-level DP composes with, and
    does not replace, the client-level noise of the secure sum.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import warnings
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import DataLoader

from dp.randomness import RandomSource, SystemRandomSource
from fl_core.errors import ConfigError

__all__ = ["GradSampleMode", "RecordDP", "RecordDPConfig", "RecordRNGWarning", "make_private"]


class RecordRNGWarning(UserWarning):
    """Opacus runs without its cryptographically secure RNG (emitted once per :class:`RecordDP`)."""


class GradSampleMode(str, Enum):
    """How Opacus computes per-sample gradient norms."""

    HOOKS = "hooks"  # per-sample gradients materialised (any supported layer)
    GHOST = "ghost"  # ghost clipping: norms without materialising per-sample gradients


@dataclass(frozen=True, slots=True)
class RecordDPConfig:
    """Record-level DP-SGD settings shared by every client.

    Attributes:
        noise_multiplier: sigma / max_grad_norm of DP-SGD's Gaussian noise.
        max_grad_norm: per-sample gradient clip.
        delta: the delta record-level epsilons are reported at.
        batch_size: expected batch size; None keeps the user's DataLoader batch size.
        poisson_sampling: sample records with Poisson sampling (needed for the accounting).
        grad_sample_mode: hooks, or ghost clipping (returns a wrapped criterion too).
        accountant: Opacus accountant: "rdp" or "prv".
    """

    noise_multiplier: float
    max_grad_norm: float
    delta: float = 1e-5
    batch_size: int | None = None
    poisson_sampling: bool = True
    grad_sample_mode: GradSampleMode = GradSampleMode.HOOKS
    accountant: Literal["rdp", "prv"] = "rdp"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0):
            raise ConfigError(f"noise_multiplier must be finite and > 0, got {self.noise_multiplier}",
                              option="record_noise_multiplier")
        if not (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
            raise ConfigError(f"max_grad_norm must be finite and > 0, got {self.max_grad_norm}",
                              option="max_grad_norm")
        if not 0.0 < self.delta < 1.0:
            raise ConfigError(f"delta must be in (0, 1), got {self.delta}", option="delta")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}", option="batch_size")
        if self.accountant not in ("rdp", "prv"):
            raise ConfigError(f"accountant must be rdp or prv, got {self.accountant!r}",
                              option="record_accountant")
        if not isinstance(self.grad_sample_mode, GradSampleMode):
            raise ConfigError(f"grad_sample_mode must be a GradSampleMode, got "
                              f"{self.grad_sample_mode!r}", option="grad_sample_mode")


_CURRENT: contextvars.ContextVar[tuple[RecordDP, Hashable] | None] = contextvars.ContextVar(
    "privagg_record_dp_current", default=None)


def make_private(model: nn.Module, optimizer: torch.optim.Optimizer, data_loader: DataLoader[Any],
                 *, criterion: nn.Module | None = None) -> tuple[Any, ...]:
    """Make the current client's training DP-SGD (call inside a :meth:`RecordDP.wrap`-ped train_fn).

    Returns:
        ``(model, optimizer, data_loader)``, or with ghost clipping
        ``(model, optimizer, criterion, data_loader)`` - use these in the loop.

    Raises:
        ConfigError: called outside a wrapped train_fn, or ghost clipping without a criterion.
    """
    current = _CURRENT.get()
    if current is None:
        raise ConfigError("make_private() must be called inside a train_fn wrapped with "
                          "RecordDP.wrap (it needs to know which client is training)",
                          option="record_dp")
    record_dp, key = current
    return record_dp._make_private(key, model, optimizer, data_loader, criterion=criterion)


class RecordDP:
    """Per-client Opacus DP-SGD with accountants kept across rounds."""

    def __init__(self, config: RecordDPConfig, *, rng: RandomSource | None = None,
                 client_key: Callable[[Any], Hashable] | None = None) -> None:
        self.config = config
        self._rng = rng if rng is not None else SystemRandomSource()
        self._client_key = client_key if client_key is not None else id
        self._accountants: dict[Hashable, Any] = {}
        self._calls: dict[Hashable, int] = {}
        self._open: list[Any] = []  # grad-sample modules of the current call, closed after it
        self._warned_rng = False
        self._declared: contextvars.ContextVar[Hashable | None] = contextvars.ContextVar(
            f"privagg_record_dp_client_{id(self)}", default=None)

    # -- wiring

    @contextlib.contextmanager
    def client(self, client_id: Hashable) -> Iterator[None]:
        """Declare which client the next wrapped train_fn call trains (round loop hook)."""
        token = self._declared.set(client_id)
        try:
            yield
        finally:
            self._declared.reset(token)

    def wrap(self, train_fn: Callable[[nn.Module, Any], Any]) -> Callable[[nn.Module, Any], Any]:
        """Return ``train_fn`` with the current client set for :func:`make_private`.

        Raises (from the wrapped call):
            ConfigError: the train_fn never called :func:`make_private` (it would have
                trained without record-level DP).
        """

        @functools.wraps(train_fn)
        def wrapped(model: nn.Module, data: Any) -> Any:
            from fl_core.client import current_client

            declared = self._declared.get()
            if declared is None:
                declared = current_client()  # set by the round loop while a client trains
            key = declared if declared is not None else self._client_key(data)
            before = self._calls.get(key, 0)
            token = _CURRENT.set((self, key))
            try:
                result = train_fn(model, data)
            finally:
                _CURRENT.reset(token)
                while self._open:  # remove Opacus' hooks: the trained model is plain again
                    self._open.pop().cleanup()
            if self._calls.get(key, 0) == before:
                raise ConfigError("the wrapped train_fn did not call make_private(model, optimizer, "
                                  "loader): it trained without record-level DP", option="record_dp")
            return result

        return wrapped

    def _torch_generator(self, label: str) -> torch.Generator:
        seed = int.from_bytes(self._rng.spawn(label).random_bytes(8), "little") >> 1
        return torch.Generator().manual_seed(seed)

    def _make_private(self, key: Hashable, model: nn.Module, optimizer: torch.optim.Optimizer,
                      data_loader: DataLoader[Any], *, criterion: nn.Module | None) -> tuple[Any, ...]:
        from opacus import PrivacyEngine
        from opacus.accountants import create_accountant

        cfg = self.config
        ghost = cfg.grad_sample_mode is GradSampleMode.GHOST
        if ghost and criterion is None:
            raise ConfigError("ghost clipping needs the loss: make_private(..., criterion=loss_fn)",
                              option="grad_sample_mode")
        n_call = self._calls.get(key, 0)
        label = f"record-dp/{key!r}/{n_call}"
        loader = DataLoader(
            data_loader.dataset,
            batch_size=cfg.batch_size if cfg.batch_size is not None else data_loader.batch_size,
            collate_fn=data_loader.collate_fn,
            num_workers=data_loader.num_workers,
            generator=self._torch_generator(label + "/sampling"),
        )
        with warnings.catch_warnings():
            # Opacus warns "Secure RNG turned off" on every engine, i.e. once per client per
            # round; privagg says it once per RecordDP (once per run) instead, see _warn_rng.
            warnings.filterwarnings("ignore", message="Secure RNG turned off")
            engine = PrivacyEngine(accountant=cfg.accountant)
        self._warn_rng()
        if key not in self._accountants:
            self._accountants[key] = create_accountant(mechanism=cfg.accountant)
        engine.accountant = self._accountants[key]  # history persists across rounds
        kwargs: dict[str, Any] = {}
        if ghost:
            kwargs["criterion"] = criterion
        out = engine.make_private(
            module=model, optimizer=optimizer, data_loader=loader,
            noise_multiplier=cfg.noise_multiplier, max_grad_norm=cfg.max_grad_norm,
            poisson_sampling=cfg.poisson_sampling, grad_sample_mode=cfg.grad_sample_mode.value,
            noise_generator=self._torch_generator(label + "/noise"), **kwargs,
        )
        self._calls[key] = n_call + 1
        if hasattr(out[0], "cleanup"):
            self._open.append(out[0])
        return tuple(out)

    def _warn_rng(self) -> None:
        if self._warned_rng:
            return
        self._warned_rng = True
        warnings.warn(
            "Secure RNG turned off for record-level DP (shown once per run): Opacus' noise and batch sampling "
            "come from torch generators seeded from privagg's random source, as torchcsprng is not a dependency "
            "(see the Security note of fl_core.record_dp).",
            RecordRNGWarning,
            stacklevel=3,
        )

    # -- reporting

    def clients(self) -> list[Hashable]:
        """The clients that have trained with record-level DP so far (their keys)."""
        return list(self._accountants)

    def steps(self, client: Hashable) -> int:
        """DP-SGD steps charged to ``client`` so far."""
        acc = self._accountants.get(client)
        if acc is None:
            return 0
        return int(sum(n for _, _, n in acc.history))

    def epsilon(self, client: Hashable) -> float:
        """Record-level epsilon of ``client`` at the configured delta (0 before it trained)."""
        acc = self._accountants.get(client)
        if acc is None or not acc.history:
            return 0.0
        return float(acc.get_epsilon(delta=self.config.delta))

    def epsilons(self) -> dict[Hashable, float]:
        """Record-level epsilon per client (clients with the same accountant history share one computation)."""
        memo: dict[tuple[tuple[Any, ...], ...], float] = {}
        out: dict[Hashable, float] = {}
        for k, acc in self._accountants.items():
            history = tuple(tuple(h) for h in acc.history)
            if history not in memo:  # epsilon is a function of the history alone
                memo[history] = self.epsilon(k)
            out[k] = memo[history]
        return out

    def report(self) -> dict[str, Any]:
        """Record-level epsilon per client and the maximum, to print beside the client-level epsilon."""
        eps = self.epsilons()
        return {
            "record_level": {
                "epsilon_max": max(eps.values(), default=0.0),
                "delta": self.config.delta,
                "accountant": f"opacus-{self.config.accountant}",
                "poisson": self.config.poisson_sampling,
                "noise_multiplier": self.config.noise_multiplier,
                "max_grad_norm": self.config.max_grad_norm,
                "per_client": {str(k): {"epsilon": v, "steps": self.steps(k)} for k, v in eps.items()},
            }
        }

    def state_dict(self) -> dict[str, Any]:
        """The accountants' histories (noise multiplier, sample rate, steps) per client key."""
        return {str(k): [list(h) for h in acc.history] for k, acc in self._accountants.items()}

    def client_state(self, client: Hashable) -> tuple[int, tuple[tuple[float, float, int], ...]]:
        """``client``'s training count and accountant history, to carry it to another process.

        Unlike :meth:`state_dict`, this keeps the client's own key and the count of its
        trainings, which seeds the labels of its Opacus generators, so a process that
        :meth:`restore_client` s it continues exactly as one long-lived process would.
        """
        acc = self._accountants.get(client)
        history = tuple((float(z), float(q), int(n)) for z, q, n in (acc.history if acc is not None else ()))
        return int(self._calls.get(client, 0)), history

    def restore_client(self, client: Hashable, calls: int, history: Any) -> None:
        """Put back what :meth:`client_state` returned (replaces what this object holds for ``client``).

        Raises:
            ConfigError: ``calls`` is negative.
        """
        from opacus.accountants import create_accountant

        if calls < 0:
            raise ConfigError(f"a client's training count cannot be negative, got {calls}", option="record_dp")
        acc = create_accountant(mechanism=self.config.accountant)
        acc.history = [tuple(h) for h in history]
        self._accountants[client] = acc
        self._calls[client] = int(calls)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore histories saved by :meth:`state_dict` (keys become strings)."""
        from opacus.accountants import create_accountant

        for k, hist in state.items():
            acc = create_accountant(mechanism=self.config.accountant)
            acc.history = [tuple(h) for h in hist]
            self._accountants[k] = acc
