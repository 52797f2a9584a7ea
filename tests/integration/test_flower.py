"""privagg across real Flower processes: codec, options, client and driver checks, and a two-round run.

The end-to-end test starts ``flower-superlink --insecure`` and five ``flower-supernode``
processes on 127.0.0.1, runs two rounds of masking SecAgg with distributed DP, kills
one SuperNode right after the masked-input stage of round 2 (with key setup ahead, round 2's
masked inputs travel in its opening exchange, ``train``), and checks the round
still completes with the exact sum of the survivors, that the final weights equal
the in-process simulation with the same seeds and the same dropout, and that the
ledger written on the server audits. Every process it starts is stopped.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from secagg import Message

pytestmark = [
    pytest.mark.flower,
    pytest.mark.skipif(
        importlib.util.find_spec("flwr") is None, reason="flwr is not installed: pip install 'privagg[flower]'"
    ),
]

REPO = Path(__file__).resolve().parents[2]
PRIVAGG = [sys.executable, "-c", "import sys; from fl_core.cli import main; sys.argv[0] = 'privagg'; main()"]
APP = REPO / "examples" / "flower"


@pytest.fixture(autouse=True)
def _flower_task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower's Message constructor reads the run/node/task id of the current ServerApp task."""
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)


# -- codec ----------------------------------------------------------------------------------------

messages = st.builds(
    Message,
    st.integers(0, 2**31),
    st.integers(0, 2**31),
    st.integers(0, 2**31),
    st.sampled_from(["advertise-keys", "share-keys", "masked-input", "x"]),
    st.binary(max_size=64),
)


@given(round_id=st.integers(0, 2**31), stage=st.text(min_size=1, max_size=12), msgs=st.lists(messages, max_size=6))
def test_codec_round_trips_messages_unchanged(round_id: int, stage: str, msgs: list[Any]) -> None:
    from fl_core.transport.flower.codec import StagePacket, decode_packet, encode_packet

    packet = StagePacket(round_id, stage, tuple(msgs), {"clipped": True, "blob": b"\x00\x01"})
    back = decode_packet(encode_packet(packet), round_id=round_id, stage=stage)
    assert back.messages == tuple(msgs)
    assert back.fields == {"clipped": True, "blob": b"\x00\x01"}
    assert (back.round_id, back.stage) == (round_id, stage)


def test_codec_refuses_wrong_round_stage_and_version() -> None:
    from flwr.app import ConfigRecord, RecordDict

    from fl_core.transport.flower.codec import (
        RECORD,
        FlowerCodecError,
        StagePacket,
        decode_packet,
        encode_packet,
    )

    content = encode_packet(StagePacket(3, "share-keys"))
    with pytest.raises(FlowerCodecError, match="round 3 received in round 4"):
        decode_packet(content, round_id=4)
    with pytest.raises(FlowerCodecError, match="stage 'share-keys' received in stage 'unmasking'"):
        decode_packet(content, stage="unmasking")
    content.config_records[RECORD]["version"] = 99
    with pytest.raises(FlowerCodecError, match="wire version 99"):
        decode_packet(content)
    with pytest.raises(FlowerCodecError, match="no 'privagg' config record"):
        decode_packet(RecordDict({"other": ConfigRecord({"a": 1})}))
    bad = encode_packet(StagePacket(1, "s"))
    bad.config_records[RECORD]["payload"] = [b"x"]
    with pytest.raises(FlowerCodecError, match="different lengths"):
        decode_packet(bad)
    bad = encode_packet(StagePacket(1, "s"))
    del bad.config_records[RECORD]["round"]
    with pytest.raises(FlowerCodecError, match="lacks its round"):
        decode_packet(bad)
    with pytest.raises(FlowerCodecError, match="reserved names"):
        encode_packet(StagePacket(1, "s", (), {"payload": b""}))


def test_codec_refuses_mistyped_message_columns() -> None:
    from fl_core.transport.flower.codec import RECORD, FlowerCodecError, StagePacket, decode_packet, encode_packet
    from secagg import Message

    bad = encode_packet(StagePacket(1, "s", (Message(1, 0, 1, "s", b"p"),)))
    bad.config_records[RECORD]["sender"] = ["one"]
    with pytest.raises(FlowerCodecError, match="non-integer"):
        decode_packet(bad)
    bad = encode_packet(StagePacket(1, "s", (Message(1, 0, 1, "s", b"p"),)))
    bad.config_records[RECORD]["payload"] = ["text"]
    with pytest.raises(FlowerCodecError, match="non-bytes"):
        decode_packet(bad)


@given(st.lists(st.integers(0, 2**32 - 1), max_size=50))
def test_vector_bytes_round_trip(values: list[int]) -> None:
    from fl_core.transport.flower.codec import vector_from_bytes, vector_to_bytes

    v = np.array(values, dtype=np.uint32)
    assert np.array_equal(vector_from_bytes(vector_to_bytes(v), np.uint32, len(values)), v)


def test_vector_from_bytes_refuses_wrong_length() -> None:
    from fl_core.transport.flower.codec import FlowerCodecError, vector_from_bytes

    with pytest.raises(FlowerCodecError, match="not 3 elements of float32"):
        vector_from_bytes(b"\x00" * 8, np.float32, 3)


# -- options ----------------------------------------------------------------------------------------


def test_run_config_parsing_and_errors() -> None:
    from fl_core.errors import ConfigError
    from fl_core.transport.flower.options import config_from_json, config_to_json, parse_run_config

    cfg, opts = parse_run_config(
        {
            "clients": 5,
            "per-round": 5,
            "sampling-rate": "",
            "secure-sum": "masking",
            "clip": 1,
            "seed": 3.0,
            "privagg.dp": "distributed",
            "stage-timeout": 5,
            "output-dir": "out",
        }
    )
    assert (cfg.clients, cfg.per_round, cfg.sampling_rate, cfg.clip, cfg.seed, cfg.dp) == (
        5,
        5,
        None,
        1.0,
        3,
        "distributed",
    )
    assert (opts.stage_timeout, opts.output_dir) == (5.0, "out")
    assert config_from_json(config_to_json(cfg)) == cfg
    for bad, match in [
        ({"nonsense": 1}, "unknown run-config key 'nonsense'"),
        ({"clients": 2.5}, "clients must be an integer"),
        ({"clients": True}, "clients must be an integer"),
        ({"lr": "fast"}, "lr must be a number"),
        ({"dp": 3}, "dp must be a string"),
        ({"stage-timeout": 0}, "stage-timeout must be > 0"),
        ({"mode": "magic"}, "mode must be privagg or fedavg"),
        ({"pause-after": "masked-input", "resume-file": "f"}, "ROUND:STAGE"),
        ({"pause-after": "2:masked-input"}, "needs resume-file"),
    ]:
        with pytest.raises(ConfigError, match=match):
            parse_run_config(bad)
    with pytest.raises(ConfigError, match="not JSON"):
        config_from_json("{")
    with pytest.raises(ConfigError, match="unknown run options"):
        config_from_json('{"warp": 9}')


def test_bool_option_must_be_bool() -> None:
    from fl_core.errors import ConfigError
    from fl_core.transport.flower.options import _coerce

    assert _coerce("x", True, False, "bool") is True
    with pytest.raises(ConfigError, match="x must be true or false"):
        _coerce("x", "yes", False, "bool")


# -- the client handler, without Flower processes ---------------------------------------------------------


def _small_cfg(**kw: Any) -> Any:
    from fl_core.config import RunConfig

    base = dict(
        clients=3,
        per_round=3,
        rounds=1,
        secure_sum="masking",
        graph="complete",
        dp="none",
        seed=5,
        model="logreg",
        local_epochs=1,
    )
    base.update(kw)
    return RunConfig(**base)


def _node(c: int, **floor: Any) -> dict[str, Any]:
    """Node config of client ``c`` (partition-id c-1); these runs are seeded, so the node opts in to that."""
    return {"partition-id": c - 1, "allow-seeded-run": True, **{k.replace("_", "-"): v for k, v in floor.items()}}


def _own_terms(cfg: Any, floor: Any) -> Any:
    """The session terms a node derives from ``cfg`` with its own federation (what ``advance`` checks against)."""
    from fl_core.transport.flower.client import _client_federation
    from fl_core.transport.flower.policy import session_terms

    return session_terms(_client_federation(cfg), floor, cfg.dp)


def test_client_id_needs_partition_id() -> None:
    from fl_core.errors import ConfigError
    from fl_core.transport.flower.client import client_id_of, handle_hello

    assert client_id_of(_node(1)) == 1
    assert handle_hello({"partition-id": 4}).fields == {"client": 5}
    for bad in ({}, {"partition-id": "0"}, {"partition-id": -1}, {"partition-id": True}, None):
        with pytest.raises(ConfigError, match="partition-id"):
            client_id_of(bad)


def _opening(cfg: Any, client: int, r: int = 1) -> Any:
    from fl_core.runner import build_federation
    from fl_core.transport.flower.client import TRAIN_STAGE
    from fl_core.transport.flower.codec import StagePacket, vector_to_bytes
    from fl_core.transport.flower.options import config_to_json

    fed, _, _ = build_federation(cfg, open_ledger=False)
    g = fed.codec.flatten(fed.model)
    return fed, StagePacket(
        r,
        TRAIN_STAGE,
        (),
        {
            "config": config_to_json(cfg),
            "client": client,
            "global": vector_to_bytes(g),
            "dim": fed.dim,
            "clip": fed.privacy.clip_norm,
        },
    )


def test_client_handlers_reproduce_the_in_process_round() -> None:
    """Opening + replayed stages on 'nodes' give the same sum as the in-process pump (slow oracle)."""
    from fl_core.transport.flower.client import handle_round, handle_stage
    from fl_core.transport.flower.codec import StagePacket, decode_packet, encode_packet
    from secagg import run_round

    cfg = _small_cfg()
    fed, _ = _opening(cfg, 1)
    states: dict[int, Any] = {}
    server = fed.bound_secure_sum().server([1, 2, 3], 1)  # the honest server: bound to the terms it announces
    to_clients = []
    inputs = {}
    for c in (1, 2, 3):
        _, packet = _opening(cfg, c)
        reply, states[c] = handle_round(decode_packet(encode_packet(packet)), _node(c))
        inputs[c] = np.frombuffer(states[c].x, dtype=fed.plan.ring.dtype)
        for m in reply.messages:
            to_clients.extend(server.receive(m))
    while not server.done:
        batch, to_clients = to_clients, []
        for c in (1, 2, 3):
            mine = tuple(m for m in batch if m.recipient == c)
            reply, states[c] = handle_stage(StagePacket(1, mine[0].stage, mine), states[c])
            for m in reply.messages:
                to_clients.extend(server.receive(m))
    ref = run_round(fed.secure_sum, inputs, round_id=1, rng_for=lambda c: fed.secagg_rng(c, 1))
    assert np.array_equal(server.result(), ref.total)
    assert np.array_equal(server.result(), (inputs[1] + inputs[2] + inputs[3]).astype(fed.plan.ring.dtype))


def test_client_refuses_stage_of_another_round() -> None:
    from fl_core.transport.flower.client import ClientStateError, handle_round, handle_stage
    from fl_core.transport.flower.codec import StagePacket

    cfg = _small_cfg()
    _, packet = _opening(cfg, 2)
    _, state = handle_round(packet, _node(2))
    with pytest.raises(ClientStateError, match="holds no open round"):
        handle_stage(StagePacket(1, "share-keys"), None)
    with pytest.raises(ClientStateError, match="while this node is in round 1"):
        handle_stage(StagePacket(2, "share-keys"), state)
    with pytest.raises(ClientStateError, match="sent client 2's round to the node of client 1"):
        handle_round(packet, _node(1))


def test_opening_message_must_be_complete_and_match_the_model() -> None:
    from fl_core.errors import ConfigError
    from fl_core.transport.flower.client import handle_round
    from fl_core.transport.flower.codec import FlowerCodecError, StagePacket

    cfg = _small_cfg()
    _, packet = _opening(cfg, 1)
    with pytest.raises(FlowerCodecError, match="lacks 'global'"):
        handle_round(StagePacket(1, "train", (), {k: v for k, v in packet.fields.items() if k != "global"}), _node(1))
    with pytest.raises(ConfigError, match="different model"):
        handle_round(StagePacket(1, "train", (), {**packet.fields, "dim": 3}), _node(1))


# -- the server driver with a scripted grid -------------------------------------------------------------------


@dataclass
class _Meta:
    src_node_id: int
    reply_to_message_id: str


@dataclass
class _Reply:
    content: Any
    metadata: _Meta
    error: Any = None

    def has_error(self) -> bool:
        return self.error is not None


@dataclass
class _ScriptedGrid:
    """Answers each pushed message with ``script(node, content)`` (None: no answer)."""

    script: Any
    nodes: list[int] = field(default_factory=list)
    pending: dict[str, _Reply] = field(default_factory=dict)
    n: int = 0

    def get_node_ids(self) -> list[int]:
        return self.nodes

    def push_messages(self, msgs: list[Any]) -> list[str]:
        ids = []
        for msg in msgs:
            node, content = msg.metadata.dst_node_id, msg.content
            self.n += 1
            mid = f"m{self.n}"
            ans = self.script(node, content)
            if ans is not None:
                err = ans if isinstance(ans, str) else None
                self.pending[mid] = _Reply(
                    None if err else ans, _Meta(node, mid), error=(type("E", (), {"reason": err})() if err else None)
                )
            ids.append(mid)
        return ids

    def pull_messages(self, ids: list[str]) -> list[_Reply]:
        return [self.pending.pop(i) for i in ids if i in self.pending]


def test_driver_refuses_spoofed_sender_and_counts_silence_as_dropout() -> None:
    from fl_core.runner import build_federation
    from fl_core.transport.flower.client import handle_round, handle_stage
    from fl_core.transport.flower.codec import decode_packet, encode_packet
    from fl_core.transport.flower.options import FlowerOptions, config_to_json
    from fl_core.transport.flower.server import FlowerRoundDriver, GridLink

    cfg = _small_cfg(secure_sum="plain")
    fed, _, _ = build_federation(cfg)
    states: dict[int, Any] = {}

    def script(node: int, content: Any) -> Any:
        c = node - 100
        packet = decode_packet(content)
        if packet.stage == "train":
            reply, states[c] = handle_round(packet, _node(c))
        else:
            reply, states[c] = handle_stage(packet, states[c])
        if c == 2:  # client 2 claims to speak for client 1: refused, so it drops out
            from fl_core.transport.flower.codec import StagePacket
            from secagg import Message

            reply = StagePacket(
                reply.round_id,
                reply.stage,
                tuple(Message(1, m.recipient, m.round_id, m.stage, m.payload) for m in reply.messages),
            )
        if c == 3:
            return "node crashed"  # an error reply counts as no answer
        return encode_packet(reply)

    grid = _ScriptedGrid(script, nodes=[101, 102, 103])
    driver = FlowerRoundDriver(
        GridLink(grid, poll_interval=0.01),
        {1: 101, 2: 102, 3: 103},
        FlowerOptions(stage_timeout=0.5, train_timeout=5.0),
    )
    start = fed.begin_round()
    outcome, clipped, _sat, trace = driver.run(fed, start, fed.codec.flatten(fed.model), config_to_json(cfg))
    assert outcome.survivors == frozenset({1})
    assert any("another sender" in r for r in trace.rejected)
    x1 = np.frombuffer(states[1].x, dtype=fed.plan.ring.dtype)
    assert np.array_equal(outcome.total, x1)
    assert trace.stages[0]["answered"] == [1]


def test_discover_nodes_errors() -> None:
    from fl_core.transport.flower.codec import StagePacket, decode_packet, encode_packet
    from fl_core.transport.flower.server import GridLink, NodeUnavailableError, discover_nodes

    def hello(ids: dict[int, int]) -> Any:
        return lambda node, content: (
            (decode_packet(content, stage="hello") and None)
            or encode_packet(StagePacket(0, "hello", (), {"client": ids[node]}))
        )

    with pytest.raises(NodeUnavailableError, match="1 SuperNodes connected"):
        discover_nodes(GridLink(_ScriptedGrid(hello({7: 1}), nodes=[7]), poll_interval=0.01), 2, timeout=0.6)
    with pytest.raises(NodeUnavailableError, match="both claim client 1"):
        discover_nodes(GridLink(_ScriptedGrid(hello({7: 1, 8: 1}), nodes=[7, 8]), poll_interval=0.01), 2, timeout=2)
    with pytest.raises(NodeUnavailableError, match="claims client 9"):
        discover_nodes(GridLink(_ScriptedGrid(hello({7: 1, 8: 9}), nodes=[7, 8]), poll_interval=0.01), 2, timeout=2)
    with pytest.raises(NodeUnavailableError, match=r"no SuperNode answered for clients \[2\]"):
        discover_nodes(
            GridLink(
                _ScriptedGrid(lambda n, c: None if n == 8 else hello({7: 1})(n, c), nodes=[7, 8]), poll_interval=0.01
            ),
            2,
            timeout=1,
        )
    assert discover_nodes(
        GridLink(_ScriptedGrid(hello({7: 2, 8: 1}), nodes=[7, 8]), poll_interval=0.01), 2, timeout=2
    ) == {2: 7, 1: 8}


# -- end to end: real SuperLink and SuperNodes ------------------------------------------------------------------

VICTIM = 3  # client 3 = partition-id 2: its SuperNode is killed after the masked-input stage of round 2


def _flower_cli_available() -> bool:
    return all(shutil.which(x) for x in ("flower-superlink", "flower-supernode", "flwr"))


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.skipif(not _flower_cli_available(), reason="the Flower CLI (flower-superlink, flwr) is not on PATH")
def test_two_rounds_masking_distributed_dp_with_a_killed_supernode(tmp_path: Path) -> None:
    from fl_core.config import RunConfig
    from fl_core.runner import build_federation
    from fl_core.transport import InProcessTransport
    from fl_core.transport.flower.local import LocalDeployment

    run = {
        "clients": 5,
        "per-round": 5,
        "rounds": 2,
        "model": "logreg",
        "local-epochs": 1,
        "secure-sum": "masking",
        "graph": "complete",
        "dp": "distributed",
        "noise-multiplier": 1.0,
        "clip": 1.0,
        "server-momentum": 0.0,
        "seed": 11,
        "threads": 1,
    }
    transport = {
        "ledger": str(tmp_path / "flower-ledger.jsonl"),
        "output-dir": str(tmp_path / "out"),
        "stage-timeout": 30.0,
        "train-timeout": 120.0,
        "connect-timeout": 60.0,
        "pause-after": "2:train",  # round 2's masked inputs arrive in its opening exchange
        "resume-file": str(tmp_path / "resume"),
    }
    progress = tmp_path / "out" / "progress.jsonl"
    pgids: list[int] = []
    result: dict[str, Any] = {}

    # The run is seeded to compare with the in-process run: the nodes opt in to that.
    with LocalDeployment(5, workdir=tmp_path / "deploy", node_config={"allow-seeded-run": True}) as dep:
        pgids = [p.popen.pid for p in dep.procs]

        def submit() -> None:
            try:
                result["run"] = dep.run(APP, {**run, **transport}, timeout=280)
            except Exception as exc:  # surfaced below
                result["error"] = exc

        th = threading.Thread(target=submit, daemon=True)
        th.start()
        deadline = time.monotonic() + 285
        killed = False
        while th.is_alive() and time.monotonic() < deadline:
            if not killed and progress.exists() and '"paused"' in progress.read_text():
                dep.kill_supernode(VICTIM - 1)  # SIGKILL: no goodbye, like a crashed machine
                killed = True
                (tmp_path / "resume").touch()
            time.sleep(0.05)
        th.join(timeout=5)
        logs = "\n".join(f"--- {n}\n{t[-3000:]}" for n, t in dep.logs() if "error" in t.lower())
        assert "error" not in result, f"{result.get('error')}\n{logs}"
        # flwr run exits 0 even when the SuperLink stopped the run: the server's summary is the proof.
        assert (tmp_path / "out" / "summary.json").exists(), f"the ServerApp did not finish\n{logs}"
        assert killed, "the server never reached the masked-input stage of round 2"
    for pgid in pgids:  # every process group started here is gone
        deadline = time.monotonic() + 10
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _group_alive(pgid)

    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    r2 = summary["rounds"][1]
    stages = {s["stage"]: s["answered"] for s in r2["stages"]}
    assert stages["train"] == [1, 2, 3, 4, 5] and "masked-input" not in stages  # masked inputs came with training
    assert stages["share-keys (ahead)"] == [1, 2, 3, 4, 5]
    assert VICTIM not in stages.get("consistency-check", []) and VICTIM not in stages["unmasking"]
    assert r2["stages"][0]["stage"] == "advertise-keys (ahead)"  # round 2's key setup ran during round 1
    assert r2["survivors"] == [1, 2, 3, 4, 5]  # the victim's masked input is in the sum (Bonawitz: U3)

    # In-process simulation, same seeds, same dropout: the victim leaves after 3 stages of round 2.
    cfg = RunConfig(**{k.replace("-", "_"): v for k, v in run.items()}, ledger=str(tmp_path / "sim-ledger.jsonl"))
    fed, _, _ = build_federation(cfg)
    seen: dict[int, Any] = {}

    class Recording(InProcessTransport):
        """Keeps a copy of each input as its session produces it (the round streams its inputs)."""

        def run(self, secure_sum: Any, inputs: Any, **kw: Any) -> Any:
            produced: dict[int, Any] = {}

            def recorded(c: int, x: Any) -> Any:
                def produce() -> Any:
                    v = x() if callable(x) else x
                    produced[c] = np.array(v, copy=True)
                    return v

                return produce

            outcome = super().run(secure_sum, {c: recorded(c, x) for c, x in inputs.items()}, **kw)
            seen[kw["round_id"]] = (produced, outcome)
            return outcome

    fed.transport = Recording()
    fed.dropouts = lambda members, r: {VICTIM: 3} if r == 2 else {}  # type: ignore[method-assign]
    fed.fit(2)
    inputs2, outcome2 = seen[2]
    ring = fed.plan.ring
    exact = ring.zeros(fed.dim)
    for c in sorted(outcome2.survivors):
        ring.add_into(exact, inputs2[c])
    flower_sum2 = np.load(out / "sum-round-2.npy")
    assert sorted(outcome2.survivors) == r2["survivors"]
    assert np.array_equal(flower_sum2, exact)  # the exact sum of the survivors' (noised, encoded) inputs
    assert np.array_equal(np.load(out / "sum-round-1.npy"), seen[1][1].total)
    assert np.array_equal(np.load(out / "final.npy"), fed.codec.flatten(fed.model))

    # The server's ledger audits, and charges what the simulation charged.
    audit = subprocess.run(
        [*PRIVAGG, "audit", str(tmp_path / "flower-ledger.jsonl"), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert audit.returncode == 0, audit.stdout + audit.stderr
    report = json.loads(audit.stdout)
    assert report["verified"] is True and report["rounds"] == 2
    sim = json.loads(
        subprocess.run(
            [*PRIVAGG, "audit", str(tmp_path / "sim-ledger.jsonl"), "--json"],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO,
        ).stdout
    )
    assert report["epsilon"] == pytest.approx(sim["epsilon"], rel=1e-12)


def test_local_deployment_reports_a_missing_cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from fl_core.transport.flower.local import DeploymentError, LocalDeployment, format_run_config

    assert format_run_config({"a": 1, "b": "x", "c": None, "d": True}) == 'a=1 b="x" c="" d=true'
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DeploymentError, match="not on PATH"), LocalDeployment(1, workdir=tmp_path / "w"):
        pass


@pytest.mark.parametrize(
    ("secure_sum", "dp"),
    [("masking", "none"), ("masking", "central"), ("masking", "distributed"), ("masking", "local"), ("plain", "none")],
)
def test_driver_round_equals_in_process_round_for_every_dp_mode(secure_sum: str, dp: str, tmp_path: Path) -> None:
    """The Flower driver + node handlers (scripted grid, no processes) commit the same model as fed.fit."""
    from fl_core.runner import build_federation
    from fl_core.transport.flower.client import handle_round, handle_stage
    from fl_core.transport.flower.codec import decode_packet, encode_packet
    from fl_core.transport.flower.options import FlowerOptions, config_to_json
    from fl_core.transport.flower.server import FlowerRoundDriver, GridLink

    extra = {} if dp == "none" else {"noise_multiplier": 1.0, "clip": 1.0}
    cfg = _small_cfg(secure_sum=secure_sum, dp=dp, rounds=2, **extra)
    ref, _, _ = build_federation(cfg.replace(ledger=str(tmp_path / "ref.jsonl")))
    ref.fit(2)
    fed, _, _ = build_federation(cfg.replace(ledger=str(tmp_path / "flower.jsonl")))
    states: dict[int, Any] = {}

    def script(node: int, content: Any) -> Any:
        c = node - 100
        packet = decode_packet(content)
        if packet.stage == "train":
            reply, states[c] = handle_round(packet, _node(c))
        else:
            reply, states[c] = handle_stage(packet, states[c])
        return encode_packet(reply)

    driver = FlowerRoundDriver(
        GridLink(_ScriptedGrid(script), poll_interval=0.01), {1: 101, 2: 102, 3: 103}, FlowerOptions(stage_timeout=5)
    )
    for _ in range(2):
        start = fed.begin_round()
        g = fed.codec.flatten(fed.model)
        outcome, clipped, saturated, _ = driver.run(fed, start, g, config_to_json(cfg))
        fed.finish_round(start, outcome, g, clipped=clipped, saturated=saturated)
    assert np.array_equal(fed.codec.flatten(fed.model), ref.codec.flatten(ref.model))
    assert [r.epsilon for r in fed.history] == [r.epsilon for r in ref.history]


def test_unseeded_node_draws_a_fresh_session_seed_and_keeps_it_local() -> None:
    from fl_core.transport.flower.client import handle_round

    cfg = _small_cfg(seed=None)
    _, packet = _opening(cfg, 1)
    (reply_a, state_a), (reply_b, state_b) = (handle_round(packet, _node(1)) for _ in range(2))
    assert not state_a.seeded and len(state_a.session_seed) == 32
    assert state_a.session_seed != state_b.session_seed
    assert reply_a.messages[0].payload != reply_b.messages[0].payload  # fresh keys each time
    wire = b"".join(m.payload for m in reply_a.messages) + repr(reply_a.fields).encode()
    assert state_a.session_seed not in wire


@pytest.mark.parametrize("secure_sum", ["masking", "plain"])
def test_stage_side_secure_sum_is_configured_like_the_nodes_federation(secure_sum: str) -> None:
    """A stage process rebuilds the backend with the same parameters (e.g. the DP min-survivors guard)."""
    from fl_core.transport.flower.client import _client_federation, handle_round
    from fl_core.transport.flower.sessions import secure_sum_for

    cfg = _small_cfg(secure_sum=secure_sum, dp="distributed", noise_multiplier=1.0, clip=1.0)
    _, packet = _opening(cfg, 1)
    _, state = handle_round(packet, _node(1))
    fed = _client_federation(cfg)
    rebuilt = secure_sum_for(cfg, state.ring_bits, state.dim, state.max_clients, state.min_survivors)
    assert fed.privacy.min_survivors == 3  # fixed-size cohort of 3: the guard is the whole cohort
    assert rebuilt.min_survivors == fed.secure_sum.min_survivors == 3
    assert (rebuilt.ring, rebuilt.dim) == (fed.secure_sum.ring, fed.secure_sum.dim)
    # The stage process binds the rebuilt session to the digests the node computed at the opening:
    # the same as the in-process federation's for the same run and clip.
    assert state.binding == fed.terms_binding()
