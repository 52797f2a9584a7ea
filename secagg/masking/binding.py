"""What a masking session is bound to: digests of the terms its own client checked and used.

A secure sum protects one client only if every input in the released sum was produced
under the same terms (for a DP deployment: the clip, the noise share's size, the
encoding); a server that tells different clients different terms could otherwise put
one client's update next to others' smaller noise shares. The masking protocol cannot
check such terms itself (they mean nothing to it), but it can make them a condition of
the sum: each client binds its session to a digest of the terms *it* used, computed by
the caller from the client's own values, and

* the **round digest** enters the HKDF context of every pairwise mask seed
  (``LABEL_PAIRWISE_MASK`` v2), so the masks of two clients with different terms do
  not cancel and their sum stays uniformly masked;
* the **setup digest** (the terms already fixed when the shares are dealt, possibly a
  round early, before the round's own terms are known) enters the associated data of
  every sealed share, so a holder with other setup terms cannot open them: its session
  stops with ``RemoteProtocolError`` before it sends its masked input.

The digests are public values (hashes of public terms), never keys; their meaning is
the caller's (:func:`digest_terms` only hashes a canonical encoding the caller defines).

Security:
    Assumption: HKDF-SHA256 is a PRF keyed by the X25519 secret (RFC 5869) and
    collision resistant as a function of its input (HMAC-SHA256 under a fixed key).
    Guarantee: two clients u, v whose round digests differ derive independent pairwise
    seeds, so in a released vector the pair leaves PRG(s_uv^(D_u)) - PRG(s_uv^(D_v)),
    pseudorandom to anyone who holds neither s_sk_u nor s_sk_v. See SECURITY.md,
    "Round terms are bound into the masks".
"""

from __future__ import annotations

from dataclasses import dataclass

from secagg.errors import ConfigurationError
from secagg.primitives import kdf

__all__ = ["TERMS_BYTES", "UNBOUND", "TermsBinding", "digest_terms"]

TERMS_BYTES = 32
"""Length of a terms digest."""

_KINDS = ("setup", "round")


def digest_terms(encoding: bytes, *, kind: str) -> bytes:
    """The 32-byte digest of ``encoding``, a canonical encoding of terms of ``kind`` ("setup" or "round").

    ``HKDF-SHA256(ikm=encoding, salt=empty, info=LABEL_TERMS || 0x00 || kind)``. The caller
    owns the encoding: it must be canonical (one byte string per set of terms) and versioned.

    Raises:
        ConfigurationError: an unknown ``kind``.
    """
    if kind not in _KINDS:
        raise ConfigurationError(f"terms kind must be one of {_KINDS}, got {kind!r}")
    return kdf.derive(bytes(encoding), kdf.LABEL_TERMS, kind.encode())


def _check(name: str, value: object) -> bytes:
    if not isinstance(value, (bytes, bytearray)) or len(value) != TERMS_BYTES:
        raise ConfigurationError(f"the {name} terms digest must be {TERMS_BYTES} bytes, got {value!r}")
    return bytes(value)


@dataclass(frozen=True, slots=True)
class TermsBinding:
    """The two digests a client's masking session is bound to.

    Attributes:
        setup: digest of the terms fixed when the shares are dealt; bound into the
            associated data of every sealed share (dealt and opened).
        round: digest of the round's full terms; bound into every pairwise mask seed and
            reported in the masked input's header (the server removes a dropped client's
            masks with each survivor's reported digest). ``None`` while the round's terms
            are not known yet (key setup run ahead): such a session deals and holds shares
            but refuses to produce a masked input.

    Raises:
        ConfigurationError: a digest that is not 32 bytes.
    """

    setup: bytes = bytes(TERMS_BYTES)
    round: bytes | None = bytes(TERMS_BYTES)

    def __post_init__(self) -> None:
        object.__setattr__(self, "setup", _check("setup", self.setup))
        if self.round is not None:
            object.__setattr__(self, "round", _check("round", self.round))


UNBOUND = TermsBinding()
"""All-zero digests: a secure sum used on its own, whose callers bind no terms (every party agrees on zeros)."""
