"""The user's own objects and task modules through the full privacy stack, as a user writes them.

Nothing here uses privagg's built-in models, loops or datasets: the model class, the
training loop and the data loader are defined in the test (or in a task file the test
writes), and the tests check that privagg trains exactly those.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dp.ledger import inspect_ledger
from fl_core.config import RunConfig
from fl_core.errors import DataError, TaskError
from fl_core.provenance import describe_model
from fl_core.runner import build_federation, execute
from fl_core.sources import OneClient, ServerOnly, TaskClients
from fl_core.task import Task, load_client_data, load_task, node_config_for, parse_node_config

REPO = Path(__file__).resolve().parents[2]


class TinyNet(nn.Module):
    """A model privagg does not ship."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _client_sets(n: int, per: int = 12, seed: int = 0) -> list[TensorDataset]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(per, 4, generator=g)
        out.append(TensorDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 1).long()))
    return out


class CountingLoop:
    """The user's own loop; counts its calls and remembers which model objects it trained."""

    def __init__(self) -> None:
        self.calls = 0
        self.models: list[int] = []

    def __call__(self, model: nn.Module, data: TensorDataset) -> None:
        self.calls += 1
        self.models.append(id(model))
        opt = torch.optim.SGD(model.parameters(), lr=0.2)
        for x, y in DataLoader(data, batch_size=4):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()


def test_user_model_and_loop_go_through_dp_budget_and_ledger(tmp_path):
    torch.manual_seed(0)
    model = TinyNet()
    initial = describe_model(model)
    loop = CountingLoop()
    evaluated: list[int] = []

    def evaluate(m: nn.Module) -> dict[str, float]:
        evaluated.append(id(m))
        return {"accuracy": 0.5}

    data = _client_sets(8)
    task = Task.from_objects(model, loop, data, evaluate=evaluate)
    cfg = RunConfig(
        clients=8, per_round=4, rounds=3, dp="distributed", secure_sum="masking", clip=1.0,
        noise_multiplier=1.0, target_epsilon=100.0, ledger=str(tmp_path / "eps.jsonl"), seed=3,
    )
    fed, _data, extra = build_federation(cfg, task)
    assert fed.model is model  # the user's object itself is the global model
    assert fed.train_fn is loop  # called unchanged (no record-level DP asked for)
    before = [p.detach().clone() for p in model.parameters()]
    results = fed.fit(3)
    fed.close()
    assert fed.model is model and all(e == id(model) for e in evaluated) and len(evaluated) == 3
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # trained in place
    assert loop.calls == sum(len(r.cohort) for r in results) == 12
    assert id(model) not in loop.models  # clients train private copies, never the global model
    assert all(r.epsilon is not None and r.epsilon > 0 for r in results)
    rep = inspect_ledger(tmp_path / "eps.jsonl")
    assert rep.rounds == 3
    meta = rep.meta
    assert meta["model_class"] == f"{__name__}.TinyNet"
    assert meta["model_sha256"] == initial["model_sha256"]
    assert meta["model_parameters"] == sum(p.numel() for p in model.parameters()) == 67
    assert meta["task"] == "objects" and meta["dp"] == "distributed" and meta["secure_sum"] == "masking"
    for demo_key in ("dataset", "model", "lr", "local_epochs", "batch_size", "partition"):
        assert demo_key not in meta  # nothing describes a run that did not happen
    assert extra["description"] == meta


def test_execute_route_reports_the_users_model(tmp_path):
    torch.manual_seed(1)
    model = TinyNet()
    loop = CountingLoop()
    task = Task.from_objects(model, loop, _client_sets(6))
    cfg = RunConfig(clients=6, per_round=3, rounds=2, dp="central", secure_sum="plain", seed=1,
                    ledger=str(tmp_path / "l.jsonl"))
    out = execute(cfg, data=task).to_json()
    assert out["model_class"] == f"{__name__}.TinyNet" and out["model"] == f"{__name__}.TinyNet"
    assert out["dataset"] is None and out["task"] == "objects"
    assert out["rounds_completed"] == 2 and loop.calls == 6


# -- a task module, written by the user, run from the command line ---------------------------------

TASK_SOURCE = '''
"""A user's task module: own model, own loop, own data files (one per client)."""
import json
import os
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

OPENED = os.environ.get("TASK_OPEN_LOG")


class UserMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 16)
        self.fc2 = nn.Linear(16, 2)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def make_model():
    return UserMLP()


def train_fn(model, data):
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    for x, y in DataLoader(data, batch_size=8):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def load_data(node_config):
    path = Path(node_config["data-dir"]) / "data.pt"
    if OPENED:
        with open(OPENED, "a") as fh:
            fh.write(json.dumps({"partition": node_config["partition-id"], "path": str(path)}) + "\\n")
    x, y = torch.load(path)
    return TensorDataset(x, y)


def evaluate(model):
    g = torch.Generator().manual_seed(99)
    x = torch.randn(200, 6, generator=g)
    y = (x.sum(dim=1) > 0).long()
    with torch.no_grad():
        out = model(x)
    return {"accuracy": float((out.argmax(1) == y).float().mean()),
            "loss": float(nn.functional.cross_entropy(out, y))}
'''


def _write_task(tmp_path: Path, clients: int) -> Path:
    task = tmp_path / "app" / "task.py"
    task.parent.mkdir()
    task.write_text(TASK_SOURCE)
    g = torch.Generator().manual_seed(5)
    for i in range(clients):
        d = tmp_path / "shards" / f"client-{i}"
        d.mkdir(parents=True)
        x = torch.randn(20, 6, generator=g)
        torch.save((x, (x.sum(dim=1) > 0).long()), d / "data.pt")
    return task


def _env(**extra: str) -> dict[str, str]:
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def test_cli_runs_a_task_file_with_node_config_and_loads_only_sampled_clients(tmp_path):
    task = _write_task(tmp_path, clients=10)
    log = tmp_path / "opened.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "fl_core.cli", "run", "--task", str(task), "--clients", "10", "--per-round", "3",
         "--rounds", "2", "--seed", "4", "--noise-multiplier", "1", "--json", "--node-config",
         f"data-dir={tmp_path}/shards/client-{{partition-id}}", "--ledger", str(tmp_path / "l.jsonl")],
        capture_output=True, text=True, env=_env(TASK_OPEN_LOG=str(log)), cwd=tmp_path, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["rounds_completed"] == 2 and out["rounds_aborted"] == 0
    assert out["model_class"] == "task.UserMLP" and out["model_parameters"] == 6 * 16 + 16 + 16 * 2 + 2
    assert out["task"] == f"file:{task.resolve()}" and out["dataset"] is None
    assert 0.0 <= out["accuracy"] <= 1.0 and out["epsilon"] > 0
    opened = [json.loads(line) for line in log.read_text().splitlines()]
    # Lazy: only the clients sampled in the two rounds were loaded, each once, from its own shard.
    parts = [o["partition"] for o in opened]
    assert len(parts) == len(set(parts)) <= 6
    assert all(o["path"] == f"{tmp_path}/shards/client-{o['partition']}/data.pt" for o in opened)
    assert "round 1/2" in proc.stderr and "round 2/2" in proc.stderr  # one progress line per round
    meta = inspect_ledger(tmp_path / "l.jsonl").meta
    assert meta["model_class"].endswith(".UserMLP") and meta["task_sha256"]
    assert meta["node_config"] == f"data-dir={tmp_path}/shards/client-{{partition-id}}"


def test_cli_task_refuses_demo_only_options(tmp_path):
    from typer.testing import CliRunner

    from fl_core.cli import app

    task = _write_task(tmp_path, clients=2)
    res = CliRunner().invoke(app, ["run", "--task", str(task), "--model", "cnn", "--lr", "0.1"])
    assert res.exit_code == 2 and "--model, --lr configure privagg's demo only" in res.output


# -- roles: in-process (lazy), server (no data), node (one client's data) ----------------------------


class CountingLoader:
    def __init__(self, data: list[TensorDataset]) -> None:
        self.data = data
        self.asked: list[dict] = []

    def __call__(self, node_config):
        self.asked.append(dict(node_config))
        return self.data[node_config["partition-id"]]


def _task(loader: CountingLoader, loop=None) -> Task:
    return Task(make_model=TinyNet, train_fn=loop or CountingLoop(), load_data=loader, origin="test")


def test_simulation_loads_each_client_lazily_once():
    loader = CountingLoader(_client_sets(50))
    cfg = RunConfig(clients=50, per_round=3, rounds=2, dp="none", secure_sum="plain", seed=0)
    fed, _, _ = build_federation(cfg, _task(loader))
    assert loader.asked == []  # nothing loaded up front
    res = fed.fit(2)
    sampled = sorted({c for r in res for c in r.cohort})
    assert sorted(a["partition-id"] + 1 for a in loader.asked) == sampled
    assert all(a["num-partitions"] == 50 for a in loader.asked)


def test_server_role_holds_no_client_data():
    loader = CountingLoader(_client_sets(5))
    cfg = RunConfig(clients=5, per_round=2, rounds=1, dp="distributed", seed=0)
    fed, _, extra = build_federation(cfg, _task(loader), role="server", open_ledger=False)
    assert isinstance(fed.source, ServerOnly) and fed.sampler.population == 5
    with pytest.raises(DataError, match="the server holds no client data"):
        fed.client_data[0]
    assert loader.asked == []
    assert extra["description"]["model_class"].endswith("TinyNet")


def test_node_role_loads_only_its_own_data():
    loader = CountingLoader(_client_sets(5))
    cfg = RunConfig(clients=5, per_round=2, rounds=1, dp="distributed", seed=0)
    fed, _, _ = build_federation(cfg, _task(loader), role="node", client=3, node_config={"partition-id": 2,
                                                                                         "num-partitions": 5,
                                                                                         "data-dir": "/d/2"})
    assert isinstance(fed.source, OneClient) and fed.accounting.ledger is None and fed.eval_fn is None
    assert fed.client_data[2] is loader.data[2]
    assert loader.asked == [{"partition-id": 2, "num-partitions": 5, "data-dir": "/d/2"}]
    with pytest.raises(DataError, match="holds client 3's data only; it was asked for client 1's"):
        fed.client_data[0]
    with pytest.raises(DataError, match="either the client's data or a task"):
        OneClient(1, 5)
    with pytest.raises(ValueError, match="needs the node's client id"):
        build_federation(cfg, _task(loader), role="node")
    with pytest.raises(ValueError, match="role must be"):
        build_federation(cfg, _task(loader), role="hub")  # type: ignore[arg-type]


def test_train_fn_raising_on_one_client_is_a_dropout_and_the_round_goes_on(tmp_path):
    data = _client_sets(6)
    bad = data[1]

    def loop(model, d):
        if d is bad:
            raise OSError("GPU fell off the bus")
        CountingLoop()(model, d)

    cfg = RunConfig(clients=6, per_round=6, rounds=2, dp="distributed", secure_sum="masking", min_survivors=4,
                    clip=1.0, seed=2, ledger=str(tmp_path / "l.jsonl"))
    summary = execute(cfg, data=Task.from_objects(TinyNet(), loop, data), out=tmp_path / "run")
    assert summary.rounds_completed == 2 and summary.rounds_aborted == 0
    for r in summary.results:
        assert r.survivors == (1, 3, 4, 5, 6)
        assert r.dropouts == {2: "train_fn raised OSError for client 2: GPU fell off the bus"}
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["dropouts"] for m in lines] == [{"2": "train_fn raised OSError for client 2: GPU fell off the bus"}] * 2
    assert inspect_ledger(tmp_path / "l.jsonl").rounds == 2


# -- every TaskError ---------------------------------------------------------------------------------

GOOD = {
    "make_model": "def make_model():\n    return torch.nn.Linear(2, 2)\n",
    "train_fn": "def train_fn(model, data):\n    pass\n",
    "load_data": "def load_data(node_config):\n    return [(torch.zeros(2), 0)]\n",
}


def _module(tmp_path: Path, name: str, **parts: str | None) -> Path:
    body = "import torch\n" + "".join(v for k, v in {**GOOD, **parts}.items() if v is not None)
    p = tmp_path / f"{name}.py"
    p.write_text(body)
    return p


@pytest.mark.parametrize("missing", ["make_model", "train_fn", "load_data"])
def test_missing_function_names_it_and_its_signature(tmp_path, missing):
    path = _module(tmp_path, f"no_{missing}", **{missing: None})
    with pytest.raises(TaskError, match=f"defines no {missing}: a task module must define {missing}") as e:
        load_task(str(path))
    assert e.value.function == missing and e.value.option == "task"


def test_non_callable_and_wrong_signature(tmp_path):
    with pytest.raises(TaskError, match="train_fn is a int, not a function: expected train_fn\\(model, data\\)"):
        load_task(str(_module(tmp_path, "nc", train_fn="train_fn = 3\n")))
    with pytest.raises(TaskError, match="load_data\\(\\) cannot be called the way privagg calls it"):
        load_task(str(_module(tmp_path, "sig", load_data="def load_data():\n    return []\n")))
    with pytest.raises(TaskError, match="evaluate is a str"):
        load_task(str(_module(tmp_path, "ev", train_fn=GOOD["train_fn"] + "evaluate = 'x'\n")))
    with pytest.raises(TaskError, match="train_fn"):
        Task.from_objects(TinyNet(), lambda m: None, _client_sets(1))


def test_import_failures(tmp_path):
    with pytest.raises(TaskError, match="does not exist"):
        load_task(str(tmp_path / "nope.py"))
    with pytest.raises(TaskError, match="cannot import task module 'no_such_module_xyz'"):
        load_task("no_such_module_xyz")
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('half-written file')\n")
    with pytest.raises(TaskError, match="importing task file .* raised RuntimeError: half-written file"):
        load_task(str(broken))
    with pytest.raises(TaskError, match="task is empty"):
        load_task("")


def test_module_object_and_dotted_name(tmp_path, monkeypatch):
    path = _module(tmp_path, "my_dotted_task")
    monkeypatch.syspath_prepend(str(tmp_path))
    t = load_task("my_dotted_task")
    assert t.origin == "module:my_dotted_task" and t.evaluate is None and t.sha256
    import importlib

    t2 = load_task(importlib.import_module("my_dotted_task"))
    assert t2.origin == "module:my_dotted_task"
    assert load_task(str(path)).origin == f"file:{path.resolve()}"


def test_make_model_must_return_a_module():
    task = Task(make_model=lambda: "a model", train_fn=CountingLoop(), load_data=CountingLoader([]), origin="t")
    with pytest.raises(TaskError, match="make_model of t returned a str: expected a torch.nn.Module"):
        build_federation(RunConfig(clients=2, dp="none", secure_sum="plain"), task)
    with pytest.raises(TaskError, match="must be a torch.nn.Module instance"):
        Task.from_objects("model", CountingLoop(), _client_sets(1))  # type: ignore[arg-type]
    with pytest.raises(TaskError, match="non-empty sequence"):
        Task.from_objects(TinyNet(), CountingLoop(), [])


def test_node_config_parsing_and_templates():
    assert parse_node_config("data-dir=shards/{partition-id} lr=0.1 k=3 name='a b'") == {
        "data-dir": "shards/{partition-id}", "lr": 0.1, "k": 3, "name": "a b"}
    assert node_config_for(3, 10, {"data-dir": "s/client-{partition-id}-of-{num-partitions}", "n": 1}) == {
        "data-dir": "s/client-2-of-10", "n": 1, "partition-id": 2, "num-partitions": 10}
    assert node_config_for(1, 4, {"id": "{partition-id}"})["id"] == 0  # a bare placeholder becomes an int
    with pytest.raises(TaskError, match="is not key=value"):
        parse_node_config("data-dir")
    with pytest.raises(TaskError, match="cannot set 'partition-id'"):
        parse_node_config("partition-id=3")
    with pytest.raises(TaskError, match="cannot be parsed"):
        parse_node_config("a='unterminated")
    with pytest.raises(TaskError, match="unknown placeholder"):
        node_config_for(1, 2, {"d": "x/{client-id}"})
    with pytest.raises(DataError, match="client 3 is not in 1..2"):
        node_config_for(3, 2)


# -- every DataError of the validated loader call -------------------------------------------------------


def _loader_task(fn) -> Task:
    return Task(make_model=TinyNet, train_fn=CountingLoop(), load_data=fn, origin="t")


@pytest.mark.parametrize(
    "returned,match",
    [
        (None, "load_data for client 2 returned None: expected a map-style dataset"),
        (42, "load_data for client 2 returned a int: expected a map-style dataset"),
        ({"x": 1}, "load_data for client 2 returned a dict: expected"),
        (TensorDataset(torch.zeros(0, 4), torch.zeros(0)), "load_data for client 2 returned an empty dataset"),
        (DataLoader(TensorDataset(torch.zeros(0, 4), torch.zeros(0))), "returned an empty dataset"),
    ],
)
def test_bad_loader_results_are_typed(returned, match):
    with pytest.raises(DataError, match=match) as e:
        load_client_data(_loader_task(lambda nc: returned), node_config_for(2, 3), client=2)
    assert e.value.function == "load_data" and e.value.client == 2


def test_loader_that_raises_is_typed():
    def boom(nc):
        raise FileNotFoundError("shards/client-1/data.pt")

    with pytest.raises(DataError, match="load_data raised FileNotFoundError for client 2 .*shards/client-1") as e:
        load_client_data(_loader_task(boom), node_config_for(2, 3), client=2)
    assert e.value.client == 2


def test_another_clients_sample_shape_or_dtype_is_refused():
    sets = _client_sets(3)
    sets[2] = TensorDataset(torch.zeros(5, 7), torch.zeros(5, dtype=torch.long))
    src = TaskClients(_loader_task(lambda nc: sets[nc["partition-id"]]), 3)
    src.get(1)
    src.get(2)
    with pytest.raises(DataError, match=r"client 3 returned samples shaped \(float32\[7\], int64\[\]\), but "
                                        r"client 1's are \(float32\[4\], int64\[\]\)") as e:
        src.get(3)
    assert e.value.function == "load_data" and e.value.client == 3
    sets[2] = TensorDataset(torch.zeros(5, 4, dtype=torch.float64), torch.zeros(5, dtype=torch.long))
    src = TaskClients(_loader_task(lambda nc: sets[nc["partition-id"]]), 3)
    src.get(1)
    with pytest.raises(DataError, match=r"float64\[4\]"):
        src.get(3)
    with pytest.raises(DataError, match="client 4 is not in 1..3"):
        src.get(4)
    with pytest.raises(DataError, match="at least one client"):
        TaskClients(_loader_task(lambda nc: None), 0)
    with pytest.raises(DataError, match="at least one client"):
        ServerOnly(0)


def test_in_memory_client_data_is_checked_too():
    sets = _client_sets(2)
    sets[1] = None  # type: ignore[call-overload]
    task = Task.from_objects(TinyNet(), CountingLoop(), sets)
    fed, _, _ = build_federation(RunConfig(clients=2, per_round=2, rounds=1, dp="none", secure_sum="plain"), task)
    with pytest.raises(DataError, match="load_data for client 2 returned None"):
        fed.run_round()


def test_builtin_demo_is_one_task_among_others():
    from fl_core.task import builtin_task

    cfg = RunConfig(clients=20, model="mlp")
    t = builtin_task(cfg)
    assert t.builtin and t.origin == "builtin:digits"
    m = t.make_model()
    assert sum(p.numel() for p in m.parameters()) == 64 * 128 + 128 + 128 * 10 + 10
    d = t.load_data(node_config_for(3, 20))
    assert len(d) > 0
    assert 0.0 <= t.evaluate(m)["accuracy"] <= 1.0


def test_task_file_imports_its_sibling_module(tmp_path):
    (tmp_path / "helpers_for_task.py").write_text("import torch\ndef net():\n    return torch.nn.Linear(3, 1)\n")
    p = tmp_path / "sib_task.py"
    p.write_text(textwrap.dedent("""
        from helpers_for_task import net
        def make_model():
            return net()
        def train_fn(model, data):
            pass
        def load_data(node_config):
            return [1]
    """))
    assert isinstance(load_task(str(p)).make_model(), nn.Linear)


def test_remaining_task_and_data_errors(tmp_path, monkeypatch):
    from fl_core.task import check_client_data

    odd = tmp_path / "task.txt"
    odd.write_text("x = 1\n")
    with pytest.raises(TaskError, match="not a Python source file"):
        load_task(str(odd))
    (tmp_path / "raising_task_mod.py").write_text("raise RuntimeError('no GPU here')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(TaskError, match="importing task module 'raising_task_mod' raised RuntimeError: no GPU here"):
        load_task("raising_task_mod")
    with pytest.raises(TaskError, match="evaluate is a int"):
        Task.from_objects(TinyNet(), CountingLoop(), _client_sets(1), evaluate=3)  # type: ignore[arg-type]

    class NoLength:
        def __len__(self):
            raise TypeError("unsized stream")

        def __getitem__(self, i):
            return i

    with pytest.raises(DataError, match="returned a NoLength without a length"):
        check_client_data(NoLength(), client=1, source="load_data")


def test_run_config_errors_for_the_new_options():
    from fl_core.errors import ConfigError

    with pytest.raises(ConfigError, match="--max-consecutive-aborts must be a positive integer"):
        RunConfig(max_consecutive_aborts=0)
    with pytest.raises(ConfigError, match="--node-config configures a task's load_data: give --task too"):
        RunConfig(node_config="data-dir=x")
