"""What a SuperNode's operator allows: the node's identity and its policy floor, read from its node config.

Every Flower transport module that acts for a node reads the node configuration
through here; this module imports no other transport module.
"""

from __future__ import annotations

from typing import Any

from fl_core.config import RunConfig
from fl_core.errors import ConfigError, FLError

__all__ = [
    "PIN_KEY",
    "NodePolicyError",
    "check_key_pin_format",
    "check_node_policy",
    "client_id_of",
]

PIN_KEY = "paillier-public-key-sha256"


class NodePolicyError(FLError):
    """The server asked this node to take part in a round weaker than the node operator allows."""


def client_id_of(node_config: Any) -> int:
    """The privagg client id of a SuperNode: ``partition-id`` (0-based) + 1.

    Raises:
        ConfigError: the node was started without an integer ``partition-id``.
    """
    pid = node_config.get("partition-id") if node_config is not None else None
    if isinstance(pid, bool) or not isinstance(pid, int) or pid < 0:
        raise ConfigError(
            "this SuperNode has no integer partition-id >= 0; start it with "
            "--node-config 'partition-id=K' (client K+1 of the run)",
            option="partition-id",
        )
    return pid + 1


def check_key_pin_format(node_config: Any) -> str | None:
    """The pinned key fingerprint (64 lowercase hex digits), or None when the node pins none.

    Raises:
        ConfigError: the pin is not a SHA-256 hex digest.
    """
    pin = (node_config or {}).get(PIN_KEY)
    if pin is None:
        return None
    text = str(pin).strip().lower()
    if len(text) != 64 or any(ch not in "0123456789abcdef" for ch in text):
        raise ConfigError(
            f"{PIN_KEY} must be the 64-hex-digit SHA-256 printed by `privagg keygen paillier`, got {pin!r}",
            option=PIN_KEY,
        )
    return text


def check_node_policy(cfg: RunConfig, node_config: Any) -> None:
    """Refuse a run configuration below the node operator's floor.

    The server sends the run configuration; a node operator who does not trust it to
    keep the promised protection pins a floor in the node config:
    ``require-dp`` (e.g. ``"distributed"``), ``require-secure-sum`` (e.g. ``"masking"``)
    and ``min-noise-multiplier``. A node with no such keys accepts what the server sends.
    A node that pins the Paillier key (``paillier-public-key-sha256``) refuses any other
    key in the opening message (:class:`fl_core.transport.flower.paillier.KeyPinError`);
    the pin's format is checked here, whatever the backend.

    Raises:
        NodePolicyError: the configuration is below the floor (the node does not train
            or reveal anything; it is a dropout for the round).
        ConfigError: the node config's pin is not a SHA-256 hex digest.
    """
    check_key_pin_format(node_config)
    nc = node_config or {}
    want_dp = nc.get("require-dp")
    if want_dp is not None and cfg.dp != want_dp:
        raise NodePolicyError(f"this node requires dp={want_dp!r}; the server asked for dp={cfg.dp!r}: refused")
    want_ss = nc.get("require-secure-sum")
    if want_ss is not None and cfg.secure_sum != want_ss:
        raise NodePolicyError(
            f"this node requires secure-sum={want_ss!r}; the server asked for {cfg.secure_sum!r}: refused"
        )
    floor = nc.get("min-noise-multiplier")
    if floor is not None:
        z = cfg.noise_multiplier if cfg.noise_multiplier is not None else 1.0
        if cfg.dp == "none" or z < float(floor):
            raise NodePolicyError(
                f"this node requires a noise multiplier >= {float(floor)}; the server asked for "
                f"dp={cfg.dp!r} with {z}: refused"
            )
