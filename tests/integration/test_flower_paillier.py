"""Paillier on Flower (fl_core.transport.flower.paillier): key-holder SuperNodes, key pinning, routed decryption.

The oracle is the in-process round loop with the same key held in-process: the Flower
driver, the client-node handlers and the key-holder handler, talking over a scripted grid
(no processes), must commit the same sums and the same model, with a single key holder
and with a 2-of-3 threshold key one of whose decryptors stays silent.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_flower import (  # noqa: F401 (autouse fixture)
    _flower_task_identity,
    _node,
    _opening,
    _own_terms,
    _ScriptedGrid,
    _small_cfg,
)

pytestmark = [
    pytest.mark.flower,
    pytest.mark.skipif(
        importlib.util.find_spec("flwr") is None, reason="flwr is not installed: pip install 'privagg[flower]'"
    ),
]

KEY_BITS = 512
CLIENT_BASE = 100
HOLDER_BASE = 200


@pytest.fixture(scope="module")
def single_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fl_core.commands.keygen import keygen_paillier

    out = tmp_path_factory.mktemp("single")
    keygen_paillier(out, key_bits=KEY_BITS, insecure_small_key_for_tests=True)
    return out


@pytest.fixture(scope="module")
def threshold_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fl_core.commands.keygen import keygen_paillier

    out = tmp_path_factory.mktemp("threshold")
    keygen_paillier(out, key_bits=KEY_BITS, threshold=(2, 3), insecure_small_key_for_tests=True)
    return out


def _fingerprint(keydir: Path) -> str:
    from fl_core.commands.keygen import PUBLIC_KEY
    from secagg.paillier import load_public_key, public_key_sha256

    return public_key_sha256(load_public_key((keydir / PUBLIC_KEY).read_bytes()))


class _Nodes:
    """SuperNodes simulated in one process: each keeps its Flower state between messages.

    ``configs``: Flower node id -> node config; ``silent``: node id -> packet stages it ignores.
    Dispatch mirrors the ClientApp's handlers (hello by role, decrypt on key holders, the rest
    through ``handle_packet`` with the record-DP accountant saved as soon as training charged it).
    """

    def __init__(self, configs: Mapping[int, Mapping[str, Any]], silent: Mapping[int, set[str]] | None = None):
        from fl_core.transport.flower.client import NodeState
        from fl_core.transport.flower.paillier import HolderState

        self.configs = dict(configs)
        self.silent = dict(silent or {})
        self.states: dict[int, Any] = {n: NodeState() for n in configs}
        self.holder_states: dict[int, Any] = {n: HolderState() for n in configs}
        self.errors: list[tuple[int, str, Exception]] = []
        self.seen: list[tuple[int, str]] = []

    def __call__(self, node: int, content: Any) -> Any:
        from dataclasses import replace

        from fl_core.transport.flower.client import handle_hello, handle_packet
        from fl_core.transport.flower.codec import decode_packet, encode_packet
        from fl_core.transport.flower.paillier import HOLDER_ROLE, handle_decrypt, handle_holder_hello, node_role

        packet = decode_packet(content)
        self.seen.append((node, packet.stage))
        if packet.stage in self.silent.get(node, set()):
            return None
        cfg = self.configs[node]
        try:
            if packet.stage == "hello":
                holder = node_role(cfg) == HOLDER_ROLE
                return encode_packet(handle_holder_hello(cfg) if holder else handle_hello(cfg))
            if packet.stage == "decrypt":
                reply, self.holder_states[node] = handle_decrypt(packet, cfg, self.holder_states[node])
                return encode_packet(reply)

            def keep(record: Any) -> None:
                self.states[node] = replace(self.states[node], record=record)

            reply, self.states[node] = handle_packet(packet, cfg, self.states[node], on_record=keep)
            return encode_packet(reply)
        except Exception as exc:  # a ClientApp exception becomes a Flower error reply
            self.errors.append((node, packet.stage, exc))
            return f"{type(exc).__name__}: {exc}"


def _configs(
    clients: int, holder_files: list[Path], *, client_extra: Mapping[int, Mapping[str, Any]] | None = None
) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    for c in range(1, clients + 1):
        out[CLIENT_BASE + c] = _node(c, insecure_small_key_for_tests=True)
        out[CLIENT_BASE + c].update((client_extra or {}).get(c, {}))
    for i, f in enumerate(holder_files, start=1):
        out[HOLDER_BASE + i] = {"privagg-role": "key-holder", "paillier-key-file": str(f)}
    return out


def _options(**kw: Any) -> Any:
    from fl_core.transport.flower.options import FlowerOptions

    base = dict(
        stage_timeout=1.0,
        train_timeout=60.0,
        connect_timeout=5.0,
        poll_interval=0.01,
        insecure_small_key_for_tests=True,
    )
    base.update(kw)
    return FlowerOptions(**base)


def _in_process_factory(keydir: Path) -> Any:
    """The reference backend: the same key, its holder(s) in-process."""
    from dp.randomness import SeededRandomSource
    from fl_core.commands.keygen import PRIVATE_KEY, THRESHOLD_PARAMS, share_file
    from secagg.paillier import (
        KeyHolder,
        PaillierSecureSum,
        ThresholdDecryptor,
        load_key_share,
        load_private_key,
        load_threshold_params,
    )

    def build(req: Any) -> Any:
        common = dict(
            max_clients=req.max_clients,
            min_survivors=int(req.options.get("min_survivors") or 1),
            insecure_small_key_for_tests=True,
        )
        if (keydir / PRIVATE_KEY).exists():
            sk = load_private_key((keydir / PRIVATE_KEY).read_bytes())
            return PaillierSecureSum(req.ring, req.dim, public_key=sk.public_key, key_holder=KeyHolder(sk), **common)
        params = load_threshold_params((keydir / THRESHOLD_PARAMS).read_bytes())
        decs = [
            ThresholdDecryptor(load_key_share((keydir / share_file(i)).read_bytes()), rng=SeededRandomSource(f"d{i}"))
            for i in range(1, params.parties + 1)
        ]
        return PaillierSecureSum(
            req.ring, req.dim, public_key=params.public_key, decryptors=decs, threshold_params=params, **common
        )

    return build


def _reference(cfg: Any, keydir: Path, tmp_path: Path, rounds: int) -> tuple[Any, dict[int, Any]]:
    from fl_core.backend_paillier import keys_from
    from fl_core.runner import build_federation
    from fl_core.transport import InProcessTransport

    with keys_from(_in_process_factory(keydir)):
        ref, _, _ = build_federation(cfg.replace(ledger=str(tmp_path / "ref.jsonl")))
    sums: dict[int, Any] = {}

    class Recording(InProcessTransport):
        def run(self, secure_sum: Any, inputs: Any, **kw: Any) -> Any:
            outcome = super().run(secure_sum, inputs, **kw)
            sums[kw["round_id"]] = outcome.total
            return outcome

    ref.transport = Recording()
    ref.fit(rounds)
    return ref, sums


def _paillier_cfg(**kw: Any) -> Any:
    base: dict[str, Any] = dict(
        secure_sum="paillier", dp="distributed", noise_multiplier=1.0, clip=1.0, rounds=2, server_momentum=0.0
    )
    base.update(kw)
    return _small_cfg(**base)


def _run(cfg: Any, nodes: _Nodes, tmp_path: Path, **opts: Any) -> Any:
    from fl_core.transport.flower.server import run_privagg

    grid = _ScriptedGrid(nodes, nodes=sorted(nodes.configs))
    return run_privagg(grid, cfg.replace(ledger=str(tmp_path / "flower.jsonl")), _options(**opts))


def _decrypt_stages(report: Any) -> list[list[int]]:
    return [s["answered"] for tr in report.traces for s in tr.stages if s["stage"] == "decrypt"]


def test_paillier_round_with_a_single_key_holder_equals_the_in_process_run(single_key: Path, tmp_path: Path) -> None:
    from fl_core.commands.keygen import PRIVATE_KEY

    cfg = _paillier_cfg()
    ref, ref_sums = _reference(cfg, single_key, tmp_path, 2)
    # Client 3's operator pins the key: it is the holders' key, so it takes part.
    nodes = _Nodes(
        _configs(
            3, [single_key / PRIVATE_KEY], client_extra={3: {"paillier-public-key-sha256": _fingerprint(single_key)}}
        )
    )
    report = _run(cfg, nodes, tmp_path)
    assert not nodes.errors, nodes.errors
    assert np.array_equal(report.final, ref.codec.flatten(ref.model))
    assert [r.epsilon for r in report.results] == [r.epsilon for r in ref.history]
    for r in (1, 2):
        assert np.array_equal(report.totals[r], ref_sums[r])
    assert _decrypt_stages(report) == [[-1], [-1]]
    assert all(s["stage"] != "advertise-keys (ahead)" for tr in report.traces for s in tr.stages)  # no ahead
    summary = report.to_json()
    assert summary["key_holders"] == {
        "public_key_sha256": _fingerprint(single_key),
        "key_bits": KEY_BITS,
        "threshold": None,
        "holders": [-1],
    }
    # Client nodes got the public key only; the holder node got one request per round.
    assert [s for n, s in nodes.seen if n == HOLDER_BASE + 1] == ["hello", "decrypt", "decrypt"]


def test_threshold_2_of_3_with_a_silent_decryptor_equals_the_in_process_run(
    threshold_key: Path, tmp_path: Path
) -> None:
    from fl_core.commands.keygen import share_file

    cfg = _paillier_cfg(dp="central")
    ref, ref_sums = _reference(cfg, threshold_key, tmp_path, 2)
    files = [threshold_key / share_file(i) for i in (1, 2, 3)]
    nodes = _Nodes(_configs(3, files), silent={HOLDER_BASE + 1: {"decrypt"}})  # decryptor 1 never answers
    report = _run(cfg, nodes, tmp_path)
    assert not nodes.errors, nodes.errors
    assert np.array_equal(report.final, ref.codec.flatten(ref.model))
    assert [r.epsilon for r in report.results] == [r.epsilon for r in ref.history]
    for r in (1, 2):
        assert np.array_equal(report.totals[r], ref_sums[r])
    assert _decrypt_stages(report) == [[-3, -2], [-3, -2]]  # one exchange per round, decryptor 1 missing
    assert report.to_json()["key_holders"]["threshold"] == "2/3"


def test_threshold_round_aborts_when_more_than_m_minus_t_decryptors_are_silent(
    threshold_key: Path, tmp_path: Path
) -> None:
    from fl_core.commands.keygen import share_file
    from fl_core.errors import RoundFailedError, TooManyAbortsError
    from secagg.paillier import TooFewDecryptionSharesError

    files = [threshold_key / share_file(i) for i in (1, 2, 3)]
    nodes = _Nodes(_configs(3, files), silent={HOLDER_BASE + 1: {"decrypt"}, HOLDER_BASE + 3: {"decrypt"}})
    # The holders decrypt one sum per round id, so a round that aborted after its decryption request
    # is not retried (the retry could not be decrypted): the run stops at once, saying why.
    with pytest.raises(RoundFailedError, match="round 1 aborted, model unchanged.*not retried") as info:
        _run(_paillier_cfg(dp="none", rounds=1), nodes, tmp_path)
    assert not isinstance(info.value, TooManyAbortsError)
    assert isinstance(info.value.__cause__.__cause__, TooFewDecryptionSharesError)


def test_a_pinned_node_refuses_another_key_before_training(
    single_key: Path, threshold_key: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fl_core.transport.flower.client as client_mod
    from fl_core.backend_paillier import keys_from
    from fl_core.commands.keygen import PRIVATE_KEY, PUBLIC_KEY
    from fl_core.transport.flower.client import ClientStateError, NodePolicyError, handle_round
    from fl_core.transport.flower.codec import FlowerCodecError, StagePacket
    from fl_core.transport.flower.paillier import KeyPinError

    cfg = _paillier_cfg(dp="none", rounds=1)
    with keys_from(_in_process_factory(single_key)):
        _, base = _opening(cfg, 1)
    server_key = (single_key / PUBLIC_KEY).read_bytes()  # a key the pinning node was not told of
    opening = StagePacket(1, "train", (), {**base.fields, "paillier_public_key": server_key})
    garbled = StagePacket(1, "train", (), {**base.fields, "paillier_public_key": b"junk"})

    def no_training(*a: Any, **k: Any) -> Any:
        raise AssertionError("the node trained before checking the key")

    with monkeypatch.context() as mp:
        mp.setattr(client_mod, "_client_build", no_training)
        pinned = _node(1, insecure_small_key_for_tests=True)
        pinned["paillier-public-key-sha256"] = _fingerprint(threshold_key)
        with pytest.raises(KeyPinError, match="this node pins"):
            handle_round(opening, pinned)
        with pytest.raises(NodePolicyError, match="512-bit Paillier key"):  # no test-key opt-in: the size floor
            handle_round(opening, _node(1))
        with pytest.raises(FlowerCodecError, match="unusable Paillier public key"):
            handle_round(garbled, _node(1))
        with pytest.raises(FlowerCodecError, match="lacks 'paillier_public_key'"):
            handle_round(base, _node(1))
        from secagg import Message

        carrying = StagePacket(1, "train", (Message(0, 1, 1, "x", b""),), opening.fields)
        with pytest.raises(ClientStateError, match="carries protocol messages"):
            handle_round(carrying, _node(1, insecure_small_key_for_tests=True))

    # In a run, the pinned node whose pin does not match drops out; the others' sum goes through.
    nodes = _Nodes(
        _configs(
            3, [single_key / PRIVATE_KEY], client_extra={2: {"paillier-public-key-sha256": _fingerprint(threshold_key)}}
        )
    )
    report = _run(cfg, nodes, tmp_path)
    assert [(n, s, type(e).__name__) for n, s, e in nodes.errors] == [(CLIENT_BASE + 2, "train", "KeyPinError")]
    assert report.results[0].survivors == (1, 3)


def test_node_policy_checks_the_pin_format() -> None:
    from fl_core.errors import ConfigError
    from fl_core.transport.flower.client import check_node_policy

    check_node_policy(_small_cfg(), _node(1, paillier_public_key_sha256="AB" * 32))
    for bad in ("abc", "zz" * 32, 7):
        with pytest.raises(ConfigError, match="64-hex-digit SHA-256"):
            check_node_policy(_small_cfg(), _node(1, paillier_public_key_sha256=bad))


def test_key_holder_decrypts_once_per_round_and_checks_requests(single_key: Path) -> None:
    from fl_core.commands.keygen import PRIVATE_KEY
    from fl_core.transport.flower.codec import FlowerCodecError, StagePacket
    from fl_core.transport.flower.paillier import HolderState, client_public_key, handle_decrypt, handle_holder_hello
    from secagg import RemoteProtocolError, RingSpec
    from secagg.paillier import PaillierSecureSum

    cfg = {"privagg-role": "key-holder", "paillier-key-file": str(single_key / PRIVATE_KEY)}
    hello = handle_holder_hello(cfg)
    pk = client_public_key(hello.fields, {"insecure-small-key-for-tests": True})
    assert hello.fields["holder"] == -1 and hello.fields["paillier_threshold_params"] == b""
    assert (single_key / PRIVATE_KEY).read_bytes()[8:] not in b"".join(
        v for v in hello.fields.values() if isinstance(v, bytes)
    )
    requests: list[Any] = []
    state = HolderState()

    def route(msg: Any) -> Any:
        nonlocal state
        requests.append(msg)
        reply, state = handle_decrypt(StagePacket(msg.round_id, "decrypt", (msg,), {"count": count}), cfg, state)
        state = HolderState.from_record(state.to_record())  # through the Flower state, as between processes
        return list(reply.messages)

    ss = PaillierSecureSum.from_public_key(
        RingSpec(16), 4, public_key=pk, exchange=route, max_clients=3, insecure_small_key_for_tests=True
    )
    count = ss.plan.plaintexts
    server = ss.server([1, 2], 7)
    from dp.randomness import SeededRandomSource

    for c in (1, 2):
        for m in ss.client(c, 7, SeededRandomSource(f"c{c}")).start(np.full(4, c, dtype=np.uint16)):
            server.receive(m)
    assert np.array_equal(server.result(), np.full(4, 3)) and state.served == (7,)
    (req,) = requests
    with pytest.raises(RemoteProtocolError, match="second decryption request in one round is refused"):
        handle_decrypt(StagePacket(7, "decrypt", (req,), {"count": count}), cfg, state)
    for bad, match in [
        (StagePacket(7, "decrypt", (req, req), {"count": count}), "carries one message, got 2"),
        (StagePacket(8, "decrypt", (req,), {"count": count}), "request of round 7 in a packet of round 8"),
        (StagePacket(7, "decrypt", (req,), {}), "positive 'count'"),
    ]:
        with pytest.raises(FlowerCodecError, match=match):
            handle_decrypt(bad, cfg, HolderState())


def test_key_holder_configuration_errors(single_key: Path, tmp_path: Path) -> None:
    from fl_core.commands.keygen import PRIVATE_KEY, PUBLIC_KEY
    from fl_core.errors import ConfigError
    from fl_core.transport.flower.paillier import load_holder_key, node_role

    assert node_role({}) == "client" and node_role({"privagg-role": "key-holder"}) == "key-holder"
    with pytest.raises(ConfigError, match="privagg-role must be 'client' or 'key-holder'"):
        node_role({"privagg-role": "server"})
    with pytest.raises(ConfigError, match="needs paillier-key-file"):
        load_holder_key({"privagg-role": "key-holder"})
    with pytest.raises(ConfigError, match="cannot read the Paillier key file"):
        load_holder_key({"paillier-key-file": str(tmp_path / "missing.key")})
    loose = tmp_path / "loose.key"
    loose.write_bytes((single_key / PRIVATE_KEY).read_bytes())
    os.chmod(loose, 0o644)
    with pytest.raises(ConfigError, match="readable by group or others .* chmod 600"):
        load_holder_key({"paillier-key-file": str(loose)})
    public = tmp_path / "public.key"
    public.write_bytes((single_key / PUBLIC_KEY).read_bytes())
    os.chmod(public, 0o600)
    with pytest.raises(ConfigError, match="neither a Paillier private key nor a threshold key share"):
        load_holder_key({"paillier-key-file": str(public)})
    with pytest.raises(ConfigError, match="insecure-small-key-for-tests must be true or false"):
        from fl_core.transport.flower.paillier import client_public_key, handle_holder_hello

        hello = handle_holder_hello({"paillier-key-file": str(single_key / PRIVATE_KEY)})
        client_public_key(hello.fields, {"insecure-small-key-for-tests": "yes"})


def test_holders_must_publish_one_key(single_key: Path, threshold_key: Path) -> None:
    from fl_core.commands.keygen import PRIVATE_KEY, share_file
    from fl_core.transport.flower.paillier import KeyHolderSetupError, handle_holder_hello, key_holders_from

    def hello(f: Path) -> dict[str, Any]:
        return dict(handle_holder_hello({"paillier-key-file": str(f)}).fields)

    single = hello(single_key / PRIVATE_KEY)
    shares = [hello(threshold_key / share_file(i)) for i in (1, 2, 3)]
    assert key_holders_from({1: {"client": 1}}) is None
    got = key_holders_from({1: {"client": 1}, 7: shares[2], 8: shares[0]})
    assert got is not None and dict(got.nodes) == {-3: 7, -1: 8} and (got.needed, got.expected) == (2, 3)
    with pytest.raises(KeyHolderSetupError, match="publish 2 different keys"):
        key_holders_from({7: single, 8: shares[0]})
    with pytest.raises(KeyHolderSetupError, match="both hold key share 2"):
        key_holders_from({7: shares[1], 8: shares[1]})
    with pytest.raises(KeyHolderSetupError, match="both hold the private key"):
        key_holders_from({7: single, 8: single})
    with pytest.raises(KeyHolderSetupError, match=r"claims holder id -4; ids are -1..-3"):
        key_holders_from({7: {**shares[0], "holder": -4}})
    with pytest.raises(KeyHolderSetupError, match="unusable key material"):
        key_holders_from({7: {**single, "paillier_public_key": b"junk"}})
    with pytest.raises(KeyHolderSetupError, match="threshold parameters belong to another public key"):
        key_holders_from({7: {**shares[0], "paillier_public_key": single["paillier_public_key"]}})


def test_discovery_needs_the_key_holders(single_key: Path, threshold_key: Path) -> None:
    from fl_core.commands.keygen import PRIVATE_KEY, share_file
    from fl_core.transport.flower.server import GridLink, NodeUnavailableError, discover_nodes, discover_roster

    def link(configs: dict[int, dict[str, Any]], silent: dict[int, set[str]] | None = None) -> Any:
        return GridLink(_ScriptedGrid(_Nodes(configs, silent), nodes=sorted(configs)), poll_interval=0.01)

    with_holder = _configs(2, [single_key / PRIVATE_KEY])
    assert discover_nodes(link(with_holder), 2, timeout=2) == {1: 101, 2: 102}  # a holder is never a client
    clients, holders = discover_roster(link(with_holder), 2, timeout=2, key_holders=True)
    assert clients == {1: 101, 2: 102} and holders is not None and dict(holders.nodes) == {-1: 201}
    with pytest.raises(NodeUnavailableError, match="no Paillier key-holder SuperNode answered"):
        discover_roster(link(with_holder, {201: {"hello"}}), 2, timeout=1, key_holders=True)
    with pytest.raises(NodeUnavailableError, match="the run needs 2 clients and the Paillier key holders"):
        discover_roster(link(_configs(2, [])), 2, timeout=1, key_holders=True)
    one_share = _configs(2, [threshold_key / share_file(1)])
    with pytest.raises(NodeUnavailableError, match="1 of the key's 3 key holders answered, a decryption needs 2"):
        discover_roster(link(one_share), 2, timeout=1, key_holders=True)
    two_shares = _configs(2, [threshold_key / share_file(1), threshold_key / share_file(3)])
    _, holders = discover_roster(link(two_shares), 2, timeout=1, key_holders=True)  # m - t = 1 may be missing
    assert holders is not None and sorted(holders.nodes) == [-3, -1]


def test_server_refuses_a_test_size_key_unless_the_run_allows_it(single_key: Path, tmp_path: Path) -> None:
    from fl_core.commands.keygen import PRIVATE_KEY
    from fl_core.errors import ConfigError

    nodes = _Nodes(_configs(3, [single_key / PRIVATE_KEY]))
    with pytest.raises(ConfigError, match="below the 2048-bit minimum.*insecure-small-key-for-tests=true"):
        _run(_paillier_cfg(dp="none", rounds=1), nodes, tmp_path, insecure_small_key_for_tests=False)


def test_no_paillier_stage_runs_ahead_or_after_the_opening_on_a_node() -> None:
    from fl_core.transport.flower.ahead import AheadError, AheadParams, advance
    from fl_core.transport.flower.options import config_to_json
    from fl_core.transport.flower.sessions import secure_sum_for
    from secagg.paillier import PaillierSecureSum

    cfg = _paillier_cfg()
    with pytest.raises(AheadError, match="runs only in a round's opening message"):
        advance(AheadParams(2, config_to_json(cfg), 32, 650, 3, 3), (), 1, _node(1), None, terms=_own_terms)
    with pytest.raises(AheadError, match="runs only in a round's opening message"):
        secure_sum_for(cfg, 32, 650, 3, 3)
    from fl_core.transport.flower.ahead import supports_ahead

    assert not supports_ahead(PaillierSecureSum.__new__(PaillierSecureSum))  # input_stage 0: the server never asks


def test_client_app_dispatches_by_role(single_key: Path) -> None:
    """The ClientApp with privagg's mod: a key holder answers hello with its key and refuses training, a client
    refuses decrypt (each refusal is a reply naming the reason), and other messages reach the app's own handler."""
    from flwr.app import ConfigRecord, Context, Message, RecordDict
    from flwr.clientapp import ClientApp

    from fl_core.commands.keygen import PRIVATE_KEY
    from fl_core.transport.flower import privagg_mod
    from fl_core.transport.flower.codec import ERROR_FIELD, MESSAGE_TYPE, StagePacket, decode_packet, encode_packet

    app = ClientApp(mods=[privagg_mod()])
    own: list[Any] = []

    @app.train()
    def train(msg: Any, context: Any) -> Any:  # the app's own handler
        own.append(msg)
        return Message(RecordDict({"echo": ConfigRecord({"ok": True})}), reply_to=msg)

    holder = Context(
        1, 5, {"privagg-role": "key-holder", "paillier-key-file": str(single_key / PRIVATE_KEY)}, RecordDict(), {}
    )
    client = Context(1, 6, _node(1), RecordDict(), {})

    def call(ctx: Any, packet: Any) -> Any:
        msg = Message(encode_packet(packet), dst_node_id=ctx.node_id, message_type=MESSAGE_TYPE)
        return decode_packet(app(msg, ctx).content)

    assert call(holder, StagePacket(0, "hello")).fields["role"] == "key-holder"
    assert "is a Paillier key holder" in call(holder, StagePacket(1, "train")).fields[ERROR_FIELD]
    assert "is a client, not a Paillier key holder" in call(client, StagePacket(1, "decrypt")).fields[ERROR_FIELD]
    assert call(client, StagePacket(0, "hello")).fields == {"client": 1}
    assert own == []
    plain = Message(RecordDict({"config": ConfigRecord({"lr": 0.1})}), dst_node_id=6, message_type=MESSAGE_TYPE)
    assert app(plain, client).content.config_records["echo"]["ok"] is True
    assert len(own) == 1


# -- across real processes: SuperLink, client SuperNodes and a key-holder SuperNode -------------------------


def _flower_cli_available() -> bool:
    import shutil

    return all(shutil.which(x) for x in ("flower-superlink", "flower-supernode", "flwr"))


@pytest.mark.skipif(not _flower_cli_available(), reason="the Flower CLI (flower-superlink, flwr) is not on PATH")
def test_two_rounds_paillier_with_a_key_holder_supernode(single_key: Path, tmp_path: Path) -> None:
    """Three client SuperNodes pinning the key and one key-holder SuperNode: two rounds equal the in-process run."""
    import json

    from test_flower import APP, _group_alive

    from fl_core.commands.keygen import PRIVATE_KEY
    from fl_core.transport.flower.local import LocalDeployment

    run = {
        "clients": 3,
        "per-round": 3,
        "rounds": 2,
        "model": "logreg",
        "local-epochs": 1,
        "secure-sum": "paillier",
        "dp": "distributed",
        "noise-multiplier": 1.0,
        "clip": 1.0,
        "server-momentum": 0.0,
        "graph": "complete",
        "seed": 11,
        "threads": 1,
    }
    transport = {
        "ledger": str(tmp_path / "flower-ledger.jsonl"),
        "output-dir": str(tmp_path / "out"),
        "stage-timeout": 30.0,
        "train-timeout": 120.0,
        "connect-timeout": 60.0,
        "insecure-small-key-for-tests": True,
    }
    pin = {
        "paillier-public-key-sha256": _fingerprint(single_key),
        "insecure-small-key-for-tests": True,
        "allow-seeded-run": True,  # the run is seeded to compare with the in-process run
    }
    with LocalDeployment(
        3, workdir=tmp_path / "deploy", key_holders=[single_key / PRIVATE_KEY], node_config=pin
    ) as dep:
        pgids = [p.popen.pid for p in dep.procs]
        try:
            dep.run(APP, {**run, **transport}, timeout=240)
        finally:
            logs = "\n".join(f"--- {n}\n{t[-2000:]}" for n, t in dep.logs() if "error" in t.lower())
        assert (tmp_path / "out" / "summary.json").exists(), f"the ServerApp did not finish\n{logs}"
    for pgid in pgids:  # every process group started here is gone
        assert _wait_until(lambda pgid=pgid: not _group_alive(pgid)), f"process group {pgid} still alive"

    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["key_holders"]["holders"] == [-1] and summary["key_holders"]["key_bits"] == KEY_BITS
    for r in summary["rounds"]:
        stages = {s["stage"]: s["answered"] for s in r["stages"]}
        assert stages == {"train": [1, 2, 3], "decrypt": [-1]} and r["survivors"] == [1, 2, 3] and not r["rejected"]
    cfg = _small_cfg(**{k.replace("-", "_"): v for k, v in run.items()})
    ref, ref_sums = _reference(cfg, single_key, tmp_path, 2)
    for r in (1, 2):
        assert np.array_equal(np.load(tmp_path / "out" / f"sum-round-{r}.npy"), ref_sums[r])
    assert np.array_equal(np.load(tmp_path / "out" / "final.npy"), ref.codec.flatten(ref.model))
    assert [r["epsilon"] for r in summary["rounds"]] == [r.epsilon for r in ref.history]


def _wait_until(cond: Any, timeout: float = 10.0) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.2)
    return bool(cond())


def test_example_app_declares_every_run_config_key() -> None:
    """Flower refuses a --run-config key its app does not declare: the example must declare them all."""
    import sys
    from dataclasses import fields

    from test_flower import APP

    from fl_core.config import RunConfig
    from fl_core.transport.flower.options import FlowerOptions, parse_run_config

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    declared = tomllib.loads((APP / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    known = {f.name.replace("_", "-") for f in (*fields(RunConfig), *fields(FlowerOptions))}
    assert set(declared) == known
    parse_run_config(declared)


def test_local_deployment_refuses_a_missing_key_file(tmp_path: Path) -> None:
    from fl_core.transport.flower.local import DeploymentError, LocalDeployment

    dep = LocalDeployment(0, workdir=tmp_path)
    with pytest.raises(
        DeploymentError, match=r"nothing.key does not exist \(write it with `privagg keygen paillier`\)"
    ):
        dep.start_key_holder(1, tmp_path / "nothing.key")
