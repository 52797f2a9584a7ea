"""Packed Paillier secure sum: keys, packing, wire format, client/server/key-holder sessions."""

from __future__ import annotations

from secagg.paillier.backend import (
    HolderExchange,
    HolderLink,
    KeyHolder,
    PaillierSecureSum,
    RemoteDecryptor,
    RemoteKeyHolder,
    ThresholdDecryptor,
)
from secagg.paillier.errors import (
    CiphertextOutOfRangeError,
    CorruptDecryptionShareError,
    KeyFormatError,
    KeyHolderUnavailableError,
    KeyMismatchError,
    MalformedCiphertextError,
    TooFewDecryptionSharesError,
    WrongRoundError,
)
from secagg.paillier.keys import (
    dump_key_share,
    dump_private_key,
    dump_public_key,
    dump_threshold_params,
    load_key_share,
    load_private_key,
    load_public_key,
    load_threshold_params,
    public_key_sha256,
)
from secagg.paillier.packing import PackingPlan, plan_packing
from secagg.primitives.paillier_core import (
    EncryptionMode,
    PaillierPrivateKey,
    PaillierPublicKey,
    generate_keypair,
)
from secagg.primitives.paillier_phe import from_phe_private, from_phe_public, to_phe_private, to_phe_public
from secagg.primitives.paillier_threshold import KeyShare, ThresholdParams, generate_threshold_key

__all__ = [
    "CiphertextOutOfRangeError",
    "CorruptDecryptionShareError",
    "EncryptionMode",
    "HolderExchange",
    "HolderLink",
    "KeyFormatError",
    "KeyHolder",
    "KeyHolderUnavailableError",
    "KeyMismatchError",
    "KeyShare",
    "MalformedCiphertextError",
    "PackingPlan",
    "PaillierPrivateKey",
    "PaillierPublicKey",
    "PaillierSecureSum",
    "RemoteDecryptor",
    "RemoteKeyHolder",
    "ThresholdDecryptor",
    "ThresholdParams",
    "TooFewDecryptionSharesError",
    "WrongRoundError",
    "dump_key_share",
    "dump_private_key",
    "dump_public_key",
    "dump_threshold_params",
    "from_phe_private",
    "from_phe_public",
    "generate_keypair",
    "generate_threshold_key",
    "load_key_share",
    "load_private_key",
    "load_public_key",
    "load_threshold_params",
    "plan_packing",
    "public_key_sha256",
    "to_phe_private",
    "to_phe_public",
]
