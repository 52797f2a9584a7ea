"""privagg as a Flower add-on, with a user's own task: a model class, train_fn and loader defined here.

The user's ClientApp gains :func:`privagg_mod`, its ServerApp starts :class:`PrivAgg`; the
nodes are the real ClientApp (with the mod) over a scripted grid, each with its own node
configuration and its own shard. The oracle is the in-process run of the same task
(``build_federation(cfg, task)``): same final model, same epsilon.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_flower import PRIVAGG, REPO, _flower_task_identity, _ScriptedGrid  # noqa: F401 (autouse fixture)
from torch import nn
from torch.utils.data import TensorDataset

pytestmark = [
    pytest.mark.flower,
    pytest.mark.skipif(
        importlib.util.find_spec("flwr") is None, reason="flwr is not installed: pip install 'privagg[flower]'"
    ),
]

BASE = 500  # Flower node id of client c: BASE + c


# -- the user's code ------------------------------------------------------------------------------


class TwoLayer(nn.Module):
    """A model privagg does not ship."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 5)
        self.b = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x)))


class UserTask:
    """make_model / train_fn / load_data / evaluate, recording what the loader opened and who trained."""

    def __init__(self, *, fail_for: int | None = None, root: Path | None = None) -> None:
        self.root = root
        self.opened: dict[int, list[Path]] = {}
        self.trained: list[int] = []
        self.fail_for = fail_for

    def make_model(self) -> nn.Module:
        with torch.random.fork_rng():
            torch.manual_seed(3)
            return TwoLayer()

    def load_data(self, node_config: Mapping[str, Any]) -> TensorDataset:
        default = f"{self.root}/client-{node_config['partition-id']}"  # the in-process run's default
        path = Path(str(node_config.get("data-dir", default))) / "shard.npz"
        self.opened.setdefault(int(node_config["partition-id"]), []).append(path)
        with np.load(path) as f:
            return TensorDataset(torch.from_numpy(f["x"]), torch.from_numpy(f["y"]))

    def train_fn(self, model: nn.Module, data: TensorDataset) -> None:
        x, y = data.tensors
        if self.fail_for is not None and int(y[0]) == -1 - self.fail_for:
            raise RuntimeError("out of GPU memory (simulated)")
        self.trained.append(len(y))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for i in range(0, len(y), 4):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[i : i + 4]), y[i : i + 4].clamp(min=0)).backward()
            opt.step()

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        with torch.no_grad():
            return {"loss": float(model(torch.ones(2, 6)).square().mean())}

    def as_task(self) -> Any:
        from fl_core.task import Task

        return Task(
            make_model=self.make_model, train_fn=self.train_fn, load_data=self.load_data, evaluate=self.evaluate
        )


def write_shards(root: Path, clients: int, *, marker_for: int | None = None, width: int = 6) -> None:
    """One file per client; ``marker_for``'s labels are negative, so the user's train_fn raises on it."""
    g = np.random.default_rng(7)
    for k in range(clients):
        d = root / f"client-{k}"
        d.mkdir(parents=True, exist_ok=True)
        y = g.integers(0, 3, size=12).astype(np.int64)
        if marker_for == k:
            y[:] = -1 - k
        np.savez(d / "shard.npz", x=g.normal(size=(12, width)).astype(np.float32), y=y)


class Fleet:
    """SuperNodes in one process: the user's ClientApp (its own train handler + privagg's mod), one Context each."""

    def __init__(self, task: Any, configs: Mapping[int, Mapping[str, Any]]) -> None:
        from flwr.app import ConfigRecord, Context, Message, RecordDict
        from flwr.clientapp import ClientApp

        from fl_core.transport.flower import privagg_mod

        self.app = ClientApp(mods=[privagg_mod(task)])
        self.own_handler_calls = 0

        @self.app.train()
        def train(msg: Any, context: Any) -> Any:  # the user's own FedAvg handler: never used by privagg
            self.own_handler_calls += 1
            return Message(RecordDict({"x": ConfigRecord({})}), reply_to=msg)

        self.contexts = {n: Context(1, n, dict(c), RecordDict(), {}) for n, c in configs.items()}

    def __call__(self, node: int, content: Any) -> Any:
        from flwr.app import Message

        from fl_core.transport.flower.codec import MESSAGE_TYPE

        msg = Message(content, dst_node_id=node, message_type=MESSAGE_TYPE)
        return self.app(msg, self.contexts[node]).content


def _cfg(tmp_path: Path, **kw: Any) -> Any:
    from fl_core.config import RunConfig

    base: dict[str, Any] = dict(
        clients=5,
        per_round=5,
        rounds=2,
        secure_sum="masking",
        graph="complete",
        dp="distributed",
        noise_multiplier=1.0,
        clip=1.0,
        server_momentum=0.0,
        seed=4,
        ledger=str(tmp_path / "flower-ledger.jsonl"),
    )
    base.update(kw)
    return RunConfig(**base)


def _options(**kw: Any) -> Any:
    from fl_core.transport.flower.options import FlowerOptions

    return FlowerOptions(stage_timeout=2.0, train_timeout=30.0, connect_timeout=5.0, poll_interval=0.01, **kw)


def _configs(root: Path, clients: int, **extra: Any) -> dict[int, dict[str, Any]]:
    return {
        BASE + c: {"partition-id": c - 1, "data-dir": str(root / f"client-{c - 1}"), "allow-seeded-run": True, **extra}
        for c in range(1, clients + 1)
    }


def _run(
    task: Any,
    cfg: Any,
    configs: Mapping[int, Mapping[str, Any]],
    *,
    server_task: Any = None,
    options: Any = None,
    **start: Any,
) -> tuple[Any, Any, Fleet]:
    from fl_core.transport.flower import PrivAgg

    fleet = Fleet(task, configs)
    grid = _ScriptedGrid(fleet, nodes=sorted(configs))
    strategy = PrivAgg(
        task if server_task is None else server_task, config=cfg, options=options if options is not None else _options()
    )
    return strategy, strategy.start(grid=grid, **start), fleet


def _flat(model: nn.Module) -> np.ndarray:
    return np.concatenate([p.detach().numpy().ravel() for p in model.parameters()])


def test_the_add_on_round_equals_the_in_process_run_of_the_same_task(tmp_path: Path) -> None:
    from flwr.app import ArrayRecord

    from fl_core.runner import build_federation

    root = tmp_path / "shards"
    write_shards(root, 5)
    cfg = _cfg(tmp_path)
    user = UserTask()
    seen_rounds: list[int] = []

    def evaluate_fn(server_round: int, arrays: Any) -> Any:
        seen_rounds.append(server_round)
        return {"probe": 1.0}

    strategy, result, fleet = _run(
        user.as_task(),
        cfg,
        _configs(root, 5),
        options=_options(output_dir=str(tmp_path / "out")),
        initial_arrays=ArrayRecord(user.make_model().state_dict()),
        evaluate_fn=evaluate_fn,
    )
    # Each node opened its own shard only; the server opened none.
    assert sorted(user.opened) == [0, 1, 2, 3, 4]
    for k, paths in user.opened.items():
        assert set(paths) == {root / f"client-{k}" / "shard.npz"}
    assert fleet.own_handler_calls == 0
    assert seen_rounds == [0, 1, 2]
    assert sorted(result.evaluate_metrics_serverapp) == [0, 1, 2]

    ref_user = UserTask(root=root)
    ref, _, _ = build_federation(cfg.replace(ledger=str(tmp_path / "ref-ledger.jsonl")), ref_user.as_task())
    ref.fit(2)
    final = user.make_model()
    final.load_state_dict(result.arrays.to_torch_state_dict())
    assert isinstance(strategy.report.model, TwoLayer)  # the user's class, trained in place on the server
    assert np.array_equal(_flat(final), _flat(ref.model))
    assert [r.epsilon for r in strategy.report.results] == [r.epsilon for r in ref.history]
    assert ref_user.trained == user.trained == [12] * 10
    # Epsilon per adversary, as privagg run --json states it: on the strategy's result and in summary.json.
    from fl_core.accounting import epsilon_report

    expected = epsilon_report(ref)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    for got in (result.privacy, summary):
        assert got["epsilon_enforced_on"] == "server"  # distributed DP: the budget holds against the server
        for key in ("epsilon", "epsilon_vs_server", "epsilon_vs_public"):
            assert got[key] == pytest.approx(expected[key], rel=1e-12)
        assert got["epsilon"] == got["epsilon_vs_server"] >= got["epsilon_vs_public"] > 0
        assert "epsilon_vs_server_reason" not in got
        assert "clients_charged" not in got  # the clients' own books are on their nodes, not the server's
    assert summary["epsilon"] == strategy.report.results[-1].epsilon

    import subprocess

    audit = subprocess.run(
        [*PRIVAGG, "audit", cfg.ledger, "--json"], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert audit.returncode == 0, audit.stdout + audit.stderr
    report = json.loads(audit.stdout)
    assert report["verified"] is True and report["rounds"] == 2


def test_in_central_mode_the_report_says_epsilon_against_the_server_is_unbounded_and_why(tmp_path: Path) -> None:
    root = tmp_path / "shards"
    write_shards(root, 5)
    cfg = _cfg(tmp_path, rounds=1, dp="central")
    out = _options(output_dir=str(tmp_path / "out"))
    _strategy, result, _fleet = _run(UserTask().as_task(), cfg, _configs(root, 5), options=out)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    for got in (result.privacy, summary):
        assert got["epsilon_enforced_on"] == "public"
        assert got["epsilon_vs_server"] is None and "central mode" in got["epsilon_vs_server_reason"]
        assert got["epsilon"] == got["epsilon_vs_public"] > 0


def test_a_failing_train_fn_makes_that_node_a_dropout_with_its_reason_in_the_server_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "shards"
    write_shards(root, 5, marker_for=2)  # client 3's shard makes the user's train_fn raise
    cfg = _cfg(tmp_path, min_survivors=4, rounds=1)
    user = UserTask(fail_for=2)
    with caplog.at_level(logging.WARNING, logger="privagg.flower"):
        strategy, _result, _ = _run(user.as_task(), cfg, _configs(root, 5))
    (res,) = strategy.report.results
    assert res.survivors == (1, 2, 4, 5)
    rejected = strategy.report.traces[0].rejected
    assert any("client 3: dropped out" in r and "out of GPU memory (simulated)" in r for r in rejected)
    assert "train_fn raised RuntimeError for client 3" in caplog.text


def test_a_node_whose_data_is_missing_refuses_at_hello(tmp_path: Path) -> None:
    from fl_core.transport.flower.server import NodeUnavailableError

    root = tmp_path / "shards"
    write_shards(root, 5)
    configs = _configs(root, 5)
    configs[BASE + 4]["data-dir"] = str(tmp_path / "nowhere")
    user = UserTask()
    why = r"clients \[4\].*refused: DataError: load_data raised FileNotFoundError"
    with pytest.raises(NodeUnavailableError, match=why):
        _run(user.as_task(), _cfg(tmp_path), configs)
    assert user.trained == []  # refused at start-up, before any round


def test_nodes_whose_samples_differ_are_refused_at_hello(tmp_path: Path) -> None:
    from fl_core.errors import DataError

    root = tmp_path / "shards"
    write_shards(root, 5)
    write_shards(tmp_path / "wide", 5, width=7)
    configs = _configs(root, 5)
    configs[BASE + 2]["data-dir"] = str(tmp_path / "wide" / "client-1")
    with pytest.raises(DataError, match=r"clients \[2\]: \(float32\[7\], int64\[\]\)"):
        _run(UserTask().as_task(), _cfg(tmp_path), configs)


def test_bad_task_modules_get_the_typed_error(tmp_path: Path) -> None:
    from fl_core.errors import TaskError
    from fl_core.transport.flower.server import NodeUnavailableError

    bad = tmp_path / "bad_task.py"
    bad.write_text("def make_model():\n    return None\n\ndef load_data(node_config):\n    return []\n")
    root = tmp_path / "shards"
    write_shards(root, 2)
    cfg = _cfg(tmp_path, clients=2, per_round=2, dp="none")
    with pytest.raises(TaskError, match="defines no train_fn"):  # the server loads the same module first
        _run(str(bad), cfg, _configs(root, 2))
    good = UserTask().as_task()
    with pytest.raises(NodeUnavailableError, match="refused: TaskError: task file:.* defines no train_fn"):
        _run(str(bad), cfg, _configs(root, 2), server_task=good)  # a node with a broken copy refuses at hello
    empty = tmp_path / "empty_task.py"
    empty.write_text(
        "def make_model():\n    return None\n\ndef train_fn(model, data):\n    pass\n\n"
        "def load_data(node_config):\n    return []\n"
    )
    with pytest.raises(NodeUnavailableError, match="DataError: load_data for client 1 returned an empty dataset"):
        _run(str(empty), cfg, _configs(root, 2), server_task=good)


def test_the_node_runs_its_own_task_and_loader_keys_never_the_servers(tmp_path: Path) -> None:
    """A run configuration naming another task or other loader keys changes nothing on the node."""
    from fl_core.transport.flower.client import _client_build

    root = tmp_path / "shards"
    write_shards(root, 2)
    user = UserTask()
    cfg = _cfg(tmp_path, clients=2, per_round=2, dp="none").replace(
        task=str(tmp_path / "servers_task.py"), node_config="data-dir=/elsewhere/{partition-id}"
    )
    fed, _ = _client_build(cfg, task=user.as_task(), node_config=_configs(root, 2)[BASE + 2])
    fed.source.get(2)
    assert user.opened == {1: [root / "client-1" / "shard.npz"]}
    with pytest.raises(Exception, match="client 1"):
        fed.source.get(1)  # a node holds its own client's data only


def test_privagg_run_config_keys_and_start_arguments(tmp_path: Path) -> None:
    from flwr.app import ArrayRecord

    from fl_core.errors import ConfigError, TaskError
    from fl_core.transport.flower import PrivAgg
    from fl_core.transport.flower.strategy import privagg_run_config

    app = {"num-server-rounds": 3, "final-model": "", "privagg.dp": "central", "privagg.clients": 4}
    assert privagg_run_config(app) == {"privagg.dp": "central", "privagg.clients": 4}
    assert PrivAgg(None, app).config.dp == "central"
    assert privagg_run_config({"dp": "none"}) == {"dp": "none"}
    with pytest.raises(ConfigError, match="unknown run-config key 'privagg.noise-multipler'"):
        PrivAgg(None, {"num-server-rounds": 3, "privagg.noise-multipler": 2.0})
    with pytest.raises(ConfigError, match="unknown run-config key 'num-server-rounds'"):
        PrivAgg(None, {"num-server-rounds": 3, "dp": "none"})  # no privagg. key: a privagg-only app
    with pytest.raises(ConfigError, match="not both"):
        PrivAgg(None, {"dp": "none"}, config=_cfg(tmp_path))
    asynchronous = PrivAgg(
        UserTask().as_task(), config=_cfg(tmp_path).replace(schedule="async", secure_sum="paillier"), options=_options()
    )
    with pytest.raises(ConfigError, match="masking \\(or plain\\) for now"):  # async on Flower: no Paillier yet
        asynchronous.start(grid=None)
    strategy = PrivAgg(UserTask().as_task(), config=_cfg(tmp_path), options=_options())
    with pytest.raises(ConfigError, match="train_fn\\(model, data\\) takes none"):
        strategy.start(grid=None, train_config={"lr": 0.1})
    wrong = ArrayRecord(nn.Linear(2, 2).state_dict())
    root = tmp_path / "shards"
    write_shards(root, 5)
    with pytest.raises(TaskError, match="initial_arrays do not fit"):
        _run(UserTask().as_task(), _cfg(tmp_path), _configs(root, 5), initial_arrays=wrong)
