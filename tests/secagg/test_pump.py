"""secagg.pump: the one stage loop shared by the in-process simulation and the Flower transport."""

from __future__ import annotations

import pytest

from secagg import SERVER, LocalProtocolError, Message
from secagg.pump import pump_stages


class ScriptedServer:
    """A server session that emits a scripted list of stages, one per close or delivery."""

    def __init__(self, stages: list[list[Message]], *, done_after: int | None) -> None:
        self.stages = list(stages)
        self.closed = 0
        self.done_after = done_after
        self.delivered = 0

    @property
    def done(self) -> bool:
        return self.done_after is not None and self.delivered + self.closed >= self.done_after

    def close_stage(self) -> list[Message]:
        self.closed += 1
        return self.stages.pop(0) if self.stages else []


def msg(stage: str, to: int = 1) -> Message:
    return Message(SERVER, to, 1, stage, b"x")


def test_delivers_each_stage_and_closes_when_nothing_comes_back() -> None:
    srv = ScriptedServer([[msg("b")]], done_after=4)
    seen: list[tuple[str, int]] = []

    def deliver(batch: list[Message], step: int) -> list[Message]:
        srv.delivered += 1
        seen.extend((m.stage, step) for m in batch)
        return []

    res = pump_stages(srv, [msg("a")], deliver)  # type: ignore[arg-type]
    assert seen == [("a", 1), ("b", 2)]
    assert res.steps == 2 and srv.closed == 2 and srv.done


def test_a_session_that_closes_stages_and_sends_nothing_is_a_stall() -> None:
    srv = ScriptedServer([], done_after=None)
    with pytest.raises(LocalProtocolError, match="stalled"):
        pump_stages(srv, [], lambda b, s: [])  # type: ignore[arg-type]
    assert srv.closed == 3


def test_step_limit_and_custom_error() -> None:
    class Boom(Exception):
        pass

    srv = ScriptedServer([], done_after=None)
    with pytest.raises(Boom, match="within 3 stages"):
        pump_stages(srv, [msg("a")], lambda b, s: [msg("a")], max_steps=3, stalled=Boom)  # type: ignore[arg-type]


def test_on_close_runs_after_every_close() -> None:
    srv = ScriptedServer([[msg("b")]], done_after=4)
    calls: list[int] = []

    def deliver(batch: list[Message], step: int) -> list[Message]:
        srv.delivered += 1
        return []

    pump_stages(srv, [msg("a")], deliver, on_close=lambda: calls.append(srv.closed))  # type: ignore[arg-type]
    assert calls == [1, 2]
