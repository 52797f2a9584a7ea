"""Registers the packed-Paillier secure sum as the ``paillier`` backend (``--secure-sum paillier``).

On one machine the key is generated from the run's setup randomness. A deployment whose
key holders run elsewhere (e.g. on Flower) builds the backend from their published public
key instead: inside :func:`keys_from` the ``paillier`` builder delegates to the given
factory and generates nothing.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from fl_core.backends import BackendRequest, register_backend
from fl_core.errors import ConfigError
from secagg import SecAggError, SecureSum

__all__ = ["build_paillier", "keys_from", "parse_threshold"]

PaillierFactory = Callable[[BackendRequest], SecureSum]
"""Builds the ``paillier`` backend for a request from keys made elsewhere."""

_FACTORY: contextvars.ContextVar[PaillierFactory | None] = contextvars.ContextVar(
    "privagg_paillier_factory", default=None
)


@contextlib.contextmanager
def keys_from(factory: PaillierFactory) -> Iterator[None]:
    """Within the block, the ``paillier`` backend is ``factory(request)``: no key is generated.

    For parties whose Paillier key lives elsewhere: a Flower server builds the backend from
    the key holders' public key (``PaillierSecureSum.from_public_key``), a client node from
    the key the server sent. The request (ring, dim, cohort bound, min survivors) is the one
    the federation would have used.
    """
    token = _FACTORY.set(factory)
    try:
        yield
    finally:
        _FACTORY.reset(token)


_OPTIONS = (
    "key_bits",
    "threshold",
    "mode",
    "window",
    "verify_decryption",
    "insecure_small_key_for_tests",
    "min_survivors",
)


def parse_threshold(value: object) -> tuple[int, int] | None:
    """``"t/m"``, ``(t, m)`` or None -> ``(t, m)`` or None.

    Raises:
        ConfigError: not of the form t/m with 1 <= t <= m.
    """
    if value is None or value == "":
        return None
    try:
        if isinstance(value, str):
            t_str, m_str = value.split("/")
            t, m = int(t_str), int(m_str)
        else:
            t, m = (int(x) for x in value)  # type: ignore[attr-defined]
    except (ValueError, TypeError):
        raise ConfigError(f"threshold must look like t/m (e.g. 2/3), got {value!r}", option="threshold") from None
    if not 1 <= t <= m:
        raise ConfigError(f"threshold t/m needs 1 <= t <= m, got {t}/{m}", option="threshold")
    return t, m


def build_paillier(req: BackendRequest) -> SecureSum:
    """Generate a key (single key holder, or a dealt t-of-m threshold key) sized for ``req``.

    Options (``req.options``; options of other backends are ignored): ``key_bits``
    (default 2048), ``threshold`` (``"t/m"``), ``mode`` (``"djn"`` or ``"standard"``),
    ``window``, ``verify_decryption`` (the single key holder proves its plaintexts),
    ``insecure_small_key_for_tests``, ``min_survivors`` (fewer inputs abort the round; the DP
    layer sets it to the survivors its noise was sized for). Inside :func:`keys_from`, the
    factory builds it instead.
    """
    from secagg.paillier import EncryptionMode, PaillierSecureSum

    factory = _FACTORY.get()
    if factory is not None:
        return factory(req)
    opts: Mapping[str, Any] = {k: v for k, v in req.options.items() if k in _OPTIONS}
    try:
        mode = EncryptionMode(str(opts.get("mode", "djn")))
    except ValueError:
        raise ConfigError(f"mode must be djn or standard, got {opts.get('mode')!r}", option="mode") from None
    try:
        return PaillierSecureSum.generate(
            req.ring,
            req.dim,
            rng=req.rng,
            key_bits=int(opts.get("key_bits", 2048)),
            max_clients=req.max_clients,
            threshold=parse_threshold(opts.get("threshold")),
            mode=mode,
            window=int(opts.get("window", 10)),
            verify_decryption=bool(opts.get("verify_decryption", False)),
            insecure_small_key_for_tests=bool(opts.get("insecure_small_key_for_tests", False)),
            min_survivors=int(opts.get("min_survivors") or 1),
        )
    except SecAggError as exc:
        raise ConfigError(f"cannot build the paillier backend: {exc}", option="secure_sum") from exc


register_backend("paillier", build_paillier)
