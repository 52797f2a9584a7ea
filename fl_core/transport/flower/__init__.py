"""Flower transport: privagg's private aggregation across Flower SuperLink/SuperNode processes.

Needs the ``flower`` extra (``pip install 'privagg[flower]'``, flwr >= 1.41). The
Flower app objects live in :mod:`fl_core.transport.flower.server` (``app``, the
ServerApp) and :mod:`fl_core.transport.flower.client` (``app``, the ClientApp);
``examples/flower`` is a runnable app project that points at them. See docs/flower.md.
"""

from __future__ import annotations

from fl_core.errors import ConfigError

try:
    import flwr  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ConfigError(
        "the Flower transport needs flwr >= 1.41: pip install 'privagg[flower]'", option="transport"
    ) from exc

from fl_core.transport.flower.codec import FlowerCodecError, StagePacket, decode_packet, encode_packet
from fl_core.transport.flower.options import FlowerOptions, parse_run_config

__all__ = ["FlowerCodecError", "FlowerOptions", "StagePacket", "decode_packet", "encode_packet", "parse_run_config"]
