from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from fl_core.errors import ModelError, UpdateError
from fl_core.params import ParamCodec


def _model(sizes, dtype):
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b).to(dtype), nn.Tanh()]
    return nn.Sequential(*layers)


@given(
    st.lists(st.integers(1, 6), min_size=2, max_size=4),
    st.sampled_from([torch.float32, torch.float64]),
    st.integers(0, 2**31),
)
def test_round_trip_is_exact(sizes, dtype, seed):
    torch.manual_seed(seed % 1000)
    model = _model(sizes, dtype)
    codec = ParamCodec(model)
    vec = codec.flatten(model)
    assert vec.dtype == np.float32 and vec.shape == (codec.dim,)
    target = _model(sizes, dtype)
    codec.unflatten_into(target, vec)
    # float32 values written back and read again are bit-identical
    assert np.array_equal(codec.flatten(target), vec)
    for (n1, p1), (n2, p2) in zip(model.named_parameters(), target.named_parameters()):
        assert n1 == n2 and p1.shape == p2.shape and p1.dtype == p2.dtype
        if dtype == torch.float32:
            assert torch.equal(p1, p2)


def test_names_shapes_and_frozen_params():
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    model[0].weight.requires_grad_(False)
    codec = ParamCodec(model)
    assert codec.names() == ["0.bias", "1.weight", "1.bias"]
    assert codec.dim == 2 + 2 + 1


def test_buffers_policy():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    local = ParamCodec(model)
    agg = ParamCodec(model, buffers="aggregate")
    assert agg.dim == local.dim + 8  # running_mean, running_var; num_batches_tracked (int) excluded
    model[1].running_mean.fill_(3.0)
    vec = agg.flatten(model)
    other = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    agg.unflatten_into(other, vec)
    assert torch.all(other[1].running_mean == 3.0)
    with pytest.raises(ModelError, match="buffers"):
        ParamCodec(model, buffers="weird")  # type: ignore[arg-type]


def test_non_float_parameter_is_refused():
    model = nn.Linear(2, 2)
    model.register_parameter("steps", nn.Parameter(torch.zeros(2, dtype=torch.int64), requires_grad=False))
    with pytest.raises(ModelError, match="floating-point") as e:
        ParamCodec(model)
    assert "steps" in str(e.value)
    model2 = nn.Linear(2, 2)
    model2.register_buffer("steps", torch.zeros(2, dtype=torch.int64))
    assert ParamCodec(model2, buffers="aggregate").dim == 6  # integer buffers are never federated


def test_nothing_trainable_is_refused():
    model = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ModelError, match="no trainable"):
        ParamCodec(model)


def test_unflatten_rejects_bad_vectors_and_leaves_model():
    model = nn.Linear(2, 2)
    codec = ParamCodec(model)
    before = codec.flatten(model)
    bad = before.copy()
    bad[1] = np.nan
    with pytest.raises(UpdateError, match="NaN"):
        codec.unflatten_into(model, bad)
    with pytest.raises(UpdateError, match="shape"):
        codec.unflatten_into(model, before[:-1])
    assert np.array_equal(codec.flatten(model), before)
    with pytest.raises(ModelError, match="does not match"):
        codec.flatten(nn.Linear(3, 2))
