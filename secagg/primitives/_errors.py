"""Typed failures of the cryptographic primitives; the protocol layer turns them into blame."""

from __future__ import annotations

from secagg.errors import SecAggError

__all__ = ["PrimitiveError", "AuthenticationError", "InvalidKeyError", "ShareError"]


class PrimitiveError(SecAggError, ValueError):
    """A primitive refused its input; the protocol layer decides whom to blame."""


class AuthenticationError(PrimitiveError):
    """A ciphertext tag or a signature did not verify: the data was forged or altered."""


class InvalidKeyError(PrimitiveError):
    """A key has the wrong length or is a degenerate (e.g. small-order) point."""


class ShareError(PrimitiveError):
    """Shamir shares are malformed, duplicated, or too few for the threshold."""
