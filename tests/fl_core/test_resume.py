"""Runs a team can rely on: Ctrl-C / SIGTERM, checkpoints bound to the ledger, resume, one ledger per run.

The interrupted runs are real ``privagg run`` processes on a task module the test writes
(the user's own model, loop and data), signalled while training.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from dp.ledger import inspect_ledger, verify_ledger
from fl_core.checkpoint import RunDir
from fl_core.cli import app
from fl_core.config import RunConfig
from fl_core.errors import CheckpointError, ConfigError, LedgerConflictError
from fl_core.interrupt import Interrupted, InterruptGuard
from fl_core.runner import execute, resume_config

REPO = Path(__file__).resolve().parents[2]

SLOW_TASK = '''
import time
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(5, 12)
        self.b = nn.Linear(12, 3)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


def make_model():
    return Net()


def train_fn(model, data):
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.5)
    for x, y in DataLoader(data, batch_size=4, shuffle=True):   # torch's global RNG: resumed too
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    time.sleep(0.04)   # a round takes a while, so the signal lands mid-run


def load_data(node_config):
    g = torch.Generator().manual_seed(1000 + node_config["partition-id"])
    x = torch.randn(16, 5, generator=g)
    return TensorDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long())


def evaluate(model):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(100, 5, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    with torch.no_grad():
        out = model(x)
    return {"accuracy": float((out.argmax(1) == y).float().mean()), "loss": float(nn.functional.cross_entropy(out, y))}
'''

ROUNDS = 10


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _argv(task: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "fl_core.cli", "run", "--task", str(task), "--clients", "12", "--per-round", "4",
            "--rounds", str(ROUNDS), "--seed", "11", "--server-momentum", "0.7", "--clip", "2.0",
            "--noise-multiplier", "1", "--client-max-epsilon", "inf",
            "--out", str(out), "--json"]


def _task(tmp_path: Path) -> Path:
    p = tmp_path / "task.py"
    p.write_text(SLOW_TASK)
    return p


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _interrupt(argv: list[str], metrics: Path, sig: int, after: int) -> subprocess.CompletedProcess[str]:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    deadline = time.monotonic() + 240
    while len(_lines(metrics)) < after:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"run ended or stalled before round {after}: rc={proc.returncode} {err[-2000:]}")
        time.sleep(0.01)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("straight")
    task = _task(tmp)
    proc = subprocess.run(_argv(task, tmp / "run"), capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    return tmp / "run", json.loads(proc.stdout.strip().splitlines()[-1])


def test_sigint_mid_run_then_resume_equals_the_uninterrupted_run(tmp_path, uninterrupted):
    straight_dir, straight = uninterrupted
    task = _task(tmp_path)
    out = tmp_path / "run"
    first = _interrupt(_argv(task, out), out / "metrics.jsonl", signal.SIGINT, after=3)
    assert first.returncode == 130, first.stderr
    summary = json.loads(first.stdout.strip().splitlines()[-1])  # the finished rounds are summarised
    done = summary["rounds_completed"]
    assert summary["interrupted"] == "SIGINT" and 3 <= done < ROUNDS
    assert "interrupted by SIGINT" in first.stderr and f"--resume {out}" in first.stderr
    # Consistent on disk: the ledger, the checkpoint and the metrics all end at the same round.
    ckpt = RunDir(out).load_checkpoint()
    assert ckpt is not None and ckpt["round"] == done
    assert verify_ledger(out / "ledger.jsonl").rounds == done
    assert ckpt["ledger_head"] == inspect_ledger(out / "ledger.jsonl").records[-1].hash
    assert [m["round"] for m in _lines(out / "metrics.jsonl")] == list(range(1, done + 1))
    assert torch.equal(_state(out / "model.pt")["a.weight"], ckpt["model"]["a.weight"])

    second = subprocess.run([sys.executable, "-m", "fl_core.cli", "run", "--resume", str(out), "--json"],
                            capture_output=True, text=True, env=_env(), timeout=300)
    assert second.returncode == 0, second.stderr
    resumed = json.loads(second.stdout.strip().splitlines()[-1])
    assert resumed["rounds_completed"] == ROUNDS and resumed["rounds_aborted"] == 0
    # The ledger audits: every round once, none lost, none counted twice.
    rep = verify_ledger(out / "ledger.jsonl")
    assert [r.round for r in rep.records] == list(range(1, ROUNDS + 1))
    assert rep.epsilon == pytest.approx(straight["epsilon"], rel=1e-12)
    assert resumed["epsilon"] == pytest.approx(straight["epsilon"], rel=1e-12)
    # The resumed rounds record the same abort rule and pool as the uninterrupted ones (dp.accountants.aborts).
    rules = [(e.min_survivors, e.eligible, e.dropout) for e in rep.events]
    straight_events = verify_ledger(straight_dir / "ledger.jsonl").events
    assert rules == [(e.min_survivors, e.eligible, e.dropout) for e in straight_events]
    assert all(m >= 1 for m, _, _ in rules)
    assert [m["round"] for m in _lines(out / "metrics.jsonl")] == list(range(1, ROUNDS + 1))
    # Bit for bit: every draw is keyed by round (not by how many came before) and the
    # checkpoint restores the momentum, the abort counters and torch's global RNG.
    a, b = _state(out / "model.pt"), _state(straight_dir / "model.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["per_round_accuracy"] == straight["per_round_accuracy"]
    assert resumed["ledger_head"] == rep.records[-1].hash


def test_sigterm_exits_143_with_a_consistent_checkpoint_and_ledger(tmp_path):
    task = _task(tmp_path)
    out = tmp_path / "run"
    res = _interrupt(_argv(task, out), out / "metrics.jsonl", signal.SIGTERM, after=2)
    assert res.returncode == 143, res.stderr
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["interrupted"] == "SIGTERM"
    ckpt = RunDir(out).load_checkpoint()
    assert ckpt["round"] == summary["rounds_completed"] == verify_ledger(out / "ledger.jsonl").rounds
    assert json.loads((out / "summary.json").read_text())["interrupted"] == "SIGTERM"


# -- the round in flight: rolled back before the ledger append, committed whole after it -------------


def _small(tmp_path: Path, **kw) -> RunConfig:
    base = dict(clients=10, per_round=4, rounds=4, dp="central", secure_sum="plain", seed=5, clip=1.0,
                ledger=str(tmp_path / "l.jsonl"))
    return RunConfig(**{**base, **kw})


def test_signal_during_training_rolls_the_round_back(tmp_path):
    from fl_core.task import builtin_task

    cfg = _small(tmp_path)
    task = builtin_task(cfg)
    calls = {"n": 0}

    def train_fn(model, data):
        calls["n"] += 1
        if calls["n"] == 10:  # third round, second client
            os.kill(os.getpid(), signal.SIGINT)
        task.train_fn(model, data)

    from dataclasses import replace

    with InterruptGuard() as guard:
        summary = execute(cfg, data=replace(task, train_fn=train_fn), out=tmp_path / "run", guard=guard)
    assert summary.interrupted == signal.SIGINT
    assert summary.rounds_completed == 2
    assert verify_ledger(tmp_path / "l.jsonl").rounds == 2
    assert RunDir(tmp_path / "run").load_checkpoint()["round"] == 2


def test_signal_during_the_commit_lets_the_round_commit_whole(tmp_path, monkeypatch):
    cfg = _small(tmp_path)
    real = RunDir.save_checkpoint
    saves = {"n": 0}

    def save_and_signal(self, state):
        saves["n"] += 1
        if state["round"] == 2:  # mid-commit of round 2: after its ledger append
            os.kill(os.getpid(), signal.SIGTERM)
        real(self, state)

    monkeypatch.setattr(RunDir, "save_checkpoint", save_and_signal)
    with InterruptGuard() as guard:
        summary = execute(cfg, out=tmp_path / "run", guard=guard)
    assert summary.interrupted == signal.SIGTERM and summary.rounds_completed == 2
    assert verify_ledger(tmp_path / "l.jsonl").rounds == 2
    ckpt = RunDir(tmp_path / "run").load_checkpoint()
    assert ckpt["round"] == 2 and ckpt["ledger_head"] == inspect_ledger(tmp_path / "l.jsonl").records[-1].hash


def test_interrupted_exception_is_raised_outside_critical_sections():
    with InterruptGuard() as guard:
        with pytest.raises(Interrupted) as e:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        assert e.value.exit_code == 130
        with pytest.raises(Interrupted):
            with guard.critical():
                os.kill(os.getpid(), signal.SIGTERM)
                done = True  # the section finishes before the signal takes effect
        assert done


# -- the checkpoint is bound to the ledger ------------------------------------------------------------


def test_resume_refuses_a_checkpoint_whose_ledger_head_does_not_match(tmp_path, monkeypatch):
    out = tmp_path / "run"
    old = tmp_path / "ckpt-round-1.pt"
    real = RunDir.save_checkpoint

    def save_and_keep(self, state):
        real(self, state)
        if state["round"] == 1:
            shutil.copy(self.checkpoint_file, old)

    monkeypatch.setattr(RunDir, "save_checkpoint", save_and_keep)
    cfg = _small(tmp_path, rounds=3)
    signalled = {"done": False}

    def stop_after_round_2(res):
        if res.round == 2 and not signalled["done"]:
            signalled["done"] = True
            os.kill(os.getpid(), signal.SIGINT)

    with InterruptGuard() as guard:
        summary = execute(cfg, out=out, guard=guard, on_round=stop_after_round_2)
    assert summary.interrupted and verify_ledger(tmp_path / "l.jsonl").rounds == 2
    # As if the process had been killed after round 2's ledger fsync, before its checkpoint rename.
    shutil.copy(old, out / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="bound to ledger head .* has head .* refused"):
        execute(resume_config(out), out=out, resume=True)
    assert verify_ledger(tmp_path / "l.jsonl").rounds == 2  # nothing appended
    res = CliRunner().invoke(app, ["run", "--resume", str(out)])
    assert res.exit_code == 2 and "bound to ledger head" in res.output


def test_resume_refuses_an_edited_task_and_changed_options(tmp_path):
    task = _task(tmp_path)
    out = tmp_path / "run"
    cfg = RunConfig(task=str(task), clients=6, per_round=2, rounds=1, seed=1, dp="central", secure_sum="plain")
    execute(cfg, out=out)
    task.write_text(SLOW_TASK.replace("lr=0.2", "lr=0.3"))
    with pytest.raises(LedgerConflictError, match="task_sha256"):
        execute(resume_config(out), out=out, resume=True)
    with pytest.raises(ConfigError, match="drop --rounds"):
        resume_config(out, rounds=5)
    res = CliRunner().invoke(app, ["run", "--resume", str(out), "--clip", "3"])
    assert res.exit_code == 2 and "drop --clip" in res.output
    res = CliRunner().invoke(app, ["run", "--resume", str(tmp_path / "nothing-here")])
    assert res.exit_code == 2 and "holds no privagg run" in res.output
    with pytest.raises(CheckpointError, match="already holds a run"):
        execute(cfg, out=out)


def test_corrupt_checkpoint_and_run_file_are_typed(tmp_path):
    out = tmp_path / "run"
    execute(_small(tmp_path, rounds=1), out=out)
    (out / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        RunDir(out).load_checkpoint()
    torch.save({"format": "other"}, out / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="not a privagg checkpoint"):
        RunDir(out).load_checkpoint()
    (out / "run.json").write_text("{")
    with pytest.raises(CheckpointError, match="cannot read"):
        RunDir(out).read_run()
    (out / "run.json").write_text('{"format": "x"}')
    with pytest.raises(CheckpointError, match="not a privagg run file"):
        RunDir(out).read_run()
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(CheckpointError, match="is a file, not a folder"):
        execute(_small(tmp_path, ledger=str(tmp_path / "other.jsonl")), out=f)


# -- one ledger, one run ------------------------------------------------------------------------------


def test_a_ledger_of_another_configuration_is_refused_naming_the_keys(tmp_path):
    execute(_small(tmp_path, rounds=1))
    before = (tmp_path / "l.jsonl").read_bytes()
    with pytest.raises(LedgerConflictError) as e:
        execute(_small(tmp_path, rounds=1, dp="distributed", secure_sum="masking"))
    msg = str(e.value)
    assert "dp (ledger: 'central', this run: 'distributed')" in msg
    assert "secure_sum (ledger: 'plain', this run: 'masking')" in msg
    assert e.value.differences["dp"] == ("central", "distributed")
    assert (tmp_path / "l.jsonl").read_bytes() == before  # nothing appended
    res = CliRunner().invoke(app, ["run", "--clients", "10", "--per-round", "4", "--rounds", "1", "--dp",
                                   "local", "--secure-sum", "plain", "--seed", "5", "--clip", "1.0",
                                   "--noise-multiplier", "1", "--ledger",
                                   str(tmp_path / "l.jsonl")])
    assert res.exit_code == 2 and "belongs to another run" in res.output and "dp (ledger: 'central'" in res.output


def test_failed_runs_leave_no_header_only_ledger_or_run_folder(tmp_path):
    # Budget spent before round 1: an error naming the fix, never exit 0 with epsilon 0.
    cfg = _small(tmp_path, target_epsilon=0.01, noise_multiplier=1.0)
    with pytest.raises(ConfigError, match="no round ran: .* raise --target-epsilon"):
        execute(cfg, out=tmp_path / "run")
    assert not (tmp_path / "l.jsonl").exists()
    assert not (tmp_path / "run" / "run.json").exists()
    res = CliRunner().invoke(app, ["run", "--clients", "10", "--per-round", "4", "--rounds", "3",
                                   "--target-epsilon", "0.01", "--noise-multiplier", "1", "--ledger",
                                   str(tmp_path / "l2.jsonl"), "--json"])
    assert res.exit_code == 2 and "no round ran" in res.output and "epsilon = 0.000" not in res.output
    assert not (tmp_path / "l2.jsonl").exists()
    # A construction error after the ledger was opened removes it too.
    with pytest.raises(Exception, match="bits"):
        execute(_small(tmp_path, bits=8, clients=200, per_round=100))
    assert not (tmp_path / "l.jsonl").exists()


def test_ledger_path_under_a_file_and_ledger_without_dp_are_refused(tmp_path):
    (tmp_path / "run.toml").write_text("")
    res = CliRunner().invoke(app, ["run", "--rounds", "1", "--clients", "5", "--ledger",
                                   str(tmp_path / "run.toml" / "l.jsonl")])
    assert res.exit_code == 2 and "run.toml is a file, not a folder" in res.output
    assert "Traceback" not in res.output and "FileExistsError" not in res.output
    res = CliRunner().invoke(app, ["run", "--rounds", "1", "--clients", "5", "--ledger", str(tmp_path)])
    assert res.exit_code == 2 and "is a folder" in res.output
    res = CliRunner().invoke(app, ["run", "--rounds", "1", "--clients", "5", "--dp", "none", "--ledger",
                                   str(tmp_path / "l.jsonl")])
    assert res.exit_code == 2 and "--dp none has none to record" in res.output


def test_out_folder_contract(tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["run", "--clients", "10", "--per-round", "4", "--rounds", "3", "--seed", "2",
                                   "--noise-multiplier", "1", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output.strip().splitlines()[-1])
    assert summary["rounds_completed"] == 3 and summary["rounds_aborted"] == 0 and summary["out"] == str(out)
    state = torch.load(out / "model.pt", weights_only=True)
    assert set(state) == {"1.weight", "1.bias"}
    metrics = _lines(out / "metrics.jsonl")
    assert [m["round"] for m in metrics] == [1, 2, 3]
    for key in ("accuracy", "loss", "epsilon", "cohort", "survivors", "bytes_up", "wall_s", "status"):
        assert all(key in m for m in metrics)
    assert json.loads((out / "summary.json").read_text())["rounds_completed"] == 3
    assert summary["ledger"] == str((out / "ledger.jsonl").resolve())
    assert verify_ledger(out / "ledger.jsonl").rounds == 3


@pytest.mark.parametrize(
    "extra",
    [
        {"record_noise_multiplier": 1.0, "dp": "none"},  # each client's Opacus accountant and call count
        {"adaptive_clip": True, "dp": "central"},  # the adaptive clip moves between rounds
    ],
    ids=["record-dp", "adaptive-clip"],
)
def test_in_process_resume_restores_record_accountants_and_adaptive_clip(tmp_path, extra):
    base = dict(clients=8, per_round=3, rounds=4, secure_sum="plain", seed=9, clip=1.0, server_momentum=0.5, **extra)
    straight = execute(RunConfig(**base), out=tmp_path / "a")
    fired = {"done": False}

    def stop_after_round_2(res):
        if res.round == 2 and not fired["done"]:
            fired["done"] = True
            os.kill(os.getpid(), signal.SIGINT)

    with InterruptGuard() as guard:
        first = execute(RunConfig(**base), out=tmp_path / "b", guard=guard, on_round=stop_after_round_2)
    assert first.interrupted and first.rounds_completed == 2
    resumed = execute(resume_config(tmp_path / "b"), out=tmp_path / "b", resume=True)
    assert resumed.rounds_completed == 4
    a, b = _state(tmp_path / "a" / "model.pt"), _state(tmp_path / "b" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    ja, jb = straight.to_json(), resumed.to_json()
    assert ja["epsilon"] == jb["epsilon"] and ja["per_round_accuracy"] == jb["per_round_accuracy"]
    if "record_level" in ja:
        assert ja["record_level"]["epsilon_max"] == jb["record_level"]["epsilon_max"]


def test_restore_refuses_a_checkpoint_of_another_model_or_without_its_ledger(tmp_path):
    from fl_core.checkpoint import federation_state, restore_federation
    from fl_core.runner import build_federation

    fed, _, _ = build_federation(_small(tmp_path))
    fed.fit(1)
    state = federation_state(fed)
    fed.close()
    other, _, _ = build_federation(_small(tmp_path, dp="none", ledger=None, model="mlp"))
    with pytest.raises(CheckpointError, match="bound to a ledger but this run opened none"):
        restore_federation(other, state)
    with pytest.raises(CheckpointError, match="does not fit this run's model"):
        restore_federation(other, {**state, "ledger_rounds": 0})
