"""The client's privacy policy with a staleness weight applied right after clipping.

:class:`StalenessWeighted` wraps the run's :class:`~fl_core.pipeline.PrivacyPolicy` for
one client report: its :meth:`clip` returns ``w * clip(delta)`` with ``0 < w <= 1``;
everything else (noise, encoding bound, events) is the wrapped policy's, unchanged.
The :class:`~fl_core.pipeline.ClientPipeline` then runs as in a synchronous round, so
the weighted update is noised, encoded and masked by the client itself.

Security:
    ``||w * clip(delta)|| <= w * C <= C``: the L2 sensitivity the noise is sized for (C)
    still bounds the weighted update, whatever staleness the server claims; the weight
    is computed by the client and refused outside (0, 1]. The integer noise share is
    added after weighting and is not scaled, so the noise in the sum is the full noise
    the accountant charges. The adaptive clip's count bit still compares the unweighted
    norm with C (the quantile is of update norms, not of weights).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from fl_core.errors import ConfigError
from fl_core.pipeline import ClipOutcome, PrivacyPolicy
from fl_core.sampling import Cohort, Sampler
from secagg import RandomSource

__all__ = ["StalenessWeighted"]


class StalenessWeighted:
    """``policy`` whose clip also multiplies by ``weight`` (in (0, 1])."""

    def __init__(self, policy: PrivacyPolicy, weight: float) -> None:
        if not (isinstance(weight, float) and math.isfinite(weight) and 0.0 < weight <= 1.0):
            raise ConfigError(f"a staleness weight must be in (0, 1], got {weight!r}", option="staleness")
        self.policy = policy
        self.weight = weight

    # -- the one changed step ------------------------------------------------

    def clip(self, vec: npt.NDArray[Any]) -> ClipOutcome:
        c = self.policy.clip(vec)
        if self.weight == 1.0:
            return c
        return ClipOutcome(c.vector * self.weight, c.norm, c.clipped, c.saturated)

    # -- everything else is the wrapped policy's -----------------------------

    @property
    def mode(self) -> str:
        return self.policy.mode

    @property
    def clip_norm(self) -> float:
        return self.policy.clip_norm

    @property
    def delta(self) -> float | None:
        return self.policy.delta

    @property
    def min_survivors(self) -> int:
        return self.policy.min_survivors

    @property
    def releases_empty(self) -> bool:
        return self.policy.releases_empty

    def encoding_bound(self) -> float:
        return self.policy.encoding_bound()

    def encoding_noise_std(self, sampler: Sampler) -> float:
        return self.policy.encoding_noise_std(sampler)

    def local_noise(self, vec: npt.NDArray[np.float64], rng: RandomSource) -> npt.NDArray[np.float64]:
        return self.policy.local_noise(vec, rng)

    def client_integer_noise(
        self, dim: int, scale: float, sampler: Sampler, rng: RandomSource
    ) -> npt.NDArray[np.int64] | None:
        return self.policy.client_integer_noise(dim, scale, sampler, rng)

    def server_release(
        self, total: npt.NDArray[np.float64], sampler: Sampler, rng: RandomSource
    ) -> npt.NDArray[np.float64]:
        return self.policy.server_release(total, sampler, rng)

    def rounding_norm_bound(self, scale: float, dim: int) -> float | None:
        return self.policy.rounding_norm_bound(scale, dim)

    def round_event(
        self,
        *,
        round: int,  # noqa: A002
        cohort: Cohort,
        survivors: int,
        scale: float,
        dim: int,
        planned: bool,
        survivor_ids: tuple[int, ...] | None = None,
    ) -> Any:
        return self.policy.round_event(
            round=round, cohort=cohort, survivors=survivors, scale=scale, dim=dim, planned=planned,
            survivor_ids=survivor_ids,
        )

    @property
    def extra_coordinates(self) -> int:
        return self.policy.extra_coordinates

    def client_extra(self, clip: ClipOutcome) -> npt.NDArray[np.float64]:
        return self.policy.client_extra(clip)

    def observe_extra(self, values: npt.NDArray[np.float64]) -> None:
        self.policy.observe_extra(values)

    def after_round(self, clipped_fraction_estimate: float) -> None:
        self.policy.after_round(clipped_fraction_estimate)
