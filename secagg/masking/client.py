"""The client side of the masking protocol: a sans-I/O state machine driven by its transition table.

Security:
    The client enforces the checks that make a curious or lying server harmless
    (Bonawitz et al., CCS 2017, figure 4 and section 6; Bell et al., CCS 2020,
    section 4): the neighbour list must match the graph recomputed from the
    round's public data; with identity keys every neighbour's key advertisement
    and the consistency-check signatures must verify; every share ciphertext must
    authenticate under associated data binding version, round, sender,
    recipient and the client's own setup-terms digest; every pairwise mask is
    derived with the client's own round-terms digest, so it cancels only against
    a neighbour that used the same terms (:mod:`secagg.masking.binding`); the
    cohort size and the Shamir threshold derived from it must
    reach this client's own floors (``min_cohort``, ``min_threshold``) before
    any share is dealt; the survivor list must be a sorted subset of the cohort holding
    this client and at least max(t, min_survivors) clients, checked where it
    first arrives (the consistency check with identity keys, the unmasking
    request without); and an unmasking request may ask, per neighbour, for
    either the self-mask share (neighbour survived) or the key share (neighbour
    dropped), never both, consistently with that survivor list.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from secagg.errors import ConfigurationError, LocalProtocolError, RemoteProtocolError
from secagg.masking import wire
from secagg.masking._derive import pairwise_seed, self_mask_commitment, self_mask_seed, share_key
from secagg.masking.states import ClientState, Stage
from secagg.primitives import PrimitiveError, aead, key_agreement, prg, shamir, signatures
from secagg.protocol import SERVER, ClientId, DeferredInput, Message, RandomSource
from secagg.ring import RingVector

if TYPE_CHECKING:
    from secagg.masking.backend import MaskingSecureSum
    from secagg.primitives.signatures import SigningKey

__all__ = ["MaskingClient"]


def _strictly_increasing(ids: tuple[int, ...]) -> bool:
    return all(a < b for a, b in zip(ids, ids[1:], strict=False))


class MaskingClient:
    """One client's session for one round. Create it with :meth:`MaskingSecureSum.client`."""

    def __init__(
        self,
        spec: MaskingSecureSum,
        me: ClientId,
        round_id: int,
        rng: RandomSource,
        *,
        signing_key: SigningKey | None,
    ) -> None:
        self._spec = spec
        self._me = me
        self._round = round_id
        self._rng = rng
        self._signing_key = signing_key
        self._binding = spec.binding
        self._table = spec.transitions
        self._state = ClientState.INIT
        self._x: RingVector | DeferredInput | None = None
        self._c: key_agreement.KeyPair | None = None
        self._s: key_agreement.KeyPair | None = None
        self._b = b""
        self._cohort: tuple[int, ...] = ()
        self._t = 0
        self._peers: dict[int, wire.Advertisement] = {}
        self._held: dict[int, wire.SharePlaintext] = {}
        self._open_keys: dict[int, bytes] = {}
        self._survivors: tuple[int, ...] = ()
        self.revealed_b: frozenset[int] = frozenset()
        """Dealers whose self-mask shares this client revealed (for audits and tests)."""
        self.revealed_sk: frozenset[int] = frozenset()
        """Dealers whose key shares this client revealed."""

    @property
    def state(self) -> ClientState:
        return self._state

    def _keys(self) -> tuple[key_agreement.KeyPair, key_agreement.KeyPair]:
        if self._c is None or self._s is None:  # pragma: no cover - unreachable after start()
            raise LocalProtocolError("keys are not generated before start()")
        return self._c, self._s

    def _msg(self, stage: Stage, payload: bytes) -> Message:
        return Message(self._me, SERVER, self._round, stage.value, payload)

    def start(self, x: RingVector | DeferredInput) -> list[Message]:
        """Take the input (or a deferred input, produced at the masked-input stage) and advertise
        two fresh X25519 public keys (stage AdvertiseKeys)."""
        if self._state is not ClientState.INIT:
            raise LocalProtocolError("start() called twice")
        if not callable(x):
            self._spec.ring.check(x, self._spec.dim, what="client input")
        self._c = key_agreement.generate_keypair(self._rng)
        self._s = key_agreement.generate_keypair(self._rng)
        self._b = self._rng.random_bytes(shamir.SECRET_BYTES)
        sig = b""
        if self._signing_key is not None:
            sig = self._signing_key.sign(
                wire.advertisement_signed_bytes(self._round, self._me, self._c.public, self._s.public)
            )
        self._x = x
        self._state = ClientState.ADVERTISED
        adv = wire.Advertisement(self._c.public, self._s.public, sig)
        return [self._msg(Stage.ADVERTISE_KEYS, wire.encode_advertisement(adv))]

    def receive(self, msg: Message) -> list[Message]:
        """Handle one server message; refuses anything the transition table does not allow.

        Raises:
            LocalProtocolError: called before :meth:`start`.
            RemoteProtocolError: the message is misaddressed, from another round,
                out of order, malformed, or fails a security check. The session is
                left unchanged.
        """
        if self._state is ClientState.INIT:
            raise LocalProtocolError("receive() before start()")
        if msg.sender != SERVER:
            raise RemoteProtocolError("clients accept messages from the server only", peer=msg.sender)
        if msg.recipient != self._me:
            raise RemoteProtocolError(f"message for client {msg.recipient} delivered to {self._me}", peer=SERVER)
        if msg.round_id != self._round:
            raise RemoteProtocolError(
                f"message for round {msg.round_id} in round {self._round} (replayed?)", peer=SERVER
            )
        try:
            stage = Stage(msg.stage)
        except ValueError:
            raise RemoteProtocolError(f"unknown stage {msg.stage!r}", peer=SERVER) from None
        nxt = self._table.client.get((self._state, stage))
        if nxt is None:
            raise RemoteProtocolError(
                f"unexpected {stage.value} message in client state {self._state.value}", peer=SERVER
            )
        try:
            out = self._HANDLERS[stage](self, msg.payload)
        except wire.WireFormatError as exc:
            raise RemoteProtocolError(f"malformed {stage.value} message: {exc}", peer=SERVER) from exc
        self._state = nxt
        return out

    # -- ShareKeys: check the neighbour list and keys, deal sealed shares ------------------

    def _on_share_keys(self, payload: bytes) -> list[Message]:
        req = wire.decode_share_keys_request(payload)
        cohort = req.cohort
        if not _strictly_increasing(cohort) or self._me not in cohort or SERVER in cohort:
            raise RemoteProtocolError("cohort list is not sorted, or misses this client", peer=SERVER)
        if len(cohort) < self._spec.min_cohort:
            # The threshold is derived from the cohort the server claims: a tiny claimed
            # cohort means a tiny t, and t colluding holders rebuild this client's secrets.
            raise RemoteProtocolError(
                f"cohort of {len(cohort)} clients, below this client's floor of {self._spec.min_cohort}", peer=SERVER
            )
        try:
            params = self._spec.parameters(len(cohort))
        except ConfigurationError as exc:
            raise RemoteProtocolError(f"unusable cohort: {exc}", peer=SERVER) from exc
        if params.threshold < self._spec.min_threshold:
            raise RemoteProtocolError(
                f"threshold {params.threshold} for a cohort of {len(cohort)}, below this client's floor of "
                f"{self._spec.min_threshold}",
                peer=SERVER,
            )
        mine = self._spec.neighbours(cohort, self._round)[self._me]
        ids = tuple(v for v, _ in req.peers)
        if len(set(ids)) != len(ids) or not set(ids) <= mine:
            raise RemoteProtocolError("neighbour list differs from the graph derived from the round seed", peer=SERVER)
        if len(ids) < params.threshold:
            raise RemoteProtocolError(f"only {len(ids)} neighbours, the threshold is {params.threshold}", peer=SERVER)
        c, s = self._keys()
        seen = {c.public, s.public}
        for v, adv in req.peers:
            if adv.c_pk in seen or adv.s_pk in seen or adv.c_pk == adv.s_pk:
                raise RemoteProtocolError(f"client {v}'s public keys repeat other keys", peer=SERVER)
            seen |= {adv.c_pk, adv.s_pk}
            self._check_advertisement(v, adv)
        holders = sorted(ids)
        b_shares = shamir.split(self._b, holders, params.threshold, self._rng)
        sk_shares = shamir.split(s.private, holders, params.threshold, self._rng)
        peers = dict(req.peers)
        records = []
        open_keys: dict[int, bytes] = {}
        for v in holders:
            pt = wire.encode_share_plaintext(wire.SharePlaintext(self._me, v, b_shares[v], sk_shares[v]))
            try:
                secret = c.exchange(peers[v].c_pk)
            except PrimitiveError as exc:
                raise RemoteProtocolError(f"client {v}'s key: {exc}", peer=SERVER) from exc
            key = share_key(secret, round_id=self._round, sender=self._me, recipient=v)
            open_keys[v] = share_key(secret, round_id=self._round, sender=v, recipient=self._me)
            ad = aead.associated_data(
                version=wire.VERSION, round_id=self._round, sender=self._me, recipient=v, context=self._binding.setup
            )
            records.append((v, aead.seal(key, self._rng.random_bytes(aead.NONCE_BYTES), pt, ad)))
        self._cohort, self._t, self._peers, self._open_keys = cohort, params.threshold, peers, open_keys
        return [self._msg(Stage.SHARE_KEYS, wire.encode_sealed_shares(wire.SealedShares(tuple(records))))]

    def _check_advertisement(self, v: int, adv: wire.Advertisement) -> None:
        ids = self._spec.identities
        if ids is None:
            return
        public = ids.get(v)
        if public is None:
            raise RemoteProtocolError(f"client {v} has no identity key", peer=SERVER)
        try:
            signatures.verify(
                public,
                wire.advertisement_signed_bytes(self._round, v, adv.c_pk, adv.s_pk),
                adv.signature,
            )
        except PrimitiveError as exc:
            raise RemoteProtocolError(
                f"key advertisement of client {v} is not signed by its identity key", peer=SERVER
            ) from exc

    # -- MaskedInputCollection: open the shares held, send the double-masked input ---------

    def _on_masked_input(self, payload: bytes) -> list[Message]:
        sealed = wire.decode_sealed_shares(payload).records
        dealers = [u for u, _ in sealed]
        if len(set(dealers)) != len(dealers) or not set(dealers) <= self._peers.keys():
            raise RemoteProtocolError("shares from clients that are not neighbours", peer=SERVER)
        if len(dealers) < self._t:
            raise RemoteProtocolError(
                f"only {len(dealers)} neighbours hold shares, the threshold is {self._t}",
                peer=SERVER,
            )
        _, s = self._keys()
        if self._x is None:  # pragma: no cover - the transition table makes this unreachable
            raise LocalProtocolError("input already consumed")
        terms = self._binding.round
        if terms is None:
            # Key setup run ahead: the round's terms are not known, so no mask may be derived yet.
            raise LocalProtocolError(
                "this session is bound to no round terms yet (key setup ahead): rebuild it with the round's terms "
                "before the masked-input stage"
            )
        held: dict[int, wire.SharePlaintext] = {}
        for u, ct in sealed:
            ad = aead.associated_data(
                version=wire.VERSION, round_id=self._round, sender=u, recipient=self._me, context=self._binding.setup
            )
            try:
                pt = wire.decode_share_plaintext(aead.open_sealed(self._open_keys[u], ct, ad))
            except (PrimitiveError, wire.WireFormatError) as exc:
                # Also what a dealer bound to other setup terms produces (the server told it other terms).
                raise RemoteProtocolError(
                    f"share ciphertext from client {u} rejected (tampered, misrouted, or sealed under other round "
                    f"terms than this client's): {exc}",
                    peer=SERVER,
                ) from exc
            if pt.dealer != u or pt.holder != self._me:
                raise RemoteProtocolError(f"share from client {u} names the wrong parties", peer=SERVER)
            held[u] = pt
        # The input is produced only once every share opened: nothing is computed from it for a refused stage.
        x = self._spec.ring.check(self._x() if callable(self._x) else self._x, self._spec.dim, what="client input")
        ring = self._spec.ring
        masks: list[tuple[bytes, prg.MaskOp]] = [(self_mask_seed(self._b, round_id=self._round, owner=self._me), "add")]
        for v in dealers:
            try:
                seed = pairwise_seed(s, self._peers[v].s_pk, round_id=self._round, me=self._me, peer=v, terms=terms)
            except PrimitiveError as exc:
                raise RemoteProtocolError(f"client {v}'s mask key: {exc}", peer=SERVER) from exc
            masks.append((seed, "add" if self._me < v else "sub"))
        y = prg.add_masks_into(x.copy(), masks, ring)
        del x
        commitment = self_mask_commitment(self._b, round_id=self._round, owner=self._me)
        # Little-endian hosts hand the vector's own buffer to the encoder: one copy, not two.
        body = y.data.cast("B") if sys.byteorder == "little" else ring.to_bytes(y)
        payload_out = wire.encode_masked_input(commitment, terms, body)
        self._held, self._x, self._open_keys = held, None, {}
        return [self._msg(Stage.MASKED_INPUT, payload_out)]

    # -- The survivor list (ConsistencyCheck with identity keys, Unmasking without) ----------

    def _check_survivors(self, survivors: tuple[int, ...]) -> None:
        """Refuse a survivor list this client must not help unmask (raises, never returns a bool)."""
        if not _strictly_increasing(survivors) or not set(survivors) <= set(self._cohort):
            raise RemoteProtocolError("survivor list is not a sorted subset of the cohort", peer=SERVER)
        if self._me not in survivors:
            raise RemoteProtocolError("survivor list omits this client", peer=SERVER)
        if len(survivors) < self._t:
            raise RemoteProtocolError(f"{len(survivors)} survivors, below the threshold {self._t}", peer=SERVER)
        if len(survivors) < self._spec.min_survivors:
            # The sum would carry fewer noise shares than the DP layer sized the noise for:
            # refuse to take part in unmasking it.
            raise RemoteProtocolError(
                f"{len(survivors)} survivors, below the {self._spec.min_survivors} the round requires", peer=SERVER
            )

    # -- ConsistencyCheck (active variant only): sign the survivor list ----------------------

    def _on_consistency(self, payload: bytes) -> list[Message]:
        survivors = wire.decode_id_list(payload)
        self._check_survivors(survivors)
        sig = b""
        if self._signing_key is not None:
            sig = self._signing_key.sign(wire.consistency_signed_bytes(self._round, survivors))
        self._survivors = survivors
        return [self._msg(Stage.CONSISTENCY_CHECK, wire.encode_signature(sig))]

    # -- Unmasking: reveal one share per neighbour -----------------------------------------

    def _on_unmasking(self, payload: bytes) -> list[Message]:
        req = wire.decode_unmask_request(payload)
        if self._state is ClientState.CHECKED:
            # Active variant: the list was checked and signed in the consistency round.
            if req.survivors != self._survivors:
                raise RemoteProtocolError(
                    "unmasking request's survivor list differs from the consistency check", peer=SERVER
                )
            self._check_consistency_signatures(req)
        else:
            # Honest-but-curious variant (state MASKED): no consistency round, so this request
            # is where the survivor list first arrives and gets every check.
            self._check_survivors(req.survivors)
        survivors = req.survivors
        b_ids, sk_ids = set(req.b_ids), set(req.sk_ids)
        if len(b_ids) != len(req.b_ids) or len(sk_ids) != len(req.sk_ids):
            raise RemoteProtocolError("unmasking request repeats a client", peer=SERVER)
        both = b_ids & sk_ids
        if both:
            raise RemoteProtocolError(
                f"server asked for both the self-mask share and the key share of {sorted(both)}",
                peer=SERVER,
            )
        alive = set(survivors)
        if not b_ids <= alive:
            raise RemoteProtocolError("self-mask share asked for a client that dropped", peer=SERVER)
        if sk_ids & alive:
            raise RemoteProtocolError("key share asked for a client that survived", peer=SERVER)
        if not (b_ids | sk_ids) <= self._held.keys():
            raise RemoteProtocolError("share asked for a client this one holds none of", peer=SERVER)
        resp = wire.UnmaskResponse(
            tuple((u, self._held[u].b_share) for u in req.b_ids),
            tuple((u, self._held[u].sk_share) for u in req.sk_ids),
        )
        self.revealed_b, self.revealed_sk = frozenset(b_ids), frozenset(sk_ids)
        self._survivors, self._held = survivors, {}
        return [self._msg(Stage.UNMASKING, wire.encode_unmask_response(resp))]

    def _check_consistency_signatures(self, req: wire.UnmaskRequest) -> None:
        ids = self._spec.identities or {}
        signers = [v for v, _ in req.signatures]
        if len(set(signers)) != len(signers) or not set(signers) <= set(self._survivors):
            raise RemoteProtocolError("consistency signatures from non-survivors", peer=SERVER)
        if len(signers) < self._t:
            raise RemoteProtocolError(f"{len(signers)} consistency signatures, the threshold is {self._t}", peer=SERVER)
        message = wire.consistency_signed_bytes(self._round, self._survivors)
        for v, sig in req.signatures:
            try:
                signatures.verify(ids.get(v, b""), message, sig)
            except PrimitiveError as exc:
                raise RemoteProtocolError(f"consistency signature of client {v} is invalid", peer=SERVER) from exc

    _HANDLERS: dict[Stage, Callable[[MaskingClient, bytes], list[Message]]] = {
        Stage.SHARE_KEYS: _on_share_keys,
        Stage.MASKED_INPUT: _on_masked_input,
        Stage.CONSISTENCY_CHECK: _on_consistency,
        Stage.UNMASKING: _on_unmasking,
    }
