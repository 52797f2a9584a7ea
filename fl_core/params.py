"""Conversion between a model's trainable state and one flat float32 vector.

Trainable parameters (``requires_grad``) are always federated. Floating-point
buffers (e.g. BatchNorm running statistics) are a documented choice:

* ``buffers="local"`` (default): buffers are not federated. The global model's
  buffers stay as they are; clients' buffer changes are discarded. This keeps
  every value that leaves a client inside the clipped, noised update (a running
  mean is a statistic of the client's data and would otherwise escape DP).
  Prefer GroupNorm/LayerNorm over BatchNorm, as Opacus does.
* ``buffers="aggregate"``: float buffers are appended to the vector and travel
  with the parameters (clipped, noised, securely summed, averaged).

Integer buffers (``num_batches_tracked``) are never federated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from fl_core.errors import ModelError, UpdateError

__all__ = ["ParamCodec", "TensorSlot"]

BufferPolicy = Literal["local", "aggregate"]


@dataclass(frozen=True, slots=True)
class TensorSlot:
    """Where one named tensor lives in the flat vector."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    offset: int
    numel: int
    is_buffer: bool


class ParamCodec:
    """Flatten a model's federated tensors into float32 and write them back.

    Args:
        model: the reference model; its structure is recorded here and every later
            model passed in must have the same names, shapes and dtypes.
        buffers: ``"local"`` or ``"aggregate"`` (see the module docstring).

    Raises:
        ModelError: a trainable parameter is not floating point, or nothing is trainable.
    """

    def __init__(self, model: nn.Module, *, buffers: BufferPolicy = "local") -> None:
        if buffers not in ("local", "aggregate"):
            raise ModelError(f"buffers must be 'local' or 'aggregate', got {buffers!r}")
        slots: list[TensorSlot] = []
        offset = 0
        for name, p in model.named_parameters():
            if not p.dtype.is_floating_point:
                raise ModelError(
                    f"parameter {name!r} has dtype {p.dtype}; only floating-point parameters can be "
                    "federated (register integer state with register_buffer instead)"
                )
            if not p.requires_grad:
                continue
            slots.append(TensorSlot(name, tuple(p.shape), p.dtype, offset, p.numel(), False))
            offset += p.numel()
        if buffers == "aggregate":
            for name, b in model.named_buffers():
                if b.dtype.is_floating_point:
                    slots.append(TensorSlot(name, tuple(b.shape), b.dtype, offset, b.numel(), True))
                    offset += b.numel()
        if offset == 0:
            raise ModelError("the model has no trainable floating-point parameters")
        self.slots: tuple[TensorSlot, ...] = tuple(slots)
        self.dim = offset
        self.buffers: BufferPolicy = buffers

    def _tensors(self, model: nn.Module) -> list[torch.Tensor]:
        params = dict(model.named_parameters())
        bufs = dict(model.named_buffers())
        out = []
        for s in self.slots:
            t = (bufs if s.is_buffer else params).get(s.name)
            if t is None or tuple(t.shape) != s.shape or t.dtype != s.dtype:
                raise ModelError(f"model does not match the codec at {s.name!r} (expected {s.shape} {s.dtype})")
            out.append(t)
        return out

    def flatten(self, model: nn.Module) -> npt.NDArray[np.float32]:
        """The federated tensors of ``model`` as one float32 vector (a copy)."""
        vec = np.empty(self.dim, dtype=np.float32)
        with torch.no_grad():
            for s, t in zip(self.slots, self._tensors(model), strict=True):
                vec[s.offset : s.offset + s.numel] = t.detach().reshape(-1).to(torch.float32).cpu().numpy()
        return vec

    def unflatten_into(self, model: nn.Module, vec: npt.ArrayLike) -> None:
        """Write ``vec`` into ``model``'s federated tensors, casting to each tensor's dtype.

        Raises:
            UpdateError: wrong length or non-finite values (the model is left untouched).
        """
        v = np.asarray(vec)
        if v.ndim != 1 or v.shape[0] != self.dim:
            raise UpdateError(f"vector has shape {v.shape}, expected ({self.dim},)")
        if not np.all(np.isfinite(v)):
            raise UpdateError("vector has NaN or Inf values; the model was not changed")
        tensors = self._tensors(model)
        with torch.no_grad():
            for s, t in zip(self.slots, tensors, strict=True):
                chunk = torch.from_numpy(np.ascontiguousarray(v[s.offset : s.offset + s.numel]))
                t.copy_(chunk.reshape(s.shape).to(dtype=s.dtype, device=t.device))

    def names(self) -> list[str]:
        return [s.name for s in self.slots]
