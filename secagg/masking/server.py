"""The server side of the masking protocol: a sans-I/O state machine over its transition table.

Security:
    The server relays keys and sealed shares it cannot read, accumulates masked
    inputs as they arrive (never holding more than one running sum), and
    unmasks only when every needed secret has at least t shares: otherwise the
    round ends in ``TooFewSurvivorsError`` and no vector is released (Bonawitz et
    al., CCS 2017, section 4, round 4). Reconstructed secrets are checked against
    public commitments (the advertised s_pk, the committed b_u) before use, so a
    holder sending a wrong share causes an abort, never a wrong sum. Without
    identity keys (honest-but-curious variant) the unmasking request follows the
    masked-input stage directly; the ``min_survivors`` guard runs when that stage
    closes in both variants, so too few masked inputs abort before any share is
    requested. Every masked input carries the digest of the round terms its client
    bound its masks to (:mod:`secagg.masking.binding`): one other than the server's
    expected digest is refused, and survivors bound to different terms (no expected
    digest) abort the round, since their masks cannot cancel.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from secagg.errors import (
    LocalProtocolError,
    RemoteProtocolError,
    SecAggError,
    TooFewSurvivorsError,
)
from secagg.masking import wire
from secagg.masking._derive import pairwise_seed, self_mask_commitment, self_mask_seed
from secagg.masking.binding import TERMS_BYTES
from secagg.masking.states import ServerState, Stage
from secagg.primitives import PrimitiveError, key_agreement, prg, shamir, signatures
from secagg.protocol import SERVER, ClientId, Message
from secagg.ring import RingVector

if TYPE_CHECKING:
    from secagg.masking.backend import MaskingSecureSum

__all__ = ["MaskingServer"]


class MaskingServer:
    """The server's session for one round. Create it with :meth:`MaskingSecureSum.server`."""

    def __init__(self, spec: MaskingSecureSum, cohort: Sequence[ClientId], round_id: int) -> None:
        ids = tuple(sorted(cohort))
        if len(set(ids)) != len(ids) or any(c <= SERVER for c in ids):
            raise LocalProtocolError("cohort must be distinct client ids >= 1")
        self._spec = spec
        self._cohort = ids
        self._round = round_id
        self.params = spec.parameters(len(ids))
        self._graph = spec.neighbours(ids, round_id)
        self._t = self.params.threshold
        self._table = spec.transitions
        self._state = ServerState.ADVERTISE
        self._expected: frozenset[int] = frozenset(ids)
        self._got: dict[int, object] = {}
        self._adv: dict[int, wire.Advertisement] = {}
        self._u1: frozenset[int] = frozenset()
        self._uploads: dict[int, dict[int, bytes]] = {}
        self._u2: frozenset[int] = frozenset()
        self._commitments: dict[int, bytes] = {}
        self._terms: dict[int, bytes] = {}
        self._expected_terms: bytes | None = spec.binding.round
        self._acc: RingVector = spec.ring.zeros(spec.dim)
        self._u3: tuple[int, ...] = ()
        self._sigs: dict[int, bytes] = {}
        self._requests: dict[int, wire.UnmaskRequest] = {}
        self._b_shares: dict[int, dict[int, int]] = {}
        self._sk_shares: dict[int, dict[int, int]] = {}
        self._result: RingVector | None = None
        self._holder_sets: list[tuple[int, ...]] = []
        self._error: SecAggError | None = None
        self.unmask_cpu_s = 0.0
        """Process time spent in the final unmasking computation (for benchmarks)."""
        self.stage_cpu_s: dict[Stage, float] = dict.fromkeys(self._table.stages, 0.0)
        """Process time per stage of this round's variant: handling its messages and closing it (for benchmarks)."""
        self.unmask_prg_expansions = 0
        """PRG expansions the unmasking needed: survivors' self masks + dropped clients' pairs."""

    @property
    def state(self) -> ServerState:
        return self._state

    @property
    def done(self) -> bool:
        return self._state is ServerState.DONE

    def expect_terms(self, terms: bytes) -> None:
        """The round-terms digest every masked input must carry (the terms this server's books charge).

        Default: the binding of the secure sum this session was made from. A session opened
        before the round's terms were known (key setup ahead) is told them here, before the
        masked-input stage. A masked input bound to other terms is refused (its client is a
        dropout: its masks are removed, its input never enters the sum).

        Raises:
            LocalProtocolError: a masked input already arrived, or ``terms`` is not 32 bytes.
        """
        if self._commitments or self._state not in (ServerState.ADVERTISE, ServerState.SHARE, ServerState.MASKED):
            raise LocalProtocolError("expect_terms() after the masked-input stage began")
        if len(terms) != TERMS_BYTES:
            raise LocalProtocolError(f"the terms digest must be {TERMS_BYTES} bytes, got {len(terms)}")
        self._expected_terms = bytes(terms)

    @property
    def survivors(self) -> frozenset[ClientId]:
        return frozenset(self._u3) if self._result is not None else frozenset()

    def result(self) -> RingVector:
        """The sum over the survivors.

        Raises:
            LocalProtocolError: the round is not finished.
            TooFewSurvivorsError: too few clients survived some stage, or some
                needed secret has fewer than t shares; nothing is released.
            RemoteProtocolError: a reconstructed secret failed its commitment.
        """
        if not self.done:
            raise LocalProtocolError(f"result() in server state {self._state.value}")
        if self._error is not None:
            raise self._error
        if self._result is None:  # pragma: no cover - done implies one of the two
            raise LocalProtocolError("no result")
        return self._result

    # -- dispatch ---------------------------------------------------------------------

    def receive(self, msg: Message) -> list[Message]:
        """Handle one client message; close the stage once every expected client answered.

        Raises:
            RemoteProtocolError: misaddressed, unknown sender, another round,
                wrong stage (late or replayed), duplicate, malformed, or failing a
                check. The session is left unchanged.
        """
        if msg.recipient != SERVER:
            raise RemoteProtocolError(f"message for {msg.recipient} delivered to the server", peer=msg.sender)
        if msg.sender not in self._graph:
            raise RemoteProtocolError("sender is not in the cohort", peer=msg.sender)
        if msg.round_id != self._round:
            raise RemoteProtocolError(
                f"message for round {msg.round_id} in round {self._round} (replayed?)",
                peer=msg.sender,
            )
        if self._state is ServerState.DONE:
            raise RemoteProtocolError("the round is over", peer=msg.sender)
        expected_stage = self._table.server_accepts[self._state]
        if msg.stage != expected_stage.value:
            raise RemoteProtocolError(
                f"{msg.stage} message while the server is in stage {expected_stage.value}",
                peer=msg.sender,
            )
        if msg.sender not in self._expected:
            raise RemoteProtocolError(f"client is not a participant of stage {msg.stage}", peer=msg.sender)
        if msg.sender in self._got:
            raise RemoteProtocolError(f"duplicate {msg.stage} message", peer=msg.sender)
        t0 = time.process_time()
        try:
            self._got[msg.sender] = self._HANDLERS[expected_stage](self, msg.sender, msg.payload)
        except wire.WireFormatError as exc:
            raise RemoteProtocolError(f"malformed {msg.stage} message: {exc}", peer=msg.sender) from exc
        finally:
            self.stage_cpu_s[expected_stage] += time.process_time() - t0
        if len(self._got) == len(self._expected):
            return self._close()
        return []

    def close_stage(self) -> list[Message]:
        """The stage deadline passed: whoever answered survives this stage."""
        if self._state is ServerState.DONE:
            return []
        return self._close()

    def _close(self) -> list[Message]:
        t0 = time.process_time()
        stage = self._table.server_accepts[self._state]
        try:
            return self._close_stage()
        finally:
            self.stage_cpu_s[stage] += time.process_time() - t0

    def _close_stage(self) -> list[Message]:
        answered = frozenset(self._got)
        state = self._state
        self._state = self._table.server_next[state]
        self._got = {}
        try:
            if len(answered) < self._t:
                self._abort(
                    len(answered),
                    f"only {len(answered)} clients answered stage {self._table.server_accepts[state].value}",
                )
            return self._CLOSERS[state](self, answered)
        except TooFewSurvivorsError as exc:
            self._error = exc
            self._state = ServerState.DONE
            return []

    def _abort(self, survivors: int, why: str) -> None:
        raise TooFewSurvivorsError(
            f"{why}; the threshold is {self._t}: round aborted, nothing unmasked",
            survivors=survivors,
            required=self._t,
        )

    def _prune(self, alive: frozenset[int]) -> frozenset[int]:
        """Drop clients with fewer than t live neighbours until none is left (fixpoint)."""
        changed = True
        while changed:
            changed = False
            for u in sorted(alive):
                if len(self._graph[u] & alive) < self._t:
                    alive = alive - {u}
                    changed = True
        return alive

    def _to(self, v: int, stage: Stage, payload: bytes) -> Message:
        return Message(SERVER, v, self._round, stage.value, payload)

    # -- AdvertiseKeys ----------------------------------------------------------------

    def _on_advertise(self, sender: int, payload: bytes) -> object:
        adv = wire.decode_advertisement(payload)
        ids = self._spec.identities
        if ids is not None:
            try:
                signatures.verify(
                    ids.get(sender, b""),
                    wire.advertisement_signed_bytes(self._round, sender, adv.c_pk, adv.s_pk),
                    adv.signature,
                )
            except PrimitiveError as exc:
                raise RemoteProtocolError(
                    "key advertisement is not signed by the sender's identity key", peer=sender
                ) from exc
        self._adv[sender] = adv
        return adv

    def _close_advertise(self, answered: frozenset[int]) -> list[Message]:
        u1 = self._prune(answered)
        if len(u1) < self._t:
            self._abort(len(u1), f"{len(u1)} clients advertised keys with enough live neighbours")
        self._u1 = self._expected = u1
        out = []
        for u in sorted(u1):
            peers = tuple((v, self._adv[v]) for v in sorted(self._graph[u] & u1))
            req = wire.ShareKeysRequest(self._cohort, peers)
            out.append(self._to(u, Stage.SHARE_KEYS, wire.encode_share_keys_request(req)))
        return out

    # -- ShareKeys --------------------------------------------------------------------

    def _on_share_keys(self, sender: int, payload: bytes) -> object:
        records = wire.decode_sealed_shares(payload).records
        targets = [v for v, _ in records]
        if sorted(targets) != sorted(self._graph[sender] & self._u1) or len(set(targets)) != len(targets):
            raise RemoteProtocolError("shares not addressed to exactly the sender's neighbours", peer=sender)
        self._uploads[sender] = dict(records)
        return None

    def _close_share_keys(self, answered: frozenset[int]) -> list[Message]:
        u2 = self._prune(answered)
        if len(u2) < self._t:
            self._abort(len(u2), f"{len(u2)} clients shared keys with enough live neighbours")
        self._u2 = self._expected = u2
        out = []
        for v in sorted(u2):
            recs = tuple((u, self._uploads[u][v]) for u in sorted(self._graph[v] & u2))
            out.append(self._to(v, Stage.MASKED_INPUT, wire.encode_sealed_shares(wire.SealedShares(recs))))
        return out

    # -- MaskedInputCollection -------------------------------------------------------

    def _on_masked_input(self, sender: int, payload: bytes) -> object:
        head, body = wire.decode_masked_input(payload)
        if self._expected_terms is not None and head.terms != self._expected_terms:
            # Its masks were derived under other terms: they would not cancel in the sum.
            raise RemoteProtocolError(
                "masked input bound to other round terms than this server's (its client was told, or used, "
                "other terms): refused, not added",
                peer=sender,
            )
        ring = self._spec.ring
        want = self._spec.dim * ring.bytes_per_element()
        if len(body) != want:
            raise RemoteProtocolError(
                f"masked input has {len(body)} bytes, expected {want}",
                peer=sender,
            )
        vec = np.frombuffer(body, dtype=ring.dtype.newbyteorder("<"))
        if not ring.native and int(vec.max()) > ring.mask:
            raise RemoteProtocolError(f"masked input has elements outside Z_2^{ring.bits}", peer=sender)
        np.add(self._acc, vec, out=self._acc)  # streamed: no per-client vector is kept
        self._commitments[sender] = head.commitment
        self._terms[sender] = head.terms
        return None

    def _close_masked_input(self, answered: frozenset[int]) -> list[Message]:
        if len(answered) < self._spec.min_survivors:
            raise TooFewSurvivorsError(
                f"{len(answered)} masked inputs, below the {self._spec.min_survivors} the round requires: "
                "round aborted, nothing unmasked",
                survivors=len(answered),
                required=self._spec.min_survivors,
            )
        bound = {self._terms[c] for c in answered}
        if len(bound) > 1:
            # Only reachable without an expected digest: survivors bound to different terms
            # have masks that do not cancel, so no sum over them exists. Abort, never a wrong sum.
            first = self._terms[min(answered)]
            odd = sorted(c for c in answered if self._terms[c] != first)
            self._error = RemoteProtocolError(
                f"survivors' masked inputs are bound to {len(bound)} different round terms (clients {odd} differ "
                f"from client {min(answered)}): round aborted, nothing unmasked",
                peer=odd[0],
            )
            self._state = ServerState.DONE
            return []
        self._u3 = tuple(sorted(answered))
        self._expected = answered
        if self._state is ServerState.UNMASK:
            # Honest-but-curious variant: no consistency round; the survivor list travels in
            # the unmasking request, which every client checks as the consistency stage would.
            return self._unmasking_requests()
        payload = wire.encode_id_list(self._u3)
        return [self._to(v, Stage.CONSISTENCY_CHECK, payload) for v in self._u3]

    # -- ConsistencyCheck (active variant only) -------------------------------------------

    def _on_consistency(self, sender: int, payload: bytes) -> object:
        sig = wire.decode_signature(payload)
        ids = self._spec.identities
        if ids is not None:
            try:
                signatures.verify(ids.get(sender, b""), wire.consistency_signed_bytes(self._round, self._u3), sig)
            except PrimitiveError as exc:
                raise RemoteProtocolError("consistency signature does not verify", peer=sender) from exc
            self._sigs[sender] = sig
        return None

    def _close_consistency(self, answered: frozenset[int]) -> list[Message]:
        self._expected = answered
        return self._unmasking_requests()

    def _unmasking_requests(self) -> list[Message]:
        """Ask each participant of the unmasking stage for one share per neighbour that dealt it some."""
        alive = frozenset(self._u3)
        sigs = tuple(sorted(self._sigs.items()))
        out = []
        for v in sorted(self._expected):
            dealers = self._graph[v] & self._u2
            req = wire.UnmaskRequest(
                survivors=self._u3,
                b_ids=tuple(sorted(dealers & alive)),
                sk_ids=tuple(sorted(dealers - alive)),
                signatures=sigs,
            )
            self._requests[v] = req
            out.append(self._to(v, Stage.UNMASKING, wire.encode_unmask_request(req)))
        return out

    # -- Unmasking ----------------------------------------------------------------------

    def _on_unmasking(self, sender: int, payload: bytes) -> object:
        resp = wire.decode_unmask_response(payload)
        req = self._requests[sender]
        if tuple(u for u, _ in resp.b_shares) != req.b_ids or tuple(u for u, _ in resp.sk_shares) != req.sk_ids:
            raise RemoteProtocolError("unmasking response does not answer the request", peer=sender)
        for u, y in resp.b_shares:
            self._b_shares.setdefault(u, {})[sender] = y
        for u, y in resp.sk_shares:
            self._sk_shares.setdefault(u, {})[sender] = y
        return None

    def _close_unmasking(self, answered: frozenset[int]) -> list[Message]:
        t0 = time.process_time()
        try:
            self._result = self._unmask()
        except (TooFewSurvivorsError, RemoteProtocolError) as exc:
            self._error = exc
        self.unmask_cpu_s = time.process_time() - t0
        return []

    def _unmask(self) -> RingVector:
        ring, t = self._spec.ring, self._t
        alive = frozenset(self._u3)
        dropped = [u for u in sorted(self._u2 - alive) if self._graph[u] & alive]
        for u in self._u3:  # check every needed secret before touching the sum
            if len(self._b_shares.get(u, {})) < t:
                self._abort(len(self._b_shares.get(u, {})), f"survivor {u}'s self mask has too few shares")
        for u in dropped:
            if len(self._sk_shares.get(u, {})) < t:
                self._abort(len(self._sk_shares.get(u, {})), f"dropped client {u}'s key has too few shares")
        masks: list[tuple[bytes, prg.MaskOp]] = []
        for u in self._u3:
            b = self._recover(u, self._b_shares[u])
            if self_mask_commitment(b, round_id=self._round, owner=u) != self._commitments[u]:
                raise RemoteProtocolError(f"shares of client {u}'s self-mask seed do not match its commitment", peer=u)
            masks.append((self_mask_seed(b, round_id=self._round, owner=u), "sub"))
        for u in dropped:
            sk = key_agreement.keypair_from_private(self._recover(u, self._sk_shares[u]))
            if sk.public != self._adv[u].s_pk:
                raise RemoteProtocolError(f"shares of client {u}'s mask key do not match its public key", peer=u)
            for v in sorted(self._graph[u] & alive):
                # v derived it with the terms digest it reported (all equal: checked when the stage closed).
                seed = pairwise_seed(sk, self._adv[v].s_pk, round_id=self._round, me=u, peer=v, terms=self._terms[v])
                # v added the pair mask when v < u and subtracted it when v > u: undo that.
                masks.append((seed, "sub" if v < u else "add"))
        self.unmask_prg_expansions = len(masks)
        # In place: every secret was checked above, so this cannot fail half-way.
        acc = prg.add_masks_into(self._acc, masks, ring)
        return ring.reduce(acc)

    def _recover(self, owner: int, shares: dict[int, int]) -> bytes:
        """Rebuild one secret from t of its shares, reusing holder sets seen before.

        Every secret is rebuilt from a holder set already used when one fits, so
        the cached Lagrange weights are reused; a new set alternates between the
        t smallest and the t largest available holders, so that on the complete
        graph two sets serve every client.
        """
        chosen = next((hs for hs in self._holder_sets if all(x in shares for x in hs)), None)
        if chosen is None:
            xs = sorted(shares)
            chosen = tuple(xs[: self._t] if len(self._holder_sets) % 2 == 0 else xs[-self._t :])
            self._holder_sets.append(chosen)
        try:
            return shamir.reconstruct({x: shares[x] for x in chosen if x in shares}, self._t)
        except PrimitiveError as exc:
            raise RemoteProtocolError(f"shares of client {owner}'s secret are invalid: {exc}", peer=owner) from exc

    _HANDLERS: dict[Stage, Callable[[MaskingServer, int, bytes], object]] = {
        Stage.ADVERTISE_KEYS: _on_advertise,
        Stage.SHARE_KEYS: _on_share_keys,
        Stage.MASKED_INPUT: _on_masked_input,
        Stage.CONSISTENCY_CHECK: _on_consistency,
        Stage.UNMASKING: _on_unmasking,
    }
    _CLOSERS: dict[ServerState, Callable[[MaskingServer, frozenset[int]], list[Message]]] = {
        ServerState.ADVERTISE: _close_advertise,
        ServerState.SHARE: _close_share_keys,
        ServerState.MASKED: _close_masked_input,
        ServerState.CONSISTENCY: _close_consistency,
        ServerState.UNMASK: _close_unmasking,
    }
