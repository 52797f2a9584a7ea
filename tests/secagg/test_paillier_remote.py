"""PaillierSecureSum built from public key material only: key holders elsewhere, reached over an exchange."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pytest

from dp.randomness import SeededRandomSource
from secagg import Message, RingSpec, run_round
from secagg.errors import ConfigurationError, LocalProtocolError
from secagg.paillier import (
    CorruptDecryptionShareError,
    KeyHolder,
    KeyHolderUnavailableError,
    PaillierPrivateKey,
    PaillierSecureSum,
    RemoteDecryptor,
    RemoteKeyHolder,
    ThresholdDecryptor,
    TooFewDecryptionSharesError,
    dump_public_key,
    generate_keypair,
    generate_threshold_key,
    public_key_sha256,
    wire,
)
from secagg.primitives.paillier_threshold import KeyShare

KEY_BITS = 512
SEED = SeededRandomSource("remote holder tests")
SK = generate_keypair(SEED.spawn("single"), key_bits=KEY_BITS, insecure_small_key_for_tests=True)
TPARAMS, TSHARES = generate_threshold_key(
    SEED.spawn("threshold"), threshold=2, parties=3, key_bits=KEY_BITS, insecure_small_key_for_tests=True
)
RING = RingSpec(16)
DIM = 40


def _inputs(n: int, seed: int = 0) -> dict[int, Any]:
    g = np.random.default_rng(seed)
    return {c: g.integers(0, RING.modulus, DIM).astype(RING.dtype) for c in range(1, n + 1)}


def _exact(inputs: dict[int, Any], survivors: Iterable[int]) -> Any:
    total = RING.zeros(DIM)
    for c in survivors:
        RING.add_into(total, inputs[c])
    return total


class _Holders:
    """The holders' side of the exchange: real KeyHolder / ThresholdDecryptor objects, some silent."""

    def __init__(self, holders: Iterable[KeyHolder | ThresholdDecryptor], count: int, silent: Iterable[int] = ()):
        self.by_id = {h.holder_id: h for h in holders}
        self.count = count
        self.silent = set(silent)
        self.asked: list[int] = []

    def __call__(self, msg: Message) -> list[Message]:
        self.asked.append(msg.recipient)
        if msg.recipient in self.silent:
            return []
        return self.by_id[msg.recipient].session(msg.round_id, self.count).receive(msg)


def _remote(exchange: Callable[[Message], list[Message]] | None, *, threshold: bool = False, **kw: Any) -> Any:
    pk = TPARAMS.public_key if threshold else SK.public_key
    return PaillierSecureSum.from_public_key(
        RING,
        DIM,
        public_key=pk,
        threshold_params=TPARAMS if threshold else None,
        exchange=exchange,
        max_clients=8,
        insecure_small_key_for_tests=True,
        **kw,
    )


def _holds_secret(obj: Any, seen: set[int] | None = None, depth: int = 0) -> bool:
    """Whether ``obj`` reaches a private key or a key share through its attributes.

    The exchange is the wire to the holders (the other side of the network): not followed.
    """
    seen = seen if seen is not None else set()
    if id(obj) in seen or depth > 6 or isinstance(obj, _Holders):
        return False
    seen.add(id(obj))
    if isinstance(obj, PaillierPrivateKey | KeyShare | KeyHolder | ThresholdDecryptor):
        return True
    if isinstance(obj, dict):
        return any(_holds_secret(v, seen, depth + 1) for v in obj.values())
    if isinstance(obj, list | tuple | set | frozenset):
        return any(_holds_secret(v, seen, depth + 1) for v in obj)
    attrs = getattr(obj, "__dict__", None)
    return attrs is not None and any(_holds_secret(v, seen, depth + 1) for v in attrs.values())


@pytest.mark.parametrize("verify", [False, True])
def test_single_remote_holder_gives_the_exact_sum_and_the_server_side_holds_no_secret(verify: bool) -> None:
    probe = _remote(None)
    holders = _Holders([KeyHolder(SK)], probe.plan.plaintexts)
    ss = _remote(holders, verify_decryption=verify)
    assert isinstance(ss.key_holder, RemoteKeyHolder)
    assert not _holds_secret(ss)
    inputs = _inputs(4)
    out = run_round(ss, inputs, round_id=3, rng_for=lambda c: SEED.spawn(f"c{c}"))
    assert np.array_equal(out.total, _exact(inputs, inputs))
    assert holders.asked == [-1]


def test_threshold_2_of_3_tolerates_one_silent_decryptor() -> None:
    probe = _remote(None, threshold=True)
    decs = [ThresholdDecryptor(s, rng=SEED.spawn(f"dec {s.index}")) for s in TSHARES]
    holders = _Holders(decs, probe.plan.plaintexts, silent={-1})
    ss = _remote(holders, threshold=True)
    assert [type(d) for d in ss.decryptors] == [RemoteDecryptor] * 3 and not _holds_secret(ss)
    inputs = _inputs(3, seed=1)
    server = ss.server([1, 2, 3], 5)
    for c, x in inputs.items():
        for m in ss.client(c, 5, SEED.spawn(f"c{c}")).start(x):
            server.receive(m)
    assert np.array_equal(server.result(), _exact(inputs, inputs))
    assert holders.asked == [-1, -2, -3]  # the silent first one is skipped, two answers suffice
    assert isinstance(server.rejected[-1], KeyHolderUnavailableError)


def test_threshold_with_more_than_m_minus_t_silent_aborts_with_a_typed_error() -> None:
    probe = _remote(None, threshold=True)
    decs = [ThresholdDecryptor(s, rng=SEED.spawn(f"dec {s.index}")) for s in TSHARES]
    ss = _remote(_Holders(decs, probe.plan.plaintexts, silent={-1, -3}), threshold=True)
    inputs = _inputs(2)
    out = run_round(ss, inputs, round_id=1, rng_for=lambda c: SEED.spawn(f"c{c}"))
    assert isinstance(out.error, TooFewDecryptionSharesError)
    assert (out.error.survivors, out.error.required) == (1, 2)


def test_silent_single_holder_aborts_the_round_and_names_it() -> None:
    probe = _remote(None)
    ss = _remote(_Holders([KeyHolder(SK)], probe.plan.plaintexts, silent={-1}))
    out = run_round(ss, _inputs(2), round_id=1, rng_for=lambda c: SEED.spawn(f"c{c}"))
    assert isinstance(out.error, KeyHolderUnavailableError)
    assert out.error.peer == -1 and "did not answer the decryption request of round 1" in str(out.error)


def test_lying_remote_holder_is_caught_with_verification() -> None:
    probe = _remote(None)
    honest = _Holders([KeyHolder(SK)], probe.plan.plaintexts)

    def lying(msg: Message) -> list[Message]:
        (reply,) = honest(msg)
        dec = wire.decode(
            reply.payload,
            wire.Kind.PLAINTEXTS,
            SK.public_key,
            round_id=reply.round_id,
            sender=reply.sender,
            count=probe.plan.plaintexts,
            peer=reply.sender,
            trailer=True,
        )
        values = [dec.values[0] + 1, *dec.values[1:]]
        payload = wire.encode(
            wire.Kind.PLAINTEXTS,
            SK.public_key,
            round_id=reply.round_id,
            sender=reply.sender,
            values=values,
            trailer=dec.trailer,
        )
        return [Message(reply.sender, reply.recipient, reply.round_id, reply.stage, payload)]

    out = run_round(
        _remote(lying, verify_decryption=True), _inputs(2), round_id=1, rng_for=lambda c: SEED.spawn(f"c{c}")
    )
    assert isinstance(out.error, CorruptDecryptionShareError)


def test_encrypt_only_backend_encrypts_but_runs_no_server() -> None:
    enc = _remote(None)
    full = PaillierSecureSum(
        RING, DIM, public_key=SK.public_key, key_holder=KeyHolder(SK), max_clients=8, insecure_small_key_for_tests=True
    )
    inputs = _inputs(2, seed=4)
    server = full.server([1, 2], 1)
    for c, x in inputs.items():  # ciphertexts made by the encrypt-only instance decrypt under the holder's key
        for m in enc.client(c, 1, SEED.spawn(f"c{c}")).start(x):
            server.receive(m)
    assert np.array_equal(server.result(), _exact(inputs, inputs))
    assert not _holds_secret(enc)
    with pytest.raises(LocalProtocolError, match="built to encrypt only"):
        enc.server([1, 2], 1)


def test_remote_construction_errors() -> None:
    def nothing(msg: Message) -> list[Message]:
        return []

    with pytest.raises(ConfigurationError, match="exactly one of key_holder"):
        PaillierSecureSum(
            RING,
            DIM,
            public_key=SK.public_key,
            key_holder=KeyHolder(SK),
            encrypt_only=True,
            insecure_small_key_for_tests=True,
        )
    with pytest.raises(ConfigurationError, match="exactly one of key_holder"):
        PaillierSecureSum(RING, DIM, public_key=SK.public_key, insecure_small_key_for_tests=True)
    with pytest.raises(ConfigurationError, match="threshold_params belong to another public key"):
        PaillierSecureSum.from_public_key(
            RING, DIM, public_key=SK.public_key, threshold_params=TPARAMS, insecure_small_key_for_tests=True
        )
    with pytest.raises(ConfigurationError, match="threshold_params belong to another public key"):
        PaillierSecureSum(
            RING,
            DIM,
            public_key=SK.public_key,
            threshold_params=TPARAMS,
            encrypt_only=True,
            insecure_small_key_for_tests=True,
        )
    with pytest.raises(ConfigurationError, match="below the 2048-bit minimum"):
        PaillierSecureSum.from_public_key(RING, DIM, public_key=SK.public_key, exchange=nothing)
    with pytest.raises(ConfigurationError, match="key-holder ids are negative"):
        RemoteKeyHolder(SK.public_key, nothing, holder_id=2)
    with pytest.raises(ConfigurationError, match=r"index must be in 1\.\.3"):
        RemoteDecryptor(TPARAMS, 4, nothing)


def test_remote_session_carries_one_request_to_its_own_holder() -> None:
    session = RemoteKeyHolder(SK.public_key, lambda m: [m]).session(2, 1)
    with pytest.raises(LocalProtocolError, match="sent through the session of holder -1 round 2"):
        session.receive(Message(0, -2, 2, "paillier-decrypt", b""))
    with pytest.raises(LocalProtocolError, match="sent through the session of holder -1 round 2"):
        session.receive(Message(0, -1, 3, "paillier-decrypt", b""))
    assert session.receive(Message(0, -1, 2, "paillier-decrypt", b"x"))[0].payload == b"x"
    with pytest.raises(LocalProtocolError, match="carries one request"):
        session.receive(Message(0, -1, 2, "paillier-decrypt", b"x"))


def test_public_key_fingerprint_covers_the_serialized_key() -> None:
    fp = public_key_sha256(SK.public_key)
    assert fp == hashlib.sha256(dump_public_key(SK.public_key)).hexdigest() and len(fp) == 64
    assert public_key_sha256(TPARAMS.public_key) != fp
