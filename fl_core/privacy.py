"""Turn the DP options of a run into the round loop's privacy policy and accounting hooks."""

from __future__ import annotations

from typing import Any

from torch import nn

from fl_core.config import RunConfig
from fl_core.errors import ConfigError
from fl_core.pipeline import NoPrivacy
from fl_core.sampling import Sampler

__all__ = ["build_privacy"]


def build_privacy(cfg: RunConfig, sampler: Sampler, model: nn.Module) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return (Federation keyword arguments, extra summary fields) for ``cfg``'s DP mode."""
    if cfg.dp == "none":
        return {"privacy": NoPrivacy(clip_norm=cfg.clip if cfg.clip is not None else 10.0)}, {}
    raise ConfigError(f"--dp {cfg.dp} is not wired into the round loop yet", option="dp")
