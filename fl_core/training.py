"""A plain local-SGD ``train_fn`` for the built-in runs, shaped like a user's own training loop."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

__all__ = ["make_sgd_train_fn"]


def make_sgd_train_fn(  # type: ignore[no-untyped-def]
    *,
    epochs: int = 1,
    lr: float = 0.1,
    batch_size: int = 16,
    momentum: float = 0.0,
    seed: int = 0,
    record_dp: bool = False,
):
    """Return ``train_fn(model, data)`` running ``epochs`` of minibatch SGD with cross-entropy.

    With ``record_dp`` the loop has the one extra line of :func:`fl_core.record_dp.make_private`
    (Opacus DP-SGD); wrap the returned function with ``RecordDP.wrap``.

    Shuffling uses a torch Generator seeded per call from ``seed``, the starting
    weights and the data size - not from how many calls came before - so runs are
    reproducible and a client trains identically in the in-process simulation and
    on its own machine (a Flower SuperNode runs each round in a fresh process).
    """

    def train_fn(model: nn.Module, data: Dataset[Any]) -> None:
        g = torch.Generator().manual_seed((seed * 1_000_003 + _call_key(model, len(data))) % (1 << 63))  # type: ignore[arg-type]
        loader = DataLoader(data, batch_size=batch_size, shuffle=True, generator=g)
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
        if record_dp:
            import warnings

            from fl_core.record_dp import make_private

            model, opt, loader = make_private(model, opt, loader)
            # Opacus' hooks make torch warn that inputs need no gradient: expected, not actionable.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
        model.train()
        device = next(model.parameters()).device
        for _ in range(epochs):
            for x, y in loader:
                x, y = x.to(device), y.to(device)
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(x), y)
                loss.backward()
                opt.step()

    return train_fn


def _call_key(model: nn.Module, n: int) -> int:
    """63 bits of SHA-256 over the model's starting weights and the data size."""
    import hashlib

    h = hashlib.sha256(n.to_bytes(8, "little"))
    with torch.no_grad():
        for p in model.parameters():
            h.update(p.detach().to(torch.float32).cpu().numpy().tobytes())
    return int.from_bytes(h.digest()[:8], "little") >> 1
