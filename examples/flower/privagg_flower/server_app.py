"""The ServerApp of this Flower app: privagg's private aggregation server (see docs/flower.md)."""

from fl_core.transport.flower.server import app

__all__ = ["app"]
