"""A writer SIGKILLed at random points during 200 rounds leaves a ledger that `privagg audit` verifies.

The writer (``ledger_sigkill_writer.py``) appends each round to the ledger (fsync'd)
and only then publishes a model checkpoint carrying the round and the ledger head
hash. After every kill the test checks, through the real ``privagg audit`` command,
that the chain verifies, that the published model's head hash is in the chain at
exactly the model's round, and that each writer run since the last publish left at
most one round charged but not applied (a kill between the ledger fsync and the
publish). At the end every ledger round is
either applied to the model or listed as charged-but-unapplied, never both, never
neither.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dp.accountants import epsilon_curve
from fl_core.cli import app

ROUNDS = 200
MAX_KILLS = 12  # then the writer is left to finish
WRITER = Path(__file__).with_name("ledger_sigkill_writer.py")
REPO = Path(__file__).resolve().parents[2]


def audit(ledger: Path, head: str | None, *, verify_only: bool) -> dict:
    argv = ["audit", str(ledger), "--json", "--accountant", "rdp"]
    if head is not None:
        argv += ["--head", head]
    if verify_only:
        argv.append("--verify-only")
    res = CliRunner().invoke(app, argv)
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def check_consistent(ledger: Path, model: Path, *, runs_since_publish: int,
                     verify_only: bool = True) -> dict:
    state = json.loads(model.read_text())
    out = audit(ledger, state["head"], verify_only=verify_only)
    assert out["verified"] is True and out["torn_tail"] is None
    # The model was published after its record was durable: its head is in the chain
    # at exactly the model's round.
    assert out["anchor_round"] == state["round"]
    # Only a kill between a ledger fsync and the publish leaves a charged, unapplied round:
    # at most one per writer run since the model last changed.
    assert 0 <= out["rounds"] - state["round"] <= runs_since_publish
    assert out["unpublished_rounds"] == list(range(state["round"] + 1, out["rounds"] + 1))
    return out


def _run(tmp_path: Path, seed: int) -> None:
    ledger, model = tmp_path / "eps.jsonl", tmp_path / "model.json"
    eps_file = tmp_path / "eps.json"
    sys.path.insert(0, str(WRITER.parent))
    try:
        from ledger_sigkill_writer import event
    finally:
        sys.path.pop(0)
    eps_file.write_text(json.dumps(epsilon_curve([event(r) for r in range(1, ROUNDS + 1)], 1e-5,
                                                 accountant="rdp")))
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    rng = random.Random(seed)
    kills = 0
    last_round, runs_since_publish = -1, 0
    for attempt in range(MAX_KILLS + 1):
        proc = subprocess.Popen([sys.executable, str(WRITER), str(ledger), str(model), str(eps_file),
                                 str(ROUNDS), "0.005"], stdout=subprocess.PIPE, env=env, text=True)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.3))
        if attempt < MAX_KILLS and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        if model.exists():
            now = json.loads(model.read_text())["round"]
            runs_since_publish = 1 if now != last_round else runs_since_publish + 1
            last_round = now
            check_consistent(ledger, model, runs_since_publish=runs_since_publish)
        if proc.returncode == 0:
            break
    else:
        pytest.fail("the writer never finished 200 rounds")
    assert kills >= 3, "the writer finished too quickly for the kills to test anything"
    state = json.loads(model.read_text())
    out = check_consistent(ledger, model, runs_since_publish=0, verify_only=False)
    assert out["rounds"] == ROUNDS == state["round"]
    assert out["disagreements"] == []
    # Exactly the rounds whose update was applied, plus the charged-but-unapplied ones.
    assert state["applied"] + len(state["skipped"]) == ROUNDS
    applied_rounds = sorted(set(range(1, ROUNDS + 1)) - set(state["skipped"]))
    assert state["weights"] == sum(applied_rounds)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1])
def test_sigkill_ledger_verifies_and_counts_applied_rounds(tmp_path: Path, seed: int) -> None:
    _run(tmp_path, seed)
