"""A node's own privacy budget on Flower: its hash-chained record and its ``max-epsilon``.

A node with ``max-epsilon`` refuses the round that would take its epsilon against the
server past it, before training: it is a dropout for that round, the round completes
without it, and its record (kept in its Flower state, or in its ``privacy-record`` file)
audits with ``privagg audit --client-record``. Once over the air (real SuperLink and
SuperNodes), once over a scripted grid with a user's task.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from test_flower import APP, PRIVAGG, REPO, _flower_task_identity  # noqa: F401 (autouse fixture)
from test_flower_task import BASE, UserTask, _cfg, _configs, _run, write_shards

pytestmark = [
    pytest.mark.flower,
    pytest.mark.skipif(
        importlib.util.find_spec("flwr") is None, reason="flwr is not installed: pip install 'privagg[flower]'"
    ),
]


def _per_round(cfg: Any, task: Any, node_config: dict[str, Any], rounds: int) -> list[float]:
    """A node's epsilon against the server after 1..rounds rounds, from the event it charges (its own view)."""
    from dp.client_record import ClientRecord
    from fl_core.transport.flower.budget import node_budget
    from fl_core.transport.flower.client import _client_build
    from fl_core.transport.flower.policy import check_node_policy, check_round_terms

    fed, _ = _client_build(cfg, task=task, node_config=node_config)
    check_round_terms(fed, check_node_policy(cfg, node_config), clip=cfg.clip)
    event = node_budget(fed, node_config, 1, None).event_for(1)
    rec = ClientRecord.create("probe")
    out = []
    for _ in range(rounds):
        rec.charge(event, max_epsilon=math.inf)
        out.append(rec.epsilon_vs_server())
    return out


def _audit(path: Path) -> tuple[int, dict[str, Any]]:
    out = subprocess.run(
        [*PRIVAGG, "audit", "--client-record", str(path), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    return out.returncode, json.loads(out.stdout) if out.stdout.strip() else {}


def test_a_node_refuses_the_round_past_its_limit_and_the_round_goes_on_without_it(tmp_path: Path) -> None:
    root = tmp_path / "shards"
    write_shards(root, 5)
    cfg = _cfg(tmp_path, rounds=3, min_survivors=4)
    configs = _configs(root, 5)
    eps = _per_round(cfg, UserTask(root=root).as_task(), configs[BASE + 3], 2)
    limit = (eps[0] + eps[1]) / 2  # round 1 fits, round 2 would not
    record_file = tmp_path / "node-3-record.jsonl"
    configs[BASE + 3].update({"max-epsilon": limit, "privacy-record": str(record_file)})
    user = UserTask()
    strategy, _result, fleet = _run(user.as_task(), cfg, configs)
    results = strategy.report.results
    assert [r.survivors for r in results] == [(1, 2, 3, 4, 5), (1, 2, 4, 5), (1, 2, 4, 5)]
    # Round 2: the server logs why; round 3: client 3 never advertised keys for it (its round-2 refusal
    # carried no key setup ahead), so it is a first-stage dropout without being asked again.
    rejected = strategy.report.traces[1].rejected
    assert any("client 3: dropped out: ClientBudgetExceededError" in r for r in rejected), rejected
    # Refused before training: client 3 trained in round 1 only (each node trains 12 examples per round).
    assert len(user.trained) == 5 + 4 + 4
    # Its record (file) holds exactly the round it joined, at its own limit, and audits.
    code, report = _audit(record_file)
    assert code == 0, report
    assert report["verified"] is True and report["rounds"] == [1] and report["client"] == "3"
    assert report["epsilon_vs_server"] == pytest.approx(eps[0], rel=1e-9) and report["epsilon_vs_server"] <= limit
    # The other nodes kept theirs in their Flower state: three rounds each, within the default limit.
    from dp.client_record import DEFAULT_CLIENT_MAX_EPSILON, ClientRecord

    for node, ctx in fleet.contexts.items():
        if node == BASE + 3:
            continue
        rec = ClientRecord.from_bytes(bytes(ctx.state.config_records["privagg.client_record"]["record"]))
        assert [c.round for c in rec.charges] == [1, 2, 3]
        assert rec.epsilon_vs_server() == pytest.approx(_per_round(cfg, user.as_task(), configs[node], 3)[-1])
        assert rec.epsilon_vs_server() <= DEFAULT_CLIENT_MAX_EPSILON


def test_the_record_outlives_the_run_and_a_tampered_record_is_refused(tmp_path: Path) -> None:
    """A second run starts from what the node already spent; an edited record stops the node, not its limit."""
    root = tmp_path / "shards"
    write_shards(root, 5)
    cfg = _cfg(tmp_path, rounds=1, min_survivors=4)
    configs = _configs(root, 5)
    eps = _per_round(cfg, UserTask(root=root).as_task(), configs[BASE + 2], 2)
    record_file = tmp_path / "node-2.jsonl"
    configs[BASE + 2].update({"max-epsilon": (eps[0] + eps[1]) / 2, "privacy-record": str(record_file)})
    first, _, _ = _run(UserTask().as_task(), cfg, configs)
    assert first.report.results[0].survivors == (1, 2, 3, 4, 5)
    second, _, _ = _run(UserTask().as_task(), cfg.replace(ledger=str(tmp_path / "second.jsonl")), configs)
    assert second.report.results[0].survivors == (1, 3, 4, 5)  # the second round of its life is refused
    lines = record_file.read_bytes().split(b"\n")
    lines[1] = lines[1].replace(b'"round":1', b'"round":7')
    record_file.write_bytes(b"\n".join(lines))
    code, report = _audit(record_file)
    assert code == 1 and report["verified"] is False
    third, _, _ = _run(UserTask().as_task(), cfg.replace(ledger=str(tmp_path / "third.jsonl")), configs)
    assert third.report.results[0].survivors == (1, 3, 4, 5)
    assert any("LedgerError" in r and "does not verify" in r for r in third.report.traces[0].rejected)


def test_max_epsilon_and_privacy_delta_are_checked(tmp_path: Path) -> None:
    from fl_core.errors import ConfigError
    from fl_core.transport.flower.budget import node_limit
    from fl_core.transport.flower.policy import NodePolicyError

    assert node_limit({}, "distributed") == (10.0, False)
    assert node_limit({}, "central") == (math.inf, False)
    assert node_limit({"max-epsilon": "inf"}, "local") == (math.inf, True)
    for bad in (0, -1.0, "lots", True, math.nan):
        with pytest.raises(ConfigError, match="max-epsilon must be a number > 0"):
            node_limit({"max-epsilon": bad}, "distributed")
    root = tmp_path / "shards"
    write_shards(root, 2)
    configs = _configs(root, 2)
    configs[BASE + 1]["max-epsilon"] = 5.0
    none = _cfg(tmp_path, clients=2, per_round=2, dp="none", rounds=1, secure_sum="plain")
    strategy, _, _ = _run(UserTask().as_task(), none, configs)
    assert strategy.report.results[0].survivors == (2,)  # a node with a limit refuses a run without DP
    assert any(NodePolicyError.__name__ in r and "without DP" in r for r in strategy.report.traces[0].rejected)
    configs[BASE + 1] = {**configs[BASE + 1], "max-epsilon": 50.0, "privacy-delta": 2.0}
    strategy, _, _ = _run(
        UserTask().as_task(),
        _cfg(tmp_path, clients=2, per_round=2, rounds=1, secure_sum="plain", min_survivors=1),
        configs,
    )
    assert any("privacy-delta must be a number in (0, 1)" in r for r in strategy.report.traces[0].rejected)


@pytest.mark.skipif(
    not all(shutil.which(x) for x in ("flower-superlink", "flower-supernode", "flwr")),
    reason="the Flower CLI (flower-superlink, flwr) is not on PATH",
)
def test_over_real_supernodes_a_node_past_its_limit_is_a_dropout_and_its_record_audits(tmp_path: Path) -> None:
    from fl_core.config import RunConfig
    from fl_core.transport.flower.local import LocalDeployment

    run = {
        "clients": 4,
        "per-round": 4,
        "rounds": 2,
        "model": "logreg",
        "local-epochs": 1,
        "secure-sum": "masking",
        "graph": "complete",
        "dp": "distributed",
        "noise-multiplier": 1.0,
        "clip": 1.0,
        "min-survivors": 3,
        "ledger": str(tmp_path / "ledger.jsonl"),
        "output-dir": str(tmp_path / "out"),
        "stage-timeout": 30.0,
        "train-timeout": 120.0,
        "connect-timeout": 60.0,
    }
    cfg = RunConfig(
        **{
            k.replace("-", "_"): v
            for k, v in run.items()
            if k
            in (
                "clients",
                "per-round",
                "rounds",
                "model",
                "local-epochs",
                "secure-sum",
                "graph",
                "dp",
                "noise-multiplier",
                "clip",
                "min-survivors",
            )
        }
    )
    eps = _per_round(cfg, None, {"partition-id": 1}, 2)
    limit = round((eps[0] + eps[1]) / 2, 3)
    record_file = tmp_path / "node-1.jsonl"
    with LocalDeployment(
        4,
        workdir=tmp_path / "deploy",
        node_configs={1: {"max-epsilon": limit, "privacy-record": str(record_file)}},
    ) as dep:
        dep.run(APP, run, timeout=400)
        logs = "\n".join(f"--- {n}\n{t[-3000:]}" for n, t in dep.logs() if "error" in t.lower())
    summary_file = tmp_path / "out" / "summary.json"
    assert summary_file.exists(), f"the ServerApp did not finish\n{logs}"
    summary = json.loads(summary_file.read_text())
    assert [r["survivors"] for r in summary["rounds"]] == [[1, 2, 3, 4], [1, 3, 4]]
    assert any("client 2: dropped out: ClientBudgetExceededError" in r for r in summary["rounds"][1]["rejected"])
    code, report = _audit(record_file)
    assert code == 0, report
    assert report["verified"] is True and report["rounds"] == [1]
    assert report["epsilon_vs_server"] <= limit < eps[1]
    audit = subprocess.run(
        [*PRIVAGG, "audit", str(tmp_path / "ledger.jsonl"), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert audit.returncode == 0, audit.stdout + audit.stderr
