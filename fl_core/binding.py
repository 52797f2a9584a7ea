"""The round terms a client checked and used, as digests its secure-sum session is bound to.

A client's protection in a round depends on terms the server announces or configures:
the DP mode, mechanism, noise multiplier, clip, the survivors and colluders the noise
share is sized for, the encoding (ring bits, scale, dimension, the public rotation).
Each client checks them against its own floor; this module makes them a condition of
the sum as well. Every client (in process, on a Flower node, in an asynchronous buffer)
computes, from *its own* values, never from a digest it was sent:

* the **setup digest**: every term fixed before the round's clip is known (the run's DP
  configuration, its resolved mechanism and planned survivors, the encoding plan);
  stages run a round early (Flower's key setup ahead) know only these;
* the **round digest**: the setup digest and the clip the client clips at and sizes its
  noise share for in this round.

and binds its masking session to them (:class:`secagg.masking.TermsBinding`): the setup
digest authenticates the sealed shares, the round digest keys every pairwise mask. Two
clients that used different terms therefore have masks that do not cancel, and a holder
with other setup terms refuses to open the shares at all; a server that announced
different terms to different clients of one round gets no usable sum over them.

The encoding is canonical JSON (sorted keys, no spaces, floats as ``float.hex``), with
a version (:data:`TERMS_VERSION`); the digest is :func:`secagg.masking.digest_terms`
(HKDF-SHA256 under its own label). Paillier and the plain sum have no pairwise keys and
are not bound (:func:`bind` returns them unchanged; see SECURITY.md).

Security:
    The digests are of values the client computed or checked itself, so a server cannot
    make two clients agree on a digest without making them agree on the terms (HKDF-SHA256
    is collision resistant as a function of its input). Honest parties must compute the
    same values from the same configuration; one that computes another (another privagg
    version, another calibration result) is refused, never summed (fail safe).
"""

from __future__ import annotations

import dataclasses
import enum
import json
from typing import Any

from secagg.masking import TermsBinding, digest_terms

__all__ = [
    "TERMS_VERSION",
    "bind",
    "round_digest",
    "setup_binding",
    "setup_digest",
    "setup_encoding",
    "terms_binding",
]

TERMS_VERSION = 1
"""Version of the canonical encoding (bump it whenever a field is added, removed or re-encoded)."""


def _canon(v: Any) -> Any:
    """A JSON value with one representation per value (floats exact, as ``float.hex``)."""
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, enum.Enum):
        return _canon(v.value)
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        return float(v).hex()
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).hex()
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: _canon(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if isinstance(v, (list, tuple)):
        return [_canon(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _canon(x) for k, x in v.items()}
    raise TypeError(f"no canonical encoding for {type(v).__name__}")


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def _dp_terms(privacy: Any) -> dict[str, Any]:
    config = getattr(privacy, "config", None)
    if config is None:  # NoPrivacy: only the clip the encoding needs
        return {"mode": str(privacy.mode), "clip_norm": _canon(float(privacy.clip_norm))}
    out = _canon(config)  # every field of the run's DPConfig, the initial clip among them
    out["resolved_mechanism"] = _canon(config.resolved_mechanism)
    out["survivors_planned"] = int(config.survivors_planned)
    return dict(out)


def setup_encoding(fed: Any) -> bytes:
    """The canonical encoding of the terms ``fed`` (a client's own federation) fixed before any round's clip.

    ``fed`` needs ``privacy`` (its policy: the DP configuration, or the clip without DP)
    and ``plan`` (its encoding plan).
    """
    plan = fed.plan
    rotation = plan.rotation
    return _dumps(
        {
            "v": TERMS_VERSION,
            "kind": "setup",
            "dp": _dp_terms(fed.privacy),
            "min_survivors": int(fed.privacy.min_survivors),
            "encoding": {
                "ring_bits": int(plan.ring.bits),
                "scale": _canon(float(plan.scale)),
                "dim": int(plan.dim),
                "max_clients": int(plan.max_clients),
                "rotation": None
                if rotation is None
                else {"dim": int(rotation.dim), "public_seed": bytes(rotation.public_seed).hex()},
            },
        }
    )


def setup_digest(fed: Any) -> bytes:
    """The setup digest of ``fed``'s terms (32 bytes)."""
    return digest_terms(setup_encoding(fed), kind="setup")


def round_digest(setup: bytes, clip: float) -> bytes:
    """The round digest: the setup digest and the round's clip (32 bytes)."""
    enc = _dumps({"v": TERMS_VERSION, "kind": "round", "setup": bytes(setup).hex(), "clip": _canon(float(clip))})
    return digest_terms(enc, kind="round")


def terms_binding(fed: Any, *, clip: float | None = None) -> TermsBinding:
    """The binding of a client of ``fed`` clipping at ``clip`` this round (default: ``fed.privacy.clip_norm``).

    Call it after the round's clip is set on the policy (a Flower node: after
    :func:`~fl_core.transport.flower.policy.check_round_terms`), so the digest is of the
    clip the client really clips at.
    """
    setup = setup_digest(fed)
    c = float(fed.privacy.clip_norm) if clip is None else float(clip)
    return TermsBinding(setup=setup, round=round_digest(setup, c))


def setup_binding(setup: bytes) -> TermsBinding:
    """A binding for stages run before the round's clip is known: shares only, no masked input."""
    return TermsBinding(setup=setup, round=None)


def bind(secure_sum: Any, binding: TermsBinding) -> Any:
    """``secure_sum`` with its sessions bound to ``binding`` when it supports it (masking); others unchanged.

    Paillier and the plain sum have no pairwise keys to bind (SECURITY.md states what
    that leaves to a node operator).
    """
    bound = getattr(secure_sum, "bound", None)
    if bound is None:
        return secure_sum
    return bound(binding)
