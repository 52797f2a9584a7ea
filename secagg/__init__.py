"""secagg: secure summation of integer vectors in Z_{2^b}. Knows nothing of DP or torch."""

from __future__ import annotations

from secagg.encoding import EncodingPlan, FixedPointEncoder, plan_encoding
from secagg.errors import (
    ConfigurationError,
    EncodingOverflowError,
    InputWithdrawnError,
    LocalProtocolError,
    RemoteProtocolError,
    SecAggError,
    TooFewSurvivorsError,
)

# The two secure backends.
from secagg.masking import MaskingSecureSum
from secagg.paillier import KeyHolder, PaillierSecureSum, ThresholdDecryptor
from secagg.plain import PlainSum
from secagg.protocol import (
    SERVER,
    ClientId,
    ClientSession,
    DeferredInput,
    Message,
    RandomSource,
    SecureSum,
    ServerSession,
)
from secagg.ring import RingSpec, RingVector
from secagg.simulation import RoundOutcome, run_round

__all__ = [
    "SERVER",
    "ClientId",
    "ClientSession",
    "ConfigurationError",
    "DeferredInput",
    "EncodingOverflowError",
    "EncodingPlan",
    "FixedPointEncoder",
    "InputWithdrawnError",
    "KeyHolder",
    "LocalProtocolError",
    "MaskingSecureSum",
    "Message",
    "PaillierSecureSum",
    "PlainSum",
    "RandomSource",
    "RemoteProtocolError",
    "RingSpec",
    "RingVector",
    "RoundOutcome",
    "SecAggError",
    "SecureSum",
    "ServerSession",
    "ThresholdDecryptor",
    "TooFewSurvivorsError",
    "plan_encoding",
    "run_round",
]
