"""The built-in CNN of the utility rows: GroupNorm, no buffers, every value federated and clipped."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fl_core.errors import ConfigError
from fl_core.models import build_model
from fl_core.params import ParamCodec


@pytest.mark.parametrize(("shape", "dim"), [((1, 28, 28), 11_322), ((1, 8, 8), 4_122)])
def test_cnn_shape_and_size(shape, dim):
    model = build_model("cnn", shape, 10)
    assert model(torch.zeros(3, *shape)).shape == (3, 10)
    assert sum(p.numel() for p in model.parameters()) == dim


def test_cnn_normalises_with_groupnorm_and_holds_no_state_outside_its_parameters():
    model = build_model("cnn", (1, 28, 28), 10)
    kinds = {type(m) for m in model.modules()}
    assert nn.GroupNorm in kinds
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert list(model.buffers()) == []
    # Every entry of the state dict is a trainable parameter, so the federated vector (what is
    # clipped, noised and securely summed) is the whole model under either buffer policy.
    params = dict(model.named_parameters())
    assert set(model.state_dict()) == set(params) and all(p.requires_grad for p in params.values())
    for policy in ("local", "aggregate"):
        assert ParamCodec(model, buffers=policy).dim == sum(p.numel() for p in params.values())


def test_cnn_round_trips_through_the_flat_vector():
    model = build_model("cnn", (1, 28, 28), 10)
    codec = ParamCodec(model)
    vec = codec.flatten(model)
    other = build_model("cnn", (1, 28, 28), 10)
    codec.unflatten_into(other, vec)
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(model(x), other(x))


def test_opacus_accepts_the_cnn():
    from opacus.validators import ModuleValidator

    assert ModuleValidator.validate(build_model("cnn", (1, 28, 28), 10), strict=False) == []
    # The same check rejects a BatchNorm model (so the assertion above is not vacuous).
    bn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))
    assert ModuleValidator.validate(bn, strict=False) != []


def test_cnn_refuses_flat_inputs():
    with pytest.raises(ConfigError, match="cnn needs"):
        build_model("cnn", (784,), 10)
