"""Budget: a round that would exceed the target is refused before it runs."""

from __future__ import annotations

import pytest

from dp.accountants import compute_epsilon
from dp.budget import Budget
from dp.errors import BudgetExceededError, ConfigurationError
from dp.events import DPMode, Mechanism, RoundEvent, Sampling


def ev(i: int, z: float = 1.0) -> RoundEvent:
    return RoundEvent(
        round=i,
        mode=DPMode.CENTRAL,
        mechanism=Mechanism.GAUSSIAN,
        l2_sensitivity=1.0,
        noise_variance=z * z,
        clip_norm=1.0,
        sampling=Sampling.POISSON,
        sampling_rate=0.2,
        population=100,
        cohort=20,
        survivors=20,
    )


def test_budget_stops_exactly_when_exceeded() -> None:
    b = Budget(2.0, 1e-5, accountant="rdp")
    run: list[RoundEvent] = []
    with pytest.raises(BudgetExceededError) as info:
        for i in range(1, 1000):
            eps = b.check(run, ev(i))
            assert eps <= 2.0
            run.append(ev(i))
    err = info.value
    assert err.epsilon_if_run > 2.0 and err.target_epsilon == 2.0
    assert f"round {len(run) + 1}" in str(err)
    # The refused round was not added; what ran is within budget, one more would not be.
    assert b.spent(run) <= 2.0 < compute_epsilon([*run, ev(len(run) + 1)], 1e-5, accountant="rdp")


def test_budget_pld_default() -> None:
    b = Budget(1.0, 1e-5)
    assert b.accountant == "pld"
    assert b.check([], ev(1, z=3.0)) == pytest.approx(compute_epsilon([ev(1, z=3.0)], 1e-5))
    assert "Budget(" in repr(b)


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((0.0, 1e-5), {}, "target_epsilon"),
        ((float("inf"), 1e-5), {}, "target_epsilon"),
        ((1.0, 0.0), {}, "delta"),
        ((1.0, 1.0), {}, "delta"),
        ((1.0, 1e-5), {"accountant": "prv"}, "accountant"),
    ],
)
def test_budget_errors(args: tuple[float, float], kwargs: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        Budget(*args, **kwargs)
