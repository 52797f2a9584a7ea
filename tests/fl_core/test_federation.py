from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from dp.randomness import SeededRandomSource
from fl_core.errors import ConfigError, DataError, RoundFailedError
from fl_core.evaluation import make_evaluator
from fl_core.federation import Federation
from fl_core.params import ParamCodec
from fl_core.pipeline import NoPrivacy
from fl_core.sampling import Sampler
from fl_core.training import make_sgd_train_fn
from secagg import EncodingOverflowError, PlainSum


def _data(n_clients=4, per=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_clients):
        x = torch.randn(per, 3, generator=g)
        y = (x[:, 0] > 0).long()
        out.append(TensorDataset(x, y))
    return out


def _fed(train_fn=None, data=None, **kw):
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    return Federation(model, train_fn or make_sgd_train_fn(lr=0.5), data or _data(), rng=SeededRandomSource(1), **kw)


def _snapshot(fed):
    return ParamCodec(fed.model).flatten(fed.model).copy()


def test_fedavg_equals_mean_of_client_deltas():
    """Reference: with full participation, no DP and server lr 1, the new model is the mean of the
    clients' locally trained models (up to the encoding quantum)."""
    data = _data()
    fed = _fed(data=data)
    before = _snapshot(fed)
    deltas = []
    for i, d in enumerate(data):
        m = nn.Linear(3, 2)
        ParamCodec(m).unflatten_into(m, before)
        fed.train_fn(m, d)
        deltas.append(ParamCodec(m).flatten(m) - before)
    # re-create so the train_fn's shuffling seeds line up with the federation's calls
    fed = _fed(data=data)
    res = fed.run_round()
    after = _snapshot(fed)
    assert res.round == 1 and res.survivors == (1, 2, 3, 4)
    np.testing.assert_allclose(after - before, np.mean(deltas, axis=0), atol=1e-5)


def test_step_by_step_and_fit_and_eval_hook():
    data = _data()
    fed = _fed(data=data, eval_fn=make_evaluator(data[0]))
    results = list(fed.rounds(2))
    assert [r.round for r in results] == [1, 2]
    assert {"loss", "accuracy"} <= set(results[-1].metrics)
    more = fed.fit(1, on_round=lambda r: None)
    assert more[0].round == 3 and len(fed.history) == 3
    assert results[0].bytes_up_per_client > 0


def test_train_fn_that_raises_makes_that_client_a_dropout_and_the_round_goes_on():
    calls = {"n": 0}

    def flaky(model, data):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("disk full")
        make_sgd_train_fn(lr=0.5)(model, data)

    fed = _fed(train_fn=flaky)
    before = _snapshot(fed)
    res = fed.run_round()
    assert res.round == 1 and not res.aborted
    assert res.survivors == (1, 2, 4) and set(res.dropouts) == {3}
    assert "train_fn raised RuntimeError for client 3: disk full" in res.dropouts[3]
    assert not np.array_equal(_snapshot(fed), before)


def test_nan_update_makes_every_client_a_dropout_and_the_round_aborts_atomically():
    def diverge(model, data):
        with torch.no_grad():
            model.weight.fill_(float("nan"))

    fed = _fed(train_fn=diverge)
    before = _snapshot(fed)
    with pytest.raises(RoundFailedError, match="NaN or Inf") as e:
        fed.run_round()
    assert e.value.round == 1
    assert np.array_equal(_snapshot(fed), before) and fed.round == 0
    assert fed.aborts[-1].aborted and set(fed.aborts[-1].dropouts) == {1, 2, 3, 4}


def test_inf_update_is_a_dropout():
    def explode(model, data):
        with torch.no_grad():
            model.bias.fill_(float("inf"))

    fed = _fed(train_fn=explode)
    with pytest.raises(RoundFailedError):
        fed.run_round()
    assert all("NaN or Inf" in why for why in fed.aborts[-1].dropouts.values())


def test_client_with_no_data():
    data = _data()
    data[1] = TensorDataset(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    fed = _fed(data=data)
    before = _snapshot(fed)
    with pytest.raises(DataError, match="client 2 returned an empty dataset") as e:
        fed.run_round()
    assert e.value.client == 2
    assert np.array_equal(_snapshot(fed), before)


def test_encoding_that_could_overflow_is_refused_at_construction():
    with pytest.raises(EncodingOverflowError) as e:
        _fed(bits=8, sampler=Sampler.full(4))
    assert e.value.knob == "bits"


def test_too_few_survivors_aborts_round_atomically():
    fed = _fed(secure_sum=PlainSum(__import__("secagg").RingSpec(32), 8, min_survivors=3), dropout=0.5)
    before = _snapshot(fed)
    with pytest.raises(RoundFailedError, match="aborted") as e:
        fed.run_round()
    assert e.value.round == 1
    assert np.array_equal(_snapshot(fed), before) and fed.round == 0
    assert fed.optimizer.velocity is None


def test_dropouts_remove_survivors_from_the_sum():
    fed = _fed(dropout=0.5, sampler=Sampler.full(4))
    res = fed.run_round()
    assert len(res.survivors) == 2 and set(res.survivors) < set(res.cohort)


def test_poisson_empty_cohort_is_a_skipped_round():
    fed = _fed(sampler=Sampler.poisson(4, 1e-9))
    before = _snapshot(fed)
    res = fed.run_round()
    assert res.skipped and res.cohort == () and np.array_equal(_snapshot(fed), before)


def test_bad_construction_arguments():
    with pytest.raises(ConfigError, match="empty"):
        _fed(data=[]) if False else Federation(nn.Linear(3, 2), make_sgd_train_fn(), [], rng=SeededRandomSource(0))
    with pytest.raises(ConfigError, match="dropout"):
        _fed(dropout=1.0)
    with pytest.raises(ConfigError, match="population"):
        _fed(sampler=Sampler.full(5))
    with pytest.raises(ConfigError, match="unknown secure sum"):
        _fed(secure_sum="carrier-pigeon")
    with pytest.raises(ConfigError, match="clip"):
        NoPrivacy(clip_norm=0)
    with pytest.raises(ConfigError, match="rounds"):
        list(_fed().rounds(-1))


def test_clipping_is_reported_not_silent():
    fed = _fed(privacy=NoPrivacy(clip_norm=1e-4))
    res = fed.run_round()
    assert res.clipped_fraction == 1.0
