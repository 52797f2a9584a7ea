"""The packed-Paillier secure sum: client, server and key-holder sessions behind ``SecureSum``.

One round: each client packs its ring vector (:mod:`secagg.paillier.packing`), encrypts
the plaintexts under the public key and sends them to the server; the server multiplies
the ciphertexts of the clients it heard from (dropouts need no recovery: a missing
client is simply not in the product) and asks the key holder(s) to decrypt the
product over the same :class:`~secagg.protocol.Message` envelope; it unpacks the
plaintexts into the ring sum.

Key holders are not cohort clients. The server session drives them as sans-I/O
sessions through ``holder_link`` (a callable that carries one message and returns the
messages to deliver: the in-process default delivers it unchanged; tests use it to
tamper). In a deployment the holders run elsewhere: :meth:`PaillierSecureSum.from_public_key`
builds the backend from the public key (and the public threshold parameters) only, with
:class:`RemoteKeyHolder` / :class:`RemoteDecryptor` stand-ins whose sessions carry each
decryption request over a :data:`HolderExchange` to the real holder and return its reply;
the party running the server session then never holds the private key or a key share.

Security:
    Assumption: DCR (and the DJN short-exponent assumption in the default mode, see
    :mod:`secagg.primitives.paillier_core`); an honest-but-curious server that asks
    for exactly one decryption per round, of the product of the round's inputs; an
    honest dealer for threshold keys. Guarantee: the server learns only the sum of the
    survivors' vectors; with a single key holder, that holder could decrypt any
    individual ciphertext it is shown (it is trusted not to collude with the server);
    with a t-of-m threshold key, fewer than t colluding decryptors learn nothing, and
    a decryption share that fails its proof is discarded and blamed, so the result is
    either the correct sum or a typed error. Each key-holder session answers one
    decryption request per round.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from enum import Enum

import gmpy2
from gmpy2 import mpz

from secagg.errors import (
    ConfigurationError,
    EncodingOverflowError,
    LocalProtocolError,
    RemoteProtocolError,
    SecAggError,
    TooFewSurvivorsError,
)
from secagg.paillier import wire
from secagg.paillier.errors import (
    CorruptDecryptionShareError,
    KeyHolderUnavailableError,
    MalformedCiphertextError,
    TooFewDecryptionSharesError,
    WrongRoundError,
)
from secagg.paillier.packing import PackingPlan, plan_packing
from secagg.primitives.paillier_core import (
    DEFAULT_KEY_BITS,
    DEFAULT_WINDOW,
    EncryptionMode,
    Encryptor,
    PaillierError,
    PaillierPrivateKey,
    PaillierPublicKey,
    check_key_bits,
    generate_keypair,
)
from secagg.primitives.paillier_threshold import (
    InvalidDecryptionShareError,
    KeyShare,
    ShareProof,
    ThresholdParams,
    combine,
    decryption_shares,
    generate_threshold_key,
    prove,
    verify,
)
from secagg.protocol import SERVER, ClientId, DeferredInput, Message, RandomSource, resolve_input
from secagg.ring import RingSpec, RingVector

__all__ = [
    "PaillierSecureSum",
    "KeyHolder",
    "ThresholdDecryptor",
    "RemoteKeyHolder",
    "RemoteDecryptor",
    "HolderExchange",
    "HolderLink",
    "STAGE_INPUT",
    "STAGE_DECRYPT",
    "STAGE_PLAINTEXT",
    "STAGE_SHARE",
]

STAGE_INPUT = "paillier-input"
STAGE_DECRYPT = "paillier-decrypt"
STAGE_PLAINTEXT = "paillier-plaintext"
STAGE_SHARE = "paillier-share"

HolderLink = Callable[[Message], list[Message]]
"""Carries one server<->key-holder message; returns the messages to deliver."""

HolderExchange = Callable[[Message], list[Message]]
"""Carries one decryption request to a remote key holder; returns its replies ([] when it did not answer)."""

_PROOF_CONTEXT = b"privagg paillier threshold share v1|"
_NO_PROOF, _WANT_PROOF = b"\x00", b"\x01"


def _deliver(msg: Message) -> list[Message]:
    return [msg]


def _proof_context(pk: PaillierPublicKey, round_id: int) -> bytes:
    return _PROOF_CONTEXT + pk.fingerprint + round_id.to_bytes(8, "big", signed=True)


def _check_request(
    msg: Message, pk: PaillierPublicKey, round_id: int, holder_id: int, count: int
) -> tuple[list[mpz], bool]:
    """Validate a decryption request; returns the ciphertexts and whether a proof is wanted."""
    if msg.sender != SERVER:
        raise RemoteProtocolError("key holders accept decryption requests from the server only", peer=msg.sender)
    if msg.recipient != holder_id:
        raise RemoteProtocolError(f"request addressed to {msg.recipient}, not to {holder_id}", peer=msg.sender)
    if msg.stage != STAGE_DECRYPT:
        raise MalformedCiphertextError(f"unexpected stage {msg.stage!r}", peer=msg.sender)
    if msg.round_id != round_id:
        raise WrongRoundError(f"request for round {msg.round_id} in round {round_id}", peer=msg.sender)
    req = wire.decode(
        msg.payload,
        wire.Kind.DECRYPT_REQUEST,
        pk,
        round_id=round_id,
        sender=SERVER,
        count=count,
        peer=SERVER,
        trailer=True,
    )
    if req.trailer not in (_NO_PROOF, _WANT_PROOF):
        raise MalformedCiphertextError("decryption request has a bad proof flag", peer=SERVER)
    return req.values, req.trailer == _WANT_PROOF


class KeyHolder:
    """The single key holder: holds the private key and decrypts one aggregate per round.

    Security: trusted not to collude with the server (it could decrypt any ciphertext
    the server shows it). Use :class:`ThresholdDecryptor` to remove that trust. It
    answers at most one decryption request per round id (``served_rounds``), across
    all its sessions.
    """

    def __init__(self, private_key: PaillierPrivateKey, *, holder_id: int = -1) -> None:
        if holder_id >= 0:
            raise ConfigurationError(f"key-holder ids are negative (clients are >= 1, the server 0), got {holder_id}")
        self.private_key = private_key
        self.holder_id = holder_id
        self.served_rounds: set[int] = set()

    @property
    def public_key(self) -> PaillierPublicKey:
        return self.private_key.public_key

    def session(self, round_id: int, count: int) -> KeyHolderSession:
        return KeyHolderSession(self, round_id, count)


class KeyHolderSession:
    """Sans-I/O: one decryption request in, one plaintext message out."""

    def __init__(self, holder: KeyHolder, round_id: int, count: int) -> None:
        self._holder = holder
        self._round = round_id
        self._count = count
        self._answered = False

    def receive(self, msg: Message) -> list[Message]:
        """Decrypt the aggregate in a request.

        Raises:
            RemoteProtocolError: (or a subclass) a second request this round, or a bad request.
        """
        h = self._holder
        if self._answered or self._round in h.served_rounds:
            raise RemoteProtocolError("a second decryption request in one round is refused", peer=msg.sender)
        cts, want_proof = _check_request(msg, h.public_key, self._round, h.holder_id, self._count)
        self._answered = True
        h.served_rounds.add(self._round)
        trailer = b""
        if want_proof:
            pairs = [h.private_key.decrypt_with_proof(c) for c in cts]
            pts = [m for m, _ in pairs]
            w = h.public_key.plaintext_bytes
            trailer = b"".join(r.to_bytes(w, "big") for _, r in pairs)
        else:
            pts = [h.private_key.decrypt(c) for c in cts]
        payload = wire.encode(
            wire.Kind.PLAINTEXTS, h.public_key, round_id=self._round, sender=h.holder_id, values=pts, trailer=trailer
        )
        return [Message(h.holder_id, SERVER, self._round, STAGE_PLAINTEXT, payload)]


class ThresholdDecryptor:
    """One of m threshold decryptors; its id is ``-index``.

    Security: holds one Shamir share of the decryption exponent; proves every share
    it sends (Shoup 2000, the share-correctness proof) with randomness from ``rng``;
    answers at most one request per round id (``served_rounds``).
    """

    def __init__(self, share: KeyShare, *, rng: RandomSource) -> None:
        self.share = share
        self.rng = rng
        self.served_rounds: set[int] = set()

    @property
    def index(self) -> int:
        """The share index (1..m)."""
        return int(self.share.index)

    @property
    def holder_id(self) -> int:
        return -self.share.index

    @property
    def public_key(self) -> PaillierPublicKey:
        return self.share.params.public_key

    def session(self, round_id: int, count: int) -> ThresholdDecryptorSession:
        return ThresholdDecryptorSession(self, round_id, count)


def _encode_proof(proof: ShareProof) -> bytes:
    z = int(proof.z).to_bytes(max(1, (int(proof.z).bit_length() + 7) // 8), "big")
    return int(proof.e).to_bytes(32, "big") + len(z).to_bytes(4, "big") + z


def _decode_proof(trailer: bytes, peer: int) -> ShareProof:
    if len(trailer) < 36:
        raise MalformedCiphertextError("decryption share proof is truncated", peer=peer)
    zlen = int.from_bytes(trailer[32:36], "big")
    if len(trailer) != 36 + zlen or zlen == 0:
        raise MalformedCiphertextError("decryption share proof has the wrong length", peer=peer)
    return ShareProof(mpz.from_bytes(trailer[:32], "big"), mpz.from_bytes(trailer[36:], "big"))


class ThresholdDecryptorSession:
    """Sans-I/O: one decryption request in, one message of proven decryption shares out."""

    def __init__(self, dec: ThresholdDecryptor, round_id: int, count: int) -> None:
        self._dec = dec
        self._round = round_id
        self._count = count
        self._answered = False

    def receive(self, msg: Message) -> list[Message]:
        d = self._dec
        if self._answered or self._round in d.served_rounds:
            raise RemoteProtocolError("a second decryption request in one round is refused", peer=msg.sender)
        cts, _ = _check_request(msg, d.public_key, self._round, d.holder_id, self._count)  # shares are always proven
        self._answered = True
        d.served_rounds.add(self._round)
        shares = decryption_shares(d.share, cts)
        proof = prove(d.share, cts, shares, d.rng, context=_proof_context(d.public_key, self._round))
        payload = wire.encode(
            wire.Kind.DECRYPTION_SHARES,
            d.public_key,
            round_id=self._round,
            sender=d.holder_id,
            values=shares,
            trailer=_encode_proof(proof),
        )
        return [Message(d.holder_id, SERVER, self._round, STAGE_SHARE, payload)]


class RemoteKeyHolder:
    """Stands for the single key holder running elsewhere: holds its public key, never its private key.

    Its sessions carry the server's decryption request over ``exchange`` and return the
    holder's reply unchecked; the server session checks it exactly as a local holder's
    (and proves it with ``verify_decryption``).

    Raises:
        ConfigurationError: ``holder_id`` is not negative.
    """

    def __init__(self, public_key: PaillierPublicKey, exchange: HolderExchange, *, holder_id: int = -1) -> None:
        if holder_id >= 0:
            raise ConfigurationError(f"key-holder ids are negative (clients are >= 1, the server 0), got {holder_id}")
        self._public_key = public_key
        self.exchange = exchange
        self.holder_id = holder_id

    @property
    def public_key(self) -> PaillierPublicKey:
        return self._public_key

    def session(self, round_id: int, count: int) -> RemoteHolderSession:
        return RemoteHolderSession(self.exchange, self.holder_id, round_id)


class RemoteDecryptor:
    """Stands for threshold decryptor ``index`` running elsewhere: the public parameters only, no share.

    Raises:
        ConfigurationError: ``index`` is not in 1..m of ``params``.
    """

    def __init__(self, params: ThresholdParams, index: int, exchange: HolderExchange) -> None:
        if not 1 <= index <= params.parties:
            raise ConfigurationError(f"decryptor index must be in 1..{params.parties}, got {index}")
        self.params = params
        self._index = index
        self.exchange = exchange

    @property
    def index(self) -> int:
        return self._index

    @property
    def holder_id(self) -> int:
        return -self._index

    @property
    def public_key(self) -> PaillierPublicKey:
        return self.params.public_key

    def session(self, round_id: int, count: int) -> RemoteHolderSession:
        return RemoteHolderSession(self.exchange, self.holder_id, round_id)


class RemoteHolderSession:
    """Sans-I/O proxy: the request goes out over the exchange, the remote holder's replies come back."""

    def __init__(self, exchange: HolderExchange, holder_id: int, round_id: int) -> None:
        self._exchange = exchange
        self._holder = holder_id
        self._round = round_id
        self._sent = False

    def receive(self, msg: Message) -> list[Message]:
        """Send the request; return the holder's replies.

        Raises:
            LocalProtocolError: a second request through this session, or a request not
                addressed to this holder.
            KeyHolderUnavailableError: the holder did not answer.
        """
        if self._sent:
            raise LocalProtocolError("a remote key-holder session carries one request")
        if msg.recipient != self._holder or msg.round_id != self._round:
            raise LocalProtocolError(
                f"request for holder {msg.recipient} round {msg.round_id} sent through the session of holder "
                f"{self._holder} round {self._round}"
            )
        self._sent = True
        replies = list(self._exchange(msg))
        if not replies:
            raise KeyHolderUnavailableError(
                f"key holder {self._holder} did not answer the decryption request of round {self._round}",
                peer=self._holder,
            )
        return replies


class _Setting(Enum):
    SINGLE = "single"
    THRESHOLD = "threshold"
    ENCRYPT_ONLY = "encrypt-only"


class PaillierSecureSum:
    """Packed Paillier secure sum of vectors of ``dim`` elements of ``ring``.

    Construct it from keys you already have, or generate keys in one call with
    :meth:`generate`::

        ss = PaillierSecureSum.generate(RingSpec(16), 10_000, rng=SystemRandomSource())
        outcome = run_round(ss, inputs, round_id=1, rng_for=...)

    Args:
        ring: the ring of the inputs.
        dim: vector length.
        public_key: the key clients encrypt under.
        key_holder: the single key holder (simple setting; a :class:`RemoteKeyHolder`
            when it runs elsewhere), or
        decryptors: the available threshold decryptors (threshold setting; any t suffice;
            :class:`RemoteDecryptor` when they run elsewhere), or
        encrypt_only: neither: the instance only encrypts (client sessions) under a key
            whose holders run elsewhere; :meth:`server` is refused.
        threshold_params: public threshold parameters (required with ``decryptors``).
        max_clients: the largest cohort; sizes the slots so a sum cannot overflow.
        mode: DJN (default, fast) or STANDARD (``r^n``, as ``phe``) encryption.
        window: bits per window of the DJN fixed-base table (memory ``~ 2^window``;
            default 10: 103 multiplications per ciphertext, ~57 MB at 2048 bits).
        min_survivors: fewer inputs abort the round.
        holder_link: carries server<->key-holder messages (default: in-process delivery).
        verify_decryption: the single key holder must prove each plaintext by revealing
            the ciphertext's randomness, which the server checks (one ``r^n`` per
            ciphertext: about as costly as standard-mode encryption). Threshold shares
            are always proven.
        insecure_small_key_for_tests: accept moduli below 2048 bits. Tests only.

    Raises:
        ConfigurationError: key too small, not exactly one of the key-holder settings,
            keys that do not match, bad options.
        EncodingOverflowError: the packing cannot hold a sum of ``max_clients`` vectors.
    """

    name = "paillier"

    def __init__(
        self,
        ring: RingSpec,
        dim: int,
        *,
        public_key: PaillierPublicKey,
        key_holder: KeyHolder | RemoteKeyHolder | None = None,
        decryptors: Sequence[ThresholdDecryptor | RemoteDecryptor] | None = None,
        threshold_params: ThresholdParams | None = None,
        encrypt_only: bool = False,
        max_clients: int = 100,
        mode: EncryptionMode = EncryptionMode.DJN,
        window: int = DEFAULT_WINDOW,
        min_survivors: int = 1,
        holder_link: HolderLink | None = None,
        verify_decryption: bool = False,
        insecure_small_key_for_tests: bool = False,
    ) -> None:
        check_key_bits(public_key.bits, insecure_small_key_for_tests=insecure_small_key_for_tests)
        if not isinstance(mode, EncryptionMode):
            raise ConfigurationError(f"mode must be an EncryptionMode, got {mode!r}")
        if not public_key.supports(mode):
            raise ConfigurationError("the public key has no DJN base; pass mode=EncryptionMode.STANDARD")
        if min_survivors < 1:
            raise ConfigurationError(f"min_survivors must be >= 1, got {min_survivors}")
        if not 1 <= window <= 12:
            raise ConfigurationError(f"window must be in 1..12 bits, got {window}")
        if (key_holder is not None) + (decryptors is not None) + bool(encrypt_only) != 1:
            raise ConfigurationError(
                "pass exactly one of key_holder= (single), decryptors= (threshold) or encrypt_only=True"
            )
        self.ring = ring
        self.dim = dim
        self.public_key = public_key
        self.mode = mode
        self.min_survivors = min_survivors
        self.plan: PackingPlan = plan_packing(ring, dim, key_bits=public_key.bits, max_clients=max_clients)
        self.max_clients = max_clients
        self.encryptor = Encryptor(public_key, mode=mode, window=window)
        self.holder_link: HolderLink = holder_link or _deliver
        self.verify_decryption = verify_decryption
        self.key_holder = key_holder
        self.threshold_params = threshold_params
        self.decryptors: tuple[ThresholdDecryptor | RemoteDecryptor, ...] = ()
        if encrypt_only:
            self.setting = _Setting.ENCRYPT_ONLY
            if threshold_params is not None and threshold_params.public_key.n != public_key.n:
                raise ConfigurationError("threshold_params belong to another public key")
        elif key_holder is not None:
            self.setting = _Setting.SINGLE
            if key_holder.public_key.n != public_key.n:
                raise ConfigurationError("the key holder's private key does not match public_key")
        else:
            self.setting = _Setting.THRESHOLD
            if threshold_params is None:
                raise ConfigurationError("threshold decryption needs threshold_params=")
            if threshold_params.public_key.n != public_key.n:
                raise ConfigurationError("threshold_params belong to another public key")
            decs = tuple(decryptors or ())
            ids = [d.index for d in decs]
            if len(set(ids)) != len(ids):
                raise ConfigurationError("two decryptors hold the same share index")
            for d in decs:
                if d.public_key.n != public_key.n:
                    raise ConfigurationError(f"decryptor {d.index} holds a share of another key")
            self.decryptors = decs

    @classmethod
    def generate(
        cls,
        ring: RingSpec,
        dim: int,
        *,
        rng: RandomSource,
        key_bits: int = DEFAULT_KEY_BITS,
        max_clients: int = 100,
        threshold: tuple[int, int] | None = None,
        mode: EncryptionMode = EncryptionMode.DJN,
        window: int = DEFAULT_WINDOW,
        min_survivors: int = 1,
        verify_decryption: bool = False,
        insecure_small_key_for_tests: bool = False,
    ) -> PaillierSecureSum:
        """Generate keys and return a ready backend (one call).

        Args:
            threshold: ``(t, m)`` deals a t-of-m threshold key from safe primes (the
                dealer forgets the factorisation); None gives a single key holder.
            Other arguments as in the constructor.
        """
        check_key_bits(key_bits, insecure_small_key_for_tests=insecure_small_key_for_tests)
        plan_packing(ring, dim, key_bits=key_bits, max_clients=max_clients)  # fail before keygen
        if threshold is None:
            sk = generate_keypair(
                rng.spawn("paillier keygen"),
                key_bits=key_bits,
                insecure_small_key_for_tests=insecure_small_key_for_tests,
            )
            return cls(
                ring,
                dim,
                public_key=sk.public_key,
                key_holder=KeyHolder(sk),
                max_clients=max_clients,
                mode=mode,
                window=window,
                min_survivors=min_survivors,
                verify_decryption=verify_decryption,
                insecure_small_key_for_tests=insecure_small_key_for_tests,
            )
        t, m = threshold
        if not 1 <= t <= m:
            raise ConfigurationError(f"threshold must be (t, m) with 1 <= t <= m, got {threshold}")
        params, shares = generate_threshold_key(
            rng.spawn("paillier threshold keygen"),
            threshold=t,
            parties=m,
            key_bits=key_bits,
            insecure_small_key_for_tests=insecure_small_key_for_tests,
        )
        decs = [ThresholdDecryptor(s, rng=rng.spawn(f"paillier decryptor {s.index}")) for s in shares]
        return cls(
            ring,
            dim,
            public_key=params.public_key,
            decryptors=decs,
            threshold_params=params,
            max_clients=max_clients,
            mode=mode,
            window=window,
            min_survivors=min_survivors,
            verify_decryption=verify_decryption,
            insecure_small_key_for_tests=insecure_small_key_for_tests,
        )

    @classmethod
    def from_public_key(
        cls,
        ring: RingSpec,
        dim: int,
        *,
        public_key: PaillierPublicKey,
        threshold_params: ThresholdParams | None = None,
        exchange: HolderExchange | None = None,
        max_clients: int = 100,
        mode: EncryptionMode = EncryptionMode.DJN,
        window: int = DEFAULT_WINDOW,
        min_survivors: int = 1,
        verify_decryption: bool = False,
        insecure_small_key_for_tests: bool = False,
    ) -> PaillierSecureSum:
        """A backend built from public key material only (the key holders run elsewhere).

        Args:
            public_key: the key the holders published.
            threshold_params: the public t-of-m parameters when the key is a threshold key
                (decryptor ``i`` is holder ``-i``); None for a single key holder (holder ``-1``).
            exchange: carries a decryption request to the holder it is addressed to and
                returns its replies (``[]``: no answer). None: the instance only encrypts
                (a client's view); :meth:`server` is then refused.
            Other arguments as in the constructor.

        Security:
            The returned object holds no private key and no key share, so whoever runs
            its server session can only obtain what the holders decrypt for it: one
            aggregate per round per holder (each holder's own rule). Which key the
            clients encrypt under is the clients' concern: a party that can substitute
            the public key can decrypt individual inputs; clients pin it out of band.

        Raises:
            ConfigurationError: as the constructor (e.g. a small key without the test flag).
        """
        if threshold_params is not None and threshold_params.public_key.n != public_key.n:
            raise ConfigurationError("threshold_params belong to another public key")
        common: dict[str, object] = {}
        if exchange is None:
            common["encrypt_only"] = True
        elif threshold_params is None:
            common["key_holder"] = RemoteKeyHolder(public_key, exchange)
        else:
            common["decryptors"] = [
                RemoteDecryptor(threshold_params, i, exchange) for i in range(1, threshold_params.parties + 1)
            ]
        return cls(
            ring,
            dim,
            public_key=public_key,
            threshold_params=threshold_params,
            max_clients=max_clients,
            mode=mode,
            window=window,
            min_survivors=min_survivors,
            verify_decryption=verify_decryption,
            insecure_small_key_for_tests=insecure_small_key_for_tests,
            **common,  # type: ignore[arg-type]
        )

    def precompute(self, count: int, rng: RandomSource) -> None:
        """Offline phase: prepare ``count`` encryptions of zero (one per ciphertext to send)."""
        self.encryptor.precompute(count, rng)

    def client(self, me: ClientId, round_id: int, rng: RandomSource) -> PaillierClientSession:
        if not 1 <= me < _INT64:
            raise LocalProtocolError(f"client ids are in 1..2^63-1 (0 is the server), got {me}")
        _check_round(round_id)
        return PaillierClientSession(self, me, round_id, rng)

    def server(self, cohort: Sequence[ClientId], round_id: int) -> PaillierServerSession:
        """The server session of one round.

        Raises:
            LocalProtocolError: an encrypt-only instance (it has no key holder to ask).
        """
        _check_round(round_id)
        if self.setting is _Setting.ENCRYPT_ONLY:
            raise LocalProtocolError(
                "this Paillier backend was built to encrypt only (no key holder, no exchange): "
                "it cannot run a server session; build it with from_public_key(..., exchange=...)"
            )
        return PaillierServerSession(self, cohort, round_id)


_INT64 = 1 << 63


def _check_round(round_id: int) -> None:
    if not -_INT64 <= round_id < _INT64:
        raise LocalProtocolError(f"round ids must fit in 64 signed bits (the wire header), got {round_id}")


class PaillierClientSession:
    """Sans-I/O client: pack, encrypt, send once; expects nothing back."""

    def __init__(self, spec: PaillierSecureSum, me: ClientId, round_id: int, rng: RandomSource) -> None:
        self._spec = spec
        self._me = me
        self._round = round_id
        self._rng = rng
        self._started = False

    def start(self, x: RingVector | DeferredInput) -> list[Message]:
        spec = self._spec
        if self._started:
            raise LocalProtocolError("start() called twice")
        x = spec.ring.check(resolve_input(x), spec.dim, what="client input")
        self._started = True
        cts = spec.encryptor.encrypt_many(spec.plan.pack(x), self._rng)
        payload = wire.encode(
            wire.Kind.CLIENT_CIPHERTEXTS,
            spec.public_key,
            round_id=self._round,
            sender=self._me,
            values=cts,
        )
        return [Message(self._me, SERVER, self._round, STAGE_INPUT, payload)]

    def receive(self, msg: Message) -> list[Message]:
        raise RemoteProtocolError("the Paillier sum sends nothing to clients", peer=msg.sender)


class PaillierServerSession:
    """Sans-I/O server: multiplies inputs, drives the key holder(s), unpacks the sum.

    After the round, ``rejected`` maps each key holder whose share was discarded to
    the error; ``holder_cpu_s`` and ``holder_bytes`` meter the key holders;
    ``decrypt_cpu_s`` is the whole decryption flow as seen by the server.
    """

    def __init__(self, spec: PaillierSecureSum, cohort: Sequence[ClientId], round_id: int) -> None:
        if len(set(cohort)) != len(cohort) or any(c < 1 for c in cohort):
            raise LocalProtocolError("cohort must be distinct client ids >= 1")
        if len(cohort) > spec.max_clients:
            raise EncodingOverflowError(
                f"cohort of {len(cohort)} exceeds max_clients={spec.max_clients}: the packed sum "
                "could overflow a slot; build the backend with a larger max_clients",
                knob="max_clients",
            )
        self._spec = spec
        self._cohort = frozenset(cohort)
        self._round = round_id
        self._acc: list[mpz] | None = None
        self._inputs: set[ClientId] = set()
        self._closed = False
        self._done = False
        self._total: RingVector | None = None
        self._error: SecAggError | None = None
        self.rejected: dict[int, SecAggError] = {}
        self.holder_cpu_s: dict[int, float] = {}
        self.holder_bytes: dict[int, int] = {}
        self.decrypt_cpu_s = 0.0

    # -- input stage -------------------------------------------------------------------
    def receive(self, msg: Message) -> list[Message]:
        spec = self._spec
        if self._closed:
            raise LocalProtocolError("the input stage is closed")
        if msg.sender not in self._cohort:
            raise RemoteProtocolError("sender is not in the cohort", peer=msg.sender)
        if msg.round_id != self._round:
            raise WrongRoundError(f"message for round {msg.round_id} in round {self._round}", peer=msg.sender)
        if msg.stage != STAGE_INPUT:
            raise MalformedCiphertextError(f"unexpected stage {msg.stage!r}", peer=msg.sender)
        if msg.sender in self._inputs:
            raise RemoteProtocolError("duplicate input", peer=msg.sender)
        cts = wire.decode(
            msg.payload,
            wire.Kind.CLIENT_CIPHERTEXTS,
            spec.public_key,
            round_id=self._round,
            sender=msg.sender,
            count=spec.plan.plaintexts,
            peer=msg.sender,
        ).values
        n2 = spec.public_key.n_squared
        if self._acc is None:
            self._acc = cts
        else:
            acc = self._acc
            for j, c in enumerate(cts):
                acc[j] = acc[j] * c % n2
        self._inputs.add(msg.sender)
        if len(self._inputs) == len(self._cohort):
            self._finish()
        return []

    def close_stage(self) -> list[Message]:
        if not self._closed:
            self._finish()
        return []

    @property
    def done(self) -> bool:
        return self._done

    @property
    def survivors(self) -> frozenset[ClientId]:
        return frozenset(self._inputs)

    @property
    def aggregate(self) -> list[mpz] | None:
        """The product ciphertexts (None before any input)."""
        return self._acc

    def result(self) -> RingVector:
        if not self._done:
            raise LocalProtocolError("result() before the round finished")
        if self._error is not None:
            raise self._error
        if self._total is None:  # pragma: no cover - done implies one of the two
            raise LocalProtocolError("no result")
        return self._total

    # -- decryption stage --------------------------------------------------------------
    def _finish(self) -> None:
        self._closed = True
        t0 = time.process_time()
        try:
            self._decrypt()
        except SecAggError as exc:
            self._error = exc
        self.decrypt_cpu_s += time.process_time() - t0
        self._done = True

    def _decrypt(self) -> None:
        spec = self._spec
        survivors = len(self._inputs)
        if survivors < spec.min_survivors or self._acc is None:
            raise TooFewSurvivorsError(
                f"{survivors} inputs received, at least {spec.min_survivors} needed",
                survivors=survivors,
                required=spec.min_survivors,
            )
        pk = spec.public_key
        acc = self._acc
        for c in acc:
            if gmpy2.gcd(c, pk.n) != 1:
                raise PaillierError("the aggregate is not a unit of Z_{n^2}: an input was not a valid ciphertext")
        # Complete every slot to max_clients offsets (a public constant, encrypted trivially:
        # the product already carries the clients' randomness), so the plaintext the key
        # holders decrypt is a function of the ring sum alone, not of the cohort size or of
        # how many clients held negative values (see secagg.paillier.packing).
        pad = (1 + spec.plan.completion(survivors) * pk.n) % pk.n_squared
        acc = self._acc = [c * pad % pk.n_squared for c in acc]
        flag = _WANT_PROOF if spec.verify_decryption and spec.setting is _Setting.SINGLE else _NO_PROOF
        request = wire.encode(
            wire.Kind.DECRYPT_REQUEST, pk, round_id=self._round, sender=SERVER, values=acc, trailer=flag
        )
        if spec.setting is _Setting.SINGLE:
            holder = spec.key_holder
            if holder is None:  # pragma: no cover - guarded in the constructor
                raise LocalProtocolError("no key holder")
            replies = self._ask(holder.holder_id, holder.session(self._round, len(acc)), request)
            self._total = self._single_result(holder.holder_id, replies)
        else:
            self._total = self._threshold_result(request)

    def _ask(
        self,
        holder_id: int,
        session: KeyHolderSession | ThresholdDecryptorSession | RemoteHolderSession,
        request: bytes,
    ) -> list[Message]:
        link = self._spec.holder_link
        out: list[Message] = []
        self.holder_bytes[holder_id] = 0
        for m in link(Message(SERVER, holder_id, self._round, STAGE_DECRYPT, request)):
            self.holder_bytes[holder_id] += m.size
            t = time.process_time()
            try:
                replies = session.receive(m)
            finally:
                self.holder_cpu_s[holder_id] = self.holder_cpu_s.get(holder_id, 0.0) + time.process_time() - t
            for r in replies:
                self.holder_bytes[holder_id] += r.size
                out.extend(link(r))
        return out

    def _reply_from(self, holder_id: int, replies: list[Message], stage: str) -> Message:
        mine = [r for r in replies if r.sender == holder_id and r.recipient == SERVER]
        if len(mine) != 1 or len(mine) != len(replies):
            raise MalformedCiphertextError(
                f"expected one reply from the key holder, got {len(replies)}", peer=holder_id
            )
        msg = mine[0]
        if msg.stage != stage:
            raise MalformedCiphertextError(f"unexpected stage {msg.stage!r}", peer=holder_id)
        if msg.round_id != self._round:
            raise WrongRoundError(f"reply for round {msg.round_id} in round {self._round}", peer=holder_id)
        return msg

    def _single_result(self, holder_id: int, replies: list[Message]) -> RingVector:
        spec = self._spec
        msg = self._reply_from(holder_id, replies, STAGE_PLAINTEXT)
        pk = spec.public_key
        verify = spec.verify_decryption
        reply = wire.decode(
            msg.payload,
            wire.Kind.PLAINTEXTS,
            pk,
            round_id=self._round,
            sender=holder_id,
            count=spec.plan.plaintexts,
            peer=holder_id,
            trailer=verify,
        )
        pts = reply.values
        if verify:
            w = pk.plaintext_bytes
            if len(reply.trailer) != w * len(pts):
                raise MalformedCiphertextError("decryption proof has the wrong length", peer=holder_id)
            acc = self._acc or []
            for j, (c, m) in enumerate(zip(acc, pts, strict=True)):
                root = mpz.from_bytes(reply.trailer[j * w : (j + 1) * w], "big")
                try:
                    pk.check_decryption(c, m, root)
                except PaillierError as exc:
                    raise CorruptDecryptionShareError(f"plaintext {j}: {exc}", peer=holder_id) from exc
        return spec.plan.unpack(pts)

    def _threshold_result(self, request: bytes) -> RingVector:
        spec = self._spec
        params = spec.threshold_params
        if params is None:  # pragma: no cover - guarded in the constructor
            raise LocalProtocolError("no threshold parameters")
        acc = self._acc or []
        context = _proof_context(spec.public_key, self._round)
        valid: dict[int, list[mpz]] = {}
        for dec in spec.decryptors:
            if len(valid) >= params.threshold:
                break  # t verified shares suffice; do not ask the others
            hid = dec.holder_id
            try:
                replies = self._ask(hid, dec.session(self._round, len(acc)), request)
                msg = self._reply_from(hid, replies, STAGE_SHARE)
                payload = wire.decode(
                    msg.payload,
                    wire.Kind.DECRYPTION_SHARES,
                    spec.public_key,
                    round_id=self._round,
                    sender=hid,
                    count=len(acc),
                    peer=hid,
                    trailer=True,
                )
                proof = _decode_proof(payload.trailer, hid)
                verify(params, dec.index, acc, payload.values, proof, context=context)
            except InvalidDecryptionShareError as exc:
                self.rejected[hid] = CorruptDecryptionShareError(str(exc), peer=hid)
                continue
            except RemoteProtocolError as exc:
                self.rejected[hid] = exc
                continue
            valid[dec.index] = payload.values
        if len(valid) < params.threshold:
            raise TooFewDecryptionSharesError(
                f"{len(valid)} valid decryption shares, {params.threshold} needed (rejected: {sorted(self.rejected)})",
                survivors=len(valid),
                required=params.threshold,
            )
        return spec.plan.unpack(combine(params, valid))
