"""The ClientApp of this Flower app: one privagg client per SuperNode (``partition-id`` K is client K+1)."""

from fl_core.transport.flower.client import app

__all__ = ["app"]
