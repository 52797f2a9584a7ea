"""Flower transport: privagg's private aggregation as a Flower add-on (a client mod and a server strategy).

An existing Flower app adds privagg the way it adds Flower's own SecAgg+: its ClientApp
gains :func:`privagg_mod` (``ClientApp(mods=[privagg_mod(task)])``) and its ServerApp
starts :class:`PrivAgg` instead of ``FedAvg``; the app's task module (:mod:`fl_core.task`:
``make_model``, ``train_fn``, ``load_data``, optional ``evaluate``) is the user's code on
both sides, and each SuperNode loads only its own data. Needs the ``flower`` extra
(``pip install 'privagg[flower]'``, flwr >= 1.41). ``examples/fashion-cnn`` and
``examples/flower`` are runnable apps; see docs/flower.md.
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
from fl_core.transport.flower.mod import privagg_mod
from fl_core.transport.flower.options import FlowerOptions, parse_run_config
from fl_core.transport.flower.strategy import PrivAgg

__all__ = [
    "FlowerCodecError",
    "FlowerOptions",
    "PrivAgg",
    "StagePacket",
    "decode_packet",
    "encode_packet",
    "parse_run_config",
    "privagg_mod",
]
