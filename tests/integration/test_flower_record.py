"""Record-level DP on Flower (fl_core.transport.flower.record): each node's Opacus accountant outlives its processes.

Oracle: the in-process run with the same seed, where one RecordDP object keeps every
client's accountant for the whole run. Over the scripted grid each node keeps only what its
Flower ``context.state`` would keep between messages.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_flower import _flower_task_identity, _node, _ScriptedGrid, _small_cfg  # noqa: F401 (autouse fixture)
from test_flower_paillier import _configs, _Nodes, _options

pytestmark = [
    pytest.mark.flower,
    pytest.mark.skipif(
        importlib.util.find_spec("flwr") is None, reason="flwr is not installed: pip install 'privagg[flower]'"
    ),
]


def _record_cfg(**kw: Any) -> Any:
    base: dict[str, Any] = dict(
        dp="distributed", noise_multiplier=1.0, clip=1.0, rounds=2, record_noise_multiplier=1.5, server_momentum=0.0
    )
    base.update(kw)
    return _small_cfg(**base)


def _reference(cfg: Any, tmp_path: Path) -> tuple[Any, Any]:
    from fl_core.runner import build_federation

    ref, _, extra = build_federation(cfg.replace(ledger=str(tmp_path / "ref.jsonl")))
    ref.fit(cfg.rounds)
    return ref, extra["_record_dp"]


@pytest.mark.parametrize("ahead", [True, False])
def test_record_dp_over_flower_equals_the_in_process_run(ahead: bool, tmp_path: Path) -> None:
    from fl_core.transport.flower.server import run_privagg

    cfg = _record_cfg()
    ref, ref_record = _reference(cfg, tmp_path)
    nodes = _Nodes(_configs(3, []))
    grid = _ScriptedGrid(nodes, nodes=sorted(nodes.configs))
    report = run_privagg(grid, cfg.replace(ledger=str(tmp_path / "flower.jsonl")), _options(advertise_ahead=ahead))
    assert not nodes.errors, nodes.errors
    assert np.array_equal(report.final, ref.codec.flatten(ref.model))
    assert [r.epsilon for r in report.results] == [r.epsilon for r in ref.history]
    rec = report.to_json()["record_level"]
    ref_eps = {str(c): e for c, e in ref_record.epsilons().items()}
    assert {c: v["epsilon"] for c, v in rec["per_client"].items()} == ref_eps
    assert {c: v["steps"] for c, v in rec["per_client"].items()} == {str(c): ref_record.steps(c) for c in (1, 2, 3)}
    per = sorted(ref_eps.values())
    assert (rec["epsilon_max"], rec["epsilon_median"], rec["clients_trained"]) == (max(per), per[1], 3)
    assert rec["accountant"] == "opacus-rdp" and rec["noise_multiplier"] == 1.5
    # The accountant composed both rounds: every node reports more than after one round.
    _, one = _reference(cfg.replace(rounds=1), tmp_path / "one")
    assert all(rec["per_client"][str(c)]["epsilon"] > one.epsilon(c) > 0 for c in (1, 2, 3))


class _Forgetful(_Nodes):
    """Nodes that lose their record-DP accountant between rounds (as without the kept state)."""

    def __call__(self, node: int, content: Any) -> Any:
        from dataclasses import replace

        from fl_core.transport.flower.codec import decode_packet

        if decode_packet(content).stage == "train":
            self.states[node] = replace(self.states[node], record=None)
        return super().__call__(node, content)


def test_a_node_that_forgot_its_accountant_would_under_report(tmp_path: Path) -> None:
    from fl_core.transport.flower.server import run_privagg

    cfg = _record_cfg(secure_sum="plain", dp="none", noise_multiplier=None, clip=None)
    reports = []
    for i, cls in enumerate((_Nodes, _Forgetful)):
        nodes = cls(_configs(3, []))
        grid = _ScriptedGrid(nodes, nodes=sorted(nodes.configs))
        rep = run_privagg(grid, cfg.replace(ledger=str(tmp_path / f"{i}.jsonl")), _options())
        reports.append(rep.to_json()["record_level"]["per_client"])
    kept, forgot = reports
    assert all(forgot[c]["epsilon"] < kept[c]["epsilon"] for c in kept)
    assert all(forgot[c]["steps"] * 2 == kept[c]["steps"] for c in kept)  # only the last round's steps


def test_record_state_survives_the_flower_record() -> None:
    from fl_core.transport.flower.record import RecordState

    st = RecordState(3, 2, ((1.5, 0.125, 8), (1.5, 0.25, 2)))
    assert RecordState.from_record(st.to_record()) == st
