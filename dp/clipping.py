"""L2 clipping of a client's whole update, with a fixed or an adaptive (quantile-tracking) clip norm.

Security:
    Client-level DP needs every client's contribution to the sum bounded in L2
    norm by the clip C; :func:`clip_l2` guarantees ``||out||_2 <= C`` (checked
    after scaling, and rescaled once more if float rounding overshoots).
    The adaptive clip (Andrew, Thakkar, McMahan, Ramaswamy 2021, "Differentially
    Private Learning with Adaptive Clipping", Alg. 1 and Thm. 1) spends privacy
    on a noisy count of clients whose update norm was below the clip; that
    query is accounted by folding it into the round's noise multiplier
    (:func:`effective_noise_multiplier`), so it is never free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from dp.errors import ConfigurationError

__all__ = [
    "AdaptiveClip",
    "ClipResult",
    "FixedClip",
    "clip_l2",
    "effective_noise_multiplier",
    "update_noise_multiplier",
]


@dataclass(frozen=True, slots=True)
class ClipResult:
    """A clipped vector.

    Attributes:
        vector: the clipped update (float64, same shape as the input).
        norm: the L2 norm of the input before clipping.
        clipped: True if the input was scaled down.
    """

    vector: npt.NDArray[np.float64]
    norm: float
    clipped: bool


def _check_clip(clip_norm: float, name: str = "clip_norm") -> float:
    if not (isinstance(clip_norm, (int, float)) and math.isfinite(clip_norm) and clip_norm > 0):
        raise ConfigurationError(f"{name} must be a finite number > 0, got {clip_norm!r}")
    return float(clip_norm)


def clip_l2(vec: npt.ArrayLike, clip_norm: float) -> ClipResult:
    """Scale ``vec`` down to L2 norm ``clip_norm`` if it is longer.

    Raises:
        ConfigurationError: ``clip_norm`` is not finite and > 0, or ``vec`` has NaN/Inf.
    """
    c = _check_clip(clip_norm)
    v = np.asarray(vec, dtype=np.float64)
    if not np.all(np.isfinite(v)):
        raise ConfigurationError("the update has NaN or Inf values; refusing to clip it")
    norm = float(np.linalg.norm(v.ravel()))
    if norm <= c:
        return ClipResult(v.copy(), norm, False)
    out = v * (c / norm)
    # Float rounding can leave the norm a few ulps above c: shrink until it is not.
    while float(np.linalg.norm(out.ravel())) > c:
        out = out * (1.0 - 2.0**-50)
    return ClipResult(out, norm, True)


class FixedClip:
    """A constant clip norm."""

    def __init__(self, clip_norm: float) -> None:
        self._clip = _check_clip(clip_norm)

    @property
    def clip_norm(self) -> float:
        return self._clip

    @property
    def count_noise_std(self) -> float:
        """A fixed clip spends nothing on a quantile query."""
        return 0.0

    def clip(self, vec: npt.ArrayLike) -> ClipResult:
        return clip_l2(vec, self._clip)

    def __repr__(self) -> str:
        return f"FixedClip({self._clip!r})"


class AdaptiveClip:
    """Quantile-tracking clip norm with a geometric update (Andrew et al. 2021, Alg. 1).

    Each round every participating client reports the bit ``norm <= C``; the
    server sums the bits, adds Gaussian noise of std ``count_noise_std``
    (``sigma_b``) and divides by the expected number of clients to get
    ``noisy_fraction_below``; then ``C <- C * exp(-eta * (b - gamma))``.

    Args:
        initial_clip: starting C.
        target_quantile: gamma in (0, 1), the fraction of updates to leave unclipped.
        learning_rate: eta > 0.
        count_noise_std: sigma_b >= 0, std of the noise on the bit count (0 disables
            the noise: only for tests without privacy).
        min_clip / max_clip: the clip is kept within these bounds.
    """

    def __init__(
        self,
        initial_clip: float,
        *,
        target_quantile: float = 0.5,
        learning_rate: float = 0.2,
        count_noise_std: float = 0.0,
        min_clip: float = 1e-6,
        max_clip: float = 1e6,
    ) -> None:
        self._clip = _check_clip(initial_clip, "initial_clip")
        if not 0.0 < target_quantile < 1.0:
            raise ConfigurationError(f"target_quantile must be in (0, 1), got {target_quantile}")
        if not (math.isfinite(learning_rate) and learning_rate > 0):
            raise ConfigurationError(f"learning_rate must be finite and > 0, got {learning_rate}")
        if not (math.isfinite(count_noise_std) and count_noise_std >= 0):
            raise ConfigurationError(f"count_noise_std must be finite and >= 0, got {count_noise_std}")
        self._lo = _check_clip(min_clip, "min_clip")
        self._hi = _check_clip(max_clip, "max_clip")
        if not self._lo <= self._clip <= self._hi:
            raise ConfigurationError("need min_clip <= initial_clip <= max_clip")
        self.target_quantile = float(target_quantile)
        self.learning_rate = float(learning_rate)
        self.count_noise_std = float(count_noise_std)

    @property
    def clip_norm(self) -> float:
        return self._clip

    def clip(self, vec: npt.ArrayLike) -> ClipResult:
        return clip_l2(vec, self._clip)

    @staticmethod
    def below_bit(result: ClipResult, clip_norm: float) -> int:
        """The bit a client reports: 1 if its update norm was within the clip."""
        return int(result.norm <= clip_norm)

    def update(self, noisy_fraction_below: float) -> float:
        """Apply the geometric update and return the new clip norm.

        Raises:
            ConfigurationError: the fraction is not finite.
        """
        b = float(noisy_fraction_below)
        if not math.isfinite(b):
            raise ConfigurationError(f"noisy_fraction_below must be finite, got {noisy_fraction_below!r}")
        new = self._clip * math.exp(-self.learning_rate * (b - self.target_quantile))
        self._clip = min(self._hi, max(self._lo, new))
        return self._clip

    def __repr__(self) -> str:
        return (
            f"AdaptiveClip(clip={self._clip!r}, target_quantile={self.target_quantile}, "
            f"learning_rate={self.learning_rate}, count_noise_std={self.count_noise_std})"
        )


def effective_noise_multiplier(update_noise_multiplier: float, count_noise_std: float) -> float:
    """Noise multiplier of the joint (clipped-sum, clip-count) query.

    Security:
        Andrew et al. 2021, Thm. 1: the sum of clipped updates with noise
        multiplier z and the count of centred bits (sensitivity 1/2) with noise
        std sigma_b together are a Gaussian mechanism with
        z_eff = (z^-2 + (2 sigma_b)^-2)^(-1/2).

    Raises:
        ConfigurationError: a negative or non-finite argument.
    """
    z, sb = float(update_noise_multiplier), float(count_noise_std)
    if not (math.isfinite(z) and z >= 0 and math.isfinite(sb) and sb >= 0):
        raise ConfigurationError(f"need finite z >= 0 and sigma_b >= 0, got {z!r}, {sb!r}")
    if sb == 0.0 or z == 0.0:
        return z
    return float((z**-2 + (2.0 * sb) ** -2) ** -0.5)


def update_noise_multiplier(target_noise_multiplier: float, count_noise_std: float) -> float:
    """The update noise multiplier z that gives ``target`` once the count query is folded in.

    Inverse of :func:`effective_noise_multiplier`: z = (z_target^-2 - (2 sigma_b)^-2)^(-1/2).

    Raises:
        ConfigurationError: sigma_b is too small (2 sigma_b <= z_target): the count
            query alone would use up the whole budget of the round.
    """
    zt, sb = float(target_noise_multiplier), float(count_noise_std)
    if not (math.isfinite(zt) and zt > 0 and math.isfinite(sb) and sb >= 0):
        raise ConfigurationError(f"need finite z_target > 0 and sigma_b >= 0, got {zt!r}, {sb!r}")
    if sb == 0.0:
        return zt
    rest = zt**-2 - (2.0 * sb) ** -2
    if rest <= 0:
        raise ConfigurationError(
            f"count_noise_std {sb} is too small for noise multiplier {zt}: need count_noise_std > "
            f"{zt / 2:.6g} (Andrew et al. suggest about expected_cohort / 20)"
        )
    return float(rest**-0.5)
