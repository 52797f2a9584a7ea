"""Issue 14, finding 6: in central mode the stochastic rounding of each client's encoding moves the
decoded sum before the server's noise; the charged sensitivity must include it."""

from __future__ import annotations

import math

import numpy as np

from dp.calibration import DPConfig
from dp.events import DPMode
from dp.noise import gaussian_grid
from dp.randomness import SeededRandomSource
from fl_core.pipeline import plan_for
from fl_core.privacy import DPPolicy
from fl_core.sampling import Cohort, Sampler, SamplingScheme
from secagg import FixedPointEncoder


def test_charged_sensitivity_covers_a_rounded_update_that_exceeds_the_clip() -> None:
    d, clip = 3, 1.0
    sampler = Sampler.full(10)
    policy = DPPolicy(
        DPConfig(mode=DPMode.CENTRAL, noise_multiplier=1.0, clip_norm=clip, expected_cohort=10),
        sampler=sampler,
        dim=d,
        delta=1e-5,
    )
    plan = plan_for(policy, sampler, d, 20)
    enc = FixedPointEncoder(plan)
    q = 1.0 / plan.scale
    # A clipped update along (1, 1, 1) whose coordinates sit 0.2 quanta above a grid point:
    # each rounds up (by 0.8 quanta, in the update's direction) with probability 0.2.
    top = clip / math.sqrt(d)
    base = math.floor(top / q) * q + 0.2 * q
    if base > top:
        base -= q
    x = np.full(d, base)
    assert np.linalg.norm(x) <= clip
    rng = SeededRandomSource(6)
    worst = 0.0
    for i in range(4000):
        worst = max(worst, float(np.linalg.norm(enc.decode(enc.encode(x, rng.spawn(f"r{i}"))))))
    # The server noises this rounded contribution: it exceeds the clip by up to 0.8 * sqrt(3) quanta.
    assert worst > clip and worst > float(np.linalg.norm(x)) + q
    cohort = Cohort(tuple(range(1, 11)), SamplingScheme.FULL, 1.0, 10)
    event = policy.round_event(round=1, cohort=cohort, survivors=10, scale=plan.scale, dim=d, planned=False)
    g = gaussian_grid(policy.config.noise_multiplier * clip).granularity
    # What the event charges beyond the noise grid's snapping must cover the rounded update.
    assert event.l2_sensitivity - g * math.sqrt(d) >= worst
    assert event.l2_sensitivity >= clip + math.sqrt(d) / plan.scale
