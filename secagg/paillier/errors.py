"""Typed errors of the Paillier backend: subclasses of the secagg root errors, blame explicit."""

from __future__ import annotations

from secagg.errors import ConfigurationError, RemoteProtocolError, TooFewSurvivorsError

__all__ = [
    "KeyMismatchError",
    "WrongRoundError",
    "MalformedCiphertextError",
    "CiphertextOutOfRangeError",
    "CorruptDecryptionShareError",
    "TooFewDecryptionSharesError",
    "KeyFormatError",
    "KeyHolderUnavailableError",
]


class KeyMismatchError(RemoteProtocolError):
    """A peer's message was made under a different Paillier public key (fingerprint mismatch)."""


class WrongRoundError(RemoteProtocolError):
    """A peer's message belongs to another round (replayed or delayed)."""


class MalformedCiphertextError(RemoteProtocolError):
    """A payload has the wrong version, kind, length or count for this configuration."""


class CiphertextOutOfRangeError(RemoteProtocolError):
    """A ciphertext is not in (0, n^2), or a decryption share is not a unit of Z_{n^2}."""


class CorruptDecryptionShareError(RemoteProtocolError):
    """A key holder's decryption (a threshold share, or a verified plaintext) failed its proof."""


class TooFewDecryptionSharesError(TooFewSurvivorsError):
    """Fewer valid decryption shares than the threshold: the round aborts with no output.

    ``survivors`` counts the valid shares, ``required`` is the threshold.
    """


class KeyFormatError(ConfigurationError):
    """Serialized key material is malformed, truncated, or of another kind or version."""


class KeyHolderUnavailableError(RemoteProtocolError):
    """A remote key holder did not answer a decryption request (it is missing for this round).

    With a single key holder the round aborts; with a t-of-m threshold key the holder is
    skipped and the round needs t answers from the others. ``peer`` is the holder's id.
    """
