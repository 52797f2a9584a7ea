"""What a run actually is, written into its ledger header: the user's model, task, DP and secure-sum settings.

The description is built from the objects the run uses (the model's class, parameter
count and a SHA-256 of its initial weights; the task's origin and file hash), never
from defaults of another run. Two descriptions are compared key by key to refuse
appending one run's rounds to another run's ledger.
"""

from __future__ import annotations

import hashlib
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["describe_model", "describe_run", "description_differences", "BUILTIN_ONLY_OPTIONS"]

TASK_MODULE_PREFIX = "privagg_task_"
"""Task files are imported as ``privagg_task_<hash of their path>`` (see :func:`fl_core.task.load_task`)."""

BUILTIN_ONLY_OPTIONS = ("dataset", "model", "partition", "alpha", "lr", "local_epochs", "batch_size")
"""Options that configure privagg's own demo task only (a user's task brings its own)."""

# How a run is executed, not what it is: not part of its identity.
_NOT_IDENTITY = ("ledger", "threads", "device", "max_consecutive_aborts", "task", "node_config")


def describe_model(model: nn.Module) -> dict[str, Any]:
    """Class (qualified name), parameter count and SHA-256 of the state_dict (names, dtypes, shapes, bytes)."""
    cls = type(model)
    module = cls.__module__
    if module.startswith(TASK_MODULE_PREFIX):  # a task file imported under a private name: use the file's
        source = getattr(sys.modules.get(module), "__file__", None)
        module = Path(source).stem if source else module
    h = hashlib.sha256()
    with torch.no_grad():
        for name, t in model.state_dict().items():
            t = t.detach().cpu().contiguous()
            h.update(f"{name}|{str(t.dtype)}|{tuple(t.shape)}|".encode())
            h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return {
        "model_class": f"{module}.{cls.__qualname__}",
        "model_parameters": int(sum(p.numel() for p in model.parameters())),
        "model_sha256": h.hexdigest(),
    }


def describe_run(cfg: Any, *, task_origin: str, task_sha256: str | None, builtin: bool, model: nn.Module,
                 data_name: str | None = None) -> dict[str, Any]:
    """The flat, JSON-serialisable description of a run (the ledger header's ``meta``).

    Holds every option that shapes the mechanism or the training (DP mode, clip, noise,
    delta, sampling, secure sum, rounds, seed, ...), the task's origin and file hash, the
    node-config template, and :func:`describe_model` of the initial model. Options of
    privagg's own demo (``dataset``, ``model``, ``lr``, ...) appear only for that demo.
    """
    out: dict[str, Any] = {}
    for k, v in cfg.to_dict().items():
        if k in _NOT_IDENTITY or (not builtin and k in BUILTIN_ONLY_OPTIONS):
            continue
        out[k] = "inf" if isinstance(v, float) and math.isinf(v) else v  # canonical JSON has no Infinity
    if builtin and data_name is not None:
        out["dataset"] = data_name
    out["task"] = task_origin
    if task_sha256 is not None:
        out["task_sha256"] = task_sha256
    if getattr(cfg, "node_config", None):
        out["node_config"] = cfg.node_config
    out.update(describe_model(model))
    return out


_MISSING = "<absent>"


def description_differences(ledger: Mapping[str, Any], run: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Keys whose values differ between a ledger header's description and this run's: key -> (ledger, run)."""
    out: dict[str, tuple[Any, Any]] = {}
    for k in sorted(set(ledger) | set(run)):
        a, b = ledger.get(k, _MISSING), run.get(k, _MISSING)
        if a != b:
            out[k] = (a, b)
    return out
