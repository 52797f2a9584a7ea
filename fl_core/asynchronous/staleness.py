"""Staleness weights: how much an update trained on an old model version counts in its buffer.

The staleness of an update is the number of buffers applied between the version the
client trained on and the version its buffer is applied to. FedBuff (Nguyen et al.,
AISTATS 2022, section 3) scales each update by ``1 / sqrt(1 + staleness)``; this module
offers that polynomial family, a constant weight and a hinge, all with values in (0, 1].

The CLIENT applies the weight, after clipping and before encoding and masking: the
server cannot weight terms inside a sum it never sees. Since every weight is at most 1,
a weighted clipped update still has norm at most the clip, so the DP sensitivity and the
noise sized for it are unchanged (see SECURITY.md, asynchronous secure aggregation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fl_core.errors import ConfigError

__all__ = ["StalenessWeight", "parse_staleness"]

_KINDS = ("polynomial", "constant", "hinge")


@dataclass(frozen=True, slots=True)
class StalenessWeight:
    """A weight function ``s -> w(s)`` in (0, 1] of the staleness ``s >= 0``.

    Attributes:
        kind: ``"polynomial"``: ``(1 + s) ** -exponent`` (FedBuff: exponent 0.5);
            ``"constant"``: 1 for every s; ``"hinge"``: 1 up to ``hinge_at``, then
            ``1 / (1 + exponent * (s - hinge_at))``.
        exponent: the polynomial exponent, or the hinge slope.
        hinge_at: the staleness the hinge starts at.
    """

    kind: str = "polynomial"
    exponent: float = 0.5
    hinge_at: int = 0

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ConfigError(
                f"staleness weighting {self.kind!r} is not known; use one of {_KINDS}", option="staleness"
            )
        if not (isinstance(self.exponent, (int, float)) and math.isfinite(self.exponent) and self.exponent >= 0):
            raise ConfigError(f"staleness exponent must be a finite number >= 0, got {self.exponent!r}",
                              option="staleness")
        if not (isinstance(self.hinge_at, int) and self.hinge_at >= 0):
            raise ConfigError(f"hinge_at must be an integer >= 0, got {self.hinge_at!r}", option="staleness")

    def __call__(self, staleness: int) -> float:
        """The weight of an update ``staleness`` versions old.

        Raises:
            ConfigError: a negative or non-integer staleness (a version from the future).
        """
        if not isinstance(staleness, int) or isinstance(staleness, bool) or staleness < 0:
            raise ConfigError(f"staleness must be an integer >= 0, got {staleness!r}", option="staleness")
        if self.kind == "constant":
            return 1.0
        if self.kind == "polynomial":
            return float((1.0 + staleness) ** -self.exponent)
        if staleness <= self.hinge_at:
            return 1.0
        return 1.0 / (1.0 + self.exponent * (staleness - self.hinge_at))

    def describe(self) -> str:
        if self.kind == "constant":
            return "constant (1)"
        if self.kind == "polynomial":
            return f"1/(1+s)^{self.exponent:g}"
        return f"hinge: 1 up to s={self.hinge_at}, then 1/(1+{self.exponent:g}(s-{self.hinge_at}))"


def parse_staleness(text: str) -> StalenessWeight:
    """Parse ``"polynomial[:a]"``, ``"constant"`` or ``"hinge:a:b"`` (CLI form); ``"fedbuff"`` is polynomial:0.5."""
    parts = [p.strip() for p in str(text).split(":")]
    kind = parts[0].lower()
    try:
        if kind == "fedbuff" and len(parts) == 1:
            return StalenessWeight("polynomial", 0.5)
        if kind == "constant" and len(parts) == 1:
            return StalenessWeight("constant", 0.0)
        if kind == "polynomial" and len(parts) <= 2:
            return StalenessWeight("polynomial", float(parts[1]) if len(parts) == 2 else 0.5)
        if kind == "hinge" and len(parts) == 3:
            return StalenessWeight("hinge", float(parts[1]), int(parts[2]))
    except ValueError:
        pass
    raise ConfigError(
        f"cannot read staleness weighting {text!r}: use fedbuff, constant, polynomial[:EXPONENT] or hinge:SLOPE:AT",
        option="staleness",
    )
