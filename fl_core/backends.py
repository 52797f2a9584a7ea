"""Registry of secure-sum backends selectable by name (``--secure-sum``).

Each backend module registers a builder here; the round loop asks for a backend by
name and gets a :class:`secagg.SecureSum` sized for the run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fl_core.errors import ConfigError
from secagg import PlainSum, RandomSource, RingSpec, SecureSum

__all__ = ["BackendRequest", "BACKENDS", "build_secure_sum", "register_backend"]


@dataclass(frozen=True, slots=True)
class BackendRequest:
    """What a builder needs to size a backend for one run.

    Attributes:
        ring: the ring the encoded updates live in.
        dim: vector length.
        max_clients: the largest cohort the backend must serve.
        rng: randomness for setup (e.g. key generation); never the global RNG.
        options: backend-specific options (e.g. ``{"graph": "sparse"}``).
    """

    ring: RingSpec
    dim: int
    max_clients: int
    rng: RandomSource
    options: Mapping[str, Any] = field(default_factory=dict)


SecureSumBuilder = Callable[[BackendRequest], SecureSum]

BACKENDS: dict[str, SecureSumBuilder] = {}


def register_backend(name: str, builder: SecureSumBuilder) -> None:
    BACKENDS[name] = builder


def build_secure_sum(name: str, request: BackendRequest) -> SecureSum:
    _load_builtin()
    try:
        builder = BACKENDS[name]
    except KeyError:
        raise ConfigError(
            f"unknown secure sum {name!r}; choose one of {sorted(BACKENDS)}", option="secure_sum"
        ) from None
    return builder(request)


def _plain(req: BackendRequest) -> SecureSum:
    return PlainSum(req.ring, req.dim, min_survivors=int(req.options.get("min_survivors") or 1))


register_backend("plain", _plain)

# Backends that live in their own modules register on import.
_BUILTIN_MODULES: tuple[str, ...] = ("fl_core.backend_paillier", "fl_core.backend_masking")


def _load_builtin() -> None:
    import importlib

    for mod in _BUILTIN_MODULES:
        importlib.import_module(mod)


def available_backends() -> list[str]:
    _load_builtin()
    return sorted(BACKENDS)
