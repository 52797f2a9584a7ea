"""Paillier on Flower: key-holder SuperNodes, the key client nodes encrypt under, the server's route to the holders.

The Paillier key is made apart from the server (``privagg keygen paillier``) and lives on
key-holder SuperNodes: each is started with ``--node-config 'privagg-role="key-holder"
paillier-key-file="/path/key"'`` (a single private key, or one threshold key share per
decryptor of a t-of-m key). They are not clients: they answer the server's start-up
hello with their role and public key material, and then only decryption requests
(``query.privagg_decrypt``), at most one per round each.

The server learns the public key from the holders' hellos, builds the secure sum from it
(:meth:`secagg.paillier.PaillierSecureSum.from_public_key`; the server never holds or
loads a private key or a share) and sends the public key to the client nodes in each
round's opening message. The server session's decryption request goes to every holder in
one Flower exchange (:class:`HolderRouter`); a holder that has not answered by the stage
deadline is missing: with a single holder the round aborts, with a t-of-m key up to m-t
may be missing (the server session verifies each share's proof and combines t).

Security:
    Clients must know that they encrypt under the holders' key and not one the server
    made (with which it could decrypt each update): a node operator pins the key's
    SHA-256 (``paillier-public-key-sha256`` in the node config, printed by ``privagg
    keygen``) and the node refuses any other key before training (:class:`KeyPinError`; test:
    tests/integration/test_flower_paillier.py::test_a_pinned_node_refuses_another_key_before_training).
    A node without a pin trusts the server's choice of key. Each holder answers one
    decryption per round id per run (its served rounds persist in the SuperNode's
    ``context.state``; a restarted SuperNode forgets them); a holder trusts the server to
    ask for the aggregate of the round (the backend's honest-but-curious server,
    SECURITY.md). Key files must not be readable by group or others.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fl_core.errors import ConfigError, FLError
from fl_core.transport.flower.codec import ERROR_FIELD, FlowerCodecError, StagePacket, decode_packet, encode_packet
from fl_core.transport.flower.policy import NodePolicyError, check_key_pin_format
from secagg import SERVER, Message, SecAggError

__all__ = [
    "CLIENT_ROLE",
    "DECRYPT_STAGE",
    "HOLDER_ROLE",
    "HolderKey",
    "HolderRouter",
    "HolderState",
    "KeyHolderSetupError",
    "KeyHolders",
    "KeyPinError",
    "check_key_pin_format",
    "client_factory",
    "handle_decrypt",
    "handle_holder_hello",
    "key_holders_from",
    "load_holder_key",
    "node_role",
    "server_factory",
]

ROLE_KEY = "privagg-role"
CLIENT_ROLE = "client"
HOLDER_ROLE = "key-holder"
KEY_FILE_KEY = "paillier-key-file"
SMALL_KEY_KEY = "insecure-small-key-for-tests"

DECRYPT_STAGE = "decrypt"
PUBLIC_KEY_FIELD = "paillier_public_key"
PARAMS_FIELD = "paillier_threshold_params"
COUNT_FIELD = "count"

_HOLDER_STATE = "privagg.key_holder"


class KeyPinError(NodePolicyError):
    """The server sent a Paillier public key other than the one this node pins."""


class KeyHolderSetupError(FLError):
    """The key-holder SuperNodes do not form one usable key (different keys, duplicate shares, too few)."""


# -- node configuration -----------------------------------------------------------------


def node_role(node_config: Any) -> str:
    """``client`` (default) or ``key-holder``, from the node config's ``privagg-role``.

    Raises:
        ConfigError: another value.
    """
    role = (node_config or {}).get(ROLE_KEY, CLIENT_ROLE)
    if role not in (CLIENT_ROLE, HOLDER_ROLE):
        raise ConfigError(
            f"{ROLE_KEY} must be {CLIENT_ROLE!r} or {HOLDER_ROLE!r}, got {role!r}: fix this SuperNode's --node-config",
            option=ROLE_KEY,
        )
    return str(role)


def _small_keys_allowed(node_config: Any) -> bool:
    value = (node_config or {}).get(SMALL_KEY_KEY, False)
    if not isinstance(value, bool):
        raise ConfigError(f"{SMALL_KEY_KEY} must be true or false, got {value!r}", option=SMALL_KEY_KEY)
    return value


# -- client nodes: the key to encrypt under -----------------------------------------------


def client_public_key(fields: Mapping[str, Any], node_config: Any) -> Any:
    """The public key of a Paillier round's opening message, checked against this node's pin and floor.

    Raises:
        FlowerCodecError: the opening message carries no (valid) public key.
        KeyPinError: the node pins another key.
        NodePolicyError: the key is below 2048 bits and the node does not allow test keys.
    """
    from secagg.paillier import KeyFormatError, load_public_key, public_key_sha256
    from secagg.primitives.paillier_core import check_key_bits

    raw = fields.get(PUBLIC_KEY_FIELD)
    if not isinstance(raw, bytes):
        raise FlowerCodecError(f"the opening message of a paillier round lacks {PUBLIC_KEY_FIELD!r}")
    try:
        pk = load_public_key(raw)
    except KeyFormatError as exc:
        raise FlowerCodecError(f"the server sent an unusable Paillier public key: {exc}") from None
    pin = check_key_pin_format(node_config)
    got = public_key_sha256(pk)
    if pin is not None and got != pin:
        raise KeyPinError(
            f"the server sent Paillier public key sha256 {got}, this node pins {pin}: refused before training "
            "(a key the server made could decrypt this node's update; ask the key holders for their key's "
            "fingerprint)"
        )
    try:
        check_key_bits(pk.bits, insecure_small_key_for_tests=_small_keys_allowed(node_config))
    except SecAggError as exc:
        raise NodePolicyError(f"the server sent a {pk.bits}-bit Paillier key: {exc}") from None
    return pk


def client_factory(pk: Any, node_config: Any) -> Callable[[Any], Any]:
    """The ``paillier`` backend factory of a client node: encrypt-only, under ``pk``."""
    from secagg.paillier import EncryptionMode, PaillierSecureSum

    small = _small_keys_allowed(node_config)

    def build(req: Any) -> Any:
        return PaillierSecureSum.from_public_key(
            req.ring,
            req.dim,
            public_key=pk,
            max_clients=req.max_clients,
            mode=EncryptionMode.DJN if pk.supports(EncryptionMode.DJN) else EncryptionMode.STANDARD,
            min_survivors=int(req.options.get("min_survivors") or 1),
            insecure_small_key_for_tests=small,
        )

    return build


# -- key-holder nodes ------------------------------------------------------------------------


@dataclass(frozen=True)
class HolderKey:
    """What a key-holder node loaded from its key file: a private key or one threshold key share."""

    private_key: Any = None
    share: Any = None

    @property
    def holder_id(self) -> int:
        return -1 if self.share is None else -int(self.share.index)

    @property
    def public_key(self) -> Any:
        return self.private_key.public_key if self.share is None else self.share.params.public_key


def load_holder_key(node_config: Any) -> HolderKey:
    """Load the key file named by ``paillier-key-file``.

    Raises:
        ConfigError: no key file configured, unreadable, readable by group or others, or
            neither a Paillier private key nor a key share.
    """
    from secagg.paillier import KeyFormatError, load_key_share, load_private_key

    path = (node_config or {}).get(KEY_FILE_KEY)
    if not isinstance(path, str) or not path:
        raise ConfigError(
            f'a key-holder SuperNode needs {KEY_FILE_KEY}="/path/to/key" in its --node-config '
            "(a file written by `privagg keygen paillier`)",
            option=KEY_FILE_KEY,
        )
    p = Path(path)
    try:
        mode = p.stat().st_mode
        data = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the Paillier key file {p}: {exc}", option=KEY_FILE_KEY) from None
    if os.name == "posix" and mode & 0o077:
        raise ConfigError(
            f"the Paillier key file {p} is readable by group or others (mode {oct(mode & 0o777)}): chmod 600 {p}",
            option=KEY_FILE_KEY,
        )
    try:
        return HolderKey(private_key=load_private_key(data))
    except KeyFormatError:
        pass
    try:
        return HolderKey(share=load_key_share(data))
    except KeyFormatError as exc:
        raise ConfigError(
            f"{p} is neither a Paillier private key nor a threshold key share ({exc}); "
            "use a paillier-private.key or paillier-share-I.key written by `privagg keygen paillier`",
            option=KEY_FILE_KEY,
        ) from None


def handle_holder_hello(node_config: Any) -> StagePacket:
    """Answer the server's start-up hello: role, holder id and the public key material (never the secret)."""
    from secagg.paillier import dump_public_key, dump_threshold_params

    key = load_holder_key(node_config)
    params = b"" if key.share is None else dump_threshold_params(key.share.params)
    return StagePacket(
        0,
        "hello",
        (),
        {
            "role": HOLDER_ROLE,
            "holder": key.holder_id,
            PUBLIC_KEY_FIELD: dump_public_key(key.public_key),
            PARAMS_FIELD: params,
        },
    )


@dataclass(frozen=True, slots=True)
class HolderState:
    """What a key-holder node keeps between messages: the rounds it has decrypted (this run)."""

    served: tuple[int, ...] = ()

    def to_record(self) -> Any:
        from flwr.app import ConfigRecord

        return ConfigRecord({"served": list(self.served)})

    @classmethod
    def from_record(cls, rec: Any) -> HolderState:
        return cls(tuple(int(r) for r in rec["served"]))


def handle_decrypt(packet: StagePacket, node_config: Any, state: HolderState) -> tuple[StagePacket, HolderState]:
    """Answer one decryption request with the plaintexts (single key) or proven decryption shares.

    Raises:
        FlowerCodecError: the packet does not hold exactly one request of its round, or no count.
        secagg.RemoteProtocolError: a second request for a round this holder already decrypted,
            or a request the key-holder session refuses (wrong recipient, key, stage, round).
        ConfigError: the node's key file is missing or unusable.
    """
    from dp.randomness import SystemRandomSource
    from secagg.paillier import KeyHolder, ThresholdDecryptor

    if len(packet.messages) != 1:
        raise FlowerCodecError(f"a decryption request carries one message, got {len(packet.messages)}")
    (msg,) = packet.messages
    if msg.round_id != packet.round_id:
        raise FlowerCodecError(f"decryption request of round {msg.round_id} in a packet of round {packet.round_id}")
    count = packet.fields.get(COUNT_FIELD)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise FlowerCodecError(f"a decryption request needs a positive {COUNT_FIELD!r}, got {count!r}")
    key = load_holder_key(node_config)
    holder: KeyHolder | ThresholdDecryptor
    if key.share is None:
        holder = KeyHolder(key.private_key, holder_id=-1)
    else:
        holder = ThresholdDecryptor(key.share, rng=SystemRandomSource())
    holder.served_rounds = set(state.served)  # one decryption per round id, across this run's messages
    out = holder.session(msg.round_id, count).receive(msg)
    return StagePacket(packet.round_id, DECRYPT_STAGE, tuple(out)), HolderState((*state.served, msg.round_id))


def load_holder_state(context: Any) -> HolderState:
    rec = context.state.config_records.get(_HOLDER_STATE)
    return HolderState.from_record(rec) if rec is not None else HolderState()


def save_holder_state(context: Any, state: HolderState) -> None:
    context.state.config_records[_HOLDER_STATE] = state.to_record()


# -- server: learning the holders, and reaching them ---------------------------------------


@dataclass(frozen=True)
class KeyHolders:
    """The key the holders published and where they are: holder id -> Flower node id."""

    public_key: Any
    public_key_bytes: bytes
    params: Any
    nodes: Mapping[int, int]

    @property
    def needed(self) -> int:
        """Holders that must answer for a decryption (t, or 1 for a single key)."""
        return 1 if self.params is None else int(self.params.threshold)

    @property
    def expected(self) -> int:
        """Holders of the key (m, or 1 for a single key)."""
        return 1 if self.params is None else int(self.params.parties)


def key_holders_from(hellos: Mapping[int, Mapping[str, Any]]) -> KeyHolders | None:
    """The holders among the hello replies (node -> fields), checked to form one key; None if none.

    Raises:
        KeyHolderSetupError: unusable key material, holders of different keys, two holders
            of the same share, or a share index outside the key's 1..m.
    """
    from secagg.paillier import KeyFormatError, load_public_key, load_threshold_params

    holders = {n: f for n, f in hellos.items() if f.get("role") == HOLDER_ROLE}
    if not holders:
        return None
    material = {(bytes(f.get(PUBLIC_KEY_FIELD, b"")), bytes(f.get(PARAMS_FIELD, b""))) for f in holders.values()}
    if len(material) != 1:
        raise KeyHolderSetupError(
            f"the key-holder SuperNodes {sorted(holders)} publish {len(material)} different keys: give every holder "
            "a file of the same `privagg keygen paillier` run"
        )
    ((pk_bytes, params_bytes),) = material
    try:
        pk = load_public_key(pk_bytes)
        params = load_threshold_params(params_bytes) if params_bytes else None
    except KeyFormatError as exc:
        raise KeyHolderSetupError(f"the key holders published unusable key material: {exc}") from None
    if params is not None and params.public_key.n != pk.n:
        raise KeyHolderSetupError("the key holders' threshold parameters belong to another public key")
    m = 1 if params is None else params.parties
    nodes: dict[int, int] = {}
    for node, f in sorted(holders.items()):
        hid = f.get("holder")
        if isinstance(hid, bool) or not isinstance(hid, int) or not -m <= hid <= -1:
            raise KeyHolderSetupError(f"key-holder node {node} claims holder id {hid!r}; ids are -1..-{m}")
        if hid in nodes:
            what = "the private key" if params is None else f"key share {-hid}"
            raise KeyHolderSetupError(
                f"key-holder nodes {nodes[hid]} and {node} both hold {what}: start one holder per key file"
            )
        nodes[hid] = node
    return KeyHolders(pk, pk_bytes, params, nodes)


@dataclass
class HolderRouter:
    """Carries the server session's decryption requests to the key-holder nodes over Flower.

    The first request of a round goes to every holder in one exchange (a threshold round
    then waits for the slowest holder once, not once per missing holder); each holder's
    reply is handed to the server session when it asks that holder, which checks it. A
    holder that has not answered by ``timeout`` seconds, answered with an error, or
    answered for another holder is missing.

    Args:
        link: the grid link (``fl_core.transport.flower.server.GridLink``).
        holders: the key holders.
        timeout: seconds to wait for the holders' answers (the stage timeout).
    """

    link: Any
    holders: KeyHolders
    timeout: float
    count: int = 0
    stages: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    _key: tuple[int, bytes] | None = None
    _replies: dict[int, list[Message]] = field(default_factory=dict)

    def exchange(self, msg: Message) -> list[Message]:
        """The :data:`secagg.paillier.HolderExchange` of the server's Paillier backend."""
        key = (msg.round_id, bytes(msg.payload))
        if self._key != key:
            self._key = key
            self._replies = self._broadcast(msg)
        return self._replies.pop(msg.recipient, [])

    def _broadcast(self, msg: Message) -> dict[int, list[Message]]:
        r = msg.round_id
        by_node = {node: hid for hid, node in self.holders.nodes.items()}
        fields = {COUNT_FIELD: self.count}
        contents = {
            node: encode_packet(
                StagePacket(r, DECRYPT_STAGE, (Message(SERVER, hid, r, msg.stage, msg.payload),), fields)
            )
            for hid, node in sorted(self.holders.nodes.items())
        }
        t0 = time.perf_counter()
        replies = self.link.exchange(contents, group=f"{r}-decrypt", timeout=self.timeout)
        out: dict[int, list[Message]] = {}
        for node, rep in sorted(replies.items()):
            hid = by_node.get(node)
            if hid is None:
                continue
            try:
                packet = decode_packet(rep.content, round_id=r, stage=DECRYPT_STAGE)
            except FlowerCodecError as exc:
                self.rejected.append(f"key holder {hid}: {exc}")
                continue
            if ERROR_FIELD in packet.fields:
                self.rejected.append(f"key holder {hid}: refused: {packet.fields[ERROR_FIELD]}")
                continue
            if not packet.messages or any(m.sender != hid for m in packet.messages):
                self.rejected.append(f"key holder {hid}: reply carries no messages or another holder's (refused)")
                continue
            out[hid] = list(packet.messages)
        self.stages.append(
            {"stage": DECRYPT_STAGE, "answered": sorted(out), "wall_s": round(time.perf_counter() - t0, 3)}
        )
        return out

    def take(self) -> tuple[list[dict[str, Any]], list[str]]:
        """The decryption stages and rejections recorded since the last call (for the round's trace)."""
        stages, rejected = self.stages, self.rejected
        self.stages, self.rejected = [], []
        return stages, rejected


def server_factory(
    holders: KeyHolders, router: HolderRouter, *, verify_decryption: bool, insecure_small_key_for_tests: bool
) -> Callable[[Any], Any]:
    """The ``paillier`` backend factory of the server: public key only, requests routed to the holders.

    The factory raises ConfigError when the holders' key cannot serve the run (below 2048 bits
    without ``insecure-small-key-for-tests``, or too small to pack the sum).
    """
    from secagg.paillier import EncryptionMode, PaillierSecureSum

    def build(req: Any) -> Any:
        pk = holders.public_key
        try:
            ss = PaillierSecureSum.from_public_key(
                req.ring,
                req.dim,
                public_key=pk,
                threshold_params=holders.params,
                exchange=router.exchange,
                max_clients=req.max_clients,
                mode=EncryptionMode.DJN if pk.supports(EncryptionMode.DJN) else EncryptionMode.STANDARD,
                min_survivors=int(req.options.get("min_survivors") or 1),
                verify_decryption=verify_decryption,
                insecure_small_key_for_tests=insecure_small_key_for_tests,
            )
        except SecAggError as exc:
            raise ConfigError(
                f"cannot use the key holders' Paillier key: {exc} (a test key needs the run-config key "
                "insecure-small-key-for-tests=true)",
                option="secure_sum",
            ) from exc
        router.count = ss.plan.plaintexts
        return ss

    return build
